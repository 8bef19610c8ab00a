//! Every raw CUDA driver call the runtime makes beyond cudarc's safe API, each behind a safe
//! function or an owning type, each `unsafe` block with the invariant that makes it sound.

use std::ptr;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DriverError, result, sys};

/// The device address of a whole slice.
pub(crate) fn slice_ptr(slice: &CudaSlice<u8>, stream: &CudaStream) -> u64 {
    // Event tracking is disabled for runtimes (see `context.rs`), so the guard records nothing.
    let (ptr, _guard) = slice.device_ptr(stream);
    ptr
}

/// Whether the CUDA driver library can be loaded.
pub(crate) fn driver_present() -> bool {
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    unsafe { sys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub(crate) fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether cuBLAS can be loaded.
pub(crate) fn cublas_present() -> bool {
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// A device range `[ptr, ptr + bytes)` that the caller owns for the duration of a call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceRange {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
}

impl DeviceRange {
    /// No bytes.
    pub(crate) const EMPTY: DeviceRange = DeviceRange { ptr: 0, bytes: 0 };
}

/// Enqueues a device-to-device copy of `src` into `dst` (equal sizes) on `stream`.
pub(crate) fn copy_d2d(
    stream: &CudaStream,
    dst: DeviceRange,
    src: DeviceRange,
) -> Result<(), DriverError> {
    debug_assert_eq!(dst.bytes, src.bytes);
    stream.context().bind_to_thread()?;
    // SAFETY: both ranges are live device allocations of at least `bytes` bytes: callers build
    // them from tensors whose storage they hold across the call (`Tensor::device_ptr` and
    // `size_in_bytes`); ordering against other work is the stream's.
    unsafe { result::memcpy_dtod_async(dst.ptr, src.ptr, dst.bytes, stream.cu_stream()) }
}

/// Copies `src` (ordered on `src_stream`, possibly another device) into `dst` (on `stream`):
/// the copy is enqueued on `stream`; the caller has synchronized `src_stream` before and
/// synchronizes `stream` after, so neither side's later work or frees overlap the copy.
pub(crate) fn copy_peer(
    stream: &CudaStream,
    dst: DeviceRange,
    src_stream: &CudaStream,
    src: DeviceRange,
) -> Result<(), DriverError> {
    debug_assert_eq!(dst.bytes, src.bytes);
    stream.context().bind_to_thread()?;
    // SAFETY: both ranges are live allocations of `bytes` bytes held by the caller across the
    // call (and until `stream` is synchronized); each context is the one its range belongs to.
    unsafe {
        sys::cuMemcpyPeerAsync(
            dst.ptr,
            stream.context().cu_ctx(),
            src.ptr,
            src_stream.context().cu_ctx(),
            dst.bytes,
            stream.cu_stream(),
        )
        .result()
    }
}

/// Enqueues a fill of `dst` with a 16-bit (`width` 2) or 32-bit (`width` 4) `pattern` on
/// `stream`; `dst.ptr` and `dst.bytes` are multiples of `width`.
pub(crate) fn fill_pattern(
    stream: &CudaStream,
    dst: DeviceRange,
    pattern: u32,
    width: usize,
) -> Result<(), DriverError> {
    stream.context().bind_to_thread()?;
    match width {
        2 => {
            // SAFETY: `dst` is a live allocation of `bytes` bytes held by the caller, 2-byte
            // aligned (checked by the caller).
            unsafe {
                sys::cuMemsetD16Async(dst.ptr, pattern as u16, dst.bytes / 2, stream.cu_stream())
                    .result()
            }
        }
        _ => {
            // SAFETY: as above, 4-byte aligned.
            unsafe {
                sys::cuMemsetD32Async(dst.ptr, pattern, dst.bytes / 4, stream.cu_stream()).result()
            }
        }
    }
}

/// Enqueues a byte fill of `dst` on `stream`.
pub(crate) fn fill_bytes(
    stream: &CudaStream,
    dst: DeviceRange,
    value: u8,
) -> Result<(), DriverError> {
    stream.context().bind_to_thread()?;
    // SAFETY: `dst` is a live device allocation of at least `bytes` bytes held by the caller.
    unsafe { result::memset_d8_async(dst.ptr, value, dst.bytes, stream.cu_stream()) }
}

/// Copies host bytes into `dst` and waits for the copy.
pub(crate) fn upload(stream: &CudaStream, dst: DeviceRange, src: &[u8]) -> Result<(), DriverError> {
    debug_assert_eq!(dst.bytes, src.len());
    stream.context().bind_to_thread()?;
    // SAFETY: `dst` is a live allocation of `src.len()` bytes; `src` stays borrowed until the
    // stream is synchronized below, so the driver never reads freed host memory.
    unsafe {
        sys::cuMemcpyHtoDAsync_v2(dst.ptr, src.as_ptr().cast(), src.len(), stream.cu_stream())
            .result()?;
    }
    stream.synchronize()
}

/// Copies `src` into host bytes and waits for the copy.
pub(crate) fn download(
    stream: &CudaStream,
    dst: &mut [u8],
    src: DeviceRange,
) -> Result<(), DriverError> {
    debug_assert_eq!(dst.len(), src.bytes);
    stream.context().bind_to_thread()?;
    // SAFETY: `src` is a live allocation of `dst.len()` bytes; `dst` stays mutably borrowed
    // until the stream is synchronized below, so the driver writes only while we hold it.
    unsafe {
        sys::cuMemcpyDtoHAsync_v2(
            dst.as_mut_ptr().cast(),
            src.ptr,
            dst.len(),
            stream.cu_stream(),
        )
        .result()?;
    }
    stream.synchronize()
}

/// Free and total device memory of the context's device, in bytes.
pub(crate) fn mem_info(ctx: &CudaContext) -> Result<(usize, usize), DriverError> {
    ctx.bind_to_thread()?;
    result::mem_get_info()
}

/// The stream-ordered memory pool the device allocates from (cudarc's `alloc` uses it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemPool(sys::CUmemoryPool);

impl MemPool {
    /// The device's current pool.
    pub(crate) fn of_device(ctx: &CudaContext) -> Result<Self, DriverError> {
        ctx.bind_to_thread()?;
        // SAFETY: `cu_device` comes from a live context.
        unsafe { result::device::get_mem_pool(ctx.cu_device()) }.map(MemPool)
    }

    /// The release threshold: bytes the pool keeps cached at a synchronize.
    pub(crate) fn release_threshold(&self) -> Result<u64, DriverError> {
        let mut value: u64 = 0;
        // SAFETY: the pool is the device's (it outlives the context); RELEASE_THRESHOLD is a
        // cuuint64_t, matching `value`.
        unsafe {
            sys::cuMemPoolGetAttribute(
                self.0,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut value as *mut u64).cast(),
            )
            .result()?;
        }
        Ok(value)
    }

    /// Sets the release threshold.
    pub(crate) fn set_release_threshold(&self, mut bytes: u64) -> Result<(), DriverError> {
        // SAFETY: as in `release_threshold`; the driver copies the value.
        unsafe {
            sys::cuMemPoolSetAttribute(
                self.0,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut bytes as *mut u64).cast(),
            )
            .result()
        }
    }

    /// Returns cached, unused memory to the driver, keeping at most `keep` bytes.
    pub(crate) fn trim_to(&self, keep: usize) -> Result<(), DriverError> {
        // SAFETY: the pool is valid for the context's life.
        unsafe { result::mem_pool::trim_to(self.0, keep) }
    }
}

/// Returns memory that graph memory nodes cached on the device to the driver.
pub(crate) fn graph_mem_trim(ctx: &CudaContext) -> Result<(), DriverError> {
    ctx.bind_to_thread()?;
    // SAFETY: `cu_device` comes from a live context.
    unsafe { sys::cuDeviceGraphMemTrim(ctx.cu_device()).result() }
}

/// Starts capturing `stream` in thread-local mode: unsafe calls (sync, host copies, driver
/// allocations) from this thread fail instead of corrupting the capture. The returned guard
/// ends the capture (discarding what it recorded) if it is dropped before
/// [`CaptureGuard::disarm`]: on a panic in the forward, or any early return.
pub(crate) fn begin_capture(stream: &Arc<CudaStream>) -> Result<CaptureGuard, DriverError> {
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    Ok(CaptureGuard {
        stream: Some(stream.clone()),
    })
}

/// Ends a capture that nobody else will end (see [`begin_capture`]).
#[derive(Debug)]
pub(crate) struct CaptureGuard {
    stream: Option<Arc<CudaStream>>,
}

impl CaptureGuard {
    /// The capture is ended by its owner from now on.
    pub(crate) fn disarm(mut self) {
        self.stream = None;
    }
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let ctx = stream.context();
        if let Err(e) = bind_quietly(ctx) {
            ctx.record_err(Err::<(), _>(e));
            return;
        }
        // SAFETY: `stream` is live and capturing (begun by `begin_capture`, not ended since:
        // the guard is disarmed by whoever ends it). Ending an invalidated capture returns an
        // error and still leaves the stream out of capture mode.
        match unsafe { result::stream::end_capture(stream.cu_stream()) } {
            Ok(graph) if !graph.is_null() => {
                // SAFETY: the graph was just returned to us and is used by nobody else.
                let _ = unsafe { result::graph::destroy(graph) };
            }
            _ => {}
        }
        if std::thread::panicking() {
            tracing::warn!(
                "a capture was abandoned (the forward panicked); the stream left capture mode"
            );
        } else {
            tracing::debug!(
                "a capture was discarded (the forward failed); the stream left capture mode"
            );
        }
    }
}

/// Makes `ctx` current on this thread without looking at errors recorded for later calls.
fn bind_quietly(ctx: &CudaContext) -> Result<(), DriverError> {
    if result::ctx::get_current()? != Some(ctx.cu_ctx()) {
        // SAFETY: `cu_ctx` belongs to a live context (`ctx` holds it).
        unsafe { result::ctx::set_current(ctx.cu_ctx()) }?;
    }
    Ok(())
}

/// Why ending a capture produced no executable graph.
#[derive(Debug)]
pub(crate) enum EndCaptureError {
    /// The driver refused (the capture was invalidated, or instantiation failed).
    Driver(DriverError),
    /// The graph holds a free node: memory allocated outside the capture was freed inside it.
    ForeignFree,
}

impl From<DriverError> for EndCaptureError {
    fn from(e: DriverError) -> Self {
        EndCaptureError::Driver(e)
    }
}

/// Nodes of `graph` whose type is `kind`.
fn count_nodes_of_type(
    graph: sys::CUgraph,
    kind: sys::CUgraphNodeType,
) -> Result<usize, DriverError> {
    let mut count = 0usize;
    // SAFETY: `graph` is live; a null array asks for the count.
    unsafe { sys::cuGraphGetNodes(graph, ptr::null_mut(), &mut count) }.result()?;
    if count == 0 {
        return Ok(0);
    }
    let mut nodes: Vec<sys::CUgraphNode> = vec![ptr::null_mut(); count];
    // SAFETY: `nodes` has room for `count` handles.
    unsafe { sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut count) }.result()?;
    let mut matching = 0;
    for &node in nodes.iter().take(count) {
        let mut node_kind = std::mem::MaybeUninit::<sys::CUgraphNodeType>::uninit();
        // SAFETY: `node` belongs to the live `graph`; the driver writes its type.
        unsafe { sys::cuGraphNodeGetType(node, node_kind.as_mut_ptr()) }.result()?;
        // SAFETY: initialised by the successful call above.
        if unsafe { node_kind.assume_init() } == kind {
            matching += 1;
        }
    }
    Ok(matching)
}

/// A graph template owned until handed on with [`into_raw`](Self::into_raw); destroyed on
/// drop (every error path of an update).
struct OwnedGraph(sys::CUgraph);

impl OwnedGraph {
    fn into_raw(self) -> sys::CUgraph {
        let graph = self.0;
        std::mem::forget(self);
        graph
    }
}

impl Drop for OwnedGraph {
    fn drop(&mut self) {
        // SAFETY: the template is owned here and destroyed exactly once.
        let _ = unsafe { result::graph::destroy(self.0) };
    }
}

/// An owned, instantiated CUDA graph: the template and its executable, destroyed on drop.
#[derive(Debug)]
pub(crate) struct ExecGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    stream: Arc<CudaStream>,
    nodes: usize,
    /// Bumped by every successful [`update_from_capture`](Self::update_from_capture).
    generation: u64,
}

impl ExecGraph {
    /// Ends the capture on `stream` and instantiates what it recorded. The capture is ended in
    /// every case, so the stream is usable afterwards whatever this returns.
    pub(crate) fn end_capture(stream: &Arc<CudaStream>) -> Result<Self, EndCaptureError> {
        let graph = Self::end_capture_raw(stream)?;
        let mut nodes = 0usize;
        // SAFETY: `graph` was just returned by the driver; a null node array asks for the count.
        let counted = unsafe { sys::cuGraphGetNodes(graph, ptr::null_mut(), &mut nodes).result() };
        // SAFETY: `graph` is valid; instantiation reads it.
        let exec = counted.and_then(|()| unsafe {
            result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0))
        });
        match exec {
            Ok(exec) => Ok(Self {
                graph,
                exec,
                stream: stream.clone(),
                nodes,
                generation: 0,
            }),
            Err(e) => {
                // SAFETY: `graph` is owned here and not used after.
                let _ = unsafe { result::graph::destroy(graph) };
                Err(e.into())
            }
        }
    }

    /// Ends the capture on `stream` and makes this executable replay what it recorded:
    /// `cuGraphExecUpdate` in place when the driver accepts the new graph (same topology),
    /// else a fresh instantiation. Returns whether the update happened in place. The capture is
    /// ended in every case; on error `self` is unchanged.
    pub(crate) fn update_from_capture(
        &mut self,
        stream: &Arc<CudaStream>,
    ) -> Result<bool, EndCaptureError> {
        let fresh = OwnedGraph(Self::end_capture_raw(stream)?);
        let mut nodes = 0usize;
        // SAFETY: `fresh` is live; a null node array asks for the count.
        unsafe { sys::cuGraphGetNodes(fresh.0, ptr::null_mut(), &mut nodes) }.result()?;
        let mut info = std::mem::MaybeUninit::<sys::CUgraphExecUpdateResultInfo>::uninit();
        // SAFETY: `self.exec` and `fresh` are live graphs owned here; `info` receives the result.
        let updated = unsafe { sys::cuGraphExecUpdate_v2(self.exec, fresh.0, info.as_mut_ptr()) }
            .result()
            .is_ok();
        if !updated {
            // SAFETY: `fresh` is a valid graph; instantiation reads it. On error `fresh` is
            // destroyed by its owner and `self` is unchanged.
            let exec =
                unsafe { result::graph::instantiate(fresh.0, sys::CUgraphInstantiate_flags(0)) }?;
            // SAFETY: the old executable is owned here and replaced; destroyed once.
            let _ = unsafe { result::graph::exec_destroy(self.exec) };
            self.exec = exec;
        }
        let old_graph = std::mem::replace(&mut self.graph, fresh.into_raw());
        self.nodes = nodes;
        self.generation += 1;
        // SAFETY: the old template is replaced and destroyed exactly once.
        let _ = unsafe { result::graph::destroy(old_graph) };
        Ok(updated)
    }

    fn end_capture_raw(stream: &Arc<CudaStream>) -> Result<sys::CUgraph, EndCaptureError> {
        // Not cudarc's `bind_to_thread`: it first returns any error a drop recorded, and
        // returning before `cuStreamEndCapture` would leave the stream capturing. The recorded
        // error stays recorded; the caller reports it after the capture has ended.
        bind_quietly(stream.context())?;
        // SAFETY: `stream` is live; ending a capture that was invalidated returns an error and
        // still leaves the stream out of capture mode.
        let graph = unsafe { result::stream::end_capture(stream.cu_stream()) }?;
        if graph.is_null() {
            return Err(DriverError(sys::CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED).into());
        }
        // The runtime never frees under capture (drops are parked); a free node comes from
        // user code dropping memory allocated outside the capture: name it before the driver
        // refuses to instantiate with a bare "invalid argument".
        match count_nodes_of_type(graph, sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_FREE) {
            Ok(0) => Ok(graph),
            other => {
                // SAFETY: `graph` is owned here and not used after.
                let _ = unsafe { result::graph::destroy(graph) };
                match other {
                    Err(e) => Err(e.into()),
                    Ok(_) => Err(EndCaptureError::ForeignFree),
                }
            }
        }
    }

    /// How many times [`update_from_capture`](Self::update_from_capture) changed what this
    /// executable replays.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Uploads the executable so the first launch pays no setup.
    pub(crate) fn upload(&self) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        // SAFETY: `exec` and `stream` live as long as `self`.
        unsafe { result::graph::upload(self.exec, self.stream.cu_stream()) }
    }

    /// Launches the executable on its stream.
    pub(crate) fn launch(&self) -> Result<(), DriverError> {
        // SAFETY: `exec` and `stream` live as long as `self`; the buffers the graph reads and
        // writes are owned by the runner or pool that owns this graph (see `capture.rs`).
        unsafe { result::graph::launch(self.exec, self.stream.cu_stream()) }
    }

    /// Nodes in the graph (kernels, copies, memsets).
    pub(crate) fn node_count(&self) -> usize {
        self.nodes
    }
}

impl Drop for ExecGraph {
    fn drop(&mut self) {
        let ctx = self.stream.context();
        ctx.record_err(ctx.bind_to_thread());
        // SAFETY: both handles are owned by `self` and destroyed exactly once, here.
        ctx.record_err(unsafe { result::graph::exec_destroy(self.exec) });
        // SAFETY: as above.
        ctx.record_err(unsafe { result::graph::destroy(self.graph) });
    }
}

/// Gives cuBLAS a workspace of `bytes` at `ptr`, so it never allocates on its own (illegal
/// during capture).
pub(crate) fn set_cublas_workspace(
    blas: &cudarc::cublas::CudaBlas,
    ptr: u64,
    bytes: usize,
) -> Result<(), String> {
    // SAFETY: `ptr` is a live allocation of `bytes` owned by the runtime next to the handle and
    // dropped after it (both live in the same `OnceCell` entry).
    let status =
        unsafe { cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut _, bytes) };
    status.result().map_err(|e| format!("{e:?}"))
}

/// A range of device virtual addresses with physical memory mapped on demand
/// (`cuMemAddressReserve` + `cuMemCreate` + `cuMemMap`). Unmapping gives the physical memory
/// back to the driver while the addresses stay reserved, so graphs that point into the range
/// replay unchanged once it is mapped again.
///
/// Only work on `stream` touches the range: unmapping (a release, or the drop) first waits for
/// that stream, so a graph still running when its runner is dropped never loses its memory.
#[derive(Debug)]
pub(crate) struct VirtualMemory {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    va: u64,
    size: usize,
    handle: Option<sys::CUmemGenericAllocationHandle>,
}

fn device_location(ctx: &CudaContext) -> sys::CUmemLocation {
    sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id: ctx.ordinal() as i32,
    }
}

fn allocation_prop(ctx: &CudaContext) -> sys::CUmemAllocationProp {
    // SAFETY: `CUmemAllocationProp` is a plain C struct for which all-zero bytes are a valid
    // value (null pointer, zero enums/flags); the fields that matter are set below.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location = device_location(ctx);
    prop
}

impl VirtualMemory {
    /// The granularity physical allocations are rounded to.
    pub(crate) fn granularity(ctx: &CudaContext) -> Result<usize, DriverError> {
        ctx.bind_to_thread()?;
        let prop = allocation_prop(ctx);
        let mut granularity = 0usize;
        // SAFETY: `prop` and `granularity` are valid for the call's duration.
        unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut granularity,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
            )
            .result()?;
        }
        Ok(granularity.max(1))
    }

    /// Reserves `bytes` (rounded up to the granularity) and maps physical memory there, for
    /// work on `stream`.
    pub(crate) fn new(stream: &Arc<CudaStream>, bytes: usize) -> Result<Self, DriverError> {
        let ctx = stream.context();
        let granularity = Self::granularity(ctx)?;
        let size = bytes.max(1).div_ceil(granularity) * granularity;
        let mut va = 0u64;
        // SAFETY: reserves an address range; `va` receives its start.
        unsafe { sys::cuMemAddressReserve(&mut va, size, granularity, 0, 0).result()? };
        let mut vm = Self {
            ctx: ctx.clone(),
            stream: stream.clone(),
            va,
            size,
            handle: None,
        };
        vm.map()?; // on error, `vm`'s drop frees the reservation
        Ok(vm)
    }

    /// Maps fresh physical memory into the range (no-op when mapped). Contents are undefined.
    pub(crate) fn map(&mut self) -> Result<(), DriverError> {
        if self.handle.is_some() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        let prop = allocation_prop(&self.ctx);
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: `prop` describes device memory of this context's device; `size` is a multiple
        // of the granularity.
        unsafe { sys::cuMemCreate(&mut handle, self.size, &prop, 0).result()? };
        // SAFETY: the range [va, va+size) is reserved by `self` and currently unmapped.
        let mapped = unsafe { sys::cuMemMap(self.va, self.size, 0, handle, 0).result() };
        let access = sys::CUmemAccessDesc {
            location: device_location(&self.ctx),
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range was just mapped; `access` lives across the call.
        let accessible = mapped
            .and_then(|()| unsafe { sys::cuMemSetAccess(self.va, self.size, &access, 1).result() });
        if let Err(e) = accessible {
            if mapped.is_ok() {
                // SAFETY: undo the mapping made above.
                let _ = unsafe { sys::cuMemUnmap(self.va, self.size) };
            }
            // SAFETY: `handle` was created above and is not mapped anywhere now.
            let _ = unsafe { sys::cuMemRelease(handle) };
            return Err(e);
        }
        self.handle = Some(handle);
        Ok(())
    }

    /// Waits for the work queued on the stream (which may read or write the range), then
    /// unmaps and releases the physical memory (no-op when unmapped).
    ///
    /// While the stream is capturing it can't be waited for: the memory is then left mapped
    /// (and an error returned), never pulled from under queued work.
    pub(crate) fn unmap(&mut self) -> Result<(), DriverError> {
        let Some(handle) = self.handle else {
            return Ok(());
        };
        self.ctx.bind_to_thread()?;
        // cuMemUnmap does not wait for queued work: a graph launched just before its runner
        // was dropped would fault on unmapped memory.
        self.stream.synchronize()?;
        self.handle = None;
        // SAFETY: the range is mapped to `handle` (made by `map`); the only stream that uses it
        // has just been waited for.
        unsafe { sys::cuMemUnmap(self.va, self.size).result()? };
        // SAFETY: `handle` is no longer mapped; released exactly once.
        unsafe { sys::cuMemRelease(handle).result() }
    }

    /// The start of the range.
    pub(crate) fn device_ptr(&self) -> u64 {
        self.va
    }

    /// The range's size in bytes (a multiple of the granularity).
    pub(crate) fn len(&self) -> usize {
        self.size
    }

    /// Whether physical memory is mapped.
    pub(crate) fn is_mapped(&self) -> bool {
        self.handle.is_some()
    }
}

impl Drop for VirtualMemory {
    fn drop(&mut self) {
        let unmapped = self.unmap();
        if self.handle.is_some() {
            // The stream could not be waited for (it is capturing, or the context is broken):
            // leak the range rather than unmap memory queued work may still use.
            tracing::warn!(
                bytes = self.size,
                error = ?unmapped.err(),
                "graph pool memory leaked: its stream could not be synchronized before the unmap"
            );
            return;
        }
        self.ctx.record_err(unmapped);
        // SAFETY: the range was reserved by `new` and is freed exactly once, here.
        let freed = unsafe { sys::cuMemAddressFree(self.va, self.size).result() };
        self.ctx.record_err(freed);
    }
}

/// One job of [`launch_pad_copy`]: copy `src` into the start of `dst`, then fill the rest of
/// `dst` (when `pattern` is set) with the 32-bit pattern.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PadJob {
    /// The whole static buffer (`bytes` = its capacity, the fill's end).
    pub(crate) dst: DeviceRange,
    /// The input (`bytes` <= `dst.bytes`).
    pub(crate) src: DeviceRange,
    /// The pad value's bytes, repeated to 32 bits; `None`: the rows after the input are left.
    pub(crate) pattern: Option<u32>,
}

/// Launches the runtime's `pad_copy` kernel: up to four [`PadJob`]s in one launch (see
/// `cu/pad_copy.cu`).
pub(crate) fn launch_pad_copy(
    stream: &CudaStream,
    function: &cudarc::driver::CudaFunction,
    jobs: &[PadJob],
) -> Result<(), DriverError> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    debug_assert!(jobs.len() <= 4 && jobs.iter().all(|j| j.src.bytes <= j.dst.bytes));
    let mut args = [0u64; 20];
    let mut largest = 0usize;
    for (i, job) in jobs.iter().take(4).enumerate() {
        let copy = job.src.bytes.min(job.dst.bytes);
        let total = if job.pattern.is_some() {
            job.dst.bytes
        } else {
            copy
        };
        args[5 * i] = job.dst.ptr;
        args[5 * i + 1] = job.src.ptr;
        args[5 * i + 2] = copy as u64;
        args[5 * i + 3] = total as u64;
        args[5 * i + 4] = u64::from(job.pattern.unwrap_or(0));
        largest = largest.max(total);
    }
    let blocks = largest.div_ceil(16 * 256).clamp(1, 1024) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, jobs.len().clamp(1, 4) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = stream.launch_builder(function);
    for arg in &args {
        builder.arg(arg);
    }
    // SAFETY: `pad_copy` takes twenty u64 (dst, src, bytes, total, pattern per job); each job's
    // `dst` is a live range of `total` bytes and its `src` of `bytes` bytes, held by the caller
    // across the call (stream-ordered); unused jobs have 0 bytes and are never dereferenced.
    unsafe { builder.launch(cfg) }.map(|_| ())
}
