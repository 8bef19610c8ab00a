//! Every raw CUDA driver call the runtime makes beyond cudarc's safe API, each behind a safe
//! function or an owning type, each `unsafe` block with the invariant that makes it sound.

use std::ptr;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DriverError, result, sys};

/// The device address of a whole slice. (On a context that tracks events, as the runtime's
/// and the native library's never do, the guard records a use of the slice on `stream`; the
/// address is only a number either way.)
pub fn slice_ptr(slice: &CudaSlice<u8>, stream: &CudaStream) -> u64 {
    let (ptr, _guard) = slice.device_ptr(stream);
    ptr
}

// Under `dynamic-linking` (next to candle) the libraries were loaded with the program, so
// "is it there" becomes "does its version call succeed": the stub libraries of
// `scripts/cuda-toolchain.sh` answer with an error.

/// Whether the CUDA driver library can be loaded (and is not a stub).
pub fn driver_present() -> bool {
    #[cfg(not(feature = "dynamic-linking"))]
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    return unsafe { sys::is_culib_present() };
    #[cfg(feature = "dynamic-linking")]
    {
        let mut version = 0;
        // SAFETY: writes one int; needs no cuInit.
        unsafe { sys::cuDriverGetVersion(&mut version) == sys::CUresult::CUDA_SUCCESS }
    }
}

/// Whether NVRTC can be loaded (and is not a stub).
pub(crate) fn nvrtc_present() -> bool {
    #[cfg(not(feature = "dynamic-linking"))]
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    return unsafe { cudarc::nvrtc::sys::is_culib_present() };
    #[cfg(feature = "dynamic-linking")]
    {
        use cudarc::nvrtc::sys as nvrtc;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: writes two ints.
        unsafe { nvrtc::nvrtcVersion(&mut major, &mut minor) == nvrtc::nvrtcResult::NVRTC_SUCCESS }
    }
}

/// Gives back to the driver what the stream-ordered allocator and graph memory nodes of
/// `ctx`'s device cache (`cuMemPoolTrimTo`, `cuDeviceGraphMemTrim`); the caller synchronized
/// first. Safe: trimming frees only memory no allocation holds.
pub fn trim_cached_memory(ctx: &CudaContext) -> crate::Result<()> {
    use crate::Error;
    let pool = MemPool::of_device(ctx).map_err(Error::driver("cuDeviceGetMemPool"))?;
    pool.trim_to(0).map_err(Error::driver("cuMemPoolTrimTo"))?;
    graph_mem_trim(ctx).map_err(Error::driver("cuDeviceGraphMemTrim"))
}

/// A device range `[ptr, ptr + bytes)` that the caller owns for the duration of a call.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRange {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
}

impl DeviceRange {
    /// No bytes.
    pub(crate) const EMPTY: DeviceRange = DeviceRange { ptr: 0, bytes: 0 };

    /// The range `[ptr, ptr + bytes)`: only a description; what may be done with it is the
    /// `unsafe` functions' contract ([`copy`], [`fill`]).
    pub const fn new(ptr: u64, bytes: usize) -> Self {
        DeviceRange { ptr, bytes }
    }

    /// The first byte's address.
    pub const fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The length in bytes.
    pub const fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Enqueues a copy of `src` into `dst` on `stream`, for a backend implementation's own
/// tensors (the native library's `Runtime::copy`). An error unless both lengths are equal.
///
/// # Safety
///
/// Both ranges lie inside live device allocations of `stream`'s context that the caller keeps
/// alive until the copy has run (stream order), and nothing on another stream writes `dst` or
/// `src` meanwhile unordered with `stream`.
pub unsafe fn copy(
    stream: &CudaStream,
    dst: DeviceRange,
    src: DeviceRange,
) -> Result<(), DriverError> {
    copy_d2d(stream, dst, src)
}

/// Enqueues a fill of every byte of `dst` with `value` on `stream` (the native library's
/// `Runtime::fill_bytes`).
///
/// # Safety
///
/// As for [`copy`]: `dst` lies inside a live allocation of `stream`'s context, kept alive until
/// the fill has run.
pub unsafe fn fill(stream: &CudaStream, dst: DeviceRange, value: u8) -> Result<(), DriverError> {
    fill_bytes(stream, dst, value)
}

/// `CUDA_ERROR_INVALID_VALUE` unless a copy's two sides have the same length: checked in
/// every build (not a `debug_assert`), since a copy of the longer length would write past the
/// shorter side's allocation.
fn check_lengths(dst: usize, src: usize) -> Result<(), DriverError> {
    if dst == src {
        Ok(())
    } else {
        Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE))
    }
}

/// Enqueues a device-to-device copy of `src` into `dst` (equal sizes) on `stream`.
pub(crate) fn copy_d2d(
    stream: &CudaStream,
    dst: DeviceRange,
    src: DeviceRange,
) -> Result<(), DriverError> {
    check_lengths(dst.bytes, src.bytes)?;
    stream.context().bind_to_thread()?;
    // SAFETY: both ranges are live device allocations of at least `bytes` bytes: callers build
    // them from tensors whose storage they hold across the call (`Tensor::device_ptr` and
    // `size_in_bytes`); ordering against other work is the stream's.
    unsafe { result::memcpy_dtod_async(dst.ptr, src.ptr, dst.bytes, stream.cu_stream()) }
}

/// Enqueues a strided device-to-device copy on `stream`: `height` rows of `width` bytes, row
/// `r` read at `src.ptr + r * src_pitch` and written at `dst.ptr + r * dst_pitch` (a bucketed
/// input dimension: each row of the call's input into a wider row of its static buffer).
/// Checked: every row lies inside its range, pitches at least `width`.
pub(crate) fn copy_2d(
    stream: &CudaStream,
    (dst, dst_pitch): (DeviceRange, usize),
    (src, src_pitch): (DeviceRange, usize),
    width: usize,
    height: usize,
) -> Result<(), DriverError> {
    let invalid = DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE);
    if height == 0 || width == 0 {
        return Ok(());
    }
    let span = |pitch: usize| {
        pitch
            .checked_mul(height - 1)
            .and_then(|b| b.checked_add(width))
    };
    match (span(dst_pitch), span(src_pitch)) {
        (Some(d), Some(s))
            if dst_pitch >= width && src_pitch >= width && d <= dst.bytes && s <= src.bytes => {}
        _ => return Err(invalid),
    }
    stream.context().bind_to_thread()?;
    let copy = sys::CUDA_MEMCPY2D_st {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: src.ptr,
        srcArray: std::ptr::null_mut(),
        srcPitch: src_pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst.ptr,
        dstArray: std::ptr::null_mut(),
        dstPitch: dst_pitch,
        WidthInBytes: width,
        Height: height,
    };
    // SAFETY: `copy` describes device memory only, every row of which lies inside `src` and
    // `dst` (checked above), live device allocations the callers hold across the call; ordering
    // against other work is the stream's.
    unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }.result()
}

/// Enqueues a fill of `dst` with `pattern` on `stream`: its low byte (`width` 1), low 16 bits
/// (`width` 2) or all 32 bits (`width` 4, and 8 for a pattern that repeats every 4 bytes);
/// `dst.ptr` and `dst.bytes` are multiples of `width` (of 4 for `width` 8).
pub(crate) fn fill_pattern(
    stream: &CudaStream,
    dst: DeviceRange,
    pattern: u32,
    width: usize,
) -> Result<(), DriverError> {
    stream.context().bind_to_thread()?;
    match width {
        1 => {
            // SAFETY: `dst` is a live allocation of `bytes` bytes held by the caller.
            unsafe {
                sys::cuMemsetD8Async(dst.ptr, pattern as u8, dst.bytes, stream.cu_stream()).result()
            }
        }
        2 => {
            // SAFETY: `dst` is a live allocation of `bytes` bytes held by the caller, 2-byte
            // aligned (checked by the caller).
            unsafe {
                sys::cuMemsetD16Async(dst.ptr, pattern as u16, dst.bytes / 2, stream.cu_stream())
                    .result()
            }
        }
        _ => {
            // SAFETY: as above, 4-byte aligned (8-byte elements: the caller checked that the
            // pattern repeats every 4 bytes).
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

    /// The pool's figures: (used now, used high-water, reserved now, reserved high-water), in
    /// bytes.
    pub(crate) fn usage(&self) -> Result<[u64; 4], DriverError> {
        use sys::CUmemPool_attribute::*;
        let mut out = [0u64; 4];
        for (value, attr) in out.iter_mut().zip([
            CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
            CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ]) {
            // SAFETY: the pool is the device's (it outlives the context); each attribute is a
            // cuuint64_t, written into `value`.
            unsafe { sys::cuMemPoolGetAttribute(self.0, attr, (value as *mut u64).cast()) }
                .result()?;
        }
        Ok(out)
    }

    /// Resets the pool's high-water marks to the current values.
    pub(crate) fn reset_high(&self) -> Result<(), DriverError> {
        use sys::CUmemPool_attribute::*;
        for attr in [
            CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ] {
            let mut zero = 0u64;
            // SAFETY: as in `usage`; resetting a high-water mark takes a zero value, which the
            // driver copies.
            unsafe { sys::cuMemPoolSetAttribute(self.0, attr, (&mut zero as *mut u64).cast()) }
                .result()?;
        }
        Ok(())
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

/// The driver's graph-memory figures for `ctx`'s device: (used now, used high-water, reserved
/// now, reserved high-water), in bytes (`cuDeviceGetGraphMemAttribute`).
pub(crate) fn graph_mem_usage(ctx: &CudaContext) -> Result<[u64; 4], DriverError> {
    use sys::CUgraphMem_attribute::*;
    ctx.bind_to_thread()?;
    let mut out = [0u64; 4];
    for (value, attr) in out.iter_mut().zip([
        CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT,
        CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
        CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT,
        CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH,
    ]) {
        // SAFETY: `cu_device` comes from a live context; each attribute is a `cuuint64_t`,
        // written into `value`.
        unsafe {
            sys::cuDeviceGetGraphMemAttribute(ctx.cu_device(), attr, (value as *mut u64).cast())
        }
        .result()?;
    }
    Ok(out)
}

/// Resets the driver's graph-memory high-water marks of `ctx`'s device to the current values.
pub(crate) fn reset_graph_mem_high(ctx: &CudaContext) -> Result<(), DriverError> {
    use sys::CUgraphMem_attribute::*;
    ctx.bind_to_thread()?;
    for attr in [
        CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
        CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH,
    ] {
        let mut zero = 0u64;
        // SAFETY: as in `graph_mem_usage`; setting a high-water mark takes a zero value.
        unsafe {
            sys::cuDeviceSetGraphMemAttribute(ctx.cu_device(), attr, (&mut zero as *mut u64).cast())
        }
        .result()?;
    }
    Ok(())
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

impl CaptureGuard {
    /// Ends and discards the capture as dropping the guard does, first noting in `ledger` the
    /// frees it recorded (node mode, a segment after an island: what the forward dropped of
    /// the earlier segments' allocations before it failed).
    pub(crate) fn discard_into(mut self, ledger: &mut NodeLedger) {
        if let Some(stream) = self.stream.take() {
            discard(&stream, Some(ledger));
        }
    }
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            discard(&stream, None);
        }
    }
}

/// Ends the capture on `stream` and discards its graph (see [`CaptureGuard`]); frees it recorded
/// go to `ledger` when given.
fn discard(stream: &Arc<CudaStream>, ledger: Option<&mut NodeLedger>) {
    let ctx = stream.context();
    if let Err(e) = bind_quietly(ctx) {
        ctx.record_err(Err::<(), _>(e));
        return;
    }
    // SAFETY: `stream` is live and capturing (begun by `begin_capture`, not ended since: the
    // guard is disarmed by whoever ends it). Ending an invalidated capture returns an error and
    // still leaves the stream out of capture mode.
    if let Ok(graph) = unsafe { result::stream::end_capture(stream.cu_stream()) } {
        if !graph.is_null() {
            // Graph allocations the discarded capture made and did not free are tensors the
            // forward kept before it failed: launched once, they become ordinary allocations
            // the driver backs, freed when the tensors holding them drop (unbacked, reading
            // them would fault and a later graph could be given the same addresses). As for a
            // capture that succeeded; see `settle_escaped`. The graph may also free allocations
            // of earlier segments (node mode, after an island), which the launch runs.
            let list = memory_nodes(graph).ok();
            let kept = list
                .as_ref()
                .is_some_and(|l| l.allocs.iter().any(|&(ptr, _)| !l.frees.contains(&ptr)));
            let mut ran = false;
            if kept {
                match settle_escaped(graph, stream) {
                    Ok(()) => ran = true,
                    Err(e) => ctx.record_err(Err::<(), _>(e)),
                }
            }
            if let (Some(ledger), Some(list)) = (ledger, &list) {
                let own: std::collections::HashSet<u64> =
                    list.allocs.iter().map(|&(ptr, _)| ptr).collect();
                let earlier: Vec<u64> = list
                    .frees
                    .iter()
                    .copied()
                    .filter(|p| !own.contains(p))
                    .collect();
                ledger.note_discarded(&earlier, ran);
            }
            // SAFETY: the graph was just returned to us and is used by nobody else.
            let _ = unsafe { result::graph::destroy(graph) };
        }
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
    /// The graph holds a free node of memory that was not allocated in the same capture.
    ForeignFree,
    /// Node mode: allocations the capture made and did not free (tensors the forward kept).
    Escaped {
        /// How many allocations.
        count: usize,
        /// Their bytes.
        bytes: usize,
    },
}

impl From<DriverError> for EndCaptureError {
    fn from(e: DriverError) -> Self {
        EndCaptureError::Driver(e)
    }
}

/// How a capture's memory nodes are checked when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryNodes {
    /// Pool mode: the runtime serves capture-time tensors from its pool and frees nothing under
    /// capture, so any free node comes from user code freeing memory allocated outside.
    Forbidden,
    /// Node mode: the forward's allocations become graph memory nodes. Every free must free an
    /// allocation of the same graph (compared by address), and every allocation must be freed
    /// in it (the runner copies the output out first).
    Allowed,
}

/// The nodes of `graph`.
fn graph_nodes(graph: sys::CUgraph) -> Result<Vec<sys::CUgraphNode>, DriverError> {
    let mut count = 0usize;
    // SAFETY: `graph` is live; a null array asks for the count.
    unsafe { sys::cuGraphGetNodes(graph, ptr::null_mut(), &mut count) }.result()?;
    let mut nodes: Vec<sys::CUgraphNode> = vec![ptr::null_mut(); count];
    if count > 0 {
        // SAFETY: `nodes` has room for `count` handles.
        unsafe { sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut count) }.result()?;
        nodes.truncate(count);
    }
    Ok(nodes)
}

/// The allocations (address, bytes) and frees (address) that `graph`'s memory nodes make.
struct MemoryNodeList {
    allocs: Vec<(u64, usize)>,
    frees: Vec<u64>,
}

fn memory_nodes(graph: sys::CUgraph) -> Result<MemoryNodeList, DriverError> {
    let mut list = MemoryNodeList {
        allocs: Vec::new(),
        frees: Vec::new(),
    };
    for node in graph_nodes(graph)? {
        let mut kind = std::mem::MaybeUninit::<sys::CUgraphNodeType>::uninit();
        // SAFETY: `node` belongs to the live `graph`; the driver writes its type.
        unsafe { sys::cuGraphNodeGetType(node, kind.as_mut_ptr()) }.result()?;
        // SAFETY: initialised by the successful call above.
        match unsafe { kind.assume_init() } {
            sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_ALLOC => {
                let mut params = std::mem::MaybeUninit::<sys::CUDA_MEM_ALLOC_NODE_PARAMS>::uninit();
                // SAFETY: `node` is an allocation node of the live graph; the driver fills
                // `params` (its access descriptors point into the node, read nowhere here).
                unsafe { sys::cuGraphMemAllocNodeGetParams(node, params.as_mut_ptr()) }.result()?;
                // SAFETY: initialised by the successful call above.
                let params = unsafe { params.assume_init() };
                list.allocs.push((params.dptr, params.bytesize));
            }
            sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_MEM_FREE => {
                let mut dptr: sys::CUdeviceptr = 0;
                // SAFETY: `node` is a free node of the live graph; the driver writes its address.
                unsafe { sys::cuGraphMemFreeNodeGetParams(node, &mut dptr) }.result()?;
                list.frees.push(dptr);
            }
            _ => {}
        }
    }
    Ok(list)
}

/// Graph allocations of one size's segments not yet freed, per address: a segment may free what
/// an earlier segment of the same size allocated (an island's input, say), and the last segment
/// must leave nothing open. Per address, allocations minus frees: the driver may give
/// allocations whose lifetimes don't overlap the same address, so sets of addresses would hide
/// an escape.
#[derive(Debug, Default)]
pub(crate) struct NodeLedger {
    open: std::collections::HashMap<u64, (isize, usize)>,
    /// The memory nodes of the graph applied last (an allocation +1, a free -1), until it is
    /// launched ([`mark_launched`](Self::mark_launched)) or retired unlaunched.
    last: Vec<(u64, isize)>,
    /// Per address, allocations minus frees of the graphs launched during the recording (the
    /// segments cut at islands): real memory the driver backs until a free runs.
    launched: std::collections::HashMap<u64, isize>,
    /// Per address, frees recorded in graphs that did not run during the recording (the last
    /// segment, a discarded one): what the forward dropped, of which the launched ones are
    /// still backed.
    pending: std::collections::HashMap<u64, isize>,
}

impl NodeLedger {
    /// Adds `graph`'s allocations and frees; a free of an address no segment so far allocated
    /// is a foreign free. Returns the bytes the graph's allocations take.
    fn apply(&mut self, graph: sys::CUgraph) -> Result<usize, EndCaptureError> {
        let list = memory_nodes(graph)?;
        self.retire_last();
        for &(ptr, bytes) in &list.allocs {
            let entry = self.open.entry(ptr).or_insert((0, bytes));
            entry.0 += 1;
            entry.1 = entry.1.max(bytes);
            self.last.push((ptr, 1));
        }
        for &ptr in &list.frees {
            match self.open.get_mut(&ptr) {
                Some(entry) if entry.0 > 0 => entry.0 -= 1,
                _ => return Err(EndCaptureError::ForeignFree),
            }
            self.last.push((ptr, -1));
        }
        Ok(list.allocs.iter().map(|&(_, bytes)| bytes).sum())
    }

    /// The graph applied last did not run: its frees are pending.
    fn retire_last(&mut self) {
        for (ptr, delta) in self.last.drain(..) {
            if delta < 0 {
                *self.pending.entry(ptr).or_default() += 1;
            }
        }
    }

    /// Whether `range` starts inside an allocation of the segments so far that no segment freed.
    pub(crate) fn owns(&self, range: DeviceRange) -> bool {
        self.open.iter().any(|(&ptr, &(left, bytes))| {
            left > 0 && range.ptr >= ptr && range.ptr < ptr + bytes as u64
        })
    }

    /// Records that the graph applied last was launched: its allocations are now backed, its
    /// frees ran.
    pub(crate) fn mark_launched(&mut self) {
        for (ptr, delta) in self.last.drain(..) {
            *self.launched.entry(ptr).or_default() += delta;
        }
    }

    /// Notes the frees of a discarded capture (a segment the forward failed in): `ran` says
    /// whether the graph was launched once anyway (to back allocations it kept).
    fn note_discarded(&mut self, frees: &[u64], ran: bool) {
        for &ptr in frees {
            if ran {
                *self.launched.entry(ptr).or_default() -= 1;
            } else {
                *self.pending.entry(ptr).or_default() += 1;
            }
        }
    }

    /// Frees, on `stream` (not capturing), the allocations of the graphs launched during the
    /// recording that the forward dropped after them, in a graph that did not run: a segment
    /// cut at an island allocated them and the last segment (not launched during the capture),
    /// or a segment discarded when the capture failed, frees them. Without this they would stay
    /// backed until the size's next replay (the first segment's `AUTO_FREE_ON_LAUNCH`), or
    /// forever for a size never replayed, an estimate, or a failed capture. What the forward
    /// kept (freed by no graph) is left to the tensors holding it. Freed here, the next launch
    /// of the segment that allocates them maps them again (the driver's rule for graph
    /// allocations freed outside their graph). Returns the first error; every address is tried.
    pub(crate) fn free_launched(&mut self, stream: &Arc<CudaStream>) -> Result<(), DriverError> {
        self.retire_last();
        let mut first = Ok(());
        for (ptr, backed) in self.launched.drain() {
            let dropped = self.pending.get(&ptr).copied().unwrap_or(0);
            for _ in 0..backed.min(dropped).max(0) {
                // SAFETY: `ptr` is a graph allocation a launched graph of this recording made,
                // that no launched graph freed and that the forward dropped (a free recorded in
                // a graph that did not run): no tensor holds it, nothing of the recording reads
                // it any more (the stream does not capture: the caller ended or discarded the
                // capture), and each such allocation is freed once.
                let freed = unsafe { sys::cuMemFreeAsync(ptr, stream.cu_stream()) }.result();
                if first.is_ok() {
                    first = freed;
                }
            }
        }
        self.pending.clear();
        first
    }

    /// An error if allocations are still open (tensors the forward kept past its last segment).
    fn check_closed(&self) -> Result<(), EndCaptureError> {
        let (count, bytes) = self
            .open
            .values()
            .filter(|(left, _)| *left > 0)
            .fold((0, 0), |(c, b), &(left, bytes)| {
                (c + left as usize, b + left as usize * bytes)
            });
        if count > 0 {
            Err(EndCaptureError::Escaped { count, bytes })
        } else {
            Ok(())
        }
    }
}

/// Checks `graph`'s memory nodes against `mode`; returns the bytes its allocations take.
fn check_memory_nodes(graph: sys::CUgraph, mode: MemoryNodes) -> Result<usize, EndCaptureError> {
    if mode == MemoryNodes::Forbidden {
        let list = memory_nodes(graph)?;
        return if list.frees.is_empty() {
            Ok(list.allocs.iter().map(|&(_, bytes)| bytes).sum())
        } else {
            Err(EndCaptureError::ForeignFree)
        };
    }
    let mut ledger = NodeLedger::default();
    let bytes = ledger.apply(graph)?;
    ledger.check_closed()?;
    Ok(bytes)
}

/// Node mode, a capture whose allocations escaped (tensors the forward kept): the graph is
/// launched once and destroyed, so that the escaped allocations become ordinary allocations the
/// driver backs (unfreed graph allocations persist past the graph), which the tensors holding
/// them free when they drop. Without the launch their addresses would never be backed: reading
/// them would fault, and a later graph could be given the same addresses. The launch runs the
/// forward once more on the inputs of the capture, as the warm-up did.
fn settle_escaped(graph: sys::CUgraph, stream: &Arc<CudaStream>) -> Result<(), DriverError> {
    // SAFETY: `graph` is a valid graph owned by the caller; instantiation reads it.
    let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) }?;
    // SAFETY: `exec` was just instantiated; the buffers its kernels use are those the capture's
    // forward used, alive until the synchronize below (the caller holds them).
    let launched = unsafe { result::graph::launch(exec, stream.cu_stream()) };
    let synced = launched.and_then(|()| stream.synchronize());
    // SAFETY: `exec` is owned here and destroyed once; its launch has completed (or failed).
    let destroyed = unsafe { result::graph::exec_destroy(exec) };
    synced.and(destroyed)
}

/// Instantiation flags for a graph checked under `mode`: graphs with memory nodes are
/// instantiated to free, at each launch, whatever an earlier launch left allocated (nothing,
/// once the check passed: a second line of defence for relaunches).
fn instantiate_flags(mode: MemoryNodes) -> sys::CUgraphInstantiate_flags {
    match mode {
        MemoryNodes::Forbidden => sys::CUgraphInstantiate_flags(0),
        MemoryNodes::Allowed => {
            sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH
        }
    }
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
pub struct ExecGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    stream: Arc<CudaStream>,
    nodes: usize,
    /// How its memory nodes were checked (and it was instantiated).
    mode: MemoryNodes,
    /// Bytes its graph memory nodes allocate (node mode).
    node_bytes: usize,
    /// Bumped by every successful [`update_from_capture`](Self::update_from_capture).
    generation: u64,
}

impl ExecGraph {
    /// Ends the capture on `stream`, checks its memory nodes against `mode` and instantiates
    /// what it recorded. The capture is ended in every case, so the stream is usable afterwards
    /// whatever this returns.
    pub(crate) fn end_capture(
        stream: &Arc<CudaStream>,
        mode: MemoryNodes,
    ) -> Result<Self, EndCaptureError> {
        let fresh = OwnedGraph(Self::end_capture_raw(stream)?);
        let node_bytes = match check_memory_nodes(fresh.0, mode) {
            Err(escaped @ EndCaptureError::Escaped { .. }) => {
                settle_escaped(fresh.0, stream)?;
                return Err(escaped);
            }
            other => other?,
        };
        let nodes = graph_nodes(fresh.0)?.len();
        // SAFETY: `fresh` is a valid graph; instantiation reads it. On error its owner
        // destroys it.
        let exec = unsafe { result::graph::instantiate(fresh.0, instantiate_flags(mode)) }?;
        Ok(Self {
            graph: fresh.into_raw(),
            exec,
            stream: stream.clone(),
            nodes,
            mode,
            node_bytes,
            generation: 0,
        })
    }

    /// Ends the capture of one segment of a node-mode size on `stream` (see
    /// [`NodeLedger`]): its memory nodes are added to `ledger`, and the last segment must leave
    /// no allocation open. The capture is ended in every case.
    pub(crate) fn end_node_segment(
        stream: &Arc<CudaStream>,
        ledger: &mut NodeLedger,
        last: bool,
    ) -> Result<Self, EndCaptureError> {
        let fresh = OwnedGraph(Self::end_capture_raw(stream)?);
        let node_bytes = ledger.apply(fresh.0)?;
        if last {
            if let Err(escaped) = ledger.check_closed() {
                settle_escaped(fresh.0, stream)?;
                // That launch ran the graph's frees too (of allocations earlier segments made).
                ledger.mark_launched();
                return Err(escaped);
            }
        }
        let nodes = graph_nodes(fresh.0)?.len();
        let mode = MemoryNodes::Allowed;
        // SAFETY: `fresh` is a valid graph; instantiation reads it. On error its owner
        // destroys it.
        let exec = unsafe { result::graph::instantiate(fresh.0, instantiate_flags(mode)) }?;
        Ok(Self {
            graph: fresh.into_raw(),
            exec,
            stream: stream.clone(),
            nodes,
            mode,
            node_bytes,
            generation: 0,
        })
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
        let node_bytes = match check_memory_nodes(fresh.0, self.mode) {
            Err(escaped @ EndCaptureError::Escaped { .. }) => {
                settle_escaped(fresh.0, stream)?;
                return Err(escaped);
            }
            other => other?,
        };
        let nodes = graph_nodes(fresh.0)?.len();
        let mut info = std::mem::MaybeUninit::<sys::CUgraphExecUpdateResultInfo>::uninit();
        // SAFETY: `self.exec` and `fresh` are live graphs owned here; `info` receives the result.
        let updated = unsafe { sys::cuGraphExecUpdate_v2(self.exec, fresh.0, info.as_mut_ptr()) }
            .result()
            .is_ok();
        if !updated {
            // SAFETY: `fresh` is a valid graph; instantiation reads it. On error `fresh` is
            // destroyed by its owner and `self` is unchanged.
            let exec =
                unsafe { result::graph::instantiate(fresh.0, instantiate_flags(self.mode)) }?;
            // SAFETY: the old executable is owned here and replaced; destroyed once.
            let _ = unsafe { result::graph::exec_destroy(self.exec) };
            self.exec = exec;
        }
        let old_graph = std::mem::replace(&mut self.graph, fresh.into_raw());
        self.nodes = nodes;
        self.node_bytes = node_bytes;
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
        Ok(graph)
    }

    /// Bytes the graph's memory nodes allocate (0 in pool mode).
    pub(crate) fn node_bytes(&self) -> usize {
        self.node_bytes
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
    ///
    /// # Safety
    ///
    /// Every buffer the graph reads or writes is alive and mapped: for a pool-mode graph its
    /// pool chunk (resident, not released) and the driver buffers its capture noted
    /// ([`Captured::kept`](crate::pool_capture::Captured::kept)); for a graph of another backend
    /// what that backend's `GraphKeep` holds and the model's buffers. The runner and the native
    /// library's `Graph` keep them next to the executable for as long as they may launch it.
    pub unsafe fn launch(&self) -> Result<(), DriverError> {
        // SAFETY: `exec` and `stream` live as long as `self`; the buffers the graph uses are
        // alive by the caller's promise above.
        unsafe { result::graph::launch(self.exec, self.stream.cu_stream()) }
    }

    /// Nodes in the graph (kernels, copies, memsets).
    pub fn node_count(&self) -> usize {
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

impl PadJob {
    /// A job that copies and fills nothing (the unused slots of a launch).
    pub(crate) const EMPTY: Self = Self {
        dst: DeviceRange::EMPTY,
        src: DeviceRange::EMPTY,
        pattern: None,
    };
}

/// Launches the runtime's `pad_copy` kernel: up to four [`PadJob`]s in one launch (see
/// `cu/pad_copy.cu`).
pub(crate) fn launch_pad_copy(
    stream: &CudaStream,
    function: &cudarc::driver::CudaFunction,
    jobs: &[PadJob],
) -> Result<(), DriverError> {
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    if jobs.len() > 4 || jobs.iter().any(|j| j.src.bytes > j.dst.bytes) {
        return Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE));
    }
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
