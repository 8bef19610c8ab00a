//! What the code `#[cuda_graph(buckets = [..], variants = [..])]` generates calls: the bounds
//! of a bucketed host argument (an integer) and of a variant (`Copy + Eq`), checked at the
//! argument's type so the error names it, and the conversions between a bucketed value and the
//! `u64` the runner rounds up. Re-exported as `cudagraph::__private`.

use crate::error::{Error, Result};

/// A host argument `buckets` rounds up: an integer type.
#[diagnostic::on_unimplemented(
    message = "`buckets` rounds up an integer host argument; `{Self}` is not an integer",
    label = "not an integer",
    note = "bucket a dimension of a tensor argument with `name[dim] = [..]`; key the graphs by another type with `variants = [name = [..]]` (a `Copy + Eq` type), or list it in `static_args`"
)]
pub trait BucketValue: Copy + PartialEq + Sync + 'static {
    /// The value as `u64` (a negative value as 0: it rounds up to the first bucket).
    fn key_value(self) -> u64;
    /// A bucket's value in this type, or `None` if it does not fit.
    fn from_bucket(bucket: u64) -> Option<Self>;
}

macro_rules! bucket_value {
    ($($t:ty),*) => {$(
        impl BucketValue for $t {
            fn key_value(self) -> u64 {
                u64::try_from(self).unwrap_or(0)
            }
            fn from_bucket(bucket: u64) -> Option<Self> {
                <$t>::try_from(bucket).ok()
            }
        }
    )*};
}

bucket_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// A host argument `variants` keys the graphs by: a value compared with `==` (each listed value
/// is a `match` arm), copied into the statics of each variant's graphs.
#[diagnostic::on_unimplemented(
    message = "`variants` keys the graphs by a `Copy + Eq` host argument; `{Self}` is not one",
    label = "not `Copy + Eq + Sync`",
    note = "a variant is a `bool`, an integer or a fieldless enum (`#[derive(Clone, Copy, PartialEq, Eq)]`); a value that can't be copied can't select a graph set"
)]
pub trait VariantValue: Copy + Eq + Sync + 'static {}

impl<T: Copy + Eq + Sync + 'static> VariantValue for T {}

/// Compiles only for an integer type (see [`BucketValue`]).
pub fn assert_bucket_arg<T: BucketValue>() {}

/// Compiles only for a `Copy + Eq` type (see [`VariantValue`]).
pub fn assert_variant_arg<T: VariantValue>() {}

/// An error unless every bucket of `name` fits `T` (`u8` with a bucket of 1000 does not).
pub fn check_buckets_fit<T: BucketValue>(name: &'static str, buckets: &[u64]) -> Result<()> {
    match buckets.iter().find(|&&b| T::from_bucket(b).is_none()) {
        Some(b) => Err(Error::invalid(
            "buckets",
            format!(
                "bucket {b} of `{name}` does not fit its type `{}`",
                std::any::type_name::<T>()
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_convert_both_ways() {
        assert_eq!(7u8.key_value(), 7);
        assert_eq!(
            (-3i32).key_value(),
            0,
            "a negative value rounds up to the first bucket"
        );
        assert_eq!(u8::from_bucket(255), Some(255));
        assert_eq!(u8::from_bucket(256), None);
        assert!(check_buckets_fit::<u8>("x", &[1, 255]).is_ok());
        let err = check_buckets_fit::<u8>("x", &[1, 1000]).unwrap_err();
        assert!(err.to_string().contains("bucket 1000 of `x`"), "{err}");
    }
}
