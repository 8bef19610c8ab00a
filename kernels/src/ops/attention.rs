//! Attention geometry ([`AttentionShape`]), the KV-cache checks shared with
//! [`rope_kv_write`](super::rope_kv_write), and decode attention.

use crate::{DType, Error, Result, Runtime, Tensor};
use cudagraph_runtime::cudarc::driver::LaunchConfig;

use super::cache_rows::CacheRows;
use super::check;
use super::rope_scaling::RopeScaling;
use crate::ffi::{self, Arg};
use crate::modules::{ATTENTION, names};

/// The largest head dimension the kernels support.
pub const MAX_HEAD_DIM: usize = 256;

/// The longest KV cache (`T`, positions per slot) [`attention_decode`] supports: its scores live
/// in shared memory (`T` floats per block).
pub const MAX_ATTENTION_CONTEXT: usize = 8192;

/// Threads per block of the decode-attention kernels.
pub(super) const ATTENTION_BLOCK: u32 = 256;

// The fused kernel's warps 0, 1 and 2 rotate q, rotate k and copy v side by side.
const _: () = assert!(ATTENTION_BLOCK >= 96 && ATTENTION_BLOCK % 32 == 0);

/// Static shared memory of the attention kernels at most: the reduction scratch (32 floats) and
/// the fused kernel's three bf16 head buffers (`MAX_HEAD_DIM_CU` each).
const ATTENTION_STATIC_SHARED: usize = 32 * 4 + 3 * MAX_HEAD_DIM * 2;

/// Dynamic shared memory a kernel may use without opting in to more.
pub(super) const DEFAULT_SHARED_MEM_LIMIT: usize = 48 * 1024;

/// The geometry of a model's attention (grouped-query aware).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    /// Number of query heads (`hq`).
    pub q_heads: usize,
    /// Number of key/value heads (`hkv`); `q_heads % kv_heads == 0`.
    pub kv_heads: usize,
    /// Dimension of each head (`d`): a multiple of 8, at most [`MAX_HEAD_DIM`].
    pub head_dim: usize,
    /// RoPE base (`theta`, 10000 for Llama 2, 500000 for Llama 3): finite and > 0.
    pub rope_theta: f32,
    /// How RoPE's frequencies are scaled for long contexts ([`RopeScaling::None`]: plain).
    pub rope_scaling: RopeScaling,
}

impl AttentionShape {
    /// Checks the invariants documented on the fields; `op` names the caller in the error.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let Self {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta,
            rope_scaling,
        } = *self;
        if q_heads == 0 || kv_heads == 0 {
            return Err(Error::invalid(
                op,
                format!("q_heads ({q_heads}) and kv_heads ({kv_heads}) must be > 0"),
            ));
        }
        if q_heads % kv_heads != 0 {
            return Err(Error::invalid(
                op,
                format!("q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})"),
            ));
        }
        if head_dim == 0 || head_dim % 8 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(Error::invalid(
                op,
                format!(
                    "head_dim ({head_dim}) must be a multiple of 8 (16-byte loads), > 0 and <= {MAX_HEAD_DIM}"
                ),
            ));
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(Error::invalid(
                op,
                format!("rope_theta ({rope_theta}) must be finite and > 0"),
            ));
        }
        rope_scaling.validate(op)?;
        // The widest row (q, k and v heads together) must fit the kernels' int arithmetic;
        // the q row is narrower, checked too so that `q_width` is `Some` after this.
        let fits = |w: Option<usize>| w.filter(|&w| i32::try_from(w).is_ok()).is_some();
        if !fits(self.qkv_width()) || !fits(self.q_width()) {
            return Err(Error::invalid(
                op,
                format!(
                    "(q_heads {q_heads} + 2 * kv_heads {kv_heads}) * head_dim {head_dim} overflows a 32-bit int"
                ),
            ));
        }
        Ok(())
    }

    /// Width of a fused qkv row: `(q_heads + 2 * kv_heads) * head_dim` (`None` on overflow;
    /// after [`validate`](Self::validate) it is `Some` and fits an `i32`).
    pub fn qkv_width(&self) -> Option<usize> {
        self.kv_heads
            .checked_mul(2)?
            .checked_add(self.q_heads)?
            .checked_mul(self.head_dim)
    }

    /// Width of a query (or attention output) row: `q_heads * head_dim` (`None` on overflow;
    /// after [`validate`](Self::validate) it is `Some` and fits an `i32`).
    pub fn q_width(&self) -> Option<usize> {
        self.q_heads.checked_mul(self.head_dim)
    }

    /// The row widths of a validated shape: `(qkv_width, q_width)`, or an error naming `op`
    /// when either overflows (which [`validate`](Self::validate) rules out).
    pub(crate) fn widths(&self, op: &'static str) -> Result<(usize, usize)> {
        match (self.qkv_width(), self.q_width()) {
            (Some(qkv), Some(q)) => Ok((qkv, q)),
            _ => Err(Error::invalid(
                op,
                format!(
                    "(q_heads {} + 2 * kv_heads {}) * head_dim {} overflows",
                    self.q_heads, self.kv_heads, self.head_dim
                ),
            )),
        }
    }
}

/// Checks a pair of KV caches against `cfg`; returns `(slots, max_t)` of `[slots, max_t,
/// kv_heads, head_dim]`.
pub(crate) fn check_caches(
    rt: &Runtime,
    op: &'static str,
    k_cache: &Tensor,
    v_cache: &Tensor,
    cfg: &AttentionShape,
) -> Result<(usize, usize)> {
    check::tensor(rt, op, "k_cache", k_cache, DType::BF16)?;
    check::tensor(rt, op, "v_cache", v_cache, DType::BF16)?;
    let layout = format!("[slots, max_t, {}, {}]", cfg.kv_heads, cfg.head_dim);
    check::rank(op, "k_cache", k_cache, 4, &layout)?;
    let shape = k_cache.shape();
    if shape[2] != cfg.kv_heads || shape[3] != cfg.head_dim {
        return Err(Error::invalid(
            op,
            format!("`k_cache` must have shape {layout}, got {shape:?}"),
        ));
    }
    if v_cache.shape() != shape {
        return Err(Error::invalid(
            op,
            format!(
                "`v_cache` {:?} must have the shape of `k_cache` {shape:?}",
                v_cache.shape()
            ),
        ));
    }
    if k_cache.device_ptr() == v_cache.device_ptr() {
        return Err(Error::invalid(
            op,
            "`k_cache` and `v_cache` are the same memory",
        ));
    }
    // The attention kernel reads cache rows in 16-byte loads (`head_dim` is a multiple of 8, so
    // every row starts on 16 bytes when the cache does): a view at another offset is refused.
    for (what, cache) in [("k_cache", k_cache), ("v_cache", v_cache)] {
        if cache.device_ptr() % 16 != 0 {
            return Err(Error::invalid(
                op,
                format!("`{what}` must start on a 16-byte boundary (a view at an offset?)"),
            ));
        }
    }
    let (slots, max_t) = (shape[0], shape[1]);
    if slots == 0 || max_t == 0 {
        return Err(Error::invalid(
            op,
            format!("the KV cache is empty (shape {shape:?})"),
        ));
    }
    Ok((slots, max_t))
}

/// Checks `positions`: i32 `[n]`.
pub(crate) fn check_positions(
    rt: &Runtime,
    op: &'static str,
    positions: &Tensor,
    n: usize,
) -> Result<()> {
    check::tensor(rt, op, "positions", positions, DType::I32)?;
    if positions.shape() != [n] {
        return Err(Error::invalid(
            op,
            format!(
                "`positions` must have shape [{n}] (one per row), got {:?}",
                positions.shape()
            ),
        ));
    }
    Ok(())
}

/// Dynamic shared memory of the attention kernel, in bytes:
/// `q_s[head_dim] | scores[max_t] | partial[block * 8]` floats.
pub(super) fn attention_shared_bytes(head_dim: usize, max_t: usize) -> Option<usize> {
    let partial = ATTENTION_BLOCK as usize * 8;
    head_dim
        .checked_add(max_t)?
        .checked_add(partial)?
        .checked_mul(size_of::<f32>())
}

/// The launch of a decode-attention kernel (one block per (q head, row), the scores in dynamic
/// shared memory), after checking that a cache of `max_t` positions fits.
pub(super) fn attention_launch(
    op: &'static str,
    cfg: &AttentionShape,
    n: usize,
    max_t: usize,
) -> Result<LaunchConfig> {
    if max_t > MAX_ATTENTION_CONTEXT {
        return Err(Error::invalid(
            op,
            format!(
                "the KV cache holds {max_t} positions; at most {MAX_ATTENTION_CONTEXT} are supported"
            ),
        ));
    }
    let shared = attention_shared_bytes(cfg.head_dim, max_t)
        .filter(|&bytes| bytes + ATTENTION_STATIC_SHARED <= DEFAULT_SHARED_MEM_LIMIT)
        .and_then(|bytes| u32::try_from(bytes).ok())
        .ok_or_else(|| Error::invalid(op, "the attention scores do not fit in shared memory"))?;
    check::grid_2d(
        op,
        (cfg.q_heads, "q_heads"),
        (n, "batch rows"),
        ATTENTION_BLOCK,
        shared,
    )
}

/// The softmax scale of a decode attention: `1 / sqrt(head_dim)`.
pub(super) fn attention_scale(cfg: &AttentionShape) -> f32 {
    1.0 / (cfg.head_dim as f32).sqrt()
}

/// Decode attention over the KV cache: for row `b` and query head `h` (kv head
/// `h / (q_heads / kv_heads)`), attends over cache positions `0..=pos[b]` of slot `b`
/// (a `pos >= max_t` is clamped to `max_t - 1`), scale `1 / sqrt(head_dim)`, softmax in f32
/// with max subtraction. Everything is accumulated in f32 and rounded once.
///
/// A negative position marks a padded row: nothing is written to the cache (by
/// [`rope_kv_write`](super::rope_kv_write)) and the output row is zero; this op reads no cache
/// for it.
///
/// `q`: bf16 `[n, q_heads * head_dim]`; `k_cache`, `v_cache`: bf16
/// `[slots, max_t, kv_heads, head_dim]` with `slots >= n` and `max_t <=`
/// [`MAX_ATTENTION_CONTEXT`]; `positions`: i32 `[n]`. Returns bf16 `[n, q_heads * head_dim]`.
/// One block of 256 threads per (head, row).
#[track_caller]
pub fn attention_decode(
    rt: &Runtime,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    positions: &Tensor,
    cfg: &AttentionShape,
) -> Result<Tensor> {
    const OP: &str = "attention_decode";
    rt.enter_op(OP);
    attention_impl(
        rt,
        OP,
        q,
        (k_cache, v_cache),
        positions,
        cfg,
        CacheRows::PerRow,
    )
}

/// The body of [`attention_decode`] and of
/// [`attention_prefill`](super::attention_prefill) (`rows` says which slot each row reads).
pub(super) fn attention_impl(
    rt: &Runtime,
    op: &'static str,
    q: &Tensor,
    (k_cache, v_cache): (&Tensor, &Tensor),
    positions: &Tensor,
    cfg: &AttentionShape,
    rows: CacheRows<'_>,
) -> Result<Tensor> {
    cfg.validate(op)?;
    check::tensor(rt, op, "q", q, DType::BF16)?;
    let (_, q_width) = cfg.widths(op)?;
    check::rank(op, "q", q, 2, &format!("[n, {q_width}]"))?;
    let n = q.rows();
    if q.shape()[1] != q_width {
        return Err(Error::invalid(
            op,
            format!(
                "`q` must have shape [n, {q_width}] (q_heads {} * head_dim {}), got {:?}",
                cfg.q_heads,
                cfg.head_dim,
                q.shape()
            ),
        ));
    }
    check::nonempty(op, n)?;
    check_positions(rt, op, positions, n)?;
    let (slots, max_t) = check_caches(rt, op, k_cache, v_cache, cfg)?;
    let (slot, _) = rows.check(op, slots, n)?;
    let launch_cfg = attention_launch(op, cfg, n, max_t)?;
    let scale = attention_scale(cfg);

    let (row_slots, slot_count) = rows.row_slots(slots);
    let func = rt.function(&ATTENTION, names::ATTENTION_DECODE_BF16)?;
    let out = rt.alloc(&[n, q_width], DType::BF16)?;
    ffi::launch(
        rt,
        &func,
        launch_cfg,
        &[
            Arg::Ptr(q.device_ptr()),
            Arg::Ptr(k_cache.device_ptr()),
            Arg::Ptr(v_cache.device_ptr()),
            Arg::Ptr(positions.device_ptr()),
            Arg::Ptr(out.device_ptr()),
            Arg::I32(check::to_i32(op, "n", n)?),
            Arg::I32(check::to_i32(op, "q_heads", cfg.q_heads)?),
            Arg::I32(check::to_i32(op, "kv_heads", cfg.kv_heads)?),
            Arg::I32(check::to_i32(op, "head_dim", cfg.head_dim)?),
            Arg::I32(check::to_i32(op, "max_t", max_t)?),
            Arg::I32(slot),
            Arg::F32(scale),
            Arg::Ptr(row_slots),
            Arg::I32(slot_count),
        ],
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(q_heads: usize, kv_heads: usize, head_dim: usize) -> AttentionShape {
        AttentionShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::None,
        }
    }

    #[test]
    fn shapes_are_validated() {
        assert!(shape(32, 8, 128).validate("t").is_ok());
        assert!(shape(8, 8, 64).validate("t").is_ok());
        assert!(shape(4, 1, 256).validate("t").is_ok());
        assert!(shape(0, 1, 64).validate("t").is_err());
        assert!(shape(4, 0, 64).validate("t").is_err());
        assert!(shape(6, 4, 64).validate("t").is_err());
        assert!(shape(4, 2, 63).validate("t").is_err());
        assert!(shape(4, 2, 0).validate("t").is_err());
        assert!(shape(4, 2, 258).validate("t").is_err());
        assert!(shape(usize::MAX, 1, 2).validate("t").is_err());
        // Wraps in usize: (2^62 + 2 * 2^62) * 8.
        assert!(shape(1 << 62, 1 << 62, 8).validate("t").is_err());
        // Fits usize, not an i32: 2^28 * 8 = 2^31.
        let err = shape(1 << 28, 1 << 28, 8).validate("t").unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
        // The largest q row that fits.
        assert!(shape((1 << 28) - 24, 8, 8).validate("t").is_ok());
        let mut bad_theta = shape(4, 2, 64);
        bad_theta.rope_theta = f32::NAN;
        assert!(bad_theta.validate("t").is_err());
        bad_theta.rope_theta = 0.0;
        assert!(bad_theta.validate("t").is_err());
    }

    #[test]
    fn widths() {
        let s = shape(32, 8, 128);
        assert_eq!(s.qkv_width(), Some((32 + 16) * 128));
        assert_eq!(s.q_width(), Some(32 * 128));
        assert_eq!(s.widths("t").unwrap(), ((32 + 16) * 128, 32 * 128));
        let huge = shape(usize::MAX, 1, 2);
        assert_eq!(huge.q_width(), None);
        assert_eq!(huge.qkv_width(), None);
        let err = huge.widths("t").unwrap_err();
        assert!(err.to_string().contains("overflows"), "{err}");
    }

    #[test]
    fn the_kernels_head_buffers_match_max_head_dim() {
        let source = crate::modules::ATTENTION.source;
        assert!(
            source.contains(&format!("#define MAX_HEAD_DIM_CU {MAX_HEAD_DIM}\n")),
            "attention.cu's MAX_HEAD_DIM_CU must equal MAX_HEAD_DIM ({MAX_HEAD_DIM})"
        );
    }

    #[test]
    fn shared_memory_fits_at_the_limits() {
        let bytes = attention_shared_bytes(MAX_HEAD_DIM, MAX_ATTENTION_CONTEXT).unwrap();
        assert!(
            bytes + ATTENTION_STATIC_SHARED <= DEFAULT_SHARED_MEM_LIMIT,
            "{bytes}"
        );
        assert_eq!(
            attention_shared_bytes(64, 10).unwrap(),
            (64 + 10 + 256 * 8) * 4
        );
        assert_eq!(
            attention_shared_bytes(256, 10).unwrap(),
            (256 + 10 + 256 * 8) * 4
        );
    }
}
