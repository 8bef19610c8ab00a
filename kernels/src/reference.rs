//! Host references of the kernels' math, in plain Rust on `f32` slices (no GPU).
//!
//! GPU tests draw inputs (for instance with [`uniform_vec`], which reproduces
//! [`fill_uniform`](crate::ops::fill_uniform) bit for bit), run an op, download the result and
//! compare it with these functions within a bf16 tolerance. Unless a function says otherwise,
//! inputs are the (bf16-valued) inputs converted to f32, the math is done in f32 or f64, and the
//! result is **not** rounded to bf16 (use [`round_bf16_slice`] to round it).
//!
//! All tensors are row-major; `n` is the number of batch rows.

use half::bf16;

use crate::ops::{AttentionShape, PrefillChunk, RopeScaling};

// ---------------------------------------------------------------------------------------------
// bf16
// ---------------------------------------------------------------------------------------------

/// The canonical quiet NaN every NaN converts to.
pub const BF16_NAN_BITS: u16 = 0x7FC0;

/// f32 -> bf16 bits, round to nearest, ties to even; any NaN becomes [`BF16_NAN_BITS`].
///
/// The same rule, written the same way, as the kernels' `f2bf` (`cu/prelude.cuh`).
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return BF16_NAN_BITS;
    }
    let rounding_bias = 0x7fff + ((u >> 16) & 1);
    // No overflow: the largest non-NaN pattern is 0xff80_0000 (-inf).
    ((u + rounding_bias) >> 16) as u16
}

/// bf16 bits -> f32 (exact), as the kernels' `bf2f`.
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Rounds `x` to the nearest bf16 value (ties to even), returned as f32 (via the `half` crate).
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// [`round_bf16`] of every element.
pub fn round_bf16_slice(xs: &[f32]) -> Vec<f32> {
    xs.iter().map(|&x| round_bf16(x)).collect()
}

/// f32 values to `half::bf16` (for `Runtime::upload`).
pub fn to_bf16_vec(xs: &[f32]) -> Vec<bf16> {
    xs.iter().map(|&x| bf16::from_f32(x)).collect()
}

/// `half::bf16` values (from `Runtime::download`) to f32.
pub fn from_bf16_vec(xs: &[bf16]) -> Vec<f32> {
    xs.iter().map(|x| x.to_f32()).collect()
}

// ---------------------------------------------------------------------------------------------
// Random numbers (mirror of fill_uniform)
// ---------------------------------------------------------------------------------------------

/// The uniform number in `[0, 1)` that `fill_uniform` draws for element `index` with `seed`
/// (splitmix64 of `seed + (index + 1) * golden`, top 24 bits).
pub fn uniform_unit(seed: u64, index: u64) -> f32 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// The f32 value `fill_uniform` writes at `index` of an f32 tensor:
/// `fma(high - low, uniform_unit(seed, index), low)`, bit-exact with the kernel.
/// A bf16 tensor holds `f32_to_bf16_bits` of it.
pub fn uniform_value(seed: u64, index: u64, low: f32, high: f32) -> f32 {
    (high - low).mul_add(uniform_unit(seed, index), low)
}

/// The first `len` values `fill_uniform` writes into an f32 tensor (`round_bf16_slice` of it
/// for a bf16 tensor).
pub fn uniform_vec(seed: u64, len: usize, low: f32, high: f32) -> Vec<f32> {
    (0..len as u64)
        .map(|i| uniform_value(seed, i, low, high))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------------

/// Rows of `len` elements in `xs`; panics (a test helper) when `len` does not divide it.
fn rows_of(xs: &[f32], len: usize, what: &str) -> usize {
    assert!(
        len > 0 && xs.len() % len == 0,
        "{what}: {} values are not rows of {len}",
        xs.len()
    );
    xs.len() / len
}

/// The cache position a row's `pos` writes and attends up to, as the kernels compute it:
/// `None` for a negative `pos` (a padded row: it writes nothing, reads nothing and its output
/// row is zero), else `pos` clamped to `max_t - 1`.
pub fn cache_position(pos: i32, max_t: usize) -> Option<usize> {
    let pos = usize::try_from(pos).ok()?;
    Some(pos.min(max_t.saturating_sub(1)))
}

/// `cfg.q_width()`; panics (a test helper) when it overflows.
fn q_width_of(cfg: &AttentionShape) -> usize {
    cfg.q_width()
        .unwrap_or_else(|| panic!("q_heads * head_dim overflows: {cfg:?}"))
}

/// Embedding lookup: `table` `[vocab, hidden]`, `ids` `[n]` (clamped to `vocab - 1`); returns
/// `[n, hidden]`.
pub fn embedding_ref(table: &[f32], hidden: usize, ids: &[u32]) -> Vec<f32> {
    let vocab = rows_of(table, hidden, "embedding_ref table");
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for &id in ids {
        let row = (id as usize).min(vocab - 1);
        out.extend_from_slice(&table[row * hidden..(row + 1) * hidden]);
    }
    out
}

/// RMS norm of each row of `x` (`[rows, hidden]`): `x * 1/sqrt(mean(x^2) + eps) * weight`
/// (`weight`: `[hidden]`), accumulated in f64.
pub fn rms_norm_ref(x: &[f32], weight: &[f32], hidden: usize, eps: f32) -> Vec<f32> {
    assert_eq!(weight.len(), hidden, "rms_norm_ref: weight length");
    rows_of(x, hidden, "rms_norm_ref x");
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(hidden) {
        let mean_sq = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            / hidden as f64;
        let inv_rms = 1.0 / (mean_sq + f64::from(eps)).sqrt();
        out.extend(
            row.iter()
                .zip(weight)
                .map(|(&v, &w)| (f64::from(v) * inv_rms * f64::from(w)) as f32),
        );
    }
    out
}

/// Fused residual add + RMS norm: returns `(new_residual, normed)` where `new_residual` is
/// `residual + delta` **rounded to bf16** (as the kernel stores it) and `normed` is
/// [`rms_norm_ref`] of that rounded sum (not rounded).
pub fn add_rms_norm_ref(
    residual: &[f32],
    delta: &[f32],
    weight: &[f32],
    hidden: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        residual.len(),
        delta.len(),
        "add_rms_norm_ref: residual and delta lengths"
    );
    let sum: Vec<f32> = residual
        .iter()
        .zip(delta)
        .map(|(&r, &d)| round_bf16(r + d))
        .collect();
    let normed = rms_norm_ref(&sum, weight, hidden, eps);
    (sum, normed)
}

/// RoPE's inverse frequency for pair `i` of a head of `head_dim`: `1 / theta^(2i / head_dim)`,
/// computed in f32 as the kernel does.
pub fn rope_inv_freq(i: usize, head_dim: usize, theta: f32) -> f32 {
    1.0 / theta.powf((2 * i) as f32 / head_dim as f32)
}

/// Rotates one head (`head.len()` = head_dim, even) to position `pos` in place
/// ("rotate_half" convention).
fn rotate_head(head: &mut [f32], pos: f32, theta: f32) {
    rotate_head_scaled(head, pos as usize, theta, &RopeScaling::None, 0);
}

/// [`rotate_head`] with a RoPE scaling (its frequencies from [`RopeScaling::inv_freq`], cos and
/// sin times its attention factor) and a dynamic scaling's `min_len`.
fn rotate_head_scaled(
    head: &mut [f32],
    pos: usize,
    theta: f32,
    scaling: &RopeScaling,
    min_len: usize,
) {
    let head_dim = head.len();
    let half = head_dim / 2;
    let attn = f64::from(scaling.attention_factor());
    for i in 0..half {
        // The angle is formed in f32 like the kernel's; sin and cos are taken in f64.
        let angle = f64::from(pos as f32 * scaling.inv_freq(theta, i, head_dim, pos, min_len));
        let (s, c) = angle.sin_cos();
        let (s, c) = (s * attn, c * attn);
        let x1 = f64::from(head[i]);
        let x2 = f64::from(head[i + half]);
        head[i] = (x1 * c - x2 * s) as f32;
        head[i + half] = (x2 * c + x1 * s) as f32;
    }
}

/// RoPE ("rotate_half", Llama / Hugging Face convention) of `x`: `[n, heads * head_dim]`, row
/// `b` rotated to `positions[b]` (used as given, not clamped). For `i < head_dim / 2`:
/// `angle = pos * rope_inv_freq(i)`, `out[i] = x[i] cos - x[i + d/2] sin`,
/// `out[i + d/2] = x[i + d/2] cos + x[i] sin`.
pub fn rope_ref(
    x: &[f32],
    positions: &[i32],
    heads: usize,
    head_dim: usize,
    theta: f32,
) -> Vec<f32> {
    assert!(
        head_dim > 0 && head_dim % 2 == 0,
        "rope_ref: head_dim must be even"
    );
    let n = rows_of(x, heads * head_dim, "rope_ref x");
    assert_eq!(positions.len(), n, "rope_ref: one position per row");
    let mut out = x.to_vec();
    for (row, &pos) in out.chunks_exact_mut(heads * head_dim).zip(positions) {
        for head in row.chunks_exact_mut(head_dim) {
            rotate_head(head, pos as f32, theta);
        }
    }
    out
}

/// What [`rope_kv_write`](crate::ops::rope_kv_write) does, on the host: returns the rotated q
/// (`[n, q_heads * head_dim]`) and writes the rotated k and the v of row `b` into
/// `k_cache[b, pos, :, :]` and `v_cache[b, pos, :, :]` (`pos >= max_t` clamped to `max_t - 1`,
/// see [`cache_position`]). A row with a negative position is padding: it writes nothing to
/// the caches and its q row is all zeros.
///
/// `qkv`: `[n, (q_heads + 2 * kv_heads) * head_dim]`; caches: `[slots, max_t, kv_heads,
/// head_dim]` with `slots >= n`. Values written are not rounded to bf16.
pub fn rope_kv_write_ref(
    qkv: &[f32],
    positions: &[i32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    max_t: usize,
    cfg: &AttentionShape,
) -> Vec<f32> {
    rope_kv_write_rows(qkv, positions, (k_cache, v_cache), max_t, cfg, None)
}

/// What [`rope_kv_write_prefill`](crate::ops::rope_kv_write_prefill) does, on the host:
/// [`rope_kv_write_ref`] with every row writing slot `chunk.slot` (and a dynamic RoPE scaling's
/// length at least `chunk.seq_len`).
pub fn rope_kv_write_prefill_ref(
    qkv: &[f32],
    positions: &[i32],
    (k_cache, v_cache): (&mut [f32], &mut [f32]),
    max_t: usize,
    cfg: &AttentionShape,
    chunk: &PrefillChunk,
) -> Vec<f32> {
    rope_kv_write_rows(qkv, positions, (k_cache, v_cache), max_t, cfg, Some(chunk))
}

/// The body of [`rope_kv_write_ref`] (`chunk` `None`: row `b` uses slot `b`) and of
/// [`rope_kv_write_prefill_ref`].
fn rope_kv_write_rows(
    qkv: &[f32],
    positions: &[i32],
    (k_cache, v_cache): (&mut [f32], &mut [f32]),
    max_t: usize,
    cfg: &AttentionShape,
    chunk: Option<&PrefillChunk>,
) -> Vec<f32> {
    let d = cfg.head_dim;
    let width = (cfg.q_heads + 2 * cfg.kv_heads) * d;
    let n = rows_of(qkv, width, "rope_kv_write_ref qkv");
    assert_eq!(
        positions.len(),
        n,
        "rope_kv_write_ref: one position per row"
    );
    let kv_row = cfg.kv_heads * d;
    assert_eq!(
        k_cache.len(),
        v_cache.len(),
        "rope_kv_write_ref: cache lengths"
    );
    let slots = rows_of(k_cache, max_t * kv_row, "rope_kv_write_ref k_cache");
    match chunk {
        None => assert!(
            slots >= n,
            "rope_kv_write_ref: {slots} cache slots for {n} rows"
        ),
        Some(c) => assert!(c.slot < slots, "rope_kv_write_ref: slot {}", c.slot),
    }
    let min_len = chunk.map_or(0, |c| c.seq_len);
    let rotate = |head: &mut [f32], pos: usize| {
        rotate_head_scaled(head, pos, cfg.rope_theta, &cfg.rope_scaling, min_len);
    };

    let q_width = q_width_of(cfg);
    let mut q_out = Vec::with_capacity(n * q_width);
    for (b, (row, &pos)) in qkv.chunks_exact(width).zip(positions).enumerate() {
        let Some(pos) = cache_position(pos, max_t) else {
            q_out.extend(std::iter::repeat_n(0.0, q_width));
            continue;
        };
        let (q, rest) = row.split_at(cfg.q_heads * d);
        let (k, v) = rest.split_at(kv_row);
        for head in q.chunks_exact(d) {
            let mut head = head.to_vec();
            rotate(&mut head, pos);
            q_out.extend_from_slice(&head);
        }
        let slot = chunk.map_or(b, |c| c.slot);
        let at = (slot * max_t + pos) * kv_row;
        let k_dst = &mut k_cache[at..at + kv_row];
        k_dst.copy_from_slice(k);
        for head in k_dst.chunks_exact_mut(d) {
            rotate(head, pos);
        }
        v_cache[at..at + kv_row].copy_from_slice(v);
    }
    q_out
}

/// What [`rope_kv_write_qk_norm`](crate::ops::rope_kv_write_qk_norm) does, on the host: every
/// q head of `qkv` is RMS-normalised over its `head_dim` elements with `q_weight` (`[head_dim]`),
/// every k head with `k_weight`, each normalised element **rounded to bf16** (as the kernel
/// does), then [`rope_kv_write_ref`] runs on the result. Returns the rotated q.
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write_qk_norm_ref(
    qkv: &[f32],
    positions: &[i32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    max_t: usize,
    cfg: &AttentionShape,
    (q_weight, k_weight): (&[f32], &[f32]),
    eps: f32,
) -> Vec<f32> {
    let normed = qk_norm_ref(qkv, cfg, (q_weight, k_weight), eps);
    rope_kv_write_ref(&normed, positions, k_cache, v_cache, max_t, cfg)
}

/// The q/k norm of [`rope_kv_write_qk_norm_ref`] alone: `qkv` with every q head RMS-normalised
/// with `q_weight`, every k head with `k_weight` (each element rounded to bf16), v unchanged.
pub fn qk_norm_ref(
    qkv: &[f32],
    cfg: &AttentionShape,
    (q_weight, k_weight): (&[f32], &[f32]),
    eps: f32,
) -> Vec<f32> {
    let d = cfg.head_dim;
    let width = (cfg.q_heads + 2 * cfg.kv_heads) * d;
    rows_of(qkv, width, "qk_norm_ref qkv");
    let mut normed = qkv.to_vec();
    for row in normed.chunks_exact_mut(width) {
        let (q, rest) = row.split_at_mut(cfg.q_heads * d);
        let k = &mut rest[..cfg.kv_heads * d];
        for (heads, weight) in [(q, q_weight), (k, k_weight)] {
            let out = round_bf16_slice(&rms_norm_ref(heads, weight, d, eps));
            heads.copy_from_slice(&out);
        }
    }
    normed
}

/// Decode attention, as [`attention_decode`](crate::ops::attention_decode): for row `b` and
/// query head `h` (kv head `h / (q_heads / kv_heads)`), softmax over cache positions
/// `0..=pos` (`pos = positions[b]`, clamped to `max_t - 1`) of `q . k / sqrt(head_dim)`,
/// then the weighted sum of the v rows; accumulated in f64. A row with a negative position is
/// padding: its output row is all zeros (and no cache is read for it).
///
/// `q`: `[n, q_heads * head_dim]`; caches: `[slots, max_t, kv_heads, head_dim]`, slot `b`
/// for row `b`. Returns `[n, q_heads * head_dim]`.
pub fn attention_ref(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    positions: &[i32],
    max_t: usize,
    cfg: &AttentionShape,
) -> Vec<f32> {
    attention_rows(q, (k_cache, v_cache), positions, max_t, cfg, None)
}

/// What [`attention_prefill`](crate::ops::attention_prefill) does, on the host:
/// [`attention_ref`] with every row reading slot `slot`.
pub fn attention_prefill_ref(
    q: &[f32],
    (k_cache, v_cache): (&[f32], &[f32]),
    positions: &[i32],
    max_t: usize,
    cfg: &AttentionShape,
    slot: usize,
) -> Vec<f32> {
    attention_rows(q, (k_cache, v_cache), positions, max_t, cfg, Some(slot))
}

/// The body of [`attention_ref`] (`slot` `None`: row `b` reads slot `b`) and of
/// [`attention_prefill_ref`].
fn attention_rows(
    q: &[f32],
    (k_cache, v_cache): (&[f32], &[f32]),
    positions: &[i32],
    max_t: usize,
    cfg: &AttentionShape,
    slot: Option<usize>,
) -> Vec<f32> {
    let d = cfg.head_dim;
    let q_width = q_width_of(cfg);
    let n = rows_of(q, q_width, "attention_ref q");
    assert_eq!(positions.len(), n, "attention_ref: one position per row");
    assert!(
        cfg.kv_heads > 0 && cfg.q_heads % cfg.kv_heads == 0,
        "attention_ref: heads"
    );
    let kv_row = cfg.kv_heads * d;
    assert_eq!(k_cache.len(), v_cache.len(), "attention_ref: cache lengths");
    let slots = rows_of(k_cache, max_t * kv_row, "attention_ref k_cache");
    match slot {
        None => assert!(
            slots >= n,
            "attention_ref: {slots} cache slots for {n} rows"
        ),
        Some(s) => assert!(s < slots, "attention_ref: slot {s}"),
    }
    let group = cfg.q_heads / cfg.kv_heads;
    let scale = 1.0 / (d as f64).sqrt();

    let mut out = Vec::with_capacity(q.len());
    for (b, (q_row, &pos)) in q.chunks_exact(q_width).zip(positions).enumerate() {
        let Some(last) = cache_position(pos, max_t) else {
            out.extend(std::iter::repeat_n(0.0, q_row.len()));
            continue;
        };
        let len = last + 1;
        for (h, q_head) in q_row.chunks_exact(d).enumerate() {
            let kv_head = h / group;
            let slot = slot.unwrap_or(b);
            let at = |t: usize| (slot * max_t + t) * kv_row + kv_head * d;
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    let k = &k_cache[at(t)..at(t) + d];
                    let dot: f64 = q_head
                        .iter()
                        .zip(k)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    dot * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|&s| (s - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for i in 0..d {
                let acc: f64 = weights
                    .iter()
                    .enumerate()
                    .map(|(t, &w)| w * f64::from(v_cache[at(t) + i]))
                    .sum();
                out.push((acc / sum) as f32);
            }
        }
    }
    out
}

/// SwiGLU: `gate_up` `[rows, 2 * inter]` (gate columns, then up columns) ->
/// `[rows, inter]` with `silu(g) * u`, `silu(g) = g / (1 + exp(-g))`.
pub fn silu_mul_ref(gate_up: &[f32], inter: usize) -> Vec<f32> {
    rows_of(gate_up, 2 * inter, "silu_mul_ref gate_up");
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * inter) {
        let (gate, up) = row.split_at(inter);
        out.extend(gate.iter().zip(up).map(|(&g, &u)| {
            let g = f64::from(g);
            (g / (1.0 + (-g).exp()) * f64::from(u)) as f32
        }));
    }
    out
}

/// Linear layer: `x` `[rows, in]` times `w^T` (`w`: `[out, in]`, PyTorch's layout), plus
/// `bias` (`[out]`) when given; accumulated in f64. Returns `[rows, out]`.
pub fn linear_ref(x: &[f32], w: &[f32], bias: Option<&[f32]>, in_features: usize) -> Vec<f32> {
    let rows = rows_of(x, in_features, "linear_ref x");
    let out_features = rows_of(w, in_features, "linear_ref w");
    if let Some(b) = bias {
        assert_eq!(b.len(), out_features, "linear_ref: bias length");
    }
    let mut out = Vec::with_capacity(rows * out_features);
    for x_row in x.chunks_exact(in_features) {
        for (o, w_row) in w.chunks_exact(in_features).enumerate() {
            let dot: f64 = x_row
                .iter()
                .zip(w_row)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let bias = bias.map_or(0.0, |b| f64::from(b[o]));
            out.push((dot + bias) as f32);
        }
    }
    out
}

/// Elementwise sum of two slices of the same length.
pub fn add_ref(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add_ref: lengths");
    a.iter().zip(b).map(|(&x, &y)| x + y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, tol: f32) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    fn assert_bf16_rule_matches_half(x: f32) {
        let ours = f32_to_bf16_bits(x);
        let theirs = bf16::from_f32(x);
        if x.is_nan() {
            assert_eq!(ours, BF16_NAN_BITS, "NaN {:#010x}", x.to_bits());
            assert!(theirs.is_nan());
        } else {
            assert_eq!(ours, theirs.to_bits(), "x = {x:e} ({:#010x})", x.to_bits());
        }
    }

    #[test]
    fn bf16_rounding_matches_half() {
        // Every high half with low halves around the rounding boundary (ties, just below and
        // above) and at the extremes: covers zeros, subnormals, overflow to infinity, NaNs.
        for hi in 0..=0xffffu32 {
            for lo in [
                0u32, 1, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xbfff, 0xfffe, 0xffff,
            ] {
                assert_bf16_rule_matches_half(f32::from_bits((hi << 16) | lo));
            }
        }
        // And many pseudo-random patterns.
        let mut z = 0x1234_5678_9abc_def0u64;
        for _ in 0..200_000 {
            z = z
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            assert_bf16_rule_matches_half(f32::from_bits((z >> 32) as u32));
        }
    }

    #[test]
    fn bf16_rounding_special_cases() {
        assert_eq!(f32_to_bf16_bits(0.0), 0x0000);
        assert_eq!(f32_to_bf16_bits(-0.0), 0x8000);
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(f32_to_bf16_bits(f32::NEG_INFINITY), 0xff80);
        assert_eq!(f32_to_bf16_bits(f32::NAN), BF16_NAN_BITS);
        assert_eq!(f32_to_bf16_bits(-f32::NAN), BF16_NAN_BITS);
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80, "rounds up to infinity");
        // Ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> even (1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6 -> even (1 + 2^-6).
        assert_eq!(f32_to_bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(f32_to_bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        for bits in [0u16, 0x3f80, 0xc2f7, 0x0001, 0x7f7f, 0xff7f] {
            assert_eq!(
                f32_to_bf16_bits(bf16_bits_to_f32(bits)),
                bits,
                "{bits:#06x}"
            );
        }
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16_slice(&[0.5, 3.0]), vec![0.5, 3.0]);
        assert_eq!(from_bf16_vec(&to_bf16_vec(&[1.5, -2.0])), vec![1.5, -2.0]);
    }

    #[test]
    fn uniform_is_deterministic_and_in_range() {
        let a = uniform_vec(7, 10_000, -2.0, 3.0);
        assert_eq!(a, uniform_vec(7, 10_000, -2.0, 3.0));
        assert_ne!(a, uniform_vec(8, 10_000, -2.0, 3.0));
        assert!(a.iter().all(|&v| (-2.0..3.0).contains(&v)));
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
        // Prefixes agree: element i does not depend on the length.
        assert_eq!(&uniform_vec(7, 10, -2.0, 3.0)[..], &a[..10]);
        assert_eq!(uniform_value(7, 3, -2.0, 3.0), a[3]);
        assert!((0.0..1.0).contains(&uniform_unit(u64::MAX, u64::MAX)));
        assert_eq!(uniform_value(1, 2, 4.0, 4.0), 4.0);
    }

    /// Values the kernel's formula produced (host emulation of `fill_uniform_f32`); pinned so a
    /// change to either side of the mirror is noticed.
    #[test]
    fn uniform_values_are_pinned() {
        let got: Vec<f32> = [0, 1, 2, 999]
            .iter()
            .map(|&i| uniform_value(42, i, -1.0, 1.0))
            .collect();
        assert_eq!(
            got,
            vec![0.483_129_74, -0.680_179_24, -0.442_797_78, -0.202_847]
        );
    }

    #[test]
    fn rms_norm_of_a_constant_row() {
        let hidden = 64;
        let x = [vec![3.0f32; hidden], vec![-0.5f32; hidden]].concat();
        let w: Vec<f32> = (0..hidden).map(|i| i as f32 / 8.0).collect();
        let y = rms_norm_ref(&x, &w, hidden, 0.0);
        for i in 0..hidden {
            assert!(close(y[i], w[i], 1e-6), "{} vs {}", y[i], w[i]);
            assert!(close(y[hidden + i], -w[i], 1e-6));
        }
        // eps keeps a zero row finite.
        let y = rms_norm_ref(&vec![0.0; hidden], &w, hidden, 1e-6);
        assert!(y.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn add_rms_norm_rounds_the_sum_first() {
        let hidden = 4;
        let residual = [1.0f32, 2.0, 3.0, 4.0];
        let delta = [1.0f32 / 512.0; 4]; // lost when rounded to bf16 next to 1..4
        let w = [1.0f32; 4];
        let (sum, normed) = add_rms_norm_ref(&residual, &delta, &w, hidden, 1e-6);
        assert_eq!(sum, residual.to_vec());
        assert_eq!(normed, rms_norm_ref(&residual, &w, hidden, 1e-6));
    }

    #[test]
    fn rope_at_position_zero_is_identity() {
        let (heads, d) = (3, 8);
        let x = uniform_vec(1, 2 * heads * d, -1.0, 1.0);
        assert_eq!(rope_ref(&x, &[0, 0], heads, d, 10_000.0), x);
    }

    #[test]
    fn rope_rotates_pairs() {
        let (heads, d) = (2, 8);
        let x = uniform_vec(2, heads * d, -1.0, 1.0);
        let pos = 5;
        let y = rope_ref(&x, &[pos], heads, d, 10_000.0);
        for h in 0..heads {
            for i in 0..d / 2 {
                let (a, b) = (h * d + i, h * d + i + d / 2);
                // A rotation keeps each pair's norm...
                let before = x[a].hypot(x[b]);
                let after = y[a].hypot(y[b]);
                assert!(close(after, before, 1e-6));
                // ...and turns it by pos * inv_freq.
                let angle = pos as f32 * rope_inv_freq(i, d, 10_000.0);
                let (s, c) = angle.sin_cos();
                assert!(close(y[a], x[a] * c - x[b] * s, 1e-5));
                assert!(close(y[b], x[b] * c + x[a] * s, 1e-5));
            }
        }
        // Pair 0 has inv_freq 1: position pi/2 would swap; check position 1 exactly.
        assert_eq!(rope_inv_freq(0, d, 10_000.0), 1.0);
        assert!(close(rope_inv_freq(1, 4, 100.0), 0.1, 1e-6));
    }

    #[test]
    fn rope_kv_write_fills_the_cache() {
        let cfg = AttentionShape {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
        };
        let (slots, max_t, n) = (3, 5, 2);
        let width = (cfg.q_heads + 2 * cfg.kv_heads) * cfg.head_dim;
        let qkv = uniform_vec(3, n * width, -1.0, 1.0);
        let kv_row = cfg.kv_heads * cfg.head_dim;
        let mut k_cache = vec![0.0; slots * max_t * kv_row];
        let mut v_cache = vec![0.0; slots * max_t * kv_row];
        // Row 1's position is out of range: clamped to max_t - 1.
        let positions = [2, 99];
        let q = rope_kv_write_ref(&qkv, &positions, &mut k_cache, &mut v_cache, max_t, &cfg);

        let q_width = q_width_of(&cfg);
        for (b, pos) in [(0usize, 2usize), (1, max_t - 1)] {
            let row = &qkv[b * width..(b + 1) * width];
            let expect_q = rope_ref(
                &row[..q_width],
                &[pos as i32],
                cfg.q_heads,
                cfg.head_dim,
                cfg.rope_theta,
            );
            assert_eq!(&q[b * q_width..(b + 1) * q_width], &expect_q[..]);
            let expect_k = rope_ref(
                &row[q_width..q_width + kv_row],
                &[pos as i32],
                cfg.kv_heads,
                cfg.head_dim,
                cfg.rope_theta,
            );
            let at = (b * max_t + pos) * kv_row;
            assert_eq!(&k_cache[at..at + kv_row], &expect_k[..]);
            assert_eq!(&v_cache[at..at + kv_row], &row[q_width + kv_row..]);
        }
        // Nothing else was written.
        let written = k_cache.iter().filter(|&&v| v != 0.0).count();
        assert_eq!(written, 2 * kv_row);
    }

    #[test]
    fn rope_kv_write_skips_padded_rows() {
        let cfg = AttentionShape {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
        };
        let (slots, max_t, n) = (3, 5, 3);
        let width = (cfg.q_heads + 2 * cfg.kv_heads) * cfg.head_dim;
        let qkv = uniform_vec(8, n * width, -1.0, 1.0);
        let kv_row = cfg.kv_heads * cfg.head_dim;
        let cache_len = slots * max_t * kv_row;
        let (k_before, v_before) = (
            uniform_vec(9, cache_len, -1.0, 1.0),
            uniform_vec(10, cache_len, -1.0, 1.0),
        );
        let (mut k_cache, mut v_cache) = (k_before.clone(), v_before.clone());
        // Rows 0 and 2 are padding; row 1 writes position 3 of slot 1.
        let positions = [-1, 3, i32::MIN];
        let q = rope_kv_write_ref(&qkv, &positions, &mut k_cache, &mut v_cache, max_t, &cfg);

        let q_width = q_width_of(&cfg);
        assert_eq!(q.len(), n * q_width);
        assert!(q[..q_width].iter().all(|&x| x == 0.0), "row 0's q is zero");
        assert!(
            q[2 * q_width..].iter().all(|&x| x == 0.0),
            "row 2's q is zero"
        );
        let row = &qkv[width..2 * width];
        let expect_q = rope_ref(&row[..q_width], &[3], cfg.q_heads, cfg.head_dim, 1e4);
        assert_eq!(&q[q_width..2 * q_width], &expect_q[..]);
        // Only slot 1, position 3 changed, in both caches.
        let at = (max_t + 3) * kv_row;
        for (i, ((&k, &kb), (&v, &vb))) in k_cache
            .iter()
            .zip(&k_before)
            .zip(v_cache.iter().zip(&v_before))
            .enumerate()
        {
            if !(at..at + kv_row).contains(&i) {
                assert_eq!(
                    (k.to_bits(), v.to_bits()),
                    (kb.to_bits(), vb.to_bits()),
                    "{i}"
                );
            }
        }
        assert_eq!(&v_cache[at..at + kv_row], &row[q_width + kv_row..]);
    }

    #[test]
    fn qk_norm_normalises_q_and_k_heads_only() {
        let cfg = AttentionShape {
            q_heads: 2,
            kv_heads: 1,
            head_dim: 8,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
        };
        let (max_t, d) = (4, cfg.head_dim);
        let width = (cfg.q_heads + 2 * cfg.kv_heads) * d;
        let qkv = uniform_vec(7, width, -3.0, 3.0);
        let ones = vec![1.0; d];
        let twos = vec![2.0; d];
        let mut k_cache = vec![0.0; max_t * d];
        let mut v_cache = vec![0.0; max_t * d];
        // Position 0: no rotation, so q is the normalised input itself.
        let q = rope_kv_write_qk_norm_ref(
            &qkv,
            &[0],
            &mut k_cache,
            &mut v_cache,
            max_t,
            &cfg,
            (&ones, &twos),
            1e-6,
        );
        for head in q.chunks_exact(d) {
            let rms = (head.iter().map(|v| v * v).sum::<f32>() / d as f32).sqrt();
            assert!(close(rms, 1.0, 1e-2), "q head rms {rms}");
        }
        let k_rms = (k_cache[..d].iter().map(|v| v * v).sum::<f32>() / d as f32).sqrt();
        assert!(close(k_rms, 2.0, 1e-2), "k head rms {k_rms}");
        assert_eq!(&v_cache[..d], &qkv[width - d..], "v is not normalised");
    }

    fn attention_case(positions: &[i32]) -> (AttentionShape, usize, Vec<f32>, Vec<f32>, Vec<f32>) {
        let cfg = AttentionShape {
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
        };
        let max_t = 6;
        let n = positions.len();
        let q = uniform_vec(4, n * q_width_of(&cfg), -1.0, 1.0);
        let cache_len = n * max_t * cfg.kv_heads * cfg.head_dim;
        let k = uniform_vec(5, cache_len, -1.0, 1.0);
        let v = uniform_vec(6, cache_len, -1.0, 1.0);
        (cfg, max_t, q, k, v)
    }

    #[test]
    fn attention_over_one_position_returns_its_value() {
        let positions = [0, 0];
        let (cfg, max_t, q, k, v) = attention_case(&positions);
        let out = attention_ref(&q, &k, &v, &positions, max_t, &cfg);
        let (d, kv_row) = (cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        for b in 0..2 {
            for h in 0..cfg.q_heads {
                let kv_head = h / (cfg.q_heads / cfg.kv_heads);
                let at = b * max_t * kv_row + kv_head * d;
                let got = &out[(b * cfg.q_heads + h) * d..][..d];
                for i in 0..d {
                    assert!(close(got[i], v[at + i], 1e-6));
                }
            }
        }
    }

    #[test]
    fn attention_with_equal_keys_averages_values() {
        let positions = [3, 0, 99]; // row 2 clamps to position max_t - 1
        let (cfg, max_t, q, mut k, v) = attention_case(&positions);
        k.iter_mut().for_each(|x| *x = 0.25);
        let out = attention_ref(&q, &k, &v, &positions, max_t, &cfg);
        let (d, kv_row) = (cfg.head_dim, cfg.kv_heads * cfg.head_dim);
        let h = 3;
        let kv_head = h / 2;
        let mean_over = |slot: usize, len: usize, i: usize| {
            (0..len)
                .map(|t| v[(slot * max_t + t) * kv_row + kv_head * d + i])
                .sum::<f32>()
                / len as f32
        };
        for i in 0..d {
            assert!(close(out[h * d + i], mean_over(0, 4, i), 1e-5));
            let only = v[max_t * kv_row + kv_head * d + i];
            assert!(close(out[(cfg.q_heads + h) * d + i], only, 1e-6));
            let all = out[(2 * cfg.q_heads + h) * d + i];
            assert!(close(all, mean_over(2, max_t, i), 1e-5));
        }
    }

    #[test]
    fn attention_of_a_padded_row_is_zero() {
        let positions = [2, -1, i32::MIN];
        let (cfg, max_t, q, k, v) = attention_case(&positions);
        let out = attention_ref(&q, &k, &v, &positions, max_t, &cfg);
        let q_width = q_width_of(&cfg);
        assert_eq!(out.len(), 3 * q_width);
        assert!(out[..q_width].iter().any(|&x| x != 0.0));
        assert!(out[q_width..].iter().all(|&x| x == 0.0), "padded rows");
        // The other row's output does not depend on the padded rows.
        let alone = attention_ref(&q[..q_width], &k, &v, &[2], max_t, &cfg);
        assert_eq!(&out[..q_width], &alone[..]);
    }

    #[test]
    fn attention_prefers_the_matching_key() {
        let positions = [2];
        let (cfg, max_t, _, mut k, v) = attention_case(&positions);
        let d = cfg.head_dim;
        let kv_row = cfg.kv_heads * d;
        // q of head 0 is a large multiple of e0; only position 1's key (kv head 0) points there.
        let mut q = vec![0.0; q_width_of(&cfg)];
        q[0] = 100.0;
        k.iter_mut().for_each(|x| *x = 0.0);
        k[kv_row] = 1.0;
        let out = attention_ref(&q, &k, &v, &positions, max_t, &cfg);
        for i in 0..d {
            assert!(close(out[i], v[kv_row + i], 1e-6));
        }
    }

    #[test]
    fn silu_mul_values() {
        let out = silu_mul_ref(&[0.0, 20.0, 1.0, 2.0, 3.0, -1.0], 3);
        assert_eq!(out[0], 0.0);
        assert!(close(out[1], 20.0 * 3.0, 1e-6));
        let silu1 = 1.0 / (1.0 + (-1.0f32).exp());
        assert!(close(out[2], -silu1, 1e-6));
    }

    #[test]
    fn linear_and_embedding() {
        // x [2, 3], w [2, 3].
        let x = [1.0, 2.0, 3.0, -1.0, 0.0, 1.0];
        let w = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        assert_eq!(linear_ref(&x, &w, None, 3), vec![1.0, 6.0, -1.0, 0.0]);
        assert_eq!(
            linear_ref(&x, &w, Some(&[0.5, -1.0]), 3),
            vec![1.5, 5.0, -0.5, -1.0]
        );
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        assert_eq!(
            embedding_ref(&table, 2, &[2, 0, 1000]),
            vec![20.0, 21.0, 0.0, 1.0, 20.0, 21.0]
        );
        assert_eq!(add_ref(&[1.0, 2.0], &[0.5, 0.5]), vec![1.5, 2.5]);
        assert_eq!(cache_position(-3, 8), None);
        assert_eq!(cache_position(-1, 8), None);
        assert_eq!(cache_position(i32::MIN, 8), None);
        assert_eq!(cache_position(0, 8), Some(0));
        assert_eq!(cache_position(8, 8), Some(7));
        assert_eq!(cache_position(i32::MAX, 8), Some(7));
        assert_eq!(cache_position(4, 8), Some(4));
    }
}
