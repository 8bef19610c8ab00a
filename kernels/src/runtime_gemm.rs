//! The GEMM entry points of a [`Runtime`]: its cuBLASLt state, created at first use
//! (`gemm_lt.rs`), the bf16 GEMM through it ([`Runtime::gemm_lt_bf16_tn`]), the algorithm
//! statistics and the switch between cuBLASLt and `cublasGemmEx`.

use cudagraph_runtime::{Error, Result};

use crate::context::Runtime;
use crate::cublaslt::{self, Buffers};
use crate::gemm::{GemmTnBf16, LtOutcome};
use crate::gemm_algo::GemmAlgoStats;
use crate::gemm_lt::{Geometry, LtGemm, cublaslt_loadable, lt_error};

impl Runtime {
    /// The runtime's cuBLASLt state, created at first use; `None` where libcublasLt can't be
    /// loaded.
    pub(crate) fn lt(&self) -> Result<Option<&LtGemm>> {
        if let Some(lt) = self.lt_cell().get() {
            return Ok(lt.as_ref());
        }
        if !cublaslt_loadable() {
            return Ok(self.lt_cell().get_or_init(|| None).as_ref());
        }
        self.forbid_during_capture("creating the cuBLASLt handle")?;
        self.raw_context()
            .bind_to_thread()
            .map_err(Error::driver("cuCtxSetCurrent"))?;
        let lt = LtGemm::new(self.raw_context(), self.raw_stream())?;
        Ok(self.lt_cell().get_or_init(|| Some(lt)).as_ref())
    }

    /// Enqueues the bf16 GEMM `g` on the runtime's stream through cuBLASLt, with the algorithm
    /// of its shape and `n` bucket (see [`gemm`](crate::gemm)); [`LtOutcome::Unavailable`]
    /// (nothing enqueued) where libcublasLt can't be loaded or the cuBLASLt path is off
    /// ([`set_cublaslt`](Self::set_cublaslt)).
    ///
    /// The first call creates the handle and a workspace of [`CUBLAS_WORKSPACE_BYTES`](crate::CUBLAS_WORKSPACE_BYTES) (an
    /// error during a capture, as for [`cublas`](Self::cublas)); the first call of each shape
    /// may query cuBLASLt's heuristic (host work, legal during a capture). The same geometry
    /// always runs the same algorithm in one runtime, so a captured GEMM replays bit for bit
    /// what the eager one computes.
    ///
    /// # Safety
    ///
    /// `g.a`, `g.b` and `g.c` are addresses of live bf16 device memory of this runtime (its
    /// tensors' `device_ptr()`), at least as large as [`GemmTnBf16`]'s fields document; `C`
    /// overlaps neither input; and they stay allocated until the GEMM has run, or, during a
    /// capture, for as long as the graph can replay (taking them from tensors with
    /// `device_ptr()` does that for a capture). Enqueued work is ordered on the runtime's
    /// stream like any op's.
    pub unsafe fn gemm_lt_bf16_tn(&self, g: &GemmTnBf16) -> Result<LtOutcome> {
        if !self.cublaslt_enabled() {
            return Ok(LtOutcome::Unavailable);
        }
        let Some(lt) = self.lt()? else {
            return Ok(LtOutcome::Unavailable);
        };
        let geo = Geometry::of(g)?;
        // cuBLASLt launches in the current context of the calling thread: the runtime's.
        self.raw_context()
            .bind_to_thread()
            .map_err(Error::driver("cuCtxSetCurrent"))?;
        if !lt.plan(geo)? {
            return Ok(LtOutcome::Unavailable);
        }
        if lt.dirty.get() && !self.is_capturing() {
            lt.flush();
        }
        let plans = lt.plans.borrow();
        let Some(plan) = plans.get(&geo) else {
            unreachable!("`plan` inserted the plan of this geometry");
        };
        let buffers = Buffers {
            a: g.a,
            b: g.b,
            c: g.c,
            workspace: lt.workspace(),
            stream: self.raw_stream().cu_stream(),
        };
        // SAFETY: the context is current (bound above); the addresses satisfy this function's
        // contract (its caller's promise) and the layouts were built from `g`'s checked sizes;
        // the workspace is the runtime's own, used only by GEMMs on this one stream, and the
        // plan's algorithm passed `cublasLtMatmulAlgoCheck` for these layouts with a workspace
        // need no larger than it.
        unsafe { cublaslt::matmul(&lt.handle, lt.operation(&plan.layouts), &plan.algo, buffers) }
            .map_err(lt_error)?;
        Ok(LtOutcome::Enqueued)
    }

    /// What choosing cuBLASLt algorithms has cost this runtime so far: heuristic queries,
    /// algorithms read from disk, plans (all zero before the first cuBLASLt GEMM).
    pub fn gemm_algo_stats(&self) -> GemmAlgoStats {
        self.lt_cell()
            .get()
            .and_then(Option::as_ref)
            .map(|lt| lt.stats.get())
            .unwrap_or_default()
    }

    /// Whether `cublas` and `auto` GEMMs go through cuBLASLt (initially from
    /// `CUDAGRAPH_CUBLASLT`, on by default; off sends them to `cublasGemmEx`).
    pub fn cublaslt_enabled(&self) -> bool {
        self.cublaslt_flag().get()
    }

    /// Turns the cuBLASLt path of later GEMMs on or off (graphs already captured keep theirs).
    pub fn set_cublaslt(&self, on: bool) {
        self.cublaslt_flag().set(on);
    }
}
