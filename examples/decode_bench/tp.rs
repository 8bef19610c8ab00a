//! `decode_bench --tp N`: the Qwen3-0.6B-shaped decoder sharded over N GPUs (one thread per GPU,
//! NCCL all-reduces inside every rank's graphs), against the same weights on one GPU.
//!
//! 1. Full weights are drawn once on the host (`tp::random_weights`, seed 0) and the inputs of
//!    every batch size too, so tp = 1 and tp = N see exactly the same numbers.
//! 2. tp = 1 on device 0: the eager logits of every batch (the reference), capture of all 35
//!    sizes, eager and graph timings. Then it is dropped (device 0's memory is freed).
//! 3. tp = N (`tp::run_ranks`): every rank uploads its shard and captures its 35 graphs at the
//!    same time; per batch, tp = N eager and graph timings (each iteration starts on every rank
//!    at once, after a spinning barrier, and counts until the slowest rank's stream is done) and
//!    rank 0's graph logits against the tp = 1 eager logits (bf16 tolerance 2e-2).
//!
//! Both models see the batches in the same order, each batch repeated (a repeat writes the
//! same keys and values again), so their KV caches hold the same entries at every comparison.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use cudagraph::{Result, Runtime, Tensor};
use cudagraph_models::llama::{Llama, LlamaConfig};
use cudagraph_models::tp::{self, NVLS_ENV, TpLlama, run_ranks};
use cudagraph_models::weights::LlamaWeights;
use half::bf16;

use crate::Options;
use crate::common::{Inputs, median, relative_error_bf16};

/// tp = N against tp = 1: partial sums rounded to bf16 before the all-reduce.
const TP_TOL: f64 = 2e-2;

/// Warm-up iterations before the timed ones.
const WARMUP: usize = 3;

/// Runs `--tp N` (N > 1). Called by `main` before any other thread exists: when
/// `NCCL_NVLS_ENABLE` is unset it sets it to 0 (NVLink multicast off), and refuses to run when
/// it is set to anything else.
pub fn main(opts: &Options) -> ExitCode {
    let world = opts.tp;
    match std::env::var(NVLS_ENV) {
        Ok(v) if v.trim() == "0" => {}
        Ok(v) => {
            eprintln!(
                "decode_bench --tp {world}: {NVLS_ENV}={v}; NVLink multicast must stay off on these hosts: run with {NVLS_ENV}=0"
            );
            return ExitCode::from(2);
        }
        Err(_) => {
            // SAFETY: `main` calls this before it spawns any thread and before the CUDA driver
            // or NCCL are loaded (they may start threads), so nothing reads the environment
            // concurrently.
            unsafe { std::env::set_var(NVLS_ENV, "0") };
        }
    }
    match Runtime::device_count() {
        Err(e) => {
            println!("decode_bench --tp {world}: no GPU available ({e}); nothing to benchmark.");
            return ExitCode::from(1);
        }
        Ok(count) if count < world => {
            println!(
                "decode_bench --tp {world}: needs {world} GPUs, {count} visible; nothing to benchmark."
            );
            return ExitCode::from(1);
        }
        Ok(_) => {}
    }
    if !tp::nccl_available() {
        println!(
            "decode_bench --tp {world}: NCCL cannot be loaded (cudarc opens libnccl.so; where only libnccl.so.2 is installed, link it as libnccl.so in a folder on LD_LIBRARY_PATH, as scripts/gpu-run.sh does); nothing to benchmark."
        );
        return ExitCode::from(1);
    }
    match run(opts, world) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "decode_bench --tp {world}: tp={world} differs from tp=1 beyond {TP_TOL:.0e}"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("decode_bench --tp {world} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One batch's inputs, on the host.
struct Batch {
    n: usize,
    tokens: Vec<u32>,
    positions: Vec<i32>,
}

impl Batch {
    fn draw(inputs: &mut Inputs, cfg: &LlamaConfig, n: usize) -> Self {
        let (tokens, positions) = inputs.draw_host(cfg, n);
        Self {
            n,
            tokens,
            positions,
        }
    }

    fn upload(&self, rt: &Runtime) -> Result<(Tensor, Tensor)> {
        Ok((
            rt.upload(&self.tokens, &[self.n])?,
            rt.upload(&self.positions, &[self.n])?,
        ))
    }
}

/// What one model (tp = 1, or one rank of tp = N) measured.
struct Measured {
    capture_s: f64,
    graphs: usize,
    nodes_b1: usize,
    pool_bytes: usize,
    rows: Vec<Row>,
}

/// One batch: graph or fallback, the logits kept for the comparison (tp = 1: eager; rank 0 of
/// tp = N: graph; other ranks: none), the relative error of the graph against the same model's
/// eager forward, and the timed samples.
struct Row {
    replayed: bool,
    logits: Option<Vec<bf16>>,
    graph_vs_eager: f64,
    eager_s: Vec<f64>,
    graph_s: Vec<f64>,
}

/// Per iteration, the slowest rank's time; then the median (µs).
fn slowest_rank_median(per_rank: &[&Vec<f64>]) -> f64 {
    let len = per_rank.iter().map(|s| s.len()).min().unwrap_or(0);
    let slowest = (0..len)
        .map(|i| per_rank.iter().map(|s| s[i]).fold(0f64, f64::max))
        .collect();
    median(slowest) * 1e6
}

fn run(opts: &Options, world: usize) -> Result<bool> {
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let local = tp::shard_config(&cfg, world)?;
    let nccl = tp::nccl_version()?;
    let started = Instant::now();
    let weights = tp::random_weights(&cfg, 0)?;
    let weights_s = started.elapsed().as_secs_f64();
    let mut devices = Vec::with_capacity(world);
    for ordinal in 0..world {
        devices.push(Runtime::new(ordinal)?.device_name()?);
    }
    println!(
        "devices: {} | NCCL {}.{}.{} ({NVLS_ENV}=0) | model: Qwen3-0.6B-shaped decoder ({cfg}), bf16, random host weights (seed 0, drawn in {weights_s:.2} s)",
        devices.join(", "),
        nccl / 10000,
        nccl / 100 % 100,
        nccl % 100,
    );
    println!(
        "tp={world}: one thread per GPU; per rank {} q heads, {} KV heads, MLP {}; embedding, norms and LM head replicated; 2 all-reduces per layer inside the graphs",
        local.q_heads, local.kv_heads, local.intermediate
    );

    let mut inputs = Inputs(0x5EED);
    let warm = Batch::draw(&mut inputs, &cfg, 256);
    let batches: Vec<Batch> = opts
        .batches
        .iter()
        .map(|&n| Batch::draw(&mut inputs, &cfg, n))
        .collect();

    let one = single_gpu(opts, &cfg, &weights, &warm, &batches)?;
    let ranks = tensor_parallel(opts, world, &cfg, &weights, &warm, &batches)?;
    report(opts, world, nccl, cfg.layers, &one, &ranks, &batches)
}

/// tp = 1 on device 0.
fn single_gpu(
    opts: &Options,
    cfg: &LlamaConfig,
    weights: &LlamaWeights,
    warm: &Batch,
    batches: &[Batch],
) -> Result<Measured> {
    let rt = Runtime::new(0)?;
    let model = Llama::from_weights(&rt, cfg.clone(), weights)?;
    let (tokens, positions) = warm.upload(&rt)?;
    drop(model.forward(&rt, &tokens, &positions)?);
    rt.synchronize()?;
    let started = Instant::now();
    let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
    let capture_s = started.elapsed().as_secs_f64();
    let mut rows = Vec::with_capacity(batches.len());
    for batch in batches {
        let (tokens, positions) = batch.upload(&rt)?;
        let eager = rt.download::<bf16>(&model.forward(&rt, &tokens, &positions)?)?;
        let (replayed, graph) = {
            let out = graphs.run([&tokens, &positions])?;
            (out.replayed(), rt.download::<bf16>(&out)?)
        };
        for _ in 0..WARMUP {
            drop(model.forward(&rt, &tokens, &positions)?);
            drop(graphs.run([&tokens, &positions])?);
        }
        rt.synchronize()?;
        let (mut eager_s, mut graph_s) = (Vec::new(), Vec::new());
        for _ in 0..opts.iters {
            let t = Instant::now();
            drop(model.forward(&rt, &tokens, &positions)?);
            rt.synchronize()?;
            eager_s.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            drop(graphs.run([&tokens, &positions])?);
            rt.synchronize()?;
            graph_s.push(t.elapsed().as_secs_f64());
        }
        rows.push(Row {
            replayed,
            graph_vs_eager: relative_error_bf16(&graph, &eager),
            logits: Some(eager),
            eager_s,
            graph_s,
        });
    }
    let stats = graphs.stats();
    Ok(Measured {
        capture_s,
        graphs: stats.sizes.len(),
        nodes_b1: stats.sizes.first().map_or(0, |s| s.nodes),
        pool_bytes: stats.pool_bytes,
        rows,
    })
}

/// tp = `world`: one thread per GPU, every phase in lockstep.
fn tensor_parallel(
    opts: &Options,
    world: usize,
    cfg: &LlamaConfig,
    weights: &LlamaWeights,
    warm: &Batch,
    batches: &[Batch],
) -> Result<Vec<Measured>> {
    // SAFETY: every rank runs this closure on the same configuration and weights' shapes: the
    // same all-reduces when building its shard, one eager forward of `warm`, the same captured
    // sizes, then the same `batches` in the same order (the same eager and replayed sizes the
    // same number of times), with a barrier before each phase; only rank 0's extra work
    // (downloads) is not a collective.
    unsafe {
        run_ranks(world, |rank| {
            let sync = rank.sync;
            let lead = rank.rank == 0;
            let rt = Runtime::new(rank.rank)?;
            let model = TpLlama::from_weights(&rt, cfg.clone(), weights, &rank)?;
            let (tokens, positions) = warm.upload(&rt)?;
            sync.wait()?;
            drop(model.forward(&rt, &tokens, &positions)?);
            rt.synchronize()?;
            sync.wait()?;
            let started = Instant::now();
            let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
            let capture_s = started.elapsed().as_secs_f64();
            let mut rows = Vec::with_capacity(batches.len());
            for batch in batches {
                let (tokens, positions) = batch.upload(&rt)?;
                sync.wait()?;
                let eager = model.forward(&rt, &tokens, &positions)?;
                let eager = lead.then(|| rt.download::<bf16>(&eager)).transpose()?;
                rt.synchronize()?;
                sync.wait()?;
                let (replayed, graph) = {
                    let out = graphs.run([&tokens, &positions])?;
                    let graph = lead.then(|| rt.download::<bf16>(&out)).transpose()?;
                    (out.replayed(), graph)
                };
                rt.synchronize()?;
                for _ in 0..WARMUP {
                    sync.wait()?;
                    drop(model.forward(&rt, &tokens, &positions)?);
                    drop(graphs.run([&tokens, &positions])?);
                }
                rt.synchronize()?;
                let (mut eager_s, mut graph_s) = (Vec::new(), Vec::new());
                for _ in 0..opts.iters {
                    sync.wait()?;
                    let t = Instant::now();
                    drop(model.forward(&rt, &tokens, &positions)?);
                    rt.synchronize()?;
                    eager_s.push(t.elapsed().as_secs_f64());
                    sync.wait()?;
                    let t = Instant::now();
                    drop(graphs.run([&tokens, &positions])?);
                    rt.synchronize()?;
                    graph_s.push(t.elapsed().as_secs_f64());
                }
                let graph_vs_eager = match (&graph, &eager) {
                    (Some(g), Some(e)) => relative_error_bf16(g, e),
                    _ => f64::NAN,
                };
                rows.push(Row {
                    replayed,
                    logits: graph,
                    graph_vs_eager,
                    eager_s,
                    graph_s,
                });
            }
            sync.wait()?;
            let stats = graphs.stats();
            Ok(Measured {
                capture_s,
                graphs: stats.sizes.len(),
                nodes_b1: stats.sizes.first().map_or(0, |s| s.nodes),
                pool_bytes: stats.pool_bytes,
                rows,
            })
        })
    }
}

/// Prints the capture summary and the per-batch table; writes `--json`. `Ok(false)` when a
/// batch's tp = N logits differ from tp = 1's beyond the tolerance.
fn report(
    opts: &Options,
    world: usize,
    nccl: u32,
    layers: usize,
    one: &Measured,
    ranks: &[Measured],
    batches: &[Batch],
) -> Result<bool> {
    let lead = ranks
        .first()
        .ok_or_else(|| cudagraph::Error::invalid("decode_bench --tp", "no rank"))?;
    let capture_tp = ranks.iter().map(|r| r.capture_s).fold(0f64, f64::max);
    let per_rank: Vec<String> = ranks
        .iter()
        .enumerate()
        .map(|(r, m)| format!("rank {r} {:.3} s", m.capture_s))
        .collect();
    println!();
    println!(
        "capture of {} graphs: tp=1 {:.3} s (pool {:.1} MiB); tp={world} {capture_tp:.3} s, slowest rank ({}; pool {:.1} MiB per rank)",
        one.graphs,
        one.capture_s,
        one.pool_bytes as f64 / (1 << 20) as f64,
        per_rank.join(", "),
        lead.pool_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "graph nodes at batch 1: tp=1 {}, tp={world} {} per rank (the shard's kernels plus the all-reduces, {} layers x 2)",
        one.nodes_b1, lead.nodes_b1, layers
    );
    println!();
    println!(
        "| batch | path     | tp=1 eager µs | tp=1 graph µs | tp={world} eager µs | tp={world} graph µs | tp={world} / tp=1 graph | rel. err tp={world} graph vs tp=1 eager | tp={world} graph vs its eager |"
    );
    println!(
        "|------:|----------|--------------:|--------------:|--------------:|--------------:|--------:|--------:|--------:|"
    );
    let mut ok = true;
    let mut json = Json::default();
    for (i, batch) in batches.iter().enumerate() {
        let r1 = &one.rows[i];
        let e1 = median(r1.eager_s.clone()) * 1e6;
        let g1 = median(r1.graph_s.clone()) * 1e6;
        let eager_tp: Vec<&Vec<f64>> = ranks.iter().map(|m| &m.rows[i].eager_s).collect();
        let graph_tp: Vec<&Vec<f64>> = ranks.iter().map(|m| &m.rows[i].graph_s).collect();
        let (en, gn) = (
            slowest_rank_median(&eager_tp),
            slowest_rank_median(&graph_tp),
        );
        let row = &lead.rows[i];
        let err = match (&row.logits, &r1.logits) {
            (Some(g), Some(e)) => relative_error_bf16(g, e),
            _ => f64::NAN,
        };
        // NaN fails too.
        let within = err <= TP_TOL;
        ok &= within;
        println!(
            "| {:>5} | {:<8} | {e1:>13.1} | {g1:>13.1} | {en:>13.1} | {gn:>13.1} | {:>6.2}x | {err:>7.2e}{} | {:>7.2e} |",
            batch.n,
            if row.replayed { "graph" } else { "fallback" },
            gn / g1,
            if within { "" } else { " FAIL" },
            row.graph_vs_eager
        );
        let key = batch.n.to_string();
        json.tp1_eager.push((key.clone(), e1));
        json.tp1_graph.push((key.clone(), g1));
        json.tp_eager.push((key.clone(), en));
        json.tp_graph.push((key.clone(), gn));
        json.rel_err.push((key, err));
    }
    println!();
    println!(
        "tp={world} graph logits (rank 0) vs tp=1 eager logits: {} (bf16 tolerance {TP_TOL:.0e}); tp=1 graph vs eager at the same sizes: worst {:.2e}",
        if ok { "all within" } else { "SOME BEYOND" },
        one.rows
            .iter()
            .map(|r| r.graph_vs_eager)
            .fold(0f64, f64::max)
    );
    if let Some(path) = &opts.json {
        let text = json.render(world, nccl, one.capture_s, capture_tp);
        std::fs::write(path, text)
            .map_err(|e| cudagraph::Error::invalid("--json", format!("{}: {e}", path.display())))?;
        println!("figures written to {}", path.display());
    }
    Ok(ok)
}

/// The figures `--json` writes.
#[derive(Default)]
struct Json {
    tp1_eager: Vec<(String, f64)>,
    tp1_graph: Vec<(String, f64)>,
    tp_eager: Vec<(String, f64)>,
    tp_graph: Vec<(String, f64)>,
    rel_err: Vec<(String, f64)>,
}

impl Json {
    fn render(&self, world: usize, nccl: u32, capture_tp1: f64, capture_tp: f64) -> String {
        let map = |entries: &[(String, f64)]| {
            let mut s = String::from("{");
            for (i, (k, v)) in entries.iter().enumerate() {
                let v = if v.is_finite() {
                    v.to_string()
                } else {
                    "null".into()
                };
                let _ = write!(s, "{}\"{k}\": {v}", if i > 0 { ", " } else { "" });
            }
            s.push('}');
            s
        };
        format!(
            "{{\n  \"tp\": {world},\n  \"nccl_version\": {nccl},\n  \"capture_tp1_s\": {capture_tp1},\n  \"capture_tp_s\": {capture_tp},\n  \"tp1_eager_us\": {},\n  \"tp1_replay_us\": {},\n  \"tp_eager_us\": {},\n  \"tp_replay_us\": {},\n  \"rel_err_tp_graph_vs_tp1_eager\": {}\n}}\n",
            map(&self.tp1_eager),
            map(&self.tp1_graph),
            map(&self.tp_eager),
            map(&self.tp_graph),
            map(&self.rel_err)
        )
    }
}
