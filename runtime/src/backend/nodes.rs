//! Graph-memory-node capture: the mode of the foreign backends (plain cudarc, candle).
//!
//! A forward written on cudarc or candle allocates with cudarc's `stream.alloc`
//! (`cuMemAllocAsync`). Inside a stream capture the driver turns each such allocation into a
//! graph *memory allocation node* and each `cuMemFreeAsync` of it into a *free node*; the
//! graph's memory is backed with physical memory when it is launched (or uploaded), at the same
//! virtual addresses every time. Graphs launched one after another on one stream may share
//! that physical memory (the driver reuses it across graphs whose executions can't overlap),
//! which is what cudagraph's own pool does by construction: the GPU test measures whether it
//! does here (`nodes_graphs_share_memory`).
//!
//! What a capture of one size does here:
//! 1. **Warm-up**, always: the forward runs eagerly on the static inputs of that size (lazy
//!    initialisation: kernel modules, cuBLAS heuristics, candle's per-shape argument cache).
//!    The first warm-up also allocates the runner's **output buffer** (outside any capture):
//!    the largest size's rows of the output's shape.
//! 2. **Record**: the forward runs under capture; its output's rows are copied into the output
//!    buffer (a memcpy node), and the output is dropped inside the capture, so that every
//!    allocation of the graph is freed in it.
//! 3. **Check**, by address: every free node frees an allocation of the same graph (freeing
//!    memory allocated outside is illegal), and every allocation is freed (a tensor the forward
//!    kept, a cache grown with `cat` say, would alias memory every replay rewrites). Either is
//!    a capture error. The graph is instantiated with `AUTO_FREE_ON_LAUNCH` as a second line of
//!    defence for relaunches.
//!
//! An [`Output`](crate::Output) is a view of the output buffer, borrowing the runner.
//! [`Runner::release_memory`](crate::Runner::release_memory) trims the driver's graph memory
//! (`cuDeviceGraphMemTrim`); the next launch maps it again.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaStream};

use super::{Backend, CaptureBody, CaptureRequest, CapturedSize, Rerecorded};
use crate::dispatch::InputSpec;
use crate::error::{Error, Result};
use crate::ffi::{self, DeviceRange, EndCaptureError, ExecGraph, NodeLedger};
use crate::pool_capture::CaptureTiming;
use crate::seal::Seal;
use crate::segments::Segments;
use std::cell::RefCell;

/// The driver's graph-memory figures for one device (`cuDeviceGetGraphMemAttribute`), in
/// bytes: what graph memory nodes of every graph on the device use and reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphMemoryUsage {
    /// Physical memory in use by graph allocations now.
    pub used: u64,
    /// High-water mark of `used` since the last reset.
    pub used_high: u64,
    /// Physical memory the driver holds for graph allocations now (in use or cached).
    pub reserved: u64,
    /// High-water mark of `reserved` since the last reset.
    pub reserved_high: u64,
}

impl GraphMemoryUsage {
    /// Reads the figures of `ctx`'s device.
    pub fn of_context(ctx: &CudaContext) -> Result<Self> {
        let [used, used_high, reserved, reserved_high] =
            ffi::graph_mem_usage(ctx).map_err(Error::driver("cuDeviceGetGraphMemAttribute"))?;
        Ok(Self {
            used,
            used_high,
            reserved,
            reserved_high,
        })
    }

    /// Gives the graph memory `ctx`'s device caches and no graph uses now back to the driver
    /// (`cuDeviceGraphMemTrim`).
    pub fn trim(ctx: &CudaContext) -> Result<()> {
        ffi::graph_mem_trim(ctx).map_err(Error::driver("cuDeviceGraphMemTrim"))
    }

    /// Resets the high-water marks of `ctx`'s device to the current values.
    pub fn reset_high(ctx: &CudaContext) -> Result<()> {
        ffi::reset_graph_mem_high(ctx).map_err(Error::driver("cuDeviceSetGraphMemAttribute"))
    }
}

/// The figures of the stream-ordered pool a device's eager allocations come from
/// (`cuMemAllocAsync`: cudarc's `alloc`, candle's and cudagraph's eager tensors), in bytes:
/// what an eager forward needs, to compare a runner's graph memory with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamPoolUsage {
    /// Bytes allocated from the pool now.
    pub used: u64,
    /// High-water mark of `used` since the last reset: an eager forward's peak, when reset
    /// right before it.
    pub used_high: u64,
    /// Bytes the pool holds from the driver now (allocated or cached).
    pub reserved: u64,
    /// High-water mark of `reserved`.
    pub reserved_high: u64,
}

impl StreamPoolUsage {
    /// Reads the figures of the pool of `ctx`'s device.
    pub fn of_context(ctx: &CudaContext) -> Result<Self> {
        let pool = ffi::MemPool::of_device(ctx).map_err(Error::driver("cuDeviceGetMemPool"))?;
        let [used, used_high, reserved, reserved_high] = pool
            .usage()
            .map_err(Error::driver("cuMemPoolGetAttribute"))?;
        Ok(Self {
            used,
            used_high,
            reserved,
            reserved_high,
        })
    }

    /// Resets the high-water marks of the pool of `ctx`'s device to the current values.
    pub fn reset_high(ctx: &CudaContext) -> Result<()> {
        let pool = ffi::MemPool::of_device(ctx).map_err(Error::driver("cuDeviceGetMemPool"))?;
        pool.reset_high()
            .map_err(Error::driver("cuMemPoolSetAttribute"))
    }

    /// Gives what the pool of `ctx`'s device caches and nothing uses back to the driver
    /// (`cuMemPoolTrimTo(0)`; synchronize the streams that freed into it first).
    pub fn trim(ctx: &CudaContext) -> Result<()> {
        let pool = ffi::MemPool::of_device(ctx).map_err(Error::driver("cuDeviceGetMemPool"))?;
        pool.trim_to(0).map_err(Error::driver("cuMemPoolTrimTo"))
    }
}

/// Runner memory in node mode: the output buffer every size's graph copies its output into,
/// and the graphs' allocation figures.
pub struct NodeMemory<B: Backend> {
    stream: Arc<CudaStream>,
    /// Allocated by the first warm-up: `max_rows` rows of the output's shape.
    output: Option<OutputBuffer<B>>,
    /// Bytes of the largest graph's allocation nodes.
    largest_need: usize,
}

struct OutputBuffer<B: Backend> {
    tensor: B::Tensor,
    spec: InputSpec<B::DType>,
    range: DeviceRange,
    row_bytes: usize,
}

/// What a graph keeps in node mode: nothing but its own figures (its memory is the driver's;
/// the buffers it reads are the model's, borrowed by the runner for its whole life).
#[derive(Debug, Clone, Copy)]
pub struct NodeKeep {
    need: usize,
}

impl<B: Backend> NodeMemory<B> {
    /// Empty memory for graphs captured on `stream`.
    pub fn new(stream: &Arc<CudaStream>) -> Self {
        Self {
            stream: stream.clone(),
            output: None,
            largest_need: 0,
        }
    }

    /// Bytes the runner's graphs need: the largest graph's allocation nodes (graphs of one
    /// runner replay one at a time; see the module docs for whether the driver shares).
    pub fn bytes(&self) -> usize {
        self.largest_need
    }

    /// The driver's graph-memory figures of the device.
    pub fn usage(&self) -> Result<GraphMemoryUsage> {
        GraphMemoryUsage::of_context(self.stream.context())
    }
}

fn wrap(request: CaptureRequest, error: Error) -> Error {
    match error {
        e @ Error::Capture { .. } => e,
        e => Error::Capture {
            function: request.function,
            size: request.size,
            site: None,
            source: Box::new(e),
        },
    }
}

/// Checks `out` (a forward's output for `request.size`) and returns its device bytes; makes
/// the runner's output buffer from the first output.
fn check_output<B: Backend>(
    dev: &B::Device,
    memory: &mut NodeMemory<B>,
    request: CaptureRequest,
    out: &B::Tensor,
    may_allocate: bool,
) -> Result<DeviceRange> {
    let function = request.function;
    B::check_tensor(Seal::new(), dev, function, out)?;
    let shape = B::shape(Seal::new(), out)?;
    let dims = shape.dims();
    if dims.first() != Some(&request.size) {
        return Err(Error::invalid(
            function,
            format!(
                "the output's leading dimension must be the batch ({}), got shape {dims:?}",
                request.size
            ),
        ));
    }
    let spec = InputSpec::new(B::dtype(Seal::new(), out), &dims[1..])?;
    match &memory.output {
        Some(buffer) if buffer.spec == spec => {}
        Some(buffer) => {
            return Err(Error::invalid(
                function,
                format!(
                    "the output is {:?} {:?} at this size but {:?} {:?} at another: every size \
                     must return the same dtype and trailing dimensions",
                    spec.dtype(),
                    spec.trailing(),
                    buffer.spec.dtype(),
                    buffer.spec.trailing()
                ),
            ));
        }
        None if may_allocate => {
            let tensor = B::zeros(Seal::new(), dev, &spec, request.max_rows)?;
            let range = B::range(Seal::new(), &tensor)?;
            memory.output = Some(OutputBuffer {
                row_bytes: range.bytes / request.max_rows.max(1),
                tensor,
                spec,
                range,
            });
        }
        None => {
            return Err(Error::invalid(
                function,
                "no output buffer (the warm-up did not run)",
            ));
        }
    }
    B::range(Seal::new(), out)
}

/// The warm-up: the forward eagerly, its output checked (and the output buffer made).
fn warm_up<B: Backend>(
    dev: &B::Device,
    memory: &mut NodeMemory<B>,
    request: CaptureRequest,
    body: &mut CaptureBody<'_, B>,
) -> Result<()> {
    let out = body(dev, None)?;
    check_output(dev, memory, request, &out, true)?;
    drop(out);
    B::synchronize(Seal::new(), dev)
}

/// The segments of one node-mode recording (see [`Segments`]): an island ends the segment
/// being recorded (checked against the size's [`NodeLedger`]: a later segment may free what an
/// earlier one allocated; instantiated, uploaded and launched at once), runs eagerly, and the
/// next segment begins a new capture.
struct NodeSegments<'a> {
    stream: &'a Arc<CudaStream>,
    /// The capture of the segment being recorded; `None` while an island runs.
    capture: RefCell<Option<ffi::CaptureGuard>>,
    /// The segments cut so far, in order.
    done: RefCell<Vec<ExecGraph>>,
    /// The allocations of the segments so far that no segment freed yet.
    ledger: &'a RefCell<NodeLedger>,
    /// Whether islands may cut this recording (not in a re-record).
    cuttable: bool,
}

impl Segments for NodeSegments<'_> {
    fn cut(&self, _: Seal) -> Result<()> {
        if !self.cuttable {
            return Err(Error::invalid(
                "island",
                "the forward has an island where the graph it re-records had none: build a new runner",
            ));
        }
        let capture = self.capture.borrow_mut().take().ok_or_else(|| {
            Error::invalid(
                "island",
                "an island while no segment records (an island inside an island?)",
            )
        })?;
        capture.disarm();
        let exec = ExecGraph::end_node_segment(self.stream, &mut self.ledger.borrow_mut(), false)
            .map_err(|e| end_error(e, "island"))?;
        exec.upload().map_err(Error::driver("cuGraphUpload"))?;
        // SAFETY: the segment reads the model's buffers (borrowed by the runner) and the runner's
        // static inputs; its graph allocations are the driver's, mapped at launch.
        unsafe { exec.launch() }.map_err(Error::driver("cuGraphLaunch"))?;
        self.ledger.borrow_mut().mark_launched();
        self.done.borrow_mut().push(exec);
        Ok(())
    }

    fn resume(&self, _: Seal) -> Result<()> {
        let capture =
            ffi::begin_capture(self.stream).map_err(Error::driver("cuStreamBeginCapture"))?;
        *self.capture.borrow_mut() = Some(capture);
        Ok(())
    }

    fn owns(&self, _: Seal, range: DeviceRange) -> bool {
        self.ledger.borrow().owns(range)
    }
}

/// The error of a capture that ended without an executable.
fn end_error(e: EndCaptureError, function: &'static str) -> Error {
    match e {
        EndCaptureError::Driver(e) => Error::driver("cuStreamEndCapture/cuGraphInstantiate")(e),
        EndCaptureError::ForeignFree => Error::IllegalDuringCapture {
            what: "a free of memory allocated outside the capture",
            site: None,
        },
        EndCaptureError::Escaped { count, bytes } => Error::AllocationsEscaped {
            function,
            count,
            bytes,
        },
    }
}

/// Records the forward under capture and ends the capture with `end` (or, when the forward
/// cut it at islands, its last segment; the earlier ones come back with the result). The
/// output is copied into the output buffer and dropped inside the capture.
fn record<B: Backend, E>(
    dev: &B::Device,
    memory: &mut NodeMemory<B>,
    request: CaptureRequest,
    body: &mut CaptureBody<'_, B>,
    cuttable: bool,
    ledger: &RefCell<NodeLedger>,
    end: impl FnOnce(&Arc<CudaStream>) -> std::result::Result<E, EndCaptureError>,
) -> Result<(E, Vec<ExecGraph>)> {
    let stream = B::stream(Seal::new(), dev);
    let guard = ffi::begin_capture(&stream).map_err(Error::driver("cuStreamBeginCapture"))?;
    let segments = NodeSegments {
        stream: &stream,
        capture: RefCell::new(Some(guard)),
        done: RefCell::new(Vec::new()),
        ledger,
        cuttable,
    };
    let recorded = body(dev, Some(&segments)).and_then(|out| {
        if segments.capture.borrow().is_none() {
            return Err(Error::invalid(
                "island",
                "the forward returned while no segment recorded: an island failed and its error was not returned",
            ));
        }
        let src = check_output(dev, memory, request, &out, false)?;
        let dst = memory
            .output
            .as_ref()
            .map(|b| DeviceRange {
                ptr: b.range.ptr,
                bytes: src.bytes.min(b.row_bytes * request.size),
            })
            .ok_or_else(|| Error::invalid(request.function, "no output buffer"))?;
        ffi::copy_d2d(&stream, dst, src).map_err(Error::driver("cuMemcpyDtoDAsync"))?;
        // Freed inside the capture: a free node of an allocation of this graph.
        drop(out);
        Ok(())
    });
    let guard = segments.capture.into_inner();
    let cut = segments.done.into_inner();
    // What the segments launched during the capture left allocated, freed once the stream
    // stops capturing (see `NodeLedger::free_launched`), whatever the outcome.
    let free_launched = |stream: &Arc<CudaStream>| {
        ledger.borrow_mut().free_launched(stream).map_err(|e| {
            tracing::warn!(target: "cudagraph", error = %e, "freeing the graph allocations of launched segments failed");
            Error::driver("cuMemFreeAsync")(e)
        })
    };
    if let Err(e) = recorded {
        // The guard ends and discards the capture (noting what it freed of the launched
        // segments' allocations). The forward's error is the one reported; an error recorded
        // for later (by a drop) is logged, not put in its place.
        if let Some(guard) = guard {
            guard.discard_into(&mut ledger.borrow_mut());
        }
        let _ = free_launched(&stream);
        if let Err(d) = stream.context().check_err() {
            tracing::warn!(target: "cudagraph", error = ?d, "a deferred CUDA error, recorded during the failed capture");
        }
        return Err(if refused_as_invalid(&e) {
            Error::ForeignFreeUnderCapture {
                source: Box::new(e),
            }
        } else {
            e
        });
    }
    let Some(guard) = guard else {
        let _ = free_launched(&stream);
        return Err(Error::invalid(
            "island",
            "no segment recorded at the end of the forward",
        ));
    };
    guard.disarm();
    let ended = end(&stream);
    let freed = free_launched(&stream);
    let deferred = stream
        .context()
        .check_err()
        .map_err(Error::driver("deferred (recorded by a drop)"));
    if ended.is_ok() {
        deferred?;
        freed?;
    } else if let Err(d) = deferred {
        tracing::warn!(target: "cudagraph", error = %d, "a deferred CUDA error, recorded during the failed capture");
    }
    ended
        .map(|ended| (ended, cut))
        .map_err(|e| end_error(e, request.function))
}

/// Whether the forward's error is the driver's "invalid argument" (directly, or boxed by the
/// forward): under capture, the refusal of a free of memory allocated outside it.
fn refused_as_invalid(e: &Error) -> bool {
    use cudarc::driver::{DriverError, sys::CUresult::CUDA_ERROR_INVALID_VALUE};
    match e {
        Error::Driver { source, .. } => source.0 == CUDA_ERROR_INVALID_VALUE,
        Error::Forward(boxed) => {
            // The error itself, what it wraps, or (candle wraps cudarc's errors in its own)
            // its message.
            let mut current: Option<&(dyn std::error::Error + 'static)> = Some(boxed.as_ref());
            while let Some(error) = current {
                if error
                    .downcast_ref::<DriverError>()
                    .is_some_and(|d| d.0 == CUDA_ERROR_INVALID_VALUE)
                {
                    return true;
                }
                current = error.source();
            }
            boxed.to_string().contains("CUDA_ERROR_INVALID_VALUE")
        }
        _ => false,
    }
}

/// Captures one size in node mode (see the module docs).
pub(crate) fn capture<B>(
    dev: &B::Device,
    memory: &mut NodeMemory<B>,
    request: CaptureRequest,
    body: &mut CaptureBody<'_, B>,
) -> Result<CapturedSize<B>>
where
    B: Backend<GraphKeep = NodeKeep, OutputSlot = ()>,
{
    B::forbid_during_capture(Seal::new(), dev, "a nested capture").map_err(|e| wrap(request, e))?;
    let mut timing = CaptureTiming::default();
    let started = Instant::now();
    warm_up(dev, memory, request, body).map_err(|e| wrap(request, e))?;
    timing.warmup = started.elapsed();
    let started = Instant::now();
    let ledger = RefCell::new(NodeLedger::default());
    let (last, cut) = record(dev, memory, request, body, true, &ledger, |stream| {
        ExecGraph::end_node_segment(stream, &mut ledger.borrow_mut(), true)
    })
    .map_err(|e| wrap(request, e))?;
    timing.record = started.elapsed();
    let started = Instant::now();
    last.upload()
        .map_err(|e| wrap(request, Error::driver("cuGraphUpload")(e)))?;
    timing.upload = started.elapsed();
    // The segments in launch order: those the islands cut (already uploaded), then the last.
    let mut order = cut;
    order.push(last);
    // Segments run one after another, so their allocations can't all be live at once: the sum
    // is an upper bound of the size's graph memory.
    let need = order.iter().map(ExecGraph::node_bytes).sum();
    let exec = order.remove(0);
    memory.largest_need = memory.largest_need.max(need);
    Ok(CapturedSize {
        exec,
        segments: order,
        keep: NodeKeep { need },
        output: (),
        timing,
        need,
    })
}

/// Re-records one size in node mode and updates `exec` (the backend's `rerecord`).
pub(crate) fn rerecord<B>(
    dev: &B::Device,
    memory: &mut NodeMemory<B>,
    exec: &mut ExecGraph,
    request: CaptureRequest,
    body: &mut CaptureBody<'_, B>,
) -> std::result::Result<Rerecorded<B>, (Error, bool)>
where
    B: Backend<GraphKeep = NodeKeep, OutputSlot = ()>,
{
    let before = exec.generation();
    let changed = |exec: &ExecGraph| exec.generation() != before;
    warm_up(dev, memory, request, body).map_err(|e| (wrap(request, e), false))?;
    let ledger = RefCell::new(NodeLedger::default());
    let (in_place, _) = record(dev, memory, request, body, false, &ledger, |stream| {
        exec.update_from_capture(stream)
    })
    .map_err(|e| (wrap(request, e), changed(exec)))?;
    exec.upload()
        .map_err(|e| (wrap(request, Error::driver("cuGraphUpload")(e)), true))?;
    let need = exec.node_bytes();
    memory.largest_need = memory.largest_need.max(need);
    Ok(Rerecorded {
        keep: NodeKeep { need },
        output: (),
        in_place,
    })
}

/// The first `rows` rows of the output buffer.
pub(crate) fn output_view<B: Backend>(memory: &NodeMemory<B>, rows: usize) -> Result<B::Tensor> {
    let buffer = memory
        .output
        .as_ref()
        .ok_or_else(|| Error::invalid("output", "no output buffer"))?;
    B::narrow(Seal::new(), &buffer.tensor, rows)
}

/// Trims the driver's graph memory (the next launch maps it again). Returns
/// (released, result) as the backend's `release` does.
pub(crate) fn release<B: Backend>(memory: &mut NodeMemory<B>) -> (bool, Result<()>) {
    let result =
        ffi::graph_mem_trim(memory.stream.context()).map_err(Error::driver("cuDeviceGraphMemTrim"));
    (result.is_ok(), result)
}

/// Fills the output buffer with `0xFF` bytes (graph memory itself is only reachable by its
/// graphs).
pub(crate) fn poison<B: Backend>(memory: &NodeMemory<B>) -> Result<()> {
    match &memory.output {
        Some(buffer) => ffi::fill_bytes(&memory.stream, buffer.range, 0xFF)
            .map_err(Error::driver("cuMemsetD8Async")),
        None => Ok(()),
    }
}

/// Whether a graph of node mode may replay: always (no memory is withdrawn).
pub(crate) fn usable(_keep: &NodeKeep) -> bool {
    true
}

impl NodeKeep {
    /// Bytes of the graph's allocation nodes.
    pub fn need(&self) -> usize {
        self.need
    }
}
