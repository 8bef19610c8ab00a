//! RoPE scaling: the frequency schemes transformers defines for long contexts (`linear`,
//! `dynamic` NTK, `llama3`, `yarn`), as the kernels compute them.
//!
//! The formulas are transformers' (`modeling_rope_utils.py`, read from transformers 5.17):
//! each scheme changes the inverse frequency `inv_freq[i]` of dimension pair `i`, and yarn also
//! multiplies cos and sin by an attention factor. The kernels compute the frequency per element
//! (`rope_inv_freq` in `cu/rope_head.cuh`) from the few scalars of a [`RopeScaling`], so a
//! scaling adds no tensor to the model and nothing to a captured graph but kernel arguments;
//! [`RopeScaling::inv_freq`] is the same computation on the host, in `f32` like the kernel's
//! (the tests' reference).
//!
//! `longrope` (Phi-3) scales each dimension by its own factor from two lists in the config; it
//! is not among these (the loader names it in its error).

use crate::{Error, Result};

use crate::ffi::Arg;

/// How RoPE's frequencies are scaled (transformers' `rope_type`). `Copy`: it travels in
/// [`AttentionShape`](super::AttentionShape).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RopeScaling {
    /// Plain RoPE (`default`): `inv_freq[i] = 1 / theta^(2i / head_dim)`.
    #[default]
    None,
    /// `linear` (position interpolation): every frequency divided by `factor`.
    Linear {
        /// The scaling factor (`>= 1` in practice; finite and > 0 here).
        factor: f32,
    },
    /// `dynamic` (NTK-aware): for a sequence of `len > original_max_positions` tokens the base
    /// becomes `theta * (factor * len / original - (factor - 1))^(d / (d - 2))`; shorter
    /// sequences use plain RoPE.
    ///
    /// `len` is `max(position + 1, min_len)`: in a decode step the token's own position (as
    /// transformers computes it for one sequence), in a prefill chunk the sequence's length
    /// after the chunk (transformers uses the largest position of the forward). transformers
    /// keeps the largest length a model has seen, across sequences and calls; here each token's
    /// length is its own sequence's, the same for one sequence generated front to back.
    Dynamic {
        /// The scaling factor.
        factor: f32,
        /// The context the model was trained on (transformers 5.17 uses
        /// `max_position_embeddings`).
        original_max_positions: f32,
    },
    /// `llama3` (Llama 3.1+): long wavelengths divided by `factor`, short ones kept, a smooth
    /// blend between (wavelengths between `original / high_freq_factor` and
    /// `original / low_freq_factor`).
    Llama3 {
        /// The scaling factor (8 for Llama 3.1).
        factor: f32,
        /// `low_freq_factor` (1 for Llama 3.1).
        low_freq_factor: f32,
        /// `high_freq_factor` (4 for Llama 3.1), `> low_freq_factor`.
        high_freq_factor: f32,
        /// `original_max_position_embeddings` (8192 for Llama 3.1).
        original_max_positions: f32,
    },
    /// `yarn`: a blend of interpolated (`/ factor`) and original frequencies along a linear
    /// ramp over the dimension pairs `ramp_low..ramp_low + ramp_width`, and cos and sin times
    /// `attention_factor`. Build it with [`RopeScaling::yarn`], which derives the ramp and the
    /// factor from the config's fields as transformers does.
    Yarn {
        /// The scaling factor.
        factor: f32,
        /// The ramp's start (a dimension-pair index; pairs below it keep their frequency).
        ramp_low: f32,
        /// The ramp's length in pairs, `> 0` (pairs past its end are interpolated); transformers'
        /// `max - min`, computed in `f64` as Python does.
        ramp_width: f32,
        /// Multiplies cos and sin.
        attention_factor: f32,
    },
}

/// The fields of a yarn `rope_scaling` / `rope_parameters` object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnParams {
    /// `factor`.
    pub factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_positions: f64,
    /// `beta_fast` (default 32).
    pub beta_fast: Option<f64>,
    /// `beta_slow` (default 1).
    pub beta_slow: Option<f64>,
    /// `mscale`.
    pub mscale: Option<f64>,
    /// `mscale_all_dim`.
    pub mscale_all_dim: Option<f64>,
    /// `attention_factor`: overrides the one derived from `factor` and the mscales.
    pub attention_factor: Option<f64>,
    /// `truncate` (default true): the ramp's ends rounded outwards to whole pairs.
    pub truncate: Option<bool>,
}

impl RopeScaling {
    /// A yarn scaling for heads of `head_dim` and base `theta`, derived as transformers'
    /// `_compute_yarn_parameters` does (in `f64`, as Python computes it).
    pub fn yarn(p: &YarnParams, theta: f64, head_dim: usize) -> RopeScaling {
        let get_mscale = |scale: f64, mscale: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * mscale * scale.ln() + 1.0
            }
        };
        let attention_factor = match (p.attention_factor, p.mscale, p.mscale_all_dim) {
            (Some(a), _, _) => a,
            // Python's `if mscale and mscale_all_dim`: both present and non-zero.
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                get_mscale(p.factor, m) / get_mscale(p.factor, all)
            }
            _ => get_mscale(p.factor, 1.0),
        };
        // `beta_fast or 32`: a zero counts as absent, as in Python.
        let beta_fast = p.beta_fast.filter(|&b| b != 0.0).unwrap_or(32.0);
        let beta_slow = p.beta_slow.filter(|&b| b != 0.0).unwrap_or(1.0);
        let dim = head_dim as f64;
        let correction_dim = |rotations: f64| {
            dim * (p.original_max_positions / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * theta.ln())
        };
        let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
        if p.truncate.unwrap_or(true) {
            low = low.floor();
            high = high.ceil();
        }
        let low = low.max(0.0);
        let mut high = high.min(dim - 1.0);
        if low == high {
            high += 0.001; // transformers' guard against a zero-width ramp
        }
        RopeScaling::Yarn {
            factor: p.factor as f32,
            ramp_low: low as f32,
            ramp_width: (high - low) as f32,
            attention_factor: attention_factor as f32,
        }
    }

    /// The `rope_type` transformers gives this scaling.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::None => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }

    /// The kernel's `(kind, a, b, c, d, attn)` (`cu/rope_head.cuh`).
    fn parts(&self) -> (i32, [f32; 4], f32) {
        match *self {
            RopeScaling::None => (0, [0.0; 4], 1.0),
            RopeScaling::Linear { factor } => (1, [factor, 0.0, 0.0, 0.0], 1.0),
            RopeScaling::Dynamic {
                factor,
                original_max_positions,
            } => (2, [factor, original_max_positions, 0.0, 0.0], 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => (
                3,
                [
                    factor,
                    low_freq_factor,
                    high_freq_factor,
                    original_max_positions,
                ],
                1.0,
            ),
            RopeScaling::Yarn {
                factor,
                ramp_low,
                ramp_width,
                attention_factor,
            } => (4, [factor, ramp_low, ramp_width, 0.0], attention_factor),
        }
    }

    /// Checks that every parameter is finite and in range; `op` names the caller in the error.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let (_, values, attn) = self.parts();
        let bad = |message: String| Err(Error::invalid(op, message));
        if values.iter().chain([&attn]).any(|v| !v.is_finite()) {
            return bad(format!("RoPE scaling {self:?} has a non-finite parameter"));
        }
        match *self {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. }
                if factor <= 0.0 =>
            {
                bad(format!(
                    "{} RoPE: factor must be > 0, got {factor}",
                    self.name()
                ))
            }
            RopeScaling::Dynamic {
                original_max_positions,
                ..
            } if original_max_positions < 1.0 => bad(format!(
                "dynamic RoPE: the original context must be >= 1, got {original_max_positions}"
            )),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } if factor <= 0.0
                || low_freq_factor <= 0.0
                || high_freq_factor <= low_freq_factor
                || original_max_positions <= 0.0 =>
            {
                bad(format!(
                    "llama3 RoPE needs factor > 0, 0 < low_freq_factor < high_freq_factor and an original context > 0, got {self:?}"
                ))
            }
            // transformers would compute with an empty or reversed ramp (an original context
            // under 2 pi, or one past theta^(d/2)); no real config has one, and here it is an
            // error rather than a division by zero in the kernel.
            RopeScaling::Yarn {
                factor,
                ramp_width,
                attention_factor,
                ..
            } if factor <= 0.0 || ramp_width <= 0.0 || attention_factor <= 0.0 => bad(format!(
                "yarn RoPE needs factor > 0, ramp_width > 0 and attention_factor > 0, got {self:?}"
            )),
            _ => Ok(()),
        }
    }

    /// The kernel arguments `ROPE_PARAMS` (`cu/rope_head.cuh`): the scaling, the base `theta`
    /// and the dynamic scaling's `min_len`.
    pub(crate) fn kernel_args(&self, theta: f32, min_len: i32) -> [Arg; 8] {
        let (kind, [a, b, c, d], attn) = self.parts();
        [
            Arg::I32(kind),
            Arg::F32(theta),
            Arg::F32(a),
            Arg::F32(b),
            Arg::F32(c),
            Arg::F32(d),
            Arg::F32(attn),
            Arg::I32(min_len),
        ]
    }

    /// The factor cos and sin are multiplied by (yarn's attention factor; 1 otherwise).
    pub fn attention_factor(&self) -> f32 {
        self.parts().2
    }

    /// The inverse frequency of dimension pair `i` (`i < head_dim / 2`) at `pos`, with a
    /// dynamic scaling's `min_len`: `rope_inv_freq` of `cu/rope_head.cuh`, in the same `f32`
    /// operations.
    pub fn inv_freq(
        &self,
        theta: f32,
        i: usize,
        head_dim: usize,
        pos: usize,
        min_len: usize,
    ) -> f32 {
        let exponent = (2 * i) as f32 / head_dim as f32;
        if let RopeScaling::Dynamic {
            factor,
            original_max_positions,
        } = *self
        {
            let len = pos.saturating_add(1).max(min_len) as f32;
            if len > original_max_positions {
                let base = theta
                    * (factor * len / original_max_positions - (factor - 1.0))
                        .powf(head_dim as f32 / head_dim.saturating_sub(2) as f32);
                return 1.0 / base.powf(exponent);
            }
        }
        let pos_freq = theta.powf(exponent);
        let inv = 1.0 / pos_freq;
        match *self {
            RopeScaling::Linear { factor } => inv / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => {
                let wavelen = std::f32::consts::TAU / inv;
                let low_freq_wavelen = original_max_positions / low_freq_factor;
                let high_freq_wavelen = original_max_positions / high_freq_factor;
                let mut v = if wavelen > low_freq_wavelen {
                    inv / factor
                } else {
                    inv
                };
                // transformers' `~(wavelen < high) * ~(wavelen > low)` (the values are finite).
                if (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen) {
                    let smooth = (original_max_positions / wavelen - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    v = (1.0 - smooth) * v / factor + smooth * v;
                }
                v
            }
            RopeScaling::Yarn {
                factor,
                ramp_low,
                ramp_width,
                ..
            } => {
                let ramp = ((i as f32 - ramp_low) / ramp_width).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                let interpolated = 1.0 / (factor * pos_freq);
                interpolated * (1.0 - extrapolation) + inv * extrapolation
            }
            RopeScaling::None | RopeScaling::Dynamic { .. } => inv,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THETA: f32 = 10_000.0;
    const D: usize = 64;

    fn plain(i: usize) -> f32 {
        RopeScaling::None.inv_freq(THETA, i, D, 0, 0)
    }

    #[test]
    fn linear_divides_every_frequency() {
        let s = RopeScaling::Linear { factor: 4.0 };
        for i in 0..D / 2 {
            assert_eq!(s.inv_freq(THETA, i, D, 100, 0), plain(i) / 4.0);
        }
    }

    #[test]
    fn dynamic_is_plain_within_the_original_context_and_lower_beyond() {
        let s = RopeScaling::Dynamic {
            factor: 2.0,
            original_max_positions: 32.0,
        };
        for i in 0..D / 2 {
            assert_eq!(s.inv_freq(THETA, i, D, 31, 0), plain(i), "pair {i}");
        }
        // Past the original context the base grows: lower frequencies except pair 0 (1).
        assert_eq!(s.inv_freq(THETA, 0, D, 40, 0), 1.0);
        for i in 1..D / 2 {
            assert!(s.inv_freq(THETA, i, D, 40, 0) < plain(i), "pair {i}");
        }
        // min_len: a prefill chunk ending past the context scales its early positions too.
        assert_eq!(
            s.inv_freq(THETA, 5, D, 3, 64),
            s.inv_freq(THETA, 5, D, 63, 0)
        );
    }

    #[test]
    fn llama3_keeps_short_wavelengths_and_divides_long_ones() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 64.0,
        };
        let mut kept = 0;
        let mut divided = 0;
        let mut blended = 0;
        for i in 0..D / 2 {
            let wavelen = std::f32::consts::TAU / plain(i);
            let v = s.inv_freq(THETA, i, D, 0, 0);
            if wavelen < 16.0 {
                assert_eq!(v, plain(i));
                kept += 1;
            } else if wavelen > 64.0 {
                assert_eq!(v, plain(i) / 8.0);
                divided += 1;
            } else {
                assert!(v < plain(i) && v > plain(i) / 8.0, "pair {i}");
                blended += 1;
            }
        }
        assert!(
            kept > 0 && divided > 0 && blended > 0,
            "{kept} {divided} {blended}"
        );
    }

    #[test]
    fn yarn_ramps_from_original_to_interpolated() {
        let p = YarnParams {
            factor: 4.0,
            original_max_positions: 64.0,
            beta_fast: None,
            beta_slow: None,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: None,
        };
        let s = RopeScaling::yarn(&p, f64::from(THETA), D);
        let RopeScaling::Yarn {
            ramp_low,
            ramp_width,
            attention_factor,
            ..
        } = s
        else {
            panic!("{s:?}")
        };
        // transformers: 0.1 * ln(4) + 1.
        assert!((attention_factor - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        assert!(ramp_width > 0.0 && ramp_low.fract() == 0.0 && ramp_width.fract() == 0.0);
        assert_eq!(s.inv_freq(THETA, 0, D, 0, 0), plain(0));
        let last = D / 2 - 1;
        assert!((s.inv_freq(THETA, last, D, 0, 0) - plain(last) / 4.0).abs() <= 1e-9);
        assert_eq!(s.attention_factor(), attention_factor);
        // An explicit attention factor wins; mscales otherwise.
        let explicit = RopeScaling::yarn(
            &YarnParams {
                attention_factor: Some(0.5),
                ..p
            },
            f64::from(THETA),
            D,
        );
        assert_eq!(explicit.attention_factor(), 0.5);
        let mscales = RopeScaling::yarn(
            &YarnParams {
                mscale: Some(1.0),
                mscale_all_dim: Some(1.0),
                ..p
            },
            f64::from(THETA),
            D,
        );
        assert_eq!(mscales.attention_factor(), 1.0);
    }

    #[test]
    fn out_of_range_parameters_are_rejected() {
        assert!(RopeScaling::None.validate("t").is_ok());
        for bad in [
            RopeScaling::Linear { factor: 0.0 },
            RopeScaling::Linear { factor: f32::NAN },
            RopeScaling::Dynamic {
                factor: 2.0,
                original_max_positions: 0.0,
            },
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 4.0,
                high_freq_factor: 1.0,
                original_max_positions: 8192.0,
            },
            RopeScaling::Yarn {
                factor: 4.0,
                ramp_low: 3.0,
                ramp_width: 0.0,
                attention_factor: 1.0,
            },
        ] {
            assert!(bad.validate("t").is_err(), "{bad:?}");
        }
    }
}
