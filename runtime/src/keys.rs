//! Dispatch keys beyond the batch (issue 27): host values rounded up to buckets, non-batch
//! input dimensions padded to buckets, and variants of a host argument. A runner captures one
//! graph per (size, key) and dispatches each call by its batch and its key.
//!
//! A key is a *combination*: one index per component, components in the order values, variants,
//! dimensions; the combination's number is their mixed-radix value (the first value component
//! varies slowest). A runner's graph `g` is size index `g % sizes` of combination `g / sizes`.
//!
//! The host components (values and variants) are read from the call's statics by functions the
//! macro generates ([`HostKeys`]), with the bucket lists as literals: the lookup is compiled.
//! The dimension components are read from the inputs' shapes by the runner.

use std::borrow::Cow;
use std::fmt;

use crate::error::{Error, Result};

/// The most components a key may have (values, variants and dimensions together).
pub const MAX_KEY_COMPONENTS: usize = 8;

/// The most graphs (sizes x combinations) one runner may hold.
pub const MAX_KEYED_GRAPHS: usize = 1 << 16;

/// A host value rounded up to buckets: `buckets = [max_context = [512, 2048, 8192]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueBuckets {
    /// The argument's name, for stats and messages.
    pub name: &'static str,
    /// The buckets, ascending, unique, positive.
    pub buckets: Cow<'static, [u64]>,
}

/// A variant of a host argument: one graph set per listed value (`variants = [lora = [false,
/// true]]`). The runtime knows the values by their labels only; the generated code maps a
/// call's value to its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variants {
    /// The argument's name.
    pub name: &'static str,
    /// Each value as written in the attribute (`"false"`, `"Mode::Fast"`).
    pub labels: Cow<'static, [&'static str]>,
}

/// A non-batch dimension of one or more inputs padded to buckets (`buckets = [block_tables[1]
/// = [64, 256]]`; `tokens[1] + positions[1] = [1, 2, 4]` for dimensions that go together):
/// the forward sees the bucket's size, the entries past the call's hold the input's pad value.
/// The call's size of it is the largest of its members'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimBuckets {
    /// Its name, as written (`block_tables[1]`, `tokens[1]+positions[1]`).
    pub name: &'static str,
    /// The (input index among the tensor inputs, dimension) pairs it pads; each dimension 1 or
    /// more (0 is the batch), each input at most once.
    pub members: Vec<(usize, usize)>,
    /// The buckets, ascending, unique, positive.
    pub buckets: Cow<'static, [usize]>,
}

/// Every key component of a runner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySpace {
    values: Vec<ValueBuckets>,
    variants: Vec<Variants>,
    dims: Vec<DimBuckets>,
}

/// Which component of a call's key had no graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// A bucketed value or dimension above its largest bucket.
    AboveBuckets,
    /// A variant's value that is not listed.
    UnlistedVariant,
}

/// The host components of a runner's keys, as the macro generates them for its statics `S`.
pub struct HostKeys<S> {
    /// Writes each bucketed value of a call's statics (as `u64`; a negative value as 0) and the
    /// index of each variant (a `match` on the listed values), in that order, or says that a
    /// variant's value is not listed. The runner rounds the values up to their buckets.
    pub of: fn(&S, &mut [u64]) -> std::result::Result<(), KeyMiss>,
    /// The statics the forward runs with at a key: each bucketed value replaced by its bucket's
    /// value (variants are exact already). Indices as `of` writes them.
    pub at: fn(&S, &[usize]) -> S,
}

impl<S> Clone for HostKeys<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for HostKeys<S> {}

impl<S> fmt::Debug for HostKeys<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKeys").finish_non_exhaustive()
    }
}

/// Checks a bucket list: non-empty, ascending, unique, positive.
fn check_buckets(name: &str, buckets: &[u64]) -> Result<()> {
    if buckets.is_empty() {
        return Err(Error::invalid(
            "buckets",
            format!("`{name}` has no bucket: give at least one"),
        ));
    }
    if buckets[0] == 0 {
        return Err(Error::invalid(
            "buckets",
            format!("`{name}`: a bucket must be at least 1"),
        ));
    }
    if let Some(pair) = buckets.windows(2).find(|p| p[0] >= p[1]) {
        return Err(Error::invalid(
            "buckets",
            format!(
                "`{name}`: buckets must be ascending and unique: {} comes before {}",
                pair[0], pair[1]
            ),
        ));
    }
    Ok(())
}

/// The index of the smallest bucket holding `value` (ascending `buckets`), or `None` above the
/// largest. `const`, so that generated code may evaluate it on literals.
pub const fn bucket_index(buckets: &[u64], value: u64) -> Option<usize> {
    let mut i = 0;
    while i < buckets.len() {
        if value <= buckets[i] {
            return Some(i);
        }
        i += 1;
    }
    None
}

impl DimBuckets {
    /// The call's size of this dimension: the largest of its members' in `dims` (the inputs'
    /// shapes, batch first).
    pub fn size_in(&self, dims: &[&[usize]]) -> usize {
        self.members
            .iter()
            .filter_map(|&(input, dim)| dims.get(input).and_then(|s| s.get(dim)).copied())
            .max()
            .unwrap_or(0)
    }
}

impl KeySpace {
    /// No component: one combination (the batch alone keys the graphs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bucketed host value.
    pub fn with_value_buckets(
        mut self,
        name: &'static str,
        buckets: impl Into<Cow<'static, [u64]>>,
    ) -> Result<Self> {
        let buckets = buckets.into();
        check_buckets(name, &buckets)?;
        self.values.push(ValueBuckets { name, buckets });
        self.check()
    }

    /// Adds a variant with the given labels.
    pub fn with_variants(
        mut self,
        name: &'static str,
        labels: impl Into<Cow<'static, [&'static str]>>,
    ) -> Result<Self> {
        let labels = labels.into();
        if labels.is_empty() {
            return Err(Error::invalid(
                "variants",
                format!("`{name}` lists no value"),
            ));
        }
        self.variants.push(Variants { name, labels });
        self.check()
    }

    /// Adds a bucketed dimension: `members` are (tensor input, dimension at least 1) pairs
    /// padded to the same bucket (one input at most once across every bucketed dimension).
    pub fn with_dim_buckets(
        mut self,
        name: &'static str,
        members: &[(usize, usize)],
        buckets: impl Into<Cow<'static, [usize]>>,
    ) -> Result<Self> {
        let buckets = buckets.into();
        let wide: Vec<u64> = buckets.iter().map(|&b| b as u64).collect();
        check_buckets(name, &wide)?;
        if members.is_empty() {
            return Err(Error::invalid(
                "buckets",
                format!("`{name}` names no dimension"),
            ));
        }
        for (k, &(input, dim)) in members.iter().enumerate() {
            if dim == 0 {
                return Err(Error::invalid(
                    "buckets",
                    format!("`{name}`: dimension 0 is the batch; bucket a dimension after it"),
                ));
            }
            let mut taken = self
                .dims
                .iter()
                .flat_map(|d| &d.members)
                .chain(&members[..k]);
            if taken.any(|&(i, _)| i == input) {
                return Err(Error::invalid(
                    "buckets",
                    format!(
                        "`{name}`: input {input} has a bucketed dimension already (one per input)"
                    ),
                ));
            }
        }
        self.dims.push(DimBuckets {
            name,
            members: members.to_vec(),
            buckets,
        });
        self.check()
    }

    fn check(self) -> Result<Self> {
        if self.components() > MAX_KEY_COMPONENTS {
            return Err(Error::invalid(
                "buckets",
                format!(
                    "at most {MAX_KEY_COMPONENTS} bucketed values, dimensions and variants together"
                ),
            ));
        }
        if self.combinations_checked().is_none() {
            return Err(Error::invalid(
                "buckets",
                format!("the buckets and variants make more than {MAX_KEYED_GRAPHS} combinations"),
            ));
        }
        Ok(self)
    }

    /// The bucketed values.
    pub fn values(&self) -> &[ValueBuckets] {
        &self.values
    }

    /// The variants.
    pub fn variants(&self) -> &[Variants] {
        &self.variants
    }

    /// The bucketed dimensions.
    pub fn dims(&self) -> &[DimBuckets] {
        &self.dims
    }

    /// Whether the key has no component.
    pub fn is_empty(&self) -> bool {
        self.components() == 0
    }

    /// Components: values, variants and dimensions.
    pub fn components(&self) -> usize {
        self.values.len() + self.variants.len() + self.dims.len()
    }

    /// The host components (values and variants): what [`HostKeys::of`] writes.
    pub fn host_components(&self) -> usize {
        self.values.len() + self.variants.len()
    }

    /// How many values component `c` takes.
    fn radix(&self, c: usize) -> usize {
        let (v, w) = (self.values.len(), self.variants.len());
        if c < v {
            self.values[c].buckets.len()
        } else if c < v + w {
            self.variants[c - v].labels.len()
        } else {
            self.dims[c - v - w].buckets.len()
        }
    }

    fn combinations_checked(&self) -> Option<usize> {
        (0..self.components()).try_fold(1usize, |acc, c| {
            acc.checked_mul(self.radix(c))
                .filter(|&p| p <= MAX_KEYED_GRAPHS)
        })
    }

    /// The number of combinations (1 without components).
    pub fn combinations(&self) -> usize {
        self.combinations_checked().unwrap_or(usize::MAX)
    }

    /// The combination of component indices `index` (one per component, each in range).
    pub fn combination(&self, index: &[usize]) -> usize {
        index
            .iter()
            .enumerate()
            .fold(0, |acc, (c, &i)| acc * self.radix(c) + i)
    }

    /// The component indices of combination `combo`.
    pub fn indices(&self, mut combo: usize) -> Vec<usize> {
        let mut index = vec![0; self.components()];
        for c in (0..self.components()).rev() {
            let r = self.radix(c);
            index[c] = combo % r;
            combo /= r;
        }
        index
    }

    /// The bucket index of each bucketed value in `raw` (one per value component), written into
    /// `out`, or a miss.
    pub fn value_indices(
        &self,
        raw: &[u64],
        out: &mut [usize],
    ) -> std::result::Result<(), KeyMiss> {
        for ((v, &value), slot) in self.values.iter().zip(raw).zip(out.iter_mut()) {
            *slot = bucket_index(&v.buckets, value).ok_or(KeyMiss::AboveBuckets)?;
        }
        Ok(())
    }

    /// The bucket index of each bucketed dimension of inputs whose shapes are `dims` (batch
    /// first), written into `out` (one per dimension component), or a miss.
    pub fn dim_indices(
        &self,
        dims: &[&[usize]],
        out: &mut [usize],
    ) -> std::result::Result<(), KeyMiss> {
        for (d, slot) in self.dims.iter().zip(out.iter_mut()) {
            let value = d.size_in(dims);
            let wide: &[usize] = &d.buckets;
            *slot = wide
                .iter()
                .position(|&b| value <= b)
                .ok_or(KeyMiss::AboveBuckets)?;
        }
        Ok(())
    }

    /// The size of each bucketed dimension at combination `combo`, one per dimension
    /// component.
    pub fn dim_sizes(&self, combo: usize) -> Vec<usize> {
        let index = self.indices(combo);
        let first = self.host_components();
        self.dims
            .iter()
            .enumerate()
            .map(|(k, d)| d.buckets[index[first + k]])
            .collect()
    }

    /// A label of combination `combo`: `max_context ≤ 2048, lora = true` (empty without
    /// components).
    pub fn label(&self, combo: usize) -> String {
        let index = self.indices(combo);
        let (v, w) = (self.values.len(), self.variants.len());
        let mut parts = Vec::with_capacity(index.len());
        for (c, &i) in index.iter().enumerate() {
            parts.push(if c < v {
                format!("{} ≤ {}", self.values[c].name, self.values[c].buckets[i])
            } else if c < v + w {
                format!(
                    "{} = {}",
                    self.variants[c - v].name,
                    self.variants[c - v].labels[i]
                )
            } else {
                let d = &self.dims[c - v - w];
                format!("{} = {}", d.name, d.buckets[i])
            });
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> KeySpace {
        static CONTEXT: [u64; 3] = [512, 2048, 8192];
        static LORA: [&str; 2] = ["false", "true"];
        static COLS: [usize; 2] = [64, 256];
        KeySpace::new()
            .with_value_buckets("max_context", &CONTEXT[..])
            .unwrap()
            .with_variants("lora", &LORA[..])
            .unwrap()
            .with_dim_buckets("block_tables[1]", &[(1, 1)], &COLS[..])
            .unwrap()
    }

    #[test]
    fn combinations_round_trip() {
        let k = space();
        assert_eq!(k.combinations(), 12);
        for combo in 0..12 {
            assert_eq!(k.combination(&k.indices(combo)), combo);
        }
        assert_eq!(k.indices(0), vec![0, 0, 0]);
        assert_eq!(k.indices(11), vec![2, 1, 1]);
        assert_eq!(
            k.label(k.combination(&[1, 1, 0])),
            "max_context ≤ 2048, lora = true, block_tables[1] = 64"
        );
        assert_eq!(KeySpace::new().combinations(), 1);
        assert_eq!(KeySpace::new().label(0), "");
    }

    #[test]
    fn values_and_dims_round_up() {
        static B: [u64; 3] = [512, 2048, 8192];
        assert_eq!(bucket_index(&B, 1), Some(0));
        assert_eq!(bucket_index(&B, 512), Some(0));
        assert_eq!(
            bucket_index(&B, 513),
            Some(1),
            "one past a boundary: the next"
        );
        assert_eq!(bucket_index(&B, 8192), Some(2));
        assert_eq!(bucket_index(&B, 8193), None);
        let k = space();
        let mut out = [0];
        k.dim_indices(&[&[4], &[4, 65]], &mut out).unwrap();
        assert_eq!(out, [1]);
        assert_eq!(
            k.dim_indices(&[&[4], &[4, 257]], &mut out),
            Err(KeyMiss::AboveBuckets)
        );
        assert_eq!(k.dim_sizes(k.combination(&[0, 0, 1])), vec![256]);
        // Dimensions that go together: the largest member picks the bucket.
        static Q: [usize; 3] = [1, 2, 4];
        let q = KeySpace::new()
            .with_dim_buckets("tokens[1]+positions[1]", &[(0, 1), (1, 1)], &Q[..])
            .unwrap();
        let mut out = [0];
        q.dim_indices(&[&[2, 3], &[2, 1]], &mut out).unwrap();
        assert_eq!(out, [2], "3 columns: the bucket of 4");
    }

    #[test]
    fn bad_lists_are_errors() {
        static EMPTY: [u64; 0] = [];
        static ZERO: [u64; 2] = [0, 4];
        static DOWN: [u64; 2] = [8, 4];
        static COLS: [usize; 1] = [8];
        assert!(KeySpace::new().with_value_buckets("a", &EMPTY[..]).is_err());
        assert!(KeySpace::new().with_value_buckets("a", &ZERO[..]).is_err());
        assert!(KeySpace::new().with_value_buckets("a", &DOWN[..]).is_err());
        assert!(
            KeySpace::new()
                .with_dim_buckets("x[0]", &[(0, 0)], &COLS[..])
                .is_err()
        );
        assert!(
            KeySpace::new()
                .with_dim_buckets("x[1]", &[(0, 1)], &COLS[..])
                .unwrap()
                .with_dim_buckets("x[2]", &[(0, 2)], &COLS[..])
                .is_err(),
            "one bucketed dimension per input"
        );
        assert!(
            KeySpace::new()
                .with_dim_buckets("none", &[], &COLS[..])
                .is_err()
        );
        static NONE: [&str; 0] = [];
        assert!(KeySpace::new().with_variants("v", &NONE[..]).is_err());
    }
}
