//! Column ranges of row-major tensors: [`concat`] two tensors along their last dimension, and
//! [`split`] one into two. Both copy (the results are new tensors, not views).

use crate::{DType, Error, Result, Runtime, Tensor};

use super::check;
use crate::ffi::{self, Arg};
use crate::modules::{ELEMENTWISE, names};

/// `[a | b]` along the last dimension: `a` bf16 `[..., wa]`, `b` bf16 `[..., wb]` with the same
/// leading dimensions; returns bf16 `[..., wa + wb]`.
///
/// ```no_run
/// # use cudagraph_kernels::ops;
/// # use cudagraph_kernels::{DType, Runtime};
/// # fn main() -> cudagraph_runtime::Result<()> {
/// let rt = Runtime::new(0)?;
/// let (gate, up) = (rt.zeros(&[4, 8], DType::BF16)?, rt.zeros(&[4, 8], DType::BF16)?);
/// let gate_up = ops::concat(&rt, &gate, &up)?;
/// assert_eq!(gate_up.shape(), [4, 16]);
/// let (g, u) = ops::split(&rt, &gate_up, 8)?;
/// assert_eq!((g.shape(), u.shape()), (&[4, 8][..], &[4, 8][..]));
/// # Ok(()) }
/// ```
#[track_caller]
pub fn concat(rt: &Runtime, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "concat";
    rt.enter_op(OP);
    check::tensor(rt, OP, "a", a, DType::BF16)?;
    check::tensor(rt, OP, "b", b, DType::BF16)?;
    let (rows, wa) = check::rows_and_last(OP, "a", a)?;
    let (rows_b, wb) = check::rows_and_last(OP, "b", b)?;
    let (lead_a, lead_b) = (leading(a), leading(b));
    if lead_a != lead_b || rows != rows_b {
        return Err(Error::invalid(
            OP,
            format!(
                "`a` {:?} and `b` {:?} must agree in every dimension but the last",
                a.shape(),
                b.shape()
            ),
        ));
    }
    check::nonempty(OP, rows)?;
    let width = wa
        .checked_add(wb)
        .ok_or_else(|| Error::invalid(OP, "the joined width overflows"))?;
    let mut dims = lead_a.to_vec();
    dims.push(width);
    let out = rt.alloc(&dims, DType::BF16)?;
    copy_columns(rt, OP, (a, wa, 0), (&out, width, 0), rows, wa)?;
    copy_columns(rt, OP, (b, wb, 0), (&out, width, wa), rows, wb)?;
    Ok(out)
}

/// Splits `x` (bf16 `[..., w]`) at column `at` (`0 < at < w`) into `[..., at]` and
/// `[..., w - at]`, both new tensors.
#[track_caller]
pub fn split(rt: &Runtime, x: &Tensor, at: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "split";
    rt.enter_op(OP);
    check::tensor(rt, OP, "x", x, DType::BF16)?;
    let (rows, width) = check::rows_and_last(OP, "x", x)?;
    if at == 0 || at >= width {
        return Err(Error::invalid(
            OP,
            format!("`at` ({at}) must be inside the last dimension (0 < at < {width})"),
        ));
    }
    check::nonempty(OP, rows)?;
    let lead = leading(x);
    let shaped = |w: usize| {
        let mut dims = lead.to_vec();
        dims.push(w);
        dims
    };
    let left = rt.alloc(&shaped(at), DType::BF16)?;
    let right = rt.alloc(&shaped(width - at), DType::BF16)?;
    copy_columns(rt, OP, (x, width, 0), (&left, at, 0), rows, at)?;
    copy_columns(
        rt,
        OP,
        (x, width, at),
        (&right, width - at, 0),
        rows,
        width - at,
    )?;
    Ok((left, right))
}

/// All dimensions but the last.
fn leading(t: &Tensor) -> &[usize] {
    let dims = t.shape();
    &dims[..dims.len().saturating_sub(1)]
}

/// Copies columns `src_col0..src_col0 + cols` of `src` (rows of `src_width`) to columns
/// `dst_col0..` of `dst` (rows of `dst_width`), `rows` rows. The callers checked that both
/// tensors hold `rows` rows of their widths and that the ranges fit.
fn copy_columns(
    rt: &Runtime,
    op: &'static str,
    (src, src_width, src_col0): (&Tensor, usize, usize),
    (dst, dst_width, dst_col0): (&Tensor, usize, usize),
    rows: usize,
    cols: usize,
) -> Result<()> {
    let cfg = check::grid_stride(op, check::product(op, "rows * columns", rows, cols)?)?;
    let func = rt.function(&ELEMENTWISE, names::COPY_COLUMNS_BF16)?;
    let u = |what, v| check::to_u64(op, what, v);
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(src.device_ptr()),
            Arg::Ptr(dst.device_ptr()),
            Arg::U64(u("rows", rows)?),
            Arg::U64(u("columns", cols)?),
            Arg::U64(u("source width", src_width)?),
            Arg::U64(u("source column", src_col0)?),
            Arg::U64(u("destination width", dst_width)?),
            Arg::U64(u("destination column", dst_col0)?),
        ],
    )
}
