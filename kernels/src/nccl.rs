//! NCCL at the runtime's FFI edge: communicators ([`NcclComm`]), the rendezvous id of ranks in
//! separate processes ([`NcclId`]) and the one collective the models need ([`all_reduce_sum`]).
//! Every `unsafe` block that touches NCCL is in this file, each with the invariant that makes
//! it sound; the facade's tensor-parallel models (`cudagraph::models::tp`) are safe code on
//! top of it.
//!
//! # The contract: creating a communicator is the unsafe step
//!
//! A collective is sound only if every rank of the communicator issues the same collectives,
//! with equal element counts and dtypes, in the same order. NCCL trusts each rank's count: an
//! all-reduce of 100 elements on one rank and 200 on its peer reads and writes past the
//! smaller rank's buffers (on both GPUs, the peer writing into this rank's memory through
//! NVLink or a registered buffer), which no check on one rank can see.
//!
//! So the promise is made where it can be kept: [`NcclComm::init_all`] and
//! [`NcclComm::init_rank`] are `unsafe fn`, and their callers promise, for every communicator
//! they create, that the ranks will issue matching collectives (for a model: run the same
//! batch sizes on every rank, in the same order). A communicator then only exists where someone
//! made that promise, and [`all_reduce_sum`] is a safe function that checks everything one rank
//! can check: the dtype (bf16), the tensor on the runtime's device and the runtime on the
//! communicator's, and the byte count of the element count. Orchestration that creates
//! communicators for a caller's closure (the facade's `run_ranks` and `run_rank_process`) is
//! `unsafe fn` too, with the same contract on the closure.
//!
//! Why not check the counts? NCCL cannot (it has no count handshake), and an in-band check (an
//! all-gather of every rank's count before each collective, read back on the host) would cost
//! an extra collective and a host synchronization per all-reduce, twice per layer per decode
//! step: more than the all-reduce itself at decode sizes. Inside a CUDA graph it could not run
//! at all: a replay runs no host code, it re-issues the recorded collectives with the counts of
//! the capture. What could make the orchestration safe later is a lock-step driver that owns
//! every rank's runner and takes each step's batch once, dispatching the same size to every rank
//! (graphs of one size record the same collectives on every rank, since the ranks' shards have
//! equal shapes): the agreement on counts would then follow from the types instead of a promise.
//!
//! # NVLink multicast stays off
//!
//! NCCL's NVLink SHARP (NVLS) uses multicast objects (`cuMulticastCreate`), which on shared
//! hosts can put the GPUs out of service for everyone. Nothing here calls `cuMulticastCreate`,
//! and every way of creating a communicator (and [`NcclId::new`]) refuses unless
//! `NCCL_NVLS_ENABLE=0` is in the environment ([`check_nvls_disabled`]; NCCL reads it when the
//! communicators are created, and children of the process inherit it).
//!
//! # The NCCL library
//!
//! cudarc opens NCCL at first use (dynamic loading): nothing here touches it unless a
//! communicator or an id is created, and a machine without NCCL gets
//! [`Error::MissingLibrary`], never a panic. cudarc looks for `libnccl.so` (among other names,
//! but not `libnccl.so.2`): where only `libnccl.so.2` is installed, a `libnccl.so` link to it in
//! a folder on `LD_LIBRARY_PATH` makes it found.

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::nccl::{result as nccl, sys};

use crate::{DType, Error, Result, Runtime, Tensor};

/// The environment variable that must be `0`: NCCL's NVLink SHARP (multicast) stays off.
pub const NVLS_ENV: &str = "NCCL_NVLS_ENABLE";

/// `Ok` when `NCCL_NVLS_ENABLE=0` is set; otherwise an error saying to set it.
pub fn check_nvls_disabled() -> Result<()> {
    nvls_value_disables(std::env::var(NVLS_ENV).ok().as_deref())
}

/// [`check_nvls_disabled`] for the variable's value (`None`: unset).
fn nvls_value_disables(value: Option<&str>) -> Result<()> {
    match value {
        Some(v) if v.trim() == "0" => Ok(()),
        Some(v) => Err(Error::invalid(
            "nccl",
            format!(
                "{NVLS_ENV}={v}: NVLink multicast must stay off on these hosts; set {NVLS_ENV}=0"
            ),
        )),
        None => Err(Error::invalid(
            "nccl",
            format!("{NVLS_ENV} is not set: set {NVLS_ENV}=0 (NVLink multicast must stay off)"),
        )),
    }
}

/// The library name the missing-NCCL error reports, with the fix.
const NCCL_LIBRARY: &str = "nccl (cudarc opens `libnccl.so`; where only `libnccl.so.2` is installed, link it as `libnccl.so` in a folder on LD_LIBRARY_PATH)";

/// Whether the NCCL library can be loaded (opens it; calls nothing in it).
pub fn nccl_available() -> bool {
    #[cfg(not(feature = "dynamic-linking"))]
    // SAFETY: only tries to open the shared library; calls no symbol of it.
    return unsafe { sys::is_culib_present() };
    #[cfg(feature = "dynamic-linking")]
    {
        // Linked: the library is there (the program started); a stub answers with an error.
        let mut version = 0;
        // SAFETY: writes one int.
        unsafe { sys::ncclGetVersion(&mut version) == sys::ncclResult_t::ncclSuccess }
    }
}

/// `Ok` when the NCCL library can be loaded, else [`Error::MissingLibrary`] with the fix.
pub fn require_nccl() -> Result<()> {
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

/// An NCCL failure as the crate's error: the call, NCCL's code and its explanation, and the
/// communicator's last error message when there is one.
fn nccl_error(call: &'static str, e: nccl::NcclError, comm: Option<sys::ncclComm_t>) -> Error {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
    let text = unsafe { cstr(sys::ncclGetErrorString(e.0)) };
    let last = comm
        // SAFETY: `comm` is a live communicator; ncclGetLastError returns a NUL-terminated
        // string owned by NCCL (possibly empty), read before any other NCCL call.
        .map(|c| unsafe { cstr(sys::ncclGetLastError(c)) })
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
unsafe fn cstr(p: *const c_char) -> String {
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
pub struct NcclId(sys::ncclUniqueId);

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

    /// Reads [`to_hex`](Self::to_hex)'s text back (surrounding whitespace ignored); an error for
    /// anything else.
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
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        // Hex digits only: `from_str_radix` alone would also take a sign (`+1`).
        if text.len() != 2 * id.internal.len() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        for (byte, pair) in id.internal.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())? as c_char;
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
/// Only the `unsafe` constructors make one ([`init_all`](Self::init_all),
/// [`init_rank`](Self::init_rank)): whoever created it promised that every rank issues matching
/// collectives on it (see the [module docs](self)), which is what makes the safe
/// [`all_reduce_sum`] sound.
///
/// `Send` (it moves into its rank's thread) but not `Sync`: NCCL allows a communicator to be
/// used from any thread, never from two at once. The communicator is destroyed
/// (`ncclCommDestroy`) when the last of this value and the graphs that recorded its
/// collectives is gone: a graph keeps the communicator it all-reduces over.
#[derive(Debug)]
pub struct NcclComm {
    raw: Arc<RawComm>,
    rank: usize,
    world: usize,
    ordinal: usize,
    /// Not `Sync`: calls on a communicator must not overlap.
    _not_sync: PhantomData<Cell<()>>,
}

/// The NCCL handle, destroyed when its last owner (the [`NcclComm`], or a graph that recorded
/// one of its collectives) drops it.
#[derive(Debug)]
struct RawComm(sys::ncclComm_t);

// SAFETY: the handle is used (for collectives) only through an `NcclComm`, which is not `Sync`,
// so calls never overlap; graphs hold an `Arc<RawComm>` only to destroy it last, and
// `ncclCommDestroy` may run on any thread.
unsafe impl Send for RawComm {}
// SAFETY: as above: no method of `RawComm` uses the handle through a shared reference.
unsafe impl Sync for RawComm {}

impl Drop for RawComm {
    fn drop(&mut self) {
        // SAFETY: the handle is live and this is its last owner: every graph that recorded a
        // collective on it held a reference and is gone.
        if let Err(e) = unsafe { nccl::comm_destroy(self.0) } {
            tracing::warn!(code = ?e.0, "ncclCommDestroy failed");
        }
    }
}

impl NcclComm {
    /// One communicator per device of `ordinals` (rank `i` on device `ordinals[i]`), from a
    /// single `ncclCommInitAll`. Refuses unless `NCCL_NVLS_ENABLE=0` ([`check_nvls_disabled`]);
    /// [`Error::MissingLibrary`] without NCCL; an error when a device does not exist or repeats.
    ///
    /// # Safety
    ///
    /// Every rank of the returned communicators issues the same sequence of collectives with
    /// equal element counts and dtypes (eagerly, or recorded in graphs whose replays then
    /// follow the same order on every rank): for a model, run the same batch sizes on every
    /// rank in the same order. NCCL does not check this; a rank whose count differs from its
    /// peers' makes NCCL read and write out of bounds on every rank.
    pub unsafe fn init_all(ordinals: &[usize]) -> Result<Vec<NcclComm>> {
        const CALL: &str = "ncclCommInitAll";
        check_nvls_disabled()?;
        if ordinals.is_empty() {
            return Err(Error::invalid(CALL, "no device given"));
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
                CALL,
                format!("devices {ordinals:?} repeat: one rank per device"),
            ));
        }
        require_nccl()?;
        let devices = ordinals
            .iter()
            .map(|&o| c_int::try_from(o))
            .collect::<std::result::Result<Vec<c_int>, _>>()
            .map_err(|_| Error::invalid(CALL, "device ordinal out of range"))?;
        let world =
            c_int::try_from(devices.len()).map_err(|_| Error::invalid(CALL, "too many devices"))?;
        let mut raw = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: `raw` has room for `world` handles and `devices` holds `world` ordinals, each
        // an existing device (checked above); NCCL writes one communicator per device. The
        // collectives later issued on them match across ranks, as the caller promises.
        unsafe { nccl::comm_init_all(raw.as_mut_ptr(), world, devices.as_ptr()) }
            .map_err(|e| nccl_error(CALL, e, None))?;
        // Own every handle first, so an error below still destroys them all.
        let comms: Vec<NcclComm> = raw
            .into_iter()
            .zip(ordinals)
            .enumerate()
            .map(|(rank, (raw, &ordinal))| NcclComm {
                raw: Arc::new(RawComm(raw)),
                _not_sync: PhantomData,
                rank,
                world: ordinals.len(),
                ordinal,
            })
            .collect();
        for comm in &comms {
            comm.check_device(CALL)?;
        }
        Ok(comms)
    }

    /// Rank `rank` of `world` ranks that run in separate processes, one per GPU, on device
    /// `ordinal` (`ncclCommInitRank`): every rank's process calls it with the same `id`, made
    /// once by the launcher ([`NcclId::new`]). It returns when all `world` ranks have joined.
    /// Refuses unless `NCCL_NVLS_ENABLE=0`; [`Error::MissingLibrary`] without NCCL; an error for
    /// `rank >= world` or a device that does not exist.
    ///
    /// # Safety
    ///
    /// As for [`init_all`](Self::init_all), across the ranks' processes: every rank of the
    /// communicator issues the same sequence of collectives with equal element counts and
    /// dtypes: for a model, run the same batch sizes on every rank in the same order.
    pub unsafe fn init_rank(
        id: &NcclId,
        world: usize,
        rank: usize,
        ordinal: usize,
    ) -> Result<NcclComm> {
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
        let ctx = CudaContext::new(ordinal).map_err(Error::driver("cuCtxCreate"))?;
        ctx.bind_to_thread()
            .map_err(Error::driver("cuCtxSetCurrent"))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid place for one handle, `id.0` an id from ncclGetUniqueId (or
        // its text read back), and the thread's current context is device `ordinal`'s primary
        // context (bound above). The collectives later issued on the communicator match across
        // ranks, as the caller promises.
        unsafe { nccl::comm_init_rank(&mut raw, nranks, id.0, rank_c) }
            .map_err(|e| nccl_error(CALL, e, None))?;
        let comm = NcclComm {
            raw: Arc::new(RawComm(raw)),
            rank,
            world,
            ordinal,
            _not_sync: PhantomData,
        };
        comm.check_device(CALL)?;
        Ok(comm)
    }

    /// An error unless NCCL bound the communicator to `self.ordinal`.
    fn check_device(&self, call: &'static str) -> Result<()> {
        let mut device: c_int = -1;
        // SAFETY: `self.raw` is a live communicator; NCCL writes one int.
        unsafe { sys::ncclCommCuDevice(self.raw.0, &mut device) }
            .result()
            .map_err(|e| nccl_error("ncclCommCuDevice", e, Some(self.raw.0)))?;
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

    /// [`all_reduce_sum`] on this communicator.
    #[track_caller]
    pub fn all_reduce_sum(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        all_reduce_sum(rt, self, x)
    }
}

/// `y = Σ_ranks x`: an NCCL all-reduce (sum, bf16) of `x` over `comm`'s ranks, into a new tensor,
/// enqueued on the runtime's stream, so that inside a capture it is recorded into the graph
/// (its output comes from the graph pool) and communicates when the graph replays.
///
/// Checks what one rank can: `x` is bf16 (any shape) on `rt`'s device, which is `comm`'s, and
/// its element count is its byte count in bf16. That the other ranks issue the same all-reduce
/// with the same element count, in the same order, is the promise made when `comm` was created
/// ([`NcclComm::init_all`], [`NcclComm::init_rank`]); a rank that breaks it deadlocks or, with a
/// different count, corrupts memory on every rank.
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
    let count = x.numel();
    let bytes = count.checked_mul(DType::BF16.size_in_bytes());
    if bytes != Some(x.size_in_bytes()) {
        return Err(Error::invalid(
            OP,
            format!(
                "{count} bf16 elements do not span the tensor's {} bytes",
                x.size_in_bytes()
            ),
        ));
    }
    let y = rt.alloc(x.shape(), DType::BF16)?;
    if y.size_in_bytes() != x.size_in_bytes() {
        return Err(Error::invalid(
            OP,
            format!(
                "output of {} bytes for an input of {} bytes",
                y.size_in_bytes(),
                x.size_in_bytes()
            ),
        ));
    }
    if count == 0 {
        return Ok(y);
    }
    // The context is only made current on this thread, so that NCCL enqueues onto the
    // runtime's device; the stream only receives this collective, ordered with the runtime's
    // other work (this crate's own use of the raw handles, see `Runtime::stream`).
    rt.raw_context()
        .bind_to_thread()
        .map_err(Error::driver("cuCtxSetCurrent"))?;
    let stream = rt.raw_stream().cu_stream() as sys::cudaStream_t;
    // SAFETY: `x` and `y` are live device allocations of `count` bf16 values (`count * 2`
    // bytes, checked above) on the communicator's device, held by the caller (`x`) and returned
    // (`y`) past the call; the all-reduce runs on the runtime's stream, after the work that
    // wrote `x` and before any later use or stream-ordered free of either. NCCL reads `x` and
    // writes `y` only. The peers' all-reduce of this step has the same count, as promised when
    // `comm` was created (`NcclComm::init_all`, `NcclComm::init_rank`).
    unsafe {
        nccl::all_reduce(
            x.device_ptr() as *const c_void,
            y.device_ptr() as *mut c_void,
            count,
            sys::ncclDataType_t::ncclBfloat16,
            sys::ncclRedOp_t::ncclSum,
            comm.raw.0,
            stream,
        )
    }
    .map_err(|e| nccl_error("ncclAllReduce", e, Some(comm.raw.0)))?;
    // A graph that recorded this all-reduce keeps the communicator until it is destroyed.
    rt.keep_while_recorded(comm.raw.clone());
    Ok(y)
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
        let upper = text.to_uppercase();
        assert_eq!(NcclId::from_hex(&upper).unwrap().to_hex(), text);
        for bad in [
            "",
            "00",
            &text[..254],
            &format!("{}zz", &text[..254]),
            &format!("{}+1", &text[..254]),
            &format!("{text}00"),
            &format!("{} {}", &text[..128], &text[129..]),
        ] {
            assert!(NcclId::from_hex(bad).is_err(), "{bad:?}");
        }
        let multibyte = format!("{}é", &text[..254]);
        assert!(NcclId::from_hex(&multibyte).is_err());
    }

    #[test]
    fn nvls_must_be_zero() {
        assert!(nvls_value_disables(Some("0")).is_ok());
        assert!(nvls_value_disables(Some(" 0\n")).is_ok());
        for bad in [None, Some(""), Some("1"), Some("00x"), Some("off")] {
            let err = nvls_value_disables(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{NVLS_ENV}=0")), "{bad:?}: {err}");
        }
        // Reads the environment only; never loads NCCL.
        match std::env::var(NVLS_ENV).as_deref() {
            Ok(v) if v.trim() == "0" => assert!(check_nvls_disabled().is_ok()),
            _ => assert!(check_nvls_disabled().is_err()),
        }
    }

    /// Argument errors come before any device or NCCL call, so they hold without a GPU.
    #[test]
    fn bad_arguments_are_errors_before_nccl() {
        // SAFETY: both calls fail their argument checks before creating a communicator.
        unsafe {
            assert!(NcclComm::init_all(&[]).is_err());
            let id = NcclId::from_hex(&"00".repeat(128)).unwrap();
            assert!(NcclComm::init_rank(&id, 2, 2, 0).is_err(), "rank 2 of 2");
        }
    }

    #[test]
    fn a_communicator_moves_between_threads() {
        fn send<T: Send>() {}
        send::<NcclComm>();
        send::<NcclId>();
    }

    #[test]
    fn without_nccl_the_library_error_says_how_to_fix_it() {
        if nccl_available() {
            assert!(require_nccl().is_ok());
        } else {
            let err = require_nccl().unwrap_err();
            assert!(matches!(err, Error::MissingLibrary { .. }));
            assert!(err.to_string().contains("libnccl.so"), "{err}");
            assert!(nccl_version().is_err());
        }
    }
}
