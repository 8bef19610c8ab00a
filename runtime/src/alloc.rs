//! Where a tensor's bytes come from, and what happens when they are dropped.
//!
//! The runtime routes every allocation through one of three modes:
//! - **eager**: the driver's stream-ordered allocator (`cuMemAllocAsync`);
//! - **measure** (a warm-up before a capture): the driver as in eager mode, while an unbounded
//!   [`Arena`] replays the same requests to learn how large a pool chunk the capture needs;
//! - **capture**: blocks of a [`PoolChunk`], placed by a bounded [`Arena`]; no driver call.
//!
//! A driver buffer dropped while a capture is under way is parked, not freed: `cuMemFreeAsync`
//! on memory the graph did not allocate is illegal during capture. Parked buffers are released
//! when the capture (or the [freeze scope](crate::freeze)) ends.
//!
//! While a capture records, every driver buffer whose address a kernel argument takes
//! ([`Tensor::device_ptr`](crate::Tensor::device_ptr)) is noted in [`AllocState::kept`]; the
//! graph then owns a reference to it ([`KeepAlive`]), so nothing a graph reads is freed while
//! the graph can replay. Pool blocks are not noted: the graph holds their whole chunk.

use std::collections::HashSet;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::CudaSlice;

use crate::arena::Arena;
use crate::pool::PoolChunk;

/// The allocation mode of a runtime.
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

#[derive(Debug, Default)]
pub(crate) struct AllocState {
    pub(crate) mode: Mode,
    /// Bumped at every mode change, so a late drop can't free an offset in a newer arena.
    pub(crate) epoch: u64,
    /// Driver buffers dropped during a capture, released when it ends.
    pub(crate) parked: Vec<CudaSlice<u8>>,
    /// Whether a capture is under way (driver buffers dropped now are parked).
    pub(crate) capturing: bool,
    /// Set when a capture-time allocation found the pool chunk full.
    pub(crate) pool_exhausted: bool,
    /// Driver buffers the capture under way read or wrote (see the module docs).
    pub(crate) kept: KeepAlive,
}

/// Buffers a graph reads or writes (and other resources its nodes use, such as an NCCL
/// communicator), owned by the graph so that they outlive it.
#[derive(Default)]
pub(crate) struct KeepAlive {
    buffers: Vec<Arc<Storage>>,
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
    fn note(&mut self, storage: &Arc<Storage>) {
        if self.seen.insert(Arc::as_ptr(storage) as usize) {
            self.buffers.push(storage.clone());
        }
    }
}

/// Allocation state shared by a runtime and every buffer it handed out.
#[derive(Debug, Default)]
pub(crate) struct AllocShared {
    state: Mutex<AllocState>,
    /// Whether a capture records now: read without the lock by every `device_ptr`.
    recording: AtomicBool,
}

impl AllocShared {
    /// Locks the state; a poisoned lock is recovered (the state stays consistent: every update
    /// is a single assignment or push).
    pub(crate) fn lock(&self) -> MutexGuard<'_, AllocState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Switches mode, bumping the epoch; returns the previous mode.
    pub(crate) fn set_mode(&self, mode: Mode) -> Mode {
        let mut state = self.lock();
        state.epoch += 1;
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
    pub(crate) fn keep_while_recorded(&self, resource: Arc<dyn Send + Sync>) {
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
pub(crate) const NO_EPOCH: u64 = u64::MAX;

/// Device bytes behind a tensor.
#[derive(Debug)]
pub(crate) enum Storage {
    /// A driver allocation owned by this storage.
    Driver {
        slice: ManuallyDrop<CudaSlice<u8>>,
        ptr: u64,
        home: Arc<AllocShared>,
        /// `(epoch, offset)` in the measuring arena, when allocated during a warm-up.
        measured: Option<(u64, usize)>,
    },
    /// A block of a graph-pool chunk.
    Pool {
        chunk: Arc<PoolChunk>,
        offset: usize,
        home: Arc<AllocShared>,
        epoch: u64,
    },
}

impl Storage {
    /// A block of `chunk` at `offset`, counted among the chunk's live tensors until dropped.
    /// `epoch` is the allocation epoch whose arena placed it (`NO_EPOCH` for a view of a
    /// graph's output, which no arena frees).
    pub(crate) fn pool(
        chunk: Arc<PoolChunk>,
        offset: usize,
        home: Arc<AllocShared>,
        epoch: u64,
    ) -> Self {
        chunk.tensor_created();
        Storage::Pool {
            chunk,
            offset,
            home,
            epoch,
        }
    }

    /// The device address of the first byte.
    pub(crate) fn device_ptr(&self) -> u64 {
        match self {
            Storage::Driver { ptr, .. } => *ptr,
            Storage::Pool { chunk, offset, .. } => chunk.device_ptr() + *offset as u64,
        }
    }

    /// Whether the bytes live in a graph pool.
    pub(crate) fn is_pool(&self) -> bool {
        matches!(self, Storage::Pool { .. })
    }

    /// The allocation state of the runtime these bytes belong to.
    pub(crate) fn home(&self) -> &Arc<AllocShared> {
        match self {
            Storage::Driver { home, .. } | Storage::Pool { home, .. } => home,
        }
    }

    /// Notes `this` (which is `self`) as used by the capture its runtime records, if any: a
    /// driver buffer, or a block of another chunk than the one the capture allocates from (a
    /// tensor that outlived an earlier capture, an output of another runner). Blocks of the
    /// capture's own chunk are not noted: the graph holds the chunk, and noting them would
    /// keep the capture's arena from reusing them.
    pub(crate) fn note_use(&self, this: &Arc<Storage>) {
        let home = self.home();
        if !home.recording.load(Ordering::Acquire) {
            return;
        }
        let mut state = home.lock();
        if let (Storage::Pool { chunk, .. }, Mode::Capture { chunk: active, .. }) =
            (self, &state.mode)
        {
            if Arc::ptr_eq(chunk, active) {
                return;
            }
        }
        state.kept.note(this);
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        match self {
            Storage::Driver {
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
            Storage::Pool {
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
