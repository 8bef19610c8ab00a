//! Prefill: the tokens of one sequence's prompt (or a chunk of it) as the rows of one forward.
//!
//! A decode step's row `b` is its own sequence and owns KV-cache slot `b`. A prefill chunk's
//! rows are consecutive tokens of one sequence: all write and read one slot. Its attention is
//! causal by construction: [`rope_kv_write_prefill`] writes every row's key and value at its
//! position first, then [`attention_prefill`] lets the row at position `p` attend over the
//! slot's positions `0..=p` (the chunk's earlier rows and whatever the slot held before it, so a
//! long prompt can be prefilled in chunks). Same kernels as the decode ops, with a slot index.

use crate::{Result, Runtime, Tensor};

use super::attention::{AttentionShape, attention_impl};
use super::cache_rows::{CacheRows, PrefillChunk};
use super::rope::{QkNorm, rope_kv_write_impl};

/// [`rope_kv_write`](super::rope_kv_write) (with `norm`:
/// [`rope_kv_write_qk_norm`](super::rope_kv_write_qk_norm)) for the rows of one prefill chunk:
/// each row's key and value go to `[chunk.slot, pos[row]]`. Returns the rotated q, bf16
/// `[n, q_heads * head_dim]`.
///
/// `qkv`, `positions` and the caches as there, except that the cache needs only
/// `chunk.slot < slots` (any number of rows). A negative position marks a padded row (nothing
/// written, a zero q row); rows with the same position write the same cache row (the last
/// writer is unspecified).
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write_prefill(
    rt: &Runtime,
    qkv: &Tensor,
    positions: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    cfg: &AttentionShape,
    chunk: &PrefillChunk,
    norm: Option<&QkNorm<'_>>,
) -> Result<Tensor> {
    const OP: &str = "rope_kv_write_prefill";
    rt.enter_op(OP);
    rope_kv_write_impl(
        rt,
        OP,
        (qkv, positions),
        (k_cache, v_cache),
        cfg,
        norm,
        CacheRows::Chunk(chunk),
    )
}

/// Causal attention of a prefill chunk: [`attention_decode`](super::attention_decode) with
/// every row reading slot `chunk.slot`, the row at position `p` over the slot's positions
/// `0..=p`. Run it after [`rope_kv_write_prefill`] of the same chunk (the stream orders the
/// two: every key of the chunk is written before any row attends).
///
/// `q`: bf16 `[n, q_heads * head_dim]` (the rotated q that `rope_kv_write_prefill` returned);
/// returns bf16 `[n, q_heads * head_dim]`.
///
/// ```no_run
/// # use cudagraph_kernels::{DType, Runtime};
/// # use cudagraph_kernels::ops::{self, AttentionShape, PrefillChunk, RopeScaling};
/// # fn main() -> cudagraph_runtime::Result<()> {
/// let rt = Runtime::new(0)?;
/// let attn = AttentionShape {
///     q_heads: 4, kv_heads: 2, head_dim: 64, rope_theta: 10_000.0, rope_scaling: RopeScaling::None,
/// };
/// // A 3-token prompt of the sequence in slot 1.
/// let qkv = rt.zeros(&[3, (4 + 2 * 2) * 64], DType::BF16)?;
/// let positions = rt.upload(&[0i32, 1, 2], &[3])?;
/// let (k, v) = (rt.zeros(&[2, 16, 2, 64], DType::BF16)?, rt.zeros(&[2, 16, 2, 64], DType::BF16)?);
/// let chunk = PrefillChunk { slot: 1, seq_len: 3 };
/// let q = ops::rope_kv_write_prefill(&rt, &qkv, &positions, &k, &v, &attn, &chunk, None)?;
/// let ctx = ops::attention_prefill(&rt, &q, &k, &v, &positions, &attn, &chunk)?;
/// assert_eq!(ctx.shape(), [3, 4 * 64]);
/// # Ok(()) }
/// ```
#[track_caller]
pub fn attention_prefill(
    rt: &Runtime,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    positions: &Tensor,
    cfg: &AttentionShape,
    chunk: &PrefillChunk,
) -> Result<Tensor> {
    const OP: &str = "attention_prefill";
    rt.enter_op(OP);
    attention_impl(
        rt,
        OP,
        q,
        (k_cache, v_cache),
        positions,
        cfg,
        CacheRows::Chunk(chunk),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_must_name_a_slot_of_the_cache() {
        let chunk = PrefillChunk {
            slot: 3,
            seq_len: 10,
        };
        assert_eq!(
            CacheRows::Chunk(&chunk).check("t", 4, 100).unwrap(),
            (3, 10)
        );
        assert!(CacheRows::Chunk(&chunk).check("t", 3, 1).is_err());
        let huge = PrefillChunk {
            slot: 0,
            seq_len: usize::MAX,
        };
        assert!(CacheRows::Chunk(&huge).check("t", 1, 1).is_err());
        assert_eq!(CacheRows::PerRow.check("t", 4, 4).unwrap(), (-1, 0));
        assert!(CacheRows::PerRow.check("t", 4, 5).is_err());
    }
}
