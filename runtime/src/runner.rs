//! [`Runner`]: capture-at-init over every size, `run()` with dispatch, padding and replay, eager
//! fallback, and [`Output`] borrowing the runner.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use crate::capture::capture_one;
use crate::context::Runtime;
use crate::dispatch::{GraphPlan, InputSpec, StaticInputs};
use crate::error::{Error, Result};
use crate::ffi::ExecGraph;
use crate::freeze::FreezeScope;
use crate::pool::{GraphPool, PoolChunk};
use crate::stats::{FallbackReason, RunnerStats, SizeStats};
use crate::tensor::Tensor;

/// The eager forward a runner captures and falls back to.
pub type EagerFn<'m, const N: usize, S> =
    Box<dyn Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'm>;

/// One captured size.
struct SizeGraph {
    exec: ExecGraph,
    /// Pool memory the graph reads and writes; kept alive with it.
    _chunk: Arc<PoolChunk>,
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
    /// Indexed like `plan.table.sizes()`.
    graphs: Vec<SizeGraph>,
    pool: GraphPool,
    stats: RunnerStats,
    warned: [bool; 3],
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
    /// Captures `eager` once per size of `plan`, largest first, each after a warm-up run, all
    /// inside one [`FreezeScope`]. `statics` are the host values baked into every graph.
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
        let eager: EagerFn<'m, N, S> = Box::new(eager);
        let inputs = StaticInputs::new(rt, &specs, plan.table.max())?;
        let mut pool = GraphPool::new();
        let sizes = plan.table.sizes().to_vec();
        let mut stats = RunnerStats {
            function: plan.function,
            static_input_bytes: inputs.bytes(),
            ..Default::default()
        };

        let progress = progress_bar(plan.function, sizes.len());
        let mut scope = FreezeScope::enter(rt, rt.reclaim_policy())?;
        let mut captured: Vec<(usize, SizeGraph, SizeStats)> = Vec::with_capacity(sizes.len());
        for &size in sizes.iter().rev() {
            progress.set_message(format!("size {size}"));
            let views = inputs.views(size)?;
            let mut body = |rt: &Runtime| {
                let refs: [&Tensor; N] = std::array::from_fn(|i| &views[i]);
                eager(rt, refs, &statics)
            };
            let c = capture_one(rt, &mut pool, plan.function, size, &mut body)?;
            if c.value.rank() == 0 || c.value.rows() != size {
                return Err(Error::Capture {
                    function: plan.function,
                    size,
                    site: None,
                    source: Box::new(Error::invalid(
                        plan.function,
                        format!(
                            "the output's leading dimension must be the batch ({size}), got shape {:?}",
                            c.value.shape()
                        ),
                    )),
                });
            }
            let size_stats = SizeStats {
                size,
                nodes: c.exec.node_count(),
                pool_need: c.pool_need,
                capture: c.timing,
                ..Default::default()
            };
            captured.push((
                size,
                SizeGraph {
                    exec: c.exec,
                    _chunk: c.chunk,
                    output: c.value,
                },
                size_stats,
            ));
            scope.between_graphs()?;
            progress.inc(1);
        }
        let (reclaims, _) = scope.exit()?;
        progress.finish_and_clear();

        captured.sort_by_key(|(size, ..)| *size);
        let mut graphs = Vec::with_capacity(captured.len());
        for (_, graph, size_stats) in captured {
            graphs.push(graph);
            stats.sizes.push(size_stats);
        }
        stats.pool_bytes = pool.bytes();
        stats.capture_wall = started.elapsed();
        stats.reclaims = reclaims;
        tracing::info!(target: "cudagraph", "{stats}");
        Ok(Self {
            rt,
            plan,
            specs,
            statics,
            eager,
            inputs,
            graphs,
            pool,
            stats,
            warned: [false; 3],
            released: false,
        })
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
        let slot = self.plan.table.slot(n);
        let reason = match slot {
            None => Some(FallbackReason::TooLarge),
            Some(_) if !self.specs.iter().zip(&inputs).all(|(s, t)| s.matches(t)) => {
                Some(FallbackReason::ShapeMismatch)
            }
            Some(_) if *statics != self.statics => Some(FallbackReason::StaticChanged),
            Some(_) => None,
        };
        match (slot, reason) {
            (Some(slot), None) => self.replay(slot, n, &inputs),
            (_, Some(reason)) => self.fallback(reason, n, inputs, statics),
            (None, None) => unreachable!("no slot always has a reason"),
        }
    }

    fn replay(&mut self, slot: usize, n: usize, inputs: &[&Tensor; N]) -> Result<Output<'_>> {
        self.inputs.fill(self.rt, inputs)?;
        let graph = &self.graphs[slot];
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

    /// What the runner has done so far.
    pub fn stats(&self) -> &RunnerStats {
        &self.stats
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
