//! [`Runner`]: capture-at-init over every size, `run()` with dispatch, padding and replay, eager
//! fallback, and [`Output`] borrowing the runner.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use crate::alloc::KeepAlive;
use crate::capture::{Warmup, capture_one, check_no_escape, rerecord};
use crate::context::Runtime;
use crate::dispatch::OnCaptureError;
use crate::dispatch::{GraphPlan, InputSpec, StaticInputs};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffi::ExecGraph;
use crate::freeze::FreezeScope;
use crate::pool::{GraphPool, PoolChunk};
use crate::stats::{FALLBACK_REASONS, FallbackReason, RunnerStats, SizeStats};
use crate::tensor::{Shape, Tensor};

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

/// A failed [`Runner::refresh`]: the error, and the runner it was given, still usable with its
/// old forward. Sizes the refresh had already rebuilt for the new forward are dropped from it
/// (they pointed at the new model) and are captured again, with the old forward, on their next
/// use.
pub struct RefreshError<'m, const N: usize, S = (), const F: u64 = 0> {
    /// Why the refresh failed.
    pub error: Error,
    /// The runner, as described above (boxed: a runner is large).
    pub runner: Box<Runner<'m, N, S, F>>,
}

impl<const N: usize, S, const F: u64> std::fmt::Debug for RefreshError<'_, N, S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<const N: usize, S, const F: u64> std::fmt::Display for RefreshError<'_, N, S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refresh failed (the old runner is returned): {}",
            self.error
        )
    }
}

impl<const N: usize, S, const F: u64> std::error::Error for RefreshError<'_, N, S, F> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl<const N: usize, S, const F: u64> From<RefreshError<'_, N, S, F>> for Error {
    /// The error alone (the returned runner is dropped).
    fn from(e: RefreshError<'_, N, S, F>) -> Error {
        e.error
    }
}

/// The eager forward a runner captures and falls back to.
pub type EagerFn<'m, const N: usize, S> =
    Box<dyn Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'm>;

/// Where a graph's output lies in its pool chunk (a fresh view of it is made per replay).
#[derive(Debug, Clone, Copy)]
struct OutputSlot {
    offset: usize,
    shape: Shape,
    dtype: DType,
}

/// One captured size.
struct SizeGraph {
    exec: ExecGraph,
    /// Pool memory the graph reads and writes; kept alive with it.
    chunk: Arc<PoolChunk>,
    /// Driver buffers the graph reads and writes (noted during its capture); kept alive with it.
    _kept: KeepAlive,
    /// The graph's output, `size` rows, in the pool.
    output: OutputSlot,
}

/// The result of [`Runner::run`]: the first `n` rows of the output.
///
/// It borrows the runner: the next `run` replays into the same memory and `release_memory`
/// unmaps it, so holding an `Output` (or a view of it) across either is a compile error
/// (E0499: the runner is borrowed mutably twice). It derefs to [`Tensor`], so ops take it as
/// input, but it is not `Clone` and neither is `Tensor`: to keep a result past the next run,
/// copy it ([`to_owned`](Self::to_owned)) or download it.
pub struct Output<'r> {
    tensor: Tensor,
    replayed: bool,
    size: Option<usize>,
    rt: &'r Runtime,
}

impl Output<'_> {
    /// Whether a graph produced it (`false`: the eager fallback ran).
    pub fn replayed(&self) -> bool {
        self.replayed
    }

    /// The captured size whose graph produced it (`None`: the eager fallback ran).
    pub fn size(&self) -> Option<usize> {
        self.size
    }

    /// A copy in a new tensor of the runner's runtime, which outlives the output (and the
    /// runner): what to keep past the next `run`.
    #[track_caller]
    pub fn to_owned(&self) -> Result<Tensor> {
        self.rt.duplicate(&self.tensor)
    }
}

impl Deref for Output<'_> {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        &self.tensor
    }
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("tensor", &self.tensor)
            .field("replayed", &self.replayed)
            .field("size", &self.size)
            .finish()
    }
}

/// Graphs of one function for every captured size, with dispatch and eager fallback.
///
/// Built by the `<fn>_graphs` constructor that `#[cuda_graph]` generates, or by
/// [`Runner::capture`] directly. `'m` is the borrow of the model and runtime: the graphs hold
/// pointers to the model's weights, so they can't move or drop while the runner lives (and
/// every driver buffer a graph reads is also kept alive by the graph itself). `F` identifies the
/// function (the macro gives each annotated function its own), so a runner of one function
/// can't be refreshed with another's forward.
pub struct Runner<'m, const N: usize, S = (), const F: u64 = 0> {
    rt: &'m Runtime,
    plan: GraphPlan,
    specs: [InputSpec; N],
    statics: S,
    statics_eq: fn(&S, &S) -> bool,
    eager: EagerFn<'m, N, S>,
    inputs: StaticInputs<N>,
    /// Indexed like `plan.table.sizes()`; `None` until captured (lazy mode).
    graphs: Vec<Option<SizeGraph>>,
    pool: GraphPool,
    stats: RunnerStats,
    warned: [bool; FALLBACK_REASONS],
    released: bool,
}

impl<const N: usize, S, const F: u64> std::fmt::Debug for Runner<'_, N, S, F> {
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
    /// values baked into every graph, compared with `==` at every call (see
    /// [`with_statics_eq`](Self::with_statics_eq)).
    ///
    /// What a warm-up runs: `eager` on the runner's static input buffers, `size` rows, whose
    /// padded inputs (the plan's [`PadValue`](crate::PadValue)s) hold their pad value in every
    /// row, and whose other inputs hold zeros or the rows of an earlier call. Whatever the
    /// forward writes outside its outputs (a KV cache) it writes then too, unless a pad value
    /// tells its kernels to skip the row.
    ///
    /// On error nothing is kept: graphs captured so far and the pool are freed, and the stream
    /// is out of capture mode (also when the forward panics: the panic then continues).
    pub fn capture(
        rt: &'m Runtime,
        plan: GraphPlan,
        specs: [InputSpec; N],
        statics: S,
        eager: impl Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'm,
    ) -> Result<Self> {
        Self::build(rt, plan, specs, statics, |a, b| a == b, Box::new(eager))
    }
}

impl<'m, const N: usize, S: 'm> Runner<'m, N, S> {
    fn build(
        rt: &'m Runtime,
        plan: GraphPlan,
        specs: [InputSpec; N],
        statics: S,
        statics_eq: fn(&S, &S) -> bool,
        eager: EagerFn<'m, N, S>,
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
        let inputs = StaticInputs::new(rt, &specs, plan.table.max(), &plan.pads)?;
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
            statics_eq,
            eager,
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
}

impl<'m, const N: usize, S: 'm, const F: u64> Runner<'m, N, S, F> {
    /// Compares static arguments with `eq` instead of `==` (the code `#[cuda_graph]` generates
    /// compares floats by their bits, so that a NaN static matches itself).
    pub fn with_statics_eq(mut self, eq: fn(&S, &S) -> bool) -> Self {
        self.statics_eq = eq;
        self
    }

    /// The same runner without its function's identity (`F = 0`): a type one can write, for a
    /// struct field or a helper's signature (`Runner<'m, N, S>`). The generated
    /// `<fn>_graphs_refresh` no longer accepts it; [`refresh`](Self::refresh) still does.
    pub fn into_untyped(self) -> Runner<'m, N, S> {
        self.for_function::<0>()
    }

    /// The same runner, typed as the runner of function `G` (used by the code `#[cuda_graph]`
    /// generates, which gives every annotated function its own identity).
    #[doc(hidden)]
    pub fn for_function<const G: u64>(self) -> Runner<'m, N, S, G> {
        let Runner {
            rt,
            plan,
            specs,
            statics,
            statics_eq,
            eager,
            inputs,
            graphs,
            pool,
            stats,
            warned,
            released,
        } = self;
        Runner {
            rt,
            plan,
            specs,
            statics,
            statics_eq,
            eager,
            inputs,
            graphs,
            pool,
            stats,
            warned,
            released,
        }
    }

    /// Captures `slot`; on failure, under [`OnCaptureError::Eager`], records the error and marks
    /// the size for eager execution instead of failing. Under [`OnCaptureError::Abort`] the
    /// error is recorded too (a lazy size that failed is not captured again) and returned.
    fn capture_or_mark(&mut self, slot: usize) -> Result<()> {
        match self.capture_slot(slot) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.sizes[slot].capture_error = Some(e.to_string());
                if self.plan.on_capture_error == OnCaptureError::Eager {
                    tracing::warn!(target: "cudagraph", "{e}; this size will run eagerly");
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Captures the graph of size index `slot`: the first capture warms up, later ones follow
    /// the plan's [`Warmup`] policy. Padded inputs are filled with their pad value first.
    fn capture_slot(&mut self, slot: usize) -> Result<()> {
        let size = self.plan.table.sizes()[slot];
        let warmup = if self.pool.chunk_count() == 0 {
            Warmup::Always
        } else {
            self.plan.warmup
        };
        self.inputs.fill_pads(self.rt)?;
        let views = self.inputs.views(size)?;
        let (eager, statics) = (&self.eager, &self.statics);
        let mut body = |rt: &Runtime| {
            let refs: [&Tensor; N] = std::array::from_fn(|i| &views[i]);
            eager(rt, refs, statics)
        };
        let function = self.plan.function;
        let c = capture_one(self.rt, &mut self.pool, function, size, warmup, &mut body)?;
        let output = output_slot(function, size, &c.value, &c.chunk);
        drop(c.value);
        if let Err(e) = check_no_escape(function, size, &c.chunk, 0) {
            self.quarantine(&c.chunk);
            return Err(e);
        }
        let output = output?;
        let s = &mut self.stats.sizes[slot];
        s.captured = true;
        s.capture_error = None;
        s.nodes = c.exec.node_count();
        s.pool_need = c.pool_need;
        s.capture = c.timing;
        self.stats.pool_bytes = self.pool.bytes();
        self.graphs[slot] = Some(SizeGraph {
            exec: c.exec,
            chunk: c.chunk,
            _kept: c.kept,
            output,
        });
        Ok(())
    }

    /// Stops using `chunk`, in which a tensor the forward kept outlived its capture: every graph
    /// that writes there is dropped (captured again, into another chunk, on its next use) and
    /// the pool forgets the chunk, which lives on only as long as that tensor.
    fn quarantine(&mut self, chunk: &Arc<PoolChunk>) {
        for (slot, graph) in self.graphs.iter_mut().enumerate() {
            if graph.as_ref().is_some_and(|g| Arc::ptr_eq(&g.chunk, chunk)) {
                *graph = None;
                self.stats.sizes[slot].captured = false;
            }
        }
        self.pool.forget(chunk);
        self.stats.pool_bytes = self.pool.bytes();
    }

    /// Runs the function on `inputs`: replays the graph of the smallest captured size that fits
    /// the batch (inputs copied into its static buffers, padded), or runs it eagerly when no
    /// graph applies (counted in [`stats`](Self::stats), logged once per reason).
    ///
    /// Errors: an empty batch, inputs whose leading dimensions differ, a tensor of another
    /// runtime, a size whose lazy capture failed earlier under [`OnCaptureError::Abort`], or
    /// any error of the replay or the eager function.
    pub fn run_with(&mut self, inputs: [&Tensor; N], statics: &S) -> Result<Output<'_>> {
        let function = self.plan.function;
        if self.released {
            return Err(Error::Released { function });
        }
        // A replay inside another capture would record this runner's graph into a graph that
        // keeps none of its memory.
        self.rt.forbid_during_capture("running a runner")?;
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
        let statics_match = (self.statics_eq)(statics, &self.statics);
        if let Some(slot) = slot {
            let failed = self.stats.sizes[slot].capture_error.clone();
            match failed {
                // Lazy capture: the first call that would replay this size captures it.
                None if self.graphs[slot].is_none() && shapes_match && statics_match => {
                    let started = Instant::now();
                    self.capture_or_mark(slot)?;
                    self.stats.capture_wall += started.elapsed();
                }
                Some(message) if self.plan.on_capture_error == OnCaptureError::Abort => {
                    return Err(Error::CaptureFailedEarlier {
                        function,
                        size: self.plan.table.sizes()[slot],
                        message,
                    });
                }
                _ => {}
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
        let out = graph.output;
        let tensor = Tensor::pool_view(
            graph.chunk.clone(),
            out.offset,
            out.shape.with_rows(n)?,
            out.dtype,
            self.rt.alloc_shared().clone(),
            self.rt.ordinal(),
        );
        Ok(Output {
            tensor,
            replayed: true,
            size: Some(s.size),
            rt: self.rt,
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
            size: None,
            rt: self.rt,
        })
    }

    /// Rebuilds every captured graph for a new eager function, typically the same model's
    /// forward after its weights moved (a new checkpoint of the same shapes in new buffers): each
    /// size is re-recorded and its executable graph updated in place with `cuGraphExecUpdate`,
    /// or re-instantiated where the driver refuses the update; a size whose new forward needs
    /// more pool memory is warmed up and moved to a larger chunk. Much cheaper than a new
    /// capture, which is mostly instantiation. The old runner is consumed, so nothing can replay
    /// graphs that still point at the old weights; the new one borrows what `eager` borrows.
    ///
    /// `rt` must be the runtime the runner was captured on. On error the old runner comes back
    /// in the [`RefreshError`], usable with its old forward.
    pub fn refresh<'n>(
        self,
        rt: &'n Runtime,
        eager: impl Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'n,
    ) -> std::result::Result<(Runner<'n, N, S, F>, RefreshReport), RefreshError<'m, N, S, F>>
    where
        S: 'n,
    {
        let function = self.plan.function;
        if !Arc::ptr_eq(rt.raw_stream(), self.rt.raw_stream()) {
            return Err(RefreshError {
                error: Error::invalid(
                    function,
                    "refresh needs the runtime the graphs were captured on",
                ),
                runner: Box::new(self),
            });
        }
        if self.released {
            return Err(RefreshError {
                error: Error::Released { function },
                runner: Box::new(self),
            });
        }
        if let Err(error) = rt.forbid_during_capture("a refresh") {
            return Err(RefreshError {
                error,
                runner: Box::new(self),
            });
        }
        let started = Instant::now();
        let mut old = self;
        let eager: EagerFn<'n, N, S> = Box::new(eager);
        let mut report = RefreshReport::default();
        // Graphs rebuilt for `eager`, by slot; moved into the new runner once all succeeded.
        let mut rebuilt: Vec<Option<SizeGraph>> = old.graphs.iter().map(|_| None).collect();
        let mut failure = None;
        if let Err(error) = old.inputs.fill_pads(rt) {
            failure = Some(error);
        }
        for slot in (0..old.graphs.len()).rev() {
            if failure.is_some() {
                break;
            }
            let Some(graph) = old.graphs[slot].take() else {
                continue;
            };
            let size = old.plan.table.sizes()[slot];
            match refresh_slot(&mut old, rt, &eager, graph, size) {
                Ok((graph, in_place)) => {
                    old.stats.sizes[slot].nodes = graph.exec.node_count();
                    rebuilt[slot] = Some(graph);
                    if in_place {
                        report.updated_in_place += 1;
                    } else {
                        report.reinstantiated += 1;
                    }
                }
                Err((graph, error)) => {
                    old.stats.sizes[slot].captured = graph.is_some();
                    old.graphs[slot] = graph;
                    failure = Some(error);
                }
            }
        }
        if let Some(error) = failure {
            // Sizes already rebuilt point at the new model: dropped, captured again on use.
            for (slot, graph) in rebuilt.iter_mut().enumerate() {
                if graph.take().is_some() {
                    old.stats.sizes[slot].captured = false;
                }
            }
            old.stats.pool_bytes = old.pool.bytes();
            return Err(RefreshError {
                error,
                runner: Box::new(old),
            });
        }
        report.time = started.elapsed();
        let Runner {
            plan,
            specs,
            statics,
            statics_eq,
            inputs,
            pool,
            mut stats,
            warned,
            ..
        } = old;
        stats.pool_bytes = pool.bytes();
        Ok((
            Runner {
                rt,
                plan,
                specs,
                statics,
                statics_eq,
                eager,
                inputs,
                graphs: rebuilt,
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

impl<const N: usize, const F: u64> Runner<'_, N, (), F> {
    /// [`run_with`](Self::run_with) for a function without static arguments.
    pub fn run(&mut self, inputs: [&Tensor; N]) -> Result<Output<'_>> {
        self.run_with(inputs, &())
    }
}

/// Where `value`, a capture's output, lies in `chunk`, after checking that it is a tensor the
/// forward allocated there with the batch as its leading dimension.
fn output_slot(
    function: &'static str,
    size: usize,
    value: &Tensor,
    chunk: &Arc<PoolChunk>,
) -> Result<OutputSlot> {
    let fail = |message: String| Error::Capture {
        function,
        size,
        site: None,
        source: Box::new(Error::invalid(function, message)),
    };
    if value.rank() == 0 || value.rows() != size {
        return Err(fail(format!(
            "the output's leading dimension must be the batch ({size}), got shape {:?}",
            value.shape()
        )));
    }
    match value.pool_location() {
        Some((c, offset)) if Arc::ptr_eq(&c, chunk) => Ok(OutputSlot {
            offset,
            shape: value.shape_value(),
            dtype: value.dtype(),
        }),
        _ => Err(fail(
            "the output must be a tensor the forward allocates (through `Runtime::alloc` or an op); \
             return a copy (`rt.duplicate(&t)`) of a tensor it only reads"
                .to_owned(),
        )),
    }
}

/// Re-records one size of `runner` with `eager` (see [`Runner::refresh`]). On error the graph
/// comes back unchanged, with the error (a cold path: the size of the error doesn't matter).
#[allow(clippy::type_complexity, clippy::result_large_err)]
fn refresh_slot<'m, const N: usize, S: 'm, const F: u64>(
    runner: &mut Runner<'m, N, S, F>,
    rt: &Runtime,
    eager: &EagerFn<'_, N, S>,
    mut graph: SizeGraph,
    size: usize,
) -> std::result::Result<(SizeGraph, bool), (Option<SizeGraph>, Error)> {
    let function = runner.plan.function;
    let views = match runner.inputs.views(size) {
        Ok(views) => views,
        Err(e) => return Err((Some(graph), e)),
    };
    let statics = &runner.statics;
    let mut body = |rt: &Runtime| {
        let refs: [&Tensor; N] = std::array::from_fn(|i| &views[i]);
        eager(rt, refs, statics)
    };
    let chunk = graph.chunk.clone();
    let done = match rerecord(
        rt,
        &mut runner.pool,
        &chunk,
        &mut graph.exec,
        function,
        size,
        &mut body,
    ) {
        Ok(done) => done,
        // An executable already updated to the new forward (an error found after the update,
        // a deferred one say) must not go back to the old runner; an untouched one does.
        Err((e, changed)) => return Err((if changed { None } else { Some(graph) }, e)),
    };
    let output = match output_slot(function, size, &done.value, &done.chunk) {
        Ok(output) => output,
        // The executable already replays the new forward: it can't go back to the old runner.
        Err(e) => return Err((None, e)),
    };
    drop(done.value);
    if let Err(e) = check_no_escape(function, size, &done.chunk, 0) {
        runner.quarantine(&done.chunk);
        return Err((None, e));
    }
    graph.chunk = done.chunk;
    graph._kept = done.kept;
    graph.output = output;
    Ok((graph, done.in_place))
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

impl<const N: usize, S, const F: u64> Runner<'_, N, S, F> {
    /// Gives the graph pool's physical memory back to the driver (and trims what the
    /// stream-ordered allocator and graph memory nodes cache), keeping every graph defined:
    /// the pool's virtual addresses stay reserved, so [`resume`](Self::resume) maps new memory
    /// at the same addresses and the graphs replay without re-capture. `run` fails with
    /// [`Error::Released`] in between. Returns the bytes of pool memory released.
    ///
    /// Refused while a tensor in pool memory is alive. If the release fails halfway, the runner
    /// counts as released (some memory is unmapped) and `resume` maps what is missing.
    pub fn release_memory(&mut self) -> Result<usize> {
        if self.released {
            return Ok(0);
        }
        self.rt
            .forbid_during_capture("releasing a runner's memory")?;
        let live = self.pool.live_tensors();
        if live > 0 {
            return Err(Error::PoolTensorsAlive {
                function: self.plan.function,
                count: live,
                during: "at release_memory",
            });
        }
        self.rt.synchronize()?;
        let released = self.pool.release();
        self.released = !self.pool.is_resident();
        released?;
        self.rt.release_cached_memory()?;
        Ok(self.pool.bytes())
    }

    /// Maps the pool's memory back after [`release_memory`](Self::release_memory); the graphs
    /// replay with the same results as before.
    pub fn resume(&mut self) -> Result<()> {
        self.rt
            .forbid_during_capture("resuming a runner's memory")?;
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
    ///
    /// Refused while released (nothing is mapped) and during a capture (the fill would be
    /// recorded into a graph that keeps none of this pool).
    pub fn poison_pool(&self) -> Result<()> {
        if self.released {
            return Err(Error::Released {
                function: self.plan.function,
            });
        }
        self.rt.forbid_during_capture("poison_pool")?;
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
