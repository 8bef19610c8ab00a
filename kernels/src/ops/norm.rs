//! RMS norm and the fused residual-add + RMS norm.

use crate::{DType, Error, Result, Runtime, Tensor};
use cudagraph_runtime::cudarc::driver::LaunchConfig;

use super::check;
use crate::ffi::{self, Arg};
use crate::modules::{NORM, names};

/// Checks `eps` and `weight` against rows of `hidden` elements.
pub(super) fn check_weight_eps(
    rt: &Runtime,
    op: &'static str,
    weight: &Tensor,
    hidden: usize,
    eps: f32,
) -> Result<()> {
    check::tensor(rt, op, "weight", weight, DType::BF16)?;
    if weight.shape() != [hidden] {
        return Err(Error::invalid(
            op,
            format!(
                "`weight` must have shape [{hidden}] (the rows' length), got {:?}",
                weight.shape()
            ),
        ));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::invalid(
            op,
            format!("eps must be finite and >= 0, got {eps}"),
        ));
    }
    Ok(())
}

/// Checks a residual and the delta added to it: bf16 tensors of one shape.
pub(super) fn check_residual_delta(
    rt: &Runtime,
    op: &'static str,
    residual: &Tensor,
    delta: &Tensor,
) -> Result<()> {
    check::tensor(rt, op, "residual", residual, DType::BF16)?;
    check::tensor(rt, op, "delta", delta, DType::BF16)?;
    if residual.shape() != delta.shape() {
        return Err(Error::invalid(
            op,
            format!(
                "`residual` {:?} and `delta` {:?} must have the same shape",
                residual.shape(),
                delta.shape()
            ),
        ));
    }
    Ok(())
}

/// RMS norm of each row: `y = x * rsqrt(mean(x^2) + eps) * weight`, in f32, rounded once to
/// bf16.
///
/// `x`: bf16 `[..., hidden]` (usually `[n, hidden]`; any leading dimensions are rows, so
/// `[n, heads, head_dim]` normalises per head); `weight`: bf16 `[hidden]`. Returns a new tensor
/// of `x`'s shape. One block per row.
///
/// Hugging Face's `LlamaRMSNorm` rounds the normalised row to bf16 before multiplying by the
/// weight; this kernel rounds once, so results may differ from it by one bf16 ulp.
#[track_caller]
pub fn rms_norm(rt: &Runtime, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    rt.enter_op(OP);
    check::tensor(rt, OP, "x", x, DType::BF16)?;
    let (rows, hidden) = check::rows_and_last(OP, "x", x)?;
    check::nonempty(OP, rows)?;
    check_weight_eps(rt, OP, weight, hidden, eps)?;

    let func = rt.function(&NORM, names::RMS_NORM_BF16)?;
    let out = rt.alloc(x.shape(), DType::BF16)?;
    let cfg = row_config(OP, rows, hidden)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(x.device_ptr()),
            Arg::Ptr(weight.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::I32(check::to_i32(OP, "rows", rows)?),
            Arg::I32(check::to_i32(OP, "hidden", hidden)?),
            Arg::F32(eps),
        ],
    )?;
    Ok(out)
}

/// Fused residual add + RMS norm: returns `(new_residual, normed)` with
/// `new_residual = bf16(residual + delta)` and `normed = rms_norm(new_residual, weight, eps)`.
///
/// The norm is computed from the bf16-rounded sum, exactly as an unfused bf16 implementation
/// (`add` then [`rms_norm`]) would. `residual` and `delta`: bf16 of the same shape
/// `[..., hidden]`; `weight`: bf16 `[hidden]`. Both outputs are newly allocated (the inputs are
/// not modified).
#[track_caller]
pub fn add_rms_norm(
    rt: &Runtime,
    residual: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "add_rms_norm";
    rt.enter_op(OP);
    check_residual_delta(rt, OP, residual, delta)?;
    let (rows, hidden) = check::rows_and_last(OP, "residual", residual)?;
    check::nonempty(OP, rows)?;
    check_weight_eps(rt, OP, weight, hidden, eps)?;

    let func = rt.function(&NORM, names::ADD_RMS_NORM_BF16)?;
    let new_residual = rt.alloc(residual.shape(), DType::BF16)?;
    let normed = rt.alloc(residual.shape(), DType::BF16)?;
    let cfg = row_config(OP, rows, hidden)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(residual.device_ptr()),
            Arg::Ptr(delta.device_ptr()),
            Arg::Ptr(weight.device_ptr()),
            Arg::Ptr(new_residual.device_ptr()),
            Arg::Ptr(normed.device_ptr()),
            Arg::I32(check::to_i32(OP, "rows", rows)?),
            Arg::I32(check::to_i32(OP, "hidden", hidden)?),
            Arg::F32(eps),
        ],
    )?;
    Ok((new_residual, normed))
}

/// One block per row, a warp multiple of threads (the kernels' block reduction needs it).
fn row_config(op: &'static str, rows: usize, hidden: usize) -> Result<LaunchConfig> {
    check::grid_2d(op, (rows, "rows"), (1, "1"), check::row_block(hidden), 0)
}
