//! Capture of one graph: a warm-up run that also measures the pool memory the capture will
//! need, then the capture itself with allocations served from the graph pool, instantiation and
//! upload. [`Runtime::capture`] offers it without the macro.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::alloc::Mode;
use crate::arena::Arena;
use crate::context::Runtime;
use crate::error::{Error, Result};
use crate::ffi::{self, ExecGraph};
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

/// Restores eager allocation and unparks when dropped, whatever path leaves the capture.
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

/// Warm-up, then capture of `f` with allocations from `pool`. `function` and `size` name the
/// capture in errors. The stream is out of capture mode when this returns, on every path.
pub(crate) fn capture_one<T>(
    rt: &Runtime,
    pool: &mut GraphPool,
    function: &'static str,
    size: usize,
    f: &mut dyn FnMut(&Runtime) -> Result<T>,
) -> Result<Captured<T>> {
    let wrap = |source: Error, site| Error::Capture {
        function,
        size,
        site,
        source: Box::new(source),
    };
    rt.forbid_during_capture("a nested capture")
        .map_err(|e| wrap(e, None))?;

    // 1. Warm-up: eager, on driver memory, measuring the arena this sequence needs.
    let started = Instant::now();
    let need = {
        let guard = ModeGuard { rt };
        guard
            .rt
            .alloc_shared()
            .set_mode(Mode::Measure(Arena::unbounded()));
        rt.clear_op();
        let warm = f(rt).map_err(|e| wrap(e, rt.current_op()))?;
        let need = match rt.alloc_shared().set_mode(Mode::Eager) {
            Mode::Measure(arena) => arena.high_water(),
            _ => 0,
        };
        drop(warm);
        need
    };
    rt.check_deferred().map_err(|e| wrap(e, rt.current_op()))?;
    let warmup = started.elapsed();

    // 2. A pool chunk large enough, allocated before the capture begins.
    let chunk = pool
        .chunk_for(rt.stream(), need)
        .map_err(|e| wrap(e, None))?;

    // 3. Capture.
    let started = Instant::now();
    let (recorded, ended, record) = {
        let _guard = ModeGuard { rt };
        {
            let shared = rt.alloc_shared();
            shared.set_mode(Mode::Capture {
                chunk: chunk.clone(),
                arena: Arena::with_capacity(chunk.len()),
            });
            shared.lock().capturing = true;
        }
        rt.clear_op();
        ffi::begin_capture(rt.stream())
            .map_err(|e| wrap(Error::driver("cuStreamBeginCapture")(e), None))?;
        let recorded = f(rt);
        let site = rt.current_op();
        let record = started.elapsed();
        let ended_at = Instant::now();
        let ended = ExecGraph::end_capture(rt.stream()).map(|exec| (exec, ended_at.elapsed()));
        (
            recorded.map_err(|e| (e, site)),
            ended.map_err(|e| (e, site)),
            record,
        )
    };
    // Parked drops happened under capture; free them now that it ended.
    drop(rt.alloc_shared().take_parked());
    rt.clear_op();

    let value = match recorded {
        Ok(v) => v,
        Err((e, site)) => return Err(wrap(e, site)),
    };
    let (exec, instantiate) = match ended {
        Ok(x) => x,
        Err((e, site)) => {
            return Err(wrap(
                Error::driver("cuStreamEndCapture/cuGraphInstantiate")(e),
                site,
            ));
        }
    };
    rt.check_deferred().map_err(|e| wrap(e, None))?;

    // 4. Upload, so the first replay pays no setup.
    let started = Instant::now();
    exec.upload()
        .map_err(|e| wrap(Error::driver("cuGraphUpload")(e), None))?;
    let upload = started.elapsed();

    Ok(Captured {
        exec,
        chunk,
        value,
        timing: CaptureTiming {
            warmup,
            record,
            instantiate,
            upload,
        },
        pool_need: need,
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
        let captured = capture_one(self, &mut pool, "Runtime::capture", 0, &mut *body)?;
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
