//! Captures a decoder shaped like Qwen3-0.6B into 35 CUDA graphs and benchmarks eager against
//! graph replay per batch size. The README's main command:
//!
//! ```text
//! cargo run --release --example decode_bench
//! ```
//!
//! Options: `--iters N` (timed iterations per size, default 50), `--batches 1,8,300` (sizes to
//! time; sizes above the largest captured one run the eager fallback), `--json FILE` (every
//! figure, machine-readable, for `scripts/bench.sh`), `--tp N` (tensor parallelism over N GPUs,
//! one thread per GPU, NCCL all-reduces inside the graphs: tp = N against tp = 1; see `tp.rs`),
//! `--growth` (capture 35, 67 and 512 sizes too: per-graph time and pool; see `floor.rs`),
//! `--prefill-bench N` (a prompt of N tokens prefilled in one forward against one step per
//! token; see `prefill.rs`), `--islands-bench` (the decoder with its attention as an eager
//! island in every layer against the full graph and eager, at b = 1, 8, 64, 256 unless
//! `--batches` says; see `islands.rs`), `--multi-bench` (the decode step of q = 1..4 tokens per
//! sequence graphed by batch and q, against q single-token steps; see `multi.rs`),
//! `--keys-growth` (capture cost and pool of 35 sizes, x 3 draft widths, x 2 sampling variants;
//! see `keys.rs`), `--serve-start` (issue 29's start-up: from `main()` to the first served
//! forward with background capture, and to all graphs live; see `serve_start.rs`).
//!
//! With `--model DIR` it loads a Hugging Face checkpoint folder instead and generates greedily
//! with the eager forward and with the graphs (see `generate.rs`).

mod bench;
mod common;
mod floor;
mod generate;
mod islands;
mod keys;
mod multi;
mod prefill;
mod serve_start;
#[cfg(feature = "nccl")]
mod tp;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cudagraph::Runtime;

/// Command-line options.
pub struct Options {
    /// Timed iterations per batch size.
    pub iters: usize,
    /// Batch sizes to time.
    pub batches: Vec<usize>,
    /// Where to write the figures as JSON.
    pub json: Option<PathBuf>,
    /// Generation mode (`--model DIR` ...).
    pub generate: generate::GenerateOptions,
    /// Tensor parallelism (`--tp N`); 1: the single-GPU benchmark.
    pub tp: usize,
    /// Also capture 35, 67 and 512 sizes to show the cost growth (`--growth`).
    pub growth: bool,
    /// Benchmark the prefill of a prompt of this many tokens instead (`--prefill-bench N`).
    pub prefill_bench: Option<usize>,
    /// Benchmark eager islands instead (`--islands-bench`).
    pub islands_bench: bool,
    /// Benchmark the multi-token step instead (`--multi-bench`).
    pub multi_bench: bool,
    /// Capture cost and pool as the key space grows instead (`--keys-growth`).
    pub keys_growth: bool,
    /// Time start-up to the first served forward instead (`--serve-start`).
    pub serve_start: bool,
    /// Whether `--batches` was given.
    pub batches_given: bool,
}

fn parse_options() -> std::result::Result<Options, String> {
    let mut opts = Options {
        iters: 50,
        batches: vec![1, 8, 32, 64, 128, 256, 300],
        json: None,
        generate: Default::default(),
        tp: 1,
        growth: false,
        prefill_bench: None,
        islands_bench: false,
        multi_bench: false,
        keys_growth: false,
        serve_start: false,
        batches_given: false,
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
                opts.batches_given = true;
            }
            "--json" => opts.json = Some(PathBuf::from(value("--json")?)),
            "--growth" => opts.growth = true,
            "--islands-bench" => opts.islands_bench = true,
            "--multi-bench" => opts.multi_bench = true,
            "--keys-growth" => opts.keys_growth = true,
            "--serve-start" => opts.serve_start = true,
            "--prefill-bench" => {
                opts.prefill_bench = Some(
                    value("--prefill-bench")?
                        .parse()
                        .map_err(|e| format!("--prefill-bench: {e}"))?,
                );
            }
            "--tp" => {
                opts.tp = value("--tp")?.parse().map_err(|e| format!("--tp: {e}"))?;
            }
            flag if generate::GenerateOptions::SWITCHES.contains(&flag) => {
                opts.generate.switch(flag)?;
            }
            flag if generate::GenerateOptions::FLAGS.contains(&flag) => {
                opts.generate.set(flag, &value(flag)?)?;
            }
            "-h" | "--help" => {
                return Err(format!(
                    "usage: decode_bench [--iters N] [--batches 1,8,300] [--json FILE] [--tp N] [--growth] [--prefill-bench N] [--islands-bench] [--multi-bench] [--keys-growth] [--serve-start] {}",
                    generate::GenerateOptions::USAGE
                ));
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    opts.generate.check()?;
    if opts.iters == 0 || opts.batches.contains(&0) || opts.tp == 0 {
        return Err("--iters, --tp and every batch size must be at least 1".into());
    }
    if opts.prefill_bench == Some(0) {
        return Err("--prefill-bench needs at least 1 token".into());
    }
    if opts.prefill_bench.is_some() && (opts.tp > 1 || opts.generate.enabled()) {
        return Err("--prefill-bench runs on its own (not with --tp or --model)".into());
    }
    if opts.islands_bench
        && (opts.tp > 1 || opts.generate.enabled() || opts.prefill_bench.is_some())
    {
        return Err(
            "--islands-bench runs on its own (not with --tp, --model or --prefill-bench)".into(),
        );
    }
    if opts.tp > 1 && opts.generate.enabled() {
        return Err("--tp runs the benchmark; it does not combine with --model".into());
    }
    Ok(opts)
}

fn main() -> ExitCode {
    // First: `--serve-start` measures from here.
    let main_started = Instant::now();
    let opts = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if opts.tp > 1 {
        // Before anything else: it sets the environment while this is the only thread.
        #[cfg(feature = "nccl")]
        return tp::main(&opts);
        #[cfg(not(feature = "nccl"))]
        {
            eprintln!("decode_bench: --tp needs the `nccl` feature (on by default)");
            return ExitCode::from(2);
        }
    }
    let started = Instant::now();
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            println!("decode_bench: no GPU available ({e}); nothing to benchmark.");
            return ExitCode::from(1);
        }
    };
    if opts.generate.enabled() {
        return generate::main(&rt, &opts.generate);
    }
    if opts.serve_start {
        let context_s = started.elapsed().as_secs_f64();
        return match serve_start::run(&rt, main_started, context_s, opts.json.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("decode_bench --serve-start failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(len) = opts.prefill_bench {
        return match prefill::run(&rt, len, opts.iters.min(20)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("decode_bench --prefill-bench failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if opts.keys_growth {
        return match keys::run(&rt) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("decode_bench --keys-growth failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if opts.multi_bench {
        let batches = if opts.batches_given {
            opts.batches.clone()
        } else {
            vec![1, 8, 32, 64]
        };
        return match multi::run(&rt, &batches, opts.iters) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("decode_bench --multi-bench failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if opts.islands_bench {
        let batches = if opts.batches_given {
            opts.batches.clone()
        } else {
            islands::DEFAULT_BATCHES.to_vec()
        };
        return match islands::run(&rt, &batches, opts.iters) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("decode_bench --islands-bench failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let context_s = started.elapsed().as_secs_f64();
    match bench::run(&rt, &opts, context_s) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("decode_bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
