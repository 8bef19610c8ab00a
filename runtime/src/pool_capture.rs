//! Capture of one graph in pool mode: a warm-up run that also measures the pool memory the
//! capture will need, then the capture itself with allocations served from the graph pool,
//! instantiation and upload.
//!
//! Written against [`PoolDevice`]: a device whose allocations go through a
//! [`PoolRouter`] (cudagraph's native `Runtime`). The backend's
//! [`BackendOps::capture`](crate::backend::BackendOps::capture) calls [`capture_one`] with the
//! seal it was given; the native library's standalone `Runtime::capture` does too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::CudaStream;

use crate::arena::Arena;
use crate::error::{Error, OpSite, Result};
use crate::ffi::{self, DeviceRange, EndCaptureError, ExecGraph, MemoryNodes};
pub use crate::policy::{WARMUP_ENV, Warmup};
use crate::pool::{GraphPool, PoolChunk};
use crate::routing::{KeepAlive, Mode, PoolRouter};
use crate::seal::Seal;
use crate::segments::Segments;
use std::cell::RefCell;

/// A device whose tensors' bytes a [`PoolRouter`] serves: what pool-mode capture needs of it.
///
/// # Safety
///
/// [`stream`](Self::stream) is the one stream every allocation the router serves is ordered
/// on and every op of the device launches on, and [`router`](Self::router) the router every
/// tensor of the device allocates through: captures record that stream and serve the
/// allocations of what they record from the pool, so another stream or router would let a
/// graph read memory it does not own. Like [`BackendOps`](crate::backend::BackendOps), an
/// implementation never lets a [`Seal`] out of the call.
pub unsafe trait PoolDevice {
    /// The router of the device's allocations.
    fn router(&self, seal: Seal) -> &Arc<PoolRouter>;

    /// The device's one stream.
    fn stream(&self, seal: Seal) -> &Arc<CudaStream>;

    /// The op the device last started, with its caller's source line (for capture errors).
    fn current_op(&self) -> Option<OpSite>;

    /// Forgets the op last started.
    fn clear_op(&self, seal: Seal);
}

/// An error cudarc recorded for later on `stream`'s context (a drop's failed free, say).
fn check_deferred(stream: &CudaStream) -> Result<()> {
    stream
        .context()
        .check_err()
        .map_err(Error::driver("deferred (recorded by a drop)"))
}

/// Where the time of one capture went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CaptureTiming {
    /// The eager warm-up run (lazy initialisation, memory measurement).
    pub warmup: Duration,
    /// Recording the forward into the graph.
    pub record: Duration,
    /// `cuGraphInstantiate` (the driver's part).
    pub instantiate: Duration,
    /// `cuGraphUpload`.
    pub upload: Duration,
}

impl CaptureTiming {
    /// The sum of the parts.
    pub fn total(&self) -> Duration {
        self.warmup + self.record + self.instantiate + self.upload
    }
}

/// A graph just captured, with what keeps its memory alive.
pub struct Captured<T> {
    /// The executable graph (the first segment, when the forward has islands).
    pub exec: ExecGraph,
    /// The segments after the first, one after each island, in launch order.
    pub segments: Vec<ExecGraph>,
    /// The pool chunk its allocations live in.
    pub chunk: Arc<PoolChunk>,
    /// The driver buffers the graph reads or writes (weights, caches, static inputs).
    pub kept: KeepAlive,
    /// What the recorded forward returned.
    pub value: T,
    /// Where the capture's time went.
    pub timing: CaptureTiming,
    /// Pool bytes this graph needs (its high-water mark).
    pub pool_need: usize,
}

/// Restores eager allocation when dropped, whatever path leaves a warm-up or a capture.
struct ModeGuard<'r> {
    router: &'r PoolRouter,
}

impl Drop for ModeGuard<'_> {
    fn drop(&mut self) {
        let shared = self.router;
        shared.set_recording(false);
        shared.set_mode(Mode::Eager);
        shared.lock().capturing = false;
        // Buffers noted by a capture that did not finish (an error or a panic): released
        // now, outside the capture (the stream has left capture mode: its guard dropped first).
        drop(shared.take_kept());
    }
}

/// A failed capture: the error, the op that was executing, and whether the pool ran out.
struct Failed {
    error: Error,
    site: Option<OpSite>,
    pool_exhausted: bool,
}

/// An error unless the device allocates eagerly now: a warm-up or a capture never starts
/// inside another (a refresh or a run called from a captured body, say), whose allocation mode
/// and kept buffers it would overwrite.
fn not_nested<D: PoolDevice + ?Sized>(dev: &D) -> Result<(), Failed> {
    if dev.router(Seal::new()).is_eager() {
        return Ok(());
    }
    Err(Failed {
        error: Error::IllegalDuringCapture {
            what: "a nested capture or warm-up",
            site: dev.current_op(),
        },
        site: dev.current_op(),
        pool_exhausted: false,
    })
}

/// The forward as pool-mode capture calls it: a recording hands it the [`Segments`] its
/// islands cut, a warm-up none.
pub type PoolBody<'a, D, T> = dyn FnMut(&D, Option<&dyn Segments>) -> Result<T> + 'a;

/// The "segments" of a warm-up: an island suspends the measurement while it runs, so that its
/// own allocations (scratch, its output) come from the driver unmeasured, and the warm-up
/// issues the capture's sequence of measured allocations (the next segment's copy of the
/// island's output included). Without it the arena's offsets under capture need not match the
/// warm-up's (best fit is not monotone in the sequence), and the pool would count island
/// scratch that no capture serves from it.
struct MeasureSegments<'a> {
    router: &'a PoolRouter,
}

impl Segments for MeasureSegments<'_> {
    fn cut(&self, _: Seal) -> Result<()> {
        self.router.set_suspended(true);
        Ok(())
    }

    fn resume(&self, _: Seal) -> Result<()> {
        self.router.set_suspended(false);
        Ok(())
    }

    /// A warm-up hands every input over as it is, as a direct call does (the bank's buffers
    /// come from the driver unmeasured, so copying or not leaves the measured sequence alone;
    /// the capture decides for real).
    fn owns(&self, _: Seal, _: DeviceRange) -> bool {
        false
    }

    fn keeps_islands(&self, _: Seal) -> bool {
        false
    }
}

/// Runs `f` eagerly on driver memory, measuring the pool memory the same sequence of
/// allocations needs under capture (islands run as a recording runs them: see
/// [`MeasureSegments`]).
fn warm_up<D: PoolDevice + ?Sized, T>(
    dev: &D,
    f: &mut PoolBody<'_, D, T>,
) -> Result<usize, Failed> {
    not_nested(dev)?;
    let router = dev.router(Seal::new());
    let guard = ModeGuard { router };
    router.set_mode(Mode::Measure(Arena::unbounded()));
    dev.clear_op(Seal::new());
    let segments = MeasureSegments { router };
    let warm = f(dev, Some(&segments)).map_err(|error| Failed {
        error,
        site: dev.current_op(),
        pool_exhausted: false,
    })?;
    let need = match router.set_mode(Mode::Eager) {
        Mode::Measure(arena) => arena.high_water(),
        _ => 0,
    };
    drop(warm);
    drop(guard);
    check_deferred(dev.stream(Seal::new())).map_err(|error| Failed {
        error,
        site: dev.current_op(),
        pool_exhausted: false,
    })?;
    Ok(need)
}

/// What [`record`] returns: `end`'s result, `f`'s value, the pool bytes used, the record and
/// end times, the driver buffers the graph uses, and the segments cut before the last (one per
/// island, in order).
type Recorded<E, T> = (E, T, usize, Duration, Duration, KeepAlive, Vec<ExecGraph>);

/// The segments of one pool-mode recording (see [`Segments`]): an island ends the segment being
/// recorded (instantiated, uploaded and launched at once, so the island reads what it
/// computed), runs with the router suspended (driver allocations, host work allowed), and the
/// next segment records into the same chunk, its arena where the last one left it.
struct PoolSegments<'a> {
    router: &'a PoolRouter,
    stream: &'a Arc<CudaStream>,
    /// The chunk every segment allocates from (alive while a segment is launched).
    chunk: &'a Arc<PoolChunk>,
    /// The capture of the segment being recorded; `None` while an island runs.
    capture: RefCell<Option<ffi::CaptureGuard>>,
    /// The segments cut so far, in order.
    done: RefCell<Vec<ExecGraph>>,
    /// The driver buffers the segments cut so far use (alive while they are launched).
    kept: RefCell<KeepAlive>,
    /// Whether islands may cut this recording: not a re-record, which updates one executable
    /// (a refresh captures a size with islands anew).
    cuttable: bool,
}

impl Segments for PoolSegments<'_> {
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
        self.router.set_recording(false);
        self.kept.borrow_mut().merge(self.router.take_kept());
        let exec = ExecGraph::end_capture(self.stream, MemoryNodes::Forbidden)
            .map_err(|e| end_capture_error(e, None))?;
        exec.upload().map_err(Error::driver("cuGraphUpload"))?;
        // SAFETY: the segment's memory is alive: the chunk is held by this recording (and the
        // pool), and every driver buffer its kernels took the address of is in `kept`.
        unsafe { exec.launch() }.map_err(Error::driver("cuGraphLaunch"))?;
        self.router.set_suspended(true);
        self.done.borrow_mut().push(exec);
        Ok(())
    }

    fn resume(&self, _: Seal) -> Result<()> {
        self.router.set_suspended(false);
        let capture =
            ffi::begin_capture(self.stream).map_err(Error::driver("cuStreamBeginCapture"))?;
        *self.capture.borrow_mut() = Some(capture);
        self.router.set_recording(true);
        Ok(())
    }

    fn owns(&self, _: Seal, range: DeviceRange) -> bool {
        let start = self.chunk.device_ptr();
        let end = start + self.chunk.len() as u64;
        range.ptr >= start && range.ptr < end
    }
}

/// The error of a capture that ended without an executable, at `site`.
fn end_capture_error(e: EndCaptureError, site: Option<OpSite>) -> Error {
    match e {
        EndCaptureError::Driver(e) => Error::driver("cuStreamEndCapture/cuGraphInstantiate")(e),
        EndCaptureError::ForeignFree => Error::IllegalDuringCapture {
            what: "a free of memory allocated outside the capture",
            site,
        },
        // Pool mode checks no allocation node (the driver's own, from user code calling
        // cudarc directly, end up in the graph); unreachable here.
        EndCaptureError::Escaped { .. } => Error::IllegalDuringCapture {
            what: "a driver allocation kept past the capture",
            site,
        },
    }
}

/// Records `f` into a graph with allocations served from `chunk`, then ends the capture with
/// `end` (instantiate, or update an executable). If `f` panics, the capture is ended and its
/// graph discarded while unwinding (the stream is usable afterwards) and the allocation mode
/// restored.
fn record<D: PoolDevice + ?Sized, T, E>(
    dev: &D,
    chunk: &Arc<PoolChunk>,
    f: &mut PoolBody<'_, D, T>,
    cuttable: bool,
    end: impl FnOnce(&Arc<CudaStream>) -> Result<E, EndCaptureError>,
) -> Result<Recorded<E, T>, Failed> {
    not_nested(dev)?;
    let router = dev.router(Seal::new());
    let stream = dev.stream(Seal::new());
    let started = Instant::now();
    let (recorded, ended, used, exhausted, record, last_site, kept, segments) = {
        let _guard = ModeGuard { router };
        {
            let shared = router;
            shared.set_mode(Mode::Capture {
                chunk: chunk.clone(),
                arena: Arena::with_capacity(chunk.len()),
            });
            let mut state = shared.lock();
            state.capturing = true;
            state.pool_exhausted = false;
        }
        dev.clear_op(Seal::new());
        let capture = ffi::begin_capture(stream).map_err(|e| Failed {
            error: Error::driver("cuStreamBeginCapture")(e),
            site: None,
            pool_exhausted: false,
        })?;
        let segments = PoolSegments {
            router,
            stream,
            chunk,
            capture: RefCell::new(Some(capture)),
            done: RefCell::new(Vec::new()),
            kept: RefCell::new(KeepAlive::default()),
            cuttable,
        };
        router.set_recording(true);
        let recorded = f(dev, Some(&segments)).and_then(|value| {
            if segments.capture.borrow().is_none() {
                // The forward went on past a failed island (the error dropped, not returned).
                return Err(Error::invalid(
                    "island",
                    "the forward returned while no segment recorded: an island failed and its error was not returned",
                ));
            }
            Ok(value)
        });
        router.set_recording(false);
        let mut kept = segments.kept.into_inner();
        kept.merge(router.take_kept());
        let capture = segments.capture.into_inner();
        let cut = segments.done.into_inner();
        let site = dev.current_op();
        let record = started.elapsed();
        let ended_at = Instant::now();
        // A forward that failed leaves nothing to instantiate or update: its capture is ended
        // and discarded by the guard (an executable being refreshed keeps replaying what it
        // replayed, with the buffers it keeps).
        let ended = match (recorded.is_ok(), capture) {
            (true, Some(capture)) => {
                capture.disarm();
                end(stream).map(|exec| Some((exec, ended_at.elapsed())))
            }
            (_, capture) => {
                drop(capture);
                Ok(None)
            }
        };
        let (used, exhausted) = {
            let state = router.lock();
            let used = match &state.mode {
                Mode::Capture { arena, .. } => arena.high_water(),
                _ => 0,
            };
            (used, state.pool_exhausted)
        };
        (
            recorded.map_err(|e| (e, site)),
            ended.map_err(|e| (e, site)),
            used,
            exhausted,
            record,
            site,
            kept,
            cut,
        )
    };
    // Parked drops happened under capture; free them now that it ended.
    drop(router.take_parked());
    dev.clear_op(Seal::new());
    // An error a drop recorded during the capture (cudarc stores it for a later call) is the
    // real cause of whatever else failed: report it first.
    let site = match (&recorded, &ended) {
        (Err((_, site)), _) | (_, Err((_, site))) => *site,
        _ => last_site,
    };
    check_deferred(stream).map_err(|error| Failed {
        error,
        site,
        pool_exhausted: false,
    })?;
    let value = recorded.map_err(|(error, site)| Failed {
        error,
        site,
        pool_exhausted: exhausted,
    })?;
    let ended = ended.map_err(|(e, site)| Failed {
        error: end_capture_error(e, site),
        site,
        pool_exhausted: exhausted,
    })?;
    let Some((exec, instantiate)) = ended else {
        // Unreachable: `recorded` was an error, returned above.
        return Err(Failed {
            error: Error::invalid("capture", "no graph was recorded"),
            site,
            pool_exhausted: exhausted,
        });
    };
    Ok((exec, value, used, record, instantiate, kept, segments))
}

/// An error unless exactly `expected` tensors live in `chunk` now that its capture ended (the
/// graph's output, if it kept one): a tensor the forward stored elsewhere (a `RefCell` of the
/// model, a static) would alias memory every replay rewrites.
pub fn check_no_escape(
    function: &'static str,
    size: usize,
    chunk: &PoolChunk,
    expected: usize,
) -> Result<()> {
    let live = chunk.live_tensors();
    if live == expected {
        return Ok(());
    }
    Err(Error::Capture {
        function,
        size,
        site: None,
        source: Box::new(Error::PoolTensorsAlive {
            function,
            count: live.saturating_sub(expected),
            during: "after the capture (the forward kept tensors it allocated, or an island's closure owns one it moved in: pass that tensor to `eager` as an input instead)",
        }),
    })
}

/// Captures `f` with allocations from `pool`, warming up first as `warmup` says. `function` and
/// `size` name the capture in errors. The stream is out of capture mode when this returns, on
/// every path, and nothing allocated for a failed capture is kept. The seal makes it the
/// runtime's and its backends' call (it records the device's raw stream).
pub fn capture_one<D: PoolDevice + ?Sized, T>(
    _: Seal,
    dev: &D,
    pool: &mut GraphPool,
    function: &'static str,
    size: usize,
    warmup: Warmup,
    f: &mut PoolBody<'_, D, T>,
) -> Result<Captured<T>> {
    let wrap = |failed: Failed| Error::Capture {
        function,
        size,
        site: failed.site,
        source: Box::new(failed.error),
    };
    if dev.router(Seal::new()).is_capturing() {
        return Err(wrap(Failed {
            error: Error::IllegalDuringCapture {
                what: "a nested capture",
                site: dev.current_op(),
            },
            site: None,
            pool_exhausted: false,
        }));
    }
    let mut timing = CaptureTiming::default();

    // Straight into the largest chunk, when allowed and there is one.
    if let (Warmup::IfNeeded, Some(chunk)) = (warmup, pool.largest_chunk()) {
        let aside = SetAside::new(pool, &chunk);
        let recorded = record(dev, &chunk, f, true, |s| {
            ExecGraph::end_capture(s, MemoryNodes::Forbidden)
        });
        aside.settle(recorded.is_ok());
        match recorded {
            Ok(recorded) => {
                return finish_or_set_aside(pool, recorded, chunk, timing).map_err(wrap);
            }
            Err(failed) if failed.pool_exhausted => {
                tracing::debug!(
                    function,
                    size,
                    "pool chunk too small; warming up to measure"
                );
            }
            Err(failed) => return Err(wrap(failed)),
        }
    }

    let started = Instant::now();
    let need = warm_up(dev, f).map_err(wrap)?;
    timing.warmup = started.elapsed();
    let chunk = pool
        .chunk_for(dev.stream(Seal::new()), need)
        .map_err(|error| {
            wrap(Failed {
                error,
                site: None,
                pool_exhausted: false,
            })
        })?;
    let aside = SetAside::new(pool, &chunk);
    let recorded = record(dev, &chunk, f, true, |s| {
        ExecGraph::end_capture(s, MemoryNodes::Forbidden)
    });
    aside.settle(recorded.is_ok());
    finish_or_set_aside(pool, recorded.map_err(wrap)?, chunk, timing).map_err(wrap)
}

/// [`finish`], and on its error (an upload that failed, after which the output is dropped) the
/// same check as a failed record's: a tensor the forward kept sets the chunk aside.
fn finish_or_set_aside<T>(
    pool: &mut GraphPool,
    recorded: Recorded<ExecGraph, T>,
    chunk: Arc<PoolChunk>,
    timing: CaptureTiming,
) -> Result<Captured<T>, Failed> {
    let watched = chunk.clone();
    let finished = finish(recorded, chunk, timing);
    if finished.is_err() && watched.live_tensors() > 0 {
        pool.forget(&watched);
    }
    finished
}

/// Sets a chunk aside after a record attempt that left a tensor alive in it: the forward kept a
/// tensor it allocated under capture, then failed, ran the chunk out, or panicked. The chunk is
/// forgotten by the pool (no later capture allocates there, and the graphs that use it are
/// dropped by their runner and captured again elsewhere on their next use), so nothing a replay
/// writes can alias the kept tensor, which keeps its memory alive. A successful attempt is
/// checked by its caller once it has dropped the output ([`check_no_escape`]).
///
/// Settled explicitly, or on drop while a panic unwinds through the attempt (by then the
/// forward's own tensors are gone: only a kept one counts).
struct SetAside<'p> {
    pool: Option<&'p mut GraphPool>,
    chunk: Arc<PoolChunk>,
}

impl<'p> SetAside<'p> {
    fn new(pool: &'p mut GraphPool, chunk: &Arc<PoolChunk>) -> Self {
        Self {
            pool: Some(pool),
            chunk: chunk.clone(),
        }
    }

    /// Ends the watch: after an attempt that returned its output (`succeeded`), nothing is
    /// checked here; after a failed one, a live tensor sets the chunk aside.
    fn settle(mut self, succeeded: bool) {
        if succeeded {
            self.pool = None;
        }
    }
}

impl Drop for SetAside<'_> {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        let live = self.chunk.live_tensors();
        if live > 0 {
            tracing::warn!(
                target: "cudagraph",
                live,
                "a failed capture left tensors alive in its pool chunk (the forward kept them): \
                 the chunk is set aside, and the graphs using it are captured again elsewhere"
            );
            pool.forget(&self.chunk);
        }
    }
}

/// What [`rerecord`] produced: `f`'s value, whether the update was in place, the chunk the
/// graph now uses (a larger one when the old ran out) and the buffers it reads.
pub struct Rerecorded<T> {
    /// What the recorded forward returned.
    pub value: T,
    /// Whether the executable was updated in place (else re-instantiated).
    pub in_place: bool,
    /// The chunk the graph's allocations now live in.
    pub chunk: Arc<PoolChunk>,
    /// The driver buffers the graph reads or writes.
    pub kept: KeepAlive,
}

/// Re-records `f` and updates `exec` to replay it (in place when the driver accepts, else
/// re-instantiated), into `chunk`; when the new forward needs more pool memory than `chunk`
/// has, it is warmed up to measure, and recorded into a chunk of `pool` large enough. On error,
/// whether `exec` was changed (updated, then an error found: it no longer replays what it
/// replayed before) comes with the error.
#[allow(clippy::too_many_arguments)]
pub fn rerecord<D: PoolDevice + ?Sized, T>(
    _: Seal,
    dev: &D,
    pool: &mut GraphPool,
    chunk: &Arc<PoolChunk>,
    exec: &mut ExecGraph,
    function: &'static str,
    size: usize,
    f: &mut PoolBody<'_, D, T>,
) -> Result<Rerecorded<T>, (Error, bool)> {
    let before = exec.generation();
    let changed = |exec: &ExecGraph| exec.generation() != before;
    let wrap = |failed: Failed| Error::Capture {
        function,
        size,
        site: failed.site,
        source: Box::new(failed.error),
    };
    let mut chunk = chunk.clone();
    let aside = SetAside::new(pool, &chunk);
    let first = record(dev, &chunk, f, false, |stream| {
        exec.update_from_capture(stream)
    });
    aside.settle(first.is_ok());
    let recorded = match first {
        Err(failed) if failed.pool_exhausted && !changed(exec) => {
            let need = warm_up(dev, f).map_err(|failed| (wrap(failed), changed(exec)))?;
            chunk = pool
                .chunk_for(dev.stream(Seal::new()), need)
                .map_err(|e| (e, changed(exec)))?;
            let aside = SetAside::new(pool, &chunk);
            let second = record(dev, &chunk, f, false, |stream| {
                exec.update_from_capture(stream)
            });
            aside.settle(second.is_ok());
            second
        }
        other => other,
    };
    let (in_place, value, _, _, _, kept, _) =
        recorded.map_err(|failed| (wrap(failed), changed(exec)))?;
    exec.upload()
        .map_err(|e| (Error::driver("cuGraphUpload")(e), true))?;
    Ok(Rerecorded {
        value,
        in_place,
        chunk,
        kept,
    })
}

/// Uploads a recorded graph and assembles its [`Captured`].
fn finish<T>(
    (exec, value, used, record, instantiate, kept, segments): Recorded<ExecGraph, T>,
    chunk: Arc<PoolChunk>,
    mut timing: CaptureTiming,
) -> Result<Captured<T>, Failed> {
    let started = Instant::now();
    exec.upload().map_err(|e| Failed {
        error: Error::driver("cuGraphUpload")(e),
        site: None,
        pool_exhausted: false,
    })?;
    timing.record = record;
    timing.instantiate = instantiate;
    timing.upload = started.elapsed();
    // The segments in launch order: those the islands cut (already uploaded), then the last.
    let mut order = segments;
    order.push(exec);
    let exec = order.remove(0);
    Ok(Captured {
        exec,
        segments: order,
        chunk,
        kept,
        value,
        timing,
        pool_need: used,
    })
}
