//! A forward written on plain cudarc (its own NVRTC kernel, cudarc's cuBLAS, `stream.alloc`),
//! annotated with `#[cuda_graph]`: see `models/src/cudarc_mlp.rs`. Prints capture time and
//! eager vs replay latency per batch size.
//!
//! ```text
//! cargo run --release --example cudarc_mlp
//! ```

use std::time::Instant;

use cudagraph::{BoxError, CudaTensor, DType, InputSpec, Runtime};
use cudagraph_models::cudarc_mlp::{CudarcMlp, MlpDims, capture_stream, random_values};

fn main() -> Result<(), BoxError> {
    if let Err(e) = Runtime::device_count() {
        println!("cudarc_mlp: no GPU available ({e}); nothing to run.");
        return Ok(());
    }
    // SAFETY: this program allocates every buffer on this one stream (the model, its inputs,
    // the graphs' memory) and makes no other stream of its context.
    let stream = unsafe { capture_stream(0)? };
    let dims = MlpDims {
        d_in: 1024,
        d_hidden: 4096,
        d_out: 1024,
    };
    let mlp = CudarcMlp::new(&stream, dims, 7)?;
    let started = Instant::now();
    let mut graphs = mlp.forward_graphs(&stream, [InputSpec::new(DType::F32, &[dims.d_in])?])?;
    let capture = started.elapsed();
    println!(
        "captured {} graphs of a plain-cudarc MLP ({}→{}→{}) in {:.1} ms; graph memory {} KiB",
        graphs.sizes().len(),
        dims.d_in,
        dims.d_hidden,
        dims.d_out,
        capture.as_secs_f64() * 1e3,
        graphs.pool_bytes() / 1024
    );
    println!("| batch | eager µs | replay µs | eager / replay |");
    println!("|---|---|---|---|");
    const ITERS: u32 = 200;
    for batch in [1usize, 8, 32] {
        let x = CudaTensor::from_slice(
            stream.clone_htod(&random_values(batch as u64, batch * dims.d_in, 1.0))?,
            &[batch, dims.d_in],
        )?;
        for _ in 0..10 {
            drop(mlp.forward(&stream, &x)?);
            drop(graphs.run([&x])?);
        }
        stream.synchronize()?;
        let t = Instant::now();
        for _ in 0..ITERS {
            drop(mlp.forward(&stream, &x)?);
        }
        stream.synchronize()?;
        let eager = t.elapsed().as_secs_f64() * 1e6 / f64::from(ITERS);
        let t = Instant::now();
        for _ in 0..ITERS {
            drop(graphs.run([&x])?);
        }
        stream.synchronize()?;
        let replay = t.elapsed().as_secs_f64() * 1e6 / f64::from(ITERS);
        println!(
            "| {batch} | {eager:.1} | {replay:.1} | {:.2} |",
            eager / replay
        );
    }
    println!("{}", graphs.stats());
    Ok(())
}
