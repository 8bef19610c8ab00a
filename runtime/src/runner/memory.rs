//! A runner's graph memory: release and resume, the poison test aid, and the estimate made
//! before committing to a capture.

use super::run::Runner;
use crate::backend::{Backend, Device};
use crate::dispatch::{GraphPlan, InputSpec};
use crate::error::{Error, Result};
use crate::seal::Seal;
use crate::static_args::StaticArgs;

impl<const N: usize, S, B: Backend, L> Runner<'_, N, S, B, L> {
    /// Gives the graph memory's physical memory back to the driver (and trims what the
    /// stream-ordered allocator and graph memory nodes cache), keeping every graph defined:
    /// with cudagraph's tensors the pool's virtual addresses stay reserved, so
    /// [`resume`](Self::resume) maps new memory at the same addresses; with graph memory nodes
    /// the driver maps it again at the next launch. The graphs replay without re-capture. `run`
    /// fails with [`Error::Released`] in between. Returns the bytes of graph memory released.
    ///
    /// Refused while a tensor in pool memory is alive. If the release fails halfway, the runner
    /// counts as released (some memory is unmapped) and `resume` maps what is missing.
    pub fn release_memory(&mut self) -> Result<usize> {
        if self.core.released {
            return Ok(0);
        }
        B::forbid_during_capture(Seal::new(), self.dev, "releasing a runner's memory")?;
        B::synchronize(Seal::new(), self.dev)?;
        let bytes = B::memory_bytes(Seal::new(), &self.core.memory);
        let (released, result) = B::release(Seal::new(), self.dev, &mut self.core.memory);
        self.core.released = released;
        let function = self.core.plan.function;
        result.map_err(|e| match e {
            Error::PoolTensorsAlive { count, during, .. } => Error::PoolTensorsAlive {
                function,
                count,
                during,
            },
            e => e,
        })?;
        B::release_cached_memory(Seal::new(), self.dev)?;
        Ok(bytes)
    }

    /// Maps the graph memory back after [`release_memory`](Self::release_memory); the graphs
    /// replay with the same results as before.
    ///
    /// The graph with the most graph memory is then uploaded (`cuGraphUpload`). With graph
    /// memory nodes (candle, plain cudarc) that maps its memory before the traffic's first
    /// launches map the others; a failed upload is logged, and the first launch maps instead.
    pub fn resume(&mut self) -> Result<()> {
        B::forbid_during_capture(Seal::new(), self.dev, "resuming a runner's memory")?;
        if self.core.released {
            B::resume(Seal::new(), self.dev, &mut self.core.memory)?;
            self.core.released = false;
            self.upload_largest();
        }
        Ok(())
    }

    /// Uploads the captured graph with the most graph memory (all its segments), after a
    /// capture or a resume left every graph unmapped. With graph memory nodes (candle, plain
    /// cudarc) an upload is where the driver maps a graph's memory; left to the first
    /// launches, the mapping would follow the traffic, and a small graph mapped first may
    /// leave the largest to map beside it rather than over it (`bench/NOTES.md` §15 measures
    /// whether it does). With cudagraph's pool the memory is mapped already, and the upload
    /// spares the first replay its set-up. An upload only prepares: a failure is logged, and
    /// the first launch does the work instead.
    pub(super) fn upload_largest(&self) {
        let largest = (0..self.core.graphs.len())
            .filter(|&g| self.core.graphs[g].is_some())
            .max_by_key(|&g| self.core.stats.sizes[g].pool_need);
        let Some(graph) = largest.and_then(|g| self.core.graphs[g].as_ref()) else {
            return;
        };
        for exec in std::iter::once(&graph.exec).chain(&graph.segments) {
            if let Err(e) = exec.upload() {
                tracing::warn!(
                    target: "cudagraph",
                    "{}: uploading the largest graph failed ({e}); its first launch maps its memory",
                    self.core.plan.function
                );
                return;
            }
        }
    }

    /// Whether the graph memory is released.
    pub fn is_released(&self) -> bool {
        self.core.released
    }

    /// Test aid: fills the whole graph memory with `0xFF` bytes (NaN in bf16 and f32), so a
    /// replay that leaves an output element unwritten shows up as NaN.
    ///
    /// Refused while released (nothing is mapped) and during a capture (the fill would be
    /// recorded into a graph that keeps none of this memory).
    pub fn poison_pool(&self) -> Result<()> {
        if self.core.released {
            return Err(Error::Released {
                function: self.core.plan.function,
            });
        }
        B::forbid_during_capture(Seal::new(), self.dev, "poison_pool")?;
        B::poison(Seal::new(), self.dev, &self.core.memory)
    }
}

/// Device memory a runner will hold, from [`Runner::estimate`]. Equality compares every field,
/// [`graph_memory`](Self::graph_memory) included: device-wide figures, so two estimates of one
/// forward may differ there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryEstimate {
    /// Bytes of the graph memory (every size's intermediates and outputs, shared; every
    /// segment of a forward with islands). With cudagraph's tensors: the pool's physical pages.
    /// With graph memory nodes (candle, plain cudarc): the sum of the largest graph's
    /// allocation nodes, a **virtual** figure ([`graph_memory`](Self::graph_memory) has the
    /// driver's physical one).
    pub pool_bytes: usize,
    /// With graph memory nodes: the device's graph memory as the driver reported it once the
    /// largest graph was captured and uploaded, before the estimate released it (`reserved`
    /// is physical, and covers every graph of the device, not this runner's alone). `None`
    /// with cudagraph's tensors (their pool is [`pool_bytes`](Self::pool_bytes)), or where the
    /// driver gave no figures.
    pub graph_memory: Option<crate::GraphMemoryUsage>,
    /// Bytes of the static input buffers.
    pub static_input_bytes: usize,
    /// Bytes of the islands' input and output buffers (0 without islands).
    pub island_buffer_bytes: usize,
}

impl MemoryEstimate {
    /// Everything together.
    pub fn total(&self) -> usize {
        self.pool_bytes + self.static_input_bytes + self.island_buffer_bytes
    }
}

impl<'m, const N: usize, S: StaticArgs + 'm, B: Backend> Runner<'m, N, S, B> {
    /// [`estimate`](Runner::estimate) on any backend (see [`capture`](Self::capture)).
    /// With graph memory nodes the figure is the graph's allocation nodes (virtual); the driver
    /// may reserve more (its granularity): [`MemoryEstimate::graph_memory`] has what it
    /// reserved, as [`RunnerStats`](crate::RunnerStats) does for a runner.
    pub fn estimate<D>(
        dev: &'m D,
        plan: GraphPlan,
        specs: [InputSpec<B::DType>; N],
        statics: S,
        eager: impl Fn(&B::Device, [&B::Tensor; N], &S) -> Result<B::Tensor> + 'm,
    ) -> Result<MemoryEstimate>
    where
        D: Device<Backend = B> + ?Sized,
    {
        let runner = Runner::capture(dev, plan.with_lazy_capture(true), specs, statics, eager)?;
        runner.measure_largest(dev.as_backend_device())
    }
}

impl<'m, const N: usize, S: StaticArgs + 'm, B: Backend, L: 'm> Runner<'m, N, S, B, L> {
    /// [`estimate`](Runner::estimate) of a forward with [`Islands`](crate::Islands) (see
    /// [`capture_live`](Self::capture_live)): the figure covers every segment of the largest
    /// size and the islands' buffers.
    pub fn estimate_live<D>(
        dev: &'m D,
        plan: GraphPlan,
        specs: [InputSpec<B::DType>; N],
        statics: S,
        live: L,
        eager: impl Fn(
            &B::Device,
            [&B::Tensor; N],
            &S,
            &crate::Islands<'m, '_, B, L>,
        ) -> Result<B::Tensor>
        + 'm,
    ) -> Result<MemoryEstimate>
    where
        D: Device<Backend = B> + ?Sized,
    {
        let runner = Runner::capture_live(
            dev,
            plan.with_lazy_capture(true),
            specs,
            statics,
            live,
            eager,
        )?;
        runner.measure_largest(dev.as_backend_device())
    }

    /// [`estimate_live`](Self::estimate_live) of a plan keyed by more than the batch (see
    /// [`capture_keyed`](Self::capture_keyed)): the largest size at every variant, its
    /// bucketed values and dimensions at their largest buckets.
    #[allow(clippy::too_many_arguments)]
    pub fn estimate_keyed<D>(
        dev: &'m D,
        plan: GraphPlan,
        specs: [InputSpec<B::DType>; N],
        statics: S,
        live: L,
        host_keys: crate::HostKeys<S>,
        eager: impl Fn(
            &B::Device,
            [&B::Tensor; N],
            &S,
            &crate::Islands<'m, '_, B, L>,
        ) -> Result<B::Tensor>
        + 'm,
    ) -> Result<MemoryEstimate>
    where
        D: Device<Backend = B> + ?Sized,
    {
        let runner = Runner::capture_keyed(
            dev,
            plan.with_lazy_capture(true),
            specs,
            statics,
            live,
            host_keys,
            eager,
        )?;
        runner.measure_largest(dev.as_backend_device())
    }

    /// Captures the largest size of this lazy runner (at every variant, its bucketed values and
    /// dimensions at their largest buckets), measures what it holds, releases it all.
    fn measure_largest(mut self, dev: &B::Device) -> Result<MemoryEstimate> {
        let sizes = self.core.plan.table.sizes().len();
        let keys = &self.core.plan.keys;
        let host = keys.host_components();
        let largest: Vec<usize> = (0..keys.combinations())
            .filter(|&combo| {
                let index = keys.indices(combo);
                let top = |c: usize, len: usize| index[c] + 1 == len;
                keys.values()
                    .iter()
                    .enumerate()
                    .all(|(c, v)| top(c, v.buckets.len()))
                    && keys
                        .dims()
                        .iter()
                        .enumerate()
                        .all(|(k, d)| top(host + k, d.buckets.len()))
            })
            .map(|combo| combo * sizes + sizes.saturating_sub(1))
            .collect();
        let mut need = 0;
        for slot in largest.into_iter().filter(|_| sizes > 0) {
            self.capture_slot(slot)?;
            need = need.max(self.core.stats.sizes[slot].pool_need);
        }
        let estimate = MemoryEstimate {
            pool_bytes: B::memory_bytes(Seal::new(), &self.core.memory).max(need),
            graph_memory: super::run::graph_memory_usage::<B>(dev),
            static_input_bytes: self.core.inputs.bytes(),
            island_buffer_bytes: self.core.bank.borrow().bytes(),
        };
        drop(self);
        B::release_cached_memory(Seal::new(), dev)?;
        Ok(estimate)
    }
}
