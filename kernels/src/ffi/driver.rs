//! The driver and cuBLAS calls a [`Runtime`](crate::Runtime) makes beyond cudarc's safe API
//! (host copies, peer copies, memory figures, the cuBLAS workspace), each behind a
//! crate-private safe function whose contract its callers (the runtime's methods, on tensors
//! they checked) uphold.

use cudagraph_runtime::ffi::DeviceRange;
use cudarc::driver::{CudaContext, CudaStream, DriverError, result, sys};

/// `CUDA_ERROR_INVALID_VALUE` unless a copy's two sides have the same length (checked in every
/// build: a copy of the longer length would write past the shorter side's allocation).
fn check_lengths(dst: usize, src: usize) -> Result<(), DriverError> {
    if dst == src {
        Ok(())
    } else {
        Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE))
    }
}

/// Opens libcublasLt and libcublas on a thread of its own and leaves them open for the rest
/// of the process: cudarc's process-wide handles to them (`culib`, a `OnceLock` each), which
/// its first cuBLAS call would otherwise open (see `preload.rs`). Returns at once; a spawn that
/// fails leaves the loading to that first call. Nothing to do when the libraries are linked
/// (`dynamic-linking`).
pub(crate) fn preload_gemm_libraries() {
    #[cfg(not(feature = "dynamic-linking"))]
    // (The thread is detached: it ends once both libraries are open.)
    let _ = std::thread::Builder::new()
        .name("cudagraph-preload".into())
        .spawn(|| {
            // Each library is opened once, here, by the candidate name cudarc would pick (its
            // own list, in its order); while this handle holds it, cudarc's `culib` finds it
            // loaded (a reference count, no second load) and can't reach its panic on a
            // missing library. A library not found is left alone.
            let open = |name: &str| {
                cudarc::get_lib_name_candidates(name)
                    .into_iter()
                    // SAFETY: opening cuBLAS's libraries runs their initialisers, which have
                    // no precondition; no symbol of them is called here.
                    .find_map(|candidate| unsafe { libloading::Library::new(candidate) }.ok())
            };
            if let Some(held) = open("cublasLt") {
                // SAFETY: as above; the library is loaded, so `culib` returns its handle.
                let _ = unsafe { cudarc::cublaslt::sys::culib() };
                drop(held);
            }
            if let Some(held) = open("cublas") {
                // SAFETY: as above.
                let _ = unsafe { cudarc::cublas::sys::culib() };
                drop(held);
            }
        });
}

/// Whether cuBLAS can be loaded (and is not a stub).
pub(crate) fn cublas_present() -> bool {
    #[cfg(not(feature = "dynamic-linking"))]
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    return unsafe { cudarc::cublas::sys::is_culib_present() };
    #[cfg(feature = "dynamic-linking")]
    {
        use cudarc::cublas::sys as cublas;
        let mut major = 0;
        // SAFETY: writes one int; needs no handle.
        unsafe {
            cublas::cublasGetProperty(cublas::libraryPropertyType::MAJOR_VERSION, &mut major)
                == cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS
        }
    }
}

/// Copies `src` (ordered on `src_stream`, possibly another device) into `dst` (on `stream`):
/// the copy is enqueued on `stream`; the caller has synchronized `src_stream` before and
/// synchronizes `stream` after, so neither side's later work or frees overlap the copy.
pub(crate) fn copy_peer(
    stream: &CudaStream,
    dst: DeviceRange,
    src_stream: &CudaStream,
    src: DeviceRange,
) -> Result<(), DriverError> {
    check_lengths(dst.bytes(), src.bytes())?;
    stream.context().bind_to_thread()?;
    // SAFETY: both ranges are live allocations of `bytes` bytes held by the caller across the
    // call (and until `stream` is synchronized); each context is the one its range belongs to.
    unsafe {
        sys::cuMemcpyPeerAsync(
            dst.ptr(),
            stream.context().cu_ctx(),
            src.ptr(),
            src_stream.context().cu_ctx(),
            dst.bytes(),
            stream.cu_stream(),
        )
        .result()
    }
}

/// Copies host bytes into `dst` and waits for the copy.
pub(crate) fn upload(stream: &CudaStream, dst: DeviceRange, src: &[u8]) -> Result<(), DriverError> {
    check_lengths(dst.bytes(), src.len())?;
    stream.context().bind_to_thread()?;
    // SAFETY: `dst` is a live allocation of `src.len()` bytes; `src` stays borrowed until the
    // stream is synchronized below, so the driver never reads freed host memory.
    unsafe {
        sys::cuMemcpyHtoDAsync_v2(
            dst.ptr(),
            src.as_ptr().cast(),
            src.len(),
            stream.cu_stream(),
        )
        .result()?;
    }
    stream.synchronize()
}

/// Copies `src` into host bytes and waits for the copy.
pub(crate) fn download(
    stream: &CudaStream,
    dst: &mut [u8],
    src: DeviceRange,
) -> Result<(), DriverError> {
    check_lengths(dst.len(), src.bytes())?;
    stream.context().bind_to_thread()?;
    // SAFETY: `src` is a live allocation of `dst.len()` bytes; `dst` stays mutably borrowed
    // until the stream is synchronized below, so the driver writes only while we hold it.
    unsafe {
        sys::cuMemcpyDtoHAsync_v2(
            dst.as_mut_ptr().cast(),
            src.ptr(),
            dst.len(),
            stream.cu_stream(),
        )
        .result()?;
    }
    stream.synchronize()
}

/// Free and total device memory of the context's device, in bytes.
pub(crate) fn mem_info(ctx: &CudaContext) -> Result<(usize, usize), DriverError> {
    ctx.bind_to_thread()?;
    result::mem_get_info()
}

/// Gives cuBLAS a workspace of `bytes` at `ptr`, so it never allocates on its own (illegal
/// during capture).
pub(crate) fn set_cublas_workspace(
    blas: &cudarc::cublas::CudaBlas,
    ptr: u64,
    bytes: usize,
) -> Result<(), String> {
    // SAFETY: `ptr` is a live allocation of `bytes` owned by the runtime next to the handle and
    // dropped after it (both live in the same `OnceCell` entry).
    let status =
        unsafe { cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut _, bytes) };
    status.result().map_err(|e| format!("{e:?}"))
}
