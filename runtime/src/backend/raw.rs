//! [`Raw`]: forwards written on plain cudarc: a `&Arc<CudaStream>` device argument and
//! [`CudaTensor`]s, which wrap the user's own `CudaSlice`s without a copy.
//!
//! ```ignore
//! #[cuda_graph(sizes = [1, 2, 4, 8])]
//! fn forward(&self, stream: &Arc<CudaStream>, x: &CudaTensor) -> Result<CudaTensor> {
//!     let x = x.view::<f32>()?;                         // a CudaView of the batch's rows
//!     let mut y = stream.alloc_zeros::<f32>(x.len())?;  // becomes a graph memory node
//!     /* launch NVRTC kernels, cuBLAS ... reading x, writing y */
//!     CudaTensor::from_slice(y, &[rows, cols])           // no copy
//! }
//! ```
//!
//! Graphs are captured in graph-memory-node mode (the `nodes` module). The context must
//! have cudarc's event tracking turned off before the buffers the forward uses are created
//! (`ctx.disable_event_tracking()`, an `unsafe fn`): cudarc records an event per buffer use and
//! waits on it at the next, and a wait on an event recorded outside a capture breaks it. The
//! runner refuses a stream whose context tracks events.
//!
//! What the runner can't check: the graph reads whatever device memory the forward's kernels
//! read at capture, by address. The runner borrows the model (and everything the forward
//! borrows) for its whole life, so that memory stays allocated, unless the model replaces a
//! buffer through interior mutability (a `RefCell<CudaSlice>`), which a forward captured this
//! way must not do.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr};

use super::nodes::{self, NodeKeep, NodeMemory};
use super::{Backend, CaptureBody, CaptureRequest, CapturedSize, Device, Rerecorded};
use super::{BackendOps, Seal};
use crate::dispatch::{InputSpec, PadValue};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::ffi::{self, DeviceRange, ExecGraph};
use crate::freeze::FreezeScope;
use crate::kernel_cache::{KernelCache, KernelModule};
use crate::policy::ReclaimPolicy;
use crate::shape::Shape;

/// Plain cudarc: see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

/// A buffer of one of cudagraph's element types.
#[derive(Debug)]
enum RawSlice {
    BF16(CudaSlice<half::bf16>),
    F32(CudaSlice<f32>),
    U32(CudaSlice<u32>),
    I32(CudaSlice<i32>),
}

impl RawSlice {
    fn stream(&self) -> &Arc<CudaStream> {
        match self {
            RawSlice::BF16(s) => s.stream(),
            RawSlice::F32(s) => s.stream(),
            RawSlice::U32(s) => s.stream(),
            RawSlice::I32(s) => s.stream(),
        }
    }

    fn len(&self) -> usize {
        match self {
            RawSlice::BF16(s) => s.len(),
            RawSlice::F32(s) => s.len(),
            RawSlice::U32(s) => s.len(),
            RawSlice::I32(s) => s.len(),
        }
    }

    fn device_ptr(&self) -> u64 {
        // Event tracking is off on this context (checked when the runner is built), so the
        // guards record nothing.
        match self {
            RawSlice::BF16(s) => s.device_ptr(s.stream()).0,
            RawSlice::F32(s) => s.device_ptr(s.stream()).0,
            RawSlice::U32(s) => s.device_ptr(s.stream()).0,
            RawSlice::I32(s) => s.device_ptr(s.stream()).0,
        }
    }
}

/// The element types a [`CudaTensor`] holds: cudagraph's [`Element`]s (`bf16`, `f32`, `u32`,
/// `i32`). Sealed, as [`Element`] is: [`CudaTensor::from_slice`] trusts `wrap` to keep the buffer
/// it is given (and checks the length it keeps anyway).
pub trait RawElement: Element + raw_sealed::SealedRawElement {
    #[doc(hidden)]
    fn wrap(slice: CudaSlice<Self>) -> RawSliceBox;
    #[doc(hidden)]
    fn get(slice: &RawSliceBox) -> Option<&CudaSlice<Self>>;
    #[doc(hidden)]
    fn take(slice: RawSliceBox) -> std::result::Result<CudaSlice<Self>, RawSliceBox>;
    #[doc(hidden)]
    fn alloc_zeros(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<Self>>;
}

/// A type-erased buffer (an implementation detail of [`RawElement`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct RawSliceBox(RawSlice);

mod raw_sealed {
    /// Only this crate implements [`RawElement`](super::RawElement).
    pub trait SealedRawElement {}
}

macro_rules! raw_element {
    ($t:ty, $variant:ident) => {
        impl raw_sealed::SealedRawElement for $t {}
        impl RawElement for $t {
            fn wrap(slice: CudaSlice<Self>) -> RawSliceBox {
                RawSliceBox(RawSlice::$variant(slice))
            }
            fn get(slice: &RawSliceBox) -> Option<&CudaSlice<Self>> {
                match &slice.0 {
                    RawSlice::$variant(s) => Some(s),
                    _ => None,
                }
            }
            fn take(slice: RawSliceBox) -> std::result::Result<CudaSlice<Self>, RawSliceBox> {
                match slice.0 {
                    RawSlice::$variant(s) => Ok(s),
                    other => Err(RawSliceBox(other)),
                }
            }
            fn alloc_zeros(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<Self>> {
                stream
                    .alloc_zeros::<$t>(len.max(1))
                    .map_err(Error::driver("cuMemAllocAsync"))
            }
        }
    };
}
raw_element!(half::bf16, BF16);
raw_element!(f32, F32);
raw_element!(u32, U32);
raw_element!(i32, I32);

/// A row-major tensor over a cudarc `CudaSlice`: its dimensions and dtype, and the buffer,
/// owned (moved in without a copy, given back with [`into_slice`](Self::into_slice)).
///
/// Not `Clone`: views of a batch's rows that the runner hands the forward share the buffer
/// with the runner's static inputs, and outputs share the runner's output buffer; a copy is
/// explicit ([`Output::to_owned`](crate::Output::to_owned)).
#[derive(Debug)]
pub struct CudaTensor {
    slice: Arc<RawSliceBox>,
    /// First element within `slice`.
    offset: usize,
    shape: Shape,
    dtype: DType,
}

impl CudaTensor {
    /// A tensor of shape `dims` over `slice`, which it takes without a copy; `slice` must hold
    /// exactly the shape's elements.
    pub fn from_slice<T: RawElement>(slice: CudaSlice<T>, dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        if shape.numel() != slice.len() {
            return Err(Error::invalid(
                "CudaTensor::from_slice",
                format!(
                    "{} elements for shape {dims:?} ({} elements)",
                    slice.len(),
                    shape.numel()
                ),
            ));
        }
        let slice = T::wrap(slice);
        // `wrap` is this crate's (the trait is sealed); the length kept is checked all the same,
        // since every later copy trusts it.
        if slice.0.len() != shape.numel() {
            return Err(Error::invalid(
                "CudaTensor::from_slice",
                "the wrapped buffer's length differs from the slice's",
            ));
        }
        Ok(Self {
            slice: Arc::new(slice),
            offset: 0,
            shape,
            dtype: T::DTYPE,
        })
    }

    /// A zero-filled tensor on `stream`.
    pub fn zeros<T: RawElement>(stream: &Arc<CudaStream>, dims: &[usize]) -> Result<Self> {
        let shape = Shape::new(dims)?;
        let slice = T::alloc_zeros(stream, shape.numel())?;
        Ok(Self {
            slice: Arc::new(T::wrap(slice)),
            offset: 0,
            shape,
            dtype: T::DTYPE,
        })
    }

    /// The elements, as a cudarc view: what kernels and cuBLAS take. An error unless the
    /// tensor holds `T`.
    pub fn view<T: RawElement>(&self) -> Result<CudaView<'_, T>> {
        let slice = T::get(&self.slice).ok_or_else(|| self.wrong_type::<T>())?;
        Ok(slice.slice(self.offset..self.offset + self.shape.numel()))
    }

    /// The buffer back, when this tensor owns all of it (not a view the runner made).
    pub fn into_slice<T: RawElement>(self) -> Result<CudaSlice<T>> {
        if self.dtype != T::DTYPE {
            return Err(self.wrong_type::<T>());
        }
        // (An empty tensor holds a one-element buffer: allocations are never empty.)
        let whole = self.offset == 0
            && (self.shape.numel() == self.slice.0.len()
                || (self.shape.numel() == 0 && self.slice.0.len() == 1));
        match Arc::try_unwrap(self.slice) {
            Ok(slice) if whole => {
                T::take(slice).map_err(|_| Error::invalid("CudaTensor", "element type mismatch"))
            }
            _ => Err(Error::invalid(
                "CudaTensor::into_slice",
                "the tensor shares its buffer (a view of the runner's memory): copy it first",
            )),
        }
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The leading dimension (the batch), 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.dims().first().copied().unwrap_or(1)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The stream the buffer belongs to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        self.slice.0.stream()
    }

    fn wrong_type<T: RawElement>(&self) -> Error {
        Error::invalid(
            "CudaTensor",
            format!("the tensor holds {}, asked for {}", self.dtype, T::DTYPE),
        )
    }

    fn range(&self) -> DeviceRange {
        let width = self.dtype.size_in_bytes();
        DeviceRange {
            ptr: self.slice.0.device_ptr() + (self.offset * width) as u64,
            bytes: self.shape.numel() * width,
        }
    }

    fn narrowed(&self, rows: usize) -> Result<Self> {
        if rows > self.rows() {
            return Err(Error::invalid("CudaTensor", "narrowed past the end"));
        }
        Ok(Self {
            slice: self.slice.clone(),
            offset: self.offset,
            shape: self.shape.with_rows(rows)?,
            dtype: self.dtype,
        })
    }
}

impl crate::dispatch::SpecSource for CudaTensor {
    type DType = DType;

    fn spec_dtype(&self) -> DType {
        self.dtype
    }

    fn spec_dims(&self) -> &[usize] {
        self.dims()
    }
}

impl Device for Arc<CudaStream> {
    type Backend = Raw;

    fn as_backend_device(&self) -> &Self {
        self
    }
}

fn zeros_of(stream: &Arc<CudaStream>, dtype: DType, dims: &[usize]) -> Result<CudaTensor> {
    match dtype {
        DType::BF16 => CudaTensor::zeros::<half::bf16>(stream, dims),
        DType::F32 => CudaTensor::zeros::<f32>(stream, dims),
        DType::U32 => CudaTensor::zeros::<u32>(stream, dims),
        DType::I32 => CudaTensor::zeros::<i32>(stream, dims),
    }
}

/// An error unless graphs can be captured on `stream` and its buffers checked: a stream of its
/// own (not the legacy default stream, which can't be captured, nor the per-thread stream, one
/// handle for a different stream on every thread), on a context that tracks no events (see
/// the module docs). `fix` says how to turn tracking off for this backend's users.
pub(crate) fn check_capture_stream(stream: &Arc<CudaStream>, fix: &'static str) -> Result<()> {
    let handle = stream.cu_stream() as usize;
    if handle <= 2 {
        return Err(Error::invalid(
            "Runner",
            "graphs need a stream of their own, not the default or the per-thread stream (cudarc: \
             `ctx.new_stream()`; candle: `CudaDevice::new_with_stream`)",
        ));
    }
    if stream.context().is_event_tracking() {
        return Err(Error::invalid("Runner", fix));
    }
    Ok(())
}

/// What a plain-cudarc user does about a context that tracks events.
const RAW_TRACKING_FIX: &str = "the stream's context tracks events: call `ctx.disable_event_tracking()` (an unsafe fn) \
     (cudarc waits on per-buffer events, and a wait on an event recorded outside a capture breaks \
     it; turning tracking off is yours to decide: it drops cudarc's ordering of buffers across \
     streams)";

/// An error if `stream` is capturing now.
pub(crate) fn forbid_capturing(stream: &Arc<CudaStream>, what: &'static str) -> Result<()> {
    let status = stream
        .capture_status()
        .map_err(Error::driver("cuStreamIsCapturing"))?;
    if status == cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
        Ok(())
    } else {
        Err(Error::IllegalDuringCapture { what, site: None })
    }
}

/// Waits for `stream` and surfaces errors cudarc recorded for later.
pub(crate) fn synchronize(stream: &Arc<CudaStream>) -> Result<()> {
    stream
        .synchronize()
        .map_err(Error::driver("cuStreamSynchronize"))?;
    stream
        .context()
        .check_err()
        .map_err(Error::driver("deferred (recorded by a drop)"))
}

/// The runtime's own kernel `name` of `module`, loaded for `stream`'s context.
pub(crate) fn load_function(
    stream: &Arc<CudaStream>,
    module: &'static KernelModule,
    name: &'static str,
) -> Result<CudaFunction> {
    KernelCache::default().function(stream.context(), module, name)
}

/// Returns what the stream-ordered allocator and graph memory nodes cache to the driver.
pub(crate) fn release_cached_memory(stream: &Arc<CudaStream>) -> Result<()> {
    synchronize(stream)?;
    nodes::StreamPoolUsage::trim(stream.context())?;
    nodes::GraphMemoryUsage::trim(stream.context())
}

impl Backend for Raw {
    type Device = Arc<CudaStream>;
    type Tensor = CudaTensor;
    type DType = DType;
}

// SAFETY: see the contract on `BackendOps`; this implementation reports ranges of tensors it
// checked, on the device's one stream, and keeps the seals it receives inside each call.
unsafe impl BackendOps for Raw {
    type Dev = Arc<CudaStream>;
    type Ten = CudaTensor;
    type Dt = DType;
    type Memory = NodeMemory<Raw>;
    type GraphKeep = NodeKeep;
    type OutputSlot = ();

    fn stream(_: Seal, dev: &Arc<CudaStream>) -> Arc<CudaStream> {
        dev.clone()
    }

    fn prepare(_: Seal, dev: &Arc<CudaStream>) -> Result<()> {
        check_capture_stream(dev, RAW_TRACKING_FIX)
    }

    fn forbid_during_capture(_: Seal, dev: &Arc<CudaStream>, what: &'static str) -> Result<()> {
        forbid_capturing(dev, what)
    }

    fn synchronize(_: Seal, dev: &Arc<CudaStream>) -> Result<()> {
        synchronize(dev)
    }

    fn function(
        _: Seal,
        dev: &Arc<CudaStream>,
        module: &'static KernelModule,
        name: &'static str,
    ) -> Result<CudaFunction> {
        load_function(dev, module, name)
    }

    fn freeze(_: Seal, dev: &Arc<CudaStream>, policy: ReclaimPolicy) -> Result<FreezeScope<'_>> {
        FreezeScope::on_stream(Seal::new(), dev.clone(), None, policy)
    }

    fn new_memory(_: Seal, dev: &Arc<CudaStream>) -> NodeMemory<Raw> {
        NodeMemory::new(dev)
    }

    fn dtype(_: Seal, t: &CudaTensor) -> DType {
        t.dtype
    }

    fn shape(_: Seal, t: &CudaTensor) -> Result<Shape> {
        Ok(t.shape)
    }

    fn dtype_bytes(_: Seal, dtype: DType) -> usize {
        dtype.size_in_bytes()
    }

    fn pad_pattern(_: Seal, value: PadValue, dtype: DType, input: usize) -> Result<u32> {
        value.pattern(dtype, input)
    }

    fn check_tensor(
        _: Seal,
        dev: &Arc<CudaStream>,
        op: &'static str,
        t: &CudaTensor,
    ) -> Result<()> {
        if Arc::ptr_eq(t.stream(), dev) {
            Ok(())
        } else {
            Err(Error::ForeignTensor {
                op,
                reason: "its buffer belongs to another stream (not ordered with the runner's)"
                    .into(),
            })
        }
    }

    fn range(_: Seal, t: &CudaTensor) -> Result<DeviceRange> {
        Ok(t.range())
    }

    fn zeros(_: Seal, dev: &Arc<CudaStream>, spec: &InputSpec, rows: usize) -> Result<CudaTensor> {
        zeros_of(dev, spec.dtype(), &spec.full_shape(rows))
    }

    fn narrow(_: Seal, t: &CudaTensor, rows: usize) -> Result<CudaTensor> {
        t.narrowed(rows)
    }

    fn duplicate(_: Seal, dev: &Arc<CudaStream>, t: &CudaTensor) -> Result<CudaTensor> {
        Raw::forbid_during_capture(Seal::new(), dev, "a copy of an output")?;
        // The copy runs on the runner's stream: a source of another stream would be read there
        // unordered with its own stream's writes and frees.
        Raw::check_tensor(Seal::new(), dev, "a copy of an output", t)?;
        let copy = zeros_of(dev, t.dtype, t.dims())?;
        ffi::copy_d2d(dev, copy.range(), t.range()).map_err(Error::driver("cuMemcpyDtoDAsync"))?;
        Ok(copy)
    }

    fn view_prefix(_: Seal, t: &CudaTensor, dims: &[usize]) -> Result<CudaTensor> {
        let shape = Shape::new(dims)?;
        if shape.numel() > t.shape.numel() {
            return Err(Error::invalid(
                "view_prefix",
                format!("{dims:?} is larger than the tensor's {:?}", t.dims()),
            ));
        }
        Ok(CudaTensor {
            slice: t.slice.clone(),
            offset: t.offset,
            shape,
            dtype: t.dtype,
        })
    }

    fn share(_: Seal, t: &CudaTensor) -> Result<CudaTensor> {
        Ok(CudaTensor {
            slice: t.slice.clone(),
            offset: t.offset,
            shape: t.shape,
            dtype: t.dtype,
        })
    }

    fn capture_copy(_: Seal, dev: &Arc<CudaStream>, t: &CudaTensor) -> Result<CudaTensor> {
        Raw::check_tensor(Seal::new(), dev, "an island's output", t)?;
        let copy = zeros_of(dev, t.dtype, t.dims())?;
        ffi::copy_d2d(dev, copy.range(), t.range()).map_err(Error::driver("cuMemcpyDtoDAsync"))?;
        Ok(copy)
    }

    fn capture(
        _: Seal,
        dev: &Arc<CudaStream>,
        memory: &mut NodeMemory<Raw>,
        request: CaptureRequest,
        body: &mut CaptureBody<'_, Self>,
    ) -> Result<CapturedSize<Self>> {
        nodes::capture(dev, memory, request, body)
    }

    fn rerecord(
        _: Seal,
        dev: &Arc<CudaStream>,
        memory: &mut NodeMemory<Raw>,
        _keep: &NodeKeep,
        exec: &mut ExecGraph,
        request: CaptureRequest,
        body: &mut CaptureBody<'_, Self>,
    ) -> std::result::Result<Rerecorded<Self>, (Error, bool)> {
        nodes::rerecord(dev, memory, exec, request, body)
    }

    fn usable(_: Seal, _memory: &NodeMemory<Raw>, keep: &NodeKeep) -> bool {
        nodes::usable(keep)
    }

    fn output_view(
        _: Seal,
        _dev: &Arc<CudaStream>,
        memory: &NodeMemory<Raw>,
        _keep: &NodeKeep,
        _slot: &(),
        rows: usize,
    ) -> Result<CudaTensor> {
        nodes::output_view(memory, rows)
    }

    fn memory_bytes(_: Seal, memory: &NodeMemory<Raw>) -> usize {
        memory.bytes()
    }

    fn graph_memory_usage(
        _: Seal,
        dev: &Arc<CudaStream>,
    ) -> Result<Option<nodes::GraphMemoryUsage>> {
        nodes::GraphMemoryUsage::of_context(dev.context()).map(Some)
    }

    fn release(
        _: Seal,
        _dev: &Arc<CudaStream>,
        memory: &mut NodeMemory<Raw>,
    ) -> (bool, Result<()>) {
        nodes::release(memory)
    }

    fn resume(_: Seal, _dev: &Arc<CudaStream>, _memory: &mut NodeMemory<Raw>) -> Result<()> {
        Ok(())
    }

    fn poison(_: Seal, _dev: &Arc<CudaStream>, memory: &NodeMemory<Raw>) -> Result<()> {
        nodes::poison(memory)
    }

    fn release_cached_memory(_: Seal, dev: &Arc<CudaStream>) -> Result<()> {
        release_cached_memory(dev)
    }
}
