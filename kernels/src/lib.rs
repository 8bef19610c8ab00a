//! CUDA kernels of `cudagraph` and the safe op launchers its examples use.
//!
//! * [`modules`]: the CUDA C++ sources, one [`KernelModule`](cudagraph_runtime::KernelModule)
//!   per family (`norm`, `rope`, `attention`, `elementwise`), compiled by NVRTC at first use.
//!   They include no header: bf16 is handled as raw bits by a common prelude.
//! * [`ops`]: typed launchers for a Llama-style decoder (embedding, RMS norm, fused
//!   residual-add + RMS norm, RoPE with the KV-cache write (optionally after Qwen3's per-head
//!   q/k RMS norm), decode attention, SwiGLU, adds, cuBLAS linear layers, random fills and
//!   casts). Each validates its arguments, allocates its
//!   outputs through the runtime (so it can be captured into a CUDA graph) and launches on the
//!   runtime's stream.
//! * [`reference`](mod@reference): plain-Rust f32 references of the same math, for tests on the host.
//!
//! All `unsafe` code lives in one private module (kernel launches and the cuBLAS call).
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    missing_docs
)]

mod ffi;
pub mod modules;
pub mod ops;
pub mod reference;
