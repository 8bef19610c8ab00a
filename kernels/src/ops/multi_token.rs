//! A decode step of `q` tokens per sequence (speculative decoding's verification of a draft,
//! or a multi-token step): rows `b*q .. b*q + q` are consecutive tokens of the sequence in
//! KV-cache slot `b`, at consecutive positions. The keys and values of every row are written
//! first ([`rope_kv_write_multi`]), then each row attends over its slot's positions up to its
//! own ([`attention_multi`]): causal within the `q` tokens, as a prefill chunk is.

use super::attention::{AttentionShape, attention_impl};
use super::cache_rows::CacheRows;
use super::rope::{QkNorm, rope_kv_write_impl};
use crate::{Result, Runtime, Tensor};

/// RoPE and the KV-cache write of `q` tokens per sequence: [`rope_kv_write`](super::rope_kv_write)
/// with row `r` writing slot `r / q` (so the cache needs `rows / q` slots, and the rows are
/// whole sequences). Returns the rotated q rows for [`attention_multi`]. A negative position
/// marks a padded row (nothing written, a zero q row).
#[track_caller]
#[allow(clippy::too_many_arguments)]
pub fn rope_kv_write_multi(
    rt: &Runtime,
    qkv: &Tensor,
    positions: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    cfg: &AttentionShape,
    tokens_per_sequence: usize,
    norm: Option<&QkNorm<'_>>,
) -> Result<Tensor> {
    const OP: &str = "rope_kv_write_multi";
    rt.enter_op(OP);
    rope_kv_write_impl(
        rt,
        OP,
        (qkv, positions),
        (k_cache, v_cache),
        cfg,
        norm,
        CacheRows::Groups(tokens_per_sequence),
    )
}

/// The attention of `q` tokens per sequence, after [`rope_kv_write_multi`] of the same rows
/// (the stream orders the two): row `r` reads slot `r / q` over positions `0..=p` (`p` its
/// position), so the `q` tokens of a sequence see each other causally.
#[track_caller]
pub fn attention_multi(
    rt: &Runtime,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    positions: &Tensor,
    cfg: &AttentionShape,
    tokens_per_sequence: usize,
) -> Result<Tensor> {
    const OP: &str = "attention_multi";
    rt.enter_op(OP);
    attention_impl(
        rt,
        OP,
        q,
        (k_cache, v_cache),
        positions,
        cfg,
        CacheRows::Groups(tokens_per_sequence),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_whole_sequences_of_the_cache() {
        assert_eq!(CacheRows::Groups(4).check("t", 2, 8).unwrap(), (-4, 0));
        assert_eq!(CacheRows::Groups(1).check("t", 8, 8).unwrap(), (-1, 0));
        assert!(
            CacheRows::Groups(4).check("t", 1, 8).is_err(),
            "2 sequences, 1 slot"
        );
        assert!(
            CacheRows::Groups(3).check("t", 8, 8).is_err(),
            "8 rows, not whole"
        );
        assert!(CacheRows::Groups(0).check("t", 8, 8).is_err());
    }
}
