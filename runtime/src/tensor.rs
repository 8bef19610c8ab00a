//! [`Tensor`]: device bytes, a shape and a dtype; row-narrowed views share the bytes.

use std::fmt;
use std::sync::Arc;

use crate::alloc::Storage;
use crate::dtype::DType;
use crate::error::{Error, Result};

/// The most dimensions a tensor can have.
pub const MAX_RANK: usize = 6;

/// A tensor's dimensions, stored inline (no heap allocation per view).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape from its dimensions; at most [`MAX_RANK`].
    pub fn new(dims: &[usize]) -> Result<Self> {
        if dims.len() > MAX_RANK {
            return Err(Error::invalid(
                "shape",
                format!("rank {} exceeds the maximum of {MAX_RANK}", dims.len()),
            ));
        }
        let mut inline = [0; MAX_RANK];
        inline[..dims.len()].copy_from_slice(dims);
        Ok(Self {
            dims: inline,
            rank: dims.len() as u8,
        })
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }

    /// Number of elements (1 for a rank-0 shape).
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// The same shape with a new leading dimension.
    pub fn with_rows(&self, rows: usize) -> Self {
        let mut out = *self;
        if out.rank > 0 {
            out.dims[0] = rows;
        }
        out
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// A contiguous, row-major tensor in device memory.
///
/// Cloning is cheap (the bytes are shared). Device contents are written by kernels through
/// shared references: the host never dereferences device memory, so this is outside Rust's
/// aliasing rules; what orders reads and writes is the stream.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    /// Byte offset of the first element within `storage`.
    offset: usize,
    shape: Shape,
    dtype: DType,
    ordinal: usize,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("device", &self.ordinal)
            .field("pool", &self.storage.is_pool())
            .finish()
    }
}

impl Tensor {
    pub(crate) fn from_storage(
        storage: Storage,
        shape: Shape,
        dtype: DType,
        ordinal: usize,
    ) -> Self {
        Self {
            storage: Arc::new(storage),
            offset: 0,
            shape,
            dtype,
            ordinal,
        }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The shape as a value.
    pub fn shape_value(&self) -> Shape {
        self.shape
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.dims().len()
    }

    /// The size of dimension `i`, or an error naming `op` when the tensor has fewer dimensions.
    pub fn dim(&self, i: usize) -> Result<usize> {
        self.shape().get(i).copied().ok_or_else(|| {
            Error::invalid(
                "tensor",
                format!("dimension {i} requested of a rank-{} tensor", self.rank()),
            )
        })
    }

    /// The leading dimension (rows); 1 for a rank-0 tensor.
    pub fn rows(&self) -> usize {
        self.shape().first().copied().unwrap_or(1)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// Size in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }

    /// Bytes in one row (the product of the trailing dimensions).
    pub fn row_bytes(&self) -> usize {
        let rest: usize = self.shape().iter().skip(1).product();
        rest * self.dtype.size_in_bytes()
    }

    /// The CUDA device ordinal the bytes live on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device address of the first element, for kernel arguments.
    pub fn device_ptr(&self) -> u64 {
        self.storage.device_ptr() + self.offset as u64
    }

    /// Whether the bytes live in a graph pool (allocated during a capture).
    pub fn is_pool_backed(&self) -> bool {
        self.storage.is_pool()
    }

    /// A view of rows `start..start + len` (no copy).
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::invalid("narrow_rows", "a rank-0 tensor has no rows"));
        }
        let end = start.checked_add(len).filter(|&end| end <= self.rows());
        if end.is_none() {
            return Err(Error::invalid(
                "narrow_rows",
                format!(
                    "rows {start}..{start}+{len} out of a tensor of {} rows",
                    self.rows()
                ),
            ));
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            offset: self.offset + start * self.row_bytes(),
            shape: self.shape.with_rows(len),
            dtype: self.dtype,
            ordinal: self.ordinal,
        })
    }

    /// The same bytes with another shape of the same number of elements (no copy).
    pub fn reshape(&self, dims: &[usize]) -> Result<Tensor> {
        let shape = Shape::new(dims)?;
        if shape.numel() != self.numel() {
            return Err(Error::invalid(
                "reshape",
                format!(
                    "{:?} has {} elements, {dims:?} has {}",
                    self.shape,
                    self.numel(),
                    shape.numel()
                ),
            ));
        }
        Ok(Tensor {
            shape,
            ..self.clone()
        })
    }

    /// Checks the dtype, naming `op` in the error.
    pub fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype == dtype {
            Ok(())
        } else {
            Err(Error::invalid(
                op,
                format!("expected a {dtype} tensor, got {}", self.dtype),
            ))
        }
    }

    /// Checks the shape, naming `op` in the error.
    pub fn expect_shape(&self, op: &'static str, dims: &[usize]) -> Result<()> {
        if self.shape() == dims {
            Ok(())
        } else {
            Err(Error::invalid(
                op,
                format!("expected shape {dims:?}, got {:?}", self.shape()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_rank_limit() {
        assert!(Shape::new(&[1; MAX_RANK]).is_ok());
        assert!(Shape::new(&[1; MAX_RANK + 1]).is_err());
        assert_eq!(Shape::new(&[2, 3, 4]).unwrap().numel(), 24);
        assert_eq!(Shape::new(&[]).unwrap().numel(), 1);
        assert_eq!(Shape::new(&[5, 3]).unwrap().with_rows(2).dims(), &[2, 3]);
    }
}
