//! Helpers every mode of the example shares: deterministic inputs, medians, relative errors.

use cudagraph::{Result, Runtime, Tensor};
use cudagraph_models::llama::LlamaConfig;
use half::bf16;

/// The sizes of `Llama::forward`'s attribute (1, 2, 4, 8..=256 step 8), for runners the
/// benchmark builds without the macro.
pub fn forward_sizes() -> Vec<usize> {
    [1, 2, 4].into_iter().chain((8..=256).step_by(8)).collect()
}

/// Deterministic random inputs on the host (SplitMix64), fresh for every call.
pub struct Inputs(pub u64);

impl Inputs {
    /// The next raw 64-bit value.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Token ids and positions for `n` sequences, on the host.
    pub fn draw_host(&mut self, cfg: &LlamaConfig, n: usize) -> (Vec<u32>, Vec<i32>) {
        let tokens = (0..n)
            .map(|_| (self.next() % cfg.vocab as u64) as u32)
            .collect();
        let positions = (0..n)
            .map(|_| (self.next() % cfg.cache_tokens as u64) as i32)
            .collect();
        (tokens, positions)
    }

    /// Token ids and positions for `n` sequences, uploaded.
    pub fn draw(&mut self, rt: &Runtime, cfg: &LlamaConfig, n: usize) -> Result<(Tensor, Tensor)> {
        let (tokens, positions) = self.draw_host(cfg, n);
        Ok((rt.upload(&tokens, &[n])?, rt.upload(&positions, &[n])?))
    }
}

/// The median of `samples` (NaN when empty).
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// ‖a − b‖₂ / ‖b‖₂ in f64 (NaN propagates).
pub fn relative_error(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in a.into_iter().zip(b) {
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    (diff / norm).sqrt()
}

/// [`relative_error`] of two bf16 slices.
pub fn relative_error_bf16(a: &[bf16], b: &[bf16]) -> f64 {
    relative_error(a.iter().map(|v| v.to_f64()), b.iter().map(|v| v.to_f64()))
}

/// [`relative_error`] of two bf16 tensors, downloaded.
pub fn relative_error_tensors(rt: &Runtime, a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(relative_error_bf16(
        &rt.download::<bf16>(a)?,
        &rt.download::<bf16>(b)?,
    ))
}
