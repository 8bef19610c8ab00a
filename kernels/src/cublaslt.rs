//! cuBLASLt at the FFI edge (`unsafe` only here): the handle, the matmul descriptor, matrix
//! layouts and heuristic preferences as owning types, and the four calls the GEMM path makes
//! (heuristic query, algorithm check, matmul, and reading an algorithm's configuration).
//!
//! Every object here is a host-side cuBLASLt object: creating, using and destroying one touches
//! no device memory. Only [`matmul`] enqueues device work, and it is `unsafe` because the
//! caller vouches for the device addresses.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::cublaslt::sys;
use cudarc::driver::sys::CUstream;

use crate::gemm_algo::StoredAlgo;

/// A cuBLASLt status as text (`CUBLAS_STATUS_NOT_SUPPORTED`, ...).
fn status_text(status: sys::cublasStatus_t) -> String {
    format!("{status:?}")
}

fn check(call: &'static str, status: sys::cublasStatus_t) -> Result<(), (&'static str, String)> {
    match status {
        sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        other => Err((call, status_text(other))),
    }
}

/// A failed cuBLASLt call: its name and the status.
pub(crate) type LtError = (&'static str, String);

/// Whether libcublasLt can be loaded (and is not a stub). Must be true before anything else of
/// this module is called: under dynamic loading, cudarc panics on a missing library.
pub(crate) fn present() -> bool {
    #[cfg(not(feature = "dynamic-linking"))]
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    return unsafe { sys::is_culib_present() };
    #[cfg(feature = "dynamic-linking")]
    {
        let mut major = 0;
        // SAFETY: writes one int through a valid pointer; needs no handle. The stub library of
        // `scripts/cuda-toolchain.sh` answers with an error status.
        unsafe {
            sys::cublasLtGetProperty(sys::libraryPropertyType::MAJOR_VERSION, &mut major)
                == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
        }
    }
}

/// The library's version (`cublasLtGetVersion`, e.g. 130100 for 13.1.0). Call only where
/// [`present`] is true.
pub(crate) fn version() -> usize {
    // SAFETY: takes no argument and returns a number; the library is loaded (`present`).
    unsafe { sys::cublasLtGetVersion() }
}

/// An owned `cublasLtHandle_t`, destroyed on drop.
#[derive(Debug)]
pub(crate) struct Handle(sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle is a host object not tied to the thread that created it (NVIDIA:
// the handle may be used from any host thread); the runtime that owns it is `Send + !Sync`, so
// one thread uses it at a time.
unsafe impl Send for Handle {}

impl Handle {
    /// Creates a handle (`cublasLtCreate`); needs a CUDA context current on this thread. Call
    /// only where [`present`] is true.
    pub(crate) fn new() -> Result<Self, LtError> {
        let mut handle = MaybeUninit::uninit();
        // SAFETY: writes the new handle through a valid pointer; read only on success.
        check("cublasLtCreate", unsafe {
            sys::cublasLtCreate(handle.as_mut_ptr())
        })?;
        // SAFETY: initialised by the successful call above.
        Ok(Self(unsafe { handle.assume_init() }))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `new` and is destroyed once, here; nothing uses it
        // afterwards. An error can't be acted on in a drop (and never panics).
        let _ = unsafe { sys::cublasLtDestroy(self.0) };
    }
}

/// An owned matmul descriptor: f32 compute and scale, `op(A) = A^T`, `op(B) = B`.
#[derive(Debug)]
pub(crate) struct MatmulDesc(sys::cublasLtMatmulDesc_t);

// SAFETY: a host object without thread affinity, used by one thread at a time (as `Handle`).
unsafe impl Send for MatmulDesc {}

impl MatmulDesc {
    /// The descriptor of `C = A^T B` with f32 accumulation and f32 `alpha`/`beta` on the host.
    pub(crate) fn tn_f32() -> Result<Self, LtError> {
        let mut desc = MaybeUninit::uninit();
        // SAFETY: writes the new descriptor through a valid pointer; read only on success.
        check("cublasLtMatmulDescCreate", unsafe {
            sys::cublasLtMatmulDescCreate(
                desc.as_mut_ptr(),
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
        })?;
        // SAFETY: initialised by the successful call above.
        let desc = Self(unsafe { desc.assume_init() });
        // cublasOperation_t values (an int32 attribute): CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        for (attr, op) in [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                1i32,
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                0i32,
            ),
        ] {
            // SAFETY: the descriptor is live; the buffer is an int32 of the size passed, read
            // during the call only.
            check("cublasLtMatmulDescSetAttribute", unsafe {
                sys::cublasLtMatmulDescSetAttribute(
                    desc.0,
                    attr,
                    (&op as *const i32).cast::<c_void>(),
                    std::mem::size_of::<i32>(),
                )
            })?;
        }
        Ok(desc)
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by `tn_f32`, destroyed once; errors are ignored in a drop.
        let _ = unsafe { sys::cublasLtMatmulDescDestroy(self.0) };
    }
}

/// An owned column-major bf16 matrix layout.
#[derive(Debug)]
pub(crate) struct Layout(sys::cublasLtMatrixLayout_t);

// SAFETY: a host object without thread affinity, used by one thread at a time (as `Handle`).
unsafe impl Send for Layout {}

impl Layout {
    /// A `rows x cols` bf16 matrix, column-major, columns `ld` elements apart.
    pub(crate) fn bf16(rows: u64, cols: u64, ld: i64) -> Result<Self, LtError> {
        let mut layout = MaybeUninit::uninit();
        // SAFETY: writes the new layout through a valid pointer; read only on success.
        check("cublasLtMatrixLayoutCreate", unsafe {
            sys::cublasLtMatrixLayoutCreate(
                layout.as_mut_ptr(),
                sys::cudaDataType_t::CUDA_R_16BF,
                rows,
                cols,
                ld,
            )
        })?;
        // SAFETY: initialised by the successful call above.
        Ok(Self(unsafe { layout.assume_init() }))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by `bf16`, destroyed once; errors are ignored in a drop.
        let _ = unsafe { sys::cublasLtMatrixLayoutDestroy(self.0) };
    }
}

/// Owned heuristic preferences: the workspace limit and the operands' alignments.
#[derive(Debug)]
pub(crate) struct Preference(sys::cublasLtMatmulPreference_t);

impl Preference {
    /// Algorithms needing at most `workspace` bytes and working at the alignments (bytes) of
    /// A, B and C (D is C).
    pub(crate) fn new(workspace: usize, align: [u32; 3]) -> Result<Self, LtError> {
        use sys::cublasLtMatmulPreferenceAttributes_t as Attr;
        let mut pref = MaybeUninit::uninit();
        // SAFETY: writes the new preference through a valid pointer; read only on success.
        check("cublasLtMatmulPreferenceCreate", unsafe {
            sys::cublasLtMatmulPreferenceCreate(pref.as_mut_ptr())
        })?;
        // SAFETY: initialised by the successful call above.
        let pref = Self(unsafe { pref.assume_init() });
        let bytes = workspace as u64;
        // SAFETY: the preference is live; the buffer is the uint64 the attribute takes.
        check("cublasLtMatmulPreferenceSetAttribute", unsafe {
            sys::cublasLtMatmulPreferenceSetAttribute(
                pref.0,
                Attr::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&bytes as *const u64).cast::<c_void>(),
                std::mem::size_of::<u64>(),
            )
        })?;
        for (attr, value) in [
            (Attr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align[0]),
            (Attr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align[1]),
            (Attr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align[2]),
            (Attr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align[2]),
        ] {
            // SAFETY: the preference is live; the buffer is the uint32 the attribute takes.
            check("cublasLtMatmulPreferenceSetAttribute", unsafe {
                sys::cublasLtMatmulPreferenceSetAttribute(
                    pref.0,
                    attr,
                    (&value as *const u32).cast::<c_void>(),
                    std::mem::size_of::<u32>(),
                )
            })?;
        }
        Ok(pref)
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once; errors are ignored in a drop.
        let _ = unsafe { sys::cublasLtMatmulPreferenceDestroy(self.0) };
    }
}

/// The operation and operand layouts of one matmul (`D` has `C`'s layout and address).
#[derive(Clone, Copy)]
pub(crate) struct Operation<'a> {
    pub(crate) desc: &'a MatmulDesc,
    pub(crate) a: &'a Layout,
    pub(crate) b: &'a Layout,
    pub(crate) c: &'a Layout,
}

fn to_algo(words: &[u64; 8]) -> sys::cublasLtMatmulAlgo_t {
    sys::cublasLtMatmulAlgo_t { data: *words }
}

/// The heuristic's first choice for `op` under `pref` (`cublasLtMatmulAlgoGetHeuristic`, one
/// algorithm requested); `None` when it has none.
pub(crate) fn heuristic(
    handle: &Handle,
    op: Operation<'_>,
    pref: &Preference,
) -> Result<Option<StoredAlgo>, LtError> {
    let mut result = MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::zeroed();
    let mut count = 0i32;
    // SAFETY: every object is live (borrowed for the call); the result array has room for the
    // one algorithm requested and `count` receives how many were written. Host-only: nothing
    // is enqueued.
    check("cublasLtMatmulAlgoGetHeuristic", unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle.0,
            op.desc.0,
            op.a.0,
            op.b.0,
            op.c.0,
            op.c.0,
            pref.0,
            1,
            result.as_mut_ptr(),
            &mut count,
        )
    })?;
    if count < 1 {
        return Ok(None);
    }
    // SAFETY: zero-initialised (a valid bit pattern for this plain C struct) and written by the
    // library for the one result it returned.
    let result = unsafe { result.assume_init() };
    if result.state != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Ok(None);
    }
    Ok(Some(StoredAlgo {
        algo: result.algo.data,
        workspace: result.workspaceSize,
    }))
}

/// Whether `algo` can run `op` (`cublasLtMatmulAlgoCheck`): `Ok(bytes)`, the workspace it needs
/// there, or the status that refuses it.
pub(crate) fn check_algo(
    handle: &Handle,
    op: Operation<'_>,
    algo: &[u64; 8],
) -> Result<usize, LtError> {
    let algo = to_algo(algo);
    let mut result = MaybeUninit::<sys::cublasLtMatmulHeuristicResult_t>::zeroed();
    // SAFETY: every object is live; `algo` is 64 bytes of a heuristic result, or read from the
    // on-disk table, whose header names this exact library version and GPU (cuBLASLt documents
    // the struct as trivially serializable for one version). The file is trusted as the
    // kernel-cache folder's CUBINs are, which are loaded as code: whoever can write that folder
    // can run code in this process either way. This call is the library's own validation of
    // the struct against the operation, and it only reads it. Host-only.
    check("cublasLtMatmulAlgoCheck", unsafe {
        sys::cublasLtMatmulAlgoCheck(
            handle.0,
            op.desc.0,
            op.a.0,
            op.b.0,
            op.c.0,
            op.c.0,
            &algo,
            result.as_mut_ptr(),
        )
    })?;
    // SAFETY: zero-initialised plain C struct, filled by the successful call.
    let result = unsafe { result.assume_init() };
    check("cublasLtMatmulAlgoCheck", result.state)?;
    Ok(result.workspaceSize)
}

/// The device side of one matmul.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Buffers {
    /// A's address.
    pub(crate) a: u64,
    /// B's address.
    pub(crate) b: u64,
    /// C's (and D's) address; written.
    pub(crate) c: u64,
    /// The workspace's address and size in bytes.
    pub(crate) workspace: (u64, usize),
    /// The stream the matmul is enqueued on.
    pub(crate) stream: CUstream,
}

/// Enqueues `D = C = alpha op(A) op(B) + beta C` with `alpha = 1`, `beta = 0` (`C` is not read)
/// on `buffers.stream` with `algo`.
///
/// # Safety
///
/// The CUDA context of `buffers.stream` is current on this thread; `a`, `b` and `c` are live
/// device allocations of that context covering every element `op`'s layouts address, `c`
/// overlaps neither input, and all three stay allocated until the matmul has run (or, during a
/// capture, for as long as the graph can replay); the workspace is live device memory of at
/// least its size that nothing else uses concurrently, and at least what `check_algo` reported
/// for `algo` and `op`; `algo` passed `check_algo` for `op`.
pub(crate) unsafe fn matmul(
    handle: &Handle,
    op: Operation<'_>,
    algo: &[u64; 8],
    buffers: Buffers,
) -> Result<(), LtError> {
    let alpha: f32 = 1.0;
    let beta: f32 = 0.0;
    let algo = to_algo(algo);
    // SAFETY: the objects are live; alpha and beta are host f32 values (the descriptor's host
    // pointer mode and f32 scale type) read before the call returns; the device addresses,
    // workspace and stream satisfy this function's contract, upheld by its caller.
    check("cublasLtMatmul", unsafe {
        sys::cublasLtMatmul(
            handle.0,
            op.desc.0,
            (&alpha as *const f32).cast::<c_void>(),
            buffers.a as *const c_void,
            op.a.0,
            buffers.b as *const c_void,
            op.b.0,
            (&beta as *const f32).cast::<c_void>(),
            buffers.c as *const c_void,
            op.c.0,
            buffers.c as *mut c_void,
            op.c.0,
            &algo,
            buffers.workspace.0 as *mut c_void,
            buffers.workspace.1,
            buffers.stream as sys::cudaStream_t,
        )
    })
}

/// A short description of an algorithm's configuration (id, tile, stages, split-K, cluster),
/// for measurement tables.
pub(crate) fn describe(algo: &[u64; 8]) -> String {
    use sys::cublasLtMatmulAlgoConfigAttributes_t as Attr;
    let algo = to_algo(algo);
    let read = |attr: Attr, size: usize| -> Option<u64> {
        let mut value = 0u64;
        let mut written = 0usize;
        // SAFETY: `algo` is a live local; the buffer is 8 bytes, of which `size` (the
        // attribute's own size, at most 8) are offered; the library writes at most that.
        let status = unsafe {
            sys::cublasLtMatmulAlgoConfigGetAttribute(
                &algo,
                attr,
                (&mut value as *mut u64).cast::<c_void>(),
                size,
                &mut written,
            )
        };
        (status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(value)
    };
    let field = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    format!(
        "id {} tile {} stages {} splitk {} cluster {}",
        field(read(Attr::CUBLASLT_ALGO_CONFIG_ID, 4)),
        field(read(Attr::CUBLASLT_ALGO_CONFIG_TILE_ID, 4)),
        field(read(Attr::CUBLASLT_ALGO_CONFIG_STAGES_ID, 4)),
        field(read(Attr::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 4)),
        field(read(Attr::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, 2)),
    )
}
