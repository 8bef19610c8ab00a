//! Models written with `#[cuda_graph]`: what the examples, tests and benches run.
//!
//! * [`llama`]: the Llama-family decoder (Llama, Qwen2, Qwen3, Mistral variants), random or
//!   from given weights;
//! * [`hf`]: loading Hugging Face checkpoint folders (`config.json` + safetensors) into it;
//! * [`weights`]: the host-side weights a loader produces;
//! * [`tp`]: tensor parallelism: the decoder sharded over several GPUs, one thread per GPU,
//!   with NCCL all-reduces captured in each rank's graphs;
//! * [`reference`](mod@reference): the same decode step on the host, for tests;
//! * [`cudarc_mlp`]: a two-layer MLP written on plain cudarc (its own NVRTC kernel, cudarc's
//!   cuBLAS), captured through the raw cudarc backend.

#[cfg(feature = "candle")]
pub mod candle_decoder;
pub mod cudarc_mlp;
pub mod hf;
pub mod llama;
pub mod reference;
#[cfg(feature = "nccl")]
pub mod tp;
pub mod weights;
