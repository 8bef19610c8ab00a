//! Long contexts: RoPE scalings (`linear`, `dynamic`, `llama3`, `yarn`) in both RoPE kernels
//! against the host reference, and prefill (a prompt's tokens as the rows of one forward, one
//! KV-cache slot) op by op and through the whole model, against the host model and against
//! one decode step per token.

use cudagraph::kernels::reference as r;
use cudagraph::ops::{self, AttentionShape, PrefillChunk, QkNorm, RopeScaling, YarnParams};
use cudagraph::{Result, Runtime};
use cudagraph_models::hf::synthetic::{ScratchDir, Synthetic};
use cudagraph_models::hf::{Checkpoint, Family};
use cudagraph_models::llama::Llama;
use cudagraph_models::reference::HostLlama;
use half::bf16;

use crate::common::{Rng, assert_close, download_f32, fresh_seed, gpu, rel_error, upload_bf16};

/// Float32 reference vs a bf16 kernel output (as in `kernels.rs`).
const KERNEL_TOL: f64 = 8e-3;
/// GPU forward vs the host model (as in `hf.rs`).
const HOST_TOL: f64 = 2e-2;

/// Every scaling, with an original context of `original` positions (so that the tests'
/// positions reach past it).
fn scalings(original: usize, theta: f64, head_dim: usize) -> Vec<RopeScaling> {
    let original_f = original as f32;
    vec![
        RopeScaling::None,
        RopeScaling::Linear { factor: 4.0 },
        RopeScaling::Dynamic {
            factor: 2.0,
            original_max_positions: original_f,
        },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: original_f,
        },
        RopeScaling::yarn(
            &YarnParams {
                factor: 4.0,
                original_max_positions: original as f64,
                beta_fast: None,
                beta_slow: None,
                mscale: None,
                mscale_all_dim: None,
                attention_factor: None,
                truncate: None,
            },
            theta,
            head_dim,
        ),
    ]
}

fn bits(rt: &Runtime, t: &cudagraph::Tensor) -> Result<Vec<u16>> {
    Ok(rt
        .download::<bf16>(t)?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

#[test]
fn rope_scalings_match_the_host_in_both_rope_kernels() -> Result<()> {
    let Some(rt) = gpu("rope_scalings_match_the_host_in_both_rope_kernels") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "rope_scalings_match_the_host_in_both_rope_kernels",
    ));
    let (q_heads, kv_heads, head_dim, slots, tokens, n) = (8, 2, 64, 6, 256, 6);
    let theta = 10_000.0f32;
    for scaling in scalings(32, f64::from(theta), head_dim) {
        let cfg = AttentionShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta: theta,
            rope_scaling: scaling,
        };
        let width = (q_heads + 2 * kv_heads) * head_dim;
        let cache_len = slots * tokens * kv_heads * head_dim;
        let dims = [slots, tokens, kv_heads, head_dim];
        let k_init = rng.vec(cache_len, -1.0, 1.0);
        let v_init = rng.vec(cache_len, -1.0, 1.0);
        let (k_cache, mut k_ref) = upload_bf16(&rt, &k_init, &dims)?;
        let (v_cache, mut v_ref) = upload_bf16(&rt, &v_init, &dims)?;
        let (qkv, qkv_r) = upload_bf16(&rt, &rng.vec(n * width, -1.0, 1.0), &[n, width])?;
        // Inside and well past the original context of 32 positions.
        let positions: Vec<i32> = (0..n)
            .map(|i| match i {
                0 => 3,
                1 => 31,
                2 => 32,
                _ => 33 + rng.below(tokens - 33) as i32,
            })
            .collect();
        let pos = rt.upload(&positions, &[n])?;
        rt.set_poison_allocations(true);
        let q = ops::rope_kv_write(&rt, &qkv, &pos, &k_cache, &v_cache, &cfg)?;
        rt.set_poison_allocations(false);
        let q_ref = r::rope_kv_write_ref(&qkv_r, &positions, &mut k_ref, &mut v_ref, tokens, &cfg);
        let what = scaling.name();
        assert_close(
            &format!("{what}: rope q"),
            &download_f32(&rt, &q)?,
            &q_ref,
            KERNEL_TOL,
        );
        assert_close(
            &format!("{what}: rope k cache"),
            &download_f32(&rt, &k_cache)?,
            &k_ref,
            KERNEL_TOL,
        );
        let unfused = ops::attention_decode(&rt, &q, &k_cache, &v_cache, &pos, &cfg)?;

        // The fused kernel on a second copy of the caches: the same bits.
        let (k2, _) = upload_bf16(&rt, &k_init, &dims)?;
        let (v2, _) = upload_bf16(&rt, &v_init, &dims)?;
        rt.set_poison_allocations(true);
        let fused = ops::rope_attention_decode(&rt, &qkv, &pos, &k2, &v2, &cfg, None)?;
        rt.set_poison_allocations(false);
        assert_eq!(
            bits(&rt, &fused)?,
            bits(&rt, &unfused)?,
            "{what}: fused vs unfused"
        );
        assert_eq!(
            bits(&rt, &k2)?,
            bits(&rt, &k_cache)?,
            "{what}: fused k cache"
        );
        println!("{what}: rope and fused attention match ({scaling:?})");
    }
    Ok(())
}

#[test]
fn prefill_ops_write_one_slot_and_attend_causally() -> Result<()> {
    let Some(rt) = gpu("prefill_ops_write_one_slot_and_attend_causally") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("prefill_ops_write_one_slot_and_attend_causally"));
    let (q_heads, kv_heads, head_dim, slots, tokens) = (4, 2, 64, 4, 96);
    let dynamic = RopeScaling::Dynamic {
        factor: 2.0,
        original_max_positions: 16.0,
    };
    for (scaling, with_norm) in [(RopeScaling::None, false), (dynamic, true)] {
        let cfg = AttentionShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta: 10_000.0,
            rope_scaling: scaling,
        };
        let width = (q_heads + 2 * kv_heads) * head_dim;
        let cache_len = slots * tokens * kv_heads * head_dim;
        let dims = [slots, tokens, kv_heads, head_dim];
        let (k_cache, mut k_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &dims)?;
        let (v_cache, mut v_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &dims)?;
        // A chunk continuing a sequence: positions 5..45 of slot 2 (0..5 hold earlier tokens).
        let (start, n, slot) = (5, 40, 2);
        let (qkv, qkv_r) = upload_bf16(&rt, &rng.vec(n * width, -1.0, 1.0), &[n, width])?;
        let positions: Vec<i32> = (start..start + n).map(|p| p as i32).collect();
        let pos = rt.upload(&positions, &[n])?;
        let chunk = PrefillChunk {
            slot,
            seq_len: start + n,
        };
        let (qw, qw_r) = upload_bf16(&rt, &rng.vec(head_dim, 0.8, 1.2), &[head_dim])?;
        let (kw, kw_r) = upload_bf16(&rt, &rng.vec(head_dim, 0.8, 1.2), &[head_dim])?;
        let norm = QkNorm {
            q_weight: &qw,
            k_weight: &kw,
            eps: 1e-6,
        };
        rt.set_poison_allocations(true);
        let q = ops::rope_kv_write_prefill(
            &rt,
            &qkv,
            &pos,
            &k_cache,
            &v_cache,
            &cfg,
            &chunk,
            with_norm.then_some(&norm),
        )?;
        let out = ops::attention_prefill(&rt, &q, &k_cache, &v_cache, &pos, &cfg, &chunk)?;
        rt.set_poison_allocations(false);
        let normed = match with_norm {
            true => r::qk_norm_ref(&qkv_r, &cfg, (&qw_r, &kw_r), 1e-6),
            false => qkv_r.clone(),
        };
        let q_ref = r::rope_kv_write_prefill_ref(
            &normed,
            &positions,
            (&mut k_ref, &mut v_ref),
            tokens,
            &cfg,
            &chunk,
        );
        let what = format!("{} (q/k norm: {with_norm})", scaling.name());
        assert_close(
            &format!("{what}: prefill q"),
            &download_f32(&rt, &q)?,
            &q_ref,
            KERNEL_TOL,
        );
        // Only slot 2's positions 5..45 changed (the reference writes nothing else).
        assert_close(
            &format!("{what}: prefill k cache"),
            &download_f32(&rt, &k_cache)?,
            &k_ref,
            KERNEL_TOL,
        );
        assert_close(
            &format!("{what}: prefill v cache"),
            &download_f32(&rt, &v_cache)?,
            &v_ref,
            0.0,
        );
        let q_now = download_f32(&rt, &q)?;
        let k_now = download_f32(&rt, &k_cache)?;
        let out_ref =
            r::attention_prefill_ref(&q_now, (&k_now, &v_ref), &positions, tokens, &cfg, slot);
        assert_close(
            &format!("{what}: causal attention"),
            &download_f32(&rt, &out)?,
            &out_ref,
            KERNEL_TOL,
        );
        println!("prefill ops, {what}: match the host");
    }
    // A slot outside the cache is an error, not a wild write.
    let cfg = AttentionShape {
        q_heads,
        kv_heads,
        head_dim,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::None,
    };
    let k = rt.zeros(&[slots, tokens, kv_heads, head_dim], cudagraph::DType::BF16)?;
    let v = rt.zeros(&[slots, tokens, kv_heads, head_dim], cudagraph::DType::BF16)?;
    let qkv = rt.zeros(
        &[2, (q_heads + 2 * kv_heads) * head_dim],
        cudagraph::DType::BF16,
    )?;
    let pos = rt.upload(&[0i32, 1], &[2])?;
    let bad = PrefillChunk {
        slot: slots,
        seq_len: 2,
    };
    let err = ops::rope_kv_write_prefill(&rt, &qkv, &pos, &k, &v, &cfg, &bad, None).unwrap_err();
    assert!(err.to_string().contains("slot"), "{err}");
    Ok(())
}

/// A Qwen3-family model (q/k norm, untied head) with the given RoPE scaling, from a synthetic
/// checkpoint's weights, and its host twin.
fn model_with(rt: &Runtime, seed: u64, scaling: RopeScaling) -> Result<(Llama, HostLlama)> {
    let mut synth = Synthetic::tiny(Family::Qwen3);
    synth.seed = seed;
    synth.model.cache_tokens = 64;
    let dir = ScratchDir::new("gpu-prefill").expect("a temporary folder");
    synth.write(dir.path()).expect("write the checkpoint");
    let weights = Checkpoint::open(dir.path(), &synth.load_options())?.read_weights()?;
    let mut cfg = synth.model.clone();
    cfg.rope_scaling = scaling;
    let model = Llama::from_weights(rt, cfg.clone(), &weights)?;
    let host = HostLlama::new(&cfg, &weights, 2)?;
    Ok((model, host))
}

#[test]
fn model_prefill_matches_the_host_and_one_step_per_token() -> Result<()> {
    let Some(rt) = gpu("model_prefill_matches_the_host_and_one_step_per_token") else {
        return Ok(());
    };
    let seed = fresh_seed("model_prefill_matches_the_host_and_one_step_per_token");
    let mut rng = Rng(seed);
    let dynamic = RopeScaling::Dynamic {
        factor: 2.0,
        original_max_positions: 16.0,
    };
    for scaling in [RopeScaling::None, dynamic] {
        let (model, mut host) = model_with(&rt, seed, scaling)?;
        let cfg = model.config().clone();
        let prompt: Vec<u32> = (0..40).map(|_| rng.below(cfg.vocab) as u32).collect();
        let tokens = rt.upload(&prompt, &[prompt.len()])?;
        rt.set_poison_allocations(true);
        let logits = download_f32(&rt, &model.prefill(&rt, &tokens, 0, 1)?)?;
        rt.set_poison_allocations(false);
        assert_eq!(logits.len(), cfg.vocab, "one row of logits");
        // Not a degenerate row (a zero or constant row would compare equal to anything alike).
        let spread = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
            - logits.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        assert!(
            spread > 0.1,
            "{}: logits spread only {spread}",
            scaling.name()
        );
        let expect = host.prefill(&prompt, 0, 1)?;
        let last = &expect[(prompt.len() - 1) * cfg.vocab..];
        let err = rel_error(&logits, last);
        assert!(
            err <= HOST_TOL,
            "{}: prefill vs host relative error {err:.3e}",
            scaling.name()
        );

        // In two chunks (0..16, then 16..40), against the host model prefilled the same way.
        let (model2, mut host2) = model_with(&rt, seed, scaling)?;
        let (a, b) = prompt.split_at(16);
        model2.prefill(&rt, &rt.upload(a, &[a.len()])?, 0, 1)?;
        let chunked = download_f32(
            &rt,
            &model2.prefill(&rt, &rt.upload(b, &[b.len()])?, 16, 1)?,
        )?;
        host2.prefill(a, 0, 1)?;
        let host_chunked = host2.prefill(b, 16, 1)?;
        let chunk_host_err = rel_error(&chunked, &host_chunked[(b.len() - 1) * cfg.vocab..]);
        assert!(
            chunk_host_err <= HOST_TOL,
            "{}: two chunks vs the host's two chunks {chunk_host_err:.3e}",
            scaling.name()
        );
        let chunk_err = rel_error(&chunked, &logits);
        let norm = logits
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        println!(
            "{}: prefill vs host {err:.3e}; two chunks vs host {chunk_host_err:.3e}, vs one chunk {chunk_err:.3e}; logits norm {norm:.3}, spread {spread:.3}",
            scaling.name()
        );

        // Decoding on after a prefill: slot 0 (the slot row 0 of a decode step uses).
        let (model3, mut host3) = model_with(&rt, seed, scaling)?;
        model3.prefill(&rt, &tokens, 0, 0)?;
        host3.prefill(&prompt, 0, 0)?;
        let next = rng.below(cfg.vocab) as u32;
        let at = prompt.len() as i32;
        let (t, p) = (rt.upload(&[next], &[1])?, rt.upload(&[at], &[1])?);
        let decoded = download_f32(&rt, &model3.forward(&rt, &t, &p)?)?;
        let decode_err = rel_error(&decoded, &host3.step(&[next], &[at])?);
        assert!(
            decode_err <= HOST_TOL,
            "{}: a decode step after the prefill vs host {decode_err:.3e}",
            scaling.name()
        );
        println!(
            "{}: decode step after prefill vs host {decode_err:.3e}",
            scaling.name()
        );

        if scaling == RopeScaling::None {
            // Plain RoPE: one decode step per token (slot 0) computes the same function.
            assert!(chunk_err <= HOST_TOL, "two chunks vs one: {chunk_err:.3e}");
            let mut step_logits = Vec::new();
            for (p, &t) in prompt.iter().enumerate() {
                let (t, p) = (rt.upload(&[t], &[1])?, rt.upload(&[p as i32], &[1])?);
                step_logits = download_f32(&rt, &model.forward(&rt, &t, &p)?)?;
            }
            let step_err = rel_error(&step_logits, &logits);
            assert!(step_err <= HOST_TOL, "steps vs prefill: {step_err:.3e}");
            // Slot 1 (prefill) and slot 0 (steps) hold the same keys within bf16 noise.
            for (layer, (k, _)) in model.kv_caches().enumerate() {
                let k = download_f32(&rt, k)?;
                let per_slot = cfg.cache_tokens * cfg.kv_heads * cfg.head_dim;
                let used = prompt.len() * cfg.kv_heads * cfg.head_dim;
                let slot0 = &k[..used];
                let slot1 = &k[per_slot..per_slot + used];
                let e = rel_error(slot1, slot0);
                assert!(e <= HOST_TOL, "layer {layer}: prefill vs step keys {e:.3e}");
            }
            println!("plain RoPE: one step per token vs prefill {step_err:.3e}");
        } else {
            // Dynamic: the first chunk's keys were rotated for a 16-token sequence, the whole
            // prompt's for 40 (as transformers' one forward does): the two differ by more than
            // the noise between GPU and host.
            assert!(
                chunk_err > 2.0 * chunk_host_err,
                "dynamic RoPE: chunking must change the keys ({chunk_err:.3e} vs noise {chunk_host_err:.3e})"
            );
        }
    }
    // Bad calls are errors naming the op.
    let (model, _) = model_with(&rt, seed, RopeScaling::None)?;
    let cfg = model.config().clone();
    let tokens = rt.upload(&[1u32, 2, 3], &[3])?;
    for (start, slot) in [(cfg.cache_tokens - 2, 0), (0, cfg.cache_slots)] {
        let err = model.prefill(&rt, &tokens, start, slot).unwrap_err();
        assert!(err.to_string().contains("prefill"), "{err}");
    }
    let wrong = rt.upload(&[1i32, 2], &[2])?;
    assert!(model.prefill(&rt, &wrong, 0, 0).is_err());
    Ok(())
}
