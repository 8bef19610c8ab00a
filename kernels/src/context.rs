//! [`Runtime`]: one device, its own stream, a cuBLAS handle bound to that stream, the cuBLASLt
//! GEMM state (`gemm_lt.rs`), the kernel cache and the allocation router.

use std::cell::{Cell, OnceCell};
use std::panic::Location;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream};

use crate::ffi;
use crate::gemm::{CUBLAS_WORKSPACE_BYTES, GemmBackend};
use crate::gemm_lt::LtGemm;
use crate::tensor::Tensor;
use cudagraph_runtime::Shape;
use cudagraph_runtime::ffi::{self as driver, DeviceRange};
use cudagraph_runtime::policy::ReclaimPolicy;
use cudagraph_runtime::routing::PoolRouter;
use cudagraph_runtime::{DType, Element};
use cudagraph_runtime::{Error, OpSite, Result};
use cudagraph_runtime::{KernelCache, KernelModule};

/// A CUDA device with its own stream: everything a forward function needs to launch work.
///
/// `Runtime` is `Send` but not `Sync`: one thread drives a stream at a time, as a capture
/// requires (a second thread launching onto a capturing stream would join the capture).
pub struct Runtime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: OnceCell<(CudaBlas, CudaSlice<u8>)>,
    lt: OnceCell<Option<LtGemm>>,
    cublaslt: Cell<bool>,
    kernels: KernelCache,
    alloc: Arc<PoolRouter>,
    current_op: Cell<Option<OpSite>>,
    poison: Cell<bool>,
    reclaim: Cell<ReclaimPolicy>,
    gemm: Cell<GemmBackend>,
    /// Compute capability of the device (major, minor).
    cc: (i32, i32),
    /// Streaming multiprocessors of the device.
    sm_count: usize,
    /// The most dynamic shared memory one block may opt in to, in bytes.
    shared_mem_optin: usize,
    /// Programmatic dependent launch for the kernels crate's launches (see
    /// [`dependent_launch`](crate::dependent_launch)).
    dependent_launch: Cell<bool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("device", &self.ctx.ordinal())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens device `ordinal` (its primary context) and creates a stream for this runtime.
    /// With `CUDAGRAPH_PRELOAD=on` ([`PRELOAD_ENV`](crate::PRELOAD_ENV)) it first starts a
    /// detached thread that opens cuBLAS's libraries, so that their loading overlaps the
    /// context's creation; off by default (not yet measured to help).
    ///
    /// Fails with [`Error::NoDriver`] on a machine without the CUDA driver and
    /// [`Error::NoDevice`] when the ordinal does not exist: never a panic, and a program can tell
    /// them apart from real failures:
    ///
    /// ```
    /// use cudagraph_kernels::{Error, Runtime};
    ///
    /// match Runtime::new(0) {
    ///     Ok(rt) => println!("running on {}", rt.device_name().unwrap_or_default()),
    ///     Err(Error::NoDriver(why)) => println!("no GPU here ({why}): nothing to run"),
    ///     Err(Error::NoDevice { ordinal, count }) => println!("no device {ordinal} ({count} found)"),
    ///     Err(other) => panic!("a real failure: {other}"),
    /// }
    /// ```
    pub fn new(ordinal: usize) -> Result<Self> {
        let count = Self::device_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count });
        }
        let gemm = GemmBackend::from_env();
        // With CUDAGRAPH_PRELOAD=on, cuBLAS's libraries load on another thread meanwhile.
        crate::preload::start(gemm);
        let ctx = CudaContext::new(ordinal).map_err(Error::driver("cuCtxCreate"))?;
        // SAFETY: a runtime orders all work on its single stream, so the per-slice events cudarc
        // would record are not needed; recorded outside a capture, they break it (cudarc's own
        // capture test disables them for this reason). Slices created before this call keep
        // their events and are not used by the runtime.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(Error::driver("cuStreamCreate"))?;
        let attribute = |a| {
            ctx.attribute(a)
                .map_err(Error::driver("cuDeviceGetAttribute"))
        };
        use cudarc::driver::sys::CUdevice_attribute as A;
        let cc = (
            attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let sm_count = usize::try_from(attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?)
            .unwrap_or(1)
            .max(1);
        let shared_mem_optin = usize::try_from(attribute(
            A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?)
        .unwrap_or(0);
        Ok(Self {
            ctx,
            stream,
            blas: OnceCell::new(),
            lt: OnceCell::new(),
            cublaslt: Cell::new(crate::gemm::cublaslt_from_env()),
            kernels: KernelCache::default(),
            alloc: PoolRouter::new(),
            current_op: Cell::new(None),
            poison: Cell::new(false),
            reclaim: Cell::new(ReclaimPolicy::from_env()),
            gemm: Cell::new(gemm),
            cc,
            sm_count,
            shared_mem_optin,
            dependent_launch: Cell::new(crate::dependent_launch::from_env(cc.0)),
        })
    }

    /// Number of CUDA devices; an error (not a panic) when no driver is installed.
    pub fn device_count() -> Result<usize> {
        if !driver::driver_present() {
            return Err(Error::NoDriver(
                "libcuda.so could not be loaded (no NVIDIA driver on this machine)".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| {
            use cudarc::driver::sys::CUresult::*;
            match e.0 {
                // A stub libcuda (linked where no driver is installed) or no usable device.
                CUDA_ERROR_STUB_LIBRARY | CUDA_ERROR_NO_DEVICE | CUDA_ERROR_NOT_INITIALIZED => {
                    Error::NoDriver(format!("no usable NVIDIA driver ({e:?})"))
                }
                _ => Error::driver("cuDeviceGetCount")(e),
            }
        })?;
        Ok(count.max(0) as usize)
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// The device's compute capability, `(major, minor)` (9.0 for an H100 or H200).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }

    /// The device's streaming multiprocessors (132 on an H200).
    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// The most dynamic shared memory one block may opt in to on this device, in bytes (227 KiB
    /// on an H100 or H200, 99 KiB on an L40S, 163 KiB on an A100).
    pub fn max_shared_memory_per_block_optin(&self) -> usize {
        self.shared_mem_optin
    }

    /// The device's name.
    pub fn device_name(&self) -> Result<String> {
        self.ctx.name().map_err(Error::driver("cuDeviceGetName"))
    }

    /// The raw CUDA context (the device's primary context).
    ///
    /// # Safety
    ///
    /// The runtime turns cudarc's per-buffer event tracking off on this context (events
    /// recorded outside a capture break it), so cudarc's safe API no longer orders buffers
    /// across streams here. The caller must not use this context's buffers on more than one
    /// stream without ordering that work itself, and must not free, through cudarc, memory
    /// that queued work or a captured graph of this runtime still reads.
    pub unsafe fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The raw stream every op and graph of this runtime runs on.
    ///
    /// # Safety
    ///
    /// As for [`context`](Self::context); in addition, work the caller enqueues on this stream
    /// while the runtime captures is recorded into the graph, and the caller must keep alive
    /// whatever such work reads or writes for as long as the graph can replay.
    pub unsafe fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The stream, for this crate's own calls (which uphold the rules above).
    pub(crate) fn raw_stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context, for this crate's own calls.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    pub(crate) fn raw_context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The raw cuBLAS handle bound to the runtime's stream, with its own workspace (created at
    /// first use).
    ///
    /// # Safety
    ///
    /// As for [`stream`](Self::stream): work the caller enqueues through the handle is ordered
    /// on the runtime's stream and, during a capture, recorded into the graph; the caller keeps
    /// alive whatever it reads or writes, and must not change the handle's stream or workspace.
    pub unsafe fn cublas(&self) -> Result<&CudaBlas> {
        if let Some((blas, _)) = self.blas.get() {
            return Ok(blas);
        }
        self.forbid_during_capture("creating the cuBLAS handle")?;
        if !ffi::cublas_present() {
            return Err(Error::MissingLibrary { library: "cublas" });
        }
        let blas = CudaBlas::new(self.stream.clone()).map_err(|e| Error::Library {
            library: "cuBLAS",
            call: "cublasCreate",
            message: format!("{e:?}"),
        })?;
        // SAFETY: the workspace is uninitialised scratch that only cuBLAS writes and reads.
        let workspace = unsafe { self.stream.alloc::<u8>(CUBLAS_WORKSPACE_BYTES) }
            .map_err(Error::driver("cuBLAS workspace"))?;
        let ptr = driver::slice_ptr(&workspace, &self.stream);
        ffi::set_cublas_workspace(&blas, ptr, CUBLAS_WORKSPACE_BYTES).map_err(|message| {
            Error::Library {
                library: "cuBLAS",
                call: "cublasSetWorkspace",
                message,
            }
        })?;
        Ok(&self.blas.get_or_init(|| (blas, workspace)).0)
    }

    /// The cuBLASLt state's cell (see `gemm_lt.rs`).
    pub(crate) fn lt_cell(&self) -> &OnceCell<Option<LtGemm>> {
        &self.lt
    }

    /// Whether GEMMs go through cuBLASLt (see `gemm_lt.rs`).
    pub(crate) fn cublaslt_flag(&self) -> &Cell<bool> {
        &self.cublaslt
    }

    /// The kernel `name` of `module`, compiled at first use and cached.
    pub fn function(
        &self,
        module: &'static KernelModule,
        name: &'static str,
    ) -> Result<CudaFunction> {
        self.kernels.function(&self.ctx, module, name)
    }

    /// How many kernel modules this runtime compiled or read from the disk cache.
    pub fn kernel_cache_stats(&self) -> crate::KernelCacheStats {
        self.kernels.stats()
    }

    /// Records which op is executing and from where, for capture diagnostics. Op launchers call
    /// it first; it costs a store.
    #[track_caller]
    pub fn enter_op(&self, op: &'static str) {
        self.current_op.set(Some(OpSite {
            op,
            location: Location::caller(),
        }));
    }

    /// The op last recorded by [`enter_op`](Self::enter_op).
    pub fn current_op(&self) -> Option<OpSite> {
        self.current_op.get()
    }

    pub(crate) fn clear_op(&self) {
        self.current_op.set(None);
    }

    /// Whether this runtime is capturing a graph now.
    pub fn is_capturing(&self) -> bool {
        self.alloc.is_capturing()
    }

    /// The router every allocation of this runtime goes through.
    pub(crate) fn router(&self) -> &Arc<PoolRouter> {
        &self.alloc
    }

    /// Keeps `resource` alive as long as the graph this runtime records now, if any (nothing
    /// happens outside a capture): for what a captured node uses that is not a tensor, such as
    /// a buffer or a handle of the caller's own that a kernel it launched reads.
    pub fn keep_while_recorded(&self, resource: Arc<dyn Send + Sync>) {
        self.alloc.keep_while_recorded(resource);
    }

    /// An error if a capture is under way: for operations a capture cannot record.
    pub fn forbid_during_capture(&self, what: &'static str) -> Result<()> {
        if self.is_capturing() {
            Err(Error::IllegalDuringCapture {
                what,
                site: self.current_op(),
            })
        } else {
            Ok(())
        }
    }

    /// A tensor of uninitialised contents. During a capture it is served from the graph pool;
    /// otherwise from the driver's stream-ordered allocator.
    ///
    /// Unspecified contents mean what they say: the bytes may be an earlier tensor's of this
    /// process (the allocator reuses freed blocks; a pool block holds the last replay's values).
    /// Write every element before reading it, as every op does with its output, or use
    /// [`zeros`](Self::zeros). [`set_poison_allocations`](Self::set_poison_allocations) fills
    /// eager allocations with `0xFF` to catch reads of unwritten elements in tests.
    pub fn alloc(&self, dims: &[usize], dtype: DType) -> Result<Tensor> {
        let shape = Shape::new(dims)?;
        // `Shape::new` bounds the bytes of the widest dtype: no overflow.
        let bytes = shape.numel() * dtype.size_in_bytes();
        // Under capture the bytes are a block of the pool chunk (never filled: the fill would be
        // recorded into the graph); otherwise a driver allocation, poisoned when asked.
        let storage = self
            .alloc
            .allocate(&self.stream, bytes, self.poison.get())?;
        Ok(Tensor::from_storage(storage, shape, dtype, self.ordinal()))
    }

    /// A tensor filled with zero bytes.
    pub fn zeros(&self, dims: &[usize], dtype: DType) -> Result<Tensor> {
        let t = self.alloc(dims, dtype)?;
        self.fill_bytes(&t, 0)?;
        Ok(t)
    }

    /// Fills every byte of `t` with `value` (enqueued on the stream; capturable).
    pub fn fill_bytes(&self, t: &Tensor, value: u8) -> Result<()> {
        self.check_device("fill_bytes", t)?;
        // SAFETY: `t` is a live tensor of this runtime (checked above), kept alive until the
        // fill ran: its storage is freed in stream order, or belongs to a pool a graph holds.
        unsafe { driver::fill(&self.stream, range(t), value) }
            .map_err(Error::driver("cuMemsetD8Async"))
    }

    /// Copies host data into a new tensor of shape `dims` and waits for the copy.
    #[track_caller]
    pub fn upload<T: Element>(&self, data: &[T], dims: &[usize]) -> Result<Tensor> {
        self.enter_op("upload");
        self.forbid_during_capture("a host-to-device copy")?;
        let t = self.alloc(dims, T::DTYPE)?;
        if t.numel() != data.len() {
            return Err(Error::invalid(
                "upload",
                format!(
                    "{} values for shape {dims:?} ({} elements)",
                    data.len(),
                    t.numel()
                ),
            ));
        }
        let bytes = host_bytes(data);
        ffi::upload(&self.stream, range(&t), bytes).map_err(Error::driver("cuMemcpyHtoDAsync"))?;
        Ok(t)
    }

    /// Copies host data into the existing tensor `dst` (same dtype, as many elements) and
    /// waits for the copy: e.g. a staged call's rows ([`Runner::stage`](crate::Runner::stage)).
    #[track_caller]
    pub fn upload_into<T: Element>(&self, data: &[T], dst: &Tensor) -> Result<()> {
        self.enter_op("upload_into");
        self.forbid_during_capture("a host-to-device copy")?;
        self.check_device("upload_into", dst)?;
        if dst.dtype() != T::DTYPE || dst.numel() != data.len() {
            return Err(Error::invalid(
                "upload_into",
                format!(
                    "{} {} values for a {} tensor of shape {:?}",
                    data.len(),
                    T::DTYPE,
                    dst.dtype(),
                    dst.shape()
                ),
            ));
        }
        ffi::upload(&self.stream, range(dst), host_bytes(data))
            .map_err(Error::driver("cuMemcpyHtoDAsync"))
    }

    /// Copies a tensor to the host, waiting for all work queued before it.
    #[track_caller]
    pub fn download<T: Element>(&self, t: &Tensor) -> Result<Vec<T>> {
        self.enter_op("download");
        self.forbid_during_capture("a device-to-host copy")?;
        self.check_device("download", t)?;
        if t.dtype() != T::DTYPE {
            return Err(Error::invalid(
                "download",
                format!("tensor is {}, asked for {}", t.dtype(), T::DTYPE),
            ));
        }
        let mut out = vec![T::default(); t.numel()];
        ffi::download(&self.stream, host_bytes_mut(&mut out), range(t))
            .map_err(Error::driver("cuMemcpyDtoHAsync"))?;
        Ok(out)
    }

    /// Copies a floating-point tensor (bf16 or f32) to the host as f32, whatever its dtype:
    /// bf16 widens exactly. [`download`](Self::download) instead asks for the element type and
    /// refuses another dtype; this is the call for "give me the numbers". An integer tensor is
    /// an error naming its dtype.
    #[track_caller]
    pub fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        match t.dtype() {
            DType::F32 => self.download::<f32>(t),
            DType::BF16 => Ok(self
                .download::<half::bf16>(t)?
                .into_iter()
                .map(half::bf16::to_f32)
                .collect()),
            other => Err(Error::invalid(
                "download_f32",
                format!("tensor is {other}, not a floating-point dtype (bf16 or f32)"),
            )),
        }
    }

    /// Enqueues a copy of `src` into `dst` (same dtype and number of elements).
    pub fn copy(&self, src: &Tensor, dst: &Tensor) -> Result<()> {
        self.check_device("copy", src)?;
        self.check_device("copy", dst)?;
        if src.dtype() != dst.dtype() || src.numel() != dst.numel() {
            return Err(Error::invalid(
                "copy",
                format!(
                    "source {:?} {} and destination {:?} {} differ",
                    src.shape(),
                    src.dtype(),
                    dst.shape(),
                    dst.dtype()
                ),
            ));
        }
        // SAFETY: both tensors are live tensors of this runtime (checked above) whose storage
        // is freed in stream order, so the copy never touches freed memory.
        unsafe { driver::copy(&self.stream, range(dst), range(src)) }
            .map_err(Error::driver("cuMemcpyDtoDAsync"))
    }

    /// A new tensor holding a copy of `src` (from the pool during capture).
    pub fn duplicate(&self, src: &Tensor) -> Result<Tensor> {
        let dst = self.alloc(src.shape(), src.dtype())?;
        self.copy(src, &dst)?;
        Ok(dst)
    }

    /// Waits for all work queued on the stream; illegal during capture.
    #[track_caller]
    pub fn synchronize(&self) -> Result<()> {
        self.enter_op("synchronize");
        self.forbid_during_capture("a stream synchronize")?;
        self.stream
            .synchronize()
            .map_err(Error::driver("cuStreamSynchronize"))?;
        self.check_deferred()
    }

    /// Surfaces an error cudarc recorded from a call that could not return it (a drop).
    pub fn check_deferred(&self) -> Result<()> {
        self.ctx
            .check_err()
            .map_err(Error::driver("deferred (recorded by a drop)"))
    }

    /// Free and total device memory, in bytes (`cuMemGetInfo`).
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        ffi::mem_info(&self.ctx).map_err(Error::driver("cuMemGetInfo"))
    }

    /// An error naming `op` unless this runtime allocated `t`: a tensor of another device, or
    /// of another runtime on the same device (another stream, not ordered with this one: a
    /// kernel here could read it while its own stream frees it), is refused.
    ///
    /// To move data between runtimes, download it and upload it again, or use
    /// [`copy_from`](Self::copy_from), which orders both streams.
    pub fn check_device(&self, op: &'static str, t: &Tensor) -> Result<()> {
        if t.ordinal() != self.ordinal() {
            return Err(Error::ForeignTensor {
                op,
                reason: format!(
                    "it is on device {}, this runtime on device {}",
                    t.ordinal(),
                    self.ordinal()
                ),
            });
        }
        if !t.belongs_to(&self.alloc) {
            return Err(Error::ForeignTensor {
                op,
                reason: format!(
                    "it belongs to another runtime on device {} (another stream)",
                    t.ordinal()
                ),
            });
        }
        Ok(())
    }

    /// A new tensor of this runtime holding a copy of `src`, a tensor of `other` (another
    /// runtime, another stream, possibly another device): `other`'s queued work on `src` is
    /// waited for, then the copy runs, then `src` is free to be dropped or rewritten (both
    /// streams are synchronized). Illegal while either runtime captures.
    #[track_caller]
    pub fn copy_from(&self, other: &Runtime, src: &Tensor) -> Result<Tensor> {
        self.enter_op("copy_from");
        self.forbid_during_capture("a copy from another runtime")?;
        other.forbid_during_capture("a copy from another runtime")?;
        other.check_device("copy_from", src)?;
        let dst = self.alloc(src.shape(), src.dtype())?;
        other.synchronize()?;
        ffi::copy_peer(&self.stream, range(&dst), &other.stream, range(src))
            .map_err(Error::driver("cuMemcpyPeerAsync"))?;
        self.synchronize()?;
        Ok(dst)
    }
}

fn range(t: &Tensor) -> DeviceRange {
    DeviceRange::new(t.device_ptr(), t.size_in_bytes())
}

fn host_bytes<T: Element>(data: &[T]) -> &[u8] {
    // SAFETY: `Element` is sealed: its types are this crate's plain numbers (bf16, f32, u32,
    // i32) without padding or invalid bit patterns; the byte view covers exactly the slice's
    // memory.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), std::mem::size_of_val(data)) }
}

fn host_bytes_mut<T: Element>(data: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `host_bytes` (a sealed trait of plain numbers); every byte pattern is a
    // valid value of these types, so the driver may write any bytes.
    unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast(), std::mem::size_of_val(data)) }
}

impl Runtime {
    /// Synchronizes, then returns what the stream-ordered allocator and graph memory nodes
    /// cache to the driver (`cuMemPoolTrimTo`, `cuDeviceGraphMemTrim`).
    pub fn release_cached_memory(&self) -> Result<()> {
        self.synchronize()?;
        driver::trim_cached_memory(&self.ctx)
    }

    /// Test aid: when on, every eager allocation is filled with `0xFF` bytes (NaN in bf16 and
    /// f32), so an op that leaves an output element unwritten is caught. Never applies under
    /// capture (the fill would be recorded into the graph).
    pub fn set_poison_allocations(&self, on: bool) {
        self.poison.set(on);
    }
}

impl Runtime {
    /// The reclamation policy captures use (initially from `CUDAGRAPH_CAPTURE_RECLAIM`).
    pub fn reclaim_policy(&self) -> ReclaimPolicy {
        self.reclaim.get()
    }

    /// Sets the reclamation policy of later captures (see [`FreezeScope`](cudagraph_runtime::FreezeScope)).
    pub fn set_reclaim_policy(&self, policy: ReclaimPolicy) {
        self.reclaim.set(policy);
    }

    /// The GEMM backend setting of the linear ops (initially from `CUDAGRAPH_GEMM`).
    pub fn gemm_backend(&self) -> GemmBackend {
        self.gemm.get()
    }

    /// Sets the GEMM of later linear ops, eager or captured (graphs already captured keep
    /// theirs). See [`GemmBackend`].
    pub fn set_gemm_backend(&self, backend: GemmBackend) {
        self.gemm.set(backend);
    }

    /// Whether the kernels crate launches with programmatic dependent launch (see
    /// [`dependent_launch`](crate::dependent_launch)); initially from `CUDAGRAPH_PDL`.
    pub fn dependent_launch(&self) -> bool {
        self.dependent_launch.get()
    }

    /// Turns programmatic dependent launch on or off for later launches, eager or captured
    /// (graphs already captured keep theirs). Asking for it on a device older than compute
    /// capability 9.0 leaves it off. Returns the setting now in effect.
    pub fn set_dependent_launch(&self, on: bool) -> bool {
        let effective = on && self.cc.0 >= crate::dependent_launch::PDL_MIN_MAJOR;
        self.dependent_launch.set(effective);
        effective
    }

    /// The GEMM the next linear op uses: [`GemmBackend::Cublas`] or [`GemmBackend::Builtin`],
    /// never `Auto` (which is cuBLAS when it can be loaded; when it can't, the built-in kernel,
    /// with a warning the first time in the process).
    pub fn resolved_gemm_backend(&self) -> GemmBackend {
        match self.gemm.get() {
            GemmBackend::Auto if !cublas_loadable() => GemmBackend::Builtin,
            GemmBackend::Auto | GemmBackend::Cublas => GemmBackend::Cublas,
            GemmBackend::Builtin => GemmBackend::Builtin,
        }
    }
}

/// Whether cuBLAS can be loaded, probed once per process; the first `false` is logged.
fn cublas_loadable() -> bool {
    static LOADABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADABLE.get_or_init(|| {
        let present = ffi::cublas_present();
        if !present {
            tracing::warn!(
                "cuBLAS (libcublas) can't be loaded: linear ops use the built-in GEMM (no tensor cores)"
            );
        }
        present
    })
}

#[cfg(test)]
mod tests {
    use super::Runtime;

    fn assert_send<T: Send>() {}

    /// A runtime can move to another thread (each thread drives its own); it is not `Sync`
    /// (see `tests/ui/fail/runtime_not_sync.rs`), so two threads can't drive one stream.
    #[test]
    fn runtime_is_send() {
        assert_send::<Runtime>();
        assert_send::<crate::Tensor>();
    }
}
