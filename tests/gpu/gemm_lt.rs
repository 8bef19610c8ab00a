//! GEMMs through cuBLASLt with one algorithm per shape and `n` bucket, kept on disk: results
//! against the host reference and `cublasGemmEx`, graphs replaying bit for bit, and a second
//! runtime and a second process that ask the heuristic nothing.
//!
//! Two ignored tests measure (`bench/NOTES.md`, lever 7; run them with `--include-ignored
//! gemm_lt::measure`): `measure_gemm_algorithms` prints the heuristic's cost and, for the
//! decoder's five GEMM shapes, device time at each batch with the bucket's algorithm, the exact
//! shape's and `cublasGemmEx`'s; `measure_capture_of_512_sizes` captures 512 sizes of those five
//! GEMMs in fresh processes (nothing on disk, then the same cache folder again, then
//! `cublasGemmEx`) and prints the capture time per graph by range of sizes.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cudagraph::kernels::reference as r;
use cudagraph::ops;
use cudagraph::{
    DType, GemmAlgoStats, GemmBackend, GemmLtProbe, GraphPlan, InputSpec, ProbeAlgo, Result,
    Runner, Runtime, Tensor,
};
use cudagraph_models::hf::synthetic::ScratchDir;
use half::bf16;

use crate::common::{Rng, assert_close, download_f32, fresh_seed, gpu, upload_bf16};

/// As in `kernels.rs`: one rounding of the output plus bf16 inputs.
const KERNEL_TOL: f64 = 8e-3;

/// A runtime whose linear ops use cuBLAS, or `None` (printed) without a GPU, or when
/// `CUDAGRAPH_GEMM=builtin` asks for the built-in GEMM (the racecheck run: cuBLAS's Hopper
/// kernels are what racecheck can't run).
fn cublas_runtime(test: &str) -> Option<Runtime> {
    let rt = gpu(test)?;
    if rt.gemm_backend() == GemmBackend::Builtin {
        println!("skipped {test}: CUDAGRAPH_GEMM=builtin");
        return None;
    }
    rt.set_gemm_backend(GemmBackend::Cublas);
    rt.set_cublaslt(true);
    Some(rt)
}

fn bits(rt: &Runtime, t: &Tensor) -> Result<Vec<u16>> {
    Ok(rt
        .download::<bf16>(t)?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

fn delta(after: GemmAlgoStats, before: GemmAlgoStats) -> GemmAlgoStats {
    GemmAlgoStats {
        heuristic_queries: after.heuristic_queries - before.heuristic_queries,
        heuristic_time: after.heuristic_time - before.heuristic_time,
        from_disk: after.from_disk - before.from_disk,
        exact_shapes: after.exact_shapes - before.exact_shapes,
        plans: after.plans - before.plans,
        plan_time: after.plan_time - before.plan_time,
    }
}

/// (a) cuBLASLt GEMMs against the host reference and against `cublasGemmEx`: batch rows in
/// every bucket (1 to 513), odd sizes, and a row view whose start is only 2-byte aligned (its
/// own alignment class: the heuristic is asked for algorithms that work there).
#[test]
fn lt_gemm_matches_reference_and_gemm_ex_across_buckets() -> Result<()> {
    let test = "lt_gemm_matches_reference_and_gemm_ex_across_buckets";
    let Some(rt) = cublas_runtime(test) else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(test));
    let before = rt.gemm_algo_stats();
    // (rows, in, out): y [rows, out] = x [rows, in] @ w [out, in]^T.
    let cases = [
        (1, 1024, 2048),
        (5, 999, 100),
        (16, 128, 4099),
        (17, 3072, 1024),
        (31, 64, 7),
        (64, 1024, 2048),
        (100, 999, 100),
        (129, 128, 4099),
        (256, 1024, 1024),
        (300, 200, 333),
        (513, 96, 1031),
    ];
    for (rows, k, n) in cases {
        let (x, xr) = upload_bf16(&rt, &rng.vec(rows * k, -1.0, 1.0), &[rows, k])?;
        let (w, wr) = upload_bf16(&rt, &rng.vec(n * k, -0.1, 0.1), &[n, k])?;
        let reference = r::linear_ref(&xr, &wr, None, k);
        rt.set_poison_allocations(true);
        let y = ops::linear(&rt, &x, &w)?;
        rt.set_poison_allocations(false);
        let lt = download_f32(&rt, &y)?;
        assert_close(
            &format!("cuBLASLt {rows}x{k}x{n}"),
            &lt,
            &reference,
            KERNEL_TOL,
        );
        rt.set_cublaslt(false);
        let yx = ops::linear(&rt, &x, &w)?;
        rt.set_cublaslt(true);
        assert_close(
            &format!("cuBLASLt vs cublasGemmEx {rows}x{k}x{n}"),
            &lt,
            &download_f32(&rt, &yx)?,
            KERNEL_TOL,
        );
        if rows > 1 {
            // Rows 1.. of x: B starts 2 * k bytes in (2-byte aligned when k is odd).
            let view = x.narrow_rows(1, rows - 1)?;
            rt.set_poison_allocations(true);
            let yv = ops::linear(&rt, &view, &w)?;
            rt.set_poison_allocations(false);
            assert_close(
                &format!("cuBLASLt on a row view {}x{k}x{n}", rows - 1),
                &download_f32(&rt, &yv)?,
                &reference[n..],
                KERNEL_TOL,
            );
        }
    }
    let used = delta(rt.gemm_algo_stats(), before);
    assert!(
        used.plans >= cases.len(),
        "the linear ops must have gone through cuBLASLt (is libcublasLt loadable?): {used:?}"
    );
    println!("{test}: {} shapes; {used:?}", cases.len());
    Ok(())
}

/// (b) A captured cuBLASLt GEMM replays bit for bit what the eager one computes: sizes of four
/// buckets, the smaller ones captured without a warm-up (their buckets' heuristic queries, if
/// any, run during the record).
#[test]
fn lt_gemm_replays_bit_exactly() -> Result<()> {
    let test = "lt_gemm_replays_bit_exactly";
    let Some(rt) = cublas_runtime(test) else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(test));
    let (k, out) = (328, 1531);
    let (w, _) = upload_bf16(&rt, &rng.vec(out * k, -0.1, 0.1), &[out, k])?;
    let sizes = [64, 40, 24, 9];
    let before = rt.gemm_algo_stats();
    let plan = GraphPlan::new("lt_linear", &sizes, 0)?;
    let spec = [InputSpec::new(DType::BF16, &[k])?];
    let mut graphs = Runner::capture(&rt, plan, spec, (), |rt, [x], ()| ops::linear(rt, x, &w))?;
    let during = delta(rt.gemm_algo_stats(), before);
    assert!(
        during.plans >= sizes.len(),
        "one plan per captured size: {during:?}"
    );
    for n in sizes {
        let (x, _) = upload_bf16(&rt, &rng.vec(n * k, -1.0, 1.0), &[n, k])?;
        let eager = bits(&rt, &ops::linear(&rt, &x, &w)?)?;
        let out = graphs.run([&x])?;
        assert!(out.replayed(), "size {n} replays its graph");
        assert_eq!(
            bits(&rt, &out)?,
            eager,
            "size {n}: the replay equals eager bit for bit"
        );
    }
    // A graph recorded by `Runtime::capture` on a 2-byte-aligned row view, against eager.
    let (x, _) = upload_bf16(&rt, &rng.vec(25 * k, -1.0, 1.0), &[25, k])?;
    let view = x.narrow_rows(1, 24)?;
    let dst = rt.alloc(&[24, out], DType::BF16)?;
    let graph = rt.capture(|rt| {
        let y = ops::linear(rt, &view, &w)?;
        rt.copy(&y, &dst)
    })?;
    rt.fill_bytes(&dst, 0xFF)?;
    graph.replay()?;
    assert_eq!(
        bits(&rt, &dst)?,
        bits(&rt, &ops::linear(&rt, &view, &w)?)?,
        "row view: the replay equals eager bit for bit"
    );
    println!(
        "{test}: {} sizes; during the capture {during:?}",
        sizes.len()
    );
    Ok(())
}

/// The folder of a worker process (set only in a worker's environment).
const WORKER_ENV: &str = "CUDAGRAPH_GEMM_WORKER";
/// What a worker does: `shapes` or `capture512`.
const SCENARIO_ENV: &str = "CUDAGRAPH_GEMM_SCENARIO";
const WORKER_TEST: &str = "gemm_lt::gemm_lt_worker";
const WORKER_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs [`gemm_lt_worker`] in a new process of this test binary with `cache` as its
/// `CUDAGRAPH_CACHE_DIR`, and returns what it printed.
fn run_worker(scenario: &str, cache: &Path, extra_env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().expect("the test binary's path");
    let log = cache.join(format!("worker-{scenario}-{}.log", rand_tag()));
    let file = std::fs::File::create(&log).expect("the worker's log");
    let mut child = Command::new(exe)
        .args(["--exact", WORKER_TEST, "--ignored", "--nocapture"])
        .args(["--test-threads=1"])
        .env(WORKER_ENV, cache)
        .env(SCENARIO_ENV, scenario)
        .env("CUDAGRAPH_CACHE_DIR", cache)
        .env("CUDAGRAPH_CUBLASLT", "on")
        .envs(extra_env.iter().copied())
        .stdout(file)
        .spawn()
        .expect("could not start the worker process");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the worker") {
            break status;
        }
        if started.elapsed() > WORKER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the {scenario} worker ran past {WORKER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.success(),
        "the {scenario} worker failed ({status}):\n{text}"
    );
    text
}

fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The `key=value` figures of the worker's line `gemm-worker <label> ...`.
fn figures(text: &str, label: &str) -> HashMap<String, f64> {
    // (libtest prints the test's name first, on the same line.)
    let prefix = format!("gemm-worker {label} ");
    let line = text
        .lines()
        .find_map(|l| l.find(&prefix).map(|at| &l[at + prefix.len()..]))
        .unwrap_or_else(|| panic!("no `{prefix}` in the worker's output:\n{text}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn stats_line(label: &str, s: GemmAlgoStats) -> String {
    format!(
        "gemm-worker {label} queries={} query_ms={:.3} from_disk={} exact={} plans={} plan_ms={:.3}",
        s.heuristic_queries,
        s.heuristic_time.as_secs_f64() * 1e3,
        s.from_disk,
        s.exact_shapes,
        s.plans,
        s.plan_time.as_secs_f64() * 1e3
    )
}

/// The decoder's GEMM shapes, `(in, out)` of `linear` (cuBLAS's `(k, m)`): q/k/v, o,
/// gate+up, down, LM head of the Qwen3-0.6B-shaped decoder of `decode_bench`.
const DECODER_SHAPES: [(usize, usize, &str); 5] = [
    (1024, 2048, "qkv"),
    (1024, 1024, "o"),
    (1024, 6144, "gate_up"),
    (3072, 1024, "down"),
    (1024, 151_936, "lm_head"),
];

/// The decoder's 35 captured sizes.
fn decoder_sizes() -> Vec<usize> {
    [1, 2, 4].into_iter().chain((8..=256).step_by(8)).collect()
}

/// Weights of `[out, in]` filled with small values (no upload: values don't matter here).
fn filled(rt: &Runtime, dims: &[usize]) -> Result<Tensor> {
    let t = rt.alloc(dims, DType::BF16)?;
    rt.fill_bytes(&t, 0x3c)?;
    Ok(t)
}

/// (c) A second runtime of the process, and a second process, with the same cache folder make
/// no heuristic query for the shapes a first one queried: all their algorithms come from disk.
#[test]
fn a_second_runtime_and_process_make_no_heuristic_queries() -> Result<()> {
    let test = "a_second_runtime_and_process_make_no_heuristic_queries";
    let Some(rt) = cublas_runtime(test) else {
        return Ok(());
    };
    drop(rt);
    let dir = ScratchDir::new("gemm-algos")
        .map_err(|e| cudagraph::Error::invalid("ScratchDir", e.to_string()))?;
    let first = run_worker("shapes", dir.path(), &[]);
    let second = run_worker("shapes", dir.path(), &[]);
    print!("{first}{second}");
    let (a1, a2, b1) = (
        figures(&first, "runtime1"),
        figures(&first, "runtime2"),
        figures(&second, "runtime1"),
    );
    assert!(
        a1["queries"] > 0.0 && a1["from_disk"] == 0.0,
        "a fresh cache folder: the first runtime queries, reads nothing: {a1:?}"
    );
    assert_eq!(
        a2["queries"], 0.0,
        "the second runtime of the process queries nothing: {a2:?}"
    );
    assert_eq!(
        b1["queries"], 0.0,
        "the second process queries nothing: {b1:?}"
    );
    assert_eq!(
        a2["from_disk"], a1["queries"],
        "every queried algorithm read back once"
    );
    assert_eq!(b1["from_disk"], a1["queries"]);
    assert_eq!(a1["plans"], a2["plans"]);
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gemm-algos-"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        files.len(),
        1,
        "one table file, no temporary left: {files:?}"
    );
    let _ = std::fs::remove_dir_all(dir.path());
    Ok(())
}

/// A worker process of the tests above (does nothing, and says so, unless started by them).
///
/// * `shapes`: the decoder's five GEMM shapes at its 35 sizes and an odd shape at three batch
///   sizes, eagerly, in a runtime, then again in a second runtime; prints both runtimes'
///   [`GemmAlgoStats`].
/// * `capture512`: captures the five GEMMs at sizes 1..=512 and prints the capture time per
///   graph by range of 64 sizes.
#[test]
#[ignore = "a worker process of the cuBLASLt tests, started by them"]
fn gemm_lt_worker() -> Result<()> {
    if std::env::var_os(WORKER_ENV).is_none() {
        println!("gemm_lt_worker: not started by a cuBLASLt test; nothing to do");
        return Ok(());
    }
    let scenario = std::env::var(SCENARIO_ENV).unwrap_or_default();
    match scenario.as_str() {
        "shapes" => {
            for label in ["runtime1", "runtime2"] {
                let rt = Runtime::new(0)?;
                rt.set_gemm_backend(GemmBackend::Cublas);
                for (k, out, _) in DECODER_SHAPES {
                    let w = filled(&rt, &[out, k])?;
                    let x = filled(&rt, &[256, k])?;
                    for n in decoder_sizes() {
                        let rows = x.narrow_rows(0, n)?;
                        drop(ops::linear(&rt, &rows, &w)?);
                    }
                }
                let w = filled(&rt, &[4099, 999])?;
                let x = filled(&rt, &[300, 999])?;
                for n in [1, 17, 300] {
                    let rows = x.narrow_rows(0, n)?;
                    drop(ops::linear(&rt, &rows, &w)?);
                }
                rt.synchronize()?;
                println!("{}", stats_line(label, rt.gemm_algo_stats()));
            }
        }
        "capture512" => capture_512(&Runtime::new(0)?)?,
        other => panic!("unknown scenario {other:?}"),
    }
    Ok(())
}

/// Captures the decoder's five GEMMs at sizes 1..=512 and prints capture figures.
fn capture_512(rt: &Runtime) -> Result<()> {
    rt.set_gemm_backend(GemmBackend::Cublas);
    let weights: Vec<Tensor> = DECODER_SHAPES
        .iter()
        .map(|&(k, out, _)| filled(rt, &[out, k]))
        .collect::<Result<_>>()?;
    let sizes: Vec<usize> = (1..=512).collect();
    let plan = GraphPlan::new("five_gemms", &sizes, 0)?;
    let specs = [
        InputSpec::new(DType::BF16, &[1024])?,
        InputSpec::new(DType::BF16, &[3072])?,
    ];
    let before = rt.gemm_algo_stats();
    let started = Instant::now();
    let graphs = Runner::capture(rt, plan, specs, (), |rt, [x, x3], ()| {
        drop(ops::linear(rt, x, &weights[0])?);
        drop(ops::linear(rt, x, &weights[1])?);
        drop(ops::linear(rt, x, &weights[2])?);
        drop(ops::linear(rt, x3, &weights[3])?);
        ops::linear(rt, x, &weights[4])
    })?;
    let wall = started.elapsed();
    let used = delta(rt.gemm_algo_stats(), before);
    let stats = graphs.stats();
    let per = |s: &cudagraph::SizeStats| {
        (s.capture.record + s.capture.instantiate + s.capture.upload).as_secs_f64() * 1e3
    };
    let mut ranges = String::new();
    for chunk in stats.sizes.chunks(64) {
        let times: Vec<f64> = chunk.iter().map(per).collect();
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let max = times.iter().copied().fold(0.0, f64::max);
        ranges.push_str(&format!(
            " mean_ms_{}_{}={mean:.3} max_ms_{}_{}={max:.3}",
            chunk[0].size,
            chunk[chunk.len() - 1].size,
            chunk[0].size,
            chunk[chunk.len() - 1].size
        ));
    }
    let warmup: f64 = stats
        .sizes
        .iter()
        .map(|s| s.capture.warmup.as_secs_f64())
        .sum();
    println!(
        "gemm-worker capture512 graphs={} wall_s={:.3} warmup_s={warmup:.3} queries={} query_ms={:.3} from_disk={} plans={}{ranges}",
        stats.sizes.len(),
        wall.as_secs_f64(),
        used.heuristic_queries,
        used.heuristic_time.as_secs_f64() * 1e3,
        used.from_disk,
        used.plans,
    );
    Ok(())
}

/// Captures 512 sizes of the decoder's five GEMMs in fresh processes: cuBLASLt with an empty
/// cache folder, cuBLASLt again with that folder, and `cublasGemmEx` (`CUDAGRAPH_CUBLASLT=off`).
#[test]
#[ignore = "a measurement (bench/NOTES.md): run with --include-ignored"]
fn measure_capture_of_512_sizes() -> Result<()> {
    let test = "measure_capture_of_512_sizes";
    let Some(rt) = cublas_runtime(test) else {
        return Ok(());
    };
    drop(rt);
    let dir = ScratchDir::new("gemm-512")
        .map_err(|e| cudagraph::Error::invalid("ScratchDir", e.to_string()))?;
    for (label, env) in [
        ("cuBLASLt, nothing on disk", &[][..]),
        ("cuBLASLt, second process", &[][..]),
        ("cublasGemmEx", &[("CUDAGRAPH_CUBLASLT", "off")][..]),
    ] {
        let text = run_worker("capture512", dir.path(), env);
        let line = text
            .lines()
            .find_map(|l| l.find("gemm-worker capture512").map(|at| &l[at..]))
            .unwrap_or("(no figures)");
        println!("{test}: {label}: {line}");
    }
    let _ = std::fs::remove_dir_all(dir.path());
    Ok(())
}

/// Device time (µs per GEMM) of `launches` linear ops cycling over `weights`, captured in one
/// graph, replayed `replays` times after an untimed replay.
fn time_linear(
    rt: &Runtime,
    x: &Tensor,
    weights: &[Tensor],
    launches: usize,
    replays: usize,
) -> Result<f64> {
    let graph = rt.capture(|rt| {
        for i in 0..launches {
            drop(ops::linear(rt, x, &weights[i % weights.len()])?);
        }
        Ok(())
    })?;
    graph.replay()?;
    rt.synchronize()?;
    let started = Instant::now();
    for _ in 0..replays {
        graph.replay()?;
    }
    rt.synchronize()?;
    Ok(started.elapsed().as_secs_f64() * 1e6 / (launches * replays) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Heuristic cost, and GEMM device time of the decoder's shapes with the bucket's algorithm
/// (the runtime's path), the exact shape's heuristic choice and `cublasGemmEx`'s, plus the
/// table behind the bucket choice: each batch `n` run with the algorithm queried at each bound.
#[test]
#[ignore = "a measurement (bench/NOTES.md): run with --include-ignored"]
fn measure_gemm_algorithms() -> Result<()> {
    let test = "measure_gemm_algorithms";
    let Some(rt) = cublas_runtime(test) else {
        return Ok(());
    };
    // Batch sizes: each bucket's bounds and the sizes just above the bound below (where a
    // bucket's algorithm is furthest from its own `n`).
    let ns = [
        1, 4, 8, 16, 17, 24, 32, 33, 48, 64, 65, 72, 80, 88, 96, 104, 120, 128, 136, 160, 168, 192,
        200, 224, 232, 256, 264, 320, 384, 448, 512,
    ];
    // The runtime's bucket bounds up to 512, and the powers of two between.
    let mut bounds: Vec<usize> = (1..=512u32)
        .map(|n| cudagraph::gemm_n_bucket(n) as usize)
        .collect();
    bounds.dedup();
    let n_max = 512;
    let replays = 5;
    let (mut query_us, mut check_us, mut layout_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut summary = Vec::new();
    for (k, out, name) in DECODER_SHAPES {
        let weight_bytes = out * k * 2;
        let launches = if weight_bytes > (64 << 20) { 10 } else { 40 };
        let probe = GemmLtProbe::new(&rt, out, k, n_max, 256 << 20)?;
        // Queries first, each n once, before anything else of this test runs these shapes
        // (cuBLASLt keeps a heuristic cache: a repeated query would be cheaper).
        let mut algos: HashMap<usize, ProbeAlgo> = HashMap::new();
        let mut points: Vec<usize> = ns.iter().chain(&bounds).copied().collect();
        points.sort_unstable();
        points.dedup();
        for &n in &points {
            if let Some(a) = probe.query(n)? {
                query_us.push(a.query_time.as_secs_f64() * 1e6);
                algos.insert(n, a);
            }
        }
        // Device time of algorithm `a` at `n`, measured once per distinct (algorithm, n).
        let mut timed: Vec<(ProbeAlgo, usize, Option<f64>)> = Vec::new();
        let mut time = |a: &ProbeAlgo, n: usize| -> Result<Option<f64>> {
            if let Some((_, _, t)) = timed.iter().find(|(b, m, _)| b == a && *m == n) {
                return Ok(*t);
            }
            let c = probe.check(a, n)?;
            check_us.push(c.check.as_secs_f64() * 1e6);
            layout_us.push(c.layouts.as_secs_f64() * 1e6);
            let t = probe.time_us(a, n, launches, replays)?;
            timed.push((a.clone(), n, t));
            Ok(t)
        };
        println!();
        println!(
            "{name}: linear in={k} out={out} (cuBLAS m={out}, k={k}, n = batch); µs per GEMM, weights cycled over {} MiB",
            (256usize << 20).max(weight_bytes) >> 20
        );
        println!(
            "| n | cublasGemmEx | cuBLASLt bucket (runtime) | ratio | exact-n heuristic | bucket algo / exact | exact algo |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---|");
        let copies = (256usize << 20).div_ceil(weight_bytes).clamp(1, 64);
        let weights: Vec<Tensor> = (0..copies)
            .map(|_| filled(&rt, &[out, k]))
            .collect::<Result<_>>()?;
        let x_all = filled(&rt, &[n_max, k])?;
        let mut matrix = Vec::new();
        for &n in &ns {
            let x = x_all.narrow_rows(0, n)?;
            rt.set_cublaslt(false);
            let gemm_ex = time_linear(&rt, &x, &weights, launches, replays)?;
            rt.set_cublaslt(true);
            let runtime = time_linear(&rt, &x, &weights, launches, replays)?;
            let exact = match algos.get(&n) {
                Some(a) => time(a, n)?,
                None => None,
            };
            let bound = cudagraph::gemm_n_bucket(n as u32) as usize;
            let bucket = match algos.get(&bound) {
                Some(a) => time(a, n)?,
                None => None,
            };
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => format!("{:.3}", a / b),
                _ => "-".into(),
            };
            println!(
                "| {n} | {gemm_ex:.1} | {runtime:.1} | {:.3} | {} | {} | {} |",
                runtime / gemm_ex,
                fmt(exact),
                ratio(bucket, exact),
                algos.get(&n).map_or("-", |a| a.description.as_str()),
            );
            summary.push((
                name,
                n,
                gemm_ex,
                runtime,
                bucket.zip(exact).map(|(b, e)| b / e),
            ));
            let mut row = Vec::new();
            for &b in &bounds {
                let t = match algos.get(&b) {
                    Some(a) => time(a, n)?,
                    None => None,
                };
                row.push(ratio(t, exact));
            }
            matrix.push((n, row));
        }
        println!();
        println!(
            "{name}: time with the algorithm queried at n = bound, over the exact-n algorithm's time"
        );
        println!(
            "| n \\ bound | {} |",
            bounds
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---:|{}", "---:|".repeat(bounds.len()));
        for (n, row) in matrix {
            println!("| {n} | {} |", row.join(" | "));
        }
    }
    println!();
    println!(
        "heuristic query (cublasLtMatmulAlgoGetHeuristic, 1 result): {} queries, median {:.1} µs, min {:.1}, max {:.1}; first query of this test {:.1} µs",
        query_us.len(),
        median(query_us.clone()),
        query_us.iter().copied().fold(f64::INFINITY, f64::min),
        query_us.iter().copied().fold(0.0, f64::max),
        query_us.first().copied().unwrap_or(f64::NAN),
    );
    println!(
        "cublasLtMatmulAlgoCheck: median {:.1} µs over {}; three layouts created: median {:.1} µs",
        median(check_us.clone()),
        check_us.len(),
        median(layout_us),
    );
    let worst = |points: &dyn Fn(usize) -> bool| {
        summary
            .iter()
            .filter(|(_, n, ..)| points(*n))
            .map(|&(name, n, ex, lt, _)| (lt / ex, name, n))
            .fold((0.0, "", 0), |a, b| if b.0 > a.0 { b } else { a })
    };
    for (label, points) in [
        (
            "n in {16, 24, 64, 128, 256}",
            &(|n: usize| [16, 24, 64, 128, 256].contains(&n)) as &dyn Fn(usize) -> bool,
        ),
        ("every n measured", &|_: usize| true),
    ] {
        let (ratio, name, n) = worst(points);
        println!("runtime (bucket) / cublasGemmEx at {label}: worst {ratio:.3} ({name} n={n})");
    }
    let (ratio, name, n) = summary
        .iter()
        .filter_map(|&(name, n, _, _, r)| r.map(|r| (r, name, n)))
        .fold((0.0, "", 0), |a, b| if b.0 > a.0 { b } else { a });
    println!("bucket algorithm / exact-n algorithm (probe): worst {ratio:.3} ({name} n={n})");
    Ok(())
}
