//! The small-batch linear kernel (`cu/gemv.cu`): `y = prologue(x) @ w^T (+ bias)` for at most
//! [`GEMV_MAX_ROWS`] rows, one launch, with the input's norm or activation computed in the
//! kernel's prologue.
//!
//! Used by [`linear`](super::linear) when the batch is small, and by the fused ops of
//! [`fused_linear`](super::fused_linear). Callers validate dtypes and shapes; [`eligible`] says
//! whether the kernel can take the sizes and addresses at hand, and each caller falls back to
//! the unfused kernels when it can't.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::{Result, Runtime, Tensor};
use cudagraph_runtime::cudarc::driver::sys::CUfunction_attribute;
use cudagraph_runtime::cudarc::driver::{CudaFunction, LaunchConfig};

use super::check;
use crate::ffi::{self, Arg};
use crate::modules::{GEMV, names};

/// The most rows the launchers give the small-batch kernels: one row runs on CUDA cores
/// (`gemv_r1_bf16`), two on tensor cores (`gemv_mma_bf16`, which takes up to 8). On an H200
/// the tensor-core kernel at 4 and 8 rows lost to cuBLAS on the large projections (a decode
/// step at batch 8: 1631 µs against 1228 µs through cuBLAS; see `bench/NOTES.md`), so three
/// rows and more go to the GEMM backend.
pub(crate) const GEMV_MAX_ROWS: usize = 2;

/// Outputs per block and tile of both kernels (8 warps x 1 output; one 8-column mma tile).
const GEMV_OUTS_PER_TILE: usize = 8;

/// Bytes of the tensor-core kernel's partial sums after the staged rows (8 warps x 32 float2).
const MMA_PARTIAL_BYTES: usize = 8 * 32 * 8;

/// Bytes of the opt-in limit left for static shared memory and the driver's reserve.
const SHARED_MEM_RESERVE: usize = 4 * 1024;

/// Threads per block: `GEMV_WARPS` (8) warps.
const GEMV_THREADS: u32 = 32 * 8;

/// The kernel for `rows` rows: the CUDA-core one for a single row, else the tensor-core one.
fn kernel(rows: usize) -> &'static str {
    if rows == 1 {
        names::GEMV_R1_BF16
    } else {
        names::GEMV_MMA_BF16
    }
}

/// Blocks launched at most (a bound on top of one wave of resident blocks).
const GEMV_MAX_BLOCKS: usize = 4096;

/// Dynamic shared memory a kernel may use without opting in to more.
const SHARED_MEM_DEFAULT: usize = 48 * 1024;

/// How the kernel makes its input rows (`GEMV_*` modes of `cu/gemv.cu`).
#[derive(Clone, Copy)]
pub(crate) enum Prologue<'a> {
    /// The rows of `x` as they are.
    Copy,
    /// `rms_norm(x, weight, eps)`.
    RmsNorm { weight: &'a Tensor, eps: f32 },
    /// `s = bf16(x + delta)` (written to `sum`), then `rms_norm(s, weight, eps)`.
    AddRmsNorm {
        delta: &'a Tensor,
        weight: &'a Tensor,
        eps: f32,
        sum: &'a Tensor,
    },
    /// `silu(x[:, :k]) * x[:, k:]`: `x` is `[rows, 2k]`.
    SiluMul,
}

impl Prologue<'_> {
    fn mode(&self) -> i32 {
        match self {
            Self::Copy => 0,
            Self::RmsNorm { .. } => 1,
            Self::AddRmsNorm { .. } => 2,
            Self::SiluMul => 3,
        }
    }

    /// The tensors the kernel reads or writes in 16-byte chunks, besides `x` and `w`.
    fn chunked(&self) -> [Option<&Tensor>; 3] {
        match self {
            Self::Copy | Self::SiluMul => [None; 3],
            Self::RmsNorm { weight, .. } => [Some(weight), None, None],
            Self::AddRmsNorm {
                delta, weight, sum, ..
            } => [Some(delta), Some(weight), Some(sum)],
        }
    }
}

/// The sizes of one small-batch linear: `rows` input rows of `ins` elements (after the
/// prologue), `outs` outputs per row.
#[derive(Clone, Copy)]
pub(crate) struct GemvSizes {
    pub(crate) rows: usize,
    pub(crate) outs: usize,
    pub(crate) ins: usize,
}

/// Dynamic shared memory of one launch (the staged input rows, bf16, and the tensor-core
/// kernel's partial sums), or `None` when it exceeds `limit` (the device's opt-in maximum,
/// less a reserve).
fn shared_bytes(sizes: GemvSizes, limit: usize) -> Option<usize> {
    let rows = sizes.rows.checked_mul(sizes.ins)?.checked_mul(2)?;
    let total = rows.checked_add(if sizes.rows > 1 { MMA_PARTIAL_BYTES } else { 0 })?;
    (total <= limit).then_some(total)
}

/// The dynamic shared memory the kernels may use on `rt`'s device: its opt-in maximum less
/// [`SHARED_MEM_RESERVE`], and never less than the default 48 KiB.
fn shared_limit(rt: &Runtime) -> usize {
    rt.max_shared_memory_per_block_optin()
        .saturating_sub(SHARED_MEM_RESERVE)
        .max(SHARED_MEM_DEFAULT)
}

/// Whether a kernel can run these sizes on these tensors: few enough rows, rows that fit in
/// shared memory, `ins` a multiple of 8 (of 32, and compute capability 8.0, for the tensor-core
/// kernel) and every chunked tensor 16-byte aligned (a view at an odd offset is not).
pub(crate) fn eligible(
    rt: &Runtime,
    sizes: GemvSizes,
    x: &Tensor,
    w: &Tensor,
    prologue: &Prologue<'_>,
) -> bool {
    let aligned = |t: &Tensor| t.device_ptr() % 16 == 0;
    let mma_ok = sizes.rows == 1 || (sizes.ins % 32 == 0 && rt.compute_capability().0 >= 8);
    (1..=GEMV_MAX_ROWS).contains(&sizes.rows)
        && mma_ok
        && sizes.ins % 8 == 0
        && sizes.outs > 0
        && shared_bytes(sizes, shared_limit(rt)).is_some()
        && aligned(x)
        && aligned(w)
        && prologue.chunked().into_iter().flatten().all(aligned)
}

/// Blocks of `func` resident per SM with `shared` bytes of dynamic shared memory, asked of the
/// driver once per (function, bytes) and thread: an eager forward launches the GEMV ~100 times,
/// and the answer never changes. The key is the function's handle; a handle reused by another
/// module after this one was unloaded would get a stale count, which only sizes the grid (any
/// grid computes every tile).
fn resident_blocks(func: &CudaFunction, shared: u32) -> Result<usize> {
    thread_local! {
        static RESIDENT: RefCell<HashMap<(usize, u32), usize>> = RefCell::new(HashMap::new());
    }
    let key = (func.cu_function() as usize, shared);
    if let Some(known) = RESIDENT.with(|m| m.borrow().get(&key).copied()) {
        return Ok(known);
    }
    let resident = func
        .occupancy_max_active_blocks_per_multiprocessor(GEMV_THREADS, shared as usize, None)
        .map_err(cudagraph_runtime::Error::driver(
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
        ))?
        .max(1) as usize;
    RESIDENT.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= 256 {
            m.clear(); // a bound, not an expected case: a few functions and sizes are seen
        }
        m.insert(key, resident);
    });
    Ok(resident)
}

/// Enqueues `y = prologue(x) @ w^T (+ bias)`.
///
/// Contract (upheld by the callers in this crate, which validated every shape): [`eligible`]
/// holds; `x` is bf16 `[rows, ins]` (`[rows, 2 ins]` for [`Prologue::SiluMul`]), `w` bf16
/// `[outs, ins]`, `bias` bf16 `[outs]`, `y` bf16 `[rows, outs]`, the prologue's tensors bf16
/// `[rows, ins]` (`delta`, `sum`) and `[ins]` (`weight`); `y` and `sum` overlap no input.
pub(crate) fn launch_gemv(
    rt: &Runtime,
    op: &'static str,
    sizes: GemvSizes,
    (x, prologue): (&Tensor, Prologue<'_>),
    (w, bias): (&Tensor, Option<&Tensor>),
    y: &Tensor,
) -> Result<()> {
    let limit = shared_limit(rt);
    let shared = shared_bytes(sizes, limit)
        .and_then(|b| u32::try_from(b).ok())
        .ok_or_else(|| {
            cudagraph_runtime::Error::invalid(op, "the small-batch rows do not fit shared memory")
        })?;
    let name = kernel(sizes.rows);
    let func = rt.function(&GEMV, name)?;
    if shared as usize > SHARED_MEM_DEFAULT {
        // Always the same value (the device's limit), so a smaller launch never lowers what an
        // earlier, larger one (perhaps captured in a graph) opted in to.
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            i32::try_from(limit).unwrap_or(i32::MAX),
        )
        .map_err(cudagraph_runtime::Error::driver("cuFuncSetAttribute"))?;
    }
    // One wave of resident blocks (each loops over its share of the tiles, so the prologue is
    // paid once per block slot), at most one block per tile.
    let resident = resident_blocks(&func, shared)?;
    let blocks = sizes
        .outs
        .div_ceil(GEMV_OUTS_PER_TILE)
        .min(resident.saturating_mul(rt.sm_count()))
        .min(GEMV_MAX_BLOCKS);
    let cfg = LaunchConfig {
        grid_dim: (u32::try_from(blocks).unwrap_or(1), 1, 1),
        block_dim: (GEMV_THREADS, 1, 1),
        shared_mem_bytes: shared,
    };
    let (delta, norm_w, sum, eps) = match prologue {
        Prologue::Copy | Prologue::SiluMul => (0, 0, 0, 0.0),
        Prologue::RmsNorm { weight, eps } => (0, weight.device_ptr(), 0, eps),
        Prologue::AddRmsNorm {
            delta,
            weight,
            eps,
            sum,
        } => (
            delta.device_ptr(),
            weight.device_ptr(),
            sum.device_ptr(),
            eps,
        ),
    };
    ffi::launch(
        rt,
        &func,
        cfg,
        &[
            Arg::Ptr(x.device_ptr()),
            Arg::Ptr(delta),
            Arg::Ptr(norm_w),
            Arg::Ptr(sum),
            Arg::Ptr(w.device_ptr()),
            Arg::Ptr(bias.map_or(0, Tensor::device_ptr)),
            Arg::Ptr(y.device_ptr()),
            Arg::I32(check::to_i32(op, "rows", sizes.rows)?),
            Arg::I32(check::to_i32(op, "out_features", sizes.outs)?),
            Arg::I32(check::to_i32(op, "in_features", sizes.ins)?),
            Arg::I32(prologue.mode()),
            Arg::F32(eps),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(rows: usize, ins: usize) -> GemvSizes {
        GemvSizes {
            rows,
            outs: 16,
            ins,
        }
    }

    #[test]
    fn shared_memory_is_bounded_by_the_device_limit() {
        let h200 = 227 * 1024 - SHARED_MEM_RESERVE;
        // One row: the staged row only. More: the partial sums after it.
        assert_eq!(shared_bytes(sizes(1, 1024), h200), Some(2048));
        assert_eq!(shared_bytes(sizes(8, 3072), h200), Some(48 * 1024 + 2048));
        // Eight rows of an 8B model's MLP activation (12288) fit an H200, not an L40S (99 KiB).
        assert_eq!(
            shared_bytes(sizes(8, 12288), h200),
            Some(8 * 12288 * 2 + 2048)
        );
        assert_eq!(
            shared_bytes(sizes(8, 12288), 99 * 1024 - SHARED_MEM_RESERVE),
            None
        );
        assert_eq!(shared_bytes(sizes(8, 16384), h200), None);
        assert_eq!(shared_bytes(sizes(usize::MAX, 2), h200), None);
    }
}
