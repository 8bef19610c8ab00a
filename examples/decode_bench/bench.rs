//! The benchmark: start-up broken down, capture of all sizes, eager vs graph per batch size,
//! host time of one `run()`, lazy capture, and capture with and without the freeze scope.

use std::fmt::Write as _;
use std::time::Instant;

use cudagraph::kernels::modules::ALL_MODULES;
use cudagraph::{GemmBackend, GraphPlan, ReclaimPolicy, Result, Runner, Runtime};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::Options;
use crate::common::{Inputs, forward_sizes, median, relative_error_tensors};
use crate::floor;

/// Figures collected for `--json`.
#[derive(Default)]
struct Report {
    fields: Vec<(String, String)>,
}

impl Report {
    fn num(&mut self, key: &str, value: f64) {
        self.fields.push((key.into(), format!("{value}")));
    }

    fn text(&mut self, key: &str, value: &str) {
        self.fields.push((key.into(), format!("{value:?}")));
    }

    fn map(&mut self, key: &str, entries: &[(String, f64)]) {
        let mut s = String::from("{");
        for (i, (k, v)) in entries.iter().enumerate() {
            let _ = write!(s, "{}\"{k}\": {v}", if i > 0 { ", " } else { "" });
        }
        s.push('}');
        self.fields.push((key.into(), s));
    }

    /// A value already written as JSON (an array of objects, say).
    fn raw(&mut self, key: &str, json: String) {
        self.fields.push((key.into(), json));
    }

    fn to_json(&self) -> String {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("  \"{k}\": {v}"))
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }
}

/// Runs the whole benchmark; `context_s` is the time `Runtime::new` took.
pub fn run(rt: &Runtime, opts: &Options, context_s: f64) -> Result<()> {
    let mut report = Report::default();
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let device = rt.device_name()?;
    let gemm = match rt.resolved_gemm_backend() {
        GemmBackend::Builtin => "built-in kernel (CUDAGRAPH_GEMM)",
        GemmBackend::Cublas | GemmBackend::Auto if rt.cublaslt_enabled() => "cuBLAS",
        GemmBackend::Cublas | GemmBackend::Auto => "cuBLAS (cublasGemmEx: CUDAGRAPH_CUBLASLT=off)",
    };
    println!(
        "device: {device} | model: Qwen3-0.6B-shaped decoder ({cfg}), bf16, random weights (seed 0) | GEMM: {gemm}"
    );
    report.text("device", &device);
    report.text("gemm", gemm);

    // Start-up, broken down: context (measured by the caller), kernel modules, weights, capture.
    let started = Instant::now();
    for module in ALL_MODULES {
        for &name in module.functions {
            rt.function(module, name)?;
        }
    }
    let compile_s = started.elapsed().as_secs_f64();
    let kernels = rt.kernel_cache_stats();
    let started = Instant::now();
    let model = Llama::random(rt, cfg.clone(), 0)?;
    let weights_s = started.elapsed().as_secs_f64();

    // One eager forward at the largest captured size first (cuBLAS set-up, lazy loading of the
    // kernels that size uses), as PyTorch's peer does before its capture: reported apart.
    let started = Instant::now();
    let (tokens, positions) = Inputs(7).draw(rt, &cfg, 256)?;
    drop(model.forward(rt, &tokens, &positions)?);
    rt.synchronize()?;
    let first_forward_s = started.elapsed().as_secs_f64();
    let algos_before = rt.gemm_algo_stats();

    let started = Instant::now();
    let mut graphs = model.forward_graphs(rt, cfg.input_specs()?)?;
    let capture_s = started.elapsed().as_secs_f64();
    let algos = rt.gemm_algo_stats();
    let stats = graphs.stats().clone();
    let parts = stats.capture_parts();
    let nodes_b1 = stats.sizes.first().map_or(0, |s| s.nodes);
    println!(
        "start-up: context {context_s:.3} s, kernel modules {compile_s:.3} s ({} compiled, {} from the disk cache), weights {weights_s:.3} s, first forward {first_forward_s:.3} s, capture {capture_s:.3} s; total {:.3} s",
        kernels.compiled,
        kernels.from_disk,
        context_s + compile_s + weights_s + first_forward_s + capture_s
    );
    println!(
        "captured {} graphs in {:.3} s (warm-up {:.3} s, record {:.3} s, instantiate {:.3} s, upload {:.3} s); pool {:.1} MiB (largest graph alone {:.1} MiB); {} kernel nodes at batch 1",
        stats.sizes.len(),
        stats.capture_wall.as_secs_f64(),
        parts.warmup.as_secs_f64(),
        parts.record.as_secs_f64(),
        parts.instantiate.as_secs_f64(),
        parts.upload.as_secs_f64(),
        stats.pool_bytes as f64 / (1 << 20) as f64,
        stats.largest_graph_need() as f64 / (1 << 20) as f64,
        nodes_b1
    );
    if algos.plans > 0 {
        println!(
            "GEMM algorithms (cuBLASLt, one per shape and batch bucket): {} heuristic queries ({:.1} ms; {} of them during the capture, {:.1} ms), {} read from disk; {} GEMM plans ({:.1} ms, {} during the capture)",
            algos.heuristic_queries,
            algos.heuristic_time.as_secs_f64() * 1e3,
            algos.heuristic_queries - algos_before.heuristic_queries,
            (algos.heuristic_time - algos_before.heuristic_time).as_secs_f64() * 1e3,
            algos.from_disk,
            algos.plans,
            algos.plan_time.as_secs_f64() * 1e3,
            algos.plans - algos_before.plans,
        );
    }
    report.map(
        "gemm_algos",
        &[
            ("heuristic_queries".into(), algos.heuristic_queries as f64),
            (
                "heuristic_queries_in_capture".into(),
                (algos.heuristic_queries - algos_before.heuristic_queries) as f64,
            ),
            ("heuristic_s".into(), algos.heuristic_time.as_secs_f64()),
            ("from_disk".into(), algos.from_disk as f64),
            ("plans".into(), algos.plans as f64),
            ("plan_s".into(), algos.plan_time.as_secs_f64()),
        ],
    );
    report.map(
        "startup",
        &[
            ("context_s".into(), context_s),
            ("compile_s".into(), compile_s),
            ("modules_compiled".into(), kernels.compiled as f64),
            ("modules_from_disk".into(), kernels.from_disk as f64),
            ("weights_s".into(), weights_s),
            ("first_forward_s".into(), first_forward_s),
            ("capture_s".into(), capture_s),
            (
                "total_s".into(),
                context_s + compile_s + weights_s + first_forward_s + capture_s,
            ),
        ],
    );
    report.num("capture_s", stats.capture_wall.as_secs_f64());
    report.map(
        "capture_parts",
        &[
            ("warmup".into(), parts.warmup.as_secs_f64()),
            ("record".into(), parts.record.as_secs_f64()),
            ("instantiate".into(), parts.instantiate.as_secs_f64()),
            ("upload".into(), parts.upload.as_secs_f64()),
        ],
    );
    report.num("graphs", stats.sizes.len() as f64);
    report.num("pool_bytes", stats.pool_bytes as f64);
    report.num("largest_graph_bytes", stats.largest_graph_need() as f64);
    report.num("kernels_per_forward", nodes_b1 as f64);

    let mut inputs = Inputs(0x5EED);
    let (mut eager_us, mut replay_us) = (Vec::new(), Vec::new());
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
            (out.replayed(), relative_error_tensors(rt, &out, &eager)?)
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
        let (e, g) = (median(eager_s) * 1e6, median(graph_s) * 1e6);
        println!(
            "| {n:>5} | {:<8} | {e:>8.1} | {g:>8.1} | {:>6.2}x | {err:>25.2e} |",
            if replayed { "graph" } else { "fallback" },
            e / g
        );
        eager_us.push((n.to_string(), e));
        replay_us.push((n.to_string(), g));
    }
    report.map("eager_us", &eager_us);
    report.map("replay_us", &replay_us);

    // Host time of one run(): copy of the inputs + launch + bookkeeping, no GPU wait.
    let run_host_us = host_time_of_run(rt, &cfg, &mut graphs, &mut inputs)?;
    println!();
    println!(
        "host time of one run() at batch 1 (input copy + graph launch + bookkeeping): {run_host_us:.2} µs (median)"
    );
    report.num("run_host_us", run_host_us);
    let staged_host_us = host_time_of_staged_run(rt, &mut graphs)?;
    println!(
        "host time of one staged run at batch 1 (inputs written before, not timed; pad check + graph launch + bookkeeping): {staged_host_us:.2} µs (median)"
    );
    report.num("staged_run_host_us", staged_host_us);
    let launch_us = floor::kernel_launch_host_us(rt)?;
    println!("host time of one empty kernel launch: {launch_us:.2} µs (median)");
    report.num("kernel_launch_host_us", launch_us);

    // The memory floor: the bytes the batch-1 step reads, streamed by a kernel that does
    // nothing else, timed as a replay is.
    let step_bytes = cfg
        .decode_weight_bytes()
        .ok_or_else(|| cudagraph::Error::invalid("decode_bench", "weight bytes overflow"))?;
    let floor_us = floor::memory_floor_us(rt, step_bytes)?;
    let replay_b1 = replay_us.iter().find(|(b, _)| b == "1").map(|(_, us)| *us);
    println!(
        "memory floor at batch 1: {:.2} GB of weights streamed in {floor_us:.1} µs ({:.2} TB/s){}",
        step_bytes as f64 / 1e9,
        step_bytes as f64 / floor_us / 1e6,
        replay_b1.map_or(String::new(), |r| format!(
            "; graph replay {r:.1} µs = {:.2}x the floor",
            r / floor_us
        ))
    );
    report.num("step_bytes", step_bytes as f64);
    report.num("memory_floor_us", floor_us);

    size_advice(rt, &cfg, &mut graphs, &mut inputs)?;
    let stats = graphs.stats();
    println!(
        "replays: {}, eager fallbacks: {} (counted per reason: {:?}), padding waste {:.1}%",
        stats.replay_count(),
        stats.fallback_count(),
        stats.fallbacks,
        stats.padding_waste() * 100.0
    );
    drop(graphs);

    if opts.growth {
        drop(model);
        growth(rt, &cfg, &mut report)?;
        let model = Llama::random(rt, cfg.clone(), 0)?;
        return finish(rt, opts, &model, &mut inputs, report);
    }
    finish(rt, opts, &model, &mut inputs, report)
}

/// The figures measured after the main runner is gone: lazy capture, reclamation, refresh;
/// then the JSON.
fn finish(
    rt: &Runtime,
    opts: &Options,
    model: &Llama,
    inputs: &mut Inputs,
    mut report: Report,
) -> Result<()> {
    lazy_capture(rt, model, inputs, &mut report)?;
    compare_reclaim(rt, model, &mut report)?;
    compare_refresh(rt, model, &mut report)?;
    if let Some(path) = &opts.json {
        std::fs::write(path, report.to_json())
            .map_err(|e| cudagraph::Error::invalid("--json", format!("{}: {e}", path.display())))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

fn host_time_of_run(
    rt: &Runtime,
    cfg: &LlamaConfig,
    graphs: &mut Runner<'_, 2>,
    inputs: &mut Inputs,
) -> Result<f64> {
    let (tokens, positions) = inputs.draw(rt, cfg, 1)?;
    let mut samples = Vec::new();
    for round in 0..20 {
        rt.synchronize()?;
        for _ in 0..10 {
            let t = Instant::now();
            let out = graphs.run([&tokens, &positions])?;
            let host = t.elapsed().as_secs_f64();
            drop(out);
            if round > 0 {
                samples.push(host);
            }
        }
    }
    rt.synchronize()?;
    Ok(median(samples) * 1e6)
}

/// Host time of `Staged::run` at batch 1, the staging and its writes untimed (the same rows
/// each time, so the padded rows are known padded: no fill).
fn host_time_of_staged_run(rt: &Runtime, graphs: &mut Runner<'_, 2>) -> Result<f64> {
    let mut samples = Vec::new();
    for round in 0..20 {
        rt.synchronize()?;
        for _ in 0..10 {
            let staged = graphs.stage(1)?;
            let [tokens, positions] = staged.inputs();
            rt.upload_into(&[1u32], tokens)?;
            rt.upload_into(&[-1i32], positions)?; // a padded row: the cache keeps its bytes
            let t = Instant::now();
            let out = staged.run()?;
            let host = t.elapsed().as_secs_f64();
            drop(out);
            if round > 0 {
                samples.push(host);
            }
        }
    }
    rt.synchronize()?;
    Ok(median(samples) * 1e6)
}

/// Capture cost against the number of sizes (see [`floor::growth`]), printed and reported as
/// `growth`.
fn growth(rt: &Runtime, cfg: &LlamaConfig, report: &mut Report) -> Result<()> {
    let rows = floor::growth(rt, cfg)?;
    println!();
    println!("| sizes | largest | capture s | per graph ms | pool MiB | largest graph alone MiB |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in &rows {
        let per_graph_ms = r.capture_s * 1e3 / r.sizes as f64;
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "| {} | {} | {:.3} | {per_graph_ms:.2} | {:.1} | {:.1} |",
            r.sizes,
            r.largest,
            r.capture_s,
            mib(r.pool_bytes),
            mib(r.largest_graph_bytes)
        );
        json.push(format!(
            "{{\"sizes\": {}, \"largest\": {}, \"capture_s\": {}, \"per_graph_ms\": {per_graph_ms}, \"pool_bytes\": {}, \"largest_graph_bytes\": {}}}",
            r.sizes, r.largest, r.capture_s, r.pool_bytes, r.largest_graph_bytes
        ));
    }
    report.raw("growth", format!("[{}]", json.join(", ")));
    Ok(())
}

/// A lazy runner: nothing captured at construction, each size on its first use.
fn lazy_capture(
    rt: &Runtime,
    model: &Llama,
    inputs: &mut Inputs,
    report: &mut Report,
) -> Result<()> {
    let cfg = model.config();
    let started = Instant::now();
    // The sizes of `Llama::forward`'s attribute.
    let sizes = forward_sizes();
    let plan = GraphPlan::new("forward", &sizes, 0)?.with_lazy_capture(true);
    let mut lazy = Runner::capture(rt, plan, cfg.input_specs()?, (), |rt, [t, p], ()| {
        model.forward(rt, t, p)
    })?;
    let build_s = started.elapsed().as_secs_f64();
    let (tokens, positions) = inputs.draw(rt, cfg, 1)?;
    let t = Instant::now();
    drop(lazy.run([&tokens, &positions])?);
    rt.synchronize()?;
    let first_us = t.elapsed().as_secs_f64() * 1e6;
    let t = Instant::now();
    drop(lazy.run([&tokens, &positions])?);
    rt.synchronize()?;
    let second_us = t.elapsed().as_secs_f64() * 1e6;
    println!(
        "lazy capture (`capture = lazy`): runner ready in {:.1} ms; first call at batch 1 (captures its graph) {first_us:.0} µs, second call {second_us:.0} µs",
        build_s * 1e3
    );
    report.num("capture_lazy_build_s", build_s);
    report.num("capture_lazy_first_call_us", first_us);
    report.num("capture_lazy_second_call_us", second_us);
    drop(lazy);

    // Background capture: served at once (the first call eager, then its size captured), the
    // rest captured by capture_pending, as a server would in idle time.
    let started = Instant::now();
    let plan = GraphPlan::new("forward", &sizes, 0)?.with_background_capture(true);
    let mut background = Runner::capture(rt, plan, cfg.input_specs()?, (), |rt, [t, p], ()| {
        model.forward(rt, t, p)
    })?;
    let out = background.run([&tokens, &positions])?;
    let replayed = out.replayed();
    drop(out);
    rt.synchronize()?;
    let served_s = started.elapsed().as_secs_f64();
    let captured = background.capture_pending(std::time::Duration::from_secs(60))?;
    rt.synchronize()?;
    let live_s = started.elapsed().as_secs_f64();
    println!(
        "background capture (`capture = background`): first call served (eagerly: {}) {:.1} ms after the runner was asked for; all {} graphs live after {:.1} ms ({captured} by capture_pending)",
        !replayed,
        served_s * 1e3,
        background.sizes().len(),
        live_s * 1e3
    );
    report.num("capture_background_first_served_s", served_s);
    report.num("capture_background_all_live_s", live_s);
    Ok(())
}

/// Captures all sizes again with per-graph reclamation and with the freeze scope (reclaim
/// once), in that order, and prints both times side by side.
fn compare_reclaim(rt: &Runtime, model: &Llama, report: &mut Report) -> Result<()> {
    let specs = model.config().input_specs()?;
    let mut row = Vec::new();
    for policy in [ReclaimPolicy::Each, ReclaimPolicy::Once] {
        rt.set_reclaim_policy(policy);
        rt.release_cached_memory()?;
        let started = Instant::now();
        let graphs = model.forward_graphs(rt, specs)?;
        let wall = started.elapsed().as_secs_f64();
        row.push((wall, graphs.stats().reclaims));
    }
    rt.set_reclaim_policy(ReclaimPolicy::from_env());
    println!();
    println!(
        "| capture of all sizes | reclaim after each graph (CUDAGRAPH_CAPTURE_RECLAIM=each) | freeze scope (reclaim once) | ratio |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| wall s (reclamations) | {:.3} ({}) | {:.3} ({}) | {:.2}x |",
        row[0].0,
        row[0].1,
        row[1].0,
        row[1].1,
        row[0].0 / row[1].0
    );
    report.num("capture_reclaim_each_s", row[0].0);
    report.num("capture_reclaim_once_s", row[1].0);
    Ok(())
}

/// Skewed synthetic traffic (mostly 1 to 4 sequences, some bursts around 40 and 100), then the
/// size list that would have padded least with 8 graphs.
fn size_advice(
    rt: &Runtime,
    cfg: &LlamaConfig,
    graphs: &mut Runner<'_, 2>,
    inputs: &mut Inputs,
) -> Result<()> {
    let before = graphs.stats().clone();
    for i in 0..300u64 {
        let n = match i % 10 {
            0 => 37 + (inputs.next() % 6) as usize,
            1 => 97 + (inputs.next() % 8) as usize,
            _ => 1 + (inputs.next() % 4) as usize,
        };
        let (tokens, positions) = inputs.draw(rt, cfg, n)?;
        drop(graphs.run([&tokens, &positions])?);
    }
    rt.synchronize()?;
    let after = graphs.stats();
    let rows: u64 = after.sizes.iter().map(|s| s.rows).sum::<u64>()
        - before.sizes.iter().map(|s| s.rows).sum::<u64>();
    let padded: u64 = after.sizes.iter().map(|s| s.padded_rows).sum::<u64>()
        - before.sizes.iter().map(|s| s.padded_rows).sum::<u64>();
    let advice = graphs.advise_sizes(8)?;
    println!();
    println!(
        "size advice after 300 calls of skewed traffic (padding waste with the 35 captured sizes: {:.1}%):",
        padded as f64 / rows as f64 * 100.0
    );
    println!("  {advice}");
    Ok(())
}

/// New weights of the same shapes: refresh every graph (update in place) against a full new
/// capture, side by side.
fn compare_refresh(rt: &Runtime, model: &Llama, report: &mut Report) -> Result<()> {
    let cfg = model.config().clone();
    let specs = cfg.input_specs()?;
    let fresh = Llama::random(rt, cfg, 1)?;
    let graphs = model.forward_graphs(rt, specs)?;
    let started = Instant::now();
    let recaptured = fresh.forward_graphs(rt, specs)?;
    let recapture_s = started.elapsed().as_secs_f64();
    drop(recaptured);
    let (refreshed, refresh) = graphs.refresh(rt, |rt, [t, p], ()| fresh.forward(rt, t, p))?;
    drop(refreshed);
    println!();
    println!("| new weights, all sizes | full re-capture | refresh (cuGraphExecUpdate) | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| wall ms | {:.1} | {:.1} ({} in place, {} re-instantiated) | {:.2}x |",
        recapture_s * 1e3,
        refresh.time.as_secs_f64() * 1e3,
        refresh.updated_in_place,
        refresh.reinstantiated,
        recapture_s / refresh.time.as_secs_f64()
    );
    report.num("recapture_s", recapture_s);
    report.num("refresh_s", refresh.time.as_secs_f64());
    report.num("refresh_in_place", refresh.updated_in_place as f64);
    Ok(())
}
