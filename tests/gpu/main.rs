//! The GPU suite, one binary (it travels to the GPU machine as one file; see scripts/gpu.sh).
//!
//! Without a GPU every test prints why it skipped and passes; with `CUDAGRAPH_REQUIRE_GPU=1` a
//! missing GPU fails them. Inputs are drawn fresh each run (the seed is printed), outputs are
//! poisoned with NaN before each run, and graph results are compared with the eager path.

mod background;
#[cfg(feature = "candle")]
mod candle_backend;
mod capture;
mod common;
mod coverage;
mod cudarc_backend;
mod features;
mod footprint;
mod gemm_lt;
mod hf;
mod islands;
mod kernels;
mod keys;
mod memory;
mod prefill;
mod reliability;
mod runner;
mod serving;
mod soundness;
mod staged;
mod step_kernels;
#[cfg(feature = "nccl")]
mod tp;
#[cfg(feature = "nccl")]
mod tp_launch;
