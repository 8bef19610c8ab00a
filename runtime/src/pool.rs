//! The graph pool: device memory that capture-time tensors live in, shared by every graph of a
//! runner.
//!
//! Graphs of one runner replay one at a time on one stream, so each graph may use the whole pool
//! for its intermediates and its output: the pool holds about what the largest graph needs, not
//! the sum over sizes. Sizes are captured largest first, so one chunk usually serves them all; a
//! graph that needs more than every chunk (a forward whose memory is not monotone in the batch)
//! gets a chunk of its own. Reading a graph's output after another graph replayed is what
//! [`Output`](crate::Output)'s borrow of the runner forbids.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::CudaStream;

use crate::error::{Error, Result};
use crate::ffi::VirtualMemory;

/// One contiguous range of device memory of the pool: reserved virtual addresses with physical
/// memory mapped in, so a release (`Runner::release_memory`) can give the physical memory back while the
/// addresses the graphs point to stay valid for the resume (`Runner::resume`).
#[derive(Debug)]
pub struct PoolChunk {
    memory: Mutex<VirtualMemory>,
    ptr: u64,
    len: usize,
    /// Tensors alive in the chunk (allocated by a capture, or a view of a graph's output).
    live: AtomicUsize,
}

impl PoolChunk {
    fn new(stream: &Arc<CudaStream>, bytes: usize) -> Result<Self> {
        let memory = VirtualMemory::new(stream, bytes)
            .map_err(Error::driver("pool chunk (cuMemCreate/cuMemMap)"))?;
        Ok(Self {
            ptr: memory.device_ptr(),
            len: memory.len(),
            memory: Mutex::new(memory),
            live: AtomicUsize::new(0),
        })
    }

    pub(crate) fn tensor_created(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn tensor_dropped(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }

    /// Tensors alive in the chunk now: a capture's tensors that outlived it, or an output.
    pub fn live_tensors(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, VirtualMemory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk's device address (fixed for its life, across release and resume).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The chunk's size in bytes (a multiple of the driver's allocation granularity).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the chunk holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether physical memory is mapped (false after a release).
    pub fn is_resident(&self) -> bool {
        self.memory().is_mapped()
    }
}

/// Device memory shared by the graphs of a runner.
#[derive(Debug, Default)]
pub struct GraphPool {
    chunks: Vec<Arc<PoolChunk>>,
}

impl GraphPool {
    /// An empty pool; chunks are allocated as captures need them.
    pub fn new() -> Self {
        Self::default()
    }

    /// The smallest existing chunk of at least `need` bytes, or a new one of exactly `need`.
    ///
    /// Must be called outside capture: a new chunk is a driver allocation.
    pub(crate) fn chunk_for(
        &mut self,
        stream: &Arc<CudaStream>,
        need: usize,
    ) -> Result<Arc<PoolChunk>> {
        if let Some(chunk) = self
            .chunks
            .iter()
            .filter(|c| c.len() >= need)
            .min_by_key(|c| c.len())
        {
            return Ok(chunk.clone());
        }
        let chunk = Arc::new(PoolChunk::new(stream, need.max(crate::arena::ALIGNMENT))?);
        self.chunks.push(chunk.clone());
        Ok(chunk)
    }

    /// Drops the pool's reference to `chunk` (its memory lives as long as other references:
    /// a tensor that escaped a capture there, and graphs the runner drops next).
    pub fn forget(&mut self, chunk: &Arc<PoolChunk>) {
        self.chunks.retain(|c| !Arc::ptr_eq(c, chunk));
    }

    /// Whether `chunk` is still one of the pool's (not forgotten).
    pub fn holds(&self, chunk: &Arc<PoolChunk>) -> bool {
        self.chunks.iter().any(|c| Arc::ptr_eq(c, chunk))
    }

    /// The largest chunk, if any.
    pub(crate) fn largest_chunk(&self) -> Option<Arc<PoolChunk>> {
        self.chunks.iter().max_by_key(|c| c.len()).cloned()
    }

    /// Bytes of device memory the pool holds.
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Unmaps every chunk's physical memory, giving it back to the driver; addresses stay
    /// reserved. Each chunk first waits for the stream that uses it (so queued replays finish);
    /// the caller must not replay until [`resume`](Self::resume).
    pub fn release(&self) -> Result<()> {
        for chunk in &self.chunks {
            chunk
                .memory()
                .unmap()
                .map_err(Error::driver("cuMemUnmap/cuMemRelease"))?;
        }
        Ok(())
    }

    /// Maps fresh physical memory back at the same addresses (contents undefined: graphs
    /// rewrite every intermediate and output on their next replay).
    pub fn resume(&self) -> Result<()> {
        for chunk in &self.chunks {
            chunk
                .memory()
                .map()
                .map_err(Error::driver("cuMemCreate/cuMemMap"))?;
        }
        Ok(())
    }

    /// Whether every chunk is mapped.
    pub fn is_resident(&self) -> bool {
        self.chunks.iter().all(|c| c.is_resident())
    }

    /// Tensors alive in any chunk (see [`PoolChunk::live_tensors`]).
    pub fn live_tensors(&self) -> usize {
        self.chunks.iter().map(|c| c.live_tensors()).sum()
    }
}

impl GraphPool {
    /// Fills every chunk with `0xFF` bytes, ordered on `stream` (test aid; see
    /// `Runner::poison_pool`).
    pub fn poison(&self, stream: &CudaStream) -> Result<()> {
        for chunk in &self.chunks {
            crate::ffi::fill_bytes(
                stream,
                crate::ffi::DeviceRange {
                    ptr: chunk.device_ptr(),
                    bytes: chunk.len(),
                },
                0xFF,
            )
            .map_err(Error::driver("cuMemsetD8Async"))?;
        }
        Ok(())
    }
}
