//! The graph runtime of `cudagraph`: what the code `#[cuda_graph]` generates calls, for every
//! backend.
//!
//! It holds the graph machinery and nothing else: dispatch of a batch to a captured size
//! ([`dispatch`]), the runner (capture per size, replay, eager fallback, refresh, release;
//! [`Runner`]), the static inputs a replay copies into, the graph pool ([`GraphPool`]: arena,
//! chunks, release and resume) and the router that serves a pool-mode device's allocations from
//! it ([`routing`]), pool-mode capture ([`pool_capture`]), graph-memory-node mode
//! ([`backend::nodes`]), the freeze scope ([`FreezeScope`]), statistics and size advice, the
//! backend seam ([`Backend`], [`BackendOps`](backend::BackendOps)) with the plain-cudarc and
//! candle adapters, and the driver FFI these need.
//!
//! What it must not import: any tensor library of its own, GEMM, NCCL, or the crates above it
//! (`cudagraph-kernels`, the facade, the models). cudagraph's native tensors (`Runtime`,
//! `Tensor`, the ops) live in `cudagraph-kernels`, which implements the seam for them.
//!
//! One call, followed from the top: a [`Runner`] (built by the generated `<fn>_graphs`
//! constructor) captures one graph per size inside a [`FreezeScope`]; the backend captures
//! each size (pool mode: warm up, measuring the memory it will need, then record with
//! allocations served from the runner's [`GraphPool`]; node mode: the driver's graph memory
//! nodes); at run time [`dispatch`] maps the batch to a captured size with a table lookup and
//! the static inputs take a copy of the call's inputs; the graph replays and an [`Output`]
//! borrows the runner.
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

pub mod advice;
pub mod arena;
pub mod backend;
pub mod dispatch;
mod dtype;
mod error;
pub mod ffi;
pub mod freeze;
mod generated;
pub mod islands;
mod kernel_cache;
mod key_args;
pub mod keys;
pub mod nvrtc;
pub mod policy;
pub mod pool;
pub mod pool_capture;
pub mod routing;
mod runner;
mod seal;
mod segments;
mod shape;
mod static_args;
mod static_inputs;
pub mod stats;

pub use advice::{BucketAdvice, SizeAdvice, advise_buckets, advise_sizes};
#[cfg(feature = "candle")]
pub use backend::candle::Candle;
pub use backend::nodes::{GraphMemoryUsage, StreamPoolUsage};
pub use backend::raw::{CudaTensor, Raw};
pub use backend::{Backend, Device, Seal};
pub use dispatch::{GraphPlan, InputSpec, OnCaptureError, PadValue, SizeTable, SpecSource};
pub use dtype::{DType, Element};
pub use error::{BoxError, Error, ForwardResult, OpSite, Result, forward_result};
pub use freeze::{FreezeScope, ReclaimPolicy};
pub use generated::FunctionId;
pub use islands::Islands;
pub use kernel_cache::{KernelCache, KernelCacheStats, KernelModule, nvrtc_available};
pub use keys::{DimBuckets, HostKeys, KeyMiss, KeySpace, ValueBuckets, Variants};
pub use pool::GraphPool;
pub use pool_capture::{CaptureTiming, Warmup};
pub use runner::{
    EAGER_ENV, EagerFn, FnRunner, MemoryEstimate, NoLive, NoStatics, Output, RefreshError,
    RefreshReport, Runner, Staged,
};
pub use shape::{MAX_RANK, MAX_TENSOR_BYTES, Shape};
pub use static_args::{StaticArg, StaticArgs};
pub use stats::{FallbackReason, KeyHistogram, KeyHistograms, KeyKind, RunnerStats, SizeStats};

/// What the code `#[cuda_graph]` generates calls and users don't.
#[doc(hidden)]
pub mod __private {
    pub use crate::generated::{StaticCmp, ViaBits, ViaPartialEq, function_id, identify};
    pub use crate::key_args::{
        BucketValue, VariantValue, assert_bucket_arg, assert_variant_arg, check_buckets_fit,
    };
    pub use crate::keys::KeyMiss;
    pub use crate::runner::refresh_typed as refresh;
    pub use crate::static_args::assert_static_arg;
}

/// cudarc, re-exported for kernel launchers (`LaunchConfig`, `PushKernelArg`, ...).
///
/// cudarc's own graph API (`CudaStream::begin_capture`, `CudaGraph`) is reachable through it:
/// it is safe in cudarc and tracks no lifetimes, so a graph captured with it directly is
/// cudarc's, outside every guarantee of this crate.
pub use cudarc;
