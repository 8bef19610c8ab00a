//! Every kernel against its host reference, on fresh random inputs, with outputs poisoned.

use cudagraph::kernels::modules::ALL_MODULES;
use cudagraph::kernels::reference as r;
use cudagraph::ops::{self, AttentionShape, QkNorm};
use cudagraph::{DType, GemmBackend, Result, Runtime, Tensor};
use half::bf16;

use crate::common::{Rng, assert_close, download_f32, fresh_seed, gpu, upload_bf16};

/// Float32 reference vs a bf16 kernel output: one rounding of the output plus bf16 inputs.
const KERNEL_TOL: f64 = 8e-3;

#[test]
fn every_declared_kernel_loads() -> Result<()> {
    let Some(rt) = gpu("every_declared_kernel_loads") else {
        return Ok(());
    };
    let mut count = 0;
    for module in ALL_MODULES {
        for &name in module.functions {
            rt.function(module, name)?;
            count += 1;
        }
    }
    println!(
        "every_declared_kernel_loads: {count} kernels in {} modules",
        ALL_MODULES.len()
    );
    Ok(())
}

fn poisoned(rt: &Runtime) -> &Runtime {
    rt.set_poison_allocations(true);
    rt
}

#[test]
fn norms_match_reference() -> Result<()> {
    let Some(rt) = gpu("norms_match_reference") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("norms_match_reference"));
    for (rows, hidden) in [(1, 1024), (7, 256), (33, 1000)] {
        let (x, xr) = upload_bf16(&rt, &rng.vec(rows * hidden, -2.0, 2.0), &[rows, hidden])?;
        let (d, dr) = upload_bf16(&rt, &rng.vec(rows * hidden, -2.0, 2.0), &[rows, hidden])?;
        let (w, wr) = upload_bf16(&rt, &rng.vec(hidden, 0.5, 1.5), &[hidden])?;
        let y = ops::rms_norm(poisoned(&rt), &x, &w, 1e-6)?;
        assert_close(
            "rms_norm",
            &download_f32(&rt, &y)?,
            &r::rms_norm_ref(&xr, &wr, hidden, 1e-6),
            KERNEL_TOL,
        );
        let (sum, normed) = ops::add_rms_norm(&rt, &x, &d, &w, 1e-6)?;
        let (sum_ref, normed_ref) = r::add_rms_norm_ref(&xr, &dr, &wr, hidden, 1e-6);
        assert_eq!(
            download_f32(&rt, &sum)?,
            sum_ref,
            "residual sum is bf16(x + d) exactly"
        );
        assert_close(
            "add_rms_norm",
            &download_f32(&rt, &normed)?,
            &normed_ref,
            KERNEL_TOL,
        );
        rt.set_poison_allocations(false);
    }
    Ok(())
}

#[test]
fn elementwise_and_linear_match_reference() -> Result<()> {
    let Some(rt) = gpu("elementwise_and_linear_match_reference") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("elementwise_and_linear_match_reference"));
    let (rows, inter, hidden, vocab) = (9, 384, 256, 500);
    let (gu, gur) = upload_bf16(
        &rt,
        &rng.vec(rows * 2 * inter, -4.0, 4.0),
        &[rows, 2 * inter],
    )?;
    let y = ops::silu_mul(poisoned(&rt), &gu)?;
    assert_close(
        "silu_mul",
        &download_f32(&rt, &y)?,
        &r::silu_mul_ref(&gur, inter),
        KERNEL_TOL,
    );
    let (a, ar) = upload_bf16(&rt, &rng.vec(rows * hidden, -1.0, 1.0), &[rows, hidden])?;
    let (b, br) = upload_bf16(&rt, &rng.vec(rows * hidden, -1.0, 1.0), &[rows, hidden])?;
    let s = ops::add(&rt, &a, &b)?;
    assert_close(
        "add",
        &download_f32(&rt, &s)?,
        &r::add_ref(&ar, &br),
        KERNEL_TOL,
    );
    let (table, tr) = upload_bf16(&rt, &rng.vec(vocab * hidden, -1.0, 1.0), &[vocab, hidden])?;
    let ids: Vec<u32> = (0..rows)
        .map(|i| {
            if i == 0 {
                vocab as u32 + 7
            } else {
                rng.below(vocab) as u32
            }
        })
        .collect();
    let ids_t = rt.upload(&ids, &[rows])?;
    let e = ops::embedding(&rt, &table, &ids_t)?;
    assert_eq!(
        download_f32(&rt, &e)?,
        r::embedding_ref(&tr, hidden, &ids),
        "embedding (id 0 out of range, clamped)"
    );
    for (m, k, n) in [(1, 256, 512), (13, 1024, 3072), (64, 384, 100)] {
        let (x, xr) = upload_bf16(&rt, &rng.vec(m * k, -1.0, 1.0), &[m, k])?;
        let (w, wr) = upload_bf16(&rt, &rng.vec(n * k, -0.1, 0.1), &[n, k])?;
        let (bias, bias_r) = upload_bf16(&rt, &rng.vec(n, -1.0, 1.0), &[n])?;
        let y = ops::linear(&rt, &x, &w)?;
        assert_close(
            "linear",
            &download_f32(&rt, &y)?,
            &r::linear_ref(&xr, &wr, None, k),
            KERNEL_TOL,
        );
        let yb = ops::linear_bias(&rt, &x, &w, &bias)?;
        assert_close(
            "linear_bias",
            &download_f32(&rt, &yb)?,
            &r::linear_ref(&xr, &wr, Some(&bias_r), k),
            KERNEL_TOL,
        );
    }
    rt.set_poison_allocations(false);
    // fill_uniform is reproducible on the host bit for bit.
    let t = rt.alloc(&[4097], DType::F32)?;
    let seed = rng.next_u64();
    ops::fill_uniform(&rt, &t, seed, -3.0, 5.0)?;
    assert_eq!(
        rt.download::<f32>(&t)?,
        r::uniform_vec(seed, 4097, -3.0, 5.0)
    );
    Ok(())
}

/// The built-in GEMM (`GemmBackend::Builtin`) against the host reference and against cuBLAS:
/// the vector path (`in % 8 == 0`), the scalar path (odd `in`, and a row view that starts
/// 2 bytes past 16-byte alignment), partial row tiles and output blocks, a rank-3 input.
#[test]
fn builtin_gemm_matches_reference_and_cublas() -> Result<()> {
    let Some(rt) = gpu("builtin_gemm_matches_reference_and_cublas") else {
        return Ok(());
    };
    assert_eq!(rt.gemm_backend(), GemmBackend::from_env());
    let mut rng = Rng(fresh_seed("builtin_gemm_matches_reference_and_cublas"));
    let mut cases = 0;
    for (m, k, n) in [
        (1, 1024, 3072),
        (5, 256, 33),
        (13, 999, 100),
        (64, 384, 100),
        (257, 128, 4099),
    ] {
        let (x, xr) = upload_bf16(&rt, &rng.vec(m * k, -1.0, 1.0), &[m, k])?;
        let (w, wr) = upload_bf16(&rt, &rng.vec(n * k, -0.1, 0.1), &[n, k])?;
        let reference = r::linear_ref(&xr, &wr, None, k);
        rt.set_gemm_backend(GemmBackend::Builtin);
        let y = ops::linear(poisoned(&rt), &x, &w)?;
        rt.set_poison_allocations(false);
        let builtin = download_f32(&rt, &y)?;
        assert_close(
            &format!("builtin linear {m}x{k}x{n}"),
            &builtin,
            &reference,
            KERNEL_TOL,
        );
        if m > 1 {
            // Rows 1.. of x: a view whose start is 2 * k bytes in (not 16-byte aligned when k
            // is odd), and a rank-3 shape, flattened into rows by the op.
            let view = x.narrow_rows(1, m - 1)?.reshape(&[1, m - 1, k])?;
            let yv = ops::linear(poisoned(&rt), &view, &w)?;
            rt.set_poison_allocations(false);
            assert_eq!(yv.shape(), [1, m - 1, n]);
            assert_eq!(
                download_f32(&rt, &yv)?,
                builtin[n..],
                "builtin linear on a row view: the same rows, bit for bit"
            );
        }
        rt.set_gemm_backend(GemmBackend::Cublas);
        let yc = ops::linear(poisoned(&rt), &x, &w)?;
        rt.set_poison_allocations(false);
        assert_close(
            &format!("builtin vs cuBLAS {m}x{k}x{n}"),
            &builtin,
            &download_f32(&rt, &yc)?,
            KERNEL_TOL,
        );
        cases += 1;
    }
    rt.set_gemm_backend(GemmBackend::Auto);
    assert_eq!(
        rt.resolved_gemm_backend(),
        GemmBackend::Cublas,
        "auto picks cuBLAS where it loads (it did just above)"
    );
    println!("builtin_gemm_matches_reference_and_cublas: {cases} shapes");
    Ok(())
}

/// The attention geometries the rope and attention tests run: `(q_heads, kv_heads, head_dim,
/// cache slots, cache tokens, batch rows)`.
const ATTENTION_CASES: [(usize, usize, usize, usize, usize, usize); 3] = [
    (16, 8, 64, 40, 256, 33),
    (4, 4, 128, 8, 100, 5),
    (8, 2, 64, 4, 1024, 4),
];

#[test]
fn rope_and_attention_match_reference() -> Result<()> {
    let Some(rt) = gpu("rope_and_attention_match_reference") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("rope_and_attention_match_reference"));
    for (q_heads, kv_heads, head_dim, slots, tokens, n) in ATTENTION_CASES {
        let cfg = AttentionShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta: 10_000.0,
            rope_scaling: cudagraph::ops::RopeScaling::None,
        };
        let width = (q_heads + 2 * kv_heads) * head_dim;
        let cache_len = slots * tokens * kv_heads * head_dim;
        let cache_dims = [slots, tokens, kv_heads, head_dim];
        let (k_cache, mut k_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &cache_dims)?;
        let (v_cache, mut v_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &cache_dims)?;
        let (qkv, qkv_r) = upload_bf16(&rt, &rng.vec(n * width, -1.0, 1.0), &[n, width])?;
        // Row 0 is padding (a negative position: skipped, its q and output rows zero); row 1
        // is past the cache (clamped to its last position).
        let positions: Vec<i32> = (0..n)
            .map(|i| match i {
                0 => -5,
                1 => tokens as i32 + 9,
                _ => rng.below(tokens) as i32,
            })
            .collect();
        let pos = rt.upload(&positions, &[n])?;
        let q = ops::rope_kv_write(poisoned(&rt), &qkv, &pos, &k_cache, &v_cache, &cfg)?;
        let q_ref = r::rope_kv_write_ref(&qkv_r, &positions, &mut k_ref, &mut v_ref, tokens, &cfg);
        assert_close("rope q", &download_f32(&rt, &q)?, &q_ref, KERNEL_TOL);
        assert_close(
            "rope k cache",
            &download_f32(&rt, &k_cache)?,
            &k_ref,
            KERNEL_TOL,
        );
        assert_close("v cache", &download_f32(&rt, &v_cache)?, &v_ref, 0.0);
        let q_rounded = download_f32(&rt, &q)?;
        let k_now = download_f32(&rt, &k_cache)?;
        let out = ops::attention_decode(&rt, &q, &k_cache, &v_cache, &pos, &cfg)?;
        let out_ref = r::attention_ref(&q_rounded, &k_now, &v_ref, &positions, tokens, &cfg);
        assert_close(
            "attention_decode",
            &download_f32(&rt, &out)?,
            &out_ref,
            KERNEL_TOL,
        );
        rt.set_poison_allocations(false);
    }
    Ok(())
}

/// A bf16 tensor's raw bits, for bit-exact comparisons.
fn bf16_bits(rt: &Runtime, t: &Tensor) -> Result<Vec<u16>> {
    Ok(rt
        .download::<bf16>(t)?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

/// Positions of a batch of `n` rows over a cache of `tokens`: every third row is padding
/// (`-1`, and `i32::MIN` once), row 1 is past the cache (clamped), the others are drawn.
fn padded_positions(rng: &mut Rng, n: usize, tokens: usize) -> Vec<i32> {
    (0..n)
        .map(|i| match i {
            3 => i32::MIN,
            _ if i % 3 == 0 => -1,
            1 => tokens as i32 + 9,
            _ => rng.below(tokens) as i32,
        })
        .collect()
}

/// Padded rows (a negative position, vLLM's PAD_SLOT_ID) write nothing into the KV cache: the
/// whole cache is bit-identical to before except at `[b, pos[b]]` of the other rows, which hold
/// exactly what the reference wrote there. Padded rows' q rows are zero (the output is
/// poisoned first). Both launchers: plain and with Qwen3's q/k norm.
#[test]
fn rope_kv_write_skips_padded_rows() -> Result<()> {
    let Some(rt) = gpu("rope_kv_write_skips_padded_rows") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("rope_kv_write_skips_padded_rows"));
    let mut padded_rows = 0;
    for (q_heads, kv_heads, head_dim, slots, tokens, n, qk_norm) in [
        (16, 8, 64, 40, 256, 33, false),
        (8, 2, 128, 6, 100, 5, false),
        (16, 8, 128, 12, 64, 10, true),
    ] {
        let cfg = AttentionShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta: 10_000.0,
            rope_scaling: cudagraph::ops::RopeScaling::None,
        };
        let (width, q_width, kv_row) = (
            (q_heads + 2 * kv_heads) * head_dim,
            q_heads * head_dim,
            kv_heads * head_dim,
        );
        let cache_len = slots * tokens * kv_row;
        let cache_dims = [slots, tokens, kv_heads, head_dim];
        let (k_cache, mut k_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &cache_dims)?;
        let (v_cache, mut v_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &cache_dims)?;
        let (k_before, v_before) = (bf16_bits(&rt, &k_cache)?, bf16_bits(&rt, &v_cache)?);
        let (qkv, qkv_r) = upload_bf16(&rt, &rng.vec(n * width, -1.0, 1.0), &[n, width])?;
        let positions = padded_positions(&mut rng, n, tokens);
        let pos = rt.upload(&positions, &[n])?;
        let (q, q_ref) = if qk_norm {
            let (qw, qw_r) = upload_bf16(&rt, &rng.vec(head_dim, 0.5, 1.5), &[head_dim])?;
            let (kw, kw_r) = upload_bf16(&rt, &rng.vec(head_dim, 0.5, 1.5), &[head_dim])?;
            let norm = QkNorm {
                q_weight: &qw,
                k_weight: &kw,
                eps: 1e-6,
            };
            let q = ops::rope_kv_write_qk_norm(
                poisoned(&rt),
                &qkv,
                &pos,
                &k_cache,
                &v_cache,
                &cfg,
                &norm,
            )?;
            let q_ref = r::rope_kv_write_qk_norm_ref(
                &qkv_r,
                &positions,
                &mut k_ref,
                &mut v_ref,
                tokens,
                &cfg,
                (&qw_r, &kw_r),
                1e-6,
            );
            (q, q_ref)
        } else {
            let q = ops::rope_kv_write(poisoned(&rt), &qkv, &pos, &k_cache, &v_cache, &cfg)?;
            let q_ref =
                r::rope_kv_write_ref(&qkv_r, &positions, &mut k_ref, &mut v_ref, tokens, &cfg);
            (q, q_ref)
        };
        rt.set_poison_allocations(false);

        let q_bits = bf16_bits(&rt, &q)?;
        let (k_after, v_after) = (bf16_bits(&rt, &k_cache)?, bf16_bits(&rt, &v_cache)?);
        let written: Vec<Option<usize>> = positions
            .iter()
            .map(|&p| r::cache_position(p, tokens))
            .collect();
        for (b, wrote) in written.iter().enumerate() {
            let row = b * q_width..(b + 1) * q_width;
            if wrote.is_none() {
                padded_rows += 1;
                assert!(
                    q_bits[row].iter().all(|&x| x == 0),
                    "row {b} (position {}) is padding: its q row must be zero",
                    positions[b]
                );
            }
        }
        assert_close("rope q", &download_f32(&rt, &q)?, &q_ref, KERNEL_TOL);
        for slot in 0..slots {
            let wrote = written.get(slot).copied().flatten();
            for t in 0..tokens {
                let at = (slot * tokens + t) * kv_row;
                let range = at..at + kv_row;
                if wrote == Some(t) {
                    let v_expect: Vec<u16> = v_ref[range.clone()]
                        .iter()
                        .map(|&x| r::f32_to_bf16_bits(x))
                        .collect();
                    assert_eq!(
                        v_after[range.clone()],
                        v_expect[..],
                        "slot {slot} position {t}: v is the row's v, bit for bit"
                    );
                    let k_got: Vec<f32> = k_after[range.clone()]
                        .iter()
                        .map(|&x| r::bf16_bits_to_f32(x))
                        .collect();
                    assert_close(
                        &format!("slot {slot} position {t}: rotated k"),
                        &k_got,
                        &k_ref[range],
                        KERNEL_TOL,
                    );
                } else {
                    assert_eq!(
                        k_after[range.clone()],
                        k_before[range.clone()],
                        "slot {slot} position {t}: k_cache must be untouched"
                    );
                    assert_eq!(
                        v_after[range.clone()],
                        v_before[range],
                        "slot {slot} position {t}: v_cache must be untouched"
                    );
                }
            }
        }
    }
    println!("rope_kv_write_skips_padded_rows: {padded_rows} padded rows left the cache untouched");
    Ok(())
}

/// Decode attention: the output rows of padded rows (negative positions) are exactly zero
/// (the output is poisoned first); the other rows match the reference. The padded rows' cache
/// slots hold NaN, so a row reading another row's slot would show.
#[test]
fn attention_decode_zeroes_padded_rows() -> Result<()> {
    let Some(rt) = gpu("attention_decode_zeroes_padded_rows") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("attention_decode_zeroes_padded_rows"));
    for (q_heads, kv_heads, head_dim, slots, tokens, n) in ATTENTION_CASES {
        let cfg = AttentionShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta: 10_000.0,
            rope_scaling: cudagraph::ops::RopeScaling::None,
        };
        let (q_width, kv_row) = (q_heads * head_dim, kv_heads * head_dim);
        let positions = padded_positions(&mut rng, n, tokens);
        let slot_len = tokens * kv_row;
        let cache = |rng: &mut Rng| {
            let mut values = rng.vec(slots * slot_len, -1.0, 1.0);
            for (b, &p) in positions.iter().enumerate() {
                if p < 0 {
                    values[b * slot_len..(b + 1) * slot_len].fill(f32::NAN);
                }
            }
            values
        };
        let cache_dims = [slots, tokens, kv_heads, head_dim];
        let (k_cache, k_ref) = upload_bf16(&rt, &cache(&mut rng), &cache_dims)?;
        let (v_cache, v_ref) = upload_bf16(&rt, &cache(&mut rng), &cache_dims)?;
        let (q, q_r) = upload_bf16(&rt, &rng.vec(n * q_width, -1.0, 1.0), &[n, q_width])?;
        let pos = rt.upload(&positions, &[n])?;
        let out = ops::attention_decode(poisoned(&rt), &q, &k_cache, &v_cache, &pos, &cfg)?;
        rt.set_poison_allocations(false);
        let out_bits = bf16_bits(&rt, &out)?;
        for (b, &p) in positions.iter().enumerate() {
            if p < 0 {
                assert!(
                    out_bits[b * q_width..(b + 1) * q_width]
                        .iter()
                        .all(|&x| x == 0),
                    "row {b} (position {p}) is padding: its output row must be zero"
                );
            }
        }
        let out_ref = r::attention_ref(&q_r, &k_ref, &v_ref, &positions, tokens, &cfg);
        assert_close(
            "attention_decode with padded rows",
            &download_f32(&rt, &out)?,
            &out_ref,
            KERNEL_TOL,
        );
    }
    Ok(())
}

/// The small-batch linear kernel (`cu/gemv.cu`) and the fused ops built on it, against the host
/// reference: 1 row (the CUDA-core kernel), 2 rows (the tensor-core kernel) and 3 to 13 rows
/// (cuBLAS and the unfused kernels), the decoder's shapes and odd ones (`in` not a multiple of
/// 32 or 8, and a misaligned row view, fall back too), with and without bias. The new residual of `add_rms_norm_linear` is `bf16(x + d)`
/// exactly.
#[test]
fn small_batch_linear_and_fused_ops_match_reference() -> Result<()> {
    let Some(rt) = gpu("small_batch_linear_and_fused_ops_match_reference") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "small_batch_linear_and_fused_ops_match_reference",
    ));
    let eps = 1e-6;
    let mut cases = 0;
    for (m, k, n) in [
        (1, 1024, 2048),
        (2, 1024, 6144),
        (2, 3072, 1024),
        (1, 3072, 1024),
        (3, 1024, 6144),
        (8, 3072, 1024),
        (5, 256, 33),
        (2, 1000, 100),
        (1, 1000, 100),
        (4, 1000, 100),
        (2, 288, 100),
        (2, 96, 13),
        (2, 4128, 1001),
        (1, 4128, 1001),
        (7, 1024, 2048),
        (8, 1024, 151_936 / 8),
        (13, 1024, 512),
        (1, 1024, 151_936 / 8),
    ] {
        let (x, xr) = upload_bf16(&rt, &rng.vec(m * k, -2.0, 2.0), &[m, k])?;
        let (d, dr) = upload_bf16(&rt, &rng.vec(m * k, -2.0, 2.0), &[m, k])?;
        let (nw, nwr) = upload_bf16(&rt, &rng.vec(k, 0.5, 1.5), &[k])?;
        let (w, wr) = upload_bf16(&rt, &rng.vec(n * k, -0.1, 0.1), &[n, k])?;
        let (b, br) = upload_bf16(&rt, &rng.vec(n, -1.0, 1.0), &[n])?;
        let what = |op: &str| format!("{op} {m}x{k}x{n}");

        let y = ops::linear(poisoned(&rt), &x, &w)?;
        assert_close(
            &what("linear"),
            &download_f32(&rt, &y)?,
            &r::linear_ref(&xr, &wr, None, k),
            KERNEL_TOL,
        );
        let yb = ops::linear_bias(poisoned(&rt), &x, &w, &b)?;
        // The kernel rounds after the product and again after the bias, as GEMM + add does.
        let with_bias: Vec<f32> = r::round_bf16_slice(&r::linear_ref(&xr, &wr, None, k))
            .iter()
            .enumerate()
            .map(|(i, v)| v + br[i % n])
            .collect();
        assert_close(
            &what("linear_bias"),
            &download_f32(&rt, &yb)?,
            &with_bias,
            KERNEL_TOL,
        );

        let normed = r::round_bf16_slice(&r::rms_norm_ref(&xr, &nwr, k, eps));
        let y = ops::rms_norm_linear(poisoned(&rt), &x, &nw, eps, &w, None)?;
        assert_close(
            &what("rms_norm_linear"),
            &download_f32(&rt, &y)?,
            &r::linear_ref(&normed, &wr, None, k),
            KERNEL_TOL,
        );

        let (sum_ref, normed_ref) = r::add_rms_norm_ref(&xr, &dr, &nwr, k, eps);
        let (sum, y) = ops::add_rms_norm_linear(poisoned(&rt), &x, &d, &nw, eps, &w, Some(&b))?;
        assert_eq!(
            download_f32(&rt, &sum)?,
            sum_ref,
            "{}: the new residual is bf16(x + d) exactly",
            what("add_rms_norm_linear")
        );
        let normed_ref = r::round_bf16_slice(&normed_ref);
        let with_bias: Vec<f32> = r::round_bf16_slice(&r::linear_ref(&normed_ref, &wr, None, k))
            .iter()
            .enumerate()
            .map(|(i, v)| v + br[i % n])
            .collect();
        assert_close(
            &what("add_rms_norm_linear"),
            &download_f32(&rt, &y)?,
            &with_bias,
            KERNEL_TOL,
        );

        let (gu, gur) = upload_bf16(&rt, &rng.vec(m * 2 * k, -3.0, 3.0), &[m, 2 * k])?;
        let act = r::round_bf16_slice(&r::silu_mul_ref(&gur, k));
        let y = ops::silu_mul_linear(poisoned(&rt), &gu, &w)?;
        assert_close(
            &what("silu_mul_linear"),
            &download_f32(&rt, &y)?,
            &r::linear_ref(&act, &wr, None, k),
            KERNEL_TOL,
        );

        if m > 1 {
            // Rows 1.. of x: a view 2 k bytes in (16-byte aligned only when k % 8 == 0, else
            // a fallback path), the same rows within the kernels' tolerance whichever kernel
            // takes the view (its row count picks one).
            rt.set_poison_allocations(false);
            let full = download_f32(&rt, &ops::linear(&rt, &x, &w)?)?;
            let view = x.narrow_rows(1, m - 1)?;
            let yv = ops::linear(poisoned(&rt), &view, &w)?;
            assert_close(
                &what("linear on a row view"),
                &download_f32(&rt, &yv)?,
                &full[n..],
                KERNEL_TOL,
            );
        }
        rt.set_poison_allocations(false);
        cases += 1;
    }
    // Bad shapes are errors naming the op, before any launch.
    let (x, _) = upload_bf16(&rt, &rng.vec(2 * 64, -1.0, 1.0), &[2, 64])?;
    let (w, _) = upload_bf16(&rt, &rng.vec(16 * 64, -1.0, 1.0), &[16, 64])?;
    let (nw_bad, _) = upload_bf16(&rt, &rng.vec(32, -1.0, 1.0), &[32])?;
    let err = ops::rms_norm_linear(&rt, &x, &nw_bad, eps, &w, None).unwrap_err();
    assert!(err.to_string().contains("rms_norm_linear"), "{err}");
    let err = ops::silu_mul_linear(&rt, &x, &w).unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    println!("small_batch_linear_and_fused_ops_match_reference: {cases} shapes");
    Ok(())
}

/// `rope_attention_decode` is `rope_kv_write` (or `rope_kv_write_qk_norm`) then
/// `attention_decode`, bit for bit: the same output and the same caches, padded rows and a
/// position past the cache included.
#[test]
fn rope_attention_matches_the_unfused_ops_bit_for_bit() -> Result<()> {
    let Some(rt) = gpu("rope_attention_matches_the_unfused_ops_bit_for_bit") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "rope_attention_matches_the_unfused_ops_bit_for_bit",
    ));
    let mut cases = 0;
    for (q_heads, kv_heads, head_dim, slots, tokens, n) in ATTENTION_CASES {
        for qk_norm in [false, true] {
            let cfg = AttentionShape {
                q_heads,
                kv_heads,
                head_dim,
                rope_theta: 1_000_000.0,
                rope_scaling: cudagraph::ops::RopeScaling::None,
            };
            let width = (q_heads + 2 * kv_heads) * head_dim;
            let cache_dims = [slots, tokens, kv_heads, head_dim];
            let cache_len = slots * tokens * kv_heads * head_dim;
            let k_init = rng.vec(cache_len, -1.0, 1.0);
            let v_init = rng.vec(cache_len, -1.0, 1.0);
            let (k_a, _) = upload_bf16(&rt, &k_init, &cache_dims)?;
            let (v_a, _) = upload_bf16(&rt, &v_init, &cache_dims)?;
            let (k_b, _) = upload_bf16(&rt, &k_init, &cache_dims)?;
            let (v_b, _) = upload_bf16(&rt, &v_init, &cache_dims)?;
            let (qkv, _) = upload_bf16(&rt, &rng.vec(n * width, -1.0, 1.0), &[n, width])?;
            let (qw, _) = upload_bf16(&rt, &rng.vec(head_dim, 0.5, 1.5), &[head_dim])?;
            let (kw, _) = upload_bf16(&rt, &rng.vec(head_dim, 0.5, 1.5), &[head_dim])?;
            let norm = QkNorm {
                q_weight: &qw,
                k_weight: &kw,
                eps: 1e-6,
            };
            let positions = padded_positions(&mut rng, n, tokens);
            let pos = rt.upload(&positions, &[n])?;
            let q = if qk_norm {
                ops::rope_kv_write_qk_norm(&rt, &qkv, &pos, &k_a, &v_a, &cfg, &norm)?
            } else {
                ops::rope_kv_write(&rt, &qkv, &pos, &k_a, &v_a, &cfg)?
            };
            let unfused = ops::attention_decode(&rt, &q, &k_a, &v_a, &pos, &cfg)?;
            let fused = ops::rope_attention_decode(
                poisoned(&rt),
                &qkv,
                &pos,
                &k_b,
                &v_b,
                &cfg,
                qk_norm.then_some(&norm),
            )?;
            rt.set_poison_allocations(false);
            let label = format!("{q_heads}/{kv_heads}x{head_dim}, n {n}, qk_norm {qk_norm}");
            assert_eq!(
                bf16_bits(&rt, &fused)?,
                bf16_bits(&rt, &unfused)?,
                "output, {label}"
            );
            assert_eq!(
                bf16_bits(&rt, &k_b)?,
                bf16_bits(&rt, &k_a)?,
                "k cache, {label}"
            );
            assert_eq!(
                bf16_bits(&rt, &v_b)?,
                bf16_bits(&rt, &v_a)?,
                "v cache, {label}"
            );
            cases += 1;
        }
    }
    println!("rope_attention_matches_the_unfused_ops_bit_for_bit: {cases} cases");
    Ok(())
}

/// Programmatic dependent launch is on by default from sm_90 on, and a kernel right after the
/// one that writes its input sees the new values: `fill_uniform` into a weight, then at once a
/// one-row `linear` (the GEMV) reading it, against the host reference, many times over.
#[test]
fn a_kernel_sees_what_the_kernel_before_it_wrote() -> Result<()> {
    let Some(rt) = gpu("a_kernel_sees_what_the_kernel_before_it_wrote") else {
        return Ok(());
    };
    let pdl_env = std::env::var(cudagraph::dependent_launch::PDL_ENV).ok();
    if pdl_env.is_none() && rt.compute_capability().0 >= 9 {
        assert!(
            rt.dependent_launch(),
            "PDL is on by default on sm_90 and later"
        );
    }
    let mut rng = Rng(fresh_seed("a_kernel_sees_what_the_kernel_before_it_wrote"));
    let (k, n) = (1024, 2048);
    let (x, xr) = upload_bf16(&rt, &rng.vec(k, -1.0, 1.0), &[1, k])?;
    let w = rt.alloc(&[n, k], DType::BF16)?;
    for round in 0..50 {
        let seed = rng.next_u64();
        ops::fill_uniform(&rt, &w, seed, -0.1, 0.1)?;
        let y = ops::linear(&rt, &x, &w)?; // launched right behind the fill
        let wr = r::round_bf16_slice(&r::uniform_vec(seed, n * k, -0.1, 0.1));
        assert_close(
            &format!("round {round}: linear right after fill_uniform"),
            &download_f32(&rt, &y)?,
            &r::linear_ref(&xr, &wr, None, k),
            KERNEL_TOL,
        );
    }
    println!(
        "a_kernel_sees_what_the_kernel_before_it_wrote: 50 rounds, PDL {}",
        rt.dependent_launch()
    );
    Ok(())
}

/// `mul`, `scale`, `concat` and `split` against the host, bit for bit (one rounding each, or
/// plain copies), with outputs poisoned; a rank-3 input for the column ops; bad shapes are
/// errors naming the op.
#[test]
fn products_and_column_ops_match_the_host() -> Result<()> {
    let Some(rt) = gpu("products_and_column_ops_match_the_host") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("products_and_column_ops_match_the_host"));
    let (rows, w) = (7, 300);
    let (a, ar) = upload_bf16(&rt, &rng.vec(rows * w, -3.0, 3.0), &[rows, w])?;
    let (b, br) = upload_bf16(&rt, &rng.vec(rows * w, -3.0, 3.0), &[rows, w])?;
    let product = ops::mul(poisoned(&rt), &a, &b)?;
    let want: Vec<f32> = ar
        .iter()
        .zip(&br)
        .map(|(x, y)| r::round_bf16(x * y))
        .collect();
    assert_eq!(download_f32(&rt, &product)?, want, "mul");
    let s = rng.uniform(-2.0, 2.0);
    let scaled = ops::scale(poisoned(&rt), &a, s)?;
    let want: Vec<f32> = ar.iter().map(|x| r::round_bf16(x * s)).collect();
    assert_eq!(download_f32(&rt, &scaled)?, want, "scale by {s}");

    let wb = 45;
    let (c, cr) = upload_bf16(&rt, &rng.vec(rows * wb, -1.0, 1.0), &[1, rows, wb])?;
    let a3 = a.reshape(&[1, rows, w])?;
    let joined = ops::concat(poisoned(&rt), &a3, &c)?;
    assert_eq!(joined.shape(), [1, rows, w + wb]);
    let want: Vec<f32> = (0..rows)
        .flat_map(|r| {
            ar[r * w..(r + 1) * w]
                .iter()
                .chain(&cr[r * wb..(r + 1) * wb])
        })
        .copied()
        .collect();
    assert_eq!(download_f32(&rt, &joined)?, want, "concat");
    let (left, right) = ops::split(poisoned(&rt), &joined, w)?;
    rt.set_poison_allocations(false);
    assert_eq!(download_f32(&rt, &left)?, ar, "split: left part");
    assert_eq!(download_f32(&rt, &right)?, cr, "split: right part");

    let err = ops::mul(&rt, &a, &c).unwrap_err();
    assert!(err.to_string().contains("mul"), "{err}");
    let err = ops::split(&rt, &a, w).unwrap_err();
    assert!(err.to_string().contains("split"), "{err}");
    let err = ops::concat(&rt, &a, &c).unwrap_err();
    assert!(err.to_string().contains("concat"), "{err}");
    Ok(())
}
