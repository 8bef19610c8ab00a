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
pub trait Element: cudarc::driver::DeviceRepr + Copy + Default + Send + Sync + 'static {
    /// The matching device element type.
    const DTYPE: DType;
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for u32 {
    const DTYPE: DType = DType::U32;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}

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
