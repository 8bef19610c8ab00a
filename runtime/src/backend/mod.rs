//! The backend seam: what a [`Runner`](crate::Runner) needs from the tensors and the device a
//! forward is written with.
//!
//! The runner's core (dispatch, static inputs, capture per size, replay, fallback, refresh,
//! release) is written against [`Backend`]; three implementations sit below it:
//! - `Native` (in `cudagraph-kernels`): cudagraph's own `Runtime` and `Tensor`. Capture-time
//!   tensors come from the runner's [`GraphPool`](crate::GraphPool) (pool mode, through the
//!   device's [`PoolRouter`](crate::routing::PoolRouter): see [`pool_capture`](crate::pool_capture)).
//! - [`Raw`](raw::Raw): plain cudarc, a forward taking `&Arc<CudaStream>` and
//!   [`CudaTensor`](raw::CudaTensor)s that wrap the user's own `CudaSlice`s.
//! - `Candle` (feature `candle`): candle's `CudaDevice` and `Tensor`.
//!
//! The foreign backends capture in graph-memory-node mode ([`nodes`]): whatever the forward
//! allocates during the capture (cudarc's `stream.alloc`, a candle op) becomes a graph memory
//! node, which the driver backs with physical memory at launch.
//!
//! [`Device`] maps the type of a forward's device argument to its backend, so the code
//! `#[cuda_graph]` generates names the backend from the signature alone.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaStream};

use crate::dispatch::{InputSpec, PadValue};
use crate::error::Result;
pub use crate::ffi::{DeviceRange, ExecGraph};
use crate::freeze::FreezeScope;
use crate::kernel_cache::KernelModule;
use crate::policy::{ReclaimPolicy, Warmup};
use crate::pool_capture::CaptureTiming;
pub use crate::segments::Segments;
use crate::shape::Shape;

pub mod nodes;
pub mod raw;

#[cfg(feature = "candle")]
pub mod candle;

/// What one capture of one size is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct CaptureRequest {
    /// The function's name, for errors.
    pub function: &'static str,
    /// The size captured (the rows of every input the forward gets).
    pub size: usize,
    /// The largest size of the runner (the rows of its static buffers).
    pub max_rows: usize,
    /// Whether to warm up first (pool mode decides from this; node mode always warms up).
    pub warmup: Warmup,
}

/// One captured size, as a backend hands it to the runner.
pub struct CapturedSize<B: BackendOps> {
    /// The executable graph (the first segment, when the forward has islands).
    pub exec: ExecGraph,
    /// The segments after the first, one after each island, in order (empty without islands).
    pub segments: Vec<ExecGraph>,
    /// What the graph keeps alive and where its memory lies.
    pub keep: B::GraphKeep,
    /// Where its output lies.
    pub output: B::OutputSlot,
    /// Where the capture's time went.
    pub timing: CaptureTiming,
    /// Device bytes the graph needs for its intermediates and output.
    pub need: usize,
}

/// A re-recorded size (what the backend's `rerecord` returns).
pub struct Rerecorded<B: BackendOps> {
    /// What the graph now keeps.
    pub keep: B::GraphKeep,
    /// Where its output now lies.
    pub output: B::OutputSlot,
    /// Whether the executable was updated in place (else re-instantiated).
    pub in_place: bool,
}

/// The forward as the runner calls it during a capture: the static inputs' views of the
/// captured size are bound inside. A recording hands it the [`Segments`] its islands cut; a
/// warm-up hands none (islands then run in place).
pub type CaptureBody<'a, B> = dyn FnMut(&<B as BackendOps>::Dev, Option<&dyn Segments>) -> Result<<B as BackendOps>::Ten>
    + 'a;

/// The tensors and device a forward is written with, and how graphs of it are captured.
///
/// Implemented by `Native` (cudagraph-kernels), [`raw::Raw`] and (feature `candle`)
/// `candle::Candle`. What the
/// runner does with tensors and devices (allocate static buffers, view rows, capture, make
/// output views) is the supertrait [`BackendOps`], whose every function takes a [`Seal`]: only
/// this crate can make one, so no user code can call them, by any path (a generic bound
/// included), and none can make an owned alias of memory a replay rewrites.
pub trait Backend:
    BackendOps<
        Dev = <Self as Backend>::Device,
        Ten = <Self as Backend>::Tensor,
        Dt = <Self as Backend>::DType,
    > + Sized
    + 'static
{
    /// What the forward receives as its device argument.
    type Device: ?Sized;
    /// The tensors a forward takes and returns.
    type Tensor;
    /// The element types of its tensors.
    type DType: Copy + PartialEq + std::fmt::Debug;
}

pub use crate::seal::Seal;
pub use ops::BackendOps;

/// The runner's operations on a backend's tensors and devices (see [`BackendOps`]).
mod ops {
    use super::*;

    /// See [`Backend`]; `Dev`, `Ten` and `Dt` are its `Device`, `Tensor` and `DType`.
    ///
    /// Every function takes a [`Seal`], which only this crate can make: they are the runtime's
    /// to call, never a user's.
    ///
    /// # Safety
    ///
    /// The runner trusts an implementation with device memory: it copies into the ranges
    /// [`range`](Self::range) reports, launches graphs on the stream [`stream`](Self::stream)
    /// returns, and hands [`output_view`](Self::output_view)s out behind a borrow of the
    /// runner. An implementation must report true ranges of live allocations ordered on the
    /// device's stream; make views that neither outlive nor escape what they view except
    /// through the runner's borrow; return from [`capture`](Self::capture) and
    /// [`rerecord`](Self::rerecord) a `GraphKeep` that holds (with the runner's `Memory`)
    /// everything the executable reads or writes, for as long as the runner keeps it (the
    /// runner launches it while it holds both, and not after [`release`](Self::release) until
    /// [`resume`](Self::resume)); set aside memory a failed capture left a kept tensor in; and
    /// never let a [`Seal`] it receives out of the call (stored, returned, or passed to code
    /// that could call another backend with it).
    pub unsafe trait BackendOps: Sized + 'static {
        /// The device type.
        type Dev: ?Sized;
        /// The tensor type.
        type Ten;
        /// The dtype type.
        type Dt: Copy + PartialEq + std::fmt::Debug;
        /// Device memory shared by every graph of a runner.
        type Memory;
        /// What one size's graph keeps alive with it.
        type GraphKeep;
        /// Where one size's output lies (a fresh view of it is made per replay).
        type OutputSlot: Copy;

        /// The stream every graph of `dev` is captured on and replays on (a clone of the device's
        /// `Arc`: candle hands out clones only).
        fn stream(_: Seal, dev: &Self::Dev) -> Arc<CudaStream>;

        /// Called once when a runner is built on `dev`: an error if graphs can't be captured there
        /// (plain cudarc: a context that tracks events), or device setup captures need.
        fn prepare(_: Seal, _dev: &Self::Dev) -> Result<()> {
            Ok(())
        }

        /// An error if `dev` is capturing now (for what a capture can't record: a replay, a
        /// synchronize).
        fn forbid_during_capture(_: Seal, dev: &Self::Dev, what: &'static str) -> Result<()>;

        /// Waits for the device's stream and surfaces errors recorded for later.
        fn synchronize(_: Seal, dev: &Self::Dev) -> Result<()>;

        /// Loads a kernel of the runtime's own (the input copy), for `dev`'s context.
        fn function(
            _: Seal,
            dev: &Self::Dev,
            module: &'static KernelModule,
            name: &'static str,
        ) -> Result<CudaFunction>;

        /// The freeze scope around a batch of captures.
        fn freeze(_: Seal, dev: &Self::Dev, policy: ReclaimPolicy) -> Result<FreezeScope<'_>>;

        /// The reclamation policy captures on `dev` use.
        fn reclaim_policy(_: Seal, _dev: &Self::Dev) -> ReclaimPolicy {
            ReclaimPolicy::from_env()
        }

        /// Empty runner memory.
        fn new_memory(_: Seal, dev: &Self::Dev) -> Self::Memory;

        /// The element type of `t`.
        fn dtype(_: Seal, t: &Self::Ten) -> Self::Dt;

        /// The dimensions of `t` (an error beyond [`MAX_RANK`](crate::MAX_RANK) dimensions).
        fn shape(_: Seal, t: &Self::Ten) -> Result<Shape>;

        /// Bytes of one element of `dtype`.
        fn dtype_bytes(_: Seal, dtype: Self::Dt) -> usize;

        /// `value` as a 32-bit pattern of `dtype` (see [`PadValue`]), or an error naming `input`.
        fn pad_pattern(_: Seal, value: PadValue, dtype: Self::Dt, input: usize) -> Result<u32>;

        /// An error naming `op` unless `dev` may use `t` on its stream (same device, same stream,
        /// contiguous).
        fn check_tensor(_: Seal, dev: &Self::Dev, op: &'static str, t: &Self::Ten) -> Result<()>;

        /// The device bytes of `t` (contiguous, checked by [`check_tensor`](Self::check_tensor)).
        fn range(_: Seal, t: &Self::Ten) -> Result<DeviceRange>;

        /// A zero-filled tensor of `spec` with `rows` rows, allocated outside any capture.
        fn zeros(
            _: Seal,
            dev: &Self::Dev,
            spec: &InputSpec<Self::Dt>,
            rows: usize,
        ) -> Result<Self::Ten>;

        /// The first `rows` rows of `t`, sharing its memory.
        fn narrow(_: Seal, t: &Self::Ten, rows: usize) -> Result<Self::Ten>;

        /// A view of the first elements of contiguous `t` with shape `dims` (at most `t`'s
        /// elements), sharing its memory: a static input buffer seen with a bucketed dimension's
        /// size.
        fn view_prefix(_: Seal, t: &Self::Ten, dims: &[usize]) -> Result<Self::Ten>;

        /// A copy of `t` in new memory that outlives every graph.
        fn duplicate(_: Seal, dev: &Self::Dev, t: &Self::Ten) -> Result<Self::Ten>;

        /// Another handle to all of `t` (the same memory): what an island's input view is made
        /// of (an island closure only ever gets a reference to it).
        fn share(_: Seal, t: &Self::Ten) -> Result<Self::Ten>;

        /// A copy of `t` in new memory of the capture under way (pool memory, or a graph memory
        /// node): an island's output as the next segment reads it. Called while the stream
        /// records.
        fn capture_copy(_: Seal, dev: &Self::Dev, t: &Self::Ten) -> Result<Self::Ten>;

        /// Captures one size: warm-up as the backend needs, record, instantiate, upload.
        fn capture(
            _: Seal,
            dev: &Self::Dev,
            memory: &mut Self::Memory,
            request: CaptureRequest,
            body: &mut CaptureBody<'_, Self>,
        ) -> Result<CapturedSize<Self>>;

        /// Re-records one size with a new forward and updates `exec` (in place when the driver
        /// accepts). On error, whether `exec` was changed comes with it.
        fn rerecord(
            _: Seal,
            dev: &Self::Dev,
            memory: &mut Self::Memory,
            keep: &Self::GraphKeep,
            exec: &mut ExecGraph,
            request: CaptureRequest,
            body: &mut CaptureBody<'_, Self>,
        ) -> std::result::Result<Rerecorded<Self>, (crate::Error, bool)>;

        /// Whether a graph keeping `keep` may still replay (false once its memory was withdrawn
        /// because a tensor escaped a capture there).
        fn usable(_: Seal, memory: &Self::Memory, keep: &Self::GraphKeep) -> bool;

        /// A view of the first `rows` rows of a graph's output, made after each replay.
        fn output_view(
            _: Seal,
            dev: &Self::Dev,
            memory: &Self::Memory,
            keep: &Self::GraphKeep,
            slot: &Self::OutputSlot,
            rows: usize,
        ) -> Result<Self::Ten>;

        /// Device bytes of the runner's graph memory.
        fn memory_bytes(_: Seal, memory: &Self::Memory) -> usize;

        /// The driver's graph-memory figures of `dev`'s device, for backends that capture graph
        /// memory nodes (`None` for the native pool).
        fn graph_memory_usage(
            _: Seal,
            _dev: &Self::Dev,
        ) -> Result<Option<nodes::GraphMemoryUsage>> {
            Ok(None)
        }

        /// Gives the runner's graph memory back to the driver, keeping the graphs defined; returns
        /// whether it is released after the call (also on error: a release that failed halfway).
        fn release(_: Seal, dev: &Self::Dev, memory: &mut Self::Memory) -> (bool, Result<()>);

        /// Maps back what [`release`](Self::release) gave away.
        fn resume(_: Seal, dev: &Self::Dev, memory: &mut Self::Memory) -> Result<()>;

        /// Fills the runner's graph memory with `0xFF` bytes (a test aid).
        fn poison(_: Seal, dev: &Self::Dev, memory: &Self::Memory) -> Result<()>;

        /// Returns what the stream-ordered allocator and graph memory nodes cache to the driver.
        fn release_cached_memory(_: Seal, dev: &Self::Dev) -> Result<()>;
    }
}

/// A forward's device argument type: names its [`Backend`] (`Runtime` → `Native` (cudagraph-kernels),
/// `Arc<CudaStream>` → [`raw::Raw`], candle's `CudaDevice` → `candle::Candle`).
pub trait Device {
    /// The backend whose device this is.
    type Backend: Backend;

    /// `self`, as the backend's device type (which it is: the identity).
    fn as_backend_device(&self) -> &<Self::Backend as Backend>::Device;
}
