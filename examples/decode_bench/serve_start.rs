//! `--serve-start`: issue 29's start-up figures in a fresh process. From `main()` to the first
//! served forward with `capture = background` (the runner serves at once: its first call runs
//! eagerly, its size is captured right after), and to all 35 graphs live (`capture_pending`).
//! Run it twice: the second process finds the kernel cache and the GEMM algorithms on disk,
//! which is the "second start" of `bench/README.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use cudagraph::{GraphPlan, Result, Runner, Runtime};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{Inputs, forward_sizes};

/// Measures and prints; `started` is taken first thing in `main()`, `context_s` is how long
/// `Runtime::new` took.
pub fn run(rt: &Runtime, started: Instant, context_s: f64, json: Option<&Path>) -> Result<()> {
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let t = Instant::now();
    let model = Llama::random(rt, cfg.clone(), 0)?;
    rt.synchronize()?;
    let weights_s = t.elapsed().as_secs_f64();

    // The sizes of `Llama::forward`'s attribute, captured in the background.
    let sizes = forward_sizes();
    let plan = GraphPlan::new("forward", &sizes, 0)?.with_background_capture(true);
    let mut runner = Runner::capture(rt, plan, cfg.input_specs()?, (), |rt, [t, p], ()| {
        model.forward(rt, t, p)
    })?;
    let ready_s = started.elapsed().as_secs_f64();

    // The first request: one sequence's decode step, as a server's first step is.
    let (tokens, positions) = Inputs(11).draw(rt, &cfg, 1)?;
    let out = runner.run([&tokens, &positions])?;
    let first_replayed = out.replayed();
    drop(out);
    rt.synchronize()?;
    let first_served_s = started.elapsed().as_secs_f64();
    // What the first call spent capturing (its size's graph, and the largest first): the rest
    // of the call is the eager forward in a cold process.
    let first_captures_s = runner.stats().capture_wall.as_secs_f64();
    let first_captured = runner.stats().sizes.iter().filter(|s| s.captured).count();
    let first_eager_s = (first_served_s - ready_s - first_captures_s).max(0.0);

    let captured = runner.capture_pending(Duration::from_secs(120))?;
    rt.synchronize()?;
    let all_live_s = started.elapsed().as_secs_f64();
    let pending = runner.pending_captures();

    // A second request at the first one's size: a replay now.
    let t = Instant::now();
    let out = runner.run([&tokens, &positions])?;
    let second_replayed = out.replayed();
    drop(out);
    rt.synchronize()?;
    let second_us = t.elapsed().as_secs_f64() * 1e6;

    let pool_mib = runner.stats().pool_bytes as f64 / (1 << 20) as f64;
    println!(
        "serve start (capture = background, from main()): context {context_s:.3} s, weights {weights_s:.3} s, runner ready {ready_s:.3} s, first forward served {first_served_s:.3} s (replayed: {first_replayed}; the call: eager forward {first_eager_s:.3} s, {first_captured} captures {first_captures_s:.3} s), all {} graphs live {all_live_s:.3} s ({captured} by capture_pending, {pending} still pending); the next call at batch 1 {second_us:.0} µs (replayed: {second_replayed}); pool {pool_mib:.1} MiB",
        sizes.len(),
    );
    if let Some(path) = json {
        let mut s = String::from("{\n  \"serve_start\": {");
        let _ = write!(
            s,
            "\"context_s\": {context_s}, \"weights_s\": {weights_s}, \"ready_s\": {ready_s}, \"first_served_s\": {first_served_s}, \"first_call_eager_s\": {first_eager_s}, \"first_call_captures_s\": {first_captures_s}, \"first_call_captured\": {first_captured}, \"all_live_s\": {all_live_s}, \"graphs\": {}, \"pending\": {pending}, \"second_call_us\": {second_us}, \"pool_bytes\": {}",
            sizes.len(),
            runner.stats().pool_bytes
        );
        s.push_str("}\n}\n");
        std::fs::write(path, s)
            .map_err(|e| cudagraph::Error::invalid("--json", format!("{}: {e}", path.display())))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}
