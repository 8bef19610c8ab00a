//! The static input buffers of a runner: one per input, of the largest captured size (and the
//! largest bucket of a bucketed dimension). Each graph reads a prefix of them; each call's
//! inputs are copied in, and padded, before a replay.

use crate::backend::Backend;
use crate::dispatch::{InputSpec, PadValue};
use crate::error::{Error, Result};
use crate::ffi::{self, DeviceRange, PadJob};
use crate::keys::KeySpace;
use crate::seal::Seal;

/// The runtime's own kernel: all of a replay's input copies in one launch.
static PAD_COPY: crate::KernelModule = crate::KernelModule {
    name: "cudagraph_pad_copy",
    source: include_str!("cu/pad_copy.cu"),
    functions: &["pad_copy"],
};

/// One zero-filled device buffer per input, of the largest captured size; graphs read prefixes
/// of it, so every size shares it.
pub(crate) struct StaticInputs<B: Backend, const N: usize> {
    buffers: [B::Tensor; N],
    /// Each buffer's device bytes and the bytes of one of its rows.
    ranges: [(DeviceRange, usize); N],
    /// Each buffer's element size, for pad fills.
    widths: [usize; N],
    /// Each input's pad value as a 32-bit pattern of its dtype (see [`PadValue`]).
    pads: [Option<u32>; N],
    /// The runtime's one-launch copy kernel, when it loaded (else one memcpy per input).
    pad_copy: Option<cudarc::driver::CudaFunction>,
    /// Each input's trailing dimensions, the bucketed one at its largest bucket.
    trailing: [Vec<usize>; N],
    /// Each input's bucketed dimension, if any: (dimension, its index among the key's
    /// dimension components).
    bucketed: [Option<(usize, usize)>; N],
}

impl<B: Backend, const N: usize> StaticInputs<B, N> {
    pub(crate) fn new(
        dev: &B::Device,
        specs: &[InputSpec<B::DType>; N],
        rows: usize,
        pads: &[(usize, PadValue)],
        keys: &KeySpace,
    ) -> Result<Self> {
        let mut patterns = [None; N];
        for &(input, value) in pads {
            let Some(spec) = specs.get(input) else {
                return Err(Error::invalid(
                    "pad",
                    format!("pad for input {input}, but the function has {N} tensor inputs"),
                ));
            };
            patterns[input] = Some(B::pad_pattern(Seal::new(), value, spec.dtype(), input)?);
        }
        let mut trailing: [Vec<usize>; N] = std::array::from_fn(|i| specs[i].trailing().to_vec());
        let mut bucketed = [None; N];
        for (k, d) in keys.dims().iter().enumerate() {
            for &(input, dim) in &d.members {
                let Some(dims) = trailing.get_mut(input) else {
                    return Err(Error::invalid(
                        "buckets",
                        format!("`{}`: input {input} of {N}", d.name),
                    ));
                };
                let Some(size) = dim.checked_sub(1).and_then(|j| dims.get_mut(j)) else {
                    return Err(Error::invalid(
                        "buckets",
                        format!(
                            "`{}`: input {input}'s spec has {} dimensions after the batch; dimension {dim} is not one",
                            d.name,
                            dims.len(),
                        ),
                    ));
                };
                if bucketed[input].is_some() {
                    return Err(Error::invalid(
                        "buckets",
                        format!("`{}`: one bucketed dimension per input", d.name),
                    ));
                }
                *size = d.buckets.last().copied().unwrap_or(*size);
                bucketed[input] = Some((dim, k));
            }
        }
        let mut buffers = Vec::with_capacity(N);
        for (spec, dims) in specs.iter().zip(&trailing) {
            let widest = InputSpec::new(spec.dtype(), dims)?;
            buffers.push(B::zeros(Seal::new(), dev, &widest, rows)?);
        }
        let mut ranges = [(DeviceRange::EMPTY, 0); N];
        for (range, buf) in ranges.iter_mut().zip(&buffers) {
            let bytes = B::range(Seal::new(), buf)?;
            *range = (bytes, bytes.bytes / rows.max(1));
        }
        let widths = std::array::from_fn(|i| B::dtype_bytes(Seal::new(), specs[i].dtype()));
        let buffers: [B::Tensor; N] = buffers
            .try_into()
            .map_err(|_| Error::invalid("StaticInputs", "input count mismatch"))?;
        let pad_copy = if N <= 4 {
            B::function(Seal::new(), dev, &PAD_COPY, "pad_copy")
                .map_err(
                    |e| tracing::debug!(error = %e, "pad_copy kernel unavailable; using memcpy"),
                )
                .ok()
        } else {
            None
        };
        Ok(Self {
            buffers,
            ranges,
            widths,
            pads: patterns,
            pad_copy,
            trailing,
            bucketed,
        })
    }

    /// Each input's dimensions at `rows` rows and the bucketed dimensions' sizes `dims` (one per
    /// dimension component of the key, in order).
    fn shape_at(&self, i: usize, rows: usize, dims: &[usize]) -> Vec<usize> {
        let mut shape = Vec::with_capacity(self.trailing[i].len() + 1);
        shape.push(rows);
        shape.extend_from_slice(&self.trailing[i]);
        if let Some((dim, k)) = self.bucketed[i] {
            if let Some(&size) = dims.get(k) {
                shape[dim] = size;
            }
        }
        shape
    }

    /// Whether input `i` of dtype `dtype` and dimensions `shape` fits its buffer: the spec's
    /// trailing dimensions, a bucketed one at most its largest bucket.
    pub(crate) fn accepts(
        &self,
        i: usize,
        spec: &InputSpec<B::DType>,
        dtype: B::DType,
        shape: &[usize],
    ) -> bool
    where
        B::DType: PartialEq,
    {
        if self.bucketed[i].is_none() {
            return spec.matches_parts(dtype, shape);
        }
        dtype == spec.dtype()
            && shape.len() == self.trailing[i].len() + 1
            && shape[1..]
                .iter()
                .zip(&self.trailing[i])
                .enumerate()
                .all(|(j, (&have, &max))| match self.bucketed[i] {
                    Some((dim, _)) if dim == j + 1 => have >= 1 && have <= max,
                    _ => have == max,
                })
    }

    /// Views of the first `rows` rows of every buffer, a bucketed dimension at its size in
    /// `dims` (what the graph of that size and key reads).
    pub(crate) fn views(&self, rows: usize, dims: &[usize]) -> Result<[B::Tensor; N]> {
        let mut views = Vec::with_capacity(N);
        for (i, b) in self.buffers.iter().enumerate() {
            views.push(match self.bucketed[i] {
                None => B::narrow(Seal::new(), b, rows)?,
                Some(_) => B::view_prefix(Seal::new(), b, &self.shape_at(i, rows, dims))?,
            });
        }
        views
            .try_into()
            .map_err(|_| Error::invalid("StaticInputs", "input count mismatch"))
    }

    /// Fills every padded input's whole buffer with its pad value: before a warm-up or a
    /// capture, so that what they run on every row is a padded row.
    pub(crate) fn fill_pads(&self, dev: &B::Device) -> Result<()> {
        for i in 0..N {
            if let Some(pattern) = self.pads[i] {
                self.fill_tail(dev, i, 0, pattern)?;
            }
        }
        Ok(())
    }

    /// Fills rows `n..size` of every padded buffer with its pad value (a staged call's padded
    /// rows), every time: a forward may write its own inputs, so no earlier fill is trusted.
    /// One launch of the copy kernel (fills only) when it is available, else one fill per
    /// padded input.
    pub(crate) fn pad_rows(&self, dev: &B::Device, n: usize, size: usize) -> Result<()> {
        let padded = |i: usize| self.pads[i].is_some() && self.bucketed[i].is_none();
        if !(0..N).any(padded) || n >= size {
            return Ok(());
        }
        let tail = |i: usize| -> DeviceRange {
            let (range, row) = self.ranges[i];
            let from = n.saturating_mul(row).min(range.bytes);
            let to = size.saturating_mul(row).min(range.bytes);
            DeviceRange {
                ptr: range.ptr + from as u64,
                bytes: to - from,
            }
        };
        let stream = B::stream(Seal::new(), dev);
        if let Some(f) = &self.pad_copy {
            let mut jobs = [PadJob::EMPTY; 4];
            for (i, job) in jobs.iter_mut().enumerate().take(N) {
                if padded(i) {
                    // Nothing copied; the whole range filled (its offset is whole rows, so the
                    // pattern keeps the elements' phase).
                    *job = PadJob {
                        dst: tail(i),
                        src: DeviceRange::EMPTY,
                        pattern: self.pads[i],
                    };
                }
            }
            return ffi::launch_pad_copy(&stream, f, &jobs[..N]).map_err(Error::driver("pad_copy"));
        }
        for i in (0..N).filter(|&i| padded(i)) {
            if let Some(pattern) = self.pads[i] {
                ffi::fill_pattern(&stream, tail(i), pattern, self.widths[i])
                    .map_err(Error::driver("cuMemsetD32Async"))?;
            }
        }
        Ok(())
    }

    /// Whether some input has a bucketed dimension (its buffer's layout depends on the key).
    pub(crate) fn any_bucketed(&self) -> bool {
        self.bucketed.iter().any(Option::is_some)
    }

    /// Copies each input into the first rows of its buffer and fills the rows after it with
    /// the input's pad value; an input without one keeps earlier contents there (valid values
    /// of an earlier call, or zeros). Callers only ever see the first `n` output rows.
    ///
    /// Callers have checked each input against its [`InputSpec`] (dtype, trailing dimensions,
    /// rows no more than the buffer's); all copies go in one kernel launch when the copy kernel
    /// is available.
    pub(crate) fn fill(
        &self,
        dev: &B::Device,
        inputs: &[&B::Tensor; N],
        size: usize,
        dims: &[usize],
    ) -> Result<()> {
        let mut sources = [DeviceRange::EMPTY; N];
        for (i, ((src, input), &(dst, row))) in
            sources.iter_mut().zip(inputs).zip(&self.ranges).enumerate()
        {
            if self.bucketed[i].is_some() {
                continue;
            }
            *src = B::range(Seal::new(), input)?;
            if src.bytes > dst.bytes || (row > 0 && src.bytes % row != 0) {
                return Err(Error::invalid(
                    "pad_copy",
                    "input larger than its static buffer",
                ));
            }
        }
        let stream = B::stream(Seal::new(), dev);
        for (i, input) in inputs.iter().enumerate() {
            if self.bucketed[i].is_some() {
                self.fill_bucketed(dev, i, input, size, dims)?;
            }
        }
        let plain = |i: usize| self.bucketed[i].is_none();
        if (0..N).all(|i| !plain(i)) {
            return Ok(());
        }
        if let Some(f) = &self.pad_copy {
            let mut jobs = [PadJob::EMPTY; 4];
            for (i, (((job, &(dst, _)), src), pad)) in jobs
                .iter_mut()
                .zip(&self.ranges)
                .zip(sources)
                .zip(&self.pads)
                .enumerate()
            {
                // A bucketed input was copied above: an empty job copies and fills nothing.
                if plain(i) {
                    *job = PadJob {
                        dst,
                        src,
                        pattern: *pad,
                    };
                }
            }
            return ffi::launch_pad_copy(&stream, f, &jobs[..N]).map_err(Error::driver("pad_copy"));
        }
        for (i, src) in sources.iter().enumerate().filter(|&(i, _)| plain(i)) {
            let (dst, _) = self.ranges[i];
            let dst_rows = DeviceRange {
                ptr: dst.ptr,
                bytes: src.bytes,
            };
            ffi::copy_d2d(&stream, dst_rows, *src).map_err(Error::driver("cuMemcpyDtoDAsync"))?;
            if let Some(pattern) = self.pads[i] {
                self.fill_tail(dev, i, src.bytes, pattern)?;
            }
        }
        Ok(())
    }

    /// Copies input `i`, whose bucketed dimension is at most the key's size of it, into the
    /// view the graph of `size` rows at the key reads: the view filled with the pad value first
    /// (when the input has one), then each run of elements along the bucketed dimension copied
    /// to the start of its wider run (one strided copy).
    fn fill_bucketed(
        &self,
        dev: &B::Device,
        i: usize,
        input: &B::Tensor,
        size: usize,
        dims: &[usize],
    ) -> Result<()> {
        let Some((dim, _)) = self.bucketed[i] else {
            return Ok(());
        };
        let have = B::shape(Seal::new(), input)?;
        let want = self.shape_at(i, size, dims);
        let have = have.dims();
        if have.len() != want.len()
            || have[0] > want[0]
            || have[dim] > want[dim]
            || have[1..]
                .iter()
                .zip(&want[1..])
                .enumerate()
                .any(|(j, (h, w))| j + 1 != dim && h != w)
        {
            return Err(Error::invalid(
                "pad_copy",
                format!("input {i} of shape {have:?} does not fit its buffer at {want:?}"),
            ));
        }
        let width = self.widths[i];
        let inner: usize = want[dim + 1..].iter().product::<usize>() * width;
        let outer: usize = have[..dim].iter().product();
        let (buffer, _) = self.ranges[i];
        let view_bytes = want.iter().product::<usize>() * width;
        let view = DeviceRange {
            ptr: buffer.ptr,
            bytes: view_bytes.min(buffer.bytes),
        };
        let stream = B::stream(Seal::new(), dev);
        if let Some(pattern) = self.pads[i] {
            ffi::fill_pattern(&stream, view, pattern, width)
                .map_err(Error::driver("cuMemsetD32Async"))?;
        }
        let src = B::range(Seal::new(), input)?;
        ffi::copy_2d(
            &stream,
            (view, want[dim] * inner),
            (src, have[dim] * inner),
            have[dim] * inner,
            outer,
        )
        .map_err(Error::driver("cuMemcpy2DAsync"))
    }

    /// Fills the bytes of buffer `i` from `from` (a multiple of the element size) to its end
    /// with `pattern` (see [`PadValue`]).
    fn fill_tail(&self, dev: &B::Device, i: usize, from: usize, pattern: u32) -> Result<()> {
        let (range, _) = self.ranges[i];
        let bytes = range.bytes.saturating_sub(from);
        if bytes == 0 {
            return Ok(());
        }
        let tail = DeviceRange {
            ptr: range.ptr + from as u64,
            bytes,
        };
        ffi::fill_pattern(&B::stream(Seal::new(), dev), tail, pattern, self.widths[i])
            .map_err(Error::driver("cuMemsetD32Async"))
    }

    /// Bytes held by the buffers.
    pub(crate) fn bytes(&self) -> usize {
        self.ranges.iter().map(|(r, _)| r.bytes).sum()
    }
}
