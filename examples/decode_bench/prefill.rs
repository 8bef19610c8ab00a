//! `--prefill-bench N`: a prompt of `N` tokens prefilled in one batched eager forward
//! (`Llama::prefill`) against one decode step per token (eager, and graph replays: the path
//! generation took before batched prefill), on the Qwen3-0.6B-shaped model with random weights.
//!
//! Prints prefill tokens/s for each path, the speed-up, and the relative error between the
//! last token's logits of the batched and the step-by-step prefill (the same math; the kernels
//! differ: GEMMs against GEMVs, one attention launch against the fused one).

use std::time::Instant;

use cudagraph::Runtime;
use cudagraph::ops::MAX_ATTENTION_CONTEXT;
use cudagraph_models::llama::{Llama, LlamaConfig};
use half::bf16;

use crate::common::{Inputs, median, relative_error_bf16};

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Runs the prefill benchmark with a prompt of `prompt_len` tokens, `iters` timed runs of the
/// batched path (the step paths: 2 each).
pub fn run(rt: &Runtime, prompt_len: usize, iters: usize) -> BoxResult<()> {
    let mut cfg = LlamaConfig::qwen3_0_6b_shaped();
    // Slot 0 holds the prompt; 256 slots because the graphs' largest size writes 256 rows.
    cfg.cache_slots = 256;
    cfg.cache_tokens = (prompt_len + 1).next_multiple_of(64);
    if cfg.cache_tokens > MAX_ATTENTION_CONTEXT {
        return Err(format!(
            "--prefill-bench {prompt_len}: at most {} tokens (the attention kernel's context)",
            MAX_ATTENTION_CONTEXT - 1
        )
        .into());
    }
    let model = Llama::random(rt, cfg.clone(), 7)?;
    let mut inputs = Inputs(prompt_len as u64);
    let (prompt, _) = inputs.draw_host(&cfg, prompt_len);
    let prompt_t = rt.upload(&prompt, &[prompt_len])?;
    println!(
        "prefill benchmark: {} | prompt of {prompt_len} tokens (slot 0) | device {}",
        cfg,
        rt.device_name()?
    );

    // Warm-up: kernel compilation, cuBLAS heuristics for the prompt's shapes.
    let started = Instant::now();
    model.prefill(rt, &prompt_t, 0, 0)?;
    rt.synchronize()?;
    println!(
        "first batched prefill (compilation, cuBLAS setup): {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    let mut batched_ms = Vec::new();
    let mut batched_logits = Vec::new();
    for _ in 0..iters {
        let started = Instant::now();
        let logits = model.prefill(rt, &prompt_t, 0, 0)?;
        rt.synchronize()?;
        batched_ms.push(started.elapsed().as_secs_f64() * 1e3);
        batched_logits = rt.download::<bf16>(&logits)?;
    }

    let step_inputs: Vec<_> = prompt
        .iter()
        .enumerate()
        .map(|(p, &t)| -> BoxResult<_> {
            Ok((
                rt.upload(&[t], &[1])?,
                rt.upload(&[i32::try_from(p)?], &[1])?,
            ))
        })
        .collect::<BoxResult<_>>()?;
    model.forward(rt, &step_inputs[0].0, &step_inputs[0].1)?; // warm-up
    let mut eager_ms = Vec::new();
    let mut eager_logits = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let mut last = None;
        for (t, p) in &step_inputs {
            last = Some(model.forward(rt, t, p)?);
        }
        rt.synchronize()?;
        eager_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if let Some(last) = last {
            eager_logits = rt.download::<bf16>(&last)?;
        }
    }

    let mut graphs = model.forward_graphs(rt, cfg.input_specs()?)?;
    let mut graph_ms = Vec::new();
    let mut graph_logits = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let last = step_inputs.len() - 1;
        for (t, p) in &step_inputs[..last] {
            graphs.run([t, p])?;
        }
        let (t, p) = &step_inputs[last];
        let out = graphs.run([t, p])?;
        rt.synchronize()?;
        graph_ms.push(started.elapsed().as_secs_f64() * 1e3);
        graph_logits = rt.download::<bf16>(&out)?;
    }

    let batched = median(batched_ms);
    let rows = [
        ("batched eager forward (`Llama::prefill`)", batched),
        ("one eager decode step per token", median(eager_ms)),
        ("one graph replay per token", median(graph_ms)),
    ];
    println!();
    println!("| prefill path | ms | tokens/s | vs batched |");
    println!("|---|---:|---:|---:|");
    for (name, ms) in rows {
        println!(
            "| {name} | {ms:.2} | {:.0} | {:.1}x |",
            prompt_len as f64 / (ms / 1e3),
            ms / batched
        );
    }
    println!();
    println!(
        "last-token logits, batched vs eager steps: relative error {:.3e}; vs graph steps {:.3e}",
        relative_error_bf16(&batched_logits, &eager_logits),
        relative_error_bf16(&batched_logits, &graph_logits)
    );
    println!(
        "prefill tok/s batched: {:.0}\nprefill tok/s graph steps: {:.0}",
        prompt_len as f64 / (batched / 1e3),
        prompt_len as f64 / (rows[2].1 / 1e3)
    );
    Ok(())
}
