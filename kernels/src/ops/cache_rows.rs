//! Which KV-cache slot each row of a forward uses: its own (a decode step, [`CacheRows::PerRow`]),
//! one slot for every row (a prefill chunk, [`PrefillChunk`]), or a slot read per row from
//! device memory (a step of mixed sequences, [`StepRows`]), and the checks they make.

use crate::{Error, Result, Tensor};

/// The per-row tables of a step of mixed sequences (one token per row; decode tokens and
/// prompt chunks of different sequences side by side), read by the kernels from device memory
/// so that one graph per row count serves any mix:
///
/// * `slots`: i32 `[n, 2]`, row `r`'s KV-cache slot and `1` when it attends alone (a decode
///   token: the decode kernel), anything else when a tile of `tiles` covers it (a prompt
///   chunk's row). A slot outside the cache makes the row a padded one (no write, zeros).
/// * `tiles`: i32 `[n, 2]`, entry `t` = (first row, rows) of a run of at most
///   [`STEP_TILE_ROWS`] rows of one sequence at increasing positions; rows `0`: no tile `t`.
///
/// Nothing is read or written outside the cache whatever the tables hold; rows the tables
/// describe inconsistently get zeros or a wrong attention, never undefined behaviour.
#[derive(Debug, Clone, Copy)]
pub struct StepRows<'a> {
    /// i32 `[n, 2]`: (slot, alone) per row.
    pub slots: &'a Tensor,
    /// i32 `[n, 2]`: (first row, rows) per tile.
    pub tiles: &'a Tensor,
}

/// The most rows of one tile of [`StepRows::tiles`] (`TILE_ROWS` in `cu/attention.cu`); a
/// tile's count above it is clamped by the kernel.
pub const STEP_TILE_ROWS: usize = 8;

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
    /// Row `b` uses the slot its [`StepRows::slots`] entry names (checked by the kernels).
    Step(StepRows<'a>),
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
            CacheRows::Step(rows) => {
                for (what, t) in [("slots", rows.slots), ("tiles", rows.tiles)] {
                    if t.shape() != [n, 2] {
                        return Err(Error::invalid(
                            op,
                            format!(
                                "`{what}` must have shape [{n}, 2] (two per row), got {:?}",
                                t.shape()
                            ),
                        ));
                    }
                }
                // The kernels bound each row's slot by the cache's slot count.
                i32::try_from(slots).map_err(|_| {
                    Error::invalid(op, format!("{slots} cache slots do not fit a 32-bit int"))
                })?;
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

impl CacheRows<'_> {
    /// The kernels' `row_slots` and `slots` arguments: the step's slot table and the cache's
    /// slot count, or a null pointer (the `slot` argument decides). Call after
    /// [`check`](Self::check), which bounded `slots`.
    pub(crate) fn row_slots(&self, slots: usize) -> (u64, i32) {
        match self {
            CacheRows::Step(rows) => (rows.slots.device_ptr(), i32::try_from(slots).unwrap_or(0)),
            _ => (0, 0),
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
