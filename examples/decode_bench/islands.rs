//! `--islands-bench`: what eager islands cost (issue 26). The Qwen3-0.6B-shaped decoder with
//! its attention in an island in every layer (`Llama::forward_islands`: 28 islands, 29
//! segments a size) against the same decoder fully graphed (`Llama::forward`) and against
//! eager, in one run on one GPU: capture time and pool of each runner, then per batch size the
//! latency of each path, the latency and the host time one island adds, and whether the
//! island graphs give the full graph's logits bit for bit (the same kernels run).
//!
//! Host time is the time `run` takes to return (everything enqueued, nothing awaited); the
//! latency is `run` plus a synchronisation, as in the main table.

use std::time::Instant;

use cudagraph::{RunnerStats, Runtime};
use cudagraph_models::llama::{Llama, LlamaConfig};
use half::bf16;

use crate::common::{Inputs, median};

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The batch sizes of the table when `--batches` is not given.
pub const DEFAULT_BATCHES: [usize; 4] = [1, 8, 64, 256];

/// Prints one runner's capture summary.
fn capture_line(name: &str, stats: &RunnerStats, wall_s: f64) {
    let segments = stats.sizes.first().map_or(0, |s| s.segments);
    println!(
        "{name}: {} graphs ({segments} segment(s) a size) captured in {wall_s:.3} s; pool {:.1} MiB (the largest size alone {:.1} MiB), island buffers {:.2} MiB, {} kernel nodes at batch 1",
        stats.sizes.len(),
        stats.pool_bytes as f64 / (1 << 20) as f64,
        stats.largest_graph_need() as f64 / (1 << 20) as f64,
        stats.island_buffer_bytes as f64 / (1 << 20) as f64,
        stats.sizes.first().map_or(0, |s| s.nodes),
    );
}

/// Runs the islands benchmark over `batches`, `iters` timed runs of each path per size.
pub fn run(rt: &Runtime, batches: &[usize], iters: usize) -> BoxResult<()> {
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let model = Llama::random(rt, cfg.clone(), 0)?;
    println!(
        "islands benchmark: {cfg} | attention as an island in each of {} layers | device {}",
        cfg.layers,
        rt.device_name()?
    );
    // One eager forward at the largest size first (cuBLAS set-up, lazy kernel loading).
    let (tokens, positions) = Inputs(7).draw(rt, &cfg, 256)?;
    drop(model.forward(rt, &tokens, &positions)?);
    rt.synchronize()?;

    // One untimed capture first: the GEMM plans of every batch bucket, kernel loading; the two
    // timed captures below then compare like with like.
    drop(model.forward_graphs(rt, cfg.input_specs()?)?);
    let started = Instant::now();
    let mut full = model.forward_graphs(rt, cfg.input_specs()?)?;
    let full_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut pieces = model.forward_islands_graphs(rt, cfg.input_specs()?)?;
    let pieces_s = started.elapsed().as_secs_f64();
    capture_line("full graphs", full.stats(), full_s);
    capture_line("island graphs", pieces.stats(), pieces_s);
    // Sizes whose capture warmed up (the first, and any that did not fit the pool's chunk).
    for (name, stats) in [("full", full.stats()), ("islands", pieces.stats())] {
        let warmed: Vec<String> = stats
            .sizes
            .iter()
            .filter(|s| !s.capture.warmup.is_zero())
            .map(|s| {
                format!(
                    "{} ({:.1} MiB)",
                    s.size,
                    s.pool_need as f64 / (1 << 20) as f64
                )
            })
            .collect();
        println!("{name}: sizes that warmed up: {}", warmed.join(", "));
    }
    let islands = pieces.stats().sizes.first().map_or(0, |s| s.segments - 1);
    println!(
        "capture time: island graphs {:.2}x the full graphs'; pool {:.3}x",
        pieces_s / full_s,
        pieces.stats().pool_bytes as f64 / full.stats().pool_bytes.max(1) as f64
    );

    let mut inputs = Inputs(0x1517);
    println!();
    println!(
        "| batch | eager µs | full graph µs | island graphs µs | islands vs full | µs per island | host µs full | host µs islands | host µs per island | logits |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for &n in batches {
        let (tokens, positions) = inputs.draw(rt, &cfg, n)?;
        // Both write the same keys and values at the same positions: the same cache state.
        let same = {
            let a = full.run([&tokens, &positions])?;
            let a = rt.download::<bf16>(&a)?;
            let b = pieces.run([&tokens, &positions])?;
            let b = rt.download::<bf16>(&b)?;
            a.iter()
                .map(|v| v.to_bits())
                .eq(b.iter().map(|v| v.to_bits()))
        };
        for _ in 0..3 {
            drop(model.forward(rt, &tokens, &positions)?);
            drop(full.run([&tokens, &positions])?);
            drop(pieces.run([&tokens, &positions])?);
        }
        rt.synchronize()?;
        let (mut eager, mut full_us, mut pieces_us) = (Vec::new(), Vec::new(), Vec::new());
        let (mut full_host, mut pieces_host) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            let t = Instant::now();
            drop(model.forward(rt, &tokens, &positions)?);
            rt.synchronize()?;
            eager.push(t.elapsed().as_secs_f64() * 1e6);

            let t = Instant::now();
            let out = full.run([&tokens, &positions])?;
            full_host.push(t.elapsed().as_secs_f64() * 1e6);
            drop(out);
            rt.synchronize()?;
            full_us.push(t.elapsed().as_secs_f64() * 1e6);

            let t = Instant::now();
            let out = pieces.run([&tokens, &positions])?;
            pieces_host.push(t.elapsed().as_secs_f64() * 1e6);
            drop(out);
            rt.synchronize()?;
            pieces_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let (e, f, p) = (median(eager), median(full_us), median(pieces_us));
        let (fh, ph) = (median(full_host), median(pieces_host));
        let per = islands.max(1) as f64;
        println!(
            "| {n} | {e:.1} | {f:.1} | {p:.1} | {:.2}x | {:.2} | {fh:.1} | {ph:.1} | {:.2} | {} |",
            p / f,
            (p - f) / per,
            (ph - fh) / per,
            if same { "bit-equal" } else { "DIFFER" }
        );
        if !same {
            return Err(format!(
                "batch {n}: the island graphs' logits differ from the full graph's"
            )
            .into());
        }
    }
    println!();
    println!("{}", pieces.stats());
    Ok(())
}
