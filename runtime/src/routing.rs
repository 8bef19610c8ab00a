//! [`PoolRouter`]: where a pool-mode backend's tensor bytes come from, and what happens when
//! they are dropped. A backend whose capture-time allocations live in a
//! [`GraphPool`](crate::GraphPool) (cudagraph's native `Runtime`) owns one router and asks it
//! for every allocation ([`PoolRouter::allocate`]); the pool-mode capture
//! ([`pool_capture`](crate::pool_capture)) switches its mode. Bytes come back as
//! [`RoutedBytes`], which a tensor type holds behind an `Arc`.
//!
//! A router serves every allocation in one of three modes:
//! - **eager**: the driver's stream-ordered allocator (`cuMemAllocAsync`);
//! - **measure** (a warm-up before a capture): the driver as in eager mode, while an unbounded
//!   [`Arena`] replays the same requests to learn how large a pool chunk the capture needs;
//! - **capture**: blocks of a [`PoolChunk`], placed by a bounded [`Arena`]; no driver call.
//!
//! A driver buffer dropped while a capture is under way is parked, not freed: `cuMemFreeAsync`
//! on memory the graph did not allocate is illegal during capture. Parked buffers are released
//! when the capture (or the [freeze scope](crate::freeze)) ends.
//!
//! While a capture records, every driver buffer whose address a kernel argument takes (the
//! tensor type calls [`RoutedBytes::note_use`] when it hands out an address) is noted; the graph
//! then owns a reference to it ([`KeepAlive`]), so nothing a graph reads is freed while the graph
//! can replay. Pool blocks are not noted: the graph holds their whole chunk.

use std::collections::HashSet;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaSlice, CudaStream};

use crate::arena::Arena;
use crate::error::{Error, Result};
use crate::ffi::{self, DeviceRange};
use crate::pool::PoolChunk;

/// The allocation mode of a router.
#[derive(Debug, Default)]
pub(crate) enum Mode {
    /// Allocate from the driver.
    #[default]
    Eager,
    /// Allocate from the driver and record offsets in an unbounded arena.
    Measure(Arena),
    /// Allocate from a pool chunk.
    Capture {
        /// The chunk serving this capture.
        chunk: Arc<PoolChunk>,
        /// Offsets within the chunk.
        arena: Arena,
    },
}

/// What a router's lock guards.
#[derive(Debug, Default)]
pub(crate) struct RouterState {
    pub(crate) mode: Mode,
    /// Bumped at every mode change, so a late drop can't free an offset in a newer arena.
    pub(crate) epoch: u64,
    /// Driver buffers dropped during a capture, released when it ends.
    pub(crate) parked: Vec<CudaSlice<u8>>,
    /// Whether a capture is under way (driver buffers dropped now are parked).
    pub(crate) capturing: bool,
    /// Set when a capture-time allocation found the pool chunk full.
    pub(crate) pool_exhausted: bool,
    /// An eager island runs between two segments of a capture: allocations come from the
    /// driver (unmeasured), drops free at once, and the device does not count as capturing
    /// (the island may synchronise); the mode and its arena wait for the next segment.
    pub(crate) suspended: bool,
    /// Driver buffers the capture under way read or wrote (see the module docs).
    pub(crate) kept: KeepAlive,
}

/// Buffers a graph reads or writes (and other resources its nodes use, such as an NCCL
/// communicator), owned by the graph so that they outlive it.
#[derive(Default)]
pub struct KeepAlive {
    buffers: Vec<Arc<RoutedBytes>>,
    seen: HashSet<usize>,
    others: Vec<Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive")
            .field("buffers", &self.buffers.len())
            .field("others", &self.others.len())
            .finish()
    }
}

impl KeepAlive {
    /// Adds what `other` keeps (a later segment's buffers, for the same size's graphs).
    pub(crate) fn merge(&mut self, other: KeepAlive) {
        for storage in other.buffers {
            self.note(&storage);
        }
        self.others.extend(other.others);
    }

    fn note(&mut self, storage: &Arc<RoutedBytes>) {
        if self.seen.insert(Arc::as_ptr(storage) as usize) {
            self.buffers.push(storage.clone());
        }
    }
}

/// The allocation state shared by a pool-mode device and every buffer it handed out: see the
/// [module docs](self).
#[derive(Debug, Default)]
pub struct PoolRouter {
    state: Mutex<RouterState>,
    /// Whether a capture records now: read without the lock by every `note_use`.
    recording: AtomicBool,
}

impl PoolRouter {
    /// A router in eager mode, for one device's stream.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `bytes` (at least one byte is allocated) for a tensor of the device whose stream is
    /// `stream`: a block of the pool chunk while a capture records (an
    /// [`Error::PoolExhausted`] when it is full), else a driver allocation
    /// (`cuMemAllocAsync`, measured during a warm-up), filled with `0xFF` bytes when `poison`.
    pub fn allocate(
        self: &Arc<Self>,
        stream: &Arc<CudaStream>,
        bytes: usize,
        poison: bool,
    ) -> Result<RoutedBytes> {
        let mut state = self.lock();
        let epoch = state.epoch;
        if state.suspended {
            drop(state);
            return self.driver_bytes(stream, bytes, poison, None);
        }
        let measured = match &mut state.mode {
            Mode::Capture { chunk, arena } => {
                let available = arena.available_at_top();
                let capacity = arena.capacity().unwrap_or(0);
                let Some(offset) = arena.alloc(bytes) else {
                    state.pool_exhausted = true;
                    return Err(Error::PoolExhausted {
                        requested: bytes,
                        available,
                        capacity,
                    });
                };
                return Ok(RoutedBytes::pool(
                    chunk.clone(),
                    offset,
                    self.clone(),
                    epoch,
                ));
            }
            Mode::Measure(arena) => arena.alloc(bytes).map(|off| (epoch, off)),
            Mode::Eager => None,
        };
        drop(state);
        self.driver_bytes(stream, bytes, poison, measured)
    }

    /// `bytes` from the driver's stream-ordered allocator, `measured` at an offset of a warm-up's
    /// arena (or not).
    fn driver_bytes(
        self: &Arc<Self>,
        stream: &Arc<CudaStream>,
        bytes: usize,
        poison: bool,
        measured: Option<(u64, usize)>,
    ) -> Result<RoutedBytes> {
        // SAFETY: uninitialised bytes; a tensor's contract is that contents are unspecified
        // until written (kernels write every output element).
        let slice = unsafe { stream.alloc::<u8>(bytes.max(1)) }
            .map_err(Error::driver("cuMemAllocAsync"))?;
        let ptr = ffi::slice_ptr(&slice, stream);
        if poison {
            let range = DeviceRange {
                ptr,
                bytes: bytes.max(1),
            };
            ffi::fill_bytes(stream, range, 0xFF).map_err(Error::driver("cuMemsetD8Async"))?;
        }
        Ok(RoutedBytes(Routed::Driver {
            slice: ManuallyDrop::new(slice),
            ptr,
            home: self.clone(),
            measured,
        }))
    }

    /// Bytes at `offset` of `chunk` (a graph's output, rewritten by every replay), counted among
    /// the chunk's live tensors while they exist; no arena frees them.
    pub fn output_bytes(self: &Arc<Self>, chunk: Arc<PoolChunk>, offset: usize) -> RoutedBytes {
        RoutedBytes::pool(chunk, offset, self.clone(), NO_EPOCH)
    }

    /// Whether a capture is recording now (allocations come from a pool chunk): false while an
    /// eager island runs between two of its segments.
    pub fn is_capturing(&self) -> bool {
        let state = self.lock();
        matches!(state.mode, Mode::Capture { .. }) && !state.suspended
    }

    /// Whether allocations are eager now (no warm-up or capture under way, not even suspended
    /// for an island).
    pub(crate) fn is_eager(&self) -> bool {
        matches!(self.lock().mode, Mode::Eager)
    }

    /// Suspends (`true`) or resumes (`false`) a capture for an eager island between two of its
    /// segments (see [`RouterState::suspended`]): drops are parked only while not suspended.
    pub(crate) fn set_suspended(&self, on: bool) {
        let mut state = self.lock();
        state.suspended = on;
        state.capturing = !on && matches!(state.mode, Mode::Capture { .. });
    }

    /// Locks the state; a poisoned lock is recovered (the state stays consistent: every update
    /// is a single assignment or push).
    pub(crate) fn lock(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Switches mode, bumping the epoch (and ending any suspension); returns the previous mode.
    pub(crate) fn set_mode(&self, mode: Mode) -> Mode {
        let mut state = self.lock();
        state.epoch += 1;
        state.suspended = false;
        std::mem::replace(&mut state.mode, mode)
    }

    /// Takes the parked buffers (dropping them frees them; do that outside capture).
    pub(crate) fn take_parked(&self) -> Vec<CudaSlice<u8>> {
        std::mem::take(&mut self.lock().parked)
    }

    /// Starts or stops noting the buffers kernels use (see the module docs).
    pub(crate) fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Release);
    }

    /// Keeps `resource` alive as long as the graph being recorded, if one is (an NCCL
    /// communicator whose collective the graph recorded, say).
    pub fn keep_while_recorded(&self, resource: Arc<dyn Send + Sync>) {
        if self.recording.load(Ordering::Acquire) {
            self.lock().kept.others.push(resource);
        }
    }

    /// The buffers noted since recording started, for the graph to own.
    pub(crate) fn take_kept(&self) -> KeepAlive {
        std::mem::take(&mut self.lock().kept)
    }
}

/// The epoch of pool storages no arena placed (views of a graph's output): never current.
const NO_EPOCH: u64 = u64::MAX;

/// Device bytes behind a tensor, from [`PoolRouter::allocate`]: a driver allocation, or a block
/// of a graph-pool chunk. Dropping them frees the driver allocation (parked while a capture is
/// under way) or gives the block back to the arena that placed it.
#[derive(Debug)]
pub struct RoutedBytes(Routed);

/// What [`RoutedBytes`] hold.
#[derive(Debug)]
enum Routed {
    /// A driver allocation owned by these bytes.
    Driver {
        slice: ManuallyDrop<CudaSlice<u8>>,
        ptr: u64,
        home: Arc<PoolRouter>,
        /// `(epoch, offset)` in the measuring arena, when allocated during a warm-up.
        measured: Option<(u64, usize)>,
    },
    /// A block of a graph-pool chunk.
    Pool {
        chunk: Arc<PoolChunk>,
        offset: usize,
        home: Arc<PoolRouter>,
        epoch: u64,
    },
}

impl RoutedBytes {
    /// A block of `chunk` at `offset`, counted among the chunk's live tensors until dropped.
    /// `epoch` is the allocation epoch whose arena placed it (`NO_EPOCH` for a view of a
    /// graph's output, which no arena frees).
    fn pool(chunk: Arc<PoolChunk>, offset: usize, home: Arc<PoolRouter>, epoch: u64) -> Self {
        chunk.tensor_created();
        RoutedBytes(Routed::Pool {
            chunk,
            offset,
            home,
            epoch,
        })
    }

    /// The device address of the first byte (not noted for a capture: see
    /// [`note_use`](Self::note_use)).
    pub fn device_ptr(&self) -> u64 {
        match &self.0 {
            Routed::Driver { ptr, .. } => *ptr,
            Routed::Pool { chunk, offset, .. } => chunk.device_ptr() + *offset as u64,
        }
    }

    /// Whether the bytes live in a graph pool.
    pub fn is_pool(&self) -> bool {
        matches!(self.0, Routed::Pool { .. })
    }

    /// The router these bytes came from (whose device's stream orders them).
    pub fn router(&self) -> &Arc<PoolRouter> {
        match &self.0 {
            Routed::Driver { home, .. } | Routed::Pool { home, .. } => home,
        }
    }

    /// The chunk and byte offset, for a block of a graph-pool chunk.
    pub fn pool_location(&self) -> Option<(Arc<PoolChunk>, usize)> {
        match &self.0 {
            Routed::Pool { chunk, offset, .. } => Some((chunk.clone(), *offset)),
            Routed::Driver { .. } => None,
        }
    }

    /// Notes these bytes as used by the capture their router's device records, if any: a
    /// driver buffer, or a block of another chunk than the one the capture allocates from (a
    /// tensor that outlived an earlier capture, an output of another runner). The graph then
    /// keeps them alive. Blocks of the capture's own chunk are not noted: the graph holds the
    /// chunk, and noting them would keep the capture's arena from reusing them. A tensor type
    /// calls this whenever it hands out its address for a kernel argument.
    pub fn note_use(self: &Arc<Self>) {
        let this = self;
        let home = self.router();
        if !home.recording.load(Ordering::Acquire) {
            return;
        }
        let mut state = home.lock();
        if let (Routed::Pool { chunk, .. }, Mode::Capture { chunk: active, .. }) =
            (&self.0, &state.mode)
        {
            if Arc::ptr_eq(chunk, active) {
                return;
            }
        }
        state.kept.note(this);
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        match self {
            Routed::Driver {
                slice,
                home,
                measured,
                ..
            } => {
                let mut state = home.lock();
                let current = state.epoch;
                if let (Some((epoch, offset)), Mode::Measure(arena)) = (*measured, &mut state.mode)
                {
                    if epoch == current {
                        arena.free(offset);
                    }
                }
                // SAFETY: `slice` is taken exactly once, here in drop, and never used after.
                let slice = unsafe { ManuallyDrop::take(slice) };
                if state.capturing {
                    state.parked.push(slice);
                } else {
                    // Freed under the lock: a capture can't begin between the check above and
                    // the free (a tensor may be dropped on another thread than its runtime's).
                    drop(slice);
                    drop(state);
                }
            }
            Routed::Pool {
                offset,
                home,
                epoch,
                chunk,
            } => {
                chunk.tensor_dropped();
                let mut state = home.lock();
                let current = state.epoch;
                if let Mode::Capture {
                    chunk: active,
                    arena,
                } = &mut state.mode
                {
                    if current == *epoch && Arc::ptr_eq(active, chunk) {
                        arena.free(*offset);
                    }
                }
            }
        }
    }
}
