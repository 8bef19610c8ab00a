//! Rotary position embedding fused with the KV-cache write of a decode step.

use cudagraph_runtime::{DType, Error, Result, Runtime, Tensor};

use super::attention::{AttentionShape, check_caches, check_positions, check_slots};
use super::check;
use crate::ffi::{self, Arg};
use crate::modules::{ROPE, names};

/// Threads per block of the RoPE kernel (one block per (row, head); `head_dim / 2 <= 128`).
const ROPE_BLOCK: u32 = 128;

/// Applies RoPE to the q and k heads of a fused qkv projection and writes k and v into the KV
/// cache; returns the rotated q.
///
/// * `qkv`: bf16 `[n, (q_heads + 2 * kv_heads) * head_dim]`: the q heads, then the k heads,
///   then the v heads of each row;
/// * `positions`: i32 `[n]`, each clamped into `[0, max_t - 1]` (so stale or padded rows can
///   never write out of bounds);
/// * `k_cache`, `v_cache`: bf16 `[slots, max_t, kv_heads, head_dim]`, `slots >= n`; row `b`
///   writes its rotated k and its (unrotated) v at `[b, pos[b], :, :]`.
///
/// Returns bf16 `[n, q_heads * head_dim]`.
///
/// Rotation (Llama / Hugging Face "rotate_half" convention), in f32: for `i < head_dim / 2`,
/// `inv_freq = 1 / theta^(2i / head_dim)`, `angle = pos * inv_freq`,
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
    cfg.validate(OP)?;
    check::tensor(rt, OP, "qkv", qkv, DType::BF16)?;
    // `validate` checked that the width does not overflow.
    let width = cfg.qkv_width().unwrap_or(usize::MAX);
    let layout = format!("[n, {width}] ((q_heads + 2 * kv_heads) * head_dim)");
    check::rank(OP, "qkv", qkv, 2, &layout)?;
    if qkv.shape()[1] != width {
        return Err(Error::invalid(
            OP,
            format!("`qkv` must have shape {layout}, got {:?}", qkv.shape()),
        ));
    }
    let n = qkv.rows();
    check::nonempty(OP, n)?;
    check_positions(rt, OP, positions, n)?;
    let (slots, max_t) = check_caches(rt, OP, k_cache, v_cache, cfg)?;
    check_slots(OP, slots, n)?;
    let total_heads = cfg.q_heads + 2 * cfg.kv_heads;
    let launch_cfg = check::grid_2d(
        OP,
        (n, "batch rows"),
        (total_heads, "q_heads + 2 * kv_heads"),
        ROPE_BLOCK,
        0,
    )?;

    let func = rt.function(&ROPE, names::ROPE_KV_WRITE_BF16)?;
    let q_out = rt.alloc(&[n, cfg.q_width()], DType::BF16)?;
    ffi::launch(
        rt,
        &func,
        launch_cfg,
        &[
            Arg::Ptr(qkv.device_ptr()),
            Arg::Ptr(positions.device_ptr()),
            Arg::Ptr(k_cache.device_ptr()),
            Arg::Ptr(v_cache.device_ptr()),
            Arg::Ptr(q_out.device_ptr()),
            Arg::I32(check::to_i32(OP, "n", n)?),
            Arg::I32(check::to_i32(OP, "q_heads", cfg.q_heads)?),
            Arg::I32(check::to_i32(OP, "kv_heads", cfg.kv_heads)?),
            Arg::I32(check::to_i32(OP, "head_dim", cfg.head_dim)?),
            Arg::I32(check::to_i32(OP, "max_t", max_t)?),
            Arg::F32(cfg.rope_theta),
        ],
    )?;
    Ok(q_out)
}
