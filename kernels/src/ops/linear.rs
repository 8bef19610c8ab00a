//! Linear layers through cuBLAS (`cublasGemmEx`, bf16 in and out, f32 accumulation).

use cudagraph_runtime::{DType, Error, Result, Runtime, Tensor};

use super::check;
use super::elementwise::add_bias_impl;
use crate::ffi::{self, GemmTn};

/// `y = x @ w^T`: a linear layer without bias.
///
/// `x`: bf16 `[..., in]` (usually `[n, in]`; leading dimensions are flattened into rows);
/// `w`: bf16 `[out, in]`, row-major (PyTorch's layout). Returns bf16 `[..., out]`. Computed by
/// cuBLAS with f32 accumulation, rounded once.
#[track_caller]
pub fn linear(rt: &Runtime, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear";
    rt.enter_op(OP);
    linear_impl(rt, OP, x, w)
}

/// `y = x @ w^T + b`: a linear layer with bias (Qwen2's q/k/v projections).
///
/// As [`linear`], then `b`: bf16 `[out]` is added to every row by a separate kernel (so the
/// result is rounded to bf16 twice: after the GEMM and after the add).
#[track_caller]
pub fn linear_bias(rt: &Runtime, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_bias";
    rt.enter_op(OP);
    // Check the bias before launching anything.
    check::tensor(rt, OP, "b", b, DType::BF16)?;
    check::rank(OP, "w", w, 2, "[out, in]")?;
    let out_features = w.shape()[0];
    if b.shape() != [out_features] {
        return Err(Error::invalid(
            OP,
            format!(
                "`b` must have shape [{out_features}] (w's rows), got {:?}",
                b.shape()
            ),
        ));
    }
    let y = linear_impl(rt, OP, x, w)?;
    add_bias_impl(rt, OP, &y, b)
}

fn linear_impl(rt: &Runtime, op: &'static str, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    check::tensor(rt, op, "x", x, DType::BF16)?;
    check::tensor(rt, op, "w", w, DType::BF16)?;
    check::rank(op, "w", w, 2, "[out, in]")?;
    let (out_features, in_features) = (w.shape()[0], w.shape()[1]);
    if out_features == 0 || in_features == 0 {
        return Err(Error::invalid(
            op,
            format!("`w` is empty (shape {:?})", w.shape()),
        ));
    }
    let (rows, x_in) = check::rows_and_last(op, "x", x)?;
    if x_in != in_features {
        return Err(Error::invalid(
            op,
            format!(
                "`x` {:?} must end in w's in_features ({in_features}); w is {:?} ([out, in])",
                x.shape(),
                w.shape()
            ),
        ));
    }
    check::nonempty(op, rows)?;
    let mut dims = x.shape().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_features;
    }
    // Column-major view: C (out x rows, ldc = out) = W (A = w stored in x out, transposed)
    // times X^T (B = x stored in x rows, not transposed).
    let m = check::to_i32(op, "out_features", out_features)?;
    let n = check::to_i32(op, "rows", rows)?;
    let k = check::to_i32(op, "in_features", in_features)?;

    let y = rt.alloc(&dims, DType::BF16)?;
    ffi::gemm_bf16_tn(
        rt,
        &GemmTn {
            m,
            n,
            k,
            a: w.device_ptr(),
            lda: k,
            b: x.device_ptr(),
            ldb: k,
            c: y.device_ptr(),
            ldc: m,
        },
    )?;
    Ok(y)
}
