//! A linear layer fused with the norm or activation in front of it: [`rms_norm_linear`],
//! [`add_rms_norm_linear`], [`silu_mul_linear`].
//!
//! For one or two rows (rows that fit in shared memory) each is one launch: the
//! small-batch kernel (`cu/gemv.cu`) computes the norm or activation in its prologue, so a
//! decoder layer needs no separate norm or activation kernel. Otherwise each runs the unfused
//! kernels ([`rms_norm`](super::rms_norm), [`add_rms_norm`](super::add_rms_norm),
//! [`silu_mul`](super::silu_mul), then [`linear`](super::linear)). Every input is checked
//! before anything is launched.
//!
//! The fused and unfused paths compute each element the same way; the norm's sum of squares is
//! added in another order, so their results may differ by one bf16 ulp. A captured graph and
//! an eager call of the same batch size take the same path.

use crate::{DType, Error, Result, Runtime, Tensor};

use super::check;
use super::gemv::{self, GemvSizes, Prologue};
use super::linear::{check_bias, check_weight, linear_impl, linear_sizes};
use super::norm::{check_residual_delta, check_weight_eps};
use super::{add_rms_norm, rms_norm, silu_mul};

/// `linear(rms_norm(x, norm_weight, eps), w) (+ bias)`.
///
/// `x`: bf16 `[..., in]`; `norm_weight`: bf16 `[in]`; `w`: bf16 `[out, in]`; `bias`: bf16
/// `[out]`. Returns bf16 `[..., out]`. One launch for one or two rows (see
/// [`add_rms_norm_linear`]'s notes), else the unfused kernels.
#[track_caller]
pub fn rms_norm_linear(
    rt: &Runtime,
    x: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "rms_norm_linear";
    rt.enter_op(OP);
    let (sizes, dims) = linear_sizes(rt, OP, x, w)?;
    check_weight_eps(rt, OP, norm_weight, sizes.ins, eps)?;
    if let Some(b) = bias {
        check_bias(rt, OP, w, b)?;
    }
    let prologue = Prologue::RmsNorm {
        weight: norm_weight,
        eps,
    };
    if gemv::eligible(rt, sizes, x, w, &prologue) {
        let y = rt.alloc(&dims, DType::BF16)?;
        gemv::launch_gemv(rt, OP, sizes, (x, prologue), (w, bias), &y)?;
        return Ok(y);
    }
    let normed = rms_norm(rt, x, norm_weight, eps)?;
    rt.enter_op(OP);
    linear_impl(rt, OP, &normed, w, bias)
}

/// `(s, linear(rms_norm(s, norm_weight, eps), w) (+ bias))` with `s = bf16(residual + delta)`:
/// [`add_rms_norm`](super::add_rms_norm) and a linear layer.
///
/// `residual`, `delta`: bf16 of one shape `[..., in]`; `norm_weight`: bf16 `[in]`; `w`: bf16
/// `[out, in]`; `bias`: bf16 `[out]`. Returns the new residual `s` (`residual`'s shape) and the
/// projection (bf16 `[..., out]`).
///
/// For one or two rows whose input fits in shared memory, each fused op here is one launch: the
/// small-batch GEMV kernel computes the norm or activation in its prologue. Otherwise it runs
/// the unfused kernels ([`add_rms_norm`](super::add_rms_norm) or [`rms_norm`](super::rms_norm)
/// or [`silu_mul`](super::silu_mul), then [`linear`](super::linear)). Both paths compute each
/// element the same way; the norm's sum of squares is added in another order, so the results
/// may differ by one bf16 ulp. Every input is checked before anything is launched.
#[track_caller]
pub fn add_rms_norm_linear(
    rt: &Runtime,
    residual: &Tensor,
    delta: &Tensor,
    norm_weight: &Tensor,
    eps: f32,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "add_rms_norm_linear";
    rt.enter_op(OP);
    check_residual_delta(rt, OP, residual, delta)?;
    let (sizes, dims) = linear_sizes(rt, OP, residual, w)?;
    check_weight_eps(rt, OP, norm_weight, sizes.ins, eps)?;
    if let Some(b) = bias {
        check_bias(rt, OP, w, b)?;
    }
    let sum = rt.alloc(residual.shape(), DType::BF16)?;
    let prologue = Prologue::AddRmsNorm {
        delta,
        weight: norm_weight,
        eps,
        sum: &sum,
    };
    if gemv::eligible(rt, sizes, residual, w, &prologue) {
        let y = rt.alloc(&dims, DType::BF16)?;
        gemv::launch_gemv(rt, OP, sizes, (residual, prologue), (w, bias), &y)?;
        return Ok((sum, y));
    }
    drop(sum);
    let (sum, normed) = add_rms_norm(rt, residual, delta, norm_weight, eps)?;
    rt.enter_op(OP);
    let y = linear_impl(rt, OP, &normed, w, bias)?;
    Ok((sum, y))
}

/// `linear(silu_mul(gate_up), w)`: the down projection of a gated MLP with its activation.
///
/// `gate_up`: bf16 `[..., 2 inter]` (`[gate | up]` halves, as [`silu_mul`](super::silu_mul)
/// takes); `w`: bf16 `[out, inter]`. Returns bf16 `[..., out]`. One launch for one or two rows (see
/// [`add_rms_norm_linear`]'s notes), else the unfused kernels.
#[track_caller]
pub fn silu_mul_linear(rt: &Runtime, gate_up: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "silu_mul_linear";
    rt.enter_op(OP);
    check::tensor(rt, OP, "gate_up", gate_up, DType::BF16)?;
    check_weight(rt, OP, w)?;
    let (rows, width) = check::rows_and_last(OP, "gate_up", gate_up)?;
    let (out_features, inter) = (w.shape()[0], w.shape()[1]);
    if inter.checked_mul(2) != Some(width) {
        return Err(Error::invalid(
            OP,
            format!(
                "`gate_up` {:?} must end in twice w's in_features ({inter}); w is {:?}",
                gate_up.shape(),
                w.shape()
            ),
        ));
    }
    check::nonempty(OP, rows)?;
    let sizes = GemvSizes {
        rows,
        outs: out_features,
        ins: inter,
    };
    if gemv::eligible(rt, sizes, gate_up, w, &Prologue::SiluMul) {
        let mut dims = gate_up.shape().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out_features;
        }
        let y = rt.alloc(&dims, DType::BF16)?;
        gemv::launch_gemv(rt, OP, sizes, (gate_up, Prologue::SiluMul), (w, None), &y)?;
        return Ok(y);
    }
    let act = silu_mul(rt, gate_up)?;
    rt.enter_op(OP);
    linear_impl(rt, OP, &act, w, None)
}
