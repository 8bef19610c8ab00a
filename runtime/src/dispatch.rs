//! Dispatch: batch size n -> captured size (a table lookup), the plan of a runner (sizes,
//! batch input, pads, policies) and the spec of each input. The buffers inputs are copied
//! into are in `static_inputs.rs`.

use std::borrow::Cow;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::keys::KeySpace;
pub use crate::policy::OnCaptureError;
use crate::policy::Warmup;
use crate::shape::Shape;

/// Largest captured size: the lookup table stores slot *indices* as `u16`, and with at most
/// 65535 distinct sizes the largest index is 65534, so [`NO_SLOT`] is never a real slot.
pub const MAX_CAPTURE_SIZE: usize = u16::MAX as usize;

/// Marks "no captured size" in a lookup table (index 0, and nothing else).
pub const NO_SLOT: u16 = u16::MAX;

/// Builds the lookup table of `sizes` (sorted, unique, in `1..=MAX_CAPTURE_SIZE`):
/// `table[n]` is the index of the smallest size `>= n`; `table[0]` is [`NO_SLOT`].
pub fn build_lookup(sizes: &[usize]) -> Vec<u16> {
    let max = sizes.last().copied().unwrap_or(0);
    let mut table = Vec::with_capacity(max + 1);
    table.push(NO_SLOT);
    let mut slot = 0usize;
    for n in 1..=max {
        while sizes[slot] < n {
            slot += 1;
        }
        table.push(slot as u16);
    }
    table
}

fn check_sizes(sizes: &[usize]) -> Result<()> {
    if sizes.is_empty() {
        return Err(Error::invalid(
            "sizes",
            "no size to capture: give at least one",
        ));
    }
    for pair in sizes.windows(2) {
        if pair[0] >= pair[1] {
            return Err(Error::invalid(
                "sizes",
                format!(
                    "sizes must be sorted and unique: {} comes before {}",
                    pair[0], pair[1]
                ),
            ));
        }
    }
    if sizes[0] == 0 {
        return Err(Error::invalid(
            "sizes",
            "a captured size must be at least 1",
        ));
    }
    if let Some(&big) = sizes.iter().find(|&&s| s > MAX_CAPTURE_SIZE) {
        return Err(Error::invalid(
            "sizes",
            format!("size {big} exceeds the maximum of {MAX_CAPTURE_SIZE}"),
        ));
    }
    Ok(())
}

/// Captured sizes and their O(1) lookup table.
#[derive(Debug, Clone)]
pub struct SizeTable {
    sizes: Cow<'static, [usize]>,
    lookup: Cow<'static, [u16]>,
}

impl SizeTable {
    /// A table for `sizes` (any order; sorted here), built at run time.
    pub fn new(sizes: &[usize]) -> Result<Self> {
        let mut sorted = sizes.to_vec();
        sorted.sort_unstable();
        check_sizes(&sorted)?;
        let lookup = build_lookup(&sorted);
        Ok(Self {
            sizes: Cow::Owned(sorted),
            lookup: Cow::Owned(lookup),
        })
    }

    /// A table the `#[cuda_graph]` macro resolved at compile time; checked once here.
    pub fn from_static(sizes: &'static [usize], lookup: &'static [u16]) -> Result<Self> {
        check_sizes(sizes)?;
        if lookup != build_lookup(sizes).as_slice() {
            return Err(Error::invalid(
                "sizes",
                "the compile-time lookup table does not match the sizes (macro/runtime version mismatch?)",
            ));
        }
        Ok(Self {
            sizes: Cow::Borrowed(sizes),
            lookup: Cow::Borrowed(lookup),
        })
    }

    /// Index of the smallest captured size `>= n`; `None` for `n == 0` or `n` above the largest.
    #[inline]
    pub fn slot(&self, n: usize) -> Option<usize> {
        match self.lookup.get(n) {
            Some(&s) if s != NO_SLOT => Some(s as usize),
            _ => None,
        }
    }

    /// The captured sizes, ascending.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The largest captured size.
    pub fn max(&self) -> usize {
        self.sizes.last().copied().unwrap_or(0)
    }
}

/// The value padded rows of one input hold (`#[cuda_graph(pad = [positions = -1])]`): written
/// into rows `n..size` of its static buffer on every replay of a batch of `n` rows, and into
/// the whole buffer before every warm-up and capture. Converted to the input's dtype (an
/// integer for `u32`/`i32` inputs, which must be in range; any number for `bf16`/`f32`).
///
/// A decoder gives its positions `-1`: the KV-write and attention kernels skip a row whose
/// position is negative (vLLM's `PAD_SLOT_ID`), so padded rows and warm-ups write no cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadValue {
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
}

impl PadValue {
    /// The value's bytes in `dtype`, repeated to 32 bits, or an error naming `input`.
    pub fn pattern(self, dtype: DType, input: usize) -> Result<u32> {
        let out_of_range = || {
            Error::invalid(
                "pad",
                format!("pad value {self:?} of input {input} is not a valid {dtype} value"),
            )
        };
        let bits = match (dtype, self) {
            (DType::I32, PadValue::Int(v)) => i32::try_from(v).map_err(|_| out_of_range())? as u32,
            (DType::U32, PadValue::Int(v)) => u32::try_from(v).map_err(|_| out_of_range())?,
            (DType::F32, PadValue::Int(v)) => (v as f32).to_bits(),
            (DType::F32, PadValue::Float(v)) => (v as f32).to_bits(),
            (DType::BF16, PadValue::Int(v)) => {
                let h = u32::from(half::bf16::from_f64(v as f64).to_bits());
                h | (h << 16)
            }
            (DType::BF16, PadValue::Float(v)) => {
                let h = u32::from(half::bf16::from_f64(v).to_bits());
                h | (h << 16)
            }
            (DType::I32 | DType::U32, PadValue::Float(_)) => return Err(out_of_range()),
        };
        Ok(bits)
    }
}

/// What a runner captures: the function's name, its sizes, and which input carries the batch.
#[derive(Debug, Clone)]
pub struct GraphPlan {
    /// The function's name, for messages and stats.
    pub function: &'static str,
    /// Sizes and lookup.
    pub table: SizeTable,
    /// Index (among the tensor inputs) of the input whose leading dimension is the batch.
    pub batch_input: usize,
    /// Capture each size on its first use instead of all at construction.
    pub lazy: bool,
    /// Capture nothing at construction and serve every size eagerly until its graph is ready;
    /// graphs are captured between calls (see
    /// [`with_background_capture`](Self::with_background_capture)).
    pub background: bool,
    /// Warm-up policy of every capture after the first (which always warms up).
    pub warmup: Warmup,
    /// What to do when a size fails to capture.
    pub on_capture_error: OnCaptureError,
    /// Pad values by input index (see [`PadValue`]); inputs not listed keep whatever an earlier
    /// call left in their padded rows (zeros at first).
    pub pads: Vec<(usize, PadValue)>,
    /// The dispatch keys beyond the batch (bucketed values and dimensions, variants): one graph
    /// per size and key combination (see [`keys`](crate::keys)). Empty by default.
    pub keys: KeySpace,
}

impl GraphPlan {
    /// A plan with a size table built at run time (for use without the macro).
    pub fn new(function: &'static str, sizes: &[usize], batch_input: usize) -> Result<Self> {
        Ok(Self {
            function,
            table: SizeTable::new(sizes)?,
            batch_input,
            lazy: false,
            background: false,
            warmup: Warmup::from_env(),
            on_capture_error: OnCaptureError::Abort,
            pads: Vec::new(),
            keys: KeySpace::new(),
        })
    }

    /// The plan `#[cuda_graph]` generates: sizes and lookup resolved at compile time.
    pub fn from_static(
        function: &'static str,
        sizes: &'static [usize],
        lookup: &'static [u16],
        batch_input: usize,
    ) -> Result<Self> {
        Ok(Self {
            function,
            table: SizeTable::from_static(sizes, lookup)?,
            batch_input,
            lazy: false,
            background: false,
            warmup: Warmup::from_env(),
            on_capture_error: OnCaptureError::Abort,
            pads: Vec::new(),
            keys: KeySpace::new(),
        })
    }

    /// Keys the graphs by more than the batch (see [`keys`](crate::keys)): one graph per size
    /// and combination of `keys`.
    pub fn with_keys(mut self, keys: KeySpace) -> Self {
        self.keys = keys;
        self
    }

    /// Captures each size on its first use (`true`) or all at construction (`false`, default).
    /// Lazy capture starts faster; the first call of each size pays its capture, and the pool
    /// can hold more than the largest graph (chunks grow as larger sizes are first used).
    pub fn with_lazy_capture(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Background capture (`capture = background`): the runner is built without capturing, so
    /// it serves at once. A call whose size has no graph yet runs eagerly, through the same
    /// dispatch and output path (counted as [`FallbackReason::NotCapturedYet`](crate::FallbackReason)),
    /// and then, before returning, the runner captures one pending graph: that call's own (the
    /// order of traffic). [`Runner::capture_pending`](crate::Runner::capture_pending) captures
    /// more in idle time, largest first. Each size switches to replay as soon as its graph is
    /// instantiated; nothing a caller sees changes but speed and the stats.
    ///
    /// The first capture is the largest graph's (in pool mode it sizes the pool that every
    /// later graph shares), then the call's own. The capture runs before the call returns, so
    /// that call pays for it (as under lazy capture); every later call of the size replays.
    /// Captures run on the caller's thread, between calls, never while a forward runs: eager
    /// calls and captures never use the pool, its chunks or the freeze scope at the same time.
    /// (Not on a second stream concurrently with eager calls: that would need every backend's
    /// allocator to tell a capture's allocations from an eager call's on another stream.) A
    /// failed background capture is recorded, warned about once, and leaves its size eager; it
    /// never fails the call that triggered it.
    pub fn with_background_capture(mut self, background: bool) -> Self {
        self.background = background;
        self
    }

    /// Sets what happens when a size fails to capture (default: [`OnCaptureError::Abort`]).
    pub fn on_capture_error(mut self, policy: OnCaptureError) -> Self {
        self.on_capture_error = policy;
        self
    }

    /// Sets the warm-up policy of captures after the first.
    pub fn with_warmup(mut self, warmup: Warmup) -> Self {
        self.warmup = warmup;
        self
    }

    /// Pads input `input` (its index among the tensor inputs) with `value` (see [`PadValue`]);
    /// a second value for the same input replaces the first. Checked against the input's
    /// dtype when the runner is built.
    pub fn with_pad(mut self, input: usize, value: PadValue) -> Self {
        self.pads.retain(|&(i, _)| i != input);
        self.pads.push((input, value));
        self
    }
}

/// Dtype and trailing dimensions (all but the batch) of one graph input.
///
/// `D` is the backend's dtype: cudagraph's [`DType`] by default, candle's `DType` for a candle
/// forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpec<D = DType> {
    dtype: D,
    trailing: Shape,
}

impl<D: Copy> InputSpec<D> {
    /// An input of `dtype` whose rows have shape `trailing` (empty for a vector of scalars).
    ///
    /// ```
    /// use cudagraph_runtime::{DType, InputSpec};
    /// let tokens = InputSpec::new(DType::U32, &[])?; // [n] token ids
    /// let hidden = InputSpec::new(DType::BF16, &[1024])?; // [n, 1024] activations
    /// # let _ = (tokens, hidden);
    /// # Ok::<(), cudagraph_runtime::Error>(())
    /// ```
    ///
    /// For an example tensor at hand, [`InputSpec::like`] takes its dtype and trailing
    /// dimensions.
    pub fn new(dtype: D, trailing: &[usize]) -> Result<Self> {
        if trailing.len() + 1 > crate::shape::MAX_RANK {
            return Err(Error::invalid("InputSpec", "too many dimensions"));
        }
        // Checked for overflow here and again, with the rows, when its buffer is allocated.
        Ok(Self {
            dtype,
            trailing: Shape::new(trailing)?,
        })
    }

    /// The dtype.
    pub fn dtype(&self) -> D {
        self.dtype
    }

    /// The trailing dimensions.
    pub fn trailing(&self) -> &[usize] {
        self.trailing.dims()
    }

    /// The dimensions of a tensor of this spec with `rows` rows.
    pub fn full_shape(&self, rows: usize) -> Vec<usize> {
        let mut dims = Vec::with_capacity(self.trailing().len() + 1);
        dims.push(rows);
        dims.extend_from_slice(self.trailing());
        dims
    }
}

impl<D: Copy + PartialEq> InputSpec<D> {
    /// Whether a tensor of `dtype` and dimensions `dims` has this dtype and these trailing
    /// dimensions.
    pub fn matches_parts(&self, dtype: D, dims: &[usize]) -> bool {
        dtype == self.dtype && !dims.is_empty() && &dims[1..] == self.trailing()
    }

    /// The spec of an example tensor (its leading dimension is the batch and is ignored):
    /// cudagraph's `Tensor`, a plain-cudarc [`CudaTensor`](crate::CudaTensor), or (feature
    /// `candle`) a candle tensor.
    pub fn like<T: SpecSource<DType = D> + ?Sized>(t: &T) -> Result<Self> {
        let dims = t.spec_dims();
        if dims.is_empty() {
            return Err(Error::invalid(
                "InputSpec::like",
                "a graph input needs a batch dimension",
            ));
        }
        Self::new(t.spec_dtype(), &dims[1..])
    }

    /// Whether `t` has this dtype and these trailing dimensions.
    pub fn matches<T: SpecSource<DType = D> + ?Sized>(&self, t: &T) -> bool {
        self.matches_parts(t.spec_dtype(), t.spec_dims())
    }
}

/// A tensor an [`InputSpec`] can be read from ([`InputSpec::like`]) or checked against
/// ([`InputSpec::matches`]): its element type and dimensions.
pub trait SpecSource {
    /// The backend's element type.
    type DType: Copy + PartialEq;

    /// The element type.
    fn spec_dtype(&self) -> Self::DType;

    /// The dimensions, batch first.
    fn spec_dims(&self) -> &[usize];
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lookup_picks_smallest_fitting_size() {
        let t = SizeTable::new(&[1, 2, 4, 8]).unwrap();
        assert_eq!(t.slot(0), None);
        assert_eq!(t.slot(1), Some(0));
        assert_eq!(t.slot(3), Some(2));
        assert_eq!(t.slot(8), Some(3));
        assert_eq!(t.slot(9), None);
        assert_eq!(t.max(), 8);
    }

    #[test]
    fn bad_size_lists_are_errors() {
        assert!(SizeTable::new(&[]).is_err());
        assert!(SizeTable::new(&[0, 1]).is_err());
        assert!(SizeTable::new(&[2, 2]).is_err());
        assert!(SizeTable::new(&[MAX_CAPTURE_SIZE + 1]).is_err());
        // The macro accepts 65535, and so does the runtime.
        let t = SizeTable::new(&[1, 65_535]).unwrap();
        assert_eq!(t.slot(65_535), Some(1));
        assert_eq!(t.slot(2), Some(1));
        assert!(
            SizeTable::new(&[4, 1, 2]).is_ok(),
            "unsorted input is sorted"
        );
    }

    #[test]
    fn static_table_is_checked() {
        static SIZES: [usize; 3] = [1, 2, 4];
        static GOOD: [u16; 5] = [NO_SLOT, 0, 1, 2, 2];
        static BAD: [u16; 5] = [NO_SLOT, 0, 1, 1, 2];
        assert!(SizeTable::from_static(&SIZES, &GOOD).is_ok());
        assert!(SizeTable::from_static(&SIZES, &BAD).is_err());
    }

    #[test]
    fn pad_values_convert_to_each_dtype() {
        assert_eq!(PadValue::Int(-1).pattern(DType::I32, 0).unwrap(), u32::MAX);
        assert!(PadValue::Int(-1).pattern(DType::U32, 0).is_err());
        assert!(PadValue::Int(1 << 40).pattern(DType::I32, 0).is_err());
        assert!(PadValue::Float(0.5).pattern(DType::I32, 0).is_err());
        assert_eq!(
            PadValue::Float(1.0).pattern(DType::F32, 0).unwrap(),
            1.0f32.to_bits()
        );
        let bf = PadValue::Int(1).pattern(DType::BF16, 0).unwrap();
        assert_eq!(bf, 0x3F80_3F80, "bf16 1.0 twice");
    }

    proptest! {
        /// The table agrees with a linear search for every n, including past the largest size.
        #[test]
        fn lookup_matches_linear_search(mut sizes in prop::collection::btree_set(1usize..600, 1..40)) {
            let sizes: Vec<usize> = std::mem::take(&mut sizes).into_iter().collect();
            let t = SizeTable::new(&sizes).unwrap();
            for n in 0..=t.max() + 3 {
                let expected = if n == 0 { None } else { sizes.iter().position(|&s| s >= n) };
                prop_assert_eq!(t.slot(n), expected);
                if let Some(i) = expected {
                    prop_assert!(sizes[i] >= n);
                    prop_assert!(i == 0 || sizes[i - 1] < n, "smallest fitting size");
                }
            }
        }
    }
}
