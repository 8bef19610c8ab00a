//! The cuBLASLt GEMM path of a runtime: its handle, matmul descriptor and fixed workspace
//! (created at first use, like the cuBLAS handle), the algorithm table ([`gemm_algo`]) and the
//! plans, one per exact GEMM geometry: the three layouts and a checked algorithm.
//!
//! A GEMM's algorithm comes from, in order: this runtime's plan of that geometry; the table
//! entry of its `n` bucket (read from disk, or queried once at the bucket's bound); if that
//! algorithm fails `cublasLtMatmulAlgoCheck` at the exact shape (or needs more workspace than
//! the runtime has), the entry of the exact shape (from disk, or queried).
//!
//! [`gemm_algo`]: crate::gemm_algo

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

use crate::context::{CUBLAS_WORKSPACE_BYTES, Runtime};
use crate::cublaslt::{self, Buffers, Handle, Layout, LtError, MatmulDesc, Operation, Preference};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffi;
use crate::gemm::{GemmTnBf16, LtOutcome};
use crate::gemm_algo::{
    self, AlgoKey, GemmAlgoStats, GemmDtype, LibraryIdentity, NChoice, StoredAlgo, alignment,
    n_bucket,
};
use crate::tensor::Tensor;

fn lt_error((call, message): LtError) -> Error {
    Error::Cublas { call, message }
}

/// One GEMM's exact geometry: what a plan is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Geometry {
    m: u32,
    n: u32,
    k: u32,
    ld: [u32; 3],
    align: [u32; 3],
}

impl Geometry {
    /// The geometry of `g`, checked: positive sizes, leading dimensions no smaller than the
    /// rows they hold.
    fn of(g: &GemmTnBf16) -> Result<Self> {
        let positive = |v: i32, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| Error::invalid("gemm_lt_bf16_tn", format!("{what} = {v}")))
        };
        let geo = Geometry {
            m: positive(g.m, "m")?,
            n: positive(g.n, "n")?,
            k: positive(g.k, "k")?,
            ld: [
                positive(g.lda, "lda")?,
                positive(g.ldb, "ldb")?,
                positive(g.ldc, "ldc")?,
            ],
            align: [alignment(g.a), alignment(g.b), alignment(g.c)],
        };
        if geo.ld[0] < geo.k || geo.ld[1] < geo.k || geo.ld[2] < geo.m {
            return Err(Error::invalid(
                "gemm_lt_bf16_tn",
                format!("leading dimensions {:?} too small for {g:?}", geo.ld),
            ));
        }
        Ok(geo)
    }

    fn key(&self, n: NChoice) -> AlgoKey {
        AlgoKey {
            dtype: GemmDtype::Bf16,
            trans_a: true,
            trans_b: false,
            m: self.m,
            k: self.k,
            ld: self.ld,
            align: self.align,
            n,
        }
    }

    /// A's, B's and C's layouts with `n` columns of B and C.
    fn layouts(&self, n: u32) -> std::result::Result<[Layout; 3], LtError> {
        Ok([
            Layout::bf16(u64::from(self.k), u64::from(self.m), i64::from(self.ld[0]))?,
            Layout::bf16(u64::from(self.k), u64::from(n), i64::from(self.ld[1]))?,
            Layout::bf16(u64::from(self.m), u64::from(n), i64::from(self.ld[2]))?,
        ])
    }
}

/// The layouts of one geometry and the algorithm that passed the check for it.
struct Plan {
    layouts: [Layout; 3],
    algo: [u64; 8],
}

/// An algorithm of the table, and whether it came from disk and is not counted yet.
#[derive(Clone, Copy)]
struct Entry {
    stored: StoredAlgo,
    unused_from_disk: bool,
}

/// A runtime's cuBLASLt state (see the module documentation).
pub(crate) struct LtGemm {
    handle: Handle,
    desc: MatmulDesc,
    workspace: CudaSlice<u8>,
    workspace_ptr: u64,
    identity: LibraryIdentity,
    path: Option<PathBuf>,
    table: RefCell<HashMap<AlgoKey, Entry>>,
    plans: RefCell<HashMap<Geometry, Plan>>,
    stats: Cell<GemmAlgoStats>,
    /// Algorithms queried since the table was last written (writes wait for the end of a
    /// capture: see [`LtGemm::flush`]).
    dirty: Cell<bool>,
}

impl std::fmt::Debug for LtGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LtGemm")
            .field("identity", &self.identity)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for LtGemm {
    fn drop(&mut self) {
        self.flush();
    }
}

impl LtGemm {
    /// Creates the handle, descriptor and workspace, and reads the table from disk. The
    /// context is current on this thread; no capture is under way (the workspace comes from
    /// the driver).
    fn new(ctx: &CudaContext, stream: &std::sync::Arc<CudaStream>) -> Result<Self> {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(Error::driver("compute capability"))?;
        let identity = LibraryIdentity {
            device: ctx.name().map_err(Error::driver("cuDeviceGetName"))?,
            compute: (major, minor),
            cublaslt: cublaslt::version(),
        };
        let handle = Handle::new().map_err(lt_error)?;
        let desc = MatmulDesc::tn_f32().map_err(lt_error)?;
        // SAFETY: uninitialised scratch that only cuBLASLt's kernels write and read.
        let workspace = unsafe { stream.alloc::<u8>(CUBLAS_WORKSPACE_BYTES) }
            .map_err(Error::driver("cuBLASLt workspace"))?;
        let workspace_ptr = ffi::slice_ptr(&workspace, stream);
        let path = gemm_algo::file_path(&identity);
        let table: HashMap<AlgoKey, Entry> = path
            .as_deref()
            .map(|p| gemm_algo::load(p, &identity))
            .unwrap_or_default()
            .into_iter()
            .map(|(key, stored)| {
                (
                    key,
                    Entry {
                        stored,
                        unused_from_disk: true,
                    },
                )
            })
            .collect();
        tracing::debug!(
            path = ?path,
            algorithms = table.len(),
            cublaslt = identity.cublaslt,
            "cuBLASLt ready"
        );
        Ok(Self {
            handle,
            desc,
            workspace,
            workspace_ptr,
            identity,
            path,
            table: RefCell::new(table),
            plans: RefCell::new(HashMap::new()),
            stats: Cell::new(GemmAlgoStats::default()),
            dirty: Cell::new(false),
        })
    }

    fn update(&self, f: impl FnOnce(&mut GemmAlgoStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// Makes sure a plan for `geo` exists; `false` when no algorithm passes the check for it
    /// (the caller then runs `cublasGemmEx` instead).
    fn plan(&self, geo: Geometry) -> Result<bool> {
        if self.plans.borrow().contains_key(&geo) {
            return Ok(true);
        }
        let started = Instant::now();
        let layouts = geo.layouts(geo.n).map_err(lt_error)?;
        let bucket = NChoice::Bucket(n_bucket(geo.n));
        let mut algo = self
            .algorithm(geo, bucket)?
            .filter(|stored| self.valid(&layouts, &stored.algo));
        if algo.is_none() {
            self.update(|s| s.exact_shapes += 1);
            let exact = NChoice::Exact(geo.n);
            algo = self
                .algorithm(geo, exact)?
                .filter(|stored| self.valid(&layouts, &stored.algo));
            if algo.is_none() {
                // The exact entry failed the check: if it came from the file, it is dropped and
                // the heuristic asked afresh, so a bad entry on disk never sticks.
                if self.table.borrow_mut().remove(&geo.key(exact)).is_some() {
                    self.dirty.set(true);
                }
                algo = self
                    .algorithm(geo, exact)?
                    .filter(|stored| self.valid(&layouts, &stored.algo));
            }
        }
        let Some(stored) = algo else {
            tracing::warn!(
                "no cuBLASLt algorithm for a bf16 TN GEMM m={} n={} k={} ld={:?} align={:?} within a {} MiB workspace; using cublasGemmEx",
                geo.m,
                geo.n,
                geo.k,
                geo.ld,
                geo.align,
                CUBLAS_WORKSPACE_BYTES >> 20
            );
            return Ok(false);
        };
        self.plans.borrow_mut().insert(
            geo,
            Plan {
                layouts,
                algo: stored.algo,
            },
        );
        self.update(|s| {
            s.plans += 1;
            s.plan_time += started.elapsed();
        });
        Ok(true)
    }

    /// Whether `algo` runs `layouts` within the workspace.
    fn valid(&self, layouts: &[Layout; 3], algo: &[u64; 8]) -> bool {
        match cublaslt::check_algo(&self.handle, self.operation(layouts), algo) {
            Ok(bytes) => bytes <= CUBLAS_WORKSPACE_BYTES,
            Err((_, status)) => {
                tracing::debug!(%status, "cuBLASLt algorithm refused for this shape");
                false
            }
        }
    }

    fn operation<'a>(&'a self, layouts: &'a [Layout; 3]) -> Operation<'a> {
        Operation {
            desc: &self.desc,
            a: &layouts[0],
            b: &layouts[1],
            c: &layouts[2],
        }
    }

    /// The table's algorithm for `geo` at `choice`: from the table, else queried (at the
    /// bucket's bound, or the exact `n`) and stored. `None` when the heuristic has none.
    fn algorithm(&self, geo: Geometry, choice: NChoice) -> Result<Option<StoredAlgo>> {
        let key = geo.key(choice);
        if let Some(entry) = self.table.borrow_mut().get_mut(&key) {
            if entry.unused_from_disk {
                entry.unused_from_disk = false;
                self.update(|s| s.from_disk += 1);
            }
            return Ok(Some(entry.stored));
        }
        let n = match choice {
            NChoice::Bucket(bound) => bound,
            NChoice::Exact(n) => n,
        };
        let layouts = geo.layouts(n).map_err(lt_error)?;
        let pref = Preference::new(CUBLAS_WORKSPACE_BYTES, geo.align).map_err(lt_error)?;
        let started = Instant::now();
        let found =
            cublaslt::heuristic(&self.handle, self.operation(&layouts), &pref).map_err(lt_error)?;
        let took = started.elapsed();
        self.update(|s| {
            s.heuristic_queries += 1;
            s.heuristic_time += took;
        });
        tracing::debug!(%key, us = took.as_secs_f64() * 1e6, found = found.is_some(), "cuBLASLt heuristic query");
        if let Some(stored) = found {
            self.table.borrow_mut().insert(
                key,
                Entry {
                    stored,
                    unused_from_disk: false,
                },
            );
            self.dirty.set(true);
        }
        Ok(found)
    }

    /// Writes the table to disk (merged with what is there) if it has new algorithms. Called
    /// after a GEMM outside a capture and when the runtime drops: a capture's queries are
    /// written after it, not during it (file I/O is host time the capture would pay).
    fn flush(&self) {
        if !self.dirty.replace(false) {
            return;
        }
        let Some(path) = &self.path else { return };
        let entries: HashMap<AlgoKey, StoredAlgo> = self
            .table
            .borrow()
            .iter()
            .map(|(k, e)| (*k, e.stored))
            .collect();
        gemm_algo::store(path, &self.identity, &entries);
    }

    /// The workspace: its address and size.
    fn workspace(&self) -> (u64, usize) {
        debug_assert_eq!(self.workspace.len(), CUBLAS_WORKSPACE_BYTES);
        (self.workspace_ptr, CUBLAS_WORKSPACE_BYTES)
    }
}

/// Whether libcublasLt can be loaded, probed once per process; the first `false` is logged.
fn cublaslt_loadable() -> bool {
    static LOADABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADABLE.get_or_init(|| {
        let present = cublaslt::present();
        if !present {
            tracing::warn!(
                "cuBLASLt (libcublasLt) can't be loaded: cuBLAS GEMMs use cublasGemmEx (a heuristic query per shape and batch size)"
            );
        }
        present
    })
}

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
    /// The first call creates the handle and a workspace of [`CUBLAS_WORKSPACE_BYTES`] (an
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
