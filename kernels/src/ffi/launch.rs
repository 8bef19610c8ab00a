//! Kernel launches and the GEMM call of the op launchers (each `unsafe` behind a crate-private
//! safe function):
//!
//! * [`launch`]: a kernel launch with typed scalar arguments;
//! * [`gemm_bf16_tn`]: the GEMM behind [`linear`](crate::ops::linear): the runtime's cuBLASLt
//!   path, else the one cuBLAS call (`cublasGemmEx`);
//! * [`nvrtc_present`]: whether NVRTC can be loaded (used by the compile-check test).
//!
//! These functions are safe to call *from this crate's op launchers*, which uphold the contract
//! each documents (arguments matching the kernel's parameter list, device pointers taken from
//! live tensors whose sizes were validated against the launch). They are not exported.

use std::ffi::c_void;

use cudarc::cublas::{result as cublas_result, sys as cublas_sys};
use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg, sys};

use crate::context::Runtime;
use crate::gemm::{GemmTnBf16, LtOutcome};
use cudagraph_runtime::{Error, Result};

/// One kernel argument, by value.
///
/// A device pointer is passed as [`Arg::Ptr`] (a `u64` matches a pointer parameter of the
/// kernel: both are 8 bytes, passed by value).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    /// A device address (`const T*` / `T*` parameter).
    Ptr(u64),
    /// An `int` parameter.
    I32(i32),
    /// An `unsigned long long` parameter.
    U64(u64),
    /// A `float` parameter.
    F32(f32),
}

/// Enqueues `func` on `rt`'s stream with `cfg` and `args`.
///
/// Contract (upheld by every caller in this crate): `args` match the kernel's parameter list in
/// number, order and type; each [`Arg::Ptr`] is the address of a live tensor (`device_ptr()`)
/// whose extent covers every element the kernel may touch given the other arguments (the op
/// launchers validate shapes before launching); and `cfg` is the configuration the kernel's
/// source documents (block size a multiple of 32 where it says so, enough dynamic shared
/// memory). Tensors may be dropped right after the call: device memory is freed in stream
/// order (or belongs to a graph pool), so the kernel never sees freed memory.
pub(crate) fn launch(
    rt: &Runtime,
    func: &CudaFunction,
    cfg: LaunchConfig,
    args: &[Arg],
) -> Result<()> {
    // SAFETY: the stream is used only to enqueue this kernel, ordered with the runtime's other
    // work; every buffer it touches is a live tensor of this runtime (the launchers check them
    // with `check_device`), and taking their addresses (`device_ptr`) records them into any
    // graph being captured, which then keeps them alive.
    let stream = unsafe { rt.stream() };
    if rt.dependent_launch() {
        return launch_dependent(rt, stream, func, cfg, args);
    }
    let mut builder = stream.launch_builder(func);
    for arg in args {
        // Each reference points into `args`, which outlives the launch call below (the driver
        // copies the parameter values when the launch is enqueued).
        match arg {
            Arg::Ptr(v) | Arg::U64(v) => builder.arg(v),
            Arg::I32(v) => builder.arg(v),
            Arg::F32(v) => builder.arg(v),
        };
    }
    // SAFETY: by this function's contract (see its documentation), the argument list matches the
    // kernel's signature and every pointer addresses live device memory large enough for the
    // accesses the kernel makes with these sizes; the launch is ordered on the runtime's stream
    // after the work that produced the inputs.
    unsafe { builder.launch(cfg) }.map_err(Error::driver("cuLaunchKernel"))?;
    Ok(())
}

/// [`launch`] with programmatic dependent launch (`cuLaunchKernelEx` with
/// `PROGRAMMATIC_STREAM_SERIALIZATION`): the kernel may start before the previous kernel of the
/// stream completes. Correct because every kernel of this crate waits for its predecessor
/// (`PDL_WAIT()`, checked by a unit test of `modules`) before its first memory access; see
/// [`dependent_launch`](crate::dependent_launch).
fn launch_dependent(
    rt: &Runtime,
    stream: &CudaStream,
    func: &CudaFunction,
    cfg: LaunchConfig,
    args: &[Arg],
) -> Result<()> {
    // The driver reads each parameter through a pointer to its value; the values live in `args`.
    let mut params: Vec<*mut c_void> = args
        .iter()
        .map(|arg| match arg {
            Arg::Ptr(v) | Arg::U64(v) => std::ptr::from_ref(v).cast_mut().cast::<c_void>(),
            Arg::I32(v) => std::ptr::from_ref(v).cast_mut().cast::<c_void>(),
            Arg::F32(v) => std::ptr::from_ref(v).cast_mut().cast::<c_void>(),
        })
        .collect();
    let mut value = sys::CUlaunchAttributeValue { pad: [0; 64] };
    value.programmaticStreamSerializationAllowed = 1;
    let mut attribute = sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    };
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attribute,
        numAttrs: 1,
    };
    // The launch runs in the calling thread's current context: make it the runtime's.
    // SAFETY: the context is only made current on this thread; no buffer is touched.
    unsafe { rt.context() }
        .bind_to_thread()
        .map_err(Error::driver("cuCtxSetCurrent"))?;
    // SAFETY: as for `launch`: by its contract the parameters match the kernel's signature in
    // number, order and type (`params` points at each value in `args`, alive until this call
    // returns, and the driver copies them when it enqueues the launch) and every pointer
    // addresses live device memory covering the kernel's accesses; `config` and `attribute`
    // outlive the call; the function belongs to the runtime's context, made current above; the
    // kernel waits for its predecessor before touching memory (`PDL_WAIT()`), which is what the
    // attribute requires of it.
    let result = unsafe {
        sys::cuLaunchKernelEx(
            &config,
            func.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    result.result().map_err(Error::driver("cuLaunchKernelEx"))
}

/// A bf16 GEMM in cuBLAS' column-major terms: `C (m x n, ldc) = op(A) * B` with
/// `op(A) = A^T`, `A` stored `k x m` (`lda`), `B` stored `k x n` (`ldb`, not transposed);
/// f32 accumulation, `alpha = 1`, `beta = 0`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GemmTn {
    /// Rows of `C` (and of `op(A)`).
    pub(crate) m: i32,
    /// Columns of `C` (and of `B`).
    pub(crate) n: i32,
    /// The shared dimension.
    pub(crate) k: i32,
    /// Address of `A` (bf16), at least `lda * m` elements.
    pub(crate) a: u64,
    /// Leading dimension of `A` (>= k).
    pub(crate) lda: i32,
    /// Address of `B` (bf16), at least `ldb * n` elements.
    pub(crate) b: u64,
    /// Leading dimension of `B` (>= k).
    pub(crate) ldb: i32,
    /// Address of `C` (bf16), at least `ldc * n` elements; written.
    pub(crate) c: u64,
    /// Leading dimension of `C` (>= m).
    pub(crate) ldc: i32,
}

/// Enqueues `g` on the runtime's stream: through cuBLASLt with the runtime's algorithm for its
/// shape and `n` bucket ([`Runtime::gemm_lt_bf16_tn`]), or, where libcublasLt can't be loaded
/// or the runtime's cuBLASLt path is off, through its cuBLAS handle (`cublasGemmEx`).
///
/// Contract (upheld by [`linear`](crate::ops::linear)): the three addresses are live bf16
/// tensors at least as large as [`GemmTn`]'s fields document, and `C` overlaps neither input.
pub(crate) fn gemm_bf16_tn(rt: &Runtime, g: &GemmTn) -> Result<()> {
    let lt = GemmTnBf16 {
        m: g.m,
        n: g.n,
        k: g.k,
        a: g.a,
        lda: g.lda,
        b: g.b,
        ldb: g.ldb,
        c: g.c,
        ldc: g.ldc,
    };
    // SAFETY: this function's contract is `gemm_lt_bf16_tn`'s: the addresses are live bf16
    // tensors of `rt` (their `device_ptr()`, which keeps them alive in a graph being captured)
    // covering the extents `g` implies, and C overlaps neither input.
    match unsafe { rt.gemm_lt_bf16_tn(&lt) }? {
        LtOutcome::Enqueued => Ok(()),
        LtOutcome::Unavailable => gemm_ex_bf16_tn(rt, g),
    }
}

/// [`gemm_bf16_tn`] through `cublasGemmEx` (same contract).
fn gemm_ex_bf16_tn(rt: &Runtime, g: &GemmTn) -> Result<()> {
    // SAFETY: the handle only enqueues this GEMM (see the contract above); its stream and
    // workspace are left as the runtime set them.
    let blas = unsafe { rt.cublas() }?;
    // cuBLAS runs in the current context of the calling thread: make it the runtime's.
    // SAFETY: the context is only made current on this thread; no buffer is touched.
    unsafe { rt.context() }
        .bind_to_thread()
        .map_err(Error::driver("cuCtxSetCurrent"))?;
    let alpha: f32 = 1.0;
    let beta: f32 = 0.0;
    // SAFETY: the handle is live (borrowed from the runtime) and bound to the runtime's stream;
    // by this function's contract the device addresses are live allocations covering the
    // extents implied by m, n, k and the leading dimensions, and C does not alias A or B;
    // alpha and beta are host f32 values (the handle's default host pointer mode, and the
    // scale type of CUBLAS_COMPUTE_32F) that outlive the call, which reads them before
    // returning.
    unsafe {
        cublas_result::gemm_ex(
            *blas.handle(),
            cublas_sys::cublasOperation_t::CUBLAS_OP_T,
            cublas_sys::cublasOperation_t::CUBLAS_OP_N,
            g.m,
            g.n,
            g.k,
            (&alpha as *const f32).cast::<c_void>(),
            g.a as *const c_void,
            cublas_sys::cudaDataType_t::CUDA_R_16BF,
            g.lda,
            g.b as *const c_void,
            cublas_sys::cudaDataType_t::CUDA_R_16BF,
            g.ldb,
            (&beta as *const f32).cast::<c_void>(),
            g.c as *mut c_void,
            cublas_sys::cudaDataType_t::CUDA_R_16BF,
            g.ldc,
            cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| Error::Library {
        library: "cuBLAS",
        call: "cublasGemmEx",
        message: format!("{e:?}"),
    })
}

/// Whether the NVRTC library can be loaded on this machine.
#[cfg(test)]
pub(crate) fn nvrtc_present() -> bool {
    cudagraph_runtime::nvrtc_available()
}
