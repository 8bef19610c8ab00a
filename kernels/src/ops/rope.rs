//! Rotary position embedding fused with the KV-cache write of a decode step, optionally
//! preceded by a per-head RMS norm of q and k (Qwen3).

use crate::{DType, Error, Result, Runtime, Tensor};

use super::attention::{AttentionShape, check_caches, check_positions};
use super::cache_rows::CacheRows;
use super::check;
use crate::ffi::{self, Arg};
use crate::modules::{ROPE, names};

/// Threads per block of the RoPE kernel: one block per (row, head); its first warp rotates a q
/// or k head, all its threads copy a v head (a multiple of 32).
const ROPE_BLOCK: u32 = 128;

/// Per-head RMS norm weights of q and k, applied before RoPE (Qwen3's `q_norm` / `k_norm`).
#[derive(Debug, Clone, Copy)]
pub struct QkNorm<'a> {
    /// bf16 `[head_dim]`: the weight of every q head's norm.
    pub q_weight: &'a Tensor,
    /// bf16 `[head_dim]`: the weight of every k head's norm.
    pub k_weight: &'a Tensor,
    /// The norms' epsilon (finite, `>= 0`).
    pub eps: f32,
}

/// Applies RoPE to the q and k heads of a fused qkv projection and writes k and v into the KV
/// cache; returns the rotated q.
///
/// * `qkv`: bf16 `[n, (q_heads + 2 * kv_heads) * head_dim]`: the q heads, then the k heads,
///   then the v heads of each row;
/// * `positions`: i32 `[n]`. A negative position marks a padded row: nothing is written to the
///   cache and the output row is zero (vLLM's `PAD_SLOT_ID`; padded batch rows and warm-ups
///   leave every slot's state as it was). A position `>= max_t` is clamped to `max_t - 1`, so
///   a stale row can never write out of bounds (it overwrites its slot's last position);
/// * `k_cache`, `v_cache`: bf16 `[slots, max_t, kv_heads, head_dim]`, `slots >= n`; row `b`
///   writes its rotated k and its (unrotated) v at `[b, pos[b], :, :]`.
///
/// Returns bf16 `[n, q_heads * head_dim]` (all zeros in a padded row).
///
/// Rotation (Llama / Hugging Face "rotate_half" convention), in f32: for `i < head_dim / 2`,
/// `inv_freq = 1 / theta^(2i / head_dim)` (as `cfg.rope_scaling` scales it:
/// [`RopeScaling::inv_freq`](super::RopeScaling::inv_freq)), `angle = pos * inv_freq`, cos and
/// sin times the scaling's [`attention_factor`](super::RopeScaling::attention_factor),
/// `out[i] = x[i] cos - x[i + d/2] sin`, `out[i + d/2] = x[i + d/2] cos + x[i] sin`.
///
/// The caches are written through shared references: they are device state the model owns,
/// and the stream orders this write against every read (see [`Tensor`]).
#[track_caller]
pub fn rope_kv_write(
    rt: &Runtime,
    qkv: &Tensor,
    positions: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    cfg: &AttentionShape,
) -> Result<Tensor> {
    const OP: &str = "rope_kv_write";
    rt.enter_op(OP);
    rope_kv_write_impl(
        rt,
        OP,
        (qkv, positions),
        (k_cache, v_cache),
        cfg,
        None,
        CacheRows::PerRow,
    )
}

/// [`rope_kv_write`] with a per-head RMS norm of q and k first (Qwen3's `q_norm` and
/// `k_norm`, applied to each head before the rotation, as Hugging Face does).
///
/// Each element of a q head becomes `bf16(x * rsqrt(mean(x^2) + eps) * q_weight[i])` (the
/// mean over the head's `head_dim` elements, in f32; k heads likewise with `k_weight`) and is
/// then rotated; v is written unchanged. `norm`'s weights: bf16 `[head_dim]`. Shapes and
/// result otherwise as [`rope_kv_write`]; the norm adds no kernel launch. As there, a negative
/// position marks a padded row: nothing is written to the cache and the output row is zero.
#[track_caller]
pub fn rope_kv_write_qk_norm(
    rt: &Runtime,
    qkv: &Tensor,
    positions: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    cfg: &AttentionShape,
    norm: &QkNorm<'_>,
) -> Result<Tensor> {
    const OP: &str = "rope_kv_write_qk_norm";
    rt.enter_op(OP);
    rope_kv_write_impl(
        rt,
        OP,
        (qkv, positions),
        (k_cache, v_cache),
        cfg,
        Some(norm),
        CacheRows::PerRow,
    )
}

/// Checks a q/k norm weight: bf16 `[head_dim]`.
fn check_norm_weight(
    rt: &Runtime,
    op: &'static str,
    what: &str,
    weight: &Tensor,
    head_dim: usize,
) -> Result<()> {
    check::tensor(rt, op, what, weight, DType::BF16)?;
    if weight.shape() != [head_dim] {
        return Err(Error::invalid(
            op,
            format!(
                "`{what}` must have shape [{head_dim}] (head_dim), got {:?}",
                weight.shape()
            ),
        ));
    }
    Ok(())
}

/// Checks `qkv` (`[n, (q_heads + 2 * kv_heads) * head_dim]`, n > 0) and `positions` (`[n]`)
/// against a validated `cfg`; returns `(n, q_width)`.
pub(super) fn check_qkv(
    rt: &Runtime,
    op: &'static str,
    qkv: &Tensor,
    positions: &Tensor,
    cfg: &AttentionShape,
) -> Result<(usize, usize)> {
    check::tensor(rt, op, "qkv", qkv, DType::BF16)?;
    // `validate` checked that neither width overflows (nor exceeds an i32).
    let (width, q_width) = cfg.widths(op)?;
    let layout = format!("[n, {width}] ((q_heads + 2 * kv_heads) * head_dim)");
    check::rank(op, "qkv", qkv, 2, &layout)?;
    if qkv.shape()[1] != width {
        return Err(Error::invalid(
            op,
            format!("`qkv` must have shape {layout}, got {:?}", qkv.shape()),
        ));
    }
    let n = qkv.rows();
    check::nonempty(op, n)?;
    check_positions(rt, op, positions, n)?;
    Ok((n, q_width))
}

/// Checks the optional q/k norm; returns the kernel's `(q_norm, k_norm, eps)` arguments (null
/// pointers when there is no norm: the kernels skip it).
pub(super) fn check_qk_norm(
    rt: &Runtime,
    op: &'static str,
    norm: Option<&QkNorm<'_>>,
    head_dim: usize,
) -> Result<(u64, u64, f32)> {
    Ok(match norm {
        Some(norm) => {
            check_norm_weight(rt, op, "q_norm", norm.q_weight, head_dim)?;
            check_norm_weight(rt, op, "k_norm", norm.k_weight, head_dim)?;
            if !(norm.eps.is_finite() && norm.eps >= 0.0) {
                return Err(Error::invalid(
                    op,
                    format!("eps must be finite and >= 0, got {}", norm.eps),
                ));
            }
            (
                norm.q_weight.device_ptr(),
                norm.k_weight.device_ptr(),
                norm.eps,
            )
        }
        // Null pointers: the kernel skips the norm.
        None => (0, 0, 0.0),
    })
}

/// The shared body of the launchers (decode rows, or a prefill chunk's); `op` names the caller
/// in errors.
pub(super) fn rope_kv_write_impl(
    rt: &Runtime,
    op: &'static str,
    (qkv, positions): (&Tensor, &Tensor),
    (k_cache, v_cache): (&Tensor, &Tensor),
    cfg: &AttentionShape,
    norm: Option<&QkNorm<'_>>,
    rows: CacheRows<'_>,
) -> Result<Tensor> {
    cfg.validate(op)?;
    let (n, q_width) = check_qkv(rt, op, qkv, positions, cfg)?;
    let (slots, max_t) = check_caches(rt, op, k_cache, v_cache, cfg)?;
    let (slot, min_len) = rows.check(op, slots, n)?;
    let (q_norm, k_norm, eps) = check_qk_norm(rt, op, norm, cfg.head_dim)?;
    // At most the qkv width (head_dim >= 8), which `validate` bounded: no overflow.
    let total_heads = cfg
        .kv_heads
        .checked_mul(2)
        .and_then(|kv| kv.checked_add(cfg.q_heads))
        .ok_or_else(|| Error::invalid(op, "q_heads + 2 * kv_heads overflows"))?;
    let launch_cfg = check::grid_2d(
        op,
        (n, "batch rows"),
        (total_heads, "q_heads + 2 * kv_heads"),
        ROPE_BLOCK,
        0,
    )?;

    let func = rt.function(&ROPE, names::ROPE_KV_WRITE_BF16)?;
    let q_out = rt.alloc(&[n, q_width], DType::BF16)?;
    let mut args = vec![
        Arg::Ptr(qkv.device_ptr()),
        Arg::Ptr(positions.device_ptr()),
        Arg::Ptr(k_cache.device_ptr()),
        Arg::Ptr(v_cache.device_ptr()),
        Arg::Ptr(q_out.device_ptr()),
        Arg::I32(check::to_i32(op, "n", n)?),
        Arg::I32(check::to_i32(op, "q_heads", cfg.q_heads)?),
        Arg::I32(check::to_i32(op, "kv_heads", cfg.kv_heads)?),
        Arg::I32(check::to_i32(op, "head_dim", cfg.head_dim)?),
        Arg::I32(check::to_i32(op, "max_t", max_t)?),
        Arg::I32(slot),
    ];
    args.extend(cfg.rope_scaling.kernel_args(cfg.rope_theta, min_len));
    let (row_slots, slot_count) = rows.row_slots(slots);
    args.extend([
        Arg::Ptr(q_norm),
        Arg::Ptr(k_norm),
        Arg::F32(eps),
        Arg::Ptr(row_slots),
        Arg::I32(slot_count),
    ]);
    ffi::launch(rt, &func, launch_cfg, &args)?;
    Ok(q_out)
}
