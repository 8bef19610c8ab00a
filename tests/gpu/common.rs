//! Shared helpers of the GPU suite.

use std::time::{SystemTime, UNIX_EPOCH};

use cudagraph::testing::gpu_or_skip;
use cudagraph::{Result, Runtime, Tensor};
use cudagraph_models::llama::{Llama, LlamaConfig};
use half::bf16;

/// A runtime, or `None` after printing why the test skips.
pub fn gpu(test: &str) -> Option<Runtime> {
    gpu_or_skip(test)
}

/// A fresh seed per call (printed, so a failure can be replayed with `CUDAGRAPH_SEED`).
pub fn fresh_seed(test: &str) -> u64 {
    let seed = std::env::var("CUDAGRAPH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {seed}");
    seed
}

/// SplitMix64: small, deterministic host randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }

    pub fn vec(&mut self, len: usize, low: f32, high: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(low, high)).collect()
    }
}

/// Uploads f32 values as bf16 and returns the bf16-rounded values the device holds.
pub fn upload_bf16(rt: &Runtime, values: &[f32], dims: &[usize]) -> Result<(Tensor, Vec<f32>)> {
    let host: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    let rounded = host.iter().map(|v| v.to_f32()).collect();
    Ok((rt.upload(&host, dims)?, rounded))
}

/// Downloads a bf16 tensor as f32.
pub fn download_f32(rt: &Runtime, t: &Tensor) -> Result<Vec<f32>> {
    Ok(rt.download::<bf16>(t)?.iter().map(|v| v.to_f32()).collect())
}

/// ‖a − b‖₂ / ‖b‖₂ in f64; NaN anywhere gives NaN (which fails every bound).
pub fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        if x.is_nan() || y.is_nan() {
            return f64::NAN;
        }
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// Asserts `rel_error(a, b) <= bound` (NaN fails), naming `what`.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], bound: f64) {
    let err = rel_error(a, b);
    assert!(
        err <= bound,
        "{what}: relative error {err:.3e} exceeds {bound:.1e} (NaN means an unwritten or invalid element)"
    );
}

/// bf16 tolerance between two bf16 computations of the same function (METHOD.md: bf16
/// operands land between 1e-3 and 1e-2).
pub const BF16_TOL: f64 = 1e-2;

/// Fresh random token ids (`[n]` u32) and positions (`[n]` i32) for `n` sequences of `cfg`.
pub fn draw_decode_inputs(
    rt: &Runtime,
    rng: &mut Rng,
    cfg: &LlamaConfig,
    n: usize,
) -> Result<(Tensor, Tensor)> {
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab) as u32).collect();
    let positions: Vec<i32> = (0..n).map(|_| rng.below(cfg.cache_tokens) as i32).collect();
    Ok((rt.upload(&tokens, &[n])?, rt.upload(&positions, &[n])?))
}

/// Graph output `got` against the eager output `eager` (`rows` rows): bit for bit when the graph
/// ran the eager kernels on the same shapes (`exact`: the batch is a captured size), otherwise
/// within a per-row bound: every row's largest difference at most 5 % of that row's largest
/// eager value (a padded graph's GEMMs may pick another algorithm for the larger `m`). NaN
/// (an unwritten, poisoned element) fails both. Returns the largest per-row ratio seen.
pub fn assert_graph_matches_eager(
    what: &str,
    got: &[f32],
    eager: &[f32],
    rows: usize,
    exact: bool,
) -> f64 {
    assert_eq!(got.len(), eager.len(), "{what}: lengths differ");
    assert!(rows > 0 && got.len() % rows == 0, "{what}: bad row count");
    if exact {
        let first = got
            .iter()
            .zip(eager)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        if let Some(i) = first {
            panic!(
                "{what}: graph and eager ran the same kernels but differ at element {i}: {} vs {}",
                got[i], eager[i]
            );
        }
        return 0.0;
    }
    let cols = got.len() / rows;
    let mut worst = 0f64;
    for (r, (g, e)) in got.chunks(cols).zip(eager.chunks(cols)).enumerate() {
        let scale = e
            .iter()
            .fold(0f64, |m, &v| m.max((v as f64).abs()))
            .max(1e-3);
        let mut diff = 0f64;
        for (&a, &b) in g.iter().zip(e) {
            let d = (a as f64 - b as f64).abs();
            diff = if d.is_nan() {
                f64::INFINITY
            } else {
                diff.max(d)
            };
        }
        let ratio = diff / scale;
        assert!(
            ratio <= 0.05,
            "{what}: row {r}: max |graph - eager| = {diff:.3e} is {ratio:.3e} of the row's largest value (bound 0.05; inf: NaN)"
        );
        worst = worst.max(ratio);
    }
    worst
}

/// Every KV cache of `model` as raw bf16 bits, per layer and per cache (k then v).
pub fn kv_cache_bits(rt: &Runtime, model: &Llama) -> Result<Vec<Vec<u16>>> {
    let mut out = Vec::new();
    for (k, v) in model.kv_caches() {
        for cache in [k, v] {
            out.push(
                rt.download::<bf16>(cache)?
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            );
        }
    }
    Ok(out)
}
