//! Offset bookkeeping of one graph's allocations inside a pool chunk: pure logic, no CUDA.
//!
//! During capture, the tensors a forward allocates are served from a chunk of the graph pool.
//! Blocks freed during the capture are reused by later allocations of the same capture: on one
//! stream the captured kernels run in order, so a kernel writing a reused block runs after every
//! kernel that read its previous tenant. The same [`Arena`], run without a capacity over the
//! warm-up's allocations, measures how large a chunk the capture will need (its high-water mark):
//! the same sequence of requests gives the same offsets.

use std::collections::BTreeMap;

/// Every block starts on this boundary (bytes), enough for any vector load.
pub const ALIGNMENT: usize = 256;

/// Rounds `bytes` up to [`ALIGNMENT`]; zero-byte requests take one aligned unit so that every
/// block has a distinct offset.
pub fn aligned(bytes: usize) -> usize {
    bytes.max(1).div_ceil(ALIGNMENT) * ALIGNMENT
}

/// A best-fit allocator of byte offsets, with coalescing of freed neighbours.
#[derive(Debug, Clone, Default)]
pub struct Arena {
    /// `None`: unbounded (measuring); `Some(c)`: offsets must stay below `c`.
    capacity: Option<usize>,
    /// End of the highest block ever handed out and not returned to the top.
    top: usize,
    /// The largest `top` seen: the bytes a chunk must have to replay this sequence.
    high_water: usize,
    /// Free blocks below `top`: offset -> size.
    free: BTreeMap<usize, usize>,
    /// Live blocks: offset -> size.
    live: BTreeMap<usize, usize>,
}

impl Arena {
    /// An arena that grows without bound; use it to measure a sequence's high-water mark.
    pub fn unbounded() -> Self {
        Self::default()
    }

    /// An arena limited to `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: Some(capacity),
            ..Self::default()
        }
    }

    /// Hands out an aligned block of at least `bytes`; `None` when a bounded arena is full.
    pub fn alloc(&mut self, bytes: usize) -> Option<usize> {
        let size = aligned(bytes);
        let best = self
            .free
            .iter()
            .filter(|&(_, &free_size)| free_size >= size)
            .min_by_key(|&(&offset, &free_size)| (free_size, offset))
            .map(|(&offset, &free_size)| (offset, free_size));
        let offset = match best {
            Some((offset, free_size)) => {
                self.free.remove(&offset);
                if free_size > size {
                    self.free.insert(offset + size, free_size - size);
                }
                offset
            }
            None => {
                let offset = self.top;
                let end = offset.checked_add(size)?;
                if self.capacity.is_some_and(|cap| end > cap) {
                    return None;
                }
                self.top = end;
                self.high_water = self.high_water.max(end);
                offset
            }
        };
        self.live.insert(offset, size);
        Some(offset)
    }

    /// Returns a block; unknown offsets are ignored (returns `false`).
    pub fn free(&mut self, offset: usize) -> bool {
        let Some(mut size) = self.live.remove(&offset) else {
            return false;
        };
        let mut start = offset;
        // Merge with the free block just before.
        if let Some((&prev, &prev_size)) = self.free.range(..start).next_back() {
            if prev + prev_size == start {
                self.free.remove(&prev);
                start = prev;
                size += prev_size;
            }
        }
        // Merge with the free block just after.
        if let Some(&next_size) = self.free.get(&(start + size)) {
            self.free.remove(&(start + size));
            size += next_size;
        }
        if start + size == self.top {
            self.top = start;
        } else {
            self.free.insert(start, size);
        }
        true
    }

    /// Bytes a chunk needs to serve the sequence seen so far.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// Bytes in live blocks.
    pub fn live_bytes(&self) -> usize {
        self.live.values().sum()
    }

    /// The capacity, if bounded.
    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    /// Bytes that can still be handed out at the top (bounded arenas).
    pub fn available_at_top(&self) -> usize {
        self.capacity.map_or(usize::MAX, |c| c - self.top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reuses_freed_blocks() {
        let mut arena = Arena::unbounded();
        let a = arena.alloc(1000).unwrap();
        let b = arena.alloc(1000).unwrap();
        assert!(arena.free(a));
        let c = arena.alloc(500).unwrap();
        assert_eq!(c, a, "best fit reuses the freed block");
        assert_eq!(arena.high_water(), 2 * aligned(1000));
        assert!(arena.free(b) && arena.free(c));
        assert_eq!(arena.live_bytes(), 0);
    }

    #[test]
    fn bounded_arena_refuses_past_capacity() {
        let mut arena = Arena::with_capacity(1024);
        assert!(arena.alloc(1024).is_some());
        assert!(arena.alloc(1).is_none());
    }

    #[test]
    fn unknown_free_is_ignored() {
        let mut arena = Arena::unbounded();
        assert!(!arena.free(12345));
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        Alloc(usize),
        Free(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (1usize..100_000).prop_map(Step::Alloc),
                (0usize..64).prop_map(Step::Free),
            ],
            0..200,
        )
    }

    proptest! {
        /// Live blocks never overlap, and replaying the same sequence in a bounded arena of the
        /// measured high-water mark gives the same offsets (what capture relies on).
        #[test]
        fn measured_high_water_replays_exactly(seq in steps()) {
            let mut measure = Arena::unbounded();
            let mut live: Vec<(usize, usize)> = Vec::new();
            let mut offsets = Vec::new();
            for step in &seq {
                match *step {
                    Step::Alloc(bytes) => {
                        let off = measure.alloc(bytes).unwrap();
                        let size = aligned(bytes);
                        for &(o, s) in &live {
                            prop_assert!(off + size <= o || o + s <= off, "overlap");
                        }
                        live.push((off, size));
                        offsets.push(Some(off));
                    }
                    Step::Free(i) => {
                        if !live.is_empty() {
                            let (off, _) = live.remove(i % live.len());
                            prop_assert!(measure.free(off));
                            offsets.push(Some(off));
                        } else {
                            offsets.push(None);
                        }
                    }
                }
            }
            let mut replay = Arena::with_capacity(measure.high_water());
            for (step, expected) in seq.iter().zip(&offsets) {
                match (*step, expected) {
                    (Step::Alloc(bytes), Some(off)) => prop_assert_eq!(replay.alloc(bytes), Some(*off)),
                    (Step::Free(_), Some(off)) => prop_assert!(replay.free(*off)),
                    _ => {}
                }
            }
        }
    }
}
