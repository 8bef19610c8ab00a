//! The native tensor world of `cudagraph`: a device context with its own stream ([`Runtime`]),
//! [`Tensor`]s and their views, allocation through the graph runtime's pool router, GEMM
//! (cuBLAS, cuBLASLt and its algorithm cache, a built-in kernel), programmatic dependent
//! launch, NCCL (feature `nccl`), the CUDA kernels and their typed op launchers, and the native
//! backend of the graph runtime ([`Native`]: pool-mode capture of forwards written on these
//! tensors).
//!
//! * [`modules`]: the CUDA C++ sources, one [`KernelModule`] per family (`norm`, `rope`,
//!   `attention`, `elementwise`, `gemm`, `gemv`), compiled by NVRTC at first use and cached on
//!   disk (the graph runtime's kernel cache, which its own input-copy kernel uses too).
//! * [`ops`]: typed launchers for a Llama-style decoder. Each validates its arguments,
//!   allocates its outputs through the runtime (so it can be captured into a CUDA graph) and
//!   launches on the runtime's stream.
//! * [`reference`](mod@reference): plain-Rust f32 references of the same math, for tests.
//!
//! Arrows point down: this crate uses `cudagraph-runtime` (the graph machinery), never the
//! reverse, and imports nothing above it (the facade, the models).
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

mod context;
mod cublaslt;
pub mod dependent_launch;
mod ffi;
pub mod gemm;
mod gemm_algo;
mod gemm_lt;
mod gemm_lt_probe;
mod graph;
pub mod modules;
mod native;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod ops;
mod preload;
pub mod reference;
mod runtime_gemm;
mod tensor;
pub mod testing;

pub use context::Runtime;
pub use gemm::{
    CUBLAS_WORKSPACE_BYTES, CUBLASLT_ENV, GEMM_ENV, GemmBackend, GemmTnBf16, LtOutcome,
};
pub use gemm_algo::GemmAlgoStats;
/// The `n` bucket of a GEMM (see [`gemm`]): exported for measurements.
#[doc(hidden)]
pub use gemm_algo::n_bucket as gemm_n_bucket;
#[doc(hidden)]
pub use gemm_lt_probe::{GemmLtProbe, ProbeAlgo, ProbeCheck};
pub use graph::Graph;
pub use native::{Native, NativeKeep, NativeOutput};
pub use preload::PRELOAD_ENV;
pub use tensor::{Tensor, TensorView};

pub use cudagraph_runtime::{
    DType, Element, Error, InputSpec, KernelCacheStats, KernelModule, OpSite, Result, Shape,
    nvrtc_available,
};

/// A [`Runner`](cudagraph_runtime::Runner) of the native backend by default:
/// `Runner<'m, N, S = (), B = Native, L = ()>` (`L`: the islands' live arguments).
///
/// Without the macro (what `#[cuda_graph]` generates calls this):
///
/// ```no_run
/// use cudagraph_kernels::{DType, InputSpec, Result, Runner, Runtime};
/// use cudagraph_runtime::GraphPlan;
/// # fn main() -> Result<()> {
/// let rt = Runtime::new(0)?;
/// let plan = GraphPlan::new("copy_rows", &[1, 2, 4], 0)?;
/// let specs = [InputSpec::new(DType::F32, &[8])?];
/// // The forward: any work on the runtime's stream (here a device copy of its input).
/// let mut graphs: Runner<'_, 1> = Runner::capture(&rt, plan, specs, (), |rt: &Runtime, [x], ()| {
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
pub type Runner<'m, const N: usize, S = (), B = Native, L = ()> =
    cudagraph_runtime::Runner<'m, N, S, B, L>;

/// An [`FnRunner`](cudagraph_runtime::FnRunner) (the runner of one annotated function) of the
/// native backend by default.
pub type FnRunner<'m, F, const N: usize, S = (), B = Native, L = ()> =
    cudagraph_runtime::FnRunner<'m, F, N, S, B, L>;

/// An [`Output`](cudagraph_runtime::Output) of the native backend by default.
pub type Output<'r, B = Native> = cudagraph_runtime::Output<'r, B>;

/// An [`EagerFn`](cudagraph_runtime::EagerFn) of the native backend by default.
pub type EagerFn<'m, const N: usize, S, B = Native, L = ()> =
    cudagraph_runtime::EagerFn<'m, N, S, B, L>;

/// The [`Islands`](cudagraph_runtime::Islands) of a forward, of the native backend by default:
/// `Islands<'i, 'l, L = (), B = Native>` (a forward takes `islands: &Islands<L>`).
pub type Islands<'i, 'l, L = (), B = Native> = cudagraph_runtime::Islands<'i, 'l, B, L>;
