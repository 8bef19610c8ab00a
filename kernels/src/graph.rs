//! [`Graph`]: one graph captured without the macro ([`Runtime::capture`]), with a pool of its
//! own, through the graph runtime's pool-mode capture.

use std::sync::Arc;

use cudagraph_runtime::backend::Seal;
use cudagraph_runtime::ffi::ExecGraph;
use cudagraph_runtime::pool::{GraphPool, PoolChunk};
use cudagraph_runtime::pool_capture::{capture_one, check_no_escape};
use cudagraph_runtime::routing::KeepAlive;
use cudagraph_runtime::{CaptureTiming, Error, Result, Warmup};

use crate::context::Runtime;
use crate::native::freeze_scope;

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
        // SAFETY: the graph keeps its pool (and chunk), the buffers its capture noted, its body
        // and a borrow of the runtime (workspace, modules): everything it reads is alive.
        unsafe { self.exec.launch() }.map_err(Error::driver("cuGraphLaunch"))
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
    /// # fn main() -> cudagraph_kernels::Result<()> {
    /// use cudagraph_kernels::{DType, Runtime};
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
        // SAFETY: the seal stays in this function: it enters this runtime's own freeze scope and
        // captures on this runtime (the pool-mode functions' contract, which `PoolDevice for
        // Runtime` upholds).
        let seal = unsafe { Seal::new_unchecked() };
        let scope = freeze_scope(seal, self, self.reclaim_policy())?;
        let captured = capture_one(
            seal,
            self,
            &mut pool,
            "Runtime::capture",
            0,
            Warmup::Always,
            // (A graph without the macro has no islands: the segments go unused.)
            &mut |rt: &Runtime, _segments| body(rt),
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
