//! The runtime of `cudagraph`: what the code `#[cuda_graph]` generates calls.
//!
//! One call, followed from the top: a [`Runner`] (built by the generated `<fn>_graphs`
//! constructor) captures one graph per size inside a [`FreezeScope`]; each capture
//! ([`capture`](mod@capture)) first warms up, measuring the memory it will need, then records with
//! allocations served from the runner's [`GraphPool`]; at run time [`dispatch`] maps the batch to a
//! captured size with a table lookup and copies the inputs into static buffers; the graph replays
//! and an [`Output`] borrows the runner.
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

pub mod advice;
mod alloc;
pub mod arena;
pub mod backend;
pub mod capture;
mod context;
mod cublaslt;
pub mod dependent_launch;
pub mod dispatch;
mod dtype;
mod error;
mod ffi;
pub mod freeze;
pub mod gemm;
mod gemm_algo;
mod gemm_lt;
mod generated;
mod kernel_cache;
#[cfg(feature = "nccl")]
pub mod nccl;
mod nvrtc;
pub mod policy;
pub mod pool;
mod runner;
mod shape;
mod static_args;
mod static_inputs;
pub mod stats;
mod tensor;
pub mod testing;

pub use advice::{SizeAdvice, advise_sizes};
#[cfg(feature = "candle")]
pub use backend::candle::Candle;
pub use backend::nodes::GraphMemoryUsage;
pub use backend::raw::CudaTensor;
pub use backend::{Backend, Device, Native};
pub use capture::{CaptureTiming, Graph, Warmup};
pub use context::{CUBLAS_WORKSPACE_BYTES, Runtime};
pub use dispatch::{GraphPlan, InputSpec, OnCaptureError, PadValue, SizeTable};
pub use dtype::{DType, Element};
pub use error::{BoxError, Error, ForwardResult, OpSite, Result, forward_result};
pub use freeze::{FreezeScope, ReclaimPolicy};
pub use gemm::{CUBLASLT_ENV, GEMM_ENV, GemmBackend, GemmTnBf16, LtOutcome};
pub use gemm_algo::GemmAlgoStats;
/// The `n` bucket of a GEMM (see [`gemm`]): exported for measurements.
#[doc(hidden)]
pub use gemm_algo::n_bucket as gemm_n_bucket;
#[doc(hidden)]
pub use gemm_lt::{GemmLtProbe, ProbeAlgo, ProbeCheck};
pub use generated::FunctionId;
pub use kernel_cache::{KernelCacheStats, KernelModule, nvrtc_available};
pub use pool::GraphPool;
pub use runner::{EagerFn, MemoryEstimate, NoStatics, Output, RefreshError, RefreshReport, Runner};
pub use shape::{MAX_RANK, MAX_TENSOR_BYTES, Shape};
pub use static_args::{StaticArg, StaticArgs};
pub use stats::{FallbackReason, RunnerStats, SizeStats};
pub use tensor::{Tensor, TensorView};

/// What the code `#[cuda_graph]` generates calls and users don't.
#[doc(hidden)]
pub mod __private {
    pub use crate::generated::{StaticCmp, ViaBits, ViaPartialEq, function_id, identify};
    pub use crate::static_args::assert_static_arg;
}

/// cudarc, re-exported for kernel launchers (`LaunchConfig`, `PushKernelArg`, ...).
pub use cudarc;
