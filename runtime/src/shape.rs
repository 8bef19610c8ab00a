//! [`Shape`]: a tensor's dimensions, bounded so that byte counts and offsets never overflow.

use std::fmt;

use crate::error::{Error, Result};

/// The most dimensions a tensor can have.
pub const MAX_RANK: usize = 6;

/// The largest number of bytes a tensor may span: `isize::MAX`, Rust's bound on one object,
/// so that element counts times element sizes, and every offset inside a tensor, fit in
/// `usize` and `isize` without overflow.
pub const MAX_TENSOR_BYTES: usize = isize::MAX as usize;

/// The widest element type, in bytes: shapes are checked against it, so any dtype's byte size
/// of a valid shape is computed without overflow.
const WIDEST_ELEMENT: usize = 4;

/// A tensor's dimensions, stored inline (no heap allocation per view).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_RANK],
    rank: u8,
}

impl Shape {
    /// A shape from its dimensions; at most [`MAX_RANK`], and at most
    /// [`MAX_TENSOR_BYTES`] bytes for the widest dtype: an error, never a wrapped count.
    pub fn new(dims: &[usize]) -> Result<Self> {
        if dims.len() > MAX_RANK {
            return Err(Error::invalid(
                "shape",
                format!("rank {} exceeds the maximum of {MAX_RANK}", dims.len()),
            ));
        }
        // Zero dimensions count as 1, so every partial product (a row's bytes, an offset) is
        // bounded too, not only the total.
        let bytes = dims
            .iter()
            .try_fold(WIDEST_ELEMENT, |acc, &d| acc.checked_mul(d.max(1)))
            .filter(|&b| b <= MAX_TENSOR_BYTES);
        if bytes.is_none() {
            return Err(Error::invalid(
                "shape",
                format!("{dims:?} has more elements than a tensor can address"),
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

    /// Number of elements (1 for a rank-0 shape). Never overflows: [`Shape::new`] checked it.
    pub fn numel(&self) -> usize {
        self.dims().iter().product()
    }

    /// The same shape with a new leading dimension (checked like [`Shape::new`]).
    pub fn with_rows(&self, rows: usize) -> Result<Self> {
        let mut dims = *self;
        if dims.rank > 0 {
            dims.dims[0] = rows;
        }
        Shape::new(dims.dims())
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element counts never wrap: the review's `[2^63 + 1, 2]` (2 elements after wrapping in
    /// release) and every shape past `isize::MAX` bytes are errors.
    #[test]
    fn overflowing_shapes_are_errors() {
        assert!(Shape::new(&[(1 << 63) + 1, 2]).is_err());
        assert!(Shape::new(&[usize::MAX]).is_err());
        assert!(Shape::new(&[1 << 31, 1 << 31]).is_err());
        assert!(Shape::new(&[1 << 21, 1 << 20, 1 << 20]).is_err());
        assert!(
            Shape::new(&[1 << 20, 1 << 20, 1 << 20]).is_ok(),
            "2^62 bytes fit"
        );
        assert!(
            Shape::new(&[0, usize::MAX]).is_err(),
            "its rows would still overflow"
        );
        assert_eq!(Shape::new(&[0, 7]).unwrap().numel(), 0);
        let ok = Shape::new(&[1 << 20, 1 << 20]).unwrap();
        assert_eq!(ok.numel(), 1 << 40);
        assert!(ok.with_rows(usize::MAX).is_err());
    }

    #[test]
    fn shape_rank_limit() {
        assert!(Shape::new(&[1; crate::shape::MAX_RANK]).is_ok());
        assert!(Shape::new(&[1; crate::shape::MAX_RANK + 1]).is_err());
        assert_eq!(Shape::new(&[2, 3, 4]).unwrap().numel(), 24);
        assert_eq!(Shape::new(&[]).unwrap().numel(), 1);
        assert_eq!(
            Shape::new(&[5, 3]).unwrap().with_rows(2).unwrap().dims(),
            &[2, 3]
        );
    }
}
