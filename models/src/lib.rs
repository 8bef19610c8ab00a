//! Models written with `#[cuda_graph]`: what cudagraph's examples, benches and GPU suite run.
//!
//! This crate sits above `cudagraph` (the attribute, the graph runtime and the native tensor
//! library) and is never a dependency of it: tokenizers, safetensors and JSON parsing are paid
//! for here only. It imports `cudagraph` and nothing of the crates below it directly.
//!
//! * [`llama`]: the Llama-family decoder (Llama, Qwen2, Qwen3, Mistral variants), random or
//!   from given weights;
//! * [`hf`]: loading Hugging Face checkpoint folders (`config.json` + safetensors) into it;
//! * [`weights`]: the host-side weights a loader produces;
//! * [`tp`]: tensor parallelism: the decoder sharded over several GPUs, one thread per GPU,
//!   with NCCL all-reduces captured in each rank's graphs;
//! * [`reference`](mod@reference): the same decode step on the host, for tests;
//! * [`serving`]: continuous batching over the decoder's step of mixed tokens
//!   ([`Llama::forward_step`](llama::Llama::forward_step)): a seeded trace, a scheduler, the
//!   step's tables and the figures of a run;
//! * [`cudarc_mlp`]: a two-layer MLP written on plain cudarc (its own NVRTC kernel, cudarc's
//!   cuBLAS), captured through the raw cudarc backend.

#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

#[cfg(feature = "candle")]
pub mod candle_decoder;
pub mod cudarc_mlp;
pub mod hf;
pub mod llama;
mod llama_config;
pub mod reference;
pub mod serving;
#[cfg(feature = "nccl")]
pub mod tp;
pub mod weights;

/// candle-nn, as the candle decoder uses it (feature `candle`).
#[cfg(feature = "candle")]
pub use candle_nn;
/// candle-transformers, for the BERT test (feature `candle-transformers`).
#[cfg(feature = "candle-transformers")]
pub use candle_transformers;
