//! Capture of one graph: a warm-up run that also measures the pool memory the capture will
//! need, then the capture itself with allocations served from the graph pool, instantiation and
//! upload. [`Runtime::capture`] offers it without the macro.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alloc::{KeepAlive, Mode};
use crate::arena::Arena;
use crate::context::Runtime;
use crate::error::{Error, OpSite, Result};
use crate::ffi::{self, EndCaptureError, ExecGraph, MemoryNodes};
use crate::freeze::FreezeScope;
pub use crate::policy::{WARMUP_ENV, Warmup};
use crate::pool::{GraphPool, PoolChunk};

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
pub(crate) struct Captured<T> {
    pub(crate) exec: ExecGraph,
    pub(crate) chunk: Arc<PoolChunk>,
    /// The driver buffers the graph reads or writes (weights, caches, static inputs).
    pub(crate) kept: KeepAlive,
    pub(crate) value: T,
    pub(crate) timing: CaptureTiming,
    /// Pool bytes this graph needs (its high-water mark).
    pub(crate) pool_need: usize,
}

/// Restores eager allocation when dropped, whatever path leaves a warm-up or a capture.
struct ModeGuard<'rt> {
    rt: &'rt Runtime,
}

impl Drop for ModeGuard<'_> {
    fn drop(&mut self) {
        let shared = self.rt.alloc_shared();
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

/// An error unless the runtime allocates eagerly now: a warm-up or a capture never starts
/// inside another (a refresh or a run called from a captured body, say), whose allocation mode
/// and kept buffers it would overwrite.
fn not_nested(rt: &Runtime) -> Result<(), Failed> {
    let eager = matches!(rt.alloc_shared().lock().mode, Mode::Eager);
    if eager && !rt.is_capturing() {
        return Ok(());
    }
    Err(Failed {
        error: Error::IllegalDuringCapture {
            what: "a nested capture or warm-up",
            site: rt.current_op(),
        },
        site: rt.current_op(),
        pool_exhausted: false,
    })
}

/// Runs `f` eagerly on driver memory, measuring the pool memory the same sequence of
/// allocations needs under capture.
fn warm_up<T>(rt: &Runtime, f: &mut dyn FnMut(&Runtime) -> Result<T>) -> Result<usize, Failed> {
    not_nested(rt)?;
    let guard = ModeGuard { rt };
    guard
        .rt
        .alloc_shared()
        .set_mode(Mode::Measure(Arena::unbounded()));
    rt.clear_op();
    let warm = f(rt).map_err(|error| Failed {
        error,
        site: rt.current_op(),
        pool_exhausted: false,
    })?;
    let need = match rt.alloc_shared().set_mode(Mode::Eager) {
        Mode::Measure(arena) => arena.high_water(),
        _ => 0,
    };
    drop(warm);
    drop(guard);
    rt.check_deferred().map_err(|error| Failed {
        error,
        site: rt.current_op(),
        pool_exhausted: false,
    })?;
    Ok(need)
}

/// What [`record`] returns: `end`'s result, `f`'s value, the pool bytes used, the record and
/// end times, and the driver buffers the graph uses.
type Recorded<E, T> = (E, T, usize, Duration, Duration, KeepAlive);

/// Records `f` into a graph with allocations served from `chunk`, then ends the capture with
/// `end` (instantiate, or update an executable). If `f` panics, the capture is ended and its
/// graph discarded while unwinding (the stream is usable afterwards) and the allocation mode
/// restored.
fn record<T, E>(
    rt: &Runtime,
    chunk: &Arc<PoolChunk>,
    f: &mut dyn FnMut(&Runtime) -> Result<T>,
    end: impl FnOnce(&Arc<cudarc::driver::CudaStream>) -> Result<E, EndCaptureError>,
) -> Result<Recorded<E, T>, Failed> {
    not_nested(rt)?;
    let started = Instant::now();
    let (recorded, ended, used, exhausted, record, last_site, kept) = {
        let _guard = ModeGuard { rt };
        {
            let shared = rt.alloc_shared();
            shared.set_mode(Mode::Capture {
                chunk: chunk.clone(),
                arena: Arena::with_capacity(chunk.len()),
            });
            let mut state = shared.lock();
            state.capturing = true;
            state.pool_exhausted = false;
        }
        rt.clear_op();
        let capture = ffi::begin_capture(rt.raw_stream()).map_err(|e| Failed {
            error: Error::driver("cuStreamBeginCapture")(e),
            site: None,
            pool_exhausted: false,
        })?;
        rt.alloc_shared().set_recording(true);
        let recorded = f(rt);
        rt.alloc_shared().set_recording(false);
        let kept = rt.alloc_shared().take_kept();
        let site = rt.current_op();
        let record = started.elapsed();
        let ended_at = Instant::now();
        // A forward that failed leaves nothing to instantiate or update: its capture is ended
        // and discarded by the guard (an executable being refreshed keeps replaying what it
        // replayed, with the buffers it keeps).
        let ended = if recorded.is_ok() {
            capture.disarm();
            end(rt.raw_stream()).map(|exec| Some((exec, ended_at.elapsed())))
        } else {
            drop(capture);
            Ok(None)
        };
        let (used, exhausted) = {
            let state = rt.alloc_shared().lock();
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
        )
    };
    // Parked drops happened under capture; free them now that it ended.
    drop(rt.alloc_shared().take_parked());
    rt.clear_op();
    // An error a drop recorded during the capture (cudarc stores it for a later call) is the
    // real cause of whatever else failed: report it first.
    let site = match (&recorded, &ended) {
        (Err((_, site)), _) | (_, Err((_, site))) => *site,
        _ => last_site,
    };
    rt.check_deferred().map_err(|error| Failed {
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
        error: match e {
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
        },
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
    Ok((exec, value, used, record, instantiate, kept))
}

/// An error unless exactly `expected` tensors live in `chunk` now that its capture ended (the
/// graph's output, if it kept one): a tensor the forward stored elsewhere (a `RefCell` of the
/// model, a static) would alias memory every replay rewrites.
pub(crate) fn check_no_escape(
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
            during: "after the capture (the forward kept tensors it allocated)",
        }),
    })
}

/// Captures `f` with allocations from `pool`, warming up first as `warmup` says. `function` and
/// `size` name the capture in errors. The stream is out of capture mode when this returns, on
/// every path, and nothing allocated for a failed capture is kept.
pub(crate) fn capture_one<T>(
    rt: &Runtime,
    pool: &mut GraphPool,
    function: &'static str,
    size: usize,
    warmup: Warmup,
    f: &mut dyn FnMut(&Runtime) -> Result<T>,
) -> Result<Captured<T>> {
    let wrap = |failed: Failed| Error::Capture {
        function,
        size,
        site: failed.site,
        source: Box::new(failed.error),
    };
    rt.forbid_during_capture("a nested capture")
        .map_err(|error| {
            wrap(Failed {
                error,
                site: None,
                pool_exhausted: false,
            })
        })?;
    let mut timing = CaptureTiming::default();

    // Straight into the largest chunk, when allowed and there is one.
    if let (Warmup::IfNeeded, Some(chunk)) = (warmup, pool.largest_chunk()) {
        match record(rt, &chunk, f, |s| {
            ExecGraph::end_capture(s, MemoryNodes::Forbidden)
        }) {
            Ok(recorded) => return finish(recorded, chunk, timing).map_err(wrap),
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
    let need = warm_up(rt, f).map_err(wrap)?;
    timing.warmup = started.elapsed();
    let chunk = pool.chunk_for(rt.raw_stream(), need).map_err(|error| {
        wrap(Failed {
            error,
            site: None,
            pool_exhausted: false,
        })
    })?;
    let recorded = record(rt, &chunk, f, |s| {
        ExecGraph::end_capture(s, MemoryNodes::Forbidden)
    })
    .map_err(wrap)?;
    finish(recorded, chunk, timing).map_err(wrap)
}

/// What [`rerecord`] produced: `f`'s value, whether the update was in place, the chunk the
/// graph now uses (a larger one when the old ran out) and the buffers it reads.
pub(crate) struct Rerecorded<T> {
    pub(crate) value: T,
    pub(crate) in_place: bool,
    pub(crate) chunk: Arc<PoolChunk>,
    pub(crate) kept: KeepAlive,
}

/// Re-records `f` and updates `exec` to replay it (in place when the driver accepts, else
/// re-instantiated), into `chunk`; when the new forward needs more pool memory than `chunk`
/// has, it is warmed up to measure, and recorded into a chunk of `pool` large enough. On error,
/// whether `exec` was changed (updated, then an error found: it no longer replays what it
/// replayed before) comes with the error.
pub(crate) fn rerecord<T>(
    rt: &Runtime,
    pool: &mut GraphPool,
    chunk: &Arc<PoolChunk>,
    exec: &mut ExecGraph,
    function: &'static str,
    size: usize,
    f: &mut dyn FnMut(&Runtime) -> Result<T>,
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
    let recorded = match record(rt, &chunk, f, |stream| exec.update_from_capture(stream)) {
        Err(failed) if failed.pool_exhausted && !changed(exec) => {
            let need = warm_up(rt, f).map_err(|failed| (wrap(failed), changed(exec)))?;
            chunk = pool
                .chunk_for(rt.raw_stream(), need)
                .map_err(|e| (e, changed(exec)))?;
            record(rt, &chunk, f, |stream| exec.update_from_capture(stream))
        }
        other => other,
    };
    let (in_place, value, _, _, _, kept) =
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
    (exec, value, used, record, instantiate, kept): Recorded<ExecGraph, T>,
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
    Ok(Captured {
        exec,
        chunk,
        kept,
        value,
        timing,
        pool_need: used,
    })
}

/// The body of a [`Runtime::capture`], kept with its graph.
type CaptureBody<'a> = Box<dyn FnMut(&Runtime) -> Result<()> + 'a>;

/// A captured graph with its own pool, from [`Runtime::capture`].
///
/// It borrows the runtime (its stream, cuBLAS workspace and kernel modules), keeps the closure
/// that was captured (whatever device memory it borrowed stays borrowed, whatever it owns
/// stays alive), and owns a reference to every buffer its kernels read or write, noted during
/// the capture: nothing the graph launches or reads can be freed while it can replay.
pub struct Graph<'a> {
    exec: ExecGraph,
    _chunk: Arc<PoolChunk>,
    _kept: KeepAlive,
    _pool: GraphPool,
    _body: CaptureBody<'a>,
    _rt: &'a Runtime,
    timing: CaptureTiming,
}

impl Graph<'_> {
    /// Launches the graph on the runtime's stream (asynchronous).
    pub fn replay(&self) -> Result<()> {
        self.exec.launch().map_err(Error::driver("cuGraphLaunch"))
    }

    /// Nodes the graph holds (kernels, copies, memsets).
    pub fn node_count(&self) -> usize {
        self.exec.node_count()
    }

    /// Where the capture's time went.
    pub fn timing(&self) -> CaptureTiming {
        self.timing
    }
}

impl Runtime {
    /// Captures `body` into a graph, without the macro.
    ///
    /// `body` runs twice: once eagerly (warm-up: lazy initialisation of kernels and cuBLAS, and
    /// measurement of the memory it allocates) and once under capture, where the tensors it
    /// allocates come from a pool the graph owns. Keep results the body writes in tensors it
    /// borrows or owns: the graph replays into the same memory. Tensors the body allocates
    /// live in the graph's pool and must not outlive the body (the capture fails otherwise).
    /// The graph borrows the runtime and keeps every buffer its kernels use alive.
    ///
    /// ```no_run
    /// # fn main() -> cudagraph_runtime::Result<()> {
    /// use cudagraph_runtime::{DType, Runtime};
    /// let rt = Runtime::new(0)?;
    /// let src = rt.upload(&[1.0f32, 2.0, 3.0], &[3])?;
    /// let dst = rt.zeros(&[3], DType::F32)?;
    /// let graph = rt.capture(|rt| rt.copy(&src, &dst))?;
    /// graph.replay()?;
    /// assert_eq!(rt.download::<f32>(&dst)?, [1.0, 2.0, 3.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn capture<'a, F>(&'a self, body: F) -> Result<Graph<'a>>
    where
        F: FnMut(&Runtime) -> Result<()> + 'a,
    {
        let mut body: CaptureBody<'a> = Box::new(body);
        let mut pool = GraphPool::new();
        let scope = FreezeScope::enter(self, self.reclaim_policy())?;
        let captured = capture_one(
            self,
            &mut pool,
            "Runtime::capture",
            0,
            Warmup::Always,
            &mut *body,
        )?;
        scope.exit()?;
        check_no_escape("Runtime::capture", 0, &captured.chunk, 0)?;
        Ok(Graph {
            exec: captured.exec,
            _chunk: captured.chunk,
            _kept: captured.kept,
            _pool: pool,
            _body: body,
            _rt: self,
            timing: captured.timing,
        })
    }
}
