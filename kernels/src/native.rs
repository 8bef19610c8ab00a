//! [`Native`]: cudagraph's own [`Runtime`] and [`Tensor`] as a backend of the graph runtime,
//! captured in pool mode.
//!
//! Capture-time tensors are blocks of the runner's [`GraphPool`], placed by an arena (the
//! runtime's [`pool_capture`](cudagraph_runtime::pool_capture), which reaches the runtime's
//! allocations through [`PoolDevice`]); every driver buffer a kernel argument takes during a
//! capture is kept alive by the graph; a tensor that outlives its capture withdraws its chunk.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaStream};

use cudagraph_runtime::backend::{
    Backend, BackendOps, CaptureBody, CaptureRequest, CapturedSize, Device, Rerecorded, Seal,
};
use cudagraph_runtime::ffi::{DeviceRange, ExecGraph};
use cudagraph_runtime::policy::ReclaimPolicy;
use cudagraph_runtime::pool::{GraphPool, PoolChunk};
use cudagraph_runtime::pool_capture::{PoolDevice, capture_one, check_no_escape, rerecord};
use cudagraph_runtime::routing::{KeepAlive, PoolRouter};
use cudagraph_runtime::{
    DType, Error, FreezeScope, InputSpec, KernelModule, OpSite, PadValue, Result, Shape,
};

use crate::context::Runtime;
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

    fn freeze(seal: Seal, dev: &Runtime, policy: ReclaimPolicy) -> Result<FreezeScope<'_>> {
        freeze_scope(seal, dev, policy)
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
        Ok(DeviceRange::new(t.device_ptr(), t.size_in_bytes()))
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

    fn view_prefix(_: Seal, t: &Tensor, dims: &[usize]) -> Result<Tensor> {
        t.prefix_view(dims)
    }

    fn share(_: Seal, t: &Tensor) -> Result<Tensor> {
        Ok(t.share())
    }

    fn capture_copy(_: Seal, dev: &Runtime, t: &Tensor) -> Result<Tensor> {
        dev.duplicate(t)
    }

    fn capture(
        seal: Seal,
        dev: &Runtime,
        pool: &mut GraphPool,
        request: CaptureRequest,
        body: &mut CaptureBody<'_, Self>,
    ) -> Result<CapturedSize<Self>> {
        let CaptureRequest { function, size, .. } = request;
        let c = capture_one(seal, dev, pool, function, size, request.warmup, body)?;
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
            segments: c.segments,
            keep: NativeKeep {
                chunk: c.chunk,
                _kept: c.kept,
            },
            timing: c.timing,
            need: c.pool_need,
        })
    }

    fn rerecord(
        seal: Seal,
        dev: &Runtime,
        pool: &mut GraphPool,
        keep: &NativeKeep,
        exec: &mut ExecGraph,
        request: CaptureRequest,
        body: &mut CaptureBody<'_, Self>,
    ) -> std::result::Result<Rerecorded<Self>, (Error, bool)> {
        let CaptureRequest { function, size, .. } = request;
        let done = rerecord(seal, dev, pool, &keep.chunk, exec, function, size, body)?;
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
            dev.router(),
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

/// The freeze scope of `rt`'s stream: one reclamation, then the stream-ordered pool keeps
/// what is freed inside, and the runtime's parked drops are freed at its edges.
pub(crate) fn freeze_scope(
    seal: Seal,
    rt: &Runtime,
    policy: ReclaimPolicy,
) -> Result<FreezeScope<'_>> {
    rt.forbid_during_capture("entering a freeze scope")?;
    FreezeScope::on_stream(seal, rt.raw_stream().clone(), Some(rt.router()), policy)
}

// SAFETY: the stream is the runtime's one stream (every op and allocation of it is ordered
// there) and the router the one every tensor of the runtime allocates through; the seals this
// implementation receives stay inside each call.
unsafe impl PoolDevice for Runtime {
    fn router(&self, _: Seal) -> &Arc<PoolRouter> {
        Runtime::router(self)
    }

    fn stream(&self, _: Seal) -> &Arc<CudaStream> {
        self.raw_stream()
    }

    fn current_op(&self) -> Option<OpSite> {
        Runtime::current_op(self)
    }

    fn clear_op(&self, _: Seal) {
        Runtime::clear_op(self);
    }
}
