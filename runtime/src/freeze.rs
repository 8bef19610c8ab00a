//! The freeze scope: reclamation once around a batch of captures, never between graphs.
//!
//! The Rust counterpart of vLLM's `gc.freeze()` during capture. Entering the scope synchronizes,
//! releases parked buffers and trims the driver's caches once; inside it, the stream-ordered
//! pool's release threshold is raised so that nothing goes back to the driver between graphs
//! (no synchronize, trim or free-to-driver per graph), and driver buffers dropped while a
//! capture is under way are parked (freeing them then is illegal). Leaving the scope releases
//! the parked buffers, restores the threshold and trims once more.
//!
//! `CUDAGRAPH_CAPTURE_RECLAIM=each` reclaims after every graph instead, for debugging, like
//! PyTorch's `TORCH_CUDAGRAPH_GC=1` and vLLM's `VLLM_ENABLE_CUDAGRAPH_GC`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

use cudarc::driver::CudaStream;

use crate::error::{Error, Result};
use crate::ffi::{self, MemPool};
pub use crate::policy::{RECLAIM_ENV, ReclaimPolicy};
use crate::routing::PoolRouter;
use crate::seal::Seal;

/// Per device: open scopes in this process and the release threshold the first one found. The
/// pool's threshold is device state, so with runtimes capturing on several threads the first
/// scope on a device raises it and the last one restores it.
static OPEN_SCOPES: Mutex<BTreeMap<usize, (usize, u64)>> = Mutex::new(BTreeMap::new());

/// A batch of captures with reclamation at its edges only. See the [module docs](self).
pub struct FreezeScope<'rt> {
    stream: Arc<CudaStream>,
    /// The runtime's allocation state, whose parked drops the scope frees (none for a foreign
    /// backend's stream, which parks nothing).
    parked: Option<&'rt PoolRouter>,
    pool: MemPool,
    saved_threshold: u64,
    policy: ReclaimPolicy,
    reclaims: usize,
    reclaim_time: Duration,
    open: bool,
}

impl<'rt> FreezeScope<'rt> {
    /// The scope for captures on `stream` (its caller checked that nothing captures there),
    /// freeing the buffers `parked` parks, if given (a pool-mode device's router). The seal
    /// makes it a backend's call: it synchronizes and trims the device's memory pools.
    pub fn on_stream(
        _: Seal,
        stream: Arc<CudaStream>,
        parked: Option<&'rt PoolRouter>,
        policy: ReclaimPolicy,
    ) -> Result<Self> {
        let pool =
            MemPool::of_device(stream.context()).map_err(Error::driver("cuDeviceGetMemPool"))?;
        let ordinal = stream.context().ordinal();
        let mut scope = Self {
            stream,
            parked,
            pool,
            saved_threshold: 0,
            policy,
            reclaims: 0,
            reclaim_time: Duration::ZERO,
            open: false,
        };
        scope.reclaim()?;
        let mut scopes = OPEN_SCOPES.lock().unwrap_or_else(|p| p.into_inner());
        let open = scopes.entry(ordinal).or_insert((0, 0));
        if open.0 == 0 {
            open.1 = pool
                .release_threshold()
                .map_err(Error::driver("cuMemPoolGetAttribute"))?;
            pool.set_release_threshold(u64::MAX)
                .map_err(Error::driver("cuMemPoolSetAttribute"))?;
        }
        open.0 += 1;
        scope.saved_threshold = open.1;
        scope.open = true;
        Ok(scope)
    }

    /// Called by capture code between two graphs: nothing under [`ReclaimPolicy::Once`].
    pub fn between_graphs(&mut self) -> Result<()> {
        match self.policy {
            ReclaimPolicy::Once => Ok(()),
            ReclaimPolicy::Each => self.reclaim(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> ReclaimPolicy {
        self.policy
    }

    /// Leaves the scope: one reclamation, threshold restored. Returns how many reclamations
    /// the scope made and the time they took.
    pub fn exit(mut self) -> Result<(usize, Duration)> {
        self.close()?;
        Ok((self.reclaims, self.reclaim_time))
    }

    fn close(&mut self) -> Result<()> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        let restored = {
            let mut scopes = OPEN_SCOPES.lock().unwrap_or_else(|p| p.into_inner());
            let open = scopes
                .entry(self.stream.context().ordinal())
                .or_insert((1, self.saved_threshold));
            open.0 = open.0.saturating_sub(1);
            if open.0 == 0 {
                self.pool
                    .set_release_threshold(self.saved_threshold)
                    .map_err(Error::driver("cuMemPoolSetAttribute"))
            } else {
                Ok(())
            }
        };
        self.reclaim()?;
        restored
    }

    /// Synchronize, free parked buffers, trim the stream-ordered pool and graph memory.
    fn reclaim(&mut self) -> Result<()> {
        let started = Instant::now();
        self.synchronize()?;
        if let Some(parked) = self.parked {
            drop(parked.take_parked());
            self.synchronize()?;
        }
        self.pool
            .trim_to(0)
            .map_err(Error::driver("cuMemPoolTrimTo"))?;
        ffi::graph_mem_trim(self.stream.context())
            .map_err(Error::driver("cuDeviceGraphMemTrim"))?;
        self.reclaims += 1;
        self.reclaim_time += started.elapsed();
        Ok(())
    }
}

impl FreezeScope<'_> {
    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(Error::driver("cuStreamSynchronize"))?;
        self.stream
            .context()
            .check_err()
            .map_err(Error::driver("deferred (recorded by a drop)"))
    }
}

impl Drop for FreezeScope<'_> {
    fn drop(&mut self) {
        // Leaving by an error path: restore and reclaim best-effort; the error that unwound us
        // is the one the caller sees.
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "freeze scope: reclamation on exit failed");
        }
    }
}
