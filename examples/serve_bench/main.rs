//! A continuous-batching serving loop on the native decoder, run on one seeded trace in four
//! modes side by side: eager; decode-only graphs with eager mixed steps (mistral.rs's
//! approach); every step in a graph; attention in eager islands (vLLM's piecewise graphs).
//!
//! ```text
//! cargo run --release --example serve_bench
//! cargo run --release --example serve_bench -- --model /path/to/Qwen3-0.6B
//! ```
//!
//! Options: `--model DIR` (a Hugging Face checkpoint folder; default: a random decoder shaped
//! like Qwen3-0.6B), `--requests N` (128), `--rate R` (arrivals per second, 16), `--budget N`
//! (tokens per step, at most 512: the largest captured step, 512), `--max-prompt N` (2048),
//! `--max-output N` (512), `--max-running N` (sequences at once, 64: KV-cache slots, fewer if
//! memory is short), `--seed N` (0), `--modes eager,decode,graphs,islands`.
//!
//! Per mode it prints output tokens/s, time to first token and time per output token (p50,
//! p99), the share of steps replayed, padding waste, fallbacks, and the run's floor: each
//! step's weight and KV bytes streamed at the measured memory bandwidth, summed (memory
//! traffic only, and over that mode's own steps: compare wall / floor within a mode).
//!
//! Under a light load (the default rate) the run lasts about as long as the arrivals do, so
//! output tokens/s follows the arrival rate and the modes differ in time per output token;
//! `--rate inf` (every request at once) makes tokens/s the modes' throughput.

#[allow(dead_code)]
#[path = "../decode_bench/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../decode_bench/floor.rs"]
mod floor;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use cudagraph::Runtime;
use cudagraph_models::hf::{Checkpoint, LoadOptions};
use cudagraph_models::llama::{Llama, LlamaConfig};
use cudagraph_models::serving::{RunReport, SchedulerConfig, TraceConfig, chat_trace};

use run::Mode;

/// Command-line options.
struct Options {
    model: Option<PathBuf>,
    requests: usize,
    rate: f64,
    budget: usize,
    max_prompt: usize,
    max_output: usize,
    max_running: usize,
    seed: u64,
    modes: Vec<Mode>,
}

type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn parse() -> BoxResult<Options> {
    let mut o = Options {
        model: None,
        requests: 128,
        rate: 16.0,
        budget: 512,
        max_prompt: 2048,
        max_output: 512,
        max_running: 64,
        seed: 0,
        modes: vec![Mode::Eager, Mode::DecodeGraphs, Mode::Graphs, Mode::Islands],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--model" => o.model = Some(PathBuf::from(value()?)),
            "--requests" => o.requests = value()?.parse()?,
            "--rate" => o.rate = value()?.parse()?,
            "--budget" => o.budget = value()?.parse()?,
            "--max-prompt" => o.max_prompt = value()?.parse()?,
            "--max-output" => o.max_output = value()?.parse()?,
            "--max-running" => o.max_running = value()?.parse()?,
            "--seed" => o.seed = value()?.parse()?,
            "--modes" => {
                o.modes = value()?
                    .split(',')
                    .map(Mode::parse)
                    .collect::<Result<_, _>>()?
            }
            other => {
                return Err(format!("unknown option {other} (see the file's doc comment)").into());
            }
        }
    }
    if o.budget == 0 || o.budget > 512 {
        return Err(format!(
            "--budget {} must be 1..=512 (the largest captured step)",
            o.budget
        )
        .into());
    }
    if o.max_prompt < 16 || o.max_output < 16 || o.max_running == 0 {
        return Err("--max-prompt and --max-output must be >= 16, --max-running >= 1".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("serve_bench: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            println!("serve_bench: no GPU available ({e}); nothing to run.");
            return ExitCode::SUCCESS;
        }
    };
    match serve(&rt, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(rt: &Runtime, opts: &Options) -> BoxResult<()> {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    // A small cache first: the graphs' memory is measured, then the cache takes what is left.
    let model = match &opts.model {
        Some(dir) => {
            // The checkpoint's own checks (a sliding window shorter than the cache, ...) against
            // the positions a slot will have, before loading it with the small cache.
            let final_cache = LoadOptions {
                cache_slots: 1,
                cache_tokens: (opts.max_prompt + opts.max_output - 1).next_multiple_of(16),
            };
            drop(Checkpoint::open(dir, &final_cache)?);
            let load = LoadOptions {
                cache_slots: opts.max_running,
                cache_tokens: 16,
            };
            Checkpoint::open(dir, &load)?.load(rt)?
        }
        None => {
            let cfg = LlamaConfig {
                cache_slots: opts.max_running,
                cache_tokens: 16,
                ..LlamaConfig::qwen3_0_6b_shaped()
            };
            Llama::random(rt, cfg, opts.seed)?
        }
    };
    let specs = model.step_input_specs()?;
    let full = model.forward_step_graph_memory(rt, specs)?;
    let pieces = model.forward_step_islands_graph_memory(rt, specs)?;
    let graphs_bytes = full.total().max(pieces.total());
    let slot_positions = (opts.max_prompt + opts.max_output - 1).next_multiple_of(16);
    let per_slot = model
        .kv_bytes_per_slot(slot_positions)
        .ok_or("the KV cache's size overflows")?;
    let (free, total) = rt.mem_info()?;
    // Kept free beside the graphs and the cache: the eager steps' activations and the
    // libraries' workspaces.
    let margin = 2usize << 30;
    let fit = free.saturating_sub(graphs_bytes + margin) / per_slot;
    let slots = fit.min(opts.max_running);
    println!(
        "memory: {:.0} MiB free of {:.0} MiB; graphs of the largest step {:.1} MiB (pool {:.1} + static inputs {:.1}; islands {:.1}), margin {:.0} MiB; KV cache {slots} slots x {slot_positions} positions x {:.2} MiB = {:.0} MiB (room for {fit}, capped at --max-running {})",
        mib(free),
        mib(total),
        mib(graphs_bytes),
        mib(full.pool_bytes),
        mib(full.static_input_bytes),
        mib(pieces.total()),
        mib(margin),
        mib(per_slot),
        mib(per_slot * slots),
        opts.max_running
    );
    if slots == 0 {
        return Err("no memory is left for a single KV-cache slot".into());
    }
    let model = model.with_cache(rt, slots, slot_positions)?;
    let trace = chat_trace(&TraceConfig {
        requests: opts.requests,
        rate_per_s: opts.rate,
        prompt: (16, opts.max_prompt),
        output: (16, opts.max_output),
        vocab: model.config().vocab,
        seed: opts.seed,
    })?;
    let prompt_tokens: usize = trace.iter().map(|r| r.prompt.len()).sum();
    let output_tokens: usize = trace.iter().map(|r| r.output_len).sum();
    println!(
        "trace: {} requests over {:.1} s (seed {}), {prompt_tokens} prompt and {output_tokens} output tokens; budget {} tokens a step",
        trace.len(),
        trace.last().map_or(0.0, |r| r.arrival_s),
        opts.seed,
        opts.budget
    );
    let bandwidth = {
        let bytes = 1usize << 30;
        bytes as f64 / (floor::memory_floor_us(rt, bytes)? * 1e-6)
    };
    println!("memory floor: {:.2} TB/s streamed", bandwidth / 1e12);
    let cfg = SchedulerConfig {
        token_budget: opts.budget,
        slots,
        slot_positions,
    };
    let mut reports: Vec<RunReport> = Vec::new();
    let mut outputs = Vec::new();
    for &mode in &opts.modes {
        let (report, tokens) = run::run(rt, &model, mode, cfg, &trace, bandwidth)?;
        println!("{}", report.row());
        reports.push(report);
        outputs.push((mode, tokens));
    }
    println!("\n{}", RunReport::header());
    for r in &reports {
        println!("{}", r.row());
    }
    // Greedy decoding of one trace: every mode should generate the same tokens, up to the
    // kernels' rounding (graphed and eager GEMMs of different row counts may differ in the last
    // bit, which can flip a near tie).
    if let Some((first_mode, first)) = outputs.first() {
        for (mode, tokens) in &outputs[1..] {
            let same = first.iter().zip(tokens).filter(|(a, b)| a == b).count();
            println!(
                "requests whose tokens match {} exactly in {}: {same} of {}",
                first_mode.name(),
                mode.name(),
                first.len()
            );
        }
    }
    Ok(())
}
