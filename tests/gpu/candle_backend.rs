//! The candle backend: forwards written on candle (`CudaDevice`, `candle_core::Tensor`),
//! captured in graph-memory-node mode with candle's host-to-device cache held.

use std::time::Instant;

use candle_core::backend::BackendDevice;
use candle_core::{CudaDevice, DType, Device, Tensor};
use cudagraph::{GraphMemoryUsage, InputSpec};
use cudagraph_models::candle_decoder::{CandleDecoder, CandleDecoderConfig};

use crate::common::{Rng, fresh_seed, gpu};

/// A candle device with a stream of its own and no event tracking, or `None` (printed) without
/// a GPU.
pub fn candle_device(test: &str) -> Option<CudaDevice> {
    gpu(test)?;
    let dev = CudaDevice::new_with_stream(0).expect("candle device");
    // SAFETY: the tests use the device's buffers on its own stream only (candle's ops).
    unsafe { dev.disable_event_tracking() };
    Some(dev)
}

/// The runner refuses a candle device that tracks events, and one on the per-thread stream
/// (candle's `CudaDevice::new`), each with the fix in the message.
#[test]
fn candle_devices_that_break_capture_are_refused() {
    if gpu("candle_devices_that_break_capture_are_refused").is_none() {
        return;
    }
    let cfg = CandleDecoderConfig::tiny();
    let spec = || InputSpec::new(DType::U32, &[]).unwrap();
    let tracking = CudaDevice::new_with_stream(0).unwrap();
    let model = CandleDecoder::new(&tracking, cfg).unwrap();
    let err = model
        .forward_graphs(&tracking, [spec(), spec(), spec()])
        .map(drop)
        .expect_err("refused");
    assert!(err.to_string().contains("disable_event_tracking"), "{err}");
    let per_thread = CudaDevice::new(0).unwrap();
    let model = CandleDecoder::new(&per_thread, cfg).unwrap();
    let err = model
        .forward_graphs(&per_thread, [spec(), spec(), spec()])
        .map(drop)
        .expect_err("refused");
    assert!(err.to_string().contains("stream of their own"), "{err}");
}

fn u32s(dev: &CudaDevice, values: &[u32]) -> Tensor {
    Tensor::new(values, &Device::Cuda(dev.clone())).expect("upload")
}

/// Mean µs of one `f` over `iters` calls, after 5 warm-up calls, the device synchronized
/// around the timed loop.
fn time_us(dev: &CudaDevice, iters: u32, f: &mut dyn FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    dev.synchronize().unwrap();
    let started = Instant::now();
    for _ in 0..iters {
        f();
    }
    dev.synchronize().unwrap();
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iters)
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs() / scale))
        .fold(0.0, f64::max)
}

/// A decoder step as a candle user writes one: replay equals eager bit for bit at every
/// captured size (the same candle kernels run), padded batches write only the padding row of
/// the cache, and the latency of each is printed.
#[test]
fn candle_decoder_replays_like_eager() {
    let Some(dev) = candle_device("candle_decoder_replays_like_eager") else {
        return;
    };
    let mut rng = Rng(fresh_seed("candle_decoder_replays_like_eager"));
    let cfg = CandleDecoderConfig::tiny();
    let model = CandleDecoder::new(&dev, cfg).expect("model");
    let spec = || InputSpec::new(DType::U32, &[]).unwrap();
    let started = Instant::now();
    let mut graphs = model
        .forward_graphs(&dev, [spec(), spec(), spec()])
        .expect("capture");
    println!(
        "candle decoder: {} graphs captured in {:.1} ms",
        graphs.sizes().len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("{}", graphs.stats());
    let step = |rng: &mut Rng, n: usize| {
        let tokens: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab) as u32).collect();
        let positions: Vec<u32> = (0..n)
            .map(|_| rng.below(cfg.max_positions) as u32)
            .collect();
        // Sequences use cache rows 1.. (row 0 is the padding row).
        let slots: Vec<u32> = (0..n)
            .map(|i| (1 + i % (cfg.max_sequences - 1)) as u32)
            .collect();
        (
            u32s(&dev, &tokens),
            u32s(&dev, &positions),
            u32s(&dev, &slots),
        )
    };
    for n in [1, 2, 3, 4, 5, 8, 13, 16, 33, 64, 65] {
        let (t, p, s) = step(&mut rng, n);
        let eager: Vec<f32> = model
            .forward(&dev, &t, &p, &s)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        graphs.poison_pool().expect("poison");
        let out = graphs.run([&t, &p, &s]).expect("run");
        assert_eq!(out.dims(), [n, cfg.vocab]);
        assert_eq!(out.replayed(), n <= 64, "n = {n}");
        let replay: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert!(replay.iter().all(|v| v.is_finite()), "n = {n}: NaN left");
        if graphs.sizes().contains(&n) || n > 64 {
            assert_eq!(replay, eager, "n = {n}: bit-exact");
        } else {
            let err = max_rel(&replay, &eager);
            assert!(err < 1e-5, "n = {n}: relative error {err}");
        }
    }
    for b in [1usize, 8, 64] {
        let (t, p, s) = step(&mut rng, b);
        let eager = time_us(&dev, 50, &mut || {
            drop(model.forward(&dev, &t, &p, &s).unwrap())
        });
        let replay = time_us(&dev, 50, &mut || drop(graphs.run([&t, &p, &s]).unwrap()));
        println!(
            "candle decoder b = {b}: eager {eager:.1} µs, replay {replay:.1} µs ({:.2}x)",
            eager / replay
        );
    }
}

/// A tiny BERT from candle-transformers with random weights from a `VarMap`: for n in 1..=9
/// replay equals eager (f32, 1e-5 relative), n = 9 falls back, and after the runner drops the
/// context is clean and its graph memory can be given back.
#[cfg(feature = "candle-transformers")]
#[test]
fn candle_bert_replays_like_eager() {
    use cudagraph::cuda_graph;
    use cudagraph_models::candle_nn::{VarBuilder, VarMap};
    use cudagraph_models::candle_transformers::models::bert::{BertModel, Config};

    struct Bert {
        model: BertModel,
    }
    impl Bert {
        #[cuda_graph(sizes = [1, 2, 4, 8], batch = ids)]
        fn forward(
            &self,
            _dev: &CudaDevice,
            ids: &Tensor,
            types: &Tensor,
        ) -> candle_core::Result<Tensor> {
            self.model.forward(ids, types, None)
        }
    }

    let Some(dev) = candle_device("candle_bert_replays_like_eager") else {
        return;
    };
    let mut rng = Rng(fresh_seed("candle_bert_replays_like_eager"));
    const SEQ: usize = 12;
    let device = Device::Cuda(dev.clone());
    let config = Config {
        vocab_size: 100,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 32,
        ..Config::default()
    };
    let vars = VarMap::new();
    let bert = Bert {
        model: BertModel::load(VarBuilder::from_varmap(&vars, DType::F32, &device), &config)
            .expect("bert"),
    };
    let spec = || InputSpec::new(DType::U32, &[SEQ]).unwrap();
    {
        let mut graphs = bert
            .forward_graphs(&dev, [spec(), spec()])
            .expect("capture");
        println!("{}", graphs.stats());
        for n in 1..=9 {
            let ids: Vec<u32> = (0..n * SEQ).map(|_| rng.below(100) as u32).collect();
            let types: Vec<u32> = (0..n * SEQ).map(|_| rng.below(2) as u32).collect();
            let ids = Tensor::new(ids.as_slice(), &device)
                .unwrap()
                .reshape((n, SEQ))
                .unwrap();
            let types = Tensor::new(types.as_slice(), &device)
                .unwrap()
                .reshape((n, SEQ))
                .unwrap();
            let eager: Vec<f32> = bert
                .forward(&dev, &ids, &types)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            graphs.poison_pool().unwrap();
            let out = graphs.run([&ids, &types]).expect("run");
            assert_eq!(out.replayed(), n <= 8, "n = {n}");
            assert_eq!(out.dims(), [n, SEQ, 32]);
            let replay: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
            let err = max_rel(&replay, &eager);
            assert!(err <= 1e-5, "n = {n}: relative error {err}");
        }
        assert_eq!(graphs.stats().fallback_count(), 1);
    }
    // The runner dropped: nothing pending, nothing recorded as an error, and the driver's graph
    // memory goes back after a trim.
    dev.synchronize().expect("synchronize");
    let stream = dev.cuda_stream();
    stream.context().check_err().expect("no deferred error");
    GraphMemoryUsage::trim(stream.context()).expect("trim");
    let usage = GraphMemoryUsage::of_context(stream.context()).unwrap();
    println!("after the runner dropped and a trim: graph memory {usage:?}");
    assert_eq!(usage.used, 0, "no graph memory in use");
}

/// The latency table of `examples/candle_decoder.rs` (same model and inputs), in the suite so
/// the GPU bundle carries one candle binary: `--ignored candle_decoder_latency`.
#[test]
#[ignore = "a benchmark: run with --ignored"]
fn candle_decoder_latency() {
    let Some(dev) = candle_device("candle_decoder_latency") else {
        return;
    };
    let cfg = CandleDecoderConfig::bench();
    let model = CandleDecoder::new(&dev, cfg).expect("model");
    let spec = || InputSpec::new(DType::U32, &[]).unwrap();
    let started = Instant::now();
    let mut graphs = model
        .forward_graphs(&dev, [spec(), spec(), spec()])
        .expect("capture");
    println!(
        "candle decoder ({} layers, hidden {}, vocab {}): {} graphs captured in {:.1} ms",
        cfg.layers,
        cfg.hidden,
        cfg.vocab,
        graphs.sizes().len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("| batch | eager µs | replay µs | eager / replay |");
    println!("|---|---|---|---|");
    for b in [1usize, 8, 64] {
        let tokens = u32s(
            &dev,
            &(0..b as u32)
                .map(|i| i * 7 % cfg.vocab as u32)
                .collect::<Vec<_>>(),
        );
        let positions = u32s(
            &dev,
            &(0..b as u32)
                .map(|i| (i * 13) % cfg.max_positions as u32)
                .collect::<Vec<_>>(),
        );
        let slots = u32s(&dev, &(1..=b as u32).collect::<Vec<_>>());
        let eager_out: Vec<f32> = model
            .forward(&dev, &tokens, &positions, &slots)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let replay_out: Vec<f32> = graphs
            .run([&tokens, &positions, &slots])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(replay_out, eager_out, "b = {b}: bit-exact");
        let eager = time_us(&dev, 100, &mut || {
            drop(model.forward(&dev, &tokens, &positions, &slots).unwrap())
        });
        let replay = time_us(&dev, 100, &mut || {
            drop(graphs.run([&tokens, &positions, &slots]).unwrap())
        });
        println!("| {b} | {eager:.1} | {replay:.1} | {:.2} |", eager / replay);
    }
    println!("{}", graphs.stats());
}

/// Issue 26 on candle: an island that downloads its input (a synchronisation) and uploads a
/// host tensor of more than 4096 bytes built from a live value of the call, which no candle
/// capture can hold (its htod cache takes at most 4096 bytes). Replays equal the direct forward
/// bit for bit (the same candle kernels run), at captured and padded sizes, with the live value
/// changing every call; outputs are poisoned before each run.
#[test]
fn candle_islands_replay_like_the_direct_forward() {
    use cudagraph::{Candle, Islands, cuda_graph};
    /// 1536 f32 = 6144 bytes a row: every upload of the island is past candle's cache.
    const D: usize = 1536;
    struct Model {
        w: Tensor,
    }
    impl Model {
        #[cuda_graph(sizes = [1, 2, 4])]
        fn forward(
            &self,
            _dev: &CudaDevice,
            x: &Tensor,
            islands: &Islands<(f32,), Candle>,
        ) -> candle_core::Result<Tensor> {
            let h = x.broadcast_mul(&self.w)?.tanh()?;
            let g = islands.eager(_dev, [&h], |_, [h], &(shift,)| {
                let host: Vec<f32> = h.flatten_all()?.to_vec1()?;
                let shifted: Vec<f32> = host.iter().map(|v| v * 0.5 + shift).collect();
                Tensor::from_vec(shifted, h.dims(), h.device())
            })?;
            (g + x)?.sqr()
        }
    }
    let Some(dev) = candle_device("candle_islands_replay_like_the_direct_forward") else {
        return;
    };
    let mut rng = Rng(fresh_seed("candle_islands_replay_like_the_direct_forward"));
    let device = Device::Cuda(dev.clone());
    let model = Model {
        w: Tensor::from_vec(rng.vec(D, -1.0, 1.0), D, &device).unwrap(),
    };
    let spec = InputSpec::new(DType::F32, &[D]).unwrap();
    let mut graphs = model.forward_graphs(&dev, [spec], (0.0,)).expect("capture");
    println!("{}", graphs.stats());
    for s in &graphs.stats().sizes {
        assert_eq!(s.segments, 2, "size {}", s.size);
    }
    for (call, n) in [1usize, 3, 4, 2, 1].into_iter().enumerate() {
        let x = Tensor::from_vec(rng.vec(n * D, -1.0, 1.0), (n, D), &device).unwrap();
        let shift = 0.25 + call as f32;
        let want: Vec<u32> = model
            .forward(&dev, &x, &Islands::direct(&(shift,)))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect();
        graphs.poison_pool().unwrap();
        let out = graphs.run_live([&x], &(), &(shift,)).expect("run");
        assert!(out.replayed(), "n = {n}");
        assert_eq!(out.dims(), [n, D]);
        let got: Vec<u32> = out
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect();
        assert_eq!(got, want, "n = {n}, shift {shift}");
    }
    drop(graphs);
    dev.synchronize().unwrap();
    dev.cuda_stream()
        .context()
        .check_err()
        .expect("no deferred error");
}
