//! [`Runner`]: capture-at-init over every size, `run()` with dispatch, padding and replay, and
//! eager fallback. Written against [`Backend`]: the same runner serves cudagraph's own tensors,
//! plain cudarc and candle.

use std::time::Instant;

use super::output::Output;
use crate::backend::{Backend, CaptureRequest, Device};
use crate::dispatch::{GraphPlan, InputSpec, OnCaptureError};
use crate::error::{Error, Result};
use crate::ffi::ExecGraph;
use crate::islands::{IslandBank, IslandRecord, IslandRecorder, Islands};
use crate::keys::{HostKeys, KeyMiss, MAX_KEY_COMPONENTS};
use crate::policy::Warmup;
use crate::seal::Seal;
use crate::static_args::StaticArgs;
use crate::static_inputs::StaticInputs;
use crate::stats::{FALLBACK_REASONS, FallbackReason, RunnerStats, SizeStats};
use std::cell::RefCell;

/// The environment variable that turns the debug mode on for every runner built after it is
/// read (`1`): every call runs eagerly through the replay path (see
/// [`Runner::set_debug_eager`]).
pub const EAGER_ENV: &str = "CUDAGRAPH_EAGER";

/// The eager forward a runner captures and falls back to: the device, the tensor inputs, the
/// statics and the forward's [`Islands`] (their live arguments `L`).
pub type EagerFn<'m, const N: usize, S, B, L = ()> = Box<
    dyn Fn(
            &<B as Backend>::Device,
            [&<B as Backend>::Tensor; N],
            &S,
            &Islands<'m, '_, B, L>,
        ) -> Result<<B as Backend>::Tensor>
        + 'm,
>;

/// One captured graph (a size, at a key).
pub(super) struct SizeGraph<B: Backend> {
    /// The first segment (the whole graph without islands).
    pub(super) exec: ExecGraph,
    /// The segments after the first, one after each island.
    pub(super) segments: Vec<ExecGraph>,
    /// What the graph keeps alive: its memory, and buffers it reads that it must outlive.
    pub(super) keep: B::GraphKeep,
    /// Where its output lies (`size` rows).
    pub(super) output: B::OutputSlot,
}

/// Graphs of one function for every captured size, with dispatch and eager fallback.
///
/// Built by [`Runner::capture`], or wrapped in an [`FnRunner`](crate::FnRunner) by the `<fn>_graphs` constructor
/// that `#[cuda_graph]` generates (an `FnRunner` derefs to its `Runner`). `'m` is the borrow of
/// the model and device: the graphs hold pointers to the model's weights, so they can't move or
/// drop while the runner lives (with cudagraph's tensors every driver buffer a graph reads is
/// also kept alive by the graph itself). `S` is the statics type (a tuple of the static
/// arguments), `B` the [`Backend`]; the facade `cudagraph` names this type with defaults
/// (`Runner<'m, N, S = (), B = Native>`).
///
/// What the borrow means in practice:
/// - **Assigning a weight** while the runner lives (`model.w = new`) is a borrow error (E0506):
///   for new weights of the same shapes use [`refresh`](Self::refresh) (or the generated
///   `<fn>_graphs_refresh`), which re-records every size against the new forward and updates
///   the graphs in place.
/// - **Writing new values into a weight** (`rt.copy(&new, &model.w)`) keeps its address, and
///   the next replay reads the new values: the graphs hold the address, not the contents.
/// - **A helper generic over a runner** takes `&mut Runner<'_, N, S, B>` and needs no bound
///   (an `FnRunner` coerces to it):
///
/// ```
/// use cudagraph_runtime::{Backend, Result, Runner};
///
/// /// Runs a one-input runner of any backend and statics on the same input `times` times.
/// fn rerun<S, B: Backend>(
///     graphs: &mut Runner<'_, 1, S, B>,
///     input: &B::Tensor,
///     statics: &S,
///     times: usize,
/// ) -> Result<usize> {
///     let mut replays = 0;
///     for _ in 0..times {
///         replays += usize::from(graphs.run_with([input], statics)?.replayed());
///     }
///     Ok(replays)
/// }
/// ```
pub struct Runner<'m, const N: usize, S, B: Backend, L = ()> {
    pub(super) dev: &'m B::Device,
    pub(super) eager: EagerFn<'m, N, S, B, L>,
    /// The islands of each graph (indexed like the graphs; empty without islands): their
    /// closures borrow the model, as the eager forward does.
    pub(super) islands: Vec<Vec<IslandRecord<'m, B, L>>>,
    /// Everything else: what does not borrow the model (moved whole between runners of other
    /// lifetimes by a refresh).
    pub(super) core: RunnerCore<N, S, B, L>,
}

/// The parts of a [`Runner`] that neither borrow the model nor name the function.
pub(super) struct RunnerCore<const N: usize, S, B: Backend, L> {
    /// The islands' live arguments that warm-ups and captures run with.
    pub(super) live: L,
    /// The islands' input and output buffers, shared by every island and size.
    pub(super) bank: RefCell<IslandBank<B>>,
    /// The debug mode: every call eager through the replay path.
    pub(super) debug_eager: bool,
    pub(super) plan: GraphPlan,
    pub(super) specs: [InputSpec<B::DType>; N],
    pub(super) statics: S,
    pub(super) statics_eq: fn(&S, &S) -> bool,
    /// The host components of the plan's keys (bucketed values, variants), when it has any.
    pub(super) host_keys: Option<HostKeys<S>>,
    pub(super) inputs: StaticInputs<B, N>,
    /// One per (size, key): graph `g` is size index `g % sizes` at key combination
    /// `g / sizes` (see [`keys`](crate::keys)); `None` until captured (lazy mode).
    pub(super) graphs: Vec<Option<SizeGraph<B>>>,
    pub(super) memory: B::Memory,
    pub(super) stats: RunnerStats,
    pub(super) warned: [bool; FALLBACK_REASONS],
    pub(super) released: bool,
}

impl<const N: usize, S, B: Backend, L> std::fmt::Debug for Runner<'_, N, S, B, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("function", &self.core.plan.function)
            .field("sizes", &self.core.plan.table.sizes())
            .finish_non_exhaustive()
    }
}

impl<'m, const N: usize, S: StaticArgs + 'm, B: Backend> Runner<'m, N, S, B> {
    /// Captures `eager` once per size of `plan`, largest first, all inside one
    /// [`FreezeScope`](crate::FreezeScope). The backend is named by the type of `dev` (see
    /// [`Device`]): cudagraph's `Runtime` (pool mode: the first capture after an eager warm-up
    /// that measures the pool the graphs will share, the others straight into that pool,
    /// warming up only when one would not fit; see [`Warmup`]), an `Arc<CudaStream>` (plain
    /// cudarc, [`backend::raw`](crate::backend::raw)) or candle's `CudaDevice` (feature
    /// `candle`); the foreign backends capture in graph-memory-node mode
    /// ([`backend::nodes`](crate::backend::nodes)) and warm up every size. With a lazy plan
    /// nothing is captured here: each size on its first use. `statics` are the host values
    /// baked into every graph, compared with `==` at every call (see
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
    ///
    /// On plain cudarc (cudagraph's own tensors: see `cudagraph::Runner`'s examples):
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use cudagraph_runtime::cudarc::driver::{CudaContext, CudaStream};
    /// use cudagraph_runtime::{CudaTensor, DType, GraphPlan, InputSpec, Result, Runner};
    /// # fn main() -> Result<()> {
    /// let ctx = CudaContext::new(0).map_err(cudagraph_runtime::Error::driver("ctx"))?;
    /// // SAFETY: every buffer of this context is used on the one stream made below.
    /// unsafe { ctx.disable_event_tracking() };
    /// let stream = ctx.new_stream().map_err(cudagraph_runtime::Error::driver("stream"))?;
    /// let plan = GraphPlan::new("zeros_like", &[1, 2, 4], 0)?;
    /// let specs = [InputSpec::new(DType::F32, &[8])?];
    /// let mut graphs = Runner::capture(&stream, plan, specs, (), |s: &Arc<CudaStream>, [x]: [&CudaTensor; 1], _: &()| {
    ///     CudaTensor::zeros::<f32>(s, x.dims()) // a graph memory node under capture
    /// })?;
    /// let x = CudaTensor::zeros::<f32>(&stream, &[3, 8])?;
    /// let out = graphs.run([&x])?; // 3 rows: the size-4 graph, padded
    /// assert_eq!((out.size(), out.dims()), (Some(4), &[3, 8][..]));
    /// # Ok(()) }
    /// ```
    pub fn capture<D>(
        dev: &'m D,
        plan: GraphPlan,
        specs: [InputSpec<B::DType>; N],
        statics: S,
        eager: impl Fn(&B::Device, [&B::Tensor; N], &S) -> Result<B::Tensor> + 'm,
    ) -> Result<Self>
    where
        D: Device<Backend = B> + ?Sized,
    {
        Self::build(
            dev.as_backend_device(),
            plan,
            specs,
            statics,
            |a, b| a == b,
            Box::new(move |dev, inputs, statics, _: &Islands<'m, '_, B, ()>| {
                eager(dev, inputs, statics)
            }),
            (),
            None,
        )
    }
}

impl<'m, const N: usize, S: StaticArgs + 'm, B: Backend, L: 'm> Runner<'m, N, S, B, L> {
    /// [`capture`](Self::capture) of a forward with [`Islands`]: `eager` also gets the islands
    /// its ops that can't be captured run in, whose live arguments are `live` during warm-ups
    /// and captures and the caller's at every [`run_live`](Self::run_live). The code
    /// `#[cuda_graph]` generates for a forward taking `&Islands<L>` calls this.
    pub fn capture_live<D>(
        dev: &'m D,
        plan: GraphPlan,
        specs: [InputSpec<B::DType>; N],
        statics: S,
        live: L,
        eager: impl Fn(&B::Device, [&B::Tensor; N], &S, &Islands<'m, '_, B, L>) -> Result<B::Tensor>
        + 'm,
    ) -> Result<Self>
    where
        D: Device<Backend = B> + ?Sized,
    {
        Self::build(
            dev.as_backend_device(),
            plan,
            specs,
            statics,
            |a, b| a == b,
            Box::new(eager),
            live,
            None,
        )
    }

    /// [`capture_live`](Self::capture_live) of a plan keyed by more than the batch (see
    /// [`keys`](crate::keys)): `host_keys` reads the bucket of each bucketed value and the
    /// index of each variant from a call's statics, and gives the statics each key's graphs are
    /// captured with (`statics` with the keys' values put in). Dimension buckets come from the
    /// plan alone. The code `#[cuda_graph(buckets = [..], variants = [..])]` generates calls
    /// this; the statics `==` compares (see [`with_statics_eq`](Self::with_statics_eq)) should
    /// then leave the keyed ones out.
    #[allow(clippy::too_many_arguments)]
    pub fn capture_keyed<D>(
        dev: &'m D,
        plan: GraphPlan,
        specs: [InputSpec<B::DType>; N],
        statics: S,
        live: L,
        host_keys: HostKeys<S>,
        eager: impl Fn(&B::Device, [&B::Tensor; N], &S, &Islands<'m, '_, B, L>) -> Result<B::Tensor>
        + 'm,
    ) -> Result<Self>
    where
        D: Device<Backend = B> + ?Sized,
    {
        Self::build(
            dev.as_backend_device(),
            plan,
            specs,
            statics,
            |a, b| a == b,
            Box::new(eager),
            live,
            Some(host_keys),
        )
    }
}

impl<'m, const N: usize, S: 'm, B: Backend, L: 'm> Runner<'m, N, S, B, L> {
    #[allow(clippy::too_many_arguments)]
    fn build(
        dev: &'m B::Device,
        plan: GraphPlan,
        specs: [InputSpec<B::DType>; N],
        statics: S,
        statics_eq: fn(&S, &S) -> bool,
        eager: EagerFn<'m, N, S, B, L>,
        live: L,
        host_keys: Option<HostKeys<S>>,
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
        if plan.keys.host_components() > 0 && host_keys.is_none() {
            return Err(Error::invalid(
                plan.function,
                "the plan buckets host values or has variants: build the runner with `capture_keyed`, which reads them from the statics",
            ));
        }
        let host_keys = host_keys.filter(|_| plan.keys.host_components() > 0);
        if let Some(d) = plan
            .keys
            .dims()
            .iter()
            .find(|d| d.members.iter().any(|&(input, _)| input >= N))
        {
            return Err(Error::invalid(
                plan.function,
                format!(
                    "bucketed dimension `{}` names an input past the {N} inputs",
                    d.name
                ),
            ));
        }
        B::forbid_during_capture(Seal::new(), dev, "building a runner")?;
        B::prepare(Seal::new(), dev)?;
        let started = Instant::now();
        let inputs = StaticInputs::new(dev, &specs, plan.table.max(), &plan.pads, &plan.keys)?;
        let sizes = plan.table.sizes().to_vec();
        let combos = plan.keys.combinations();
        let graph_count = sizes.len().saturating_mul(combos);
        if graph_count > crate::keys::MAX_KEYED_GRAPHS {
            return Err(Error::invalid(
                plan.function,
                format!(
                    "{} sizes x {combos} key combinations make {graph_count} graphs, more than {}",
                    sizes.len(),
                    crate::keys::MAX_KEYED_GRAPHS
                ),
            ));
        }
        let stats = RunnerStats {
            function: plan.function,
            static_input_bytes: inputs.bytes(),
            calls_by_batch: vec![0; plan.table.max() + 1],
            sizes: (0..graph_count)
                .map(|g| SizeStats {
                    size: sizes[g % sizes.len()],
                    key: plan.keys.label(g / sizes.len()),
                    ..Default::default()
                })
                .collect(),
            keys: crate::stats::KeyHistograms::for_keys(&plan.keys),
            ..Default::default()
        };
        let mut runner = Self {
            dev,
            eager,
            islands: (0..graph_count).map(|_| Vec::new()).collect(),
            core: RunnerCore {
                live,
                bank: RefCell::new(IslandBank::default()),
                debug_eager: std::env::var(EAGER_ENV).is_ok_and(|v| v == "1"),
                graphs: (0..graph_count).map(|_| None).collect(),
                plan,
                specs,
                statics,
                statics_eq,
                host_keys,
                inputs,
                memory: B::new_memory(Seal::new(), dev),
                stats,
                warned: [false; FALLBACK_REASONS],
                released: false,
            },
        };
        if runner.core.plan.lazy || runner.core.plan.background {
            return Ok(runner);
        }
        if runner.core.debug_eager {
            // The debug mode captures nothing (a broken capture is what one may be bisecting);
            // turned off later, each size is captured at its first use.
            tracing::info!(target: "cudagraph", "`{}`: {EAGER_ENV}=1, no graph captured; every call runs eagerly through the replay path", runner.core.plan.function);
            return Ok(runner);
        }

        let progress = progress_bar(runner.core.plan.function, graph_count);
        let mut scope = B::freeze(Seal::new(), dev, B::reclaim_policy(Seal::new(), dev))?;
        // Largest first: the last combination holds every bucket at its largest.
        for slot in (0..graph_count).rev() {
            progress.set_message(runner.graph_label(slot));
            runner.capture_or_mark(slot)?;
            scope.between_graphs()?;
            progress.inc(1);
        }
        let (reclaims, _) = scope.exit()?;
        // The scope's exit trimmed graph memory: the largest graph is mapped again first.
        runner.upload_largest();
        progress.finish_and_clear();
        runner.core.stats.capture_wall = started.elapsed();
        runner.core.stats.reclaims = reclaims;
        runner.core.stats.graph_memory = graph_memory_usage::<B>(dev);
        tracing::info!(target: "cudagraph", "{}", runner.core.stats);
        Ok(runner)
    }
}

impl<'m, const N: usize, S, B: Backend, L> Runner<'m, N, S, B, L> {
    /// Compares static arguments with `eq` instead of `==` (the code `#[cuda_graph]` generates
    /// compares floats by their bits, so that a NaN static matches itself).
    pub fn with_statics_eq(mut self, eq: fn(&S, &S) -> bool) -> Self {
        self.core.statics_eq = eq;
        self
    }

    /// Captures `slot`; on failure, under [`OnCaptureError::Eager`], records the error and marks
    /// the size for eager execution instead of failing. Under [`OnCaptureError::Abort`] the
    /// error is recorded too (a lazy size that failed is not captured again) and returned.
    pub(super) fn capture_or_mark(&mut self, slot: usize) -> Result<()> {
        match self.capture_slot(slot) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.core.stats.sizes[slot].capture_error = Some(e.to_string());
                if self.core.plan.on_capture_error == OnCaptureError::Eager {
                    tracing::warn!(target: "cudagraph", "{e}; this size will run eagerly");
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// [`capture_or_mark`](Self::capture_or_mark) after the runner was built (lazy, staged
    /// and background captures): its time added to the stats' capture time, and the driver's
    /// graph-memory figures read again, whether it worked or not.
    pub(super) fn capture_after_build(&mut self, slot: usize) -> Result<()> {
        let started = Instant::now();
        let result = self.capture_or_mark(slot);
        self.core.stats.capture_wall += started.elapsed();
        self.core.stats.graph_memory = graph_memory_usage::<B>(self.dev);
        result
    }

    /// What a capture of graph `slot` is asked to do.
    pub(super) fn request(&self, slot: usize, warmup: Warmup) -> CaptureRequest {
        CaptureRequest {
            function: self.core.plan.function,
            size: self.core.size_of(slot),
            max_rows: self.core.plan.table.max(),
            warmup,
        }
    }

    /// `size 8` or `size 8 (max_context ≤ 2048, lora = true)`: graph `slot`, for messages.
    pub(super) fn graph_label(&self, slot: usize) -> String {
        let size = self.core.size_of(slot);
        match self.core.stats.sizes.get(slot).map(|s| s.key.as_str()) {
            Some(key) if !key.is_empty() => format!("size {size} ({key})"),
            _ => format!("size {size}"),
        }
    }

    /// Captures the graph of size index `slot`: the first capture warms up, later ones follow
    /// the plan's [`Warmup`] policy. Padded inputs are filled with their pad value first.
    pub(super) fn capture_slot(&mut self, slot: usize) -> Result<()> {
        let first = self.core.graphs.iter().all(Option::is_none);
        let warmup = if first {
            Warmup::Always
        } else {
            self.core.plan.warmup
        };
        let request = self.request(slot, warmup);
        self.core.inputs.fill_pads(self.dev)?;
        let views = self.core.views_for(slot)?;
        let keyed = self.core.statics_for(slot);
        let islands = RefCell::new(Vec::new());
        let captured = {
            let (eager, statics, live, bank) = (
                &self.eager,
                keyed.as_ref().unwrap_or(&self.core.statics),
                &self.core.live,
                &self.core.bank,
            );
            let mut body = |dev: &B::Device, segments: Option<&dyn crate::backend::Segments>| {
                let refs: [&B::Tensor; N] = std::array::from_fn(|i| &views[i]);
                capture_body(dev, refs, statics, live, bank, eager, segments, &islands)
            };
            B::capture(
                Seal::new(),
                self.dev,
                &mut self.core.memory,
                request,
                &mut body,
            )
        };
        drop(views);
        self.drop_unusable();
        let c = captured?;
        let islands = islands.into_inner();
        if islands.len() != c.segments.len() {
            return Err(Error::invalid(
                self.core.plan.function,
                "the capture's islands and segments disagree",
            ));
        }
        let s = &mut self.core.stats.sizes[slot];
        s.captured = true;
        s.capture_error = None;
        s.segment_nodes = std::iter::once(&c.exec)
            .chain(&c.segments)
            .map(ExecGraph::node_count)
            .collect();
        s.nodes = s.segment_nodes.iter().sum();
        s.segments = s.segment_nodes.len();
        s.pool_need = c.need;
        s.capture = c.timing;
        self.islands[slot] = islands;
        self.core.graphs[slot] = Some(SizeGraph {
            exec: c.exec,
            segments: c.segments,
            keep: c.keep,
            output: c.output,
        });
        self.core.stats.pool_bytes = B::memory_bytes(Seal::new(), &self.core.memory);
        self.core.stats.island_buffer_bytes = self.core.bank.borrow().bytes();
        Ok(())
    }

    /// Drops every graph whose memory the backend withdrew (a capture whose forward kept a
    /// tensor in memory every replay rewrites): captured again, elsewhere, on its next use.
    pub(super) fn drop_unusable(&mut self) {
        for (slot, graph) in self.core.graphs.iter_mut().enumerate() {
            if graph
                .as_ref()
                .is_some_and(|g| !B::usable(Seal::new(), &self.core.memory, &g.keep))
            {
                *graph = None;
                self.core.stats.sizes[slot].captured = false;
            }
        }
        self.core.stats.pool_bytes = B::memory_bytes(Seal::new(), &self.core.memory);
    }

    /// Runs the function on `inputs`: replays the graph of the smallest captured size that fits
    /// the batch (inputs copied into its static buffers, padded), or runs it eagerly when no
    /// graph applies (counted in [`stats`](Self::stats), logged once per reason).
    ///
    /// Errors: an empty batch, inputs whose leading dimensions differ, a tensor of another
    /// device or stream, a size whose lazy capture failed earlier under
    /// [`OnCaptureError::Abort`], or any error of the replay or the eager function.
    ///
    /// Statics are the host values a graph froze in, passed as a tuple (one static: `(v,)`); a
    /// runner with statics has no [`run`](Self::run):
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use cudagraph_runtime::cudarc::driver::{CudaContext, CudaStream};
    /// use cudagraph_runtime::{CudaTensor, DType, Error, GraphPlan, InputSpec, Result, Runner};
    /// # fn main() -> Result<()> {
    /// let ctx = CudaContext::new(0).map_err(Error::driver("ctx"))?;
    /// // SAFETY: every buffer of this context is used on the one stream made below.
    /// unsafe { ctx.disable_event_tracking() };
    /// let stream = ctx.new_stream().map_err(Error::driver("stream"))?;
    /// let plan = GraphPlan::new("scaled", &[1, 2, 4], 0)?;
    /// let specs = [InputSpec::new(DType::F32, &[8])?];
    /// let forward = |s: &Arc<CudaStream>, [x]: [&CudaTensor; 1], (_scale,): &(f32,)| {
    ///     // ... launch kernels that take `_scale` (a host value: frozen into the graph)
    ///     CudaTensor::zeros::<f32>(s, x.dims())
    /// };
    /// let mut graphs = Runner::capture(&stream, plan, specs, (0.5f32,), forward)?;
    /// let x = CudaTensor::zeros::<f32>(&stream, &[2, 8])?;
    /// assert!(graphs.run_with([&x], &(0.5,))?.replayed()); // the captured value: a replay
    /// assert!(!graphs.run_with([&x], &(0.7,))?.replayed()); // another value: runs eagerly
    /// # Ok(()) }
    /// ```
    pub fn run_with(&mut self, inputs: [&B::Tensor; N], statics: &S) -> Result<Output<'_, B>>
    where
        L: NoLive,
    {
        self.run_live(inputs, statics, &L::NONE)
    }

    /// [`run_with`](Self::run_with) for a forward with [`Islands`]: `live` are the live
    /// arguments its islands read at this call (at every replay as in the eager fallback).
    pub fn run_live(
        &mut self,
        inputs: [&B::Tensor; N],
        statics: &S,
        live: &L,
    ) -> Result<Output<'_, B>> {
        let function = self.core.plan.function;
        if self.core.released {
            return Err(Error::Released { function });
        }
        // A replay inside another capture would record this runner's graph into a graph that
        // keeps none of its memory.
        B::forbid_during_capture(Seal::new(), self.dev, "running a runner")?;
        let batch = B::shape(Seal::new(), inputs[self.core.plan.batch_input])?;
        let Some(&n) = batch.dims().first() else {
            return Err(Error::invalid(
                function,
                "the batch input needs a leading (batch) dimension",
            ));
        };
        let mut shapes_match = true;
        let mut shapes = Vec::with_capacity(N);
        for (i, t) in inputs.iter().enumerate() {
            B::check_tensor(Seal::new(), self.dev, function, t)?;
            let shape = B::shape(Seal::new(), t)?;
            let dims = shape.dims();
            if dims.first() != Some(&n) {
                return Err(Error::invalid(
                    function,
                    format!(
                        "input {i} has shape {dims:?}; every input's leading dimension must be the batch ({n})"
                    ),
                ));
            }
            shapes_match &=
                self.core
                    .inputs
                    .accepts(i, &self.core.specs[i], B::dtype(Seal::new(), t), dims);
            shapes.push(shape);
        }
        if n == 0 {
            return Err(Error::invalid(function, "empty batch (0 rows)"));
        }
        match self.core.stats.calls_by_batch.get_mut(n) {
            Some(count) => *count += 1,
            None => *self.core.stats.calls_over.entry(n).or_insert(0) += 1,
        }
        let dims: [&[usize]; N] = std::array::from_fn(|i| shapes[i].dims());
        let (graph, key_index) = self.core.dispatch(n, statics, &dims);
        let slot = graph.ok();
        // The statics the forward runs with: the buckets' values in place of the call's.
        let keyed = self.core.statics_at(statics, key_index.as_ref());
        let statics_match = (self.core.statics_eq)(statics, &self.core.statics);
        if let Some(slot) = slot.filter(|_| !self.core.debug_eager) {
            // A graph whose memory was withdrawn since (a capture that failed or panicked after
            // keeping a tensor set its chunk aside) is captured again before it replays.
            if self.core.graphs[slot]
                .as_ref()
                .is_some_and(|g| !B::usable(Seal::new(), &self.core.memory, &g.keep))
            {
                self.drop_unusable();
            }
            let failed = self.core.stats.sizes[slot].capture_error.clone();
            match failed {
                // Lazy capture: the first call that would replay this size captures it.
                None if self.core.graphs[slot].is_none()
                    && shapes_match
                    && statics_match
                    && !self.core.plan.background =>
                {
                    self.capture_after_build(slot)?;
                }
                // (A background capture's failure leaves its size eager instead: the call that
                // triggered it had already been served.)
                Some(message)
                    if self.core.plan.on_capture_error == OnCaptureError::Abort
                        && !self.core.plan.background =>
                {
                    return Err(Error::CaptureFailedEarlier {
                        function,
                        size: self.core.size_of(slot),
                        message,
                    });
                }
                _ => {}
            }
        }
        let reason = match slot {
            None => Some(graph.err().unwrap_or(FallbackReason::TooLarge)),
            Some(slot) if self.core.stats.sizes[slot].capture_error.is_some() => {
                Some(FallbackReason::CaptureFailed)
            }
            Some(_) if !shapes_match => Some(FallbackReason::ShapeMismatch),
            Some(_) if !statics_match => Some(FallbackReason::StaticChanged),
            Some(slot) if self.core.graphs[slot].is_none() && self.core.plan.background => {
                Some(FallbackReason::NotCapturedYet)
            }
            Some(_) => None,
        };
        match (slot, reason) {
            // The debug mode takes every call a graph would replay, also of a size whose capture
            // failed (it runs eagerly what that graph would have replayed).
            (
                Some(slot),
                None | Some(FallbackReason::CaptureFailed) | Some(FallbackReason::NotCapturedYet),
            ) if self.core.debug_eager => {
                self.debug_eager(slot, n, &inputs, keyed.as_ref().unwrap_or(statics), live)
            }
            (Some(slot), None) => self.replay(slot, n, &inputs, live),
            // Background capture: this call runs eagerly, then its size is captured (its output
            // is the eager forward's own tensor, which no capture touches).
            (Some(slot), Some(FallbackReason::NotCapturedYet)) => {
                let statics = keyed.as_ref().unwrap_or(statics);
                let tensor =
                    self.fallback_tensor(FallbackReason::NotCapturedYet, n, inputs, statics, live)?;
                self.capture_in_background(slot);
                Ok(Output {
                    tensor,
                    replayed: false,
                    size: None,
                    dev: self.dev,
                })
            }
            (_, reason) => {
                let reason = reason.unwrap_or(FallbackReason::TooLarge);
                self.fallback(reason, n, inputs, keyed.as_ref().unwrap_or(statics), live)
            }
        }
    }

    /// Copies a call's inputs into the static buffers graph `slot` reads (padded to its size
    /// and to its key's dimension buckets).
    fn fill_inputs(&self, slot: usize, inputs: &[&B::Tensor; N]) -> Result<()> {
        let dims: Vec<usize> = self.core.plan.keys.dim_sizes(self.core.combo_of(slot));
        self.core
            .inputs
            .fill(self.dev, inputs, self.core.size_of(slot), &dims)
    }

    fn replay(
        &mut self,
        slot: usize,
        n: usize,
        inputs: &[&B::Tensor; N],
        live: &L,
    ) -> Result<Output<'_, B>> {
        self.fill_inputs(slot, inputs)?;
        self.replay_filled(slot, n, live)
    }

    /// Replays graph `slot` on what its static inputs hold now (a call's `n` rows, padded).
    pub(super) fn replay_filled(
        &mut self,
        slot: usize,
        n: usize,
        live: &L,
    ) -> Result<Output<'_, B>> {
        let Some(graph) = &self.core.graphs[slot] else {
            return Err(Error::invalid(
                self.core.plan.function,
                "graph missing after capture",
            ));
        };
        let islands = &self.islands[slot];
        if islands.len() != graph.segments.len() {
            return Err(Error::invalid(
                self.core.plan.function,
                "a size's islands and segments disagree",
            ));
        }
        // SAFETY: the graph's memory is alive: `keep` (its pool chunk and noted buffers, or its
        // node-mode figures) is stored beside it in this runner, the runner is not released
        // (checked by `run_live`), and the model's buffers are borrowed for `'m`.
        unsafe { graph.exec.launch() }.map_err(Error::driver("cuGraphLaunch"))?;
        if !islands.is_empty() {
            let bank = self.core.bank.borrow();
            let function = self.core.plan.function;
            let size = self.core.stats.sizes[slot].size;
            let at = |place: String| {
                move |e: Error| Error::InForwardPart {
                    place: format!("`{function}` replayed at size {size}, {place}"),
                    source: Box::new(e),
                }
            };
            for (k, (island, segment)) in islands.iter().zip(&graph.segments).enumerate() {
                island
                    .replay(self.dev, &bank, live)
                    .map_err(at(format!("island {}", k + 1)))?;
                // SAFETY: as for the first segment: every segment of a size shares its `keep`,
                // and the island buffers the segment reads are the runner's (`bank`).
                unsafe { segment.launch() }
                    .map_err(Error::driver("cuGraphLaunch"))
                    .map_err(at(format!("segment {} (after island {})", k + 2, k + 1)))?;
            }
            self.core.stats.sizes[slot].island_calls +=
                islands.iter().filter(|i| !i.is_break()).count() as u64;
        }
        let s = &mut self.core.stats.sizes[slot];
        s.replays += 1;
        s.rows += n as u64;
        s.padded_rows += (s.size - n) as u64;
        let tensor = B::output_view(
            Seal::new(),
            self.dev,
            &self.core.memory,
            &graph.keep,
            &graph.output,
            n,
        )?;
        Ok(Output {
            tensor,
            replayed: true,
            size: Some(s.size),
            dev: self.dev,
        })
    }

    /// The debug mode's run of a call a graph would replay: the forward eagerly on the size's
    /// static inputs (the call's rows, the rest padded), as a warm-up runs it, its islands in
    /// place; the output is the first `n` rows, through the same output type.
    fn debug_eager(
        &mut self,
        slot: usize,
        n: usize,
        inputs: &[&B::Tensor; N],
        statics: &S,
        live: &L,
    ) -> Result<Output<'_, B>> {
        let size = self.core.size_of(slot);
        self.fill_inputs(slot, inputs)?;
        let views = self.core.views_for(slot)?;
        let refs: [&B::Tensor; N] = std::array::from_fn(|i| &views[i]);
        let full = (self.eager)(self.dev, refs, statics, &Islands::direct(live))?;
        drop(views);
        B::check_tensor(Seal::new(), self.dev, self.core.plan.function, &full)?;
        let tensor = B::narrow(Seal::new(), &full, n)?;
        drop(full);
        let s = &mut self.core.stats.sizes[slot];
        s.debug_eager_calls += 1;
        s.rows += n as u64;
        s.padded_rows += (size - n) as u64;
        Ok(Output {
            tensor,
            replayed: false,
            size: Some(size),
            dev: self.dev,
        })
    }

    /// Turns the debug mode on or off (initially on when `CUDAGRAPH_EAGER=1`): calls a graph
    /// would replay run the forward eagerly instead, through the same dispatch, padding and
    /// output path (the size's static inputs, padded rows included, and its islands in place),
    /// as SGLang's `--debug-cuda-graph` does, so a wrong result can be told to come from the
    /// graphs or from the model without touching the model. [`Output::size`] still names the
    /// size, [`Output::replayed`] is `false`; the stats count them per size.
    pub fn set_debug_eager(&mut self, on: bool) {
        self.core.debug_eager = on;
    }

    /// Whether the debug mode is on (see [`set_debug_eager`](Self::set_debug_eager)).
    pub fn debug_eager_enabled(&self) -> bool {
        self.core.debug_eager
    }

    fn fallback(
        &mut self,
        reason: FallbackReason,
        n: usize,
        inputs: [&B::Tensor; N],
        statics: &S,
        live: &L,
    ) -> Result<Output<'_, B>> {
        let tensor = self.fallback_tensor(reason, n, inputs, statics, live)?;
        Ok(Output {
            tensor,
            replayed: false,
            size: None,
            dev: self.dev,
        })
    }

    /// The eager forward of a fallback, counted and checked.
    fn fallback_tensor(
        &mut self,
        reason: FallbackReason,
        n: usize,
        inputs: [&B::Tensor; N],
        statics: &S,
        live: &L,
    ) -> Result<B::Tensor> {
        self.core.stats.fallbacks[reason.index()] += 1;
        if !self.core.warned[reason.index()] {
            self.core.warned[reason.index()] = true;
            tracing::warn!(
                target: "cudagraph",
                function = self.core.plan.function,
                batch = n,
                "running eagerly: {reason} (logged once per reason; see Runner::stats)"
            );
        }
        let tensor = (self.eager)(self.dev, inputs, statics, &Islands::direct(live))?;
        // The output borrows the runner and `to_owned` copies it on the runner's stream: one of
        // another device or stream (a forward's eager path may differ from its captured one)
        // would be read there unordered with the stream that writes it.
        B::check_tensor(Seal::new(), self.dev, self.core.plan.function, &tensor)?;
        Ok(tensor)
    }

    /// What the runner has done so far.
    pub fn stats(&self) -> &RunnerStats {
        &self.core.stats
    }

    /// The size list that would have minimised padding on the traffic seen so far, with at most
    /// `budget` graphs (see [`advise_sizes`](crate::advise_sizes)).
    pub fn advise_sizes(&self, budget: usize) -> Result<crate::SizeAdvice> {
        crate::advise_sizes(&self.core.stats.batch_histogram(), budget)
    }

    /// The buckets of the bucketed value or dimension `name` (as the attribute names it:
    /// `max_context`, `block_tables[1]`) that would have minimised the rounding up on the calls
    /// seen so far, at most `budget` of them (see [`advise_buckets`](crate::advise_buckets)).
    /// An error names the keys there are when `name` is none of them or is a variant.
    pub fn advise_buckets(&self, name: &str, budget: usize) -> Result<crate::BucketAdvice> {
        let keys = &self.core.stats.keys;
        let bucketed = keys
            .components
            .iter()
            .filter(|h| h.kind != crate::KeyKind::Variant);
        match keys.get(name).filter(|h| h.kind != crate::KeyKind::Variant) {
            Some(h) => crate::advise_buckets(h.name, &h.pairs(), budget),
            None => {
                let names: Vec<&str> = bucketed.map(|h| h.name).collect();
                Err(crate::Error::invalid(
                    "advise_buckets",
                    format!(
                        "`{}` has no bucketed value or dimension `{name}` (it has: {})",
                        self.core.plan.function,
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                ))
            }
        }
    }

    /// The captured sizes, ascending.
    pub fn sizes(&self) -> &[usize] {
        self.core.plan.table.sizes()
    }

    /// Device bytes of the graph memory: the pool (cudagraph's tensors), or what the driver
    /// reserves for graph memory nodes on this device (foreign backends; see
    /// [`backend::nodes`](crate::backend::nodes)).
    pub fn pool_bytes(&self) -> usize {
        B::memory_bytes(Seal::new(), &self.core.memory)
    }

    /// Runs the eager function directly (no graph, not counted), e.g. as a reference. Its
    /// output is checked as a fallback's is: a tensor of the runner's device and stream.
    pub fn run_eager(&self, inputs: [&B::Tensor; N], statics: &S) -> Result<B::Tensor>
    where
        L: NoLive,
    {
        self.run_eager_live(inputs, statics, &L::NONE)
    }

    /// [`run_eager`](Self::run_eager) with the islands' live arguments.
    pub fn run_eager_live(
        &self,
        inputs: [&B::Tensor; N],
        statics: &S,
        live: &L,
    ) -> Result<B::Tensor> {
        let function = self.core.plan.function;
        for t in &inputs {
            B::check_tensor(Seal::new(), self.dev, function, t)?;
        }
        let tensor = (self.eager)(self.dev, inputs, statics, &Islands::direct(live))?;
        B::check_tensor(Seal::new(), self.dev, function, &tensor)?;
        Ok(tensor)
    }
}

impl<const N: usize, S, B: Backend, L> RunnerCore<N, S, B, L> {
    /// The batch size of graph `g`.
    pub(super) fn size_of(&self, g: usize) -> usize {
        let sizes = self.plan.table.sizes();
        sizes[g % sizes.len()]
    }

    /// The key combination of graph `g`.
    pub(super) fn combo_of(&self, g: usize) -> usize {
        g / self.plan.table.sizes().len()
    }

    /// The static input views graph `g` reads: its size's rows, a bucketed dimension at its
    /// key's bucket.
    pub(super) fn views_for(&self, g: usize) -> Result<[B::Tensor; N]> {
        let dims: Vec<usize> = self.plan.keys.dim_sizes(self.combo_of(g));
        self.inputs.views(self.size_of(g), &dims)
    }

    /// The statics graph `g` is captured with, when the plan has host keys: the runner's with
    /// the key's bucket values and variants put in (`None`: the runner's own).
    pub(super) fn statics_for(&self, g: usize) -> Option<S> {
        let host = self.host_keys?;
        let index = self.plan.keys.indices(self.combo_of(g));
        Some((host.at)(
            &self.statics,
            &index[..self.plan.keys.host_components()],
        ))
    }

    /// The graph a call of `n` rows, `statics` and inputs of dimensions `dims` replays, or why
    /// none: the size's slot at the call's key combination. Also returns the call's key
    /// indices when its host components all have a graph set (the statics the forward runs
    /// with put the buckets' values in), and records the key in the stats.
    #[allow(clippy::type_complexity)]
    pub(super) fn dispatch(
        &mut self,
        n: usize,
        statics: &S,
        dims: &[&[usize]],
    ) -> (
        std::result::Result<usize, FallbackReason>,
        Option<[usize; MAX_KEY_COMPONENTS]>,
    ) {
        let keys = &self.plan.keys;
        let (values, host, components) = (
            keys.values().len(),
            keys.host_components(),
            keys.components(),
        );
        let mut raw = [0u64; MAX_KEY_COMPONENTS];
        let mut index = [0usize; MAX_KEY_COMPONENTS];
        let mut host_miss = None;
        let mut raw_ok = true;
        if let Some(host_keys) = self.host_keys {
            match (host_keys.of)(statics, &mut raw[..host]) {
                Ok(()) => {
                    for (slot, &i) in index[values..host].iter_mut().zip(&raw[values..host]) {
                        *slot = i as usize;
                    }
                    if let Err(m) = keys.value_indices(&raw[..values], &mut index[..values]) {
                        host_miss = Some(m);
                    }
                }
                Err(m) => {
                    host_miss = Some(m);
                    raw_ok = false;
                }
            }
        }
        let dim_miss = keys.dim_indices(dims, &mut index[host..components]).err();
        self.stats.keys.record(keys, &raw[..host], dims, raw_ok);
        let miss = host_miss.or(dim_miss);
        let slot = match (self.plan.table.slot(n), miss) {
            (None, _) => Err(FallbackReason::TooLarge),
            (Some(_), Some(KeyMiss::AboveBuckets)) => Err(FallbackReason::AboveBuckets),
            (Some(_), Some(KeyMiss::UnlistedVariant)) => Err(FallbackReason::UnlistedVariant),
            (Some(slot), None) => {
                Ok(slot + self.plan.table.sizes().len() * keys.combination(&index[..components]))
            }
        };
        (slot, host_miss.is_none().then_some(index))
    }

    /// The statics the forward runs with for a call whose host key indices are `index`: the
    /// buckets' values put in (`None`: the call's own).
    pub(super) fn statics_at(
        &self,
        statics: &S,
        index: Option<&[usize; MAX_KEY_COMPONENTS]>,
    ) -> Option<S> {
        let (host, index) = (self.host_keys?, index?);
        Some((host.at)(
            statics,
            &index[..self.plan.keys.host_components()],
        ))
    }
}

impl<'m, const N: usize, S, B: Backend, L> Runner<'m, N, S, B, L> {
    /// The device (for cudagraph's tensors, the runtime) the graphs run on.
    pub fn device(&self) -> &'m B::Device {
        self.dev
    }
}

impl<'m, const N: usize, S, B: Backend, L> Runner<'m, N, S, B, L> {
    /// [`run_with`](Self::run_with) for a function without static arguments (`S = ()`).
    ///
    /// On a runner whose function has `static_args`, calling `run` is a compile error that
    /// says to call `run_with(inputs, &statics)` (see [`NoStatics`]).
    pub fn run(&mut self, inputs: [&B::Tensor; N]) -> Result<Output<'_, B>>
    where
        S: NoStatics,
        L: NoLive,
    {
        self.run_live(inputs, &S::NONE, &L::NONE)
    }
}

/// The live-arguments type of a runner whose forward has no [`Islands`] (or islands that read
/// none): implemented for `()` only, so that [`Runner::run_with`] on a runner whose islands
/// read live arguments fails to compile with a message naming
/// [`run_live`](Runner::run_live).
#[diagnostic::on_unimplemented(
    message = "this runner's islands read live arguments (`{Self}`): call `run_live(inputs, &statics, &live)`",
    label = "`run` and `run_with` are only for forwards whose islands read no live arguments",
    note = "the live arguments are the `L` of the forward's `&Islands<L>`, passed at every call: `graphs.run_live([&x], &(), &(max_context,))`"
)]
pub trait NoLive: sealed::Sealed {
    /// The value of no live arguments.
    const NONE: Self;
}

impl NoLive for () {
    const NONE: Self = ();
}

/// The forward as a capture of one size calls it (`segments`: the recording's, none for a
/// warm-up): with islands that record into `islands` (and `bank`) when it records, and run in
/// place when it warms up.
#[allow(clippy::too_many_arguments)]
pub(super) fn capture_body<'m, const N: usize, S, B: Backend, L>(
    dev: &B::Device,
    refs: [&B::Tensor; N],
    statics: &S,
    live: &L,
    bank: &RefCell<IslandBank<B>>,
    eager: &EagerFn<'m, N, S, B, L>,
    segments: Option<&dyn crate::backend::Segments>,
    islands: &RefCell<Vec<IslandRecord<'m, B, L>>>,
) -> Result<B::Tensor> {
    match segments {
        // A warm-up that records nothing (node mode): islands in place, numbered for errors.
        None => {
            let in_place = crate::islands::InPlace::new();
            eager(dev, refs, statics, &Islands::recording(live, &in_place))
        }
        Some(segments) => {
            let recorder = IslandRecorder::new(segments, bank);
            let out = eager(dev, refs, statics, &Islands::recording(live, &recorder))
                .map_err(|e| recorder.locate(e));
            let records = recorder.finish();
            let out = out?;
            *islands.borrow_mut() = records?;
            Ok(out)
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
}

/// The statics type of a runner without static arguments: implemented for `()` only, so that
/// [`Runner::run`] on a runner with statics fails to compile with a message naming
/// [`run_with`](Runner::run_with) (instead of a bare "no method named `run`").
#[diagnostic::on_unimplemented(
    message = "this runner's function has static arguments (`{Self}`): call `run_with(inputs, &statics)`",
    label = "`run` is only for functions without `static_args`",
    note = "the statics are a tuple, one value per static, in `static_args` order: `graphs.run_with([&x], &(1e-5,))`"
)]
pub trait NoStatics: sealed::Sealed {
    /// The value of no statics.
    const NONE: Self;
}

impl NoStatics for () {
    const NONE: Self = ();
}

/// The driver's graph-memory figures for `dev` (node mode), for stats and estimates: a failed
/// query is logged, not allowed to fail the capture that succeeded.
pub(super) fn graph_memory_usage<B: Backend>(dev: &B::Device) -> Option<crate::GraphMemoryUsage> {
    B::graph_memory_usage(Seal::new(), dev).unwrap_or_else(|e| {
        tracing::debug!(target: "cudagraph", error = %e, "graph memory figures unavailable");
        None
    })
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
