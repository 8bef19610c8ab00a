//! Dispatch: batch size n -> captured size (a table lookup), and the static input buffers that
//! each call's inputs are copied into, padded to the captured size.

use std::borrow::Cow;

use crate::context::Runtime;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffi::{self, DeviceRange, PadJob};
pub use crate::policy::OnCaptureError;
use crate::policy::Warmup;
use crate::tensor::{Shape, Tensor};

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
    pub(crate) fn pattern(self, dtype: DType, input: usize) -> Result<u32> {
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
    /// Warm-up policy of every capture after the first (which always warms up).
    pub warmup: Warmup,
    /// What to do when a size fails to capture.
    pub on_capture_error: OnCaptureError,
    /// Pad values by input index (see [`PadValue`]); inputs not listed keep whatever an earlier
    /// call left in their padded rows (zeros at first).
    pub pads: Vec<(usize, PadValue)>,
}

impl GraphPlan {
    /// A plan with a size table built at run time (for use without the macro).
    pub fn new(function: &'static str, sizes: &[usize], batch_input: usize) -> Result<Self> {
        Ok(Self {
            function,
            table: SizeTable::new(sizes)?,
            batch_input,
            lazy: false,
            warmup: Warmup::from_env(),
            on_capture_error: OnCaptureError::Abort,
            pads: Vec::new(),
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
            warmup: Warmup::from_env(),
            on_capture_error: OnCaptureError::Abort,
            pads: Vec::new(),
        })
    }

    /// Captures each size on its first use (`true`) or all at construction (`false`, default).
    /// Lazy capture starts faster; the first call of each size pays its capture, and the pool
    /// can hold more than the largest graph (chunks grow as larger sizes are first used).
    pub fn with_lazy_capture(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpec {
    dtype: DType,
    trailing: Shape,
}

impl InputSpec {
    /// An input of `dtype` whose rows have shape `trailing` (empty for a vector of scalars).
    pub fn new(dtype: DType, trailing: &[usize]) -> Result<Self> {
        if trailing.len() + 1 > crate::tensor::MAX_RANK {
            return Err(Error::invalid("InputSpec", "too many dimensions"));
        }
        // Checked for overflow here and again, with the rows, when its buffer is allocated.
        Ok(Self {
            dtype,
            trailing: Shape::new(trailing)?,
        })
    }

    /// The spec of an example tensor (its leading dimension is the batch and is ignored).
    pub fn like(t: &Tensor) -> Result<Self> {
        if t.rank() == 0 {
            return Err(Error::invalid(
                "InputSpec::like",
                "a graph input needs a batch dimension",
            ));
        }
        Self::new(t.dtype(), &t.shape()[1..])
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The trailing dimensions.
    pub fn trailing(&self) -> &[usize] {
        self.trailing.dims()
    }

    /// Whether `t` has this dtype and these trailing dimensions.
    pub fn matches(&self, t: &Tensor) -> bool {
        t.dtype() == self.dtype && t.rank() >= 1 && &t.shape()[1..] == self.trailing()
    }

    fn full_shape(&self, rows: usize) -> Vec<usize> {
        let mut dims = Vec::with_capacity(self.trailing().len() + 1);
        dims.push(rows);
        dims.extend_from_slice(self.trailing());
        dims
    }
}

/// One zero-filled device buffer per input, of the largest captured size; graphs read prefixes
/// of it, so every size shares it.
#[derive(Debug)]
pub(crate) struct StaticInputs<const N: usize> {
    buffers: [Tensor; N],
    /// Each input's pad value as a 32-bit pattern of its dtype (see [`PadValue`]).
    pads: [Option<u32>; N],
    /// The runtime's one-launch copy kernel, when it loaded (else one memcpy per input).
    pad_copy: Option<cudarc::driver::CudaFunction>,
}

/// The runtime's own kernel: all of a replay's input copies in one launch.
static PAD_COPY: crate::KernelModule = crate::KernelModule {
    name: "cudagraph_pad_copy",
    source: include_str!("cu/pad_copy.cu"),
    functions: &["pad_copy"],
};

impl<const N: usize> StaticInputs<N> {
    pub(crate) fn new(
        rt: &Runtime,
        specs: &[InputSpec; N],
        rows: usize,
        pads: &[(usize, PadValue)],
    ) -> Result<Self> {
        let mut patterns = [None; N];
        for &(input, value) in pads {
            let Some(spec) = specs.get(input) else {
                return Err(Error::invalid(
                    "pad",
                    format!("pad for input {input}, but the function has {N} tensor inputs"),
                ));
            };
            patterns[input] = Some(value.pattern(spec.dtype, input)?);
        }
        let mut buffers = Vec::with_capacity(N);
        for spec in specs {
            buffers.push(rt.zeros(&spec.full_shape(rows), spec.dtype)?);
        }
        let buffers: [Tensor; N] = buffers
            .try_into()
            .map_err(|_| Error::invalid("StaticInputs", "input count mismatch"))?;
        let pad_copy = if N <= 4 {
            rt.function(&PAD_COPY, "pad_copy")
                .map_err(
                    |e| tracing::debug!(error = %e, "pad_copy kernel unavailable; using memcpy"),
                )
                .ok()
        } else {
            None
        };
        Ok(Self {
            buffers,
            pads: patterns,
            pad_copy,
        })
    }

    /// Views of the first `rows` rows of every buffer (what the graph of that size reads).
    pub(crate) fn views(&self, rows: usize) -> Result<[Tensor; N]> {
        let mut views = Vec::with_capacity(N);
        for b in &self.buffers {
            views.push(b.narrowed(0, rows)?);
        }
        views
            .try_into()
            .map_err(|_| Error::invalid("StaticInputs", "input count mismatch"))
    }

    /// Fills every padded input's whole buffer with its pad value: before a warm-up or a
    /// capture, so that what they run on every row is a padded row.
    pub(crate) fn fill_pads(&self, rt: &Runtime) -> Result<()> {
        for (buf, pad) in self.buffers.iter().zip(&self.pads) {
            if let Some(pattern) = *pad {
                fill_tail(rt, buf, 0, pattern)?;
            }
        }
        Ok(())
    }

    /// Copies each input into the first rows of its buffer and fills the rows after it with
    /// the input's pad value; an input without one keeps earlier contents there (valid values
    /// of an earlier call, or zeros). Callers only ever see the first `n` output rows.
    ///
    /// Callers have checked each input against its [`InputSpec`] and its rows against the
    /// buffer's; all copies go in one kernel launch when the copy kernel is available.
    pub(crate) fn fill(&self, rt: &Runtime, inputs: &[&Tensor; N]) -> Result<()> {
        for (buf, input) in self.buffers.iter().zip(inputs) {
            if input.rows() > buf.rows() || input.row_bytes() != buf.row_bytes() {
                return Err(Error::invalid(
                    "pad_copy",
                    "input larger than its static buffer",
                ));
            }
        }
        if let Some(f) = &self.pad_copy {
            let empty = PadJob {
                dst: DeviceRange::EMPTY,
                src: DeviceRange::EMPTY,
                pattern: None,
            };
            let mut jobs = [empty; 4];
            for (((job, buf), input), pad) in jobs
                .iter_mut()
                .zip(&self.buffers)
                .zip(inputs)
                .zip(&self.pads)
            {
                *job = PadJob {
                    dst: DeviceRange {
                        ptr: buf.device_ptr(),
                        bytes: buf.size_in_bytes(),
                    },
                    src: DeviceRange {
                        ptr: input.device_ptr(),
                        bytes: input.size_in_bytes(),
                    },
                    pattern: *pad,
                };
            }
            return ffi::launch_pad_copy(rt.raw_stream(), f, &jobs[..N])
                .map_err(Error::driver("pad_copy"));
        }
        for ((buf, input), pad) in self.buffers.iter().zip(inputs).zip(&self.pads) {
            let dst = buf.narrowed(0, input.rows())?;
            rt.copy(input, &dst)?;
            if let Some(pattern) = *pad {
                fill_tail(rt, buf, input.size_in_bytes(), pattern)?;
            }
        }
        Ok(())
    }

    /// Bytes held by the buffers.
    pub(crate) fn bytes(&self) -> usize {
        self.buffers.iter().map(Tensor::size_in_bytes).sum()
    }
}

/// Fills the bytes of `buf` from `from` (a multiple of the element size) to its end with
/// `pattern` (see [`PadValue`]).
fn fill_tail(rt: &Runtime, buf: &Tensor, from: usize, pattern: u32) -> Result<()> {
    let bytes = buf.size_in_bytes().saturating_sub(from);
    if bytes == 0 {
        return Ok(());
    }
    let range = DeviceRange {
        ptr: buf.device_ptr() + from as u64,
        bytes,
    };
    ffi::fill_pattern(rt.raw_stream(), range, pattern, buf.dtype().size_in_bytes())
        .map_err(Error::driver("cuMemsetD32Async"))
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
