//! Hugging Face checkpoints end to end: synthetic checkpoints of every family written by the
//! loader's own writer, loaded onto the GPU, the eager forward checked against the host model
//! and the graphs against eager; the q/k-norm RoPE kernel against its reference; and every bad
//! checkpoint through the full load path.

use std::fs::OpenOptions;
use std::path::Path;

use cudagraph::kernels::reference as r;
use cudagraph::ops::{self, AttentionShape, QkNorm};
use cudagraph::{Result, Runtime, Tensor};
use cudagraph_models::hf::synthetic::{
    ScratchDir, SynthTensor, Synthetic, write_json, write_safetensors,
};
use cudagraph_models::hf::{self, Checkpoint, ConfigDtype, Family, LoadError};
use cudagraph_models::llama::Llama;
use cudagraph_models::reference::HostLlama;

use crate::common::{
    Rng, assert_close, assert_graph_matches_eager, download_f32, fresh_seed, gpu, rel_error,
    upload_bf16,
};

/// GPU forward vs the host model with the same bf16 rounding points: accumulation order and
/// rare rounding flips, through two layers.
const HOST_TOL: f64 = 2e-2;

fn scratch(tag: &str) -> ScratchDir {
    ScratchDir::new(tag).expect("a temporary folder")
}

/// The checkpoints the suite loads: each family's tiny model, plus the variants that exercise
/// the rest of the loader (Llama with attention biases and tied embeddings, f32 weights,
/// shards).
fn variants(seed: u64) -> Vec<(&'static str, Synthetic)> {
    let mut out = Vec::new();
    for (name, family) in [
        ("llama (GQA, untied)", Family::Llama),
        ("qwen2 (q/k/v bias, tied)", Family::Qwen2),
        ("qwen3 (q/k norm, head_dim 48)", Family::Qwen3),
        ("mistral (8 heads on 2 KV heads)", Family::Mistral),
    ] {
        out.push((name, Synthetic::tiny(family)));
    }
    let mut llama_bias = Synthetic::tiny(Family::Llama);
    llama_bias.model.qkv_bias = true;
    llama_bias.model.o_bias = true;
    llama_bias.model.tie_embeddings = true;
    out.push(("llama (attention_bias, tied)", llama_bias));
    let mut qwen3_f32 = Synthetic::tiny(Family::Qwen3);
    qwen3_f32.dtype = ConfigDtype::F32;
    qwen3_f32.shards = 3;
    out.push(("qwen3 (f32 weights, 3 shards)", qwen3_f32));
    for (i, (_, s)) in out.iter_mut().enumerate() {
        s.seed = seed.wrapping_add(i as u64);
    }
    out
}

fn upload_step(rt: &Runtime, tokens: &[u32], positions: &[i32]) -> Result<(Tensor, Tensor)> {
    let n = tokens.len();
    Ok((rt.upload(tokens, &[n])?, rt.upload(positions, &[n])?))
}

#[test]
fn checkpoints_match_the_host_model_eager_and_graphs() -> Result<()> {
    let Some(rt) = gpu("checkpoints_match_the_host_model_eager_and_graphs") else {
        return Ok(());
    };
    let seed = fresh_seed("checkpoints_match_the_host_model_eager_and_graphs");
    let mut rng = Rng(seed);
    for (name, synth) in variants(seed) {
        let dir = scratch("gpu-hf");
        synth.write(dir.path()).expect("write the checkpoint");
        let model = hf::load(&rt, dir.path(), &synth.load_options())?;
        let cfg = model.config().clone();
        assert_eq!(cfg, synth.model, "{name}: the loaded configuration");
        let weights = Checkpoint::open(dir.path(), &synth.load_options())?.read_weights()?;

        // Eager against the host model: 3 sequences, 6 steps each, from position 0.
        let rows = 3;
        let mut host = HostLlama::new(&cfg, &weights, rows)?;
        let mut steps = Vec::new();
        let mut worst_host = 0f64;
        for position in 0..6 {
            let tokens: Vec<u32> = (0..rows).map(|_| rng.below(cfg.vocab) as u32).collect();
            let positions = vec![position; rows];
            let (t, p) = upload_step(&rt, &tokens, &positions)?;
            let eager = download_f32(&rt, &model.forward(&rt, &t, &p)?)?;
            let expect = host.step(&tokens, &positions)?;
            let err = rel_error(&eager, &expect);
            assert!(
                err <= HOST_TOL,
                "{name}: step {position}: GPU eager vs host model relative error {err:.3e}"
            );
            worst_host = worst_host.max(err);
            steps.push((tokens, positions, eager));
        }

        // The graphs replay the same steps (rewriting the same cache positions).
        let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
        let mut worst_graph = 0f64;
        for (tokens, positions, eager) in &steps {
            let (t, p) = upload_step(&rt, tokens, positions)?;
            let out = graphs.run([&t, &p])?;
            assert!(out.replayed(), "{name}: a batch of {rows} must replay");
            let exact = out.size() == Some(rows);
            let got = download_f32(&rt, &out)?;
            let what = format!("{name}: graph vs eager");
            worst_graph =
                worst_graph.max(assert_graph_matches_eager(&what, &got, eager, rows, exact));
        }
        // Other sizes on random tokens and positions: graph vs eager on the same cache state.
        for n in [1, 8, 40] {
            let tokens: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab) as u32).collect();
            let positions: Vec<i32> = (0..n).map(|_| rng.below(cfg.cache_tokens) as i32).collect();
            let (t, p) = upload_step(&rt, &tokens, &positions)?;
            let eager = download_f32(&rt, &model.forward(&rt, &t, &p)?)?;
            let out = graphs.run([&t, &p])?;
            assert!(out.replayed());
            let exact = out.size() == Some(n);
            let got = download_f32(&rt, &out)?;
            let what = format!("{name}: n = {n}: graph vs eager");
            worst_graph =
                worst_graph.max(assert_graph_matches_eager(&what, &got, &eager, n, exact));
        }
        println!(
            "{name}: eager vs host model worst relative error {worst_host:.3e}; graphs vs eager {worst_graph:.3e}"
        );
    }
    Ok(())
}

#[test]
fn greedy_decoding_agrees_eager_and_graphs() -> Result<()> {
    let Some(rt) = gpu("greedy_decoding_agrees_eager_and_graphs") else {
        return Ok(());
    };
    let synth = Synthetic::tiny(Family::Qwen3);
    let dir = scratch("gpu-hf-greedy");
    synth.write(dir.path()).expect("write the checkpoint");
    let model = hf::load(&rt, dir.path(), &synth.load_options())?;
    let weights = Checkpoint::open(dir.path(), &synth.load_options())?.read_weights()?;
    let prompt = [5u32, 17, 42, 7];
    let steps = 12;

    // Prefill, then greedy: the generated ids and the logits of every step.
    let decode = |step: &mut dyn FnMut(u32, i32) -> Result<Vec<f32>>| -> Result<Greedy> {
        let mut logits = Vec::new();
        let mut all = Vec::new();
        for (i, &tok) in prompt.iter().enumerate() {
            logits = step(tok, i as i32)?;
        }
        let mut ids = Vec::new();
        for i in 0..steps {
            let next = argmax(&logits);
            ids.push(next);
            all.push(std::mem::take(&mut logits));
            if i + 1 < steps {
                logits = step(next, (prompt.len() + i) as i32)?;
            }
        }
        Ok(Greedy { ids, logits: all })
    };
    let eager = decode(&mut |tok, pos| {
        let (t, p) = upload_step(&rt, &[tok], &[pos])?;
        download_f32(&rt, &model.forward(&rt, &t, &p)?)
    })?;
    let mut graphs = model.forward_graphs(&rt, model.config().input_specs()?)?;
    let replayed = decode(&mut |tok, pos| {
        let (t, p) = upload_step(&rt, &[tok], &[pos])?;
        let out = graphs.run([&t, &p])?;
        download_f32(&rt, &out)
    })?;
    println!(
        "greedy ids: eager {:?}, graphs {:?}",
        eager.ids, replayed.ids
    );
    assert_eq!(eager.ids, replayed.ids, "eager and graph greedy ids");

    // The host model, fed the tokens eager chose (no near-tie can make the paths diverge).
    let mut host = HostLlama::new(model.config(), &weights, 1)?;
    let mut fed: Vec<u32> = prompt.to_vec();
    fed.extend_from_slice(&eager.ids[..steps - 1]);
    let mut worst = 0f64;
    for (pos, &tok) in fed.iter().enumerate() {
        let expect = host.step(&[tok], &[pos as i32])?;
        if let Some(k) = pos.checked_sub(prompt.len() - 1) {
            let err = rel_error(&eager.logits[k], &expect);
            assert!(err <= HOST_TOL, "greedy step {k}: eager vs host {err:.3e}");
            worst = worst.max(err);
        }
    }
    println!("greedy_decoding_agrees_eager_and_graphs: eager vs host worst {worst:.3e}");
    Ok(())
}

/// Greedy ids and the logits each was chosen from.
struct Greedy {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn qk_norm_rope_matches_reference() -> Result<()> {
    let Some(rt) = gpu("qk_norm_rope_matches_reference") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("qk_norm_rope_matches_reference"));
    for (q_heads, kv_heads, head_dim, n) in [(16, 8, 128, 9), (4, 2, 48, 3), (8, 1, 256, 2)] {
        let cfg = AttentionShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta: 1_000_000.0,
            rope_scaling: cudagraph::ops::RopeScaling::None,
        };
        let (slots, tokens) = (n + 1, 16);
        let width = (q_heads + 2 * kv_heads) * head_dim;
        let cache_len = slots * tokens * kv_heads * head_dim;
        let dims = [slots, tokens, kv_heads, head_dim];
        let (k_cache, mut k_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &dims)?;
        let (v_cache, mut v_ref) = upload_bf16(&rt, &rng.vec(cache_len, -1.0, 1.0), &dims)?;
        let (qkv, qkv_r) = upload_bf16(&rt, &rng.vec(n * width, -4.0, 4.0), &[n, width])?;
        let (qw, qw_r) = upload_bf16(&rt, &rng.vec(head_dim, 0.5, 1.5), &[head_dim])?;
        let (kw, kw_r) = upload_bf16(&rt, &rng.vec(head_dim, 0.5, 1.5), &[head_dim])?;
        let positions: Vec<i32> = (0..n).map(|_| rng.below(tokens) as i32).collect();
        let pos = rt.upload(&positions, &[n])?;
        let norm = QkNorm {
            q_weight: &qw,
            k_weight: &kw,
            eps: 1e-6,
        };
        rt.set_poison_allocations(true);
        let q = ops::rope_kv_write_qk_norm(&rt, &qkv, &pos, &k_cache, &v_cache, &cfg, &norm)?;
        rt.set_poison_allocations(false);
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
        assert_close("qk-norm rope q", &download_f32(&rt, &q)?, &q_ref, 8e-3);
        assert_close(
            "qk-norm rope k cache",
            &download_f32(&rt, &k_cache)?,
            &k_ref,
            8e-3,
        );
        assert_close("v cache", &download_f32(&rt, &v_cache)?, &v_ref, 0.0);
        // A wrongly shaped norm weight is an argument error, not a launch.
        let bad = QkNorm {
            q_weight: &kw,
            k_weight: &qkv,
            eps: 1e-6,
        };
        assert!(
            ops::rope_kv_write_qk_norm(&rt, &qkv, &pos, &k_cache, &v_cache, &cfg, &bad).is_err()
        );
    }
    Ok(())
}

/// Writes a good checkpoint, applies `edit` to its tensors, and loads it through `hf::load`.
fn load_with_tensors(
    rt: &Runtime,
    synth: &Synthetic,
    edit: impl FnOnce(&mut Vec<SynthTensor>),
) -> std::result::Result<Llama, LoadError> {
    let dir = scratch("gpu-hf-bad");
    synth.write(dir.path()).expect("write the checkpoint");
    let mut tensors = synth.tensors();
    edit(&mut tensors);
    write_safetensors(&dir.path().join(hf::SINGLE_FILE), &tensors).expect("write");
    hf::load(rt, dir.path(), &synth.load_options())
}

/// Writes a good checkpoint, applies `edit` to its config, and loads it through `hf::load`.
fn load_with_config(
    rt: &Runtime,
    synth: &Synthetic,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::result::Result<Llama, LoadError> {
    let dir = scratch("gpu-hf-bad");
    synth.write(dir.path()).expect("write the checkpoint");
    let mut config = synth.config_json();
    edit(&mut config);
    write_json(&dir.path().join(hf::CONFIG_FILE), &config).expect("write");
    hf::load(rt, dir.path(), &synth.load_options())
}

fn truncate(path: &Path, by: u64) {
    let file = OpenOptions::new().write(true).open(path).expect("open");
    let len = file.metadata().expect("metadata").len();
    file.set_len(len - by).expect("truncate");
}

#[test]
fn bad_checkpoints_fail_clearly_through_load() -> Result<()> {
    let Some(rt) = gpu("bad_checkpoints_fail_clearly_through_load") else {
        return Ok(());
    };
    let synth = Synthetic::tiny(Family::Qwen3);
    let mut messages = Vec::new();
    let mut record = |case: &str, result: std::result::Result<Llama, LoadError>| -> LoadError {
        let err = match result {
            Ok(_) => panic!("{case}: a bad checkpoint loaded"),
            Err(e) => e,
        };
        messages.push(format!("{case}: {err}"));
        err
    };

    let missing = "model.layers.1.self_attn.k_norm.weight";
    let err = record(
        "missing tensor",
        load_with_tensors(&rt, &synth, |ts| ts.retain(|t| t.name != missing)),
    );
    assert!(matches!(&err, LoadError::MissingTensor { name, .. } if name == missing));

    let err = record(
        "wrong shape",
        load_with_tensors(&rt, &synth, |ts| {
            let t = ts
                .iter_mut()
                .find(|t| t.name == "model.embed_tokens.weight");
            let t = t.expect("embed");
            *t = SynthTensor::from_f32(&t.name, &[10, 128], &[0.0; 1280], ConfigDtype::BF16);
        }),
    );
    assert!(
        matches!(&err, LoadError::Shape { expected, found, .. } if expected == &vec![384, 128] && found == &vec![10, 128])
    );

    let err = record(
        "unsupported dtype",
        load_with_tensors(&rt, &synth, |ts| {
            ts.iter_mut()
                .for_each(|t| t.dtype = safetensors::Dtype::F16)
        }),
    );
    assert!(matches!(&err, LoadError::Dtype { found, .. } if found == "F16"));

    let err = record(
        "unsupported architecture",
        load_with_config(&rt, &synth, |c| {
            c["architectures"] = serde_json::json!(["GemmaForCausalLM"]);
        }),
    );
    assert!(
        matches!(&err, LoadError::UnsupportedArchitecture { found, .. } if found == "GemmaForCausalLM")
    );

    let err = record(
        "rope_scaling",
        load_with_config(&rt, &synth, |c| {
            c["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "factor": 2.0,
                "short_factor": [1.0], "long_factor": [1.0]});
        }),
    );
    assert!(matches!(&err, LoadError::Config { field, .. } if field == "rope_scaling.rope_type"));

    let dir = scratch("gpu-hf-truncated");
    synth.write(dir.path()).expect("write");
    truncate(&dir.path().join(hf::SINGLE_FILE), 64);
    let err = record(
        "truncated file",
        hf::load(&rt, dir.path(), &synth.load_options()),
    );
    assert!(matches!(err, LoadError::Truncated { .. }));

    for m in &messages {
        println!("bad_checkpoints_fail_clearly_through_load: {m}");
    }
    Ok(())
}
