//! Which KV-cache slot each row of a forward uses: its own (a decode step, [`CacheRows::PerRow`])
//! or one slot for every row (a prefill chunk, [`PrefillChunk`]), and the checks both make.

use crate::{Error, Result};

/// Where a prefill chunk goes: the KV-cache slot of its sequence, and the sequence's length
/// once the chunk is in (for a dynamic RoPE scaling, which transformers computes from the
/// longest position of a forward: [`RopeScaling::Dynamic`](super::RopeScaling::Dynamic)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillChunk {
    /// The sequence's KV-cache slot (`< slots`).
    pub slot: usize,
    /// The sequence's length after this chunk: its last position + 1 (a whole prompt: the
    /// prompt's length).
    pub seq_len: usize,
}

/// Which KV-cache slot each row of a forward uses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CacheRows<'a> {
    /// Row `b` uses slot `b` (a decode step of `n` sequences).
    PerRow,
    /// Every row uses the chunk's slot.
    Chunk(&'a PrefillChunk),
    /// Row `b` uses slot `b / q`: `q` tokens of each sequence in consecutive rows (a draft to
    /// verify, or a multi-token decode step).
    Groups(usize),
}

impl CacheRows<'_> {
    /// Checks the rows against a cache of `slots` slots; returns the kernels' `slot` (-1: per
    /// row) and `min_len` (0 in a decode step) arguments.
    pub(crate) fn check(&self, op: &'static str, slots: usize, n: usize) -> Result<(i32, i32)> {
        match self {
            CacheRows::PerRow => {
                check_slots(op, slots, n)?;
                Ok((-1, 0))
            }
            CacheRows::Groups(q) => {
                let q32 = i32::try_from(*q).ok().filter(|&q| q >= 1).ok_or_else(|| {
                    Error::invalid(
                        op,
                        format!("{q} tokens per sequence: at least 1, at most i32::MAX"),
                    )
                })?;
                if n % q != 0 {
                    return Err(Error::invalid(
                        op,
                        format!("{n} rows are not whole sequences of {q} tokens"),
                    ));
                }
                if slots < n / q {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "the KV cache has {slots} slots for {} sequences of {q} tokens (rows b*{q}.. use slot b)",
                            n / q
                        ),
                    ));
                }
                Ok((-q32, 0))
            }
            CacheRows::Chunk(chunk) => {
                if chunk.slot >= slots {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "prefill slot {} is outside the KV cache's {slots} slots",
                            chunk.slot
                        ),
                    ));
                }
                let seq_len = i32::try_from(chunk.seq_len).map_err(|_| {
                    Error::invalid(
                        op,
                        format!("seq_len {} does not fit a 32-bit int", chunk.seq_len),
                    )
                })?;
                let slot = i32::try_from(chunk.slot).map_err(|_| {
                    Error::invalid(op, format!("slot {} does not fit a 32-bit int", chunk.slot))
                })?;
                Ok((slot, seq_len))
            }
        }
    }
}

/// Checks that the cache has a slot for each of the `n` rows.
pub(crate) fn check_slots(op: &'static str, slots: usize, n: usize) -> Result<()> {
    if slots < n {
        return Err(Error::invalid(
            op,
            format!("the KV cache has {slots} slots for a batch of {n} rows (row b uses slot b)"),
        ));
    }
    Ok(())
}
