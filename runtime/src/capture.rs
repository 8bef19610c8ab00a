//! Capture of one graph: a warm-up run that also measures the pool memory the capture will
//! need, then the capture itself with allocations served from the graph pool, instantiation and
//! upload. [`Runtime::capture`] offers it without the macro.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alloc::Mode;
use crate::arena::Arena;
use crate::context::Runtime;
use crate::error::{Error, OpSite, Result};
use crate::ffi::{self, EndCaptureError, ExecGraph};
use crate::freeze::FreezeScope;
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

#[cfg(test)]
mod tests {
    use super::Warmup;

    #[test]
    fn warmup_parsing() {
        assert_eq!(Warmup::parse(Some("each")), Warmup::Always);
        assert_eq!(Warmup::parse(Some("first")), Warmup::IfNeeded);
        assert_eq!(Warmup::parse(None), Warmup::IfNeeded);
    }
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
    pub(crate) value: T,
    pub(crate) timing: CaptureTiming,
    /// Pool bytes this graph needs (its high-water mark).
    pub(crate) pool_need: usize,
}

/// Whether a capture starts with an eager warm-up run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warmup {
    /// Always warm up (lazy initialisation, and measurement of the pool memory needed).
    Always,
    /// Capture straight into the pool's largest chunk; warm up and retry only if the capture
    /// needs more memory than that chunk has, or if the pool has no chunk yet.
    IfNeeded,
}

/// The environment variable that forces a warm-up before every capture (`each`).
pub const WARMUP_ENV: &str = "CUDAGRAPH_CAPTURE_WARMUP";

impl Warmup {
    /// [`Warmup::Always`] when `CUDAGRAPH_CAPTURE_WARMUP=each`, else [`Warmup::IfNeeded`].
    pub fn from_env() -> Self {
        Self::parse(std::env::var(WARMUP_ENV).ok().as_deref())
    }

    /// Parses the variable's value (see [`from_env`](Self::from_env)).
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some(v) if v.trim().eq_ignore_ascii_case("each") => Warmup::Always,
            _ => Warmup::IfNeeded,
        }
    }
}

/// Restores eager allocation when dropped, whatever path leaves a warm-up or a capture.
struct ModeGuard<'rt> {
    rt: &'rt Runtime,
}

impl Drop for ModeGuard<'_> {
    fn drop(&mut self) {
        let shared = self.rt.alloc_shared();
        shared.set_mode(Mode::Eager);
        shared.lock().capturing = false;
    }
}

/// A failed capture: the error, the op that was executing, and whether the pool ran out.
struct Failed {
    error: Error,
    site: Option<OpSite>,
    pool_exhausted: bool,
}

/// Runs `f` eagerly on driver memory, measuring the pool memory the same sequence of
/// allocations needs under capture.
fn warm_up<T>(rt: &Runtime, f: &mut dyn FnMut(&Runtime) -> Result<T>) -> Result<usize, Failed> {
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

/// Records `f` into a graph with allocations served from `chunk`, then ends the capture with
/// `end` (instantiate, or update an executable). Returns `end`'s result, `f`'s value, the pool
/// bytes used, and the record/end times.
fn record<T, E>(
    rt: &Runtime,
    chunk: &Arc<PoolChunk>,
    f: &mut dyn FnMut(&Runtime) -> Result<T>,
    end: impl FnOnce(&Arc<cudarc::driver::CudaStream>) -> Result<E, EndCaptureError>,
) -> Result<(E, T, usize, Duration, Duration), Failed> {
    let started = Instant::now();
    let (recorded, ended, used, exhausted, record, last_site) = {
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
        ffi::begin_capture(rt.stream()).map_err(|e| Failed {
            error: Error::driver("cuStreamBeginCapture")(e),
            site: None,
            pool_exhausted: false,
        })?;
        let recorded = f(rt);
        let site = rt.current_op();
        let record = started.elapsed();
        let ended_at = Instant::now();
        let ended = end(rt.stream()).map(|exec| (exec, ended_at.elapsed()));
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
    let (exec, instantiate) = ended.map_err(|(e, site)| Failed {
        error: match e {
            EndCaptureError::Driver(e) => Error::driver("cuStreamEndCapture/cuGraphInstantiate")(e),
            EndCaptureError::ForeignFree => Error::IllegalDuringCapture {
                what: "a free of memory allocated outside the capture",
                site,
            },
        },
        site,
        pool_exhausted: exhausted,
    })?;
    Ok((exec, value, used, record, instantiate))
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
        match record(rt, &chunk, f, ExecGraph::end_capture) {
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
    let chunk = pool.chunk_for(rt.stream(), need).map_err(|error| {
        wrap(Failed {
            error,
            site: None,
            pool_exhausted: false,
        })
    })?;
    let recorded = record(rt, &chunk, f, ExecGraph::end_capture).map_err(wrap)?;
    finish(recorded, chunk, timing).map_err(wrap)
}

/// Re-records `f` into `chunk` and updates `exec` to replay it (in place when the driver
/// accepts, else re-instantiated). Returns `f`'s value and whether the update was in place.
pub(crate) fn rerecord<T>(
    rt: &Runtime,
    chunk: &Arc<PoolChunk>,
    exec: &mut ExecGraph,
    function: &'static str,
    size: usize,
    f: &mut dyn FnMut(&Runtime) -> Result<T>,
) -> Result<(T, bool)> {
    let (in_place, value, ..) = record(rt, chunk, f, |stream| exec.update_from_capture(stream))
        .map_err(|failed| Error::Capture {
            function,
            size,
            site: failed.site,
            source: Box::new(failed.error),
        })?;
    exec.upload().map_err(Error::driver("cuGraphUpload"))?;
    Ok((value, in_place))
}

/// Uploads a recorded graph and assembles its [`Captured`].
fn finish<T>(
    (exec, value, used, record, instantiate): (ExecGraph, T, usize, Duration, Duration),
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
        value,
        timing,
        pool_need: used,
    })
}

/// The body of a [`Runtime::capture`], kept with its graph.
type CaptureBody<'a> = Box<dyn FnMut(&Runtime) -> Result<()> + 'a>;

/// A captured graph with its own pool, from [`Runtime::capture`].
///
/// The closure that was captured is kept inside: whatever device memory it borrowed stays
/// borrowed (and whatever it owns stays alive) as long as the graph can replay it.
pub struct Graph<'a> {
    exec: ExecGraph,
    _chunk: Arc<PoolChunk>,
    _pool: GraphPool,
    _body: CaptureBody<'a>,
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
    /// borrows or owns: the graph replays into the same memory.
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
    pub fn capture<'a, F>(&self, body: F) -> Result<Graph<'a>>
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
        Ok(Graph {
            exec: captured.exec,
            _chunk: captured.chunk,
            _pool: pool,
            _body: body,
            timing: captured.timing,
        })
    }
}
