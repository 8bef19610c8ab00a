//! RoPE, KV-cache write and decode attention of one decode step in one kernel launch.

use crate::{DType, Result, Runtime, Tensor};

use super::attention::{AttentionShape, attention_launch, attention_scale, check_caches};
use super::cache_rows::check_slots;
use super::check;
use super::rope::{QkNorm, check_qk_norm, check_qkv};
use super::rope_scaling::RopeScaling;
use crate::ffi::{self, Arg};
use crate::modules::{ATTENTION, names};

/// [`rope_kv_write`](super::rope_kv_write) (or [`rope_kv_write_qk_norm`](super::rope_kv_write_qk_norm)
/// when `norm` is given) followed by [`attention_decode`](super::attention_decode), in one
/// kernel: the same bits in the returned tensor and in the caches, one launch instead of two.
///
/// * `qkv`: bf16 `[n, (q_heads + 2 * kv_heads) * head_dim]` (q heads, then k, then v);
/// * `positions`: i32 `[n]`; a negative position marks a padded row (nothing written to the
///   cache, a zero output row), a position `>= max_t` is clamped to `max_t - 1`;
/// * `k_cache`, `v_cache`: bf16 `[slots, max_t, kv_heads, head_dim]`, `slots >= n`; row `b`
///   writes its rotated k and its v at `[b, pos[b]]` and attends over `0..=pos[b]`.
///
/// Returns the attention output, bf16 `[n, q_heads * head_dim]`.
///
/// ```no_run
/// # use cudagraph_kernels::{DType, Runtime};
/// # use cudagraph_kernels::ops::{self, AttentionShape, RopeScaling};
/// # fn main() -> cudagraph_runtime::Result<()> {
/// let rt = Runtime::new(0)?;
/// let attn = AttentionShape {
///     q_heads: 4, kv_heads: 2, head_dim: 64, rope_theta: 10_000.0, rope_scaling: RopeScaling::None,
/// };
/// let qkv = rt.zeros(&[1, (4 + 2 * 2) * 64], DType::BF16)?;
/// let positions = rt.upload(&[0i32], &[1])?;
/// let (k, v) = (rt.zeros(&[1, 16, 2, 64], DType::BF16)?, rt.zeros(&[1, 16, 2, 64], DType::BF16)?);
/// let ctx = ops::rope_attention_decode(&rt, &qkv, &positions, &k, &v, &attn, None)?;
/// assert_eq!(ctx.shape(), [1, 4 * 64]);
/// # Ok(()) }
/// ```
#[track_caller]
pub fn rope_attention_decode(
    rt: &Runtime,
    qkv: &Tensor,
    positions: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    cfg: &AttentionShape,
    norm: Option<&QkNorm<'_>>,
) -> Result<Tensor> {
    const OP: &str = "rope_attention_decode";
    rt.enter_op(OP);
    cfg.validate(OP)?;
    let (n, q_width) = check_qkv(rt, OP, qkv, positions, cfg)?;
    let (slots, max_t) = check_caches(rt, OP, k_cache, v_cache, cfg)?;
    check_slots(OP, slots, n)?;
    let (q_norm, k_norm, eps) = check_qk_norm(rt, OP, norm, cfg.head_dim)?;
    let launch_cfg = attention_launch(OP, cfg, n, max_t)?;

    let out_shape = [n, q_width];
    // The kernels' arguments around the RoPE ones (see the two launches below).
    let [h0, h1, h2, h3] = [
        Arg::Ptr(qkv.device_ptr()),
        Arg::Ptr(positions.device_ptr()),
        Arg::Ptr(k_cache.device_ptr()),
        Arg::Ptr(v_cache.device_ptr()),
    ];
    let [s0, s1, s2, s3, s4] = [
        Arg::I32(check::to_i32(OP, "n", n)?),
        Arg::I32(check::to_i32(OP, "q_heads", cfg.q_heads)?),
        Arg::I32(check::to_i32(OP, "kv_heads", cfg.kv_heads)?),
        Arg::I32(check::to_i32(OP, "head_dim", cfg.head_dim)?),
        Arg::I32(check::to_i32(OP, "max_t", max_t)?),
    ];
    let [t0, t1, t2, t3] = [
        Arg::Ptr(q_norm),
        Arg::Ptr(k_norm),
        Arg::F32(eps),
        Arg::F32(attention_scale(cfg)),
    ];
    // Plain RoPE runs the kernel without the scaling's parameters and instructions (~0.3 us
    // less per launch, the same bits: docs/gpu-runs.md runs 63 and 64). No allocation here:
    // this launch is in every layer of a decode step.
    if cfg.rope_scaling == RopeScaling::None {
        let func = rt.function(&ATTENTION, names::ROPE_ATTENTION_DECODE_BF16)?;
        let out = rt.alloc(&out_shape, DType::BF16)?;
        let o = Arg::Ptr(out.device_ptr());
        let theta = Arg::F32(cfg.rope_theta);
        let args = [h0, h1, h2, h3, o, s0, s1, s2, s3, s4, theta, t0, t1, t2, t3];
        ffi::launch(rt, &func, launch_cfg, &args)?;
        return Ok(out);
    }
    let func = rt.function(&ATTENTION, names::ROPE_ATTENTION_DECODE_SCALED_BF16)?;
    let out = rt.alloc(&out_shape, DType::BF16)?;
    let o = Arg::Ptr(out.device_ptr());
    let [r0, r1, r2, r3, r4, r5, r6, r7] = cfg.rope_scaling.kernel_args(cfg.rope_theta, 0);
    let args = [
        h0, h1, h2, h3, o, s0, s1, s2, s3, s4, r0, r1, r2, r3, r4, r5, r6, r7, t0, t1, t2, t3,
    ];
    ffi::launch(rt, &func, launch_cfg, &args)?;
    Ok(out)
}
