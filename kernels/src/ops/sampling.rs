//! Greedy sampling on the device: the index of each row's largest logit, so a serving step
//! downloads token ids (4 bytes a sequence) rather than logits (a vocabulary a sequence).

use crate::ffi::{self, Arg};
use crate::modules::{ELEMENTWISE, names};
use crate::{DType, Error, Result, Runtime, Tensor};

use super::check;

/// Threads per row (`ARGMAX_THREADS` in `cu/elementwise.cu`).
const ARGMAX_THREADS: u32 = 256;

/// The index of the largest element of each row of `x` (bf16 `[m, cols]`), u32 `[m]`: the
/// first of equal maxima; NaN never wins; a row of NaN gives 0.
///
/// ```no_run
/// # fn main() -> cudagraph_kernels::Result<()> {
/// use cudagraph_kernels::{Runtime, ops};
/// let rt = Runtime::new(0)?;
/// let logits = rt.upload(&[half::bf16::from_f32(0.5), half::bf16::from_f32(2.0)], &[1, 2])?;
/// let ids: Vec<u32> = rt.download(&ops::argmax_rows(&rt, &logits)?)?;
/// assert_eq!(ids, [1]);
/// # Ok(()) }
/// ```
#[track_caller]
pub fn argmax_rows(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "argmax_rows";
    rt.enter_op(OP);
    argmax_impl(rt, OP, x, None)
}

/// [`argmax_rows`] into `rows >= m` entries, those past `m` zero: a fixed-length output for a
/// graph whose row count is the captured size while fewer rows have logits.
#[track_caller]
pub fn argmax_rows_padded(rt: &Runtime, x: &Tensor, rows: usize) -> Result<Tensor> {
    const OP: &str = "argmax_rows_padded";
    rt.enter_op(OP);
    argmax_impl(rt, OP, x, Some(rows))
}

fn argmax_impl(rt: &Runtime, op: &'static str, x: &Tensor, rows: Option<usize>) -> Result<Tensor> {
    check::tensor(rt, op, "x", x, DType::BF16)?;
    check::rank(op, "x", x, 2, "[m, cols]")?;
    let (m, cols) = (x.shape()[0], x.shape()[1]);
    check::nonempty(op, m)?;
    check::nonempty(op, cols)?;
    let rows = rows.unwrap_or(m);
    if rows < m {
        return Err(Error::invalid(
            op,
            format!("{rows} output rows for {m} rows of logits: at least as many are needed"),
        ));
    }
    let cfg = check::grid_2d(op, (rows, "rows"), (1, "1"), ARGMAX_THREADS, 0)?;
    let func = rt.function(&ELEMENTWISE, names::ARGMAX_ROWS_BF16)?;
    let out = rt.alloc(&[rows], DType::U32)?;
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(x.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::I32(check::to_i32(op, "m", m)?),
            Arg::I32(check::to_i32(op, "cols", cols)?),
            Arg::I32(check::to_i32(op, "rows", rows)?),
        ],
    )?;
    Ok(out)
}
