//! Argument checks and launch-size helpers shared by the op launchers. Every failure is an
//! [`Error::InvalidArgument`](cudagraph_runtime::Error) naming the op: never a panic.

use crate::{DType, Error, Result, Runtime, Tensor};
use cudagraph_runtime::cudarc::driver::LaunchConfig;

/// Threads per block of the 1-D grid-stride kernels.
pub(crate) const ELEMENTWISE_BLOCK: u32 = 256;
/// Cap on the blocks of a 1-D grid-stride launch (each thread then loops).
const MAX_GRID_STRIDE_BLOCKS: usize = 1 << 16;
/// Largest `gridDim.x` CUDA allows.
const MAX_GRID_X: usize = (1 << 31) - 1;
/// Largest `gridDim.y` / `gridDim.z` CUDA allows.
const MAX_GRID_YZ: usize = 65_535;

/// Checks that `t` lives on the runtime's device and has dtype `dtype`; `what` names the
/// argument in the message.
pub(crate) fn tensor(
    rt: &Runtime,
    op: &'static str,
    what: &str,
    t: &Tensor,
    dtype: DType,
) -> Result<()> {
    rt.check_device(op, t)?;
    if t.dtype() != dtype {
        return Err(Error::invalid(
            op,
            format!(
                "`{what}` must be a {dtype} tensor, got {} (shape {:?})",
                t.dtype(),
                t.shape()
            ),
        ));
    }
    Ok(())
}

/// Checks that `t` has exactly `rank` dimensions; `layout` describes the expected shape.
pub(crate) fn rank(
    op: &'static str,
    what: &str,
    t: &Tensor,
    rank: usize,
    layout: &str,
) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::invalid(
            op,
            format!("`{what}` must have shape {layout}, got {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// The last dimension of `t` and the number of rows (product of the others); an error for a
/// rank-0 tensor.
pub(crate) fn rows_and_last(op: &'static str, what: &str, t: &Tensor) -> Result<(usize, usize)> {
    let Some(&last) = t.shape().last() else {
        return Err(Error::invalid(
            op,
            format!("`{what}` must have at least one dimension, got a scalar"),
        ));
    };
    if last == 0 {
        return Err(Error::invalid(
            op,
            format!(
                "`{what}` has an empty last dimension (shape {:?})",
                t.shape()
            ),
        ));
    }
    Ok((t.numel() / last, last))
}

/// An error for an empty batch (a grid dimension would be 0).
pub(crate) fn nonempty(op: &'static str, rows: usize) -> Result<()> {
    if rows == 0 {
        Err(Error::invalid(
            op,
            "empty batch (0 rows): nothing to launch",
        ))
    } else {
        Ok(())
    }
}

/// `a * b` for sizes derived from user shapes, or an error naming `what` when it overflows
/// (never a wrap, never a panic).
pub(crate) fn product(op: &'static str, what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| Error::invalid(op, format!("{what} = {a} * {b} overflows usize")))
}

/// `v` as a kernel `int`, or an error naming it.
pub(crate) fn to_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit a 32-bit int")))
}

/// `v` as a kernel `unsigned long long`, or an error naming it.
pub(crate) fn to_u64(op: &'static str, what: &str, v: usize) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit 64 bits")))
}

/// A launch dimension as `u32`, checked against CUDA's limit `max`.
fn grid_dim(op: &'static str, what: &str, v: usize, max: usize) -> Result<u32> {
    if v == 0 {
        return Err(Error::invalid(
            op,
            format!("{what} is 0: nothing to launch"),
        ));
    }
    if v > max {
        return Err(Error::invalid(
            op,
            format!("{what} = {v} exceeds the CUDA grid limit of {max}"),
        ));
    }
    u32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit 32 bits")))
}

/// A 1-D grid-stride configuration covering `numel` elements (`numel` > 0).
pub(crate) fn grid_stride(op: &'static str, numel: usize) -> Result<LaunchConfig> {
    if numel == 0 {
        return Err(Error::invalid(op, "empty tensor: nothing to launch"));
    }
    let blocks = numel
        .div_ceil(ELEMENTWISE_BLOCK as usize)
        .min(MAX_GRID_STRIDE_BLOCKS);
    Ok(LaunchConfig {
        grid_dim: (grid_dim(op, "grid size", blocks, MAX_GRID_X)?, 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A 2-D grid of `x * y` blocks of `block` threads with `shared_mem_bytes` of dynamic shared
/// memory; `x_what` and `y_what` name the dimensions in errors.
pub(crate) fn grid_2d(
    op: &'static str,
    (x, x_what): (usize, &str),
    (y, y_what): (usize, &str),
    block: u32,
    shared_mem_bytes: u32,
) -> Result<LaunchConfig> {
    Ok(LaunchConfig {
        grid_dim: (
            grid_dim(op, x_what, x, MAX_GRID_X)?,
            grid_dim(op, y_what, y, MAX_GRID_YZ)?,
            1,
        ),
        block_dim: (block, 1, 1),
        shared_mem_bytes,
    })
}

/// Threads for a one-block-per-row kernel over rows of `len` elements: a multiple of 32, at
/// least 32 and at most 256.
pub(crate) fn row_block(len: usize) -> u32 {
    // `min(256)` first, so the conversion cannot fail.
    let rounded = len.min(256).div_ceil(32).max(1) * 32;
    u32::try_from(rounded).unwrap_or(256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_are_warp_multiples() {
        assert_eq!(row_block(0), 32);
        assert_eq!(row_block(1), 32);
        assert_eq!(row_block(32), 32);
        assert_eq!(row_block(33), 64);
        assert_eq!(row_block(255), 256);
        assert_eq!(row_block(4096), 256);
        assert_eq!(row_block(usize::MAX), 256);
    }

    #[test]
    fn grid_stride_caps_blocks() {
        let cfg = grid_stride("t", 1).unwrap();
        assert_eq!(cfg.grid_dim, (1, 1, 1));
        assert_eq!(cfg.block_dim, (ELEMENTWISE_BLOCK, 1, 1));
        let cfg = grid_stride("t", 257).unwrap();
        assert_eq!(cfg.grid_dim.0, 2);
        let cfg = grid_stride("t", usize::MAX).unwrap();
        assert_eq!(cfg.grid_dim.0 as usize, MAX_GRID_STRIDE_BLOCKS);
        assert!(grid_stride("t", 0).is_err());
    }

    #[test]
    fn grid_2d_limits() {
        assert!(grid_2d("t", (1, "x"), (1, "y"), 128, 0).is_ok());
        assert!(grid_2d("t", (0, "x"), (1, "y"), 128, 0).is_err());
        assert!(grid_2d("t", (1, "x"), (65_536, "y"), 128, 0).is_err());
        assert!(grid_2d("t", (MAX_GRID_X + 1, "x"), (1, "y"), 128, 0).is_err());
        let cfg = grid_2d("t", (7, "x"), (65_535, "y"), 128, 64).unwrap();
        assert_eq!(cfg.grid_dim, (7, 65_535, 1));
        assert_eq!(cfg.shared_mem_bytes, 64);
    }

    #[test]
    fn int_casts_are_checked() {
        assert_eq!(to_i32("t", "n", 5).unwrap(), 5);
        assert!(to_i32("t", "n", i32::MAX as usize + 1).is_err());
        assert_eq!(to_u64("t", "n", 7).unwrap(), 7);
        assert!(nonempty("t", 0).is_err());
        assert!(nonempty("t", 1).is_ok());
    }

    #[test]
    fn products_are_checked() {
        assert_eq!(product("t", "rows * cols", 3, 7).unwrap(), 21);
        assert_eq!(product("t", "rows * cols", 0, usize::MAX).unwrap(), 0);
        let err = product("t", "rows * cols", usize::MAX / 2 + 1, 2).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("rows * cols") && message.contains("overflows"),
            "{message}"
        );
    }
}
