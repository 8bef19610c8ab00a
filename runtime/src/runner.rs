//! [`Runner`]: capture-at-init over every size, `run()` with dispatch, padding and replay, eager
//! fallback, and [`Output`] borrowing the runner.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use crate::capture::{Warmup, capture_one, rerecord};
use crate::context::Runtime;
use crate::dispatch::OnCaptureError;
use crate::dispatch::{GraphPlan, InputSpec, StaticInputs};
use crate::error::{Error, Result};
use crate::ffi::ExecGraph;
use crate::freeze::FreezeScope;
use crate::pool::{GraphPool, PoolChunk};
use crate::stats::{FALLBACK_REASONS, FallbackReason, RunnerStats, SizeStats};
use crate::tensor::Tensor;

/// What [`Runner::refresh`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RefreshReport {
    /// Graphs whose executable the driver updated in place (`cuGraphExecUpdate`).
    pub updated_in_place: usize,
    /// Graphs re-instantiated because the driver refused the update.
    pub reinstantiated: usize,
    /// Wall time of the whole refresh.
    pub time: std::time::Duration,
}

/// The eager forward a runner captures and falls back to.
pub type EagerFn<'m, const N: usize, S> =
    Box<dyn Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'm>;

/// One captured size.
struct SizeGraph {
    exec: ExecGraph,
    /// Pool memory the graph reads and writes; kept alive with it.
    chunk: Arc<PoolChunk>,
    /// The graph's output, `size` rows, in the pool.
    output: Tensor,
}

/// The result of [`Runner::run`]: the first `n` rows of the output.
///
/// It borrows the runner: the next `run` replays into the same memory, so holding an `Output`
/// across it is a compile error. To keep a result, copy it (`rt.duplicate(&out)`) or download it.
#[derive(Debug)]
pub struct Output<'r> {
    tensor: Tensor,
    replayed: bool,
    _runner: PhantomData<&'r ()>,
}

impl Output<'_> {
    /// Whether a graph produced it (`false`: the eager fallback ran).
    pub fn replayed(&self) -> bool {
        self.replayed
    }
}

impl Deref for Output<'_> {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        &self.tensor
    }
}

/// Graphs of one function for every captured size, with dispatch and eager fallback.
///
/// Built by the `<fn>_graphs` constructor that `#[cuda_graph]` generates, or by
/// [`Runner::capture`] directly. `'m` is the borrow of the model and runtime: the graphs hold
/// pointers to the model's weights, so they can't move or drop while the runner lives.
pub struct Runner<'m, const N: usize, S = ()> {
    rt: &'m Runtime,
    plan: GraphPlan,
    specs: [InputSpec; N],
    statics: S,
    eager: EagerFn<'m, N, S>,
    inputs: StaticInputs<N>,
    /// Indexed like `plan.table.sizes()`; `None` until captured (lazy mode).
    graphs: Vec<Option<SizeGraph>>,
    pool: GraphPool,
    stats: RunnerStats,
    warned: [bool; FALLBACK_REASONS],
    released: bool,
}

impl<const N: usize, S> std::fmt::Debug for Runner<'_, N, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("function", &self.plan.function)
            .field("sizes", &self.plan.table.sizes())
            .finish_non_exhaustive()
    }
}

impl<'m, const N: usize, S: PartialEq + 'm> Runner<'m, N, S> {
    /// Captures `eager` once per size of `plan`, largest first, all inside one [`FreezeScope`]:
    /// the first capture after an eager warm-up run (lazy initialisation, and measurement of the
    /// pool the graphs will share), the others straight into that pool, warming up only when one
    /// would not fit (see [`Warmup`]; `CUDAGRAPH_CAPTURE_WARMUP=each` warms up every size). With
    /// a lazy plan nothing is captured here: each size on its first use. `statics` are the host
    /// values baked into every graph.
    ///
    /// On error nothing is kept: graphs captured so far and the pool are freed, and the stream
    /// is out of capture mode.
    pub fn capture(
        rt: &'m Runtime,
        plan: GraphPlan,
        specs: [InputSpec; N],
        statics: S,
        eager: impl Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'm,
    ) -> Result<Self> {
        if N == 0 {
            return Err(Error::invalid(
                plan.function,
                "a runner needs at least one tensor input",
            ));
        }
        if plan.batch_input >= N {
            return Err(Error::invalid(
                plan.function,
                "batch input index out of range",
            ));
        }
        let started = Instant::now();
        let inputs = StaticInputs::new(rt, &specs, plan.table.max())?;
        let sizes = plan.table.sizes().to_vec();
        let stats = RunnerStats {
            function: plan.function,
            static_input_bytes: inputs.bytes(),
            calls_by_batch: vec![0; plan.table.max() + 1],
            sizes: sizes
                .iter()
                .map(|&size| SizeStats {
                    size,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut runner = Self {
            rt,
            graphs: sizes.iter().map(|_| None).collect(),
            plan,
            specs,
            statics,
            eager: Box::new(eager),
            inputs,
            pool: GraphPool::new(),
            stats,
            warned: [false; FALLBACK_REASONS],
            released: false,
        };
        if runner.plan.lazy {
            return Ok(runner);
        }

        let progress = progress_bar(runner.plan.function, sizes.len());
        let mut scope = FreezeScope::enter(rt, rt.reclaim_policy())?;
        for slot in (0..sizes.len()).rev() {
            progress.set_message(format!("size {}", sizes[slot]));
            runner.capture_or_mark(slot)?;
            scope.between_graphs()?;
            progress.inc(1);
        }
        let (reclaims, _) = scope.exit()?;
        progress.finish_and_clear();
        runner.stats.capture_wall = started.elapsed();
        runner.stats.reclaims = reclaims;
        tracing::info!(target: "cudagraph", "{}", runner.stats);
        Ok(runner)
    }

    /// Captures `slot`; on failure, under [`OnCaptureError::Eager`], records the error and marks
    /// the size for eager execution instead of failing.
    fn capture_or_mark(&mut self, slot: usize) -> Result<()> {
        match self.capture_slot(slot) {
            Ok(()) => Ok(()),
            Err(e) if self.plan.on_capture_error == OnCaptureError::Eager => {
                tracing::warn!(target: "cudagraph", "{e}; this size will run eagerly");
                self.stats.sizes[slot].capture_error = Some(e.to_string());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Captures the graph of size index `slot`: the first capture warms up, later ones follow
    /// the plan's [`Warmup`] policy.
    fn capture_slot(&mut self, slot: usize) -> Result<()> {
        let size = self.plan.table.sizes()[slot];
        let warmup = if self.pool.chunk_count() == 0 {
            Warmup::Always
        } else {
            self.plan.warmup
        };
        let views = self.inputs.views(size)?;
        let (eager, statics) = (&self.eager, &self.statics);
        let mut body = |rt: &Runtime| {
            let refs: [&Tensor; N] = std::array::from_fn(|i| &views[i]);
            eager(rt, refs, statics)
        };
        let function = self.plan.function;
        let c = capture_one(self.rt, &mut self.pool, function, size, warmup, &mut body)?;
        if c.value.rank() == 0 || c.value.rows() != size {
            return Err(Error::Capture {
                function,
                size,
                site: None,
                source: Box::new(Error::invalid(
                    function,
                    format!(
                        "the output's leading dimension must be the batch ({size}), got shape {:?}",
                        c.value.shape()
                    ),
                )),
            });
        }
        let s = &mut self.stats.sizes[slot];
        s.captured = true;
        s.nodes = c.exec.node_count();
        s.pool_need = c.pool_need;
        s.capture = c.timing;
        self.stats.pool_bytes = self.pool.bytes();
        self.graphs[slot] = Some(SizeGraph {
            exec: c.exec,
            chunk: c.chunk,
            output: c.value,
        });
        Ok(())
    }

    /// Runs the function on `inputs`: replays the graph of the smallest captured size that fits
    /// the batch (inputs copied into its static buffers, padded), or runs it eagerly when no
    /// graph applies (counted in [`stats`](Self::stats), logged once per reason).
    ///
    /// Errors: an empty batch, inputs whose leading dimensions differ, a tensor on another
    /// device, or any error of the replay or the eager function.
    pub fn run_with(&mut self, inputs: [&Tensor; N], statics: &S) -> Result<Output<'_>> {
        let function = self.plan.function;
        if self.released {
            return Err(Error::Released { function });
        }
        let batch = inputs[self.plan.batch_input];
        if batch.rank() == 0 {
            return Err(Error::invalid(
                function,
                "the batch input needs a leading (batch) dimension",
            ));
        }
        let n = batch.rows();
        if n == 0 {
            return Err(Error::invalid(function, "empty batch (0 rows)"));
        }
        for (i, t) in inputs.iter().enumerate() {
            self.rt.check_device(function, t)?;
            if t.rank() == 0 || t.rows() != n {
                return Err(Error::invalid(
                    function,
                    format!(
                        "input {i} has shape {:?}; every input's leading dimension must be the batch ({n})",
                        t.shape()
                    ),
                ));
            }
        }
        match self.stats.calls_by_batch.get_mut(n) {
            Some(count) => *count += 1,
            None => *self.stats.calls_over.entry(n).or_insert(0) += 1,
        }
        let slot = self.plan.table.slot(n);
        let shapes_match = self.specs.iter().zip(&inputs).all(|(s, t)| s.matches(t));
        let statics_match = *statics == self.statics;
        if let Some(slot) = slot {
            // Lazy capture: the first call that would replay this size captures it.
            let pending =
                self.graphs[slot].is_none() && self.stats.sizes[slot].capture_error.is_none();
            if pending && shapes_match && statics_match {
                let started = Instant::now();
                self.capture_or_mark(slot)?;
                self.stats.capture_wall += started.elapsed();
            }
        }
        let reason = match slot {
            None => Some(FallbackReason::TooLarge),
            Some(slot) if self.stats.sizes[slot].capture_error.is_some() => {
                Some(FallbackReason::CaptureFailed)
            }
            Some(_) if !shapes_match => Some(FallbackReason::ShapeMismatch),
            Some(_) if !statics_match => Some(FallbackReason::StaticChanged),
            Some(_) => None,
        };
        match (slot, reason) {
            (Some(slot), None) => self.replay(slot, n, &inputs),
            (_, reason) => {
                let reason = reason.unwrap_or(FallbackReason::TooLarge);
                self.fallback(reason, n, inputs, statics)
            }
        }
    }

    fn replay(&mut self, slot: usize, n: usize, inputs: &[&Tensor; N]) -> Result<Output<'_>> {
        self.inputs.fill(self.rt, inputs)?;
        let Some(graph) = &self.graphs[slot] else {
            return Err(Error::invalid(
                self.plan.function,
                "graph missing after capture",
            ));
        };
        graph
            .exec
            .launch()
            .map_err(Error::driver("cuGraphLaunch"))?;
        let s = &mut self.stats.sizes[slot];
        s.replays += 1;
        s.rows += n as u64;
        s.padded_rows += (s.size - n) as u64;
        Ok(Output {
            tensor: graph.output.narrow_rows(0, n)?,
            replayed: true,
            _runner: PhantomData,
        })
    }

    fn fallback(
        &mut self,
        reason: FallbackReason,
        n: usize,
        inputs: [&Tensor; N],
        statics: &S,
    ) -> Result<Output<'_>> {
        self.stats.fallbacks[reason.index()] += 1;
        if !self.warned[reason.index()] {
            self.warned[reason.index()] = true;
            tracing::warn!(
                target: "cudagraph",
                function = self.plan.function,
                batch = n,
                "running eagerly: {reason} (logged once per reason; see Runner::stats)"
            );
        }
        let tensor = (self.eager)(self.rt, inputs, statics)?;
        Ok(Output {
            tensor,
            replayed: false,
            _runner: PhantomData,
        })
    }

    /// Rebuilds every captured graph for a new eager function, typically the same model's
    /// forward after its weights moved (a new checkpoint of the same shapes in new buffers): each
    /// size is re-recorded and its executable graph updated in place with `cuGraphExecUpdate`,
    /// or re-instantiated where the driver refuses the update. Much cheaper than a new capture,
    /// which is mostly instantiation. The old runner is consumed, so nothing can replay graphs
    /// that still point at the old weights; the new one borrows what `eager` borrows.
    ///
    /// `rt` must be the runtime the runner was captured on.
    pub fn refresh<'n>(
        self,
        rt: &'n Runtime,
        eager: impl Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'n,
    ) -> Result<(Runner<'n, N, S>, RefreshReport)>
    where
        S: 'n,
    {
        if !Arc::ptr_eq(rt.stream(), self.rt.stream()) {
            return Err(Error::invalid(
                self.plan.function,
                "refresh needs the runtime the graphs were captured on",
            ));
        }
        if self.released {
            return Err(Error::Released {
                function: self.plan.function,
            });
        }
        let started = Instant::now();
        let Runner {
            plan,
            specs,
            statics,
            inputs,
            mut graphs,
            pool,
            mut stats,
            warned,
            ..
        } = self;
        let eager: EagerFn<'n, N, S> = Box::new(eager);
        let mut report = RefreshReport::default();
        for (slot, graph) in graphs.iter_mut().enumerate().rev() {
            let Some(graph) = graph else { continue };
            let size = plan.table.sizes()[slot];
            let views = inputs.views(size)?;
            let mut body = |rt: &Runtime| {
                let refs: [&Tensor; N] = std::array::from_fn(|i| &views[i]);
                eager(rt, refs, &statics)
            };
            let chunk = graph.chunk.clone();
            let (output, in_place) =
                rerecord(rt, &chunk, &mut graph.exec, plan.function, size, &mut body)?;
            graph.output = output;
            stats.sizes[slot].nodes = graph.exec.node_count();
            if in_place {
                report.updated_in_place += 1;
            } else {
                report.reinstantiated += 1;
            }
        }
        report.time = started.elapsed();
        Ok((
            Runner {
                rt,
                plan,
                specs,
                statics,
                eager,
                inputs,
                graphs,
                pool,
                stats,
                warned,
                released: false,
            },
            report,
        ))
    }

    /// What the runner has done so far.
    pub fn stats(&self) -> &RunnerStats {
        &self.stats
    }

    /// The size list that would have minimised padding on the traffic seen so far, with at most
    /// `budget` graphs (see [`advise_sizes`](crate::advise_sizes)).
    pub fn advise_sizes(&self, budget: usize) -> Result<crate::SizeAdvice> {
        crate::advise_sizes(&self.stats.batch_histogram(), budget)
    }

    /// The captured sizes, ascending.
    pub fn sizes(&self) -> &[usize] {
        self.plan.table.sizes()
    }

    /// The runtime the graphs run on.
    pub fn runtime(&self) -> &'m Runtime {
        self.rt
    }

    /// Device bytes of the graph pool.
    pub fn pool_bytes(&self) -> usize {
        self.pool.bytes()
    }

    /// Runs the eager function directly (no graph, not counted), e.g. as a reference.
    pub fn run_eager(&self, inputs: [&Tensor; N], statics: &S) -> Result<Tensor> {
        (self.eager)(self.rt, inputs, statics)
    }
}

impl<const N: usize> Runner<'_, N, ()> {
    /// [`run_with`](Self::run_with) for a function without static arguments.
    pub fn run(&mut self, inputs: [&Tensor; N]) -> Result<Output<'_>> {
        self.run_with(inputs, &())
    }
}

fn progress_bar(function: &str, len: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "capturing {prefix} [{bar:30}] {pos}/{len} graphs {msg} ({elapsed})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("`{function}`"));
    bar
}

impl<const N: usize, S> Runner<'_, N, S> {
    /// Gives the graph pool's physical memory back to the driver (and trims what the
    /// stream-ordered allocator and graph memory nodes cache), keeping every graph defined:
    /// the pool's virtual addresses stay reserved, so [`resume`](Self::resume) maps new memory
    /// at the same addresses and the graphs replay without re-capture. `run` fails with
    /// [`Error::Released`] in between. Returns the bytes of pool memory released.
    pub fn release_memory(&mut self) -> Result<usize> {
        if self.released {
            return Ok(0);
        }
        self.rt.synchronize()?;
        self.pool.release()?;
        self.released = true;
        self.rt.release_cached_memory()?;
        Ok(self.pool.bytes())
    }

    /// Maps the pool's memory back after [`release_memory`](Self::release_memory); the graphs
    /// replay with the same results as before.
    pub fn resume(&mut self) -> Result<()> {
        if self.released {
            self.pool.resume()?;
            self.released = false;
        }
        Ok(())
    }

    /// Whether the pool's memory is released.
    pub fn is_released(&self) -> bool {
        self.released
    }

    /// Test aid: fills the whole graph pool with `0xFF` bytes (NaN in bf16 and f32), so a replay
    /// that leaves an output element unwritten shows up as NaN.
    pub fn poison_pool(&self) -> Result<()> {
        self.pool.poison(self.rt)
    }
}

/// Device memory a runner will hold, from [`Runner::estimate`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Bytes of the graph pool (every size's intermediates and outputs, shared).
    pub pool_bytes: usize,
    /// Bytes of the static input buffers.
    pub static_input_bytes: usize,
}

impl MemoryEstimate {
    /// Everything together.
    pub fn total(&self) -> usize {
        self.pool_bytes + self.static_input_bytes
    }
}

impl<'m, const N: usize, S: PartialEq + 'm> Runner<'m, N, S> {
    /// What capturing every size of `plan` would hold, found by capturing the largest size
    /// alone, then releasing everything: for sizing a KV cache from the memory left over before
    /// committing to the capture. The graphs of a runner share one pool as large as the
    /// largest graph's need, so this is the figure for all sizes.
    pub fn estimate(
        rt: &'m Runtime,
        plan: GraphPlan,
        specs: [InputSpec; N],
        statics: S,
        eager: impl Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'm,
    ) -> Result<MemoryEstimate> {
        let largest = plan.table.sizes().len().checked_sub(1);
        let mut runner = Runner::capture(rt, plan.with_lazy_capture(true), specs, statics, eager)?;
        if let Some(slot) = largest {
            runner.capture_slot(slot)?;
        }
        let estimate = MemoryEstimate {
            pool_bytes: runner.pool.bytes(),
            static_input_bytes: runner.inputs.bytes(),
        };
        drop(runner);
        rt.release_cached_memory()?;
        Ok(estimate)
    }
}
