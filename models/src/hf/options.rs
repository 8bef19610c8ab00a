//! [`LoadOptions`]: what a checkpoint does not fix, the KV cache's size.

/// How to size what the checkpoint does not fix: the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// KV-cache slots: the largest batch the model serves. Every graph of
    /// [`Llama::forward_graphs`](crate::llama::Llama::forward_graphs) writes slots `0..size`, so capturing needs 256 (the largest
    /// captured size).
    pub cache_slots: usize,
    /// Positions per slot: the longest sequence (prompt and generated tokens). A
    /// `sliding_window` shorter than this is rejected.
    pub cache_tokens: usize,
}

impl Default for LoadOptions {
    /// 256 slots of 128 positions.
    fn default() -> Self {
        Self {
            cache_slots: 256,
            cache_tokens: 128,
        }
    }
}
