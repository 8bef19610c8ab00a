//! `--multi-bench`: the decode step of `q` tokens per sequence (speculative decoding's
//! verification of a `q`-token draft), graphed by the batch and by `q`
//! (`Llama::forward_multi`, `buckets = [tokens[1] + positions[1] = [1, 2, 3, 4]]`), against
//! `q` single-token steps (`Llama::forward`'s graphs, one replay per token), on the
//! Qwen3-0.6B-shaped decoder, in one run.

use std::time::Instant;

use cudagraph::{DType, InputSpec, Runtime};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{Inputs, median};

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Runs the table over `batches` (each at most 64, the largest multi-token size) and q = 1..=4.
pub fn run(rt: &Runtime, batches: &[usize], iters: usize) -> BoxResult<()> {
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let model = Llama::random(rt, cfg.clone(), 0)?;
    println!(
        "multi-token benchmark: {cfg} | device {}",
        rt.device_name()?
    );
    let started = Instant::now();
    let mut steps = model.forward_graphs(rt, cfg.input_specs()?)?;
    let steps_s = started.elapsed().as_secs_f64();
    let specs = [
        InputSpec::new(DType::U32, &[4])?,
        InputSpec::new(DType::I32, &[4])?,
    ];
    let started = Instant::now();
    let mut multi = model.forward_multi_graphs(rt, specs)?;
    let multi_s = started.elapsed().as_secs_f64();
    let (s, m) = (steps.stats(), multi.stats());
    println!(
        "single-token graphs: {} in {steps_s:.3} s, pool {:.1} MiB; multi-token graphs: {} ({} sizes x 4 q) in {multi_s:.3} s ({:.2} ms a graph), pool {:.1} MiB (the largest alone {:.1} MiB)",
        s.sizes.len(),
        s.pool_bytes as f64 / (1 << 20) as f64,
        m.sizes.len(),
        multi.sizes().len(),
        multi_s * 1e3 / m.sizes.len().max(1) as f64,
        m.pool_bytes as f64 / (1 << 20) as f64,
        m.largest_graph_need() as f64 / (1 << 20) as f64,
    );
    println!();
    println!(
        "| b | q | multi-token replay µs | q single-token replays µs | speed-up | µs per token, multi |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut inputs = Inputs(0x51);
    for &b in batches.iter().filter(|&&b| b <= 64) {
        for q in 1..=4usize {
            let (tokens, bases) = inputs.draw_host(&cfg, b);
            let mut flat_t = Vec::with_capacity(b * q);
            let mut flat_p = Vec::with_capacity(b * q);
            for r in 0..b {
                let base = bases[r].min((cfg.cache_tokens - q) as i32);
                for j in 0..q {
                    flat_t.push(tokens[r]);
                    flat_p.push(base + j as i32);
                }
            }
            let t = rt.upload(&flat_t, &[b, q])?;
            let p = rt.upload(&flat_p, &[b, q])?;
            let columns: Vec<_> = (0..q)
                .map(|j| -> BoxResult<_> {
                    let ct: Vec<u32> = (0..b).map(|r| flat_t[r * q + j]).collect();
                    let cp: Vec<i32> = (0..b).map(|r| flat_p[r * q + j]).collect();
                    Ok((rt.upload(&ct, &[b])?, rt.upload(&cp, &[b])?))
                })
                .collect::<BoxResult<_>>()?;
            for _ in 0..3 {
                drop(multi.run([&t, &p])?);
                for (ct, cp) in &columns {
                    drop(steps.run([ct, cp])?);
                }
            }
            rt.synchronize()?;
            let (mut multi_us, mut steps_us) = (Vec::new(), Vec::new());
            for _ in 0..iters {
                let started = Instant::now();
                let out = multi.run([&t, &p])?;
                assert!(out.replayed());
                drop(out);
                rt.synchronize()?;
                multi_us.push(started.elapsed().as_secs_f64() * 1e6);
                let started = Instant::now();
                for (ct, cp) in &columns {
                    drop(steps.run([ct, cp])?);
                }
                rt.synchronize()?;
                steps_us.push(started.elapsed().as_secs_f64() * 1e6);
            }
            let (mu, su) = (median(multi_us), median(steps_us));
            println!(
                "| {b} | {q} | {mu:.1} | {su:.1} | {:.2}x | {:.1} |",
                su / mu,
                mu / (b * q) as f64
            );
        }
    }
    Ok(())
}
