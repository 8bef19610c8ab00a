//! Tensor parallelism on two GPUs: the graphs of a decoder sharded over two ranks (NCCL
//! all-reduces captured inside them) against the single-GPU eager forward of the same weights.
//!
//! Skips, printing why, with fewer than two GPUs (also under `CUDAGRAPH_REQUIRE_GPU=1`: a
//! single-GPU machine is a valid GPU machine). Refuses (fails) to create NCCL communicators
//! unless `NCCL_NVLS_ENABLE=0` is set. The tests take a lock: two sets of communicators on the
//! same GPUs at once could wait on each other's kernels.

use std::sync::Mutex;

use cudagraph::testing::REQUIRE_GPU_ENV;
use cudagraph::{Result, Runtime};
use cudagraph_models::llama::{Llama, LlamaConfig};
use cudagraph_models::tp::{self, NcclComm, NcclId, run_ranks};
use cudagraph_models::weights::LlamaWeights;

use crate::common::{Rng, download_f32, fresh_seed, gpu, rel_error};
use crate::tp_launch::{Case, Launch, Model, RankOut, config, run_tp2};

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

/// Draws a model of configuration `config_name`, the cases of `sizes` and their tp = 1
/// references on `rt` (dropped after), runs them on two ranks started as `launch` says, and
/// checks the ranks' outputs; `rt` is dropped before the ranks start.
fn tp2_against_tp1(
    test: &str,
    rt: Runtime,
    config_name: &str,
    sizes: &[usize],
    launch: Launch,
) -> Result<Vec<RankOut>> {
    let mut rng = Rng(fresh_seed(test));
    let cfg = config(config_name);
    let seed = rng.next_u64();
    let weights = tp::random_weights(&cfg, seed)?;
    let cases = reference_cases(&rt, &cfg, &weights, &mut rng, sizes)?;
    drop(rt);
    println!("{test}: ranks started as {launch:?}");
    let model = Model {
        config: config_name,
        seed,
        weights: &weights,
    };
    let ranks = run_tp2(launch, &model, &cases)?;
    check(test, &cases, &ranks, 256);
    Ok(ranks)
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
    let mut sizes: Vec<usize> = [1, 2, 4].into_iter().chain((8..=256).step_by(8)).collect();
    sizes.extend([300, 100]);
    let ranks = tp2_against_tp1(test, rt, "tiny", &sizes, Launch::from_env())?;
    for r in &ranks {
        assert_eq!(r.sizes.len(), 35, "every rank captures the same 35 sizes");
        assert_eq!(r.sizes, ranks[0].sizes);
    }
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
    tp2_against_tp1(
        test,
        rt,
        "variant",
        &[1, 8, 64, 256, 300],
        Launch::from_env(),
    )?;
    Ok(())
}

/// One process per rank ([`run_rank_process`](tp::run_rank_process), `ncclCommInitRank`):
/// the same results as one thread per rank.
#[test]
fn tp2_processes_match_tp1() -> Result<()> {
    let test = "tp2_processes_match_tp1";
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(rt) = two_gpus(test) else {
        return Ok(());
    };
    let ranks = tp2_against_tp1(
        test,
        rt,
        "tiny",
        &[1, 8, 64, 256, 300, 100],
        Launch::Processes,
    )?;
    assert_eq!(ranks[0].sizes, ranks[1].sizes);
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
    // SAFETY: the ranks' closure issues no collective (and with too few devices no
    // communicator is created).
    let too_many = unsafe { run_ranks(count + 1, |_| Ok(())) };
    assert!(too_many.is_err(), "{} ranks on {count} GPUs", count + 1);
    let odd = LlamaConfig {
        kv_heads: 1,
        q_heads: 3,
        ..LlamaConfig::tiny()
    };
    assert!(tp::shard_config(&odd, 2).is_err());
    // One process per rank: a rank out of range, a device that does not exist, a bad id.
    let id = NcclId::new()?;
    // SAFETY: both calls fail their argument checks before creating a communicator, so no
    // collective is ever issued on one.
    unsafe {
        assert!(NcclComm::init_rank(&id, 2, 2, 0).is_err(), "rank 2 of 2");
        assert!(
            NcclComm::init_rank(&id, 2, 0, count).is_err(),
            "device {count}"
        );
    }
    assert!(NcclId::from_hex(&id.to_hex()[1..]).is_err());
    // A failing rank stops the other at its next barrier instead of hanging it.
    // SAFETY: neither rank issues a collective: rank 1 returns at once, rank 0 only waits at
    // the barrier.
    let failed = unsafe {
        run_ranks(2, |rank| {
            if rank.rank == 1 {
                return Err(cudagraph::Error::invalid("test", "rank 1 fails on purpose"));
            }
            rank.sync.wait()
        })
    };
    let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("on purpose"),
        "the first failure is reported: {message}"
    );
    Ok(())
}
