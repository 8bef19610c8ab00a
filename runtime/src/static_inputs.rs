//! The static input buffers of a runner: one per input, of the largest captured size. Each
//! graph reads a prefix of them; each call's inputs are copied in, and padded, before a replay.

use crate::backend::Backend;
use crate::dispatch::{InputSpec, PadValue};
use crate::error::{Error, Result};
use crate::ffi::{self, DeviceRange, PadJob};
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
}

impl<B: Backend, const N: usize> StaticInputs<B, N> {
    pub(crate) fn new(
        dev: &B::Device,
        specs: &[InputSpec<B::DType>; N],
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
            patterns[input] = Some(B::pad_pattern(Seal::new(), value, spec.dtype(), input)?);
        }
        let mut buffers = Vec::with_capacity(N);
        for spec in specs {
            buffers.push(B::zeros(Seal::new(), dev, spec, rows)?);
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
        })
    }

    /// Views of the first `rows` rows of every buffer (what the graph of that size reads).
    pub(crate) fn views(&self, rows: usize) -> Result<[B::Tensor; N]> {
        let mut views = Vec::with_capacity(N);
        for b in &self.buffers {
            views.push(B::narrow(Seal::new(), b, rows)?);
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

    /// Copies each input into the first rows of its buffer and fills the rows after it with
    /// the input's pad value; an input without one keeps earlier contents there (valid values
    /// of an earlier call, or zeros). Callers only ever see the first `n` output rows.
    ///
    /// Callers have checked each input against its [`InputSpec`] (dtype, trailing dimensions,
    /// rows no more than the buffer's); all copies go in one kernel launch when the copy kernel
    /// is available.
    pub(crate) fn fill(&self, dev: &B::Device, inputs: &[&B::Tensor; N]) -> Result<()> {
        let mut sources = [DeviceRange::EMPTY; N];
        for ((src, input), &(dst, row)) in sources.iter_mut().zip(inputs).zip(&self.ranges) {
            *src = B::range(Seal::new(), input)?;
            if src.bytes > dst.bytes || (row > 0 && src.bytes % row != 0) {
                return Err(Error::invalid(
                    "pad_copy",
                    "input larger than its static buffer",
                ));
            }
        }
        let stream = B::stream(Seal::new(), dev);
        if let Some(f) = &self.pad_copy {
            let empty = PadJob {
                dst: DeviceRange::EMPTY,
                src: DeviceRange::EMPTY,
                pattern: None,
            };
            let mut jobs = [empty; 4];
            for (((job, &(dst, _)), src), pad) in jobs
                .iter_mut()
                .zip(&self.ranges)
                .zip(sources)
                .zip(&self.pads)
            {
                *job = PadJob {
                    dst,
                    src,
                    pattern: *pad,
                };
            }
            return ffi::launch_pad_copy(&stream, f, &jobs[..N]).map_err(Error::driver("pad_copy"));
        }
        for (i, src) in sources.iter().enumerate() {
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
