//! Linear layers: bf16 in and out, f32 accumulation. Batches of at most
//! [`GEMV_MAX_ROWS`](super::gemv::GEMV_MAX_ROWS) rows run the small-batch kernel
//! (`cu/gemv.cu`, bias fused) whatever the backend; larger ones go through the runtime's GEMM
//! backend ([`GemmBackend`]): cuBLAS or the built-in kernel (`cu/gemm.cu`).

use crate::{DType, Error, GemmBackend, Result, Runtime, Tensor};

use super::check;
use super::elementwise::add_bias_impl;
use super::gemv::{self, GemvSizes, Prologue};
use crate::ffi::{self, Arg, GemmTn};
use crate::modules::{GEMM, names};

/// Rows, outputs and warps of one block of the built-in GEMM (`GEMM_ROWS`, `GEMM_OUTS`,
/// `GEMM_WARPS` in `cu/gemm.cu`).
const BUILTIN_ROWS: usize = 4;
const BUILTIN_OUTS_PER_BLOCK: usize = 4 * 8;
const BUILTIN_THREADS: u32 = 32 * 8;

/// `y = x @ w^T`: a linear layer without bias.
///
/// `x`: bf16 `[..., in]` (usually `[n, in]`; leading dimensions are flattened into rows);
/// `w`: bf16 `[out, in]`, row-major (PyTorch's layout). Returns bf16 `[..., out]`. Computed
/// with f32 accumulation, rounded once: for one or two rows by the small-batch kernels, which
/// stream the weights once; above, by the runtime's
/// [`resolved_gemm_backend`](Runtime::resolved_gemm_backend): cuBLAS or the built-in kernel.
///
/// ```no_run
/// use cudagraph_kernels::ops;
/// use cudagraph_kernels::{DType, Runtime};
/// # fn main() -> cudagraph_runtime::Result<()> {
/// let rt = Runtime::new(0)?;
/// let w = rt.zeros(&[256, 1024], DType::BF16)?; // [out, in]
/// let x = rt.zeros(&[4, 1024], DType::BF16)?; // 4 rows
/// let y = ops::linear(&rt, &x, &w)?;
/// assert_eq!(y.shape(), [4, 256]);
/// # Ok(()) }
/// ```
#[track_caller]
pub fn linear(rt: &Runtime, x: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear";
    rt.enter_op(OP);
    linear_impl(rt, OP, x, w, None)
}

/// `y = x @ w^T + b`: a linear layer with bias (Qwen2's q/k/v projections).
///
/// As [`linear`], then `b`: bf16 `[out]` is added to every row (the result is rounded to bf16
/// twice: after the GEMM and after the add). Small batches add it in the GEMV kernel, larger
/// ones with a separate kernel after the GEMM.
#[track_caller]
pub fn linear_bias(rt: &Runtime, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_bias";
    rt.enter_op(OP);
    // Check the bias before launching anything.
    check_bias(rt, OP, w, b)?;
    linear_impl(rt, OP, x, w, Some(b))
}

/// The checked sizes of `x @ w^T`: `(rows, out_features, in_features)` and the output's dims
/// (`x`'s with the last replaced by `out_features`).
pub(crate) fn linear_sizes(
    rt: &Runtime,
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
) -> Result<(GemvSizes, Vec<usize>)> {
    check::tensor(rt, op, "x", x, DType::BF16)?;
    check_weight(rt, op, w)?;
    let (out_features, in_features) = (w.shape()[0], w.shape()[1]);
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
    let sizes = GemvSizes {
        rows,
        outs: out_features,
        ins: in_features,
    };
    Ok((sizes, dims))
}

/// Checks a bias `b` against the weight `w`: bf16 `[out]`.
pub(crate) fn check_bias(rt: &Runtime, op: &'static str, w: &Tensor, b: &Tensor) -> Result<()> {
    check::tensor(rt, op, "b", b, DType::BF16)?;
    check::rank(op, "w", w, 2, "[out, in]")?;
    let out_features = w.shape()[0];
    if b.shape() != [out_features] {
        return Err(Error::invalid(
            op,
            format!(
                "`b` must have shape [{out_features}] (w's rows), got {:?}",
                b.shape()
            ),
        ));
    }
    Ok(())
}

/// Checks a linear layer's weight: bf16 `[out, in]`, neither 0.
pub(crate) fn check_weight(rt: &Runtime, op: &'static str, w: &Tensor) -> Result<()> {
    check::tensor(rt, op, "w", w, DType::BF16)?;
    check::rank(op, "w", w, 2, "[out, in]")?;
    if w.shape().contains(&0) {
        return Err(Error::invalid(
            op,
            format!("`w` is empty (shape {:?})", w.shape()),
        ));
    }
    Ok(())
}

/// `x @ w^T (+ bias)` with checked sizes: the small-batch kernel when it takes them, else the
/// GEMM backend (and a bias kernel).
pub(crate) fn linear_impl(
    rt: &Runtime,
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (sizes, dims) = linear_sizes(rt, op, x, w)?;
    let y = rt.alloc(&dims, DType::BF16)?;
    if gemv::eligible(rt, sizes, x, w, &Prologue::Copy) {
        gemv::launch_gemv(rt, op, sizes, (x, Prologue::Copy), (w, bias), &y)?;
        return Ok(y);
    }
    let gemm = GemmSizes {
        rows: check::to_i32(op, "rows", sizes.rows)?,
        outs: check::to_i32(op, "out_features", sizes.outs)?,
        ins: check::to_i32(op, "in_features", sizes.ins)?,
    };
    match rt.resolved_gemm_backend() {
        GemmBackend::Builtin => builtin_gemm(rt, op, gemm, x, w, &y)?,
        GemmBackend::Cublas | GemmBackend::Auto => cublas_gemm(rt, gemm, x, w, &y)?,
    }
    match bias {
        Some(b) => add_bias_impl(rt, op, &y, b),
        None => Ok(y),
    }
}

/// The validated sizes of `y [rows, outs] = x [rows, ins] @ w [outs, ins]^T`.
#[derive(Clone, Copy)]
struct GemmSizes {
    rows: i32,
    outs: i32,
    ins: i32,
}

/// `y = x @ w^T` by cuBLAS. Column-major view: C (out x rows, ldc = out) = W (A = w stored
/// in x out, transposed) times X^T (B = x stored in x rows, not transposed).
fn cublas_gemm(rt: &Runtime, sizes: GemmSizes, x: &Tensor, w: &Tensor, y: &Tensor) -> Result<()> {
    let (m, n, k) = (sizes.outs, sizes.rows, sizes.ins);
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
    )
}

/// `y = x @ w^T` by the built-in kernel (`linear_bf16`): blocks of 4 rows x 32 outputs, the
/// row tiles along the grid's x.
fn builtin_gemm(
    rt: &Runtime,
    op: &'static str,
    sizes: GemmSizes,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
) -> Result<()> {
    // The sizes were checked to fit in an i32, so they are non-negative.
    let [rows, out_features, in_features] =
        [sizes.rows, sizes.outs, sizes.ins].map(|v| usize::try_from(v).unwrap_or(0));
    let cfg = check::grid_2d(
        op,
        (rows.div_ceil(BUILTIN_ROWS), "row tiles (4 rows)"),
        (
            out_features.div_ceil(BUILTIN_OUTS_PER_BLOCK),
            "output blocks (32 outputs)",
        ),
        BUILTIN_THREADS,
        0,
    )?;
    // 16-byte loads when every row starts 16-byte aligned.
    let vec = in_features % 8 == 0 && x.device_ptr() % 16 == 0 && w.device_ptr() % 16 == 0;
    let func = rt.function(&GEMM, names::LINEAR_BF16)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(x.device_ptr()),
            Arg::Ptr(w.device_ptr()),
            Arg::Ptr(y.device_ptr()),
            Arg::I32(sizes.rows),
            Arg::I32(sizes.outs),
            Arg::I32(sizes.ins),
            Arg::I32(i32::from(vec)),
        ],
    )
}
