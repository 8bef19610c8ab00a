//! The shared graph pool, sharing-safety under random replay order, release and resume.

use std::time::Instant;

use cudagraph::Result;
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{
    BF16_TOL, Rng, assert_graph_matches_eager, download_f32, draw_decode_inputs as draw,
    fresh_seed, gpu, rel_error,
};

#[test]
fn pool_holds_about_the_largest_graph() -> Result<()> {
    let Some(rt) = gpu("pool_holds_about_the_largest_graph") else {
        return Ok(());
    };
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let model = Llama::random(
        &rt,
        cfg.clone(),
        fresh_seed("pool_holds_about_the_largest_graph"),
    )?;
    rt.release_cached_memory()?;
    let (free_before, _) = rt.mem_info()?;
    let graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
    rt.release_cached_memory()?;
    let (free_after, _) = rt.mem_info()?;
    let stats = graphs.stats();
    let largest = stats.largest_graph_need();
    let sum: usize = stats.sizes.iter().map(|s| s.pool_need).sum();
    let ratio = stats.pool_bytes as f64 / largest as f64;
    let held = free_before.saturating_sub(free_after);
    println!(
        "pool: {} graphs hold {:.1} MiB; largest graph alone {:.1} MiB (ratio {ratio:.3}); sum over graphs would be {:.1} MiB; device memory taken by the runner {:.1} MiB (pool + static inputs {:.1} KiB + graph executables)",
        stats.sizes.len(),
        stats.pool_bytes as f64 / 1048576.0,
        largest as f64 / 1048576.0,
        sum as f64 / 1048576.0,
        held as f64 / 1048576.0,
        stats.static_input_bytes as f64 / 1024.0,
    );
    assert_eq!(stats.sizes.len(), 35);
    assert!(ratio <= 1.1, "pool is {ratio:.3}x the largest graph's need");
    Ok(())
}

#[test]
fn random_order_replays_match_eager() -> Result<()> {
    let Some(rt) = gpu("random_order_replays_match_eager") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("random_order_replays_match_eager"));
    let model = Llama::random(&rt, LlamaConfig::tiny(), rng.next_u64())?;
    let mut graphs = model.forward_graphs(&rt, model.config().input_specs()?)?;
    let mut worst = 0f64;
    for _ in 0..60 {
        let n = 1 + rng.below(256);
        let (tokens, positions) = draw(&rt, &mut rng, model.config(), n)?;
        let eager = download_f32(&rt, &model.forward(&rt, &tokens, &positions)?)?;
        let out = graphs.run([&tokens, &positions])?;
        assert!(out.replayed());
        let exact = out.size() == Some(n);
        let got = download_f32(&rt, &out)?;
        worst = worst.max(assert_graph_matches_eager(
            &format!("n = {n}"),
            &got,
            &eager,
            n,
            exact,
        ));
    }
    println!(
        "random_order_replays_match_eager: 60 replays, captured sizes bit-exact, padded worst per-row ratio {worst:.3e}"
    );
    Ok(())
}

#[test]
fn release_returns_memory_and_resume_replays_identically() -> Result<()> {
    let Some(rt) = gpu("release_and_resume") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("release_and_resume"));
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let model = Llama::random(&rt, cfg.clone(), rng.next_u64())?;
    let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
    let n = 37;
    let (tokens, positions) = draw(&rt, &mut rng, &cfg, n)?;
    let before = download_f32(&rt, &*graphs.run([&tokens, &positions])?)?;

    rt.release_cached_memory()?;
    let (free_held, _) = rt.mem_info()?;
    let pool = graphs.release_memory()?;
    let (free_released, _) = rt.mem_info()?;
    let returned = free_released.saturating_sub(free_held);
    let share = returned as f64 / pool as f64;
    assert!(
        graphs.run([&tokens, &positions]).is_err(),
        "run while released is an error"
    );

    let started = Instant::now();
    graphs.resume()?;
    rt.synchronize()?;
    let resume_ms = started.elapsed().as_secs_f64() * 1e3;
    graphs.poison_pool()?;
    let after = download_f32(&rt, &*graphs.run([&tokens, &positions])?)?;
    println!(
        "release: pool {:.1} MiB, returned {:.1} MiB ({:.1}%); resume {resume_ms:.2} ms; results after resume equal: {}",
        pool as f64 / 1048576.0,
        returned as f64 / 1048576.0,
        share * 100.0,
        before == after
    );
    assert!(
        share >= 0.95,
        "only {:.1}% of the pool came back",
        share * 100.0
    );
    assert_eq!(before, after, "results after resume equal results before");
    Ok(())
}

/// A runner dropped while replays it queued are still running: its pool must not be unmapped
/// under them (the drop waits for the stream), so the stream and the runtime stay healthy and an
/// eager forward afterwards is right. (Found under racecheck, where kernels run slowly: a test
/// that returned right after queuing 200 replays left an illegal address behind.)
#[test]
fn dropping_a_runner_with_queued_replays_is_safe() -> Result<()> {
    let Some(rt) = gpu("dropping_a_runner_with_queued_replays_is_safe") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("dropping_a_runner_with_queued_replays_is_safe"));
    let model = Llama::random(&rt, LlamaConfig::tiny(), rng.next_u64())?;
    let cfg = model.config().clone();
    let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
    let (tokens, positions) = draw(&rt, &mut rng, &cfg, 256)?;
    let first = download_f32(&rt, &*graphs.run([&tokens, &positions])?)?;
    // Queue far more GPU work than the host needs to queue it, then drop at once.
    let queued = 100;
    let started = Instant::now();
    for _ in 0..queued {
        graphs.run([&tokens, &positions])?;
    }
    drop(graphs);
    let drop_ms = started.elapsed().as_secs_f64() * 1e3;
    rt.synchronize()?;
    // Replays at the same positions rewrite the same cache entries, so the eager step sees the
    // cache the first replay saw.
    let eager = download_f32(&rt, &model.forward(&rt, &tokens, &positions)?)?;
    let err = rel_error(&eager, &first);
    println!(
        "dropped a runner with {queued} replays queued ({drop_ms:.1} ms to queue and drop); then eager vs first replay relative error {err:.3e}"
    );
    assert!(
        err <= BF16_TOL,
        "eager after the drop: relative error {err:.3e}"
    );
    Ok(())
}
