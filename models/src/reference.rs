//! [`HostLlama`]: the decode step of [`Llama`](super::llama::Llama) on the host, for tests.
//!
//! It runs the same math as the GPU forward with the host references of
//! [`kernels::reference`](cudagraph::kernels::reference), in f32/f64, and rounds to bf16 where the
//! GPU stores a bf16 result (every op's output, the KV cache), so the two stay within bf16
//! noise of each other.

use super::llama::LlamaConfig;
use super::weights::{HostTensor, LlamaWeights};
use cudagraph::kernels::reference as r;
use cudagraph::{Error, Result};

/// One layer's weights as f32, with its KV cache.
#[derive(Debug)]
struct HostLayer {
    attn_norm: Vec<f32>,
    qkv: Vec<f32>,
    qkv_bias: Option<Vec<f32>>,
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    o_proj: Vec<f32>,
    o_bias: Option<Vec<f32>>,
    mlp_norm: Vec<f32>,
    gate_up: Vec<f32>,
    down: Vec<f32>,
    k_cache: Vec<f32>,
    v_cache: Vec<f32>,
}

/// A decoder on the host: the weights as f32 and a KV cache of `slots` sequences of
/// `cfg.cache_tokens` positions, zeroed (as [`Llama::from_weights`] zeroes the device's).
///
/// [`Llama::from_weights`]: super::llama::Llama::from_weights
#[derive(Debug)]
pub struct HostLlama {
    cfg: LlamaConfig,
    slots: usize,
    embed: Vec<f32>,
    layers: Vec<HostLayer>,
    final_norm: Vec<f32>,
    lm_head: Option<Vec<f32>>,
}

/// Rounds every value to bf16, in place.
fn round(mut xs: Vec<f32>) -> Vec<f32> {
    xs.iter_mut().for_each(|x| *x = r::round_bf16(*x));
    xs
}

/// `x + bias` on every row, rounded (the GPU's `add_bias` after a rounded GEMM).
fn add_bias(x: Vec<f32>, bias: Option<&Vec<f32>>) -> Vec<f32> {
    match bias {
        None => x,
        Some(b) => round(
            x.chunks_exact(b.len())
                .flat_map(|row| row.iter().zip(b).map(|(v, w)| v + w))
                .collect(),
        ),
    }
}

impl HostLlama {
    /// The host model of `weights` (checked against `cfg`), with a KV cache of `slots`
    /// sequences.
    pub fn new(cfg: &LlamaConfig, weights: &LlamaWeights, slots: usize) -> Result<Self> {
        cfg.validate()?;
        weights.check(cfg)?;
        if slots == 0 {
            return Err(Error::invalid("HostLlama", "needs at least one cache slot"));
        }
        let cache = slots * cfg.cache_tokens * cfg.kv_heads * cfg.head_dim;
        let f = HostTensor::to_f32;
        let opt = |t: &Option<HostTensor>| t.as_ref().map(f);
        let layers = weights
            .layers
            .iter()
            .map(|l| HostLayer {
                attn_norm: f(&l.attn_norm),
                qkv: f(&l.qkv),
                qkv_bias: opt(&l.qkv_bias),
                qk_norm: opt(&l.q_norm).zip(opt(&l.k_norm)),
                o_proj: f(&l.o_proj),
                o_bias: opt(&l.o_bias),
                mlp_norm: f(&l.mlp_norm),
                gate_up: f(&l.gate_up),
                down: f(&l.down),
                k_cache: vec![0.0; cache],
                v_cache: vec![0.0; cache],
            })
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            slots,
            embed: f(&weights.embed),
            layers,
            final_norm: f(&weights.final_norm),
            lm_head: opt(&weights.lm_head),
        })
    }

    /// One decode step, as [`Llama::forward`](super::llama::Llama::forward): row `b` (token
    /// `tokens[b]` at `positions[b]`) writes its keys and values into cache slot `b` and
    /// attends to positions `0..=positions[b]`. Returns the logits, `[n, vocab]` row-major,
    /// rounded to bf16.
    pub fn step(&mut self, tokens: &[u32], positions: &[i32]) -> Result<Vec<f32>> {
        self.rows(tokens, positions, None)
    }

    /// A prefill chunk, as [`Llama::prefill`](super::llama::Llama::prefill): `tokens` at
    /// positions `start..start + n` of the sequence in slot `slot`, all written to the cache
    /// before any row attends. Returns every row's logits, `[n, vocab]` (the GPU computes only
    /// the last row's).
    pub fn prefill(&mut self, tokens: &[u32], start: usize, slot: usize) -> Result<Vec<f32>> {
        let end = start.checked_add(tokens.len());
        let Some(end) = end.filter(|&end| slot < self.slots && end <= self.cfg.cache_tokens) else {
            return Err(Error::invalid(
                "HostLlama::prefill",
                format!(
                    "slot {slot} or positions {start}..{start}+{} outside the cache",
                    tokens.len()
                ),
            ));
        };
        let positions: Vec<i32> = (start..end).map(|p| p as i32).collect();
        let chunk = cudagraph::ops::PrefillChunk { slot, seq_len: end };
        self.rows(tokens, &positions, Some(&chunk))
    }

    /// The body of [`step`](Self::step) (`chunk` `None`) and [`prefill`](Self::prefill).
    fn rows(
        &mut self,
        tokens: &[u32],
        positions: &[i32],
        chunk: Option<&cudagraph::ops::PrefillChunk>,
    ) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 || positions.len() != n || (chunk.is_none() && n > self.slots) {
            return Err(Error::invalid(
                if chunk.is_some() {
                    "HostLlama::prefill"
                } else {
                    "HostLlama::step"
                },
                format!(
                    "{n} tokens and {} positions for {} cache slots: need as many positions as tokens, between 1 and the slots",
                    positions.len(),
                    self.slots
                ),
            ));
        }
        let cfg = &self.cfg;
        let (h, eps, max_t) = (cfg.hidden, cfg.rms_eps, cfg.cache_tokens);
        let attn = cfg.attention();
        let mut residual = r::embedding_ref(&self.embed, h, tokens);
        let first_norm = self
            .layers
            .first()
            .map_or(&self.final_norm, |l| &l.attn_norm);
        let mut normed = round(r::rms_norm_ref(&residual, first_norm, h, eps));
        for i in 0..self.layers.len() {
            let next_norm = match self.layers.get(i + 1) {
                Some(next) => next.attn_norm.clone(),
                None => self.final_norm.clone(),
            };
            let layer = &mut self.layers[i];
            let qkv = round(r::linear_ref(&normed, &layer.qkv, None, h));
            let qkv = add_bias(qkv, layer.qkv_bias.as_ref());
            let (k, v) = (&mut layer.k_cache, &mut layer.v_cache);
            let q = match (&layer.qk_norm, chunk) {
                (Some((qw, kw)), None) => {
                    r::rope_kv_write_qk_norm_ref(&qkv, positions, k, v, max_t, &attn, (qw, kw), eps)
                }
                (None, None) => r::rope_kv_write_ref(&qkv, positions, k, v, max_t, &attn),
                (norm, Some(c)) => {
                    let normed = match norm {
                        Some((qw, kw)) => r::qk_norm_ref(&qkv, &attn, (qw, kw), eps),
                        None => qkv.clone(),
                    };
                    r::rope_kv_write_prefill_ref(&normed, positions, (k, v), max_t, &attn, c)
                }
            };
            let q = round(q);
            // The device cache holds bf16 (rounding a bf16 value again changes nothing).
            k.iter_mut().for_each(|x| *x = r::round_bf16(*x));
            let ctx = match chunk {
                None => r::attention_ref(&q, k, v, positions, max_t, &attn),
                Some(c) => r::attention_prefill_ref(&q, (k, v), positions, max_t, &attn, c.slot),
            };
            let ctx = round(ctx);
            let attn_out = round(r::linear_ref(&ctx, &layer.o_proj, None, cfg.q_width()));
            let attn_out = add_bias(attn_out, layer.o_bias.as_ref());
            let (res, n2) = r::add_rms_norm_ref(&residual, &attn_out, &layer.mlp_norm, h, eps);
            let gate_up = round(r::linear_ref(&round(n2), &layer.gate_up, None, h));
            let act = round(r::silu_mul_ref(&gate_up, cfg.intermediate));
            let mlp_out = round(r::linear_ref(&act, &layer.down, None, cfg.intermediate));
            let (res, n3) = r::add_rms_norm_ref(&res, &mlp_out, &next_norm, h, eps);
            residual = res;
            normed = round(n3);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(round(r::linear_ref(&normed, head, None, h)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::Family;
    use crate::hf::synthetic::Synthetic;

    #[test]
    fn steps_give_finite_logits_and_use_the_cache() {
        for family in Family::ALL {
            let synth = Synthetic::tiny(family);
            let mut cfg = synth.model.clone();
            cfg.cache_tokens = 8;
            let weights = synth.host_weights().unwrap();
            let mut host = HostLlama::new(&cfg, &weights, 2).unwrap();
            let a = host.step(&[3, 5], &[0, 0]).unwrap();
            assert_eq!(a.len(), 2 * cfg.vocab);
            assert!(a.iter().all(|v| v.is_finite()), "{family:?}");
            // Same token at position 1 after different histories: different logits.
            let b = host.step(&[7, 7], &[1, 1]).unwrap();
            let (b0, b1) = b.split_at(cfg.vocab);
            assert_ne!(b0, b1, "{family:?}: the cache must matter");
            // A fresh model repeating row 0's history reproduces it.
            let mut again = HostLlama::new(&cfg, &weights, 1).unwrap();
            again.step(&[3], &[0]).unwrap();
            assert_eq!(again.step(&[7], &[1]).unwrap(), b0.to_vec(), "{family:?}");
        }
    }

    #[test]
    fn bad_steps_are_errors() {
        let synth = Synthetic::tiny(Family::Llama);
        let weights = synth.host_weights().unwrap();
        let mut host = HostLlama::new(&synth.model, &weights, 1).unwrap();
        assert!(host.step(&[], &[]).is_err());
        assert!(host.step(&[1], &[0, 1]).is_err());
        assert!(host.step(&[1, 2], &[0, 1]).is_err());
        assert!(HostLlama::new(&synth.model, &weights, 0).is_err());
    }
}
