//! Captures a decoder shaped like Qwen3-0.6B into 35 CUDA graphs and benchmarks eager against
//! graph replay per batch size. The README's main command:
//!
//! ```text
//! cargo run --release --example decode_bench
//! ```
//!
//! Options: `--iters N` (timed iterations per size, default 50), `--batches 1,8,300` (sizes to
//! time; sizes above the largest captured one run the eager fallback).

use std::process::ExitCode;
use std::time::Instant;

use cudagraph::models::llama::{Llama, LlamaConfig};
use cudagraph::{ReclaimPolicy, Result, Runtime, Tensor};

struct Options {
    iters: usize,
    batches: Vec<usize>,
}

fn parse_options() -> std::result::Result<Options, String> {
    let mut opts = Options {
        iters: 50,
        batches: vec![1, 8, 32, 64, 128, 256, 300],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--iters" => {
                opts.iters = value("--iters")?
                    .parse()
                    .map_err(|e| format!("--iters: {e}"))?;
            }
            "--batches" => {
                opts.batches = value("--batches")?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--batches: {e}")))
                    .collect::<std::result::Result<_, _>>()?;
            }
            "-h" | "--help" => {
                return Err("usage: decode_bench [--iters N] [--batches 1,8,300]".into());
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    if opts.iters == 0 || opts.batches.contains(&0) {
        return Err("--iters and every batch size must be at least 1".into());
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            println!("decode_bench: no GPU available ({e}); nothing to benchmark.");
            return ExitCode::from(1);
        }
    };
    match run(&rt, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("decode_bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Deterministic random inputs on the host (SplitMix64), fresh for every call.
struct Inputs(u64);

impl Inputs {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn draw(&mut self, rt: &Runtime, cfg: &LlamaConfig, n: usize) -> Result<(Tensor, Tensor)> {
        let tokens: Vec<u32> = (0..n)
            .map(|_| (self.next() % cfg.vocab as u64) as u32)
            .collect();
        let positions: Vec<i32> = (0..n)
            .map(|_| (self.next() % cfg.cache_tokens as u64) as i32)
            .collect();
        Ok((rt.upload(&tokens, &[n])?, rt.upload(&positions, &[n])?))
    }
}

fn median_us(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2] * 1e6
}

/// ‖a − b‖₂ / ‖b‖₂ over the f32 values of two bf16 tensors (NaN if either has a NaN).
fn relative_error(rt: &Runtime, a: &Tensor, b: &Tensor) -> Result<f64> {
    let a: Vec<half::bf16> = rt.download(a)?;
    let b: Vec<half::bf16> = rt.download(b)?;
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (x.to_f64(), y.to_f64());
        diff += (x - y) * (x - y);
        norm += y * y;
    }
    Ok((diff / norm).sqrt())
}

fn run(rt: &Runtime, opts: &Options) -> Result<()> {
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    println!(
        "device: {} | model: Qwen3-0.6B-shaped decoder ({} layers, hidden {}, {}x{} heads, {} KV heads, MLP {}, vocab {}), bf16, random weights (seed 0)",
        rt.device_name()?,
        cfg.layers,
        cfg.hidden,
        cfg.q_heads,
        cfg.head_dim,
        cfg.kv_heads,
        cfg.intermediate,
        cfg.vocab
    );
    let started = Instant::now();
    let model = Llama::random(rt, cfg.clone(), 0)?;
    println!("weights ready in {:.2} s", started.elapsed().as_secs_f64());

    // One eager forward first: NVRTC compiles the kernel modules and cuBLAS initialises here,
    // so the capture below times capture alone.
    let started = Instant::now();
    let mut warm_inputs = Inputs(1);
    let (tokens, positions) = warm_inputs.draw(rt, &cfg, 1)?;
    model.forward(rt, &tokens, &positions)?;
    rt.synchronize()?;
    println!(
        "first eager forward (kernel compilation, cuBLAS setup) {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let mut graphs = model.forward_graphs(rt, cfg.input_specs()?)?;
    let stats = graphs.stats().clone();
    let nodes = stats.sizes.iter().map(|s| s.nodes).max().unwrap_or(0);
    println!(
        "captured {} graphs in {:.3} s (warm-up {:.3} s, record {:.3} s, instantiate {:.3} s, upload {:.3} s); pool {:.1} MiB (largest graph alone {:.1} MiB); {} nodes per graph",
        stats.sizes.len(),
        stats.capture_wall.as_secs_f64(),
        stats.capture_parts().warmup.as_secs_f64(),
        stats.capture_parts().record.as_secs_f64(),
        stats.capture_parts().instantiate.as_secs_f64(),
        stats.capture_parts().upload.as_secs_f64(),
        stats.pool_bytes as f64 / (1 << 20) as f64,
        stats.largest_graph_need() as f64 / (1 << 20) as f64,
        nodes
    );

    let mut inputs = Inputs(0x5EED);
    println!();
    println!("| batch | path     | eager µs | graph µs | speedup | rel. error graph vs eager |");
    println!("|------:|----------|---------:|---------:|--------:|--------------------------:|");
    for &n in &opts.batches {
        let (tokens, positions) = inputs.draw(rt, &cfg, n)?;
        // Accuracy on these inputs: eager, then graph (same cache state: both write the same
        // keys/values at the same positions).
        let eager = model.forward(rt, &tokens, &positions)?;
        let (replayed, err) = {
            let out = graphs.run([&tokens, &positions])?;
            (out.replayed(), relative_error(rt, &out, &eager)?)
        };
        let mut eager_s = Vec::with_capacity(opts.iters);
        let mut graph_s = Vec::with_capacity(opts.iters);
        for _ in 0..3 {
            model.forward(rt, &tokens, &positions)?;
            graphs.run([&tokens, &positions])?;
        }
        rt.synchronize()?;
        for _ in 0..opts.iters {
            let t = Instant::now();
            drop(model.forward(rt, &tokens, &positions)?);
            rt.synchronize()?;
            eager_s.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            drop(graphs.run([&tokens, &positions])?);
            rt.synchronize()?;
            graph_s.push(t.elapsed().as_secs_f64());
        }
        let (e, g) = (median_us(eager_s), median_us(graph_s));
        println!(
            "| {n:>5} | {:<8} | {e:>8.1} | {g:>8.1} | {:>6.2}x | {err:>25.2e} |",
            if replayed { "graph" } else { "fallback" },
            e / g
        );
    }
    let stats = graphs.stats();
    println!();
    println!(
        "replays: {}, eager fallbacks: {} (counted per reason: {:?}), padding waste {:.1}%",
        stats.replay_count(),
        stats.fallback_count(),
        stats.fallbacks,
        stats.padding_waste() * 100.0
    );
    drop(graphs);
    compare_reclaim(rt, &model)
}

/// Captures all sizes again with per-graph reclamation and with the freeze scope (reclaim once),
/// in that order, and prints both times side by side.
fn compare_reclaim(rt: &Runtime, model: &Llama) -> Result<()> {
    let specs = model.config().input_specs()?;
    let mut row = Vec::new();
    for policy in [ReclaimPolicy::Each, ReclaimPolicy::Once] {
        rt.set_reclaim_policy(policy);
        rt.release_cached_memory()?;
        let started = Instant::now();
        let graphs = model.forward_graphs(rt, specs)?;
        let wall = started.elapsed().as_secs_f64();
        row.push((policy, wall, graphs.stats().reclaims));
    }
    rt.set_reclaim_policy(ReclaimPolicy::from_env());
    println!();
    println!("| capture of all sizes | reclaim after each graph (CUDAGRAPH_CAPTURE_RECLAIM=each) | freeze scope (reclaim once) | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| wall s (reclamations) | {:.3} ({}) | {:.3} ({}) | {:.2}x |",
        row[0].1,
        row[0].2,
        row[1].1,
        row[1].2,
        row[0].1 / row[1].1
    );
    Ok(())
}
