//! A decoder step written on candle (candle_nn layers, a KV cache written in place, positions
//! on the device: `models/src/candle_decoder.rs`), annotated with `#[cuda_graph]`. Prints the
//! capture time of its sizes and eager vs replay latency at b = 1, 8, 64.
//!
//! ```text
//! cargo run --release --features candle --example candle_decoder
//! ```
//! (on a machine without CUDA, `eval "$(scripts/cuda-toolchain.sh)"` first: candle's kernels
//! need nvcc).

use std::time::Instant;

use candle_core::backend::BackendDevice;
use candle_core::{CudaDevice, DType, Device, Tensor};
use cudagraph::{BoxError, InputSpec, Runtime};
use cudagraph_models::candle_decoder::{CandleDecoder, CandleDecoderConfig};

fn main() -> Result<(), BoxError> {
    if let Err(e) = Runtime::device_count() {
        println!("candle_decoder: no GPU available ({e}); nothing to run.");
        return Ok(());
    }
    let dev = CudaDevice::new_with_stream(0)?;
    // SAFETY: this program uses the device's buffers on its own stream only (candle's ops), so
    // cudarc's per-buffer events order nothing; with them on, a capture breaks.
    unsafe { dev.disable_event_tracking() };
    let device = Device::Cuda(dev.clone());
    let cfg = CandleDecoderConfig::bench();
    let model = CandleDecoder::new(&dev, cfg)?;
    let spec = || InputSpec::new(DType::U32, &[]);
    let started = Instant::now();
    let mut graphs = model.forward_graphs(&dev, [spec()?, spec()?, spec()?])?;
    let capture = started.elapsed();
    println!(
        "captured {} graphs of a candle decoder step ({} layers, hidden {}) in {:.1} ms",
        graphs.sizes().len(),
        cfg.layers,
        cfg.hidden,
        capture.as_secs_f64() * 1e3
    );
    println!("| batch | eager µs | replay µs | eager / replay |");
    println!("|---|---|---|---|");
    const ITERS: u32 = 100;
    for b in [1usize, 8, 64] {
        let u32s = |v: Vec<u32>| Tensor::new(v.as_slice(), &device);
        let tokens = u32s((0..b as u32).map(|i| i * 7 % cfg.vocab as u32).collect())?;
        let positions = u32s(
            (0..b as u32)
                .map(|i| (i * 13) % cfg.max_positions as u32)
                .collect(),
        )?;
        let slots = u32s((1..=b as u32).collect())?;
        let time = |f: &mut dyn FnMut() -> Result<(), BoxError>| -> Result<f64, BoxError> {
            for _ in 0..5 {
                f()?;
            }
            dev.synchronize()?;
            let t = Instant::now();
            for _ in 0..ITERS {
                f()?;
            }
            dev.synchronize()?;
            Ok(t.elapsed().as_secs_f64() * 1e6 / f64::from(ITERS))
        };
        let eager = time(&mut || {
            drop(model.forward(&dev, &tokens, &positions, &slots)?);
            Ok(())
        })?;
        let replay = time(&mut || {
            drop(graphs.run([&tokens, &positions, &slots])?);
            Ok(())
        })?;
        println!("| {b} | {eager:.1} | {replay:.1} | {:.2} |", eager / replay);
    }
    println!("{}", graphs.stats());
    Ok(())
}
