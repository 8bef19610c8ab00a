//! Every kernel against its host reference, on fresh random inputs, with outputs poisoned.

use cudagraph::kernels::modules::ALL_MODULES;
use cudagraph::kernels::reference as r;
use cudagraph::ops::{self, AttentionShape};
use cudagraph::{DType, GemmBackend, Result, Runtime};

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

#[test]
fn rope_and_attention_match_reference() -> Result<()> {
    let Some(rt) = gpu("rope_and_attention_match_reference") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("rope_and_attention_match_reference"));
    for (q_heads, kv_heads, head_dim, slots, tokens, n) in [
        (16, 8, 64, 40, 256, 33),
        (4, 4, 128, 8, 100, 5),
        (8, 2, 64, 4, 1024, 4),
    ] {
        let cfg = AttentionShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta: 10_000.0,
        };
        let width = (q_heads + 2 * kv_heads) * head_dim;
        let cache_len = slots * tokens * kv_heads * head_dim;
        let cache_dims = [slots, tokens, kv_heads, head_dim];
        let (k_cache, mut k_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &cache_dims)?;
        let (v_cache, mut v_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &cache_dims)?;
        let (qkv, qkv_r) = upload_bf16(&rt, &rng.vec(n * width, -1.0, 1.0), &[n, width])?;
        // One position out of range on each side: the kernels clamp.
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
