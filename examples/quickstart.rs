//! The smallest cudagraph program: a free function with two tensor inputs, captured for four
//! batch sizes, run on uploaded inputs, its output downloaded, the runner's stats printed.
//!
//! ```text
//! RUST_LOG=cudagraph=info cargo run --release --example quickstart
//! ```
use cudagraph::half::bf16;
use cudagraph::{DType, InputSpec, Result, Runtime, Tensor, cuda_graph, ops};

/// `silu(gate) * up + residual`; `gate_up` is `[n, 2 h]` (`[gate | up]`), `residual` `[n, h]`.
#[cuda_graph(sizes = [1, 2, 4, 8])]
fn gated_residual(rt: &Runtime, gate_up: &Tensor, residual: &Tensor) -> Result<Tensor> {
    let act = ops::silu_mul(rt, gate_up)?;
    ops::add(rt, &act, residual)
}

fn main() -> Result<()> {
    // The runtime reports fallbacks and warnings through `tracing`; show them (RUST_LOG filters).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let rt = match Runtime::new(0) {
        Ok(rt) => rt,
        Err(e) => {
            println!("quickstart: no GPU available ({e}); nothing to run.");
            std::process::exit(1);
        }
    };
    let h = 64;
    // Each input: a dtype and the dimensions after the batch one.
    let specs = [
        InputSpec::new(DType::BF16, &[2 * h])?,
        InputSpec::new(DType::BF16, &[h])?,
    ];
    let mut graphs = gated_residual_graphs(&rt, specs)?; // captures sizes 1, 2, 4, 8
    let n = 3; // replays the size-4 graph, padded
    let host = |len: usize| {
        (0..len)
            .map(|i| bf16::from_f32((i % 7) as f32 * 0.25))
            .collect::<Vec<_>>()
    };
    let gate_up = rt.upload(&host(n * 2 * h), &[n, 2 * h])?;
    let residual = rt.upload(&host(n * h), &[n, h])?;
    let out = graphs.run([&gate_up, &residual])?;
    match out.size() {
        Some(size) => println!("{n} rows replayed by the size-{size} graph"),
        None => println!("{n} rows ran eagerly (no captured size fits)"),
    }
    let values = rt.download_f32(&out)?; // a host copy as f32: outlives the next run
    println!("first values: {:?}", &values[..4]);
    let stats = graphs.stats();
    println!(
        "replays {}, fallbacks {}, pool {} KiB",
        stats.replay_count(),
        stats.fallback_count(),
        stats.pool_bytes >> 10
    );
    Ok(())
}
