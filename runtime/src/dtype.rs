//! Element types a [`Tensor`](crate::Tensor) can hold.

use std::fmt;

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// bfloat16: the top half of an IEEE f32.
    BF16,
    /// IEEE 754 single precision.
    F32,
    /// Unsigned 32-bit integer (token ids).
    U32,
    /// Signed 32-bit integer (positions, lengths).
    I32,
}

impl DType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::BF16 => 2,
            DType::F32 | DType::U32 | DType::I32 => 4,
        }
    }

    /// The short name used in messages and kernel names (`bf16`, `f32`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A host type that maps to a [`DType`]; used for uploads and downloads.
///
/// Sealed: implemented for `bf16`, `f32`, `u32` and `i32` only. The runtime copies
/// `size_of::<T>()` bytes per element into and out of device memory of `DTYPE`'s size, and
/// hands downloaded bytes back as `T`s: a type of another size would write past an
/// allocation, and one that not every byte pattern inhabits (a `bool` in a struct) would be
/// undefined behaviour on the host. Each implementation checks its size against its dtype at
/// compile time.
pub trait Element:
    sealed::SealedElement + cudarc::driver::DeviceRepr + Copy + Default + Send + Sync + 'static
{
    /// The matching device element type.
    const DTYPE: DType;
}

mod sealed {
    /// Only this crate implements [`Element`](super::Element).
    pub trait SealedElement {}
}

/// Implements [`Element`] for a plain number type whose every bit pattern is a value, and
/// checks at compile time that its size is its dtype's.
macro_rules! element {
    ($t:ty, $dtype:ident) => {
        impl sealed::SealedElement for $t {}
        impl Element for $t {
            const DTYPE: DType = {
                assert!(size_of::<$t>() == DType::$dtype.size_in_bytes());
                DType::$dtype
            };
        }
    };
}

element!(half::bf16, BF16);
element!(f32, F32);
element!(u32, U32);
element!(i32, I32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_host_types() {
        assert_eq!(DType::BF16.size_in_bytes(), size_of::<half::bf16>());
        assert_eq!(DType::F32.size_in_bytes(), size_of::<f32>());
        assert_eq!(DType::U32.size_in_bytes(), size_of::<u32>());
        assert_eq!(DType::I32.size_in_bytes(), size_of::<i32>());
    }
}
