//! [`Native`]: cudagraph's own [`Runtime`] and [`Tensor`], captured in pool mode.
//!
//! Capture-time tensors are blocks of the runner's [`GraphPool`], placed by an arena (see
//! [`capture`](crate::capture)); every driver buffer a kernel argument takes during a capture
//! is kept alive by the graph; a tensor that outlives its capture withdraws its chunk.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaStream};

use super::{Backend, CaptureBody, CaptureRequest, CapturedSize, Device, Rerecorded};
use super::{BackendOps, Seal};
use crate::alloc::KeepAlive;
use crate::capture::{capture_one, check_no_escape, rerecord};
use crate::context::Runtime;
use crate::dispatch::{GraphPlan, InputSpec, PadValue};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffi::{DeviceRange, ExecGraph};
use crate::freeze::FreezeScope;
use crate::kernel_cache::KernelModule;
use crate::policy::ReclaimPolicy;
use crate::pool::{GraphPool, PoolChunk};
use crate::runner::{MemoryEstimate, Runner};
use crate::shape::Shape;
use crate::static_args::StaticArgs;
use crate::tensor::Tensor;

/// cudagraph's own tensors and runtime (the default backend of [`Runner`](crate::Runner)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Native;

/// What a graph of the native backend keeps: its pool chunk and the driver buffers its
/// kernels use.
pub struct NativeKeep {
    chunk: Arc<PoolChunk>,
    _kept: KeepAlive,
}

/// Where a graph's output lies in its pool chunk.
#[derive(Debug, Clone, Copy)]
pub struct NativeOutput {
    offset: usize,
    shape: Shape,
    dtype: DType,
}

impl Device for Runtime {
    type Backend = Native;

    fn as_backend_device(&self) -> &Self {
        self
    }
}

impl Backend for Native {
    type Device = Runtime;
    type Tensor = Tensor;
    type DType = DType;
}

// SAFETY: see the contract on `BackendOps`; this implementation reports ranges of tensors it
// checked, on the device's one stream, and keeps the seals it receives inside each call.
unsafe impl BackendOps for Native {
    type Dev = Runtime;
    type Ten = Tensor;
    type Dt = DType;
    type Memory = GraphPool;
    type GraphKeep = NativeKeep;
    type OutputSlot = NativeOutput;

    fn stream(_: Seal, dev: &Runtime) -> Arc<CudaStream> {
        dev.raw_stream().clone()
    }

    fn forbid_during_capture(_: Seal, dev: &Runtime, what: &'static str) -> Result<()> {
        dev.forbid_during_capture(what)
    }

    fn synchronize(_: Seal, dev: &Runtime) -> Result<()> {
        dev.synchronize()
    }

    fn function(
        _: Seal,
        dev: &Runtime,
        module: &'static KernelModule,
        name: &'static str,
    ) -> Result<CudaFunction> {
        dev.function(module, name)
    }

    fn freeze(_: Seal, dev: &Runtime, policy: ReclaimPolicy) -> Result<FreezeScope<'_>> {
        FreezeScope::enter(dev, policy)
    }

    fn reclaim_policy(_: Seal, dev: &Runtime) -> ReclaimPolicy {
        dev.reclaim_policy()
    }

    fn new_memory(_: Seal, _dev: &Runtime) -> GraphPool {
        GraphPool::new()
    }

    fn dtype(_: Seal, t: &Tensor) -> DType {
        t.dtype()
    }

    fn shape(_: Seal, t: &Tensor) -> Result<Shape> {
        Ok(t.shape_value())
    }

    fn dtype_bytes(_: Seal, dtype: DType) -> usize {
        dtype.size_in_bytes()
    }

    fn pad_pattern(_: Seal, value: PadValue, dtype: DType, input: usize) -> Result<u32> {
        value.pattern(dtype, input)
    }

    fn check_tensor(_: Seal, dev: &Runtime, op: &'static str, t: &Tensor) -> Result<()> {
        dev.check_device(op, t)
    }

    fn range(_: Seal, t: &Tensor) -> Result<DeviceRange> {
        Ok(DeviceRange {
            ptr: t.device_ptr(),
            bytes: t.size_in_bytes(),
        })
    }

    fn zeros(_: Seal, dev: &Runtime, spec: &InputSpec, rows: usize) -> Result<Tensor> {
        dev.zeros(&spec.full_shape(rows), spec.dtype())
    }

    fn narrow(_: Seal, t: &Tensor, rows: usize) -> Result<Tensor> {
        t.narrowed(0, rows)
    }

    fn duplicate(_: Seal, dev: &Runtime, t: &Tensor) -> Result<Tensor> {
        dev.duplicate(t)
    }

    fn capture(
        _: Seal,
        dev: &Runtime,
        pool: &mut GraphPool,
        request: CaptureRequest,
        body: &mut CaptureBody<'_, Self>,
    ) -> Result<CapturedSize<Self>> {
        let CaptureRequest { function, size, .. } = request;
        let c = capture_one(dev, pool, function, size, request.warmup, body)?;
        let output = output_slot(function, size, &c.value, &c.chunk);
        drop(c.value);
        if let Err(e) = check_no_escape(function, size, &c.chunk, 0) {
            // A tensor the forward kept lives in the chunk: no graph may rewrite it again.
            pool.forget(&c.chunk);
            return Err(e);
        }
        Ok(CapturedSize {
            output: output?,
            exec: c.exec,
            keep: NativeKeep {
                chunk: c.chunk,
                _kept: c.kept,
            },
            timing: c.timing,
            need: c.pool_need,
        })
    }

    fn rerecord(
        _: Seal,
        dev: &Runtime,
        pool: &mut GraphPool,
        keep: &NativeKeep,
        exec: &mut ExecGraph,
        request: CaptureRequest,
        body: &mut CaptureBody<'_, Self>,
    ) -> std::result::Result<Rerecorded<Self>, (Error, bool)> {
        let CaptureRequest { function, size, .. } = request;
        let done = rerecord(dev, pool, &keep.chunk, exec, function, size, body)?;
        // From here on the executable replays the new forward: errors can't go back.
        let output = output_slot(function, size, &done.value, &done.chunk);
        drop(done.value);
        if let Err(e) = check_no_escape(function, size, &done.chunk, 0) {
            pool.forget(&done.chunk);
            return Err((e, true));
        }
        Ok(Rerecorded {
            output: output.map_err(|e| (e, true))?,
            keep: NativeKeep {
                chunk: done.chunk,
                _kept: done.kept,
            },
            in_place: done.in_place,
        })
    }

    fn usable(_: Seal, pool: &GraphPool, keep: &NativeKeep) -> bool {
        pool.holds(&keep.chunk)
    }

    fn output_view(
        _: Seal,
        dev: &Runtime,
        _pool: &GraphPool,
        keep: &NativeKeep,
        out: &NativeOutput,
        rows: usize,
    ) -> Result<Tensor> {
        Ok(Tensor::pool_view(
            keep.chunk.clone(),
            out.offset,
            out.shape.with_rows(rows)?,
            out.dtype,
            dev.alloc_shared().clone(),
            dev.ordinal(),
        ))
    }

    fn memory_bytes(_: Seal, pool: &GraphPool) -> usize {
        pool.bytes()
    }

    fn release(_: Seal, _dev: &Runtime, pool: &mut GraphPool) -> (bool, Result<()>) {
        let live = pool.live_tensors();
        if live > 0 {
            return (
                !pool.is_resident(),
                Err(Error::PoolTensorsAlive {
                    function: "release_memory",
                    count: live,
                    during: "at release_memory",
                }),
            );
        }
        let released = pool.release();
        (!pool.is_resident(), released)
    }

    fn resume(_: Seal, _dev: &Runtime, pool: &mut GraphPool) -> Result<()> {
        pool.resume()
    }

    fn poison(_: Seal, dev: &Runtime, pool: &GraphPool) -> Result<()> {
        pool.poison(dev.raw_stream())
    }

    fn release_cached_memory(_: Seal, dev: &Runtime) -> Result<()> {
        dev.release_cached_memory()
    }
}

/// Where `value`, a capture's output, lies in `chunk`, after checking that it is a tensor the
/// forward allocated there with the batch as its leading dimension.
fn output_slot(
    function: &'static str,
    size: usize,
    value: &Tensor,
    chunk: &Arc<PoolChunk>,
) -> Result<NativeOutput> {
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
        Some((c, offset)) if Arc::ptr_eq(&c, chunk) => Ok(NativeOutput {
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

impl<'rt> FreezeScope<'rt> {
    /// Enters the scope on `rt`'s stream: one reclamation, then the pool keeps what is freed
    /// inside.
    pub fn enter(rt: &'rt Runtime, policy: ReclaimPolicy) -> Result<Self> {
        rt.forbid_during_capture("entering a freeze scope")?;
        Self::on_stream(rt.raw_stream().clone(), Some(rt.alloc_shared()), policy)
    }
}

impl InputSpec {
    /// The spec of an example tensor (its leading dimension is the batch and is ignored).
    pub fn like(t: &Tensor) -> Result<Self> {
        if t.rank() == 0 {
            return Err(Error::invalid(
                "InputSpec::like",
                "a graph input needs a batch dimension",
            ));
        }
        Self::new(t.dtype(), &t.shape()[1..])
    }

    /// Whether `t` has this dtype and these trailing dimensions.
    pub fn matches(&self, t: &Tensor) -> bool {
        self.matches_parts(t.dtype(), t.shape())
    }
}

impl<'m, const N: usize, S: StaticArgs + 'm> Runner<'m, N, S> {
    /// Captures `eager` once per size of `plan`, largest first, all inside one
    /// [`FreezeScope`](crate::FreezeScope): the first capture after an eager warm-up run (lazy
    /// initialisation, and measurement of the pool the graphs will share), the others straight
    /// into that pool, warming up only when one would not fit (see [`Warmup`](crate::Warmup);
    /// `CUDAGRAPH_CAPTURE_WARMUP=each` warms up every size). With a lazy plan nothing is
    /// captured here: each size on its first use. `statics` are the host values baked into
    /// every graph, compared with `==` at every call (see
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
    ///
    /// Without the macro (what `#[cuda_graph]` generates calls this):
    ///
    /// ```no_run
    /// use cudagraph_runtime::{DType, GraphPlan, InputSpec, Result, Runner, Runtime};
    /// # fn main() -> Result<()> {
    /// let rt = Runtime::new(0)?;
    /// let plan = GraphPlan::new("copy_rows", &[1, 2, 4], 0)?;
    /// let specs = [InputSpec::new(DType::F32, &[8])?];
    /// // The forward: any work on the runtime's stream (here a device copy of its input).
    /// let mut graphs = Runner::capture(&rt, plan, specs, (), |rt, [x], ()| {
    ///     let y = rt.alloc(x.shape(), x.dtype())?;
    ///     rt.copy(x, &y)?;
    ///     Ok(y)
    /// })?;
    /// let x = rt.upload(&[1.5f32; 3 * 8], &[3, 8])?;
    /// let out = graphs.run([&x])?; // 3 rows: the size-4 graph, padded
    /// assert_eq!((out.size(), out.shape()), (Some(4), &[3, 8][..]));
    /// let kept = out.to_owned()?; // a copy that outlives the next run
    /// drop(out);
    /// assert_eq!(rt.download::<f32>(&kept)?, vec![1.5f32; 3 * 8]);
    /// # Ok(()) }
    /// ```
    /// For another backend (plain cudarc, candle) see [`capture_on`](Self::capture_on).
    pub fn capture(
        rt: &'m Runtime,
        plan: GraphPlan,
        specs: [InputSpec; N],
        statics: S,
        eager: impl Fn(&Runtime, [&Tensor; N], &S) -> Result<Tensor> + 'm,
    ) -> Result<Self> {
        Self::capture_on(rt, plan, specs, statics, eager)
    }
}

impl<'m, const N: usize, S, F> Runner<'m, N, S, F, Native> {
    /// The runtime the graphs run on.
    pub fn runtime(&self) -> &'m Runtime {
        self.device()
    }
}

impl<'m, const N: usize, S: StaticArgs + 'm> Runner<'m, N, S> {
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
        Runner::estimate_on(rt, plan, specs, statics, eager)
    }
}
