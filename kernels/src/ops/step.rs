//! A step of mixed sequences: one token per row, each row with its own KV-cache slot and
//! position, read by the kernels from device memory ([`StepRows`]): the decode tokens of many
//! sequences and chunks of waiting prompts side by side, as a continuous-batching scheduler
//! packs them. One graph per row count serves any mix, because no per-call host value reaches
//! a kernel.
//!
//! [`rope_kv_write_step`] writes every row's key and value first; then [`attention_step`] lets
//! each row attend over its slot up to its position: the rows marked alone (decode tokens)
//! through the decode kernel, the rows of each tile (a run of up to
//! [`STEP_TILE_ROWS`](super::STEP_TILE_ROWS) rows of one prompt chunk) through a tiled causal
//! kernel that reads the slot's keys once per tile rather than once per row.

use crate::ffi::{self, Arg};
use crate::modules::{ATTENTION, names};
use crate::{DType, Error, Result, Runtime, Tensor};

use super::attention::{AttentionShape, attention_impl, attention_scale};
use super::cache_rows::{CacheRows, STEP_TILE_ROWS, StepRows};
use super::check;
use super::rope::{QkNorm, rope_kv_write_impl};

/// Keys per chunk of the tiled kernel (`TILE_KEYS` in `cu/attention.cu`).
const TILE_KEYS: usize = 32;
/// Threads per block of the tiled kernel (`TILE_WARPS * 32`).
const TILE_THREADS: u32 = 128;
const _: () = assert!(STEP_TILE_ROWS == 8, "TILE_ROWS in cu/attention.cu");

/// RoPE and the KV-cache write of a step's rows: row `r` writes its key and value at
/// `[slots[r, 0], positions[r]]`. Returns the rotated q, bf16 `[n, q_heads * head_dim]`, for
/// [`attention_step`]. A negative position or a slot outside the cache marks a padded row
/// (nothing written, a zero q row).
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write_step(
    rt: &Runtime,
    qkv: &Tensor,
    positions: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    cfg: &AttentionShape,
    rows: &StepRows<'_>,
    norm: Option<&QkNorm<'_>>,
) -> Result<Tensor> {
    const OP: &str = "rope_kv_write_step";
    rt.enter_op(OP);
    check_tables(rt, OP, rows)?;
    rope_kv_write_impl(
        rt,
        OP,
        (qkv, positions),
        (k_cache, v_cache),
        cfg,
        norm,
        CacheRows::Step(*rows),
    )
}

/// The attention of a step's rows, after [`rope_kv_write_step`] of the same rows (the stream
/// orders them): row `r` attends over its slot's positions `0..=positions[r]`. Rows marked
/// alone run the decode kernel; the rows of each tile run the tiled causal kernel. Returns
/// bf16 `[n, q_heads * head_dim]`; padded rows are zeros.
#[track_caller]
pub fn attention_step(
    rt: &Runtime,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    positions: &Tensor,
    cfg: &AttentionShape,
    rows: &StepRows<'_>,
) -> Result<Tensor> {
    const OP: &str = "attention_step";
    rt.enter_op(OP);
    check_tables(rt, OP, rows)?;
    // Checks q, positions, the caches and the tables' shapes, and writes the rows alone.
    let out = attention_impl(
        rt,
        OP,
        q,
        (k_cache, v_cache),
        positions,
        cfg,
        CacheRows::Step(*rows),
    )?;
    let n = q.rows();
    let (slots, max_t) = (k_cache.shape()[0], k_cache.shape()[1]);
    let shared = tile_shared_bytes(cfg.head_dim)
        .and_then(|b| u32::try_from(b).ok())
        .ok_or_else(|| Error::invalid(OP, "the tiles do not fit in shared memory"))?;
    let launch = check::grid_2d(
        OP,
        (cfg.q_heads, "q_heads"),
        (n, "step rows"),
        TILE_THREADS,
        shared,
    )?;
    let func = rt.function(&ATTENTION, names::ATTENTION_TILES_BF16)?;
    ffi::launch(
        rt,
        &func,
        launch,
        &[
            Arg::Ptr(q.device_ptr()),
            Arg::Ptr(k_cache.device_ptr()),
            Arg::Ptr(v_cache.device_ptr()),
            Arg::Ptr(positions.device_ptr()),
            Arg::Ptr(rows.slots.device_ptr()),
            Arg::Ptr(rows.tiles.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::I32(check::to_i32(OP, "n", n)?),
            Arg::I32(check::to_i32(OP, "q_heads", cfg.q_heads)?),
            Arg::I32(check::to_i32(OP, "kv_heads", cfg.kv_heads)?),
            Arg::I32(check::to_i32(OP, "head_dim", cfg.head_dim)?),
            Arg::I32(check::to_i32(OP, "max_t", max_t)?),
            Arg::I32(check::to_i32(OP, "slots", slots)?),
            Arg::F32(attention_scale(cfg)),
        ],
    )?;
    Ok(out)
}

/// The tiled kernel's dynamic shared memory: keys (rows padded by 8), values and the tile's
/// queries in f32; at most 48 KiB for any head dimension up to 256.
fn tile_shared_bytes(head_dim: usize) -> Option<usize> {
    let keys = TILE_KEYS
        .checked_mul(head_dim.checked_add(8)?)?
        .checked_mul(2)?;
    let values = TILE_KEYS.checked_mul(head_dim)?.checked_mul(2)?;
    let queries = STEP_TILE_ROWS.checked_mul(head_dim)?.checked_mul(4)?;
    let total = keys.checked_add(values)?.checked_add(queries)?;
    (total <= 48 * 1024).then_some(total)
}

/// The tables are i32 tensors of this runtime (shapes are checked against the rows later).
fn check_tables(rt: &Runtime, op: &'static str, rows: &StepRows<'_>) -> Result<()> {
    check::tensor(rt, op, "slots", rows.slots, DType::I32)?;
    check::tensor(rt, op, "tiles", rows.tiles, DType::I32)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_shared_memory_for_every_head_dim() {
        for head_dim in (8..=super::super::MAX_HEAD_DIM).step_by(8) {
            assert!(
                tile_shared_bytes(head_dim).is_some(),
                "head_dim {head_dim} must fit"
            );
        }
        assert_eq!(
            tile_shared_bytes(128),
            Some(32 * 136 * 2 + 32 * 128 * 2 + 8 * 128 * 4)
        );
    }
}
