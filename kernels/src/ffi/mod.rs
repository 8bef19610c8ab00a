//! Every raw CUDA, cuBLAS and driver call of the crate beyond cudarc's safe API (NCCL's are in
//! [`nccl`](crate::nccl), cuBLASLt's in `cublaslt.rs`): the calls the runtime makes
//! (`driver.rs`) and the ones the op launchers make (`launch.rs`: kernel launches, the GEMM).

mod driver;
mod launch;

pub(crate) use driver::{
    copy_peer, cublas_present, download, mem_info, preload_gemm_libraries, set_cublas_workspace,
    upload,
};
#[cfg(test)]
pub(crate) use launch::nvrtc_present;
pub(crate) use launch::{Arg, GemmTn, gemm_bf16_tn, launch};
