//! [`GemmLtProbe`]: a measurement aid for `bench/NOTES.md` (not a stable API): one cuBLASLt
//! GEMM shape with buffers of its own, heuristic queries and device time of any algorithm.

use std::time::{Duration, Instant};

use cudagraph_runtime::{DType, Error, Result};

use crate::context::Runtime;
use crate::cublaslt::Preference;
use crate::cublaslt::{self, Buffers};
use crate::gemm::CUBLAS_WORKSPACE_BYTES;
use crate::gemm_algo::alignment;
use crate::gemm_lt::{Geometry, LtGemm, lt_error};
use crate::tensor::Tensor;

/// A cuBLASLt algorithm as the probe saw it.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct ProbeAlgo {
    algo: [u64; 8],
    /// The workspace the heuristic said it needs.
    pub workspace: usize,
    /// How long the heuristic query took.
    pub query_time: Duration,
    /// Its configuration (id, tile, stages, split-K, cluster).
    pub description: String,
}

impl PartialEq for ProbeAlgo {
    /// The same algorithm (the 64 bytes), however long its query took.
    fn eq(&self, other: &Self) -> bool {
        self.algo == other.algo
    }
}

/// What [`GemmLtProbe::check`] measured.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct ProbeCheck {
    /// The workspace the algorithm needs at that shape, or `None` when it can't run it.
    pub workspace: Option<usize>,
    /// Time to create the three layouts.
    pub layouts: Duration,
    /// Time of `cublasLtMatmulAlgoCheck`.
    pub check: Duration,
}

/// Measurement aid for `bench/NOTES.md` (not a stable API): one bf16 TN GEMM shape `(m, k)`
/// with its own buffers, heuristic queries at any `n`, and device time of any algorithm at any
/// `n` (a captured graph of back-to-back GEMMs cycling over enough copies of `A` to miss the
/// L2 cache, as a decoder's weights do). Nothing here touches the runtime's table or counters.
#[doc(hidden)]
pub struct GemmLtProbe<'rt> {
    rt: &'rt Runtime,
    m: u32,
    k: u32,
    n_max: u32,
    weights: Vec<Tensor>,
    b: Tensor,
    c: Tensor,
}

impl std::fmt::Debug for GemmLtProbe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmLtProbe")
            .field("m", &self.m)
            .field("k", &self.k)
            .field("n_max", &self.n_max)
            .field("copies", &self.weights.len())
            .finish_non_exhaustive()
    }
}

impl<'rt> GemmLtProbe<'rt> {
    /// Buffers for `C (m x n) = A^T B` up to `n_max`, with as many copies of `A` as
    /// `weight_bytes` holds (at least one, at most 64). Fails where libcublasLt can't be
    /// loaded.
    pub fn new(
        rt: &'rt Runtime,
        m: usize,
        k: usize,
        n_max: usize,
        weight_bytes: usize,
    ) -> Result<Self> {
        let dim = |v: usize| {
            u32::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= i32::MAX as u32)
                .ok_or_else(|| Error::invalid("GemmLtProbe", format!("size {v}")))
        };
        let (mu, ku, nu) = (dim(m)?, dim(k)?, dim(n_max)?);
        if rt.lt()?.is_none() {
            return Err(Error::MissingLibrary {
                library: "cublasLt",
            });
        }
        let copies = weight_bytes.div_ceil(m * k * 2).clamp(1, 64);
        let mut weights = Vec::with_capacity(copies);
        for _ in 0..copies {
            let w = rt.alloc(&[m, k], DType::BF16)?;
            rt.fill_bytes(&w, 0x3c)?; // bf16 0x3c3c: 0.0115
            weights.push(w);
        }
        let b = rt.alloc(&[n_max, k], DType::BF16)?;
        rt.fill_bytes(&b, 0x3c)?;
        let c = rt.alloc(&[n_max, m], DType::BF16)?;
        Ok(Self {
            rt,
            m: mu,
            k: ku,
            n_max: nu,
            weights,
            b,
            c,
        })
    }

    fn geometry(&self, n: usize) -> Result<Geometry> {
        let n = u32::try_from(n)
            .ok()
            .filter(|&n| n > 0 && n <= self.n_max)
            .ok_or_else(|| {
                Error::invalid("GemmLtProbe", format!("n = {n} beyond 1..={}", self.n_max))
            })?;
        Ok(Geometry {
            m: self.m,
            n,
            k: self.k,
            ld: [self.k, self.k, self.m],
            align: [
                alignment(self.weights[0].device_ptr()),
                alignment(self.b.device_ptr()),
                alignment(self.c.device_ptr()),
            ],
        })
    }

    fn lt(&self) -> Result<&'rt LtGemm> {
        self.rt.lt()?.ok_or(Error::MissingLibrary {
            library: "cublasLt",
        })
    }

    /// The heuristic's choice at `n` (not cached by the probe: each call queries).
    pub fn query(&self, n: usize) -> Result<Option<ProbeAlgo>> {
        let geo = self.geometry(n)?;
        let lt = self.lt()?;
        let layouts = geo.layouts(geo.n).map_err(lt_error)?;
        let pref = Preference::new(CUBLAS_WORKSPACE_BYTES, geo.align).map_err(lt_error)?;
        let started = Instant::now();
        let found =
            cublaslt::heuristic(&lt.handle, lt.operation(&layouts), &pref).map_err(lt_error)?;
        let query_time = started.elapsed();
        Ok(found.map(|stored| ProbeAlgo {
            algo: stored.algo,
            workspace: stored.workspace,
            query_time,
            description: cublaslt::describe(&stored.algo),
        }))
    }

    /// Whether `algo` runs at `n`, and what creating the layouts and checking cost.
    pub fn check(&self, algo: &ProbeAlgo, n: usize) -> Result<ProbeCheck> {
        let geo = self.geometry(n)?;
        let lt = self.lt()?;
        let started = Instant::now();
        let layouts = geo.layouts(geo.n).map_err(lt_error)?;
        let layouts_time = started.elapsed();
        let started = Instant::now();
        let result = cublaslt::check_algo(&lt.handle, lt.operation(&layouts), &algo.algo);
        let check = started.elapsed();
        Ok(ProbeCheck {
            workspace: result.ok().filter(|&w| w <= CUBLAS_WORKSPACE_BYTES),
            layouts: layouts_time,
            check,
        })
    }

    /// Device time of one GEMM at `n` with `algo`, in µs: a graph of `launches` GEMMs (cycling
    /// over the copies of `A`) replayed `replays` times after one untimed replay. `None` when
    /// `algo` can't run at `n`.
    pub fn time_us(
        &self,
        algo: &ProbeAlgo,
        n: usize,
        launches: usize,
        replays: usize,
    ) -> Result<Option<f64>> {
        if self.check(algo, n)?.workspace.is_none() {
            return Ok(None);
        }
        let geo = self.geometry(n)?;
        let lt = self.lt()?;
        let layouts = geo.layouts(geo.n).map_err(lt_error)?;
        let stream = self.rt.raw_stream().cu_stream();
        self.rt
            .raw_context()
            .bind_to_thread()
            .map_err(Error::driver("cuCtxSetCurrent"))?;
        let graph = self.rt.capture(|_| {
            for i in 0..launches.max(1) {
                let buffers = Buffers {
                    a: self.weights[i % self.weights.len()].device_ptr(),
                    b: self.b.device_ptr(),
                    c: self.c.device_ptr(),
                    workspace: lt.workspace(),
                    stream,
                };
                // SAFETY: the context is current (bound above, on this thread); A, B and C are
                // the probe's own tensors, sized
                // for `m x k`, `n_max x k` and `n_max x m` with `n <= n_max` (checked by
                // `geometry`), C overlapping neither; the probe outlives the graph (dropped at
                // the end of this function); the workspace is the runtime's, used only on its
                // stream; `algo` passed the check for these layouts just above.
                unsafe {
                    cublaslt::matmul(&lt.handle, lt.operation(&layouts), &algo.algo, buffers)
                }
                .map_err(lt_error)?;
            }
            Ok(())
        })?;
        graph.replay()?;
        self.rt.synchronize()?;
        let started = Instant::now();
        for _ in 0..replays.max(1) {
            graph.replay()?;
        }
        self.rt.synchronize()?;
        let total = started.elapsed().as_secs_f64() * 1e6;
        Ok(Some(total / (replays.max(1) * launches.max(1)) as f64))
    }
}
