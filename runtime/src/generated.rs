//! Support for the code `#[cuda_graph]` generates, not meant to be called by hand: the
//! comparison of static arguments (floats by their bits) and the identity of an annotated
//! function. Re-exported as `cudagraph::__private`.

/// Two values of a static argument to compare, wrapped so that method resolution picks
/// [`ViaBits`] for floats and [`ViaPartialEq`] for everything else (autoref specialisation at
/// the concrete type the generated code names): `(&StaticCmp(&a, &b)).cg_same()`.
pub struct StaticCmp<'a, T: ?Sized>(pub &'a T, pub &'a T);

/// Bitwise comparison, for `f32` and `f64` statics: a NaN matches itself, and `-0.0` does not
/// match `0.0` (a graph bakes in the bits).
pub trait ViaBits {
    /// Whether the two wrapped values have the same bits.
    fn cg_same(&self) -> bool;
}

impl ViaBits for StaticCmp<'_, f32> {
    fn cg_same(&self) -> bool {
        self.0.to_bits() == self.1.to_bits()
    }
}

impl ViaBits for StaticCmp<'_, f64> {
    fn cg_same(&self) -> bool {
        self.0.to_bits() == self.1.to_bits()
    }
}

impl ViaBits for StaticCmp<'_, &f32> {
    fn cg_same(&self) -> bool {
        self.0.to_bits() == self.1.to_bits()
    }
}

impl ViaBits for StaticCmp<'_, &f64> {
    fn cg_same(&self) -> bool {
        self.0.to_bits() == self.1.to_bits()
    }
}

/// `==`, for every other static type.
pub trait ViaPartialEq {
    /// Whether the two wrapped values are equal.
    fn cg_same(&self) -> bool;
}

impl<T: PartialEq + ?Sized> ViaPartialEq for &StaticCmp<'_, T> {
    fn cg_same(&self) -> bool {
        self.0 == self.1
    }
}

/// The identity of an annotated function: FNV-1a over its module path, its name and a hash of
/// its tokens the macro computed. Two annotated functions get different runner types, so a
/// runner of one can't be refreshed with the other's forward.
pub const fn function_id(module: &str, name: &str, salt: u64) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = [module.as_bytes(), name.as_bytes(), &salt.to_le_bytes()];
    let mut p = 0;
    while p < parts.len() {
        let bytes = parts[p];
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(PRIME);
            i += 1;
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(PRIME);
        p += 1;
    }
    hash
}

/// The identity of an annotated function, as a type: `H` hashes its module path, its name and
/// its tokens (see [`function_id`]); `M` is the `Self` type of a method (`()` for a free
/// function), so every instance of a generic `impl<T> Model<T>` gets its own. The `F` of an
/// [`FnRunner`](crate::FnRunner): the generated `<fn>_graphs` returns an
/// `FnRunner<'_, FunctionId<H, M>, N, S, B>` and `<fn>_graphs_refresh` takes only that type.
/// Never constructed; it names.
pub struct FunctionId<const H: u64, M: ?Sized = ()>(std::marker::PhantomData<fn(&M)>);

/// `runner`, which the generated `<fn>_graphs` just built, as the runner of function `G` (its
/// [`FunctionId`]). For the code `#[cuda_graph]` generates: called by hand, it forges an
/// identity, which the generated refresh trusts to mean "this function's graphs". No memory
/// safety rests on it ([`Runner::refresh`](crate::Runner::refresh) takes any forward of the
/// runner's signature), only the guard against refreshing one function's graphs with
/// another's.
pub fn identify<'m, G, const N: usize, S: 'm, B: crate::Backend, L: 'm>(
    runner: crate::Runner<'m, N, S, B, L>,
) -> crate::FnRunner<'m, G, N, S, B, L> {
    crate::FnRunner::new(runner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Floats compare by bits (a NaN static matches itself), everything else with `==`. The
    /// borrows clippy calls needless are the dispatch itself, as the generated code writes it.
    #[test]
    #[allow(clippy::needless_borrow)]
    fn statics_compare_floats_by_bits() {
        #[allow(unused_imports)]
        use super::{ViaBits as _, ViaPartialEq as _};
        let nan = f32::NAN;
        assert!((&StaticCmp(&nan, &nan)).cg_same());
        assert!(!(&StaticCmp(&0.0f32, &-0.0f32)).cg_same());
        let nan64 = f64::NAN;
        assert!((&StaticCmp(&nan64, &nan64)).cg_same());
        let r = &nan;
        assert!((&StaticCmp(&r, &r)).cg_same(), "a `&f32` static too");
        assert!((&StaticCmp(&3u32, &3u32)).cg_same());
        assert!(!(&StaticCmp(&"a", &"b")).cg_same());
        // `==` would say otherwise:
        #[allow(clippy::eq_op)]
        let eq = nan == nan;
        assert!(!eq);
    }

    #[test]
    fn function_ids_differ_by_module_name_and_salt() {
        let a = function_id("m", "forward", 1);
        assert_eq!(a, function_id("m", "forward", 1));
        assert_ne!(a, function_id("m", "forward", 2));
        assert_ne!(a, function_id("m", "forward_b", 1));
        assert_ne!(a, function_id("n", "forward", 1));
        assert_ne!(function_id("ab", "c", 0), function_id("a", "bc", 0));
    }
}
