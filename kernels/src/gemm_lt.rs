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
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

use crate::cublaslt::{self, Handle, Layout, LtError, MatmulDesc, Operation, Preference};
use crate::gemm::{CUBLAS_WORKSPACE_BYTES, GemmTnBf16};
use crate::gemm_algo::{
    self, AlgoKey, GemmAlgoStats, GemmDtype, LibraryIdentity, NChoice, StoredAlgo, alignment,
    n_bucket,
};
use cudagraph_runtime::{Error, Result};

pub(crate) fn lt_error((call, message): LtError) -> Error {
    Error::Library {
        library: "cuBLASLt",
        call,
        message,
    }
}

/// One GEMM's exact geometry: what a plan is kept for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    pub(crate) m: u32,
    pub(crate) n: u32,
    pub(crate) k: u32,
    pub(crate) ld: [u32; 3],
    pub(crate) align: [u32; 3],
}

impl Geometry {
    /// The geometry of `g`, checked: positive sizes, leading dimensions no smaller than the
    /// rows they hold.
    pub(crate) fn of(g: &GemmTnBf16) -> Result<Self> {
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

    pub(crate) fn key(&self, n: NChoice) -> AlgoKey {
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
    pub(crate) fn layouts(&self, n: u32) -> std::result::Result<[Layout; 3], LtError> {
        Ok([
            Layout::bf16(u64::from(self.k), u64::from(self.m), i64::from(self.ld[0]))?,
            Layout::bf16(u64::from(self.k), u64::from(n), i64::from(self.ld[1]))?,
            Layout::bf16(u64::from(self.m), u64::from(n), i64::from(self.ld[2]))?,
        ])
    }
}

/// The layouts of one geometry and the algorithm that passed the check for it.
pub(crate) struct Plan {
    pub(crate) layouts: [Layout; 3],
    pub(crate) algo: [u64; 8],
}

/// An algorithm of the table, and whether it came from disk and is not counted yet.
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) stored: StoredAlgo,
    pub(crate) unused_from_disk: bool,
}

/// A runtime's cuBLASLt state (see the module documentation).
pub(crate) struct LtGemm {
    pub(crate) handle: Handle,
    pub(crate) desc: MatmulDesc,
    pub(crate) workspace: CudaSlice<u8>,
    pub(crate) workspace_ptr: u64,
    pub(crate) identity: LibraryIdentity,
    pub(crate) path: Option<PathBuf>,
    pub(crate) table: RefCell<HashMap<AlgoKey, Entry>>,
    pub(crate) plans: RefCell<HashMap<Geometry, Plan>>,
    pub(crate) stats: Cell<GemmAlgoStats>,
    /// Algorithms queried since the table was last written (writes wait for the end of a
    /// capture: see [`LtGemm::flush`]).
    pub(crate) dirty: Cell<bool>,
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
    pub(crate) fn new(ctx: &CudaContext, stream: &std::sync::Arc<CudaStream>) -> Result<Self> {
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
        let workspace_ptr = cudagraph_runtime::ffi::slice_ptr(&workspace, stream);
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

    pub(crate) fn update(&self, f: impl FnOnce(&mut GemmAlgoStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// Makes sure a plan for `geo` exists; `false` when no algorithm passes the check for it
    /// (the caller then runs `cublasGemmEx` instead).
    pub(crate) fn plan(&self, geo: Geometry) -> Result<bool> {
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
    pub(crate) fn valid(&self, layouts: &[Layout; 3], algo: &[u64; 8]) -> bool {
        match cublaslt::check_algo(&self.handle, self.operation(layouts), algo) {
            Ok(bytes) => bytes <= CUBLAS_WORKSPACE_BYTES,
            Err((_, status)) => {
                tracing::debug!(%status, "cuBLASLt algorithm refused for this shape");
                false
            }
        }
    }

    pub(crate) fn operation<'a>(&'a self, layouts: &'a [Layout; 3]) -> Operation<'a> {
        Operation {
            desc: &self.desc,
            a: &layouts[0],
            b: &layouts[1],
            c: &layouts[2],
        }
    }

    /// The table's algorithm for `geo` at `choice`: from the table, else queried (at the
    /// bucket's bound, or the exact `n`) and stored. `None` when the heuristic has none.
    pub(crate) fn algorithm(&self, geo: Geometry, choice: NChoice) -> Result<Option<StoredAlgo>> {
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
    pub(crate) fn flush(&self) {
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
    pub(crate) fn workspace(&self) -> (u64, usize) {
        debug_assert_eq!(self.workspace.len(), CUBLAS_WORKSPACE_BYTES);
        (self.workspace_ptr, CUBLAS_WORKSPACE_BYTES)
    }
}

/// Whether libcublasLt can be loaded, probed once per process; the first `false` is logged.
pub(crate) fn cublaslt_loadable() -> bool {
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
