//! Tensor parallelism on two GPUs: the graphs of a decoder sharded over two ranks (NCCL
//! all-reduces captured inside them) against the single-GPU eager forward of the same weights.
//!
//! Skips, printing why, with fewer than two GPUs (also under `CUDAGRAPH_REQUIRE_GPU=1`: a
//! single-GPU machine is a valid GPU machine). Refuses (fails) to create NCCL communicators
//! unless `NCCL_NVLS_ENABLE=0` is set. The tests take a lock: two sets of communicators on the
//! same GPUs at once could wait on each other's kernels.

use std::sync::Mutex;

use cudagraph::models::llama::{Llama, LlamaConfig};
use cudagraph::models::tp::{self, TpLlama, run_ranks};
use cudagraph::models::weights::LlamaWeights;
use cudagraph::testing::REQUIRE_GPU_ENV;
use cudagraph::{Result, Runtime};

use crate::common::{Rng, download_f32, fresh_seed, gpu, rel_error};

/// tp = 2 against tp = 1: the partial sums are rounded to bf16 before the all-reduce, where
/// the single GPU accumulates the whole dot product in f32; over the layers that stays within
/// bf16 noise (about 1e-2).
const TP_TOL: f64 = 2e-2;

/// One test at a time uses the GPUs' communicators.
static SERIAL: Mutex<()> = Mutex::new(());

/// A runtime on device 0 when two GPUs, NCCL and `NCCL_NVLS_ENABLE=0` are there; `None` after
/// printing why the test skips.
fn two_gpus(test: &str) -> Option<Runtime> {
    let rt = gpu(test)?;
    let count = match Runtime::device_count() {
        Ok(count) => count,
        Err(e) => {
            println!("skipped {test}: cannot count GPUs ({e})");
            return None;
        }
    };
    if count < 2 {
        println!(
            "skipped {test}: tensor parallelism needs 2 GPUs, {count} visible (a single-GPU machine is a valid GPU machine, so this skips even with {REQUIRE_GPU_ENV}=1)"
        );
        return None;
    }
    if let Err(e) = tp::check_nvls_disabled() {
        panic!("{test}: refusing to create NCCL communicators: {e}");
    }
    if !tp::nccl_available() {
        let required = std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1");
        let why = "NCCL (libnccl.so) cannot be loaded";
        assert!(
            !required,
            "{test}: {REQUIRE_GPU_ENV}=1, {count} GPUs, but {why}"
        );
        println!("skipped {test}: {why}");
        return None;
    }
    if let Ok(version) = tp::nccl_version() {
        println!("{test}: {count} GPUs, NCCL {version}");
    }
    Some(rt)
}

/// One decode step's inputs and the single-GPU eager logits for them.
struct Case {
    n: usize,
    tokens: Vec<u32>,
    positions: Vec<i32>,
    reference: Vec<f32>,
}

/// Draws the inputs of every batch size in `sizes` (in order) and computes the tp = 1 eager
/// logits on `rt`, one step after the other: the cache evolves as the tp = 2 ranks' will
/// (including the capture's warm-up writes).
fn reference_cases(
    rt: &Runtime,
    cfg: &LlamaConfig,
    weights: &LlamaWeights,
    rng: &mut Rng,
    sizes: &[usize],
) -> Result<Vec<Case>> {
    let model = Llama::from_weights(rt, cfg.clone(), weights)?;
    // Capturing runs one eager warm-up at the largest size on the zero-filled static inputs:
    // token 0 at position 0 of cache slots 0..256. The tp = 2 ranks capture too, so the
    // reference model must see the same writes, or every attention (which reads position 0)
    // would differ by more than rounding.
    drop(model.forward_graphs(rt, cfg.input_specs()?)?);
    let mut cases = Vec::with_capacity(sizes.len());
    for &n in sizes {
        let tokens: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab) as u32).collect();
        let positions: Vec<i32> = (0..n).map(|_| rng.below(cfg.cache_tokens) as i32).collect();
        let out = model.forward(
            rt,
            &rt.upload(&tokens, &[n])?,
            &rt.upload(&positions, &[n])?,
        )?;
        let reference = download_f32(rt, &out)?;
        cases.push(Case {
            n,
            tokens,
            positions,
            reference,
        });
    }
    Ok(cases)
}

/// What one rank returns: its captured sizes, graph nodes at batch 1, and per case whether a
/// graph replayed and the logits.
struct RankOut {
    sizes: Vec<usize>,
    nodes_b1: usize,
    outputs: Vec<(bool, Vec<f32>)>,
}

/// Builds the tp = 2 shards, captures every size on both ranks, runs every case through the
/// runners (graph, or the eager fallback above 256) with the pools and eager outputs poisoned.
fn run_tp2(cfg: &LlamaConfig, weights: &LlamaWeights, cases: &[Case]) -> Result<Vec<RankOut>> {
    run_ranks(2, |rank| {
        let rt = Runtime::new(rank.rank)?;
        let model = TpLlama::from_weights(&rt, cfg.clone(), weights, &rank)?;
        rank.sync.wait()?;
        let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
        rank.sync.wait()?;
        let mut outputs = Vec::with_capacity(cases.len());
        for case in cases {
            let tokens = rt.upload(&case.tokens, &[case.n])?;
            let positions = rt.upload(&case.positions, &[case.n])?;
            graphs.poison_pool()?;
            rt.synchronize()?;
            rank.sync.wait()?;
            rt.set_poison_allocations(true);
            let out = graphs.run([&tokens, &positions]);
            rt.set_poison_allocations(false);
            let out = out?;
            assert_eq!(out.shape(), &[case.n, cfg.vocab]);
            outputs.push((out.replayed(), download_f32(&rt, &out)?));
        }
        let stats = graphs.stats();
        Ok(RankOut {
            sizes: graphs.sizes().to_vec(),
            nodes_b1: stats.sizes.first().map_or(0, |s| s.nodes),
            outputs,
        })
    })
}

/// Checks both ranks' outputs: rank 0 against the tp = 1 reference, rank 1 equal to rank 0.
fn check(test: &str, cases: &[Case], ranks: &[RankOut], largest: usize) {
    let mut worst = 0f64;
    for (i, case) in cases.iter().enumerate() {
        let (replayed, got) = &ranks[0].outputs[i];
        assert_eq!(
            *replayed,
            case.n <= largest,
            "n = {}: a captured size replays, a larger one falls back",
            case.n
        );
        let err = rel_error(got, &case.reference);
        assert!(
            err <= TP_TOL,
            "{test}: n = {}: tp=2 {} vs tp=1 eager relative error {err:.3e} > {TP_TOL:.0e} (NaN: unwritten)",
            case.n,
            if *replayed { "graph" } else { "eager fallback" }
        );
        let (_, other) = &ranks[1].outputs[i];
        let between = rel_error(other, got);
        assert!(
            between <= 1e-6,
            "{test}: n = {}: rank 1's logits differ from rank 0's ({between:.3e}); the all-reduce gives every rank the same sum",
            case.n
        );
        worst = worst.max(err);
    }
    println!(
        "{test}: {} cases, worst relative error tp=2 vs tp=1 eager {worst:.3e} (tolerance {TP_TOL:.0e}); graph nodes at batch 1: rank 0 {}, rank 1 {}",
        cases.len(),
        ranks[0].nodes_b1,
        ranks[1].nodes_b1
    );
}

/// Every captured size (exactly, so no padding row writes the cache) and the fallback size 300,
/// then a padded size (100 replays the size-104 graph) last.
#[test]
fn tp2_graphs_match_tp1_every_size() -> Result<()> {
    let test = "tp2_graphs_match_tp1_every_size";
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(rt) = two_gpus(test) else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(test));
    // Tiny: 4 q heads, 2 KV heads, MLP 512: two heads and one KV head per rank; 320 cache slots
    // (the fallback batch of 300 needs 300).
    let cfg = LlamaConfig::tiny();
    let weights = tp::random_weights(&cfg, rng.next_u64())?;
    let mut sizes: Vec<usize> = [1, 2, 4].into_iter().chain((8..=256).step_by(8)).collect();
    sizes.extend([300, 100]);
    let cases = reference_cases(&rt, &cfg, &weights, &mut rng, &sizes)?;
    drop(rt);
    let ranks = run_tp2(&cfg, &weights, &cases)?;
    for r in &ranks {
        assert_eq!(r.sizes.len(), 35, "every rank captures the same 35 sizes");
        assert_eq!(r.sizes, ranks[0].sizes);
    }
    check(test, &cases, &ranks, 256);
    Ok(())
}

/// The variant weights sharded too: q/k/v biases (sliced with their rows), an output bias
/// (added once), Qwen3's q/k norms (replicated) and an untied LM head.
#[test]
fn tp2_variant_weights_match_tp1() -> Result<()> {
    let test = "tp2_variant_weights_match_tp1";
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(rt) = two_gpus(test) else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(test));
    let cfg = LlamaConfig {
        q_heads: 8,
        kv_heads: 4,
        head_dim: 32,
        qkv_bias: true,
        o_bias: true,
        qk_norm: true,
        tie_embeddings: false,
        ..LlamaConfig::tiny()
    };
    let weights = tp::random_weights(&cfg, rng.next_u64())?;
    let cases = reference_cases(&rt, &cfg, &weights, &mut rng, &[1, 8, 64, 256, 300])?;
    drop(rt);
    let ranks = run_tp2(&cfg, &weights, &cases)?;
    check(test, &cases, &ranks, 256);
    Ok(())
}

/// Fewer devices than ranks, or an indivisible head count, is an error before any thread.
#[test]
fn tp_errors_are_errors() -> Result<()> {
    let test = "tp_errors_are_errors";
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_rt) = two_gpus(test) else {
        return Ok(());
    };
    let count = Runtime::device_count()?;
    let too_many = run_ranks(count + 1, |_| Ok(()));
    assert!(too_many.is_err(), "{} ranks on {count} GPUs", count + 1);
    let odd = LlamaConfig {
        kv_heads: 1,
        q_heads: 3,
        ..LlamaConfig::tiny()
    };
    assert!(tp::shard_config(&odd, 2).is_err());
    // A failing rank stops the other at its next barrier instead of hanging it.
    let failed = run_ranks(2, |rank| {
        if rank.rank == 1 {
            return Err(cudagraph::Error::invalid("test", "rank 1 fails on purpose"));
        }
        rank.sync.wait()
    });
    let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("on purpose"),
        "the first failure is reported: {message}"
    );
    Ok(())
}
