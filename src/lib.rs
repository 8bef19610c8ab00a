//! # cudagraph
//!
//! Turn a model's forward function into CUDA graphs: one graph per batch size captured at init,
//! each call dispatched to the smallest captured size that fits (inputs padded), replayed, with an
//! eager fallback for shapes no graph covers.
//!
//! ```no_run
//! use cudagraph::{cuda_graph, DType, InputSpec, Result, Runtime, Tensor};
//!
//! struct Model { w: Tensor }
//!
//! impl Model {
//!     #[cuda_graph(sizes = [1, 2, 4, 8])]
//!     fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
//!         cudagraph::ops::linear(rt, x, &self.w)
//!     }
//! }
//!
//! fn main() -> Result<()> {
//!     let rt = Runtime::new(0)?;
//!     let model = Model { w: rt.zeros(&[16, 16], DType::BF16)? };
//!     let mut graphs = model.forward_graphs(&rt, [InputSpec::new(DType::BF16, &[16])?])?;
//!     let x = rt.zeros(&[3, 16], DType::BF16)?;
//!     let y = graphs.run([&x])?; // replays the size-4 graph, returns 3 rows
//!     assert_eq!(y.shape(), &[3, 16]);
//!     Ok(())
//! }
//! ```
//!
//! The crates behind it, each re-exported here, and nothing of this crate's own but these docs:
//! `cudagraph-macros` (the attribute), `cudagraph-runtime` (the graph machinery, for every
//! backend: runner, dispatch, pool, freeze scope, the plain-cudarc and candle adapters) and
//! `cudagraph-kernels` (the native tensor world: `Runtime`, `Tensor`, GEMM, NCCL, the ops
//! under [`ops`], and the native backend). Models (Llama, Hugging Face checkpoints, tensor
//! parallelism, the candle decoder, the cudarc MLP) are the separate crate `cudagraph-models`,
//! which this one does not depend on: the attribute costs no tokenizer, safetensors or JSON
//! parser.

extern crate self as cudagraph;

pub use cudagraph_macros::cuda_graph;
pub use cudagraph_runtime::*;

// The native library's types and the runner types with the native backend as their default
// (`Runner<'m, N, S = (), B = Native>`): these names shadow the runtime's generic ones.
/// NCCL communicators and collectives (feature `nccl`).
#[cfg(feature = "nccl")]
pub use cudagraph_kernels::nccl;
pub use cudagraph_kernels::{
    CUBLAS_WORKSPACE_BYTES, CUBLASLT_ENV, EagerFn, FnRunner, GEMM_ENV, GemmAlgoStats, GemmBackend,
    GemmTnBf16, Graph, Islands, LtOutcome, Native, Output, Runner, Runtime, Tensor, TensorView,
    dependent_launch, gemm, testing,
};
#[doc(hidden)]
pub use cudagraph_kernels::{GemmLtProbe, ProbeAlgo, ProbeCheck, gemm_n_bucket};

/// candle's core crate, the version the candle backend is built against (feature `candle`).
#[cfg(feature = "candle")]
pub use candle_core;

/// The `half` crate, for bf16/f16 host values (`rt.upload(&[half::bf16::from_f32(1.0)], ..)`,
/// `rt.download::<half::bf16>(&t)`): re-exported so a user crate needs no dependency of its own.
pub use half;

/// CUDA kernels and their safe launchers.
pub use cudagraph_kernels as kernels;
/// The ops a model's forward calls (`linear`, `rms_norm`, `attention_decode`, ...).
pub use cudagraph_kernels::ops;
