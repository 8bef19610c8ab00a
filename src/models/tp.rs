//! Tensor-parallel decode: a [`Llama`](super::llama::Llama) sharded over several GPUs, with the
//! NCCL all-reduces captured inside each rank's CUDA graphs (as vLLM and SGLang do).
//!
//! # One thread per GPU, in one process
//!
//! [`run_ranks`] runs one thread per rank in the calling process; each thread owns its rank's
//! [`Runtime`] (device `rank`, its own stream), its shard ([`TpLlama`]) and its runner
//! (`forward_graphs`): graphs belong to one device, so every rank captures its own, for the same
//! sizes. Threads rather than processes because:
//!
//! * the communicators come from one `ncclCommInitAll` call (cudarc's
//!   [`nccl`](crate::cudarc::nccl)), with no unique id to ship between processes and no launcher;
//! * the host weights are generated or loaded once and sliced per rank in shared memory;
//! * results of the ranks (logits, timings) come back as values, so the example and the GPU test
//!   compare tp = 2 with tp = 1 in one program.
//!
//! A [`Runtime`] is `Send` but not `Sync` and a runner is neither, so each thread creates its
//! own; an [`NcclComm`] is `Send` and moves into its rank's thread. A capture is thread-local
//! (`CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`, what NCCL's guide asks of one thread per GPU), so two
//! ranks capture at the same time without disturbing each other, and NCCL's own threads may
//! allocate and map memory meanwhile. NCCL warns that one thread launching the graphs of
//! several GPUs, or of several communicators, can deadlock in `cudaGraphLaunch`: here each
//! thread launches the graphs of one GPU and one communicator.
//!
//! # Or one process per GPU
//!
//! Where each rank must be a process of its own (a launcher like `torchrun`, or a tool that
//! follows processes, such as `compute-sanitizer`, under which one process's kernels run one at
//! a time and an all-reduce would wait forever for its peer on the other GPU), the launcher
//! makes an [`NcclId`], starts one process per rank with its text, and each process calls
//! [`run_rank_process`] (`ncclCommInitRank`) with the same closure it would give `run_ranks`.
//! The GPU suite's tensor-parallel tests run both ways.
//!
//! # Lockstep
//!
//! Every rank must issue the same collectives in the same order: the ranks run the same code on
//! shards of equal shapes, so their eager forwards, warm-ups, captures and replays issue the
//! same sequence. An all-reduce recorded under capture does not communicate at record time; it
//! communicates when the graph replays, so both ranks replay their graph of the same size
//! together. [`RankSync::wait`] is a barrier between phases that turns a failure of one rank
//! into an error on the others (instead of a hang at the next barrier). A rank that fails
//! *between* two collectives its peer has already enqueued leaves the peer's GPU waiting, as
//! in any NCCL program: the ranks here fail or succeed together because they are symmetric.
//!
//! # Sharding (Megatron style)
//!
//! * attention: the q heads and the kv heads are split evenly (`q_heads / tp` and
//!   `kv_heads / tp` per rank, both divisible); the q/k/v projection is column-parallel (each
//!   rank holds the rows of its heads of `[q; k; v]`, and of the q/k/v bias), the output
//!   projection row-parallel (each rank holds the columns of its heads) and yields partial
//!   sums, all-reduced (sum, bf16) before the residual add; the output bias is added once (rank
//!   0 holds it, the others hold zeros);
//! * MLP: gate/up column-parallel (`intermediate / tp` rows of each), down row-parallel, then
//!   an all-reduce;
//! * replicated: the embedding, every norm (and the q/k norms), the LM head: every rank
//!   computes the full logits (identical on every rank), which keeps the sampling side
//!   unchanged and costs one `[hidden, vocab]` GEMM per rank;
//! * the KV cache of a rank holds its kv heads only.
//!
//! # Limits
//!
//! * NCCL registers the buffers of captured collectives with the peer GPUs (zero-copy,
//!   `NCCL_GRAPH_REGISTER`, on by default): a peer maps the pages of this rank's graph pool.
//!   [`Runner::release_memory`](crate::Runner::release_memory) and `resume` would map new pages
//!   under the graphs while the peers keep the old ones, so a tensor-parallel runner must not
//!   use them (set `NCCL_GRAPH_REGISTER=0` to turn registration off, at some bandwidth cost).
//! * `refresh` re-records a runner's graphs: call it on every rank, so that the ranks' graphs
//!   keep issuing the same collectives (graphs of one size replay together on every rank).
//!
//! # NVLink multicast stays off
//!
//! NCCL's NVLink SHARP (NVLS) uses multicast objects (`cuMulticastCreate`), which on shared
//! hosts can put the GPUs out of service for everyone. Nothing here calls `cuMulticastCreate`,
//! and [`NcclComm::init_all`] refuses to create communicators unless `NCCL_NVLS_ENABLE=0` is in
//! the environment (NCCL reads it when the communicators are created; the environment is also
//! what children of the process inherit).
//!
//! # The NCCL library
//!
//! cudarc opens NCCL at first use (dynamic loading): nothing here touches it unless
//! communicators are created (`tp > 1`), and a machine without NCCL gets
//! [`Error::MissingLibrary`], never a panic. cudarc looks for `libnccl.so` (among other names,
//! but not `libnccl.so.2`): where only `libnccl.so.2` is installed, a `libnccl.so` link to it in
//! a folder on `LD_LIBRARY_PATH` makes it found (`scripts/gpu-run.sh` does that).

use std::ffi::{CStr, c_int, c_void};
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use half::bf16;

use super::llama::{DecodeParts, LlamaConfig, LlamaLayer, decode_step};
use super::weights::{HostTensor, LayerWeights, LlamaWeights};
use crate::cudarc::nccl::{result as nccl, sys as nccl_sys};
use crate::kernels::reference::uniform_value;

use crate::{DType, Error, Result, Runtime, Tensor, cuda_graph};

/// The environment variable that must be `0`: NCCL's NVLink SHARP (multicast) stays off.
pub const NVLS_ENV: &str = "NCCL_NVLS_ENABLE";

/// `Ok` when `NCCL_NVLS_ENABLE=0` is set; otherwise an error saying to set it.
pub fn check_nvls_disabled() -> Result<()> {
    match std::env::var(NVLS_ENV) {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(v) => Err(Error::invalid(
            "nccl",
            format!(
                "{NVLS_ENV}={v}: NVLink multicast must stay off on these hosts; set {NVLS_ENV}=0"
            ),
        )),
        Err(_) => Err(Error::invalid(
            "nccl",
            format!("{NVLS_ENV} is not set: set {NVLS_ENV}=0 (NVLink multicast must stay off)"),
        )),
    }
}

/// The library name the missing-NCCL error reports, with the fix.
const NCCL_LIBRARY: &str = "nccl (cudarc opens `libnccl.so`; where only `libnccl.so.2` is installed, link it as `libnccl.so` in a folder on LD_LIBRARY_PATH)";

/// Whether the NCCL library can be loaded (opens it; calls nothing in it).
pub fn nccl_available() -> bool {
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    unsafe { nccl_sys::is_culib_present() }
}

/// `Ok` when the NCCL library can be loaded, else [`Error::MissingLibrary`] with the fix.
fn require_nccl() -> Result<()> {
    if nccl_available() {
        Ok(())
    } else {
        Err(Error::MissingLibrary {
            library: NCCL_LIBRARY,
        })
    }
}

/// NCCL's version code (`major * 10000 + minor * 100 + patch` since 2.9, e.g. 22803), or
/// [`Error::MissingLibrary`] without NCCL.
pub fn nccl_version() -> Result<u32> {
    require_nccl()?;
    let version = nccl::get_nccl_version().map_err(|e| nccl_error("ncclGetVersion", e, None))?;
    Ok(version.max(0) as u32)
}

/// An NCCL failure as the crate's error: the call, NCCL's code and its explanation.
fn nccl_error(call: &'static str, e: nccl::NcclError, comm: Option<nccl_sys::ncclComm_t>) -> Error {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
    let text = unsafe { cstr(nccl_sys::ncclGetErrorString(e.0)) };
    let last = comm
        // SAFETY: `comm` is a live communicator; ncclGetLastError returns a NUL-terminated
        // string owned by NCCL (possibly empty), read before any other NCCL call.
        .map(|c| unsafe { cstr(nccl_sys::ncclGetLastError(c)) })
        .filter(|s| !s.is_empty());
    Error::invalid(
        call,
        format!(
            "NCCL error {:?}: {text}{}",
            e.0,
            last.map(|s| format!(" ({s})")).unwrap_or_default()
        ),
    )
}

/// Copies a C string NCCL returned; empty for a null pointer.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that stays valid during the call.
unsafe fn cstr(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated, as the caller guarantees.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The id that lets ranks in separate processes find each other (`ncclGetUniqueId`).
///
/// The launcher makes one and hands it to every rank's process, as text
/// ([`to_hex`](Self::to_hex): 256 hex digits, fit for an environment variable or an argument),
/// which each reads back with [`from_hex`](Self::from_hex) and gives to
/// [`NcclComm::init_rank`]. It holds the address rank 0's bootstrap listens on: it is a
/// rendezvous, not a secret, and not reusable once the communicators exist.
#[derive(Clone, Copy)]
pub struct NcclId(nccl_sys::ncclUniqueId);

impl NcclId {
    /// A new id (NCCL opens the bootstrap socket of rank 0 on this host). Refuses unless
    /// `NCCL_NVLS_ENABLE=0`; [`Error::MissingLibrary`] without NCCL.
    pub fn new() -> Result<Self> {
        check_nvls_disabled()?;
        require_nccl()?;
        let id = nccl::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e, None))?;
        Ok(Self(id))
    }

    /// The id as 256 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0
            .internal
            .iter()
            .map(|&b| format!("{:02x}", b as u8))
            .collect()
    }

    /// Reads [`to_hex`](Self::to_hex)'s text back; an error for anything else.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = || {
            Error::invalid(
                "NcclId::from_hex",
                format!(
                    "expected 256 hex digits (an id from NcclId::to_hex), got {} characters",
                    text.len()
                ),
            )
        };
        let mut id = nccl_sys::ncclUniqueId { internal: [0; 128] };
        if text.len() != 2 * id.internal.len() || !text.is_ascii() {
            return Err(bad());
        }
        for (byte, pair) in id.internal.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())? as std::ffi::c_char;
        }
        Ok(Self(id))
    }
}

impl std::fmt::Debug for NcclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = self.to_hex();
        write!(f, "NcclId({}...)", &hex[..16])
    }
}

/// One rank's NCCL communicator (blocking), bound to one device.
///
/// `Send` (it moves into its rank's thread) but not `Sync`: NCCL allows a communicator to be
/// used from any thread, never from two at once. Dropping it destroys the communicator
/// (`ncclCommDestroy`, which waits until every graph that recorded its collectives is
/// destroyed: a [`TpLlama`] borrows the communicator and a runner borrows the model, so the
/// borrow checker sees to the order).
#[derive(Debug)]
pub struct NcclComm {
    raw: nccl_sys::ncclComm_t,
    rank: usize,
    world: usize,
    ordinal: usize,
}

// SAFETY: an NCCL communicator is a handle NCCL lets any thread use, provided calls on it do
// not overlap; `NcclComm` is not `Sync` (raw pointer field), so only its owner thread uses it.
unsafe impl Send for NcclComm {}

impl NcclComm {
    /// One communicator per device of `ordinals` (rank `i` on device `ordinals[i]`), from a
    /// single `ncclCommInitAll`. Refuses unless `NCCL_NVLS_ENABLE=0` ([`check_nvls_disabled`]);
    /// [`Error::MissingLibrary`] without NCCL; an error when a device does not exist.
    pub fn init_all(ordinals: &[usize]) -> Result<Vec<NcclComm>> {
        check_nvls_disabled()?;
        if ordinals.is_empty() {
            return Err(Error::invalid("ncclCommInitAll", "no device given"));
        }
        let count = Runtime::device_count()?;
        if let Some(&ordinal) = ordinals.iter().find(|&&o| o >= count) {
            return Err(Error::NoDevice { ordinal, count });
        }
        let mut sorted = ordinals.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != ordinals.len() {
            return Err(Error::invalid(
                "ncclCommInitAll",
                format!("devices {ordinals:?} repeat: one rank per device"),
            ));
        }
        require_nccl()?;
        let devices = ordinals
            .iter()
            .map(|&o| c_int::try_from(o))
            .collect::<std::result::Result<Vec<c_int>, _>>()
            .map_err(|_| Error::invalid("ncclCommInitAll", "device ordinal out of range"))?;
        let world = c_int::try_from(devices.len())
            .map_err(|_| Error::invalid("ncclCommInitAll", "too many devices"))?;
        let mut raw = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: `raw` has room for `world` handles and `devices` holds `world` ordinals, each
        // an existing device (checked above); NCCL writes one communicator per device.
        unsafe { nccl::comm_init_all(raw.as_mut_ptr(), world, devices.as_ptr()) }
            .map_err(|e| nccl_error("ncclCommInitAll", e, None))?;
        // Own every handle first, so an error below still destroys them all.
        let comms: Vec<NcclComm> = raw
            .into_iter()
            .zip(ordinals)
            .enumerate()
            .map(|(rank, (raw, &ordinal))| NcclComm {
                raw,
                rank,
                world: ordinals.len(),
                ordinal,
            })
            .collect();
        for comm in &comms {
            comm.check_device("ncclCommInitAll")?;
        }
        Ok(comms)
    }

    /// Rank `rank` of `world` ranks that run in separate processes, one per GPU, on device
    /// `ordinal` (`ncclCommInitRank`): every rank's process calls it with the same `id`, made
    /// once by the launcher ([`NcclId::new`]). It returns when all `world` ranks have joined.
    /// Refuses unless `NCCL_NVLS_ENABLE=0`; [`Error::MissingLibrary`] without NCCL; an error for
    /// `rank >= world` or a device that does not exist.
    pub fn init_rank(id: &NcclId, world: usize, rank: usize, ordinal: usize) -> Result<NcclComm> {
        const CALL: &str = "ncclCommInitRank";
        check_nvls_disabled()?;
        if rank >= world {
            return Err(Error::invalid(
                CALL,
                format!("rank {rank} out of {world} ranks"),
            ));
        }
        let count = Runtime::device_count()?;
        if ordinal >= count {
            return Err(Error::NoDevice { ordinal, count });
        }
        require_nccl()?;
        let nranks = c_int::try_from(world).map_err(|_| Error::invalid(CALL, "too many ranks"))?;
        let rank_c = c_int::try_from(rank).map_err(|_| Error::invalid(CALL, "rank too large"))?;
        // NCCL binds the communicator to the calling thread's current device.
        let ctx = crate::cudarc::driver::CudaContext::new(ordinal)
            .map_err(Error::driver("cuCtxCreate"))?;
        ctx.bind_to_thread()
            .map_err(Error::driver("cuCtxSetCurrent"))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid place for one handle, `id.0` an id from ncclGetUniqueId, and
        // the thread's current context is device `ordinal`'s primary context (bound above).
        unsafe { nccl::comm_init_rank(&mut raw, nranks, id.0, rank_c) }
            .map_err(|e| nccl_error(CALL, e, None))?;
        let comm = NcclComm {
            raw,
            rank,
            world,
            ordinal,
        };
        comm.check_device(CALL)?;
        Ok(comm)
    }

    /// An error unless NCCL bound the communicator to `self.ordinal`.
    fn check_device(&self, call: &'static str) -> Result<()> {
        let mut device: c_int = -1;
        // SAFETY: `self.raw` is a live communicator; NCCL writes one int.
        unsafe { nccl_sys::ncclCommCuDevice(self.raw, &mut device) }
            .result()
            .map_err(|e| nccl_error("ncclCommCuDevice", e, Some(self.raw)))?;
        if usize::try_from(device).ok() != Some(self.ordinal) {
            return Err(Error::invalid(
                call,
                format!(
                    "rank {} is on device {device}, expected {}",
                    self.rank, self.ordinal
                ),
            ));
        }
        Ok(())
    }

    /// This communicator's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// The CUDA device the communicator is bound to.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: `raw` is a live communicator owned by this value and used by no other thread;
        // every graph that recorded its collectives was dropped before (see the type's docs).
        if let Err(e) = unsafe { nccl::comm_destroy(self.raw) } {
            tracing::warn!(rank = self.rank, code = ?e.0, "ncclCommDestroy failed");
        }
    }
}

/// `y = Σ_ranks x`: an NCCL all-reduce (sum, bf16) of `x` over `comm`'s ranks, into a new tensor,
/// enqueued on the runtime's stream, so that inside a capture it is recorded into the graph
/// (its output comes from the graph pool) and communicates when the graph replays.
///
/// `x`: bf16, any shape, on `rt`'s device, which must be `comm`'s. Every rank must call it in
/// the same order with the same shape.
#[track_caller]
pub fn all_reduce_sum(rt: &Runtime, comm: &NcclComm, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "all_reduce";
    rt.enter_op(OP);
    rt.check_device(OP, x)?;
    x.expect_dtype(OP, DType::BF16)?;
    if comm.ordinal != rt.ordinal() {
        return Err(Error::invalid(
            OP,
            format!(
                "the communicator of rank {} is on device {}, the runtime on device {}",
                comm.rank,
                comm.ordinal,
                rt.ordinal()
            ),
        ));
    }
    let y = rt.alloc(x.shape(), DType::BF16)?;
    if x.numel() == 0 {
        return Ok(y);
    }
    rt.context()
        .bind_to_thread()
        .map_err(Error::driver("cuCtxSetCurrent"))?;
    // SAFETY: `x` and `y` are live device allocations of `numel` bf16 values on the
    // communicator's device, held by the caller (`x`) and returned (`y`) past the call; the
    // all-reduce runs on the runtime's stream, after the work that wrote `x` and before any
    // later use or stream-ordered free of either. NCCL reads `x` and writes `y` only.
    unsafe {
        nccl::all_reduce(
            x.device_ptr() as *const c_void,
            y.device_ptr() as *mut c_void,
            x.numel(),
            nccl_sys::ncclDataType_t::ncclBfloat16,
            nccl_sys::ncclRedOp_t::ncclSum,
            comm.raw,
            rt.stream().cu_stream() as nccl_sys::cudaStream_t,
        )
    }
    .map_err(|e| nccl_error("ncclAllReduce", e, Some(comm.raw)))?;
    Ok(y)
}

// ---------------------------------------------------------------------------------------------
// Ranks: one thread each, a barrier between phases
// ---------------------------------------------------------------------------------------------

/// A barrier for the ranks of [`run_ranks`] that fails instead of hanging when a rank failed.
///
/// It spins first (then yields, then sleeps), so after a short wait the ranks leave it within
/// about a microsecond of each other: a barrier before a timed replay adds no skew to it.
#[derive(Debug)]
pub struct RankSync {
    world: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    failed: AtomicBool,
    first_failure: Mutex<Option<usize>>,
}

impl RankSync {
    /// A barrier for `world` ranks.
    pub fn new(world: usize) -> Self {
        Self {
            world: world.max(1),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            first_failure: Mutex::new(None),
        }
    }

    /// Waits until every rank arrived; an error as soon as any rank failed.
    pub fn wait(&self) -> Result<()> {
        let peer_failed = || Error::invalid("rank sync", "another rank failed; this one stops");
        if self.failed.load(Ordering::Acquire) {
            return Err(peer_failed());
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.world {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.failed.load(Ordering::Acquire) {
                return Err(peer_failed());
            }
            // Spin for short waits (a timed replay), yield, then sleep for long ones (another
            // rank uploading its weights or capturing).
            spins = spins.saturating_add(1);
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else if spins < 1 << 20 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        Ok(())
    }

    /// Marks `rank` as failed: every waiting and later [`wait`](Self::wait) returns an error.
    pub fn fail(&self, rank: usize) {
        let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(rank);
        self.failed.store(true, Ordering::Release);
    }

    /// The rank that failed first, if any.
    pub fn first_failure(&self) -> Option<usize> {
        *self.first_failure.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one rank's thread of [`run_ranks`] receives.
#[derive(Debug)]
pub struct Rank<'g> {
    /// This rank (its device ordinal).
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// The rank's communicator, on device `rank`. It stays owned by `run_ranks`, which destroys
    /// it after the rank's function returned and, on failure, after the other ranks were told.
    pub comm: &'g NcclComm,
    /// The barrier every rank shares.
    pub sync: &'g RankSync,
}

/// Marks the rank failed when its thread unwinds.
struct FailOnUnwind<'g> {
    sync: &'g RankSync,
    rank: usize,
}

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.sync.fail(self.rank);
        }
    }
}

/// Runs `f` once per rank, rank `r` on device `r`, each in its own thread of this process, with
/// communicators from one `ncclCommInitAll`, and returns the ranks' results in rank order.
///
/// `f` creates its rank's [`Runtime`] (`Runtime::new(rank.rank)`), model and runner: they stay
/// in the thread and drop when `f` returns, before the communicator, which the thread destroys
/// last. On error the first rank that failed gives the error (a rank that panicked gives an
/// error carrying the panic's message); the other ranks' next [`RankSync::wait`] fails, so
/// they stop too.
///
/// Errors before any thread starts: `world` is 0, `NCCL_NVLS_ENABLE` is not `0`, fewer than
/// `world` devices, no NCCL.
pub fn run_ranks<T, F>(world: usize, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(Rank<'_>) -> Result<T> + Sync,
{
    if world == 0 {
        return Err(Error::invalid("run_ranks", "needs at least one rank"));
    }
    let ordinals: Vec<usize> = (0..world).collect();
    let comms = NcclComm::init_all(&ordinals)?;
    let sync = RankSync::new(world);
    let f = &f;
    let sync_ref = &sync;
    let outcomes: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| {
                let rank = comm.rank;
                let handle = std::thread::Builder::new()
                    .name(format!("tp-rank-{rank}"))
                    .spawn_scoped(scope, move || {
                        // Declared first, dropped last: the communicator is destroyed after
                        // the failure flag is up (NCCL's destroy waits for the other ranks).
                        let comm = comm;
                        let _guard = FailOnUnwind {
                            sync: sync_ref,
                            rank,
                        };
                        let out = f(Rank {
                            rank,
                            world,
                            comm: &comm,
                            sync: sync_ref,
                        });
                        if out.is_err() {
                            sync_ref.fail(rank);
                        }
                        out
                    });
                (rank, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(rank, handle)| match handle {
                Err(e) => {
                    sync_ref.fail(rank);
                    Err(Error::invalid(
                        "run_ranks",
                        format!("could not start the thread of rank {rank}: {e}"),
                    ))
                }
                Ok(handle) => handle.join().unwrap_or_else(|payload| {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    Err(Error::invalid(
                        "run_ranks",
                        format!("rank {rank} panicked: {message}"),
                    ))
                }),
            })
            .collect()
    });
    let first = sync.first_failure();
    let mut results = Vec::with_capacity(world);
    let mut errors: Vec<(usize, Error)> = Vec::new();
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(v) => results.push(v),
            Err(e) => errors.push((rank, e)),
        }
    }
    if errors.is_empty() {
        return Ok(results);
    }
    let pick = errors
        .iter()
        .position(|(rank, _)| Some(*rank) == first)
        .unwrap_or(0);
    let (rank, error) = errors.swap_remove(pick);
    tracing::error!(rank, error = %error, "tensor-parallel rank failed");
    Err(error)
}

/// Runs `f` as rank `rank` of `world` in this process, when each rank has a process of its own
/// (the launcher started `world` processes and gave each the same [`NcclId`]): the
/// communicator comes from [`NcclComm::init_rank`] on device `rank`, and is destroyed after `f`
/// returns (`f` creates and drops its runtime, model and runner, as with [`run_ranks`]).
///
/// The [`Rank::sync`] `f` receives is this process's alone, so its `wait` returns at once: the
/// ranks meet in their collectives. A rank that fails stops its process; its peers then wait in
/// their next collective until the launcher stops them, as with any NCCL program of one process
/// per GPU (`torchrun` likewise kills the other ranks when one exits with an error).
pub fn run_rank_process<T>(
    id: &NcclId,
    world: usize,
    rank: usize,
    f: impl FnOnce(Rank<'_>) -> Result<T>,
) -> Result<T> {
    let comm = NcclComm::init_rank(id, world, rank, rank)?;
    let sync = RankSync::new(1);
    f(Rank {
        rank,
        world,
        comm: &comm,
        sync: &sync,
    })
}

// ---------------------------------------------------------------------------------------------
// Sharding
// ---------------------------------------------------------------------------------------------

/// The shapes one rank of `world` holds: `q_heads`, `kv_heads` and `intermediate` divided by
/// `world` (each must divide evenly), everything else as in `cfg`.
pub fn shard_config(cfg: &LlamaConfig, world: usize) -> Result<LlamaConfig> {
    cfg.validate()?;
    if world == 0 {
        return Err(Error::invalid("shard_config", "tensor parallelism of 0"));
    }
    for (name, value) in [
        ("q_heads", cfg.q_heads),
        ("kv_heads", cfg.kv_heads),
        ("intermediate", cfg.intermediate),
    ] {
        if value % world != 0 {
            return Err(Error::invalid(
                "shard_config",
                format!("`{name}` ({value}) is not divisible by the tensor parallelism ({world})"),
            ));
        }
    }
    let local = LlamaConfig {
        q_heads: cfg.q_heads / world,
        kv_heads: cfg.kv_heads / world,
        intermediate: cfg.intermediate / world,
        ..cfg.clone()
    };
    local.validate()?;
    Ok(local)
}

/// The rows `ranges` of `t` (along its first dimension), concatenated.
fn take_rows(t: &HostTensor, ranges: &[Range<usize>]) -> Result<HostTensor> {
    let rows = t.dims.first().copied().unwrap_or(0);
    let row_len: usize = t.dims.iter().skip(1).product();
    let mut data = Vec::with_capacity(ranges.iter().map(|r| r.len() * row_len).sum());
    for r in ranges {
        if r.end > rows || r.start > r.end {
            return Err(Error::invalid(
                "shard",
                format!("rows {r:?} out of a tensor of {rows} rows"),
            ));
        }
        data.extend_from_slice(&t.data[r.start * row_len..r.end * row_len]);
    }
    let mut dims = t.dims.clone();
    if let Some(first) = dims.first_mut() {
        *first = ranges.iter().map(|r| r.len()).sum();
    }
    HostTensor::new(&dims, data)
}

/// Columns `cols` of the 2-D tensor `t`.
fn take_cols(t: &HostTensor, cols: Range<usize>) -> Result<HostTensor> {
    let [rows, width] = t.dims[..] else {
        return Err(Error::invalid(
            "shard",
            format!("column slice of a tensor of dimensions {:?}", t.dims),
        ));
    };
    if cols.end > width || cols.start > cols.end {
        return Err(Error::invalid(
            "shard",
            format!("columns {cols:?} out of a tensor of {width} columns"),
        ));
    }
    let mut data = Vec::with_capacity(rows * cols.len());
    for row in t.data.chunks_exact(width) {
        data.extend_from_slice(&row[cols.clone()]);
    }
    HostTensor::new(&[rows, cols.len()], data)
}

/// Rank `rank`'s part of one layer (see the [module docs](self)): the q/k/v rows of its heads,
/// the output projection's columns of its heads, its slice of gate/up rows and down columns;
/// the output bias on rank 0 and zeros elsewhere (added once); norms replicated.
pub fn shard_layer(
    cfg: &LlamaConfig,
    layer: &LayerWeights,
    rank: usize,
    world: usize,
) -> Result<LayerWeights> {
    let local = shard_config(cfg, world)?;
    if rank >= world {
        return Err(Error::invalid(
            "shard_layer",
            format!("rank {rank} of {world}"),
        ));
    }
    let d = cfg.head_dim;
    let (q, kv) = (local.q_heads * d, local.kv_heads * d);
    let k_start = cfg.q_heads * d;
    let v_start = k_start + cfg.kv_heads * d;
    let qkv_rows = [
        rank * q..(rank + 1) * q,
        k_start + rank * kv..k_start + (rank + 1) * kv,
        v_start + rank * kv..v_start + (rank + 1) * kv,
    ];
    let i = local.intermediate;
    let gate_up_rows = [
        rank * i..(rank + 1) * i,
        cfg.intermediate + rank * i..cfg.intermediate + (rank + 1) * i,
    ];
    let o_bias = match (&layer.o_bias, rank) {
        (Some(b), 0) => Some(b.clone()),
        (Some(b), _) => Some(HostTensor::new(&b.dims, vec![bf16::ZERO; b.data.len()])?),
        (None, _) => None,
    };
    Ok(LayerWeights {
        attn_norm: layer.attn_norm.clone(),
        qkv: take_rows(&layer.qkv, &qkv_rows)?,
        qkv_bias: layer
            .qkv_bias
            .as_ref()
            .map(|b| take_rows(b, &qkv_rows))
            .transpose()?,
        q_norm: layer.q_norm.clone(),
        k_norm: layer.k_norm.clone(),
        o_proj: take_cols(&layer.o_proj, rank * q..(rank + 1) * q)?,
        o_bias,
        mlp_norm: layer.mlp_norm.clone(),
        gate_up: take_rows(&layer.gate_up, &gate_up_rows)?,
        down: take_cols(&layer.down, rank * i..(rank + 1) * i)?,
    })
}

/// Rank `rank`'s weights of a model of `cfg` sharded over `world` ranks: valid weights of
/// [`shard_config`]`(cfg, world)`. [`TpLlama::from_weights`] shards layer by layer instead
/// (less host memory); this is the same slicing, whole, for inspection and tests.
pub fn shard_weights(
    cfg: &LlamaConfig,
    weights: &LlamaWeights,
    rank: usize,
    world: usize,
) -> Result<LlamaWeights> {
    weights.check(cfg)?;
    let shard = LlamaWeights {
        embed: weights.embed.clone(),
        layers: weights
            .layers
            .iter()
            .map(|l| shard_layer(cfg, l, rank, world))
            .collect::<Result<_>>()?,
        final_norm: weights.final_norm.clone(),
        lm_head: weights.lm_head.clone(),
    };
    shard.check(&shard_config(cfg, world)?)?;
    Ok(shard)
}

/// Random host weights for `cfg`, deterministic in `seed` (each tensor its own stream of
/// [`uniform_value`]): embedding and LM head uniform in ±1 and ±1/√hidden, projections ±1/√fan_in,
/// norm weights in [0.9, 1.1], q/k/v biases ±0.5, output bias ±0.1, as [`Llama::random`] draws
/// them on the device. Generated on all cores (a Qwen3-0.6B-shaped model takes about a second).
///
/// [`Llama::random`]: super::llama::Llama::random
pub fn random_weights(cfg: &LlamaConfig, seed: u64) -> Result<LlamaWeights> {
    cfg.validate()?;
    let mut index = 0u64;
    let mut tensor = |dims: &[usize], low: f32, high: f32| -> Result<HostTensor> {
        index += 1;
        let stream = seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
        HostTensor::new(dims, uniform_bf16(stream, dims.iter().product(), low, high))
    };
    let h = cfg.hidden;
    let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    let embed = tensor(&[cfg.vocab, h], -1.0, 1.0)?;
    let mut layers = Vec::with_capacity(cfg.layers);
    for _ in 0..cfg.layers {
        let q = cfg.q_width();
        let (qkv_w, o_w, h_w, i_w) = (w(h), w(q), w(h), w(cfg.intermediate));
        layers.push(LayerWeights {
            attn_norm: tensor(&[h], 0.9, 1.1)?,
            qkv: tensor(&[cfg.qkv_width(), h], -qkv_w, qkv_w)?,
            qkv_bias: match cfg.qkv_bias {
                true => Some(tensor(&[cfg.qkv_width()], -0.5, 0.5)?),
                false => None,
            },
            q_norm: match cfg.qk_norm {
                true => Some(tensor(&[cfg.head_dim], 0.9, 1.1)?),
                false => None,
            },
            k_norm: match cfg.qk_norm {
                true => Some(tensor(&[cfg.head_dim], 0.9, 1.1)?),
                false => None,
            },
            o_proj: tensor(&[h, q], -o_w, o_w)?,
            o_bias: match cfg.o_bias {
                true => Some(tensor(&[h], -0.1, 0.1)?),
                false => None,
            },
            mlp_norm: tensor(&[h], 0.9, 1.1)?,
            gate_up: tensor(&[2 * cfg.intermediate, h], -h_w, h_w)?,
            down: tensor(&[h, cfg.intermediate], -i_w, i_w)?,
        });
    }
    let final_norm = tensor(&[h], 0.9, 1.1)?;
    let lm_head = match cfg.tie_embeddings {
        true => None,
        false => Some(tensor(&[cfg.vocab, h], -w(h), w(h))?),
    };
    let weights = LlamaWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    };
    weights.check(cfg)?;
    Ok(weights)
}

/// `len` bf16 values `uniform_value(seed, i, low, high)`, computed on all cores.
fn uniform_bf16(seed: u64, len: usize, low: f32, high: f32) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; len];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = len.div_ceil(threads).max(1 << 16);
    let fill = |start: usize, part: &mut [bf16]| {
        for (j, v) in part.iter_mut().enumerate() {
            *v = bf16::from_f32(uniform_value(seed, (start + j) as u64, low, high));
        }
    };
    if len <= chunk {
        fill(0, &mut out);
        return out;
    }
    std::thread::scope(|scope| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            scope.spawn(move || fill(c * chunk, part));
        }
    });
    out
}

// ---------------------------------------------------------------------------------------------
// The sharded model
// ---------------------------------------------------------------------------------------------

/// One rank of a tensor-parallel Llama-family decoder: its shard of the weights, its part of the
/// KV cache, and the rank's communicator (borrowed: the graphs that record its all-reduces, which
/// borrow the model, are gone before it is destroyed). Built in the rank's thread (see
/// [`run_ranks`]).
#[derive(Debug)]
pub struct TpLlama<'c> {
    cfg: LlamaConfig,
    local: LlamaConfig,
    embed: Tensor,
    layers: Vec<LlamaLayer>,
    final_norm: Tensor,
    lm_head: Option<Tensor>,
    comm: &'c NcclComm,
}

impl<'c> TpLlama<'c> {
    /// Uploads `rank`'s shard of the full-model `weights` (checked against `cfg`; sliced on the
    /// host layer by layer) to `rt`'s device, which must be the rank's communicator's, and
    /// allocates a zeroed KV cache of `[cache_slots, cache_tokens, kv_heads / tp, head_dim]` per
    /// layer for keys and for values.
    ///
    /// A collective: every rank calls it at the same time. After the upload it waits for the
    /// other ranks ([`RankSync::wait`]: an error if one failed), then runs one eager all-reduce
    /// of every captured batch size (`[n, hidden]`, zeros) so that NCCL sets up the connections
    /// of every algorithm and protocol it will pick (it creates them at first use, by default)
    /// before a capture records its collectives.
    pub fn from_weights(
        rt: &Runtime,
        cfg: LlamaConfig,
        weights: &LlamaWeights,
        rank: &Rank<'c>,
    ) -> Result<Self> {
        let comm = rank.comm;
        let (rank_id, world) = (comm.rank(), comm.world_size());
        if comm.ordinal() != rt.ordinal() {
            return Err(Error::invalid(
                "TpLlama",
                format!(
                    "the communicator of rank {rank_id} is on device {}, the runtime on device {}",
                    comm.ordinal(),
                    rt.ordinal()
                ),
            ));
        }
        let local = shard_config(&cfg, world)?;
        weights.check(&cfg)?;
        let up = |t: &HostTensor| rt.upload(&t.data, &t.dims);
        let up_opt = |t: &Option<HostTensor>| t.as_ref().map(up).transpose();
        let cache = local.kv_cache_shape();
        let mut layers = Vec::with_capacity(cfg.layers);
        for full in &weights.layers {
            let l = shard_layer(&cfg, full, rank_id, world)?;
            layers.push(LlamaLayer::upload(rt, &l, cache)?);
        }
        let model = Self {
            embed: up(&weights.embed)?,
            final_norm: up(&weights.final_norm)?,
            lm_head: up_opt(&weights.lm_head)?,
            layers,
            cfg,
            local,
            comm,
        };
        rt.synchronize()?;
        rank.sync.wait()?;
        model.connect(rt)?;
        Ok(model)
    }

    /// One eager all-reduce of `[n, hidden]` zeros for every batch size `forward` captures, then
    /// a synchronize (see [`from_weights`](Self::from_weights)).
    fn connect(&self, rt: &Runtime) -> Result<()> {
        let sizes = [1, 2, 4].into_iter().chain((8..=256).step_by(8));
        let zeros = rt.zeros(&[256, self.cfg.hidden], DType::BF16)?;
        for n in sizes {
            drop(all_reduce_sum(rt, self.comm, &zeros.narrow_rows(0, n)?)?);
        }
        rt.synchronize()
    }

    /// The full model's shapes.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// This rank's shapes ([`shard_config`]).
    pub fn local_config(&self) -> &LlamaConfig {
        &self.local
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// One decode step of this rank, as [`Llama::forward`](super::llama::Llama::forward): the
    /// logits (`[n, vocab]` bf16, the same on every rank) of the next token of `n` sequences.
    /// Per layer it launches the single-GPU forward's kernels on this rank's shard plus two
    /// all-reduces (after the output projection and after the down projection), which the
    /// graphs capture. Every rank must call it at the same time with the same inputs.
    #[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8])]
    pub fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let parts = DecodeParts {
            cfg: &self.local,
            embed: &self.embed,
            layers: &self.layers,
            final_norm: &self.final_norm,
            lm_head: self.lm_head.as_ref(),
        };
        let comm = self.comm;
        decode_step(rt, &parts, tokens, positions, &|rt, partial| {
            all_reduce_sum(rt, comm, &partial)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_id_text_round_trips_and_bad_text_is_an_error() {
        let text: String = (0..128)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let id = NcclId::from_hex(&text).unwrap();
        assert_eq!(id.to_hex(), text);
        assert_eq!(
            NcclId::from_hex(&format!(" {text}\n")).unwrap().to_hex(),
            text
        );
        assert!(format!("{id:?}").starts_with("NcclId(0b30"));
        for bad in [
            "",
            "00",
            &text[..254],
            &format!("{}zz", &text[..254]),
            &format!("{text}00"),
        ] {
            assert!(NcclId::from_hex(bad).is_err(), "{bad:?}");
        }
        let multibyte = format!("{}é", &text[..254]);
        assert!(NcclId::from_hex(&multibyte).is_err());
    }

    fn cfg() -> LlamaConfig {
        LlamaConfig {
            vocab: 40,
            hidden: 16,
            layers: 2,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
            intermediate: 24,
            cache_slots: 4,
            cache_tokens: 8,
            qkv_bias: true,
            o_bias: true,
            qk_norm: true,
            tie_embeddings: false,
            ..LlamaConfig::tiny()
        }
    }

    /// Row `r`, column `c` of a 2-D host tensor.
    fn at(t: &HostTensor, r: usize, c: usize) -> f32 {
        t.data[r * t.dims[1] + c].to_f32()
    }

    #[test]
    fn shard_config_divides_heads_and_mlp() {
        let local = shard_config(&cfg(), 2).unwrap();
        assert_eq!(
            (local.q_heads, local.kv_heads, local.intermediate),
            (2, 1, 12)
        );
        assert_eq!((local.hidden, local.vocab), (16, 40));
        assert!(shard_config(&cfg(), 4).is_err(), "kv_heads 2 over 4 ranks");
        assert!(shard_config(&cfg(), 0).is_err());
        let one = shard_config(&cfg(), 1).unwrap();
        assert_eq!(one, cfg());
    }

    #[test]
    fn random_weights_are_deterministic_and_fit() {
        let a = random_weights(&cfg(), 3).unwrap();
        let b = random_weights(&cfg(), 3).unwrap();
        let c = random_weights(&cfg(), 4).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        a.check(&cfg()).unwrap();
        assert!(
            a.layers[0]
                .attn_norm
                .to_f32()
                .iter()
                .all(|v| (0.89..=1.11).contains(v))
        );
        // Large tensors take the multi-threaded path; the values don't depend on it.
        let big = uniform_bf16(9, (1 << 18) + 3, -1.0, 1.0);
        let at_end = bf16::from_f32(uniform_value(9, (1 << 18) + 2, -1.0, 1.0));
        assert_eq!(big[(1 << 18) + 2], at_end);
    }

    /// Every weight element lands on exactly one rank (or, replicated, on every rank), where
    /// the Megatron slicing says.
    #[test]
    fn shards_partition_the_weights() {
        let cfg = cfg();
        let full = random_weights(&cfg, 1).unwrap();
        let shards: Vec<_> = (0..2)
            .map(|r| shard_weights(&cfg, &full, r, 2).unwrap())
            .collect();
        let d = cfg.head_dim;
        let l = &full.layers[1];
        for (rank, shard) in shards.iter().enumerate() {
            let s = &shard.layers[1];
            assert_eq!(s.qkv.dims, vec![(2 + 2) * d, 16]);
            // q rows: heads 2 rank .. 2 rank + 2; k and v rows: kv head `rank`.
            for row in 0..2 * d {
                assert_eq!(at(&s.qkv, row, 5), at(&l.qkv, rank * 2 * d + row, 5));
            }
            for row in 0..d {
                let k = 4 * d + rank * d + row;
                let v = 6 * d + rank * d + row;
                assert_eq!(at(&s.qkv, 2 * d + row, 3), at(&l.qkv, k, 3));
                assert_eq!(at(&s.qkv, 3 * d + row, 3), at(&l.qkv, v, 3));
                let bias = s.qkv_bias.as_ref().unwrap().to_f32();
                let full_bias = l.qkv_bias.as_ref().unwrap().to_f32();
                assert_eq!(bias[3 * d + row], full_bias[v]);
            }
            // o_proj columns of the rank's heads.
            assert_eq!(s.o_proj.dims, vec![16, 2 * d]);
            for col in 0..2 * d {
                assert_eq!(at(&s.o_proj, 7, col), at(&l.o_proj, 7, rank * 2 * d + col));
            }
            // gate rows, up rows, down columns of the rank's slice of the MLP.
            assert_eq!(s.gate_up.dims, vec![24, 16]);
            for j in 0..12 {
                assert_eq!(at(&s.gate_up, j, 2), at(&l.gate_up, rank * 12 + j, 2));
                assert_eq!(
                    at(&s.gate_up, 12 + j, 2),
                    at(&l.gate_up, 24 + rank * 12 + j, 2)
                );
                assert_eq!(at(&s.down, 9, j), at(&l.down, 9, rank * 12 + j));
            }
            // The output bias once: rank 0 holds it, the others zeros.
            let o_bias = s.o_bias.as_ref().unwrap().to_f32();
            match rank {
                0 => assert_eq!(o_bias, l.o_bias.as_ref().unwrap().to_f32()),
                _ => assert!(o_bias.iter().all(|&v| v == 0.0)),
            }
            // Replicated.
            assert_eq!(s.q_norm, l.q_norm);
            assert_eq!(s.mlp_norm, l.mlp_norm);
            assert_eq!(shard.embed, full.embed);
            assert_eq!(shard.lm_head, full.lm_head);
        }
    }

    /// Row-parallel halves sum to the full product, column-parallel halves concatenate to it:
    /// the sharded MLP equals the full one up to rounding (host f32 math).
    #[test]
    fn sharded_mlp_sums_to_the_full_one() {
        let cfg = cfg();
        let full = random_weights(&cfg, 2).unwrap();
        let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let mlp = |l: &LayerWeights, inter: usize| -> Vec<f32> {
            let gu = l.gate_up.to_f32();
            let down = l.down.to_f32();
            let dot = |row: &[f32]| row.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>();
            let act: Vec<f32> = (0..inter)
                .map(|j| {
                    let g = dot(&gu[j * 16..(j + 1) * 16]);
                    let u = dot(&gu[(inter + j) * 16..(inter + j + 1) * 16]);
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            (0..16)
                .map(|o| (0..inter).map(|j| down[o * inter + j] * act[j]).sum())
                .collect()
        };
        let reference = mlp(&full.layers[0], 24);
        let mut sum = [0f32; 16];
        for rank in 0..2 {
            let s = shard_layer(&cfg, &full.layers[0], rank, 2).unwrap();
            for (acc, v) in sum.iter_mut().zip(mlp(&s, 12)) {
                *acc += v;
            }
        }
        for (a, b) in sum.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn slicing_errors_are_errors() {
        let t = HostTensor::new(&[2, 3], vec![bf16::ONE; 6]).unwrap();
        assert!(take_rows(&t, &[0..1, 1..3]).is_err());
        assert!(take_cols(&t, 2..4).is_err());
        let v = HostTensor::new(&[3], vec![bf16::ONE; 3]).unwrap();
        assert!(take_cols(&v, 0..1).is_err());
        assert_eq!(take_rows(&v, &[0..1, 2..3]).unwrap().dims, vec![2]);
        let layer = &random_weights(&cfg(), 0).unwrap().layers[0];
        assert!(
            shard_layer(&cfg(), layer, 2, 2).is_err(),
            "rank out of range"
        );
    }

    #[test]
    fn rank_sync_passes_together_and_fails_fast() {
        let sync = RankSync::new(3);
        let passed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..100 {
                        sync.wait().unwrap();
                    }
                    passed.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 3);
        let sync = RankSync::new(2);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| sync.wait());
            sync.fail(1);
            assert!(waiter.join().unwrap().is_err());
        });
        assert!(sync.wait().is_err());
        assert_eq!(sync.first_failure(), Some(1));
    }

    #[test]
    fn nvls_check_and_no_nccl_calls_without_ranks() {
        // Reads the environment only; never loads NCCL.
        match std::env::var(NVLS_ENV).as_deref() {
            Ok("0") => assert!(check_nvls_disabled().is_ok()),
            _ => assert!(check_nvls_disabled().is_err()),
        }
        assert!(run_ranks(0, |_| Ok(())).is_err());
    }
}
