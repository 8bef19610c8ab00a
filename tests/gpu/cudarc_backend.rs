//! The plain-cudarc backend: a forward of cudarc's own (NVRTC kernel, cuBLAS, `stream.alloc`)
//! captured in graph-memory-node mode.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use cudagraph::cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudagraph::{
    BoxError, CudaTensor, DType, Error, GraphMemoryUsage, GraphPlan, InputSpec, Result, Runner,
    cuda_graph,
};
use cudagraph_models::cudarc_mlp::{CudarcMlp, MlpDims, capture_stream, random_values};

use crate::common::{Rng, fresh_seed, gpu};

const DIMS: MlpDims = MlpDims {
    d_in: 96,
    d_hidden: 256,
    d_out: 80,
};

fn upload(stream: &Arc<CudaStream>, values: &[f32], rows: usize, cols: usize) -> CudaTensor {
    let slice = stream.clone_htod(values).expect("upload");
    CudaTensor::from_slice(slice, &[rows, cols]).expect("tensor")
}

fn download(stream: &Arc<CudaStream>, t: &CudaTensor) -> Vec<f32> {
    let v = t.view::<f32>().expect("f32 tensor");
    stream.clone_dtoh(&v).expect("download")
}

/// A stream for a test, or `None` (printed) without a GPU.
fn stream(test: &str) -> Option<Arc<CudaStream>> {
    gpu(test)?;
    // SAFETY: each test uses the buffers of its stream's context on that stream only (the test
    // that makes a second stream orders nothing across them: it only checks a refusal).
    Some(unsafe { capture_stream(0) }.expect("stream"))
}

/// Replay equals the eager forward bit for bit at every captured size, and within a tight
/// bound for batches padded up to one (cuBLAS may pick another kernel for another row
/// count); batches past the largest size fall back; outputs are poisoned before each run.
#[test]
fn cudarc_mlp_replays_like_eager() {
    let Some(stream) = stream("cudarc_mlp_replays_like_eager") else {
        return;
    };
    let mut rng = Rng(fresh_seed("cudarc_mlp_replays_like_eager"));
    let mlp = CudarcMlp::new(&stream, DIMS, rng.next_u64()).expect("model");
    let started = Instant::now();
    let mut graphs = mlp
        .forward_graphs(&stream, [InputSpec::new(DType::F32, &[DIMS.d_in]).unwrap()])
        .expect("capture");
    let capture = started.elapsed();
    let stats = graphs.stats().clone();
    println!(
        "cudarc MLP: {} graphs captured in {:.1} ms ({} nodes at size 32), graph memory need {} B",
        stats.sizes.len(),
        capture.as_secs_f64() * 1e3,
        stats.sizes.last().map_or(0, |s| s.nodes),
        graphs.pool_bytes()
    );
    for n in 1..=33 {
        let x = upload(&stream, &rng.vec(n * DIMS.d_in, -1.0, 1.0), n, DIMS.d_in);
        let eager = download(&stream, &mlp.forward(&stream, &x).expect("eager"));
        graphs.poison_pool().expect("poison");
        let out = graphs.run([&x]).expect("run");
        assert_eq!(out.dims(), [n, DIMS.d_out]);
        assert_eq!(out.replayed(), n <= 32, "n = {n}");
        let replay = download(&stream, &out);
        assert!(replay.iter().all(|v| v.is_finite()), "n = {n}: NaN left");
        if graphs.sizes().contains(&n) || n > 32 {
            assert_eq!(replay, eager, "n = {n}: bit-exact");
        } else {
            let worst = replay
                .iter()
                .zip(&eager)
                .map(|(a, b)| ((a - b).abs() / (b.abs() + 1e-3)) as f64)
                .fold(0.0, f64::max);
            assert!(worst < 1e-4, "n = {n}: relative error {worst}");
        }
    }
    assert_eq!(graphs.stats().fallbacks.iter().sum::<u64>(), 1);
    // The output borrows the runner; to_owned copies it out.
    let x = upload(&stream, &rng.vec(3 * DIMS.d_in, -1.0, 1.0), 3, DIMS.d_in);
    let kept = graphs.run([&x]).expect("run").to_owned().expect("copy");
    let x2 = upload(&stream, &rng.vec(3 * DIMS.d_in, -1.0, 1.0), 3, DIMS.d_in);
    let second = download(&stream, &graphs.run([&x2]).expect("run"));
    assert_ne!(
        download(&stream, &kept),
        second,
        "the copy is not rewritten"
    );
    assert_eq!(
        download(&stream, &kept),
        download(&stream, &mlp.forward(&stream, &x).unwrap())
    );
    let _ = kept
        .into_slice::<f32>()
        .expect("an owned copy gives its slice back");
}

/// The graphs of one runner in node mode: their allocation nodes, and what the driver
/// reserves once every size replayed, against the largest graph alone (1.0 when the graphs
/// share physical memory as cudagraph's pool does); then release (a trim) and replays that
/// still match.
#[test]
fn cudarc_graph_memory_is_measured_and_released() {
    let Some(stream) = stream("cudarc_graph_memory_is_measured_and_released") else {
        return;
    };
    let ctx = stream.context().clone();
    // Scratch of 256 KiB per row: 16 to 128 MiB per graph,
    // well above the driver's reservation granularity.
    const ROW_FLOATS: usize = 64 * 1024;
    let sizes = [64, 128, 256, 512];
    stream.synchronize().unwrap();
    ctx.check_err().unwrap();
    // A clean baseline: graph memory an earlier test's graphs left reserved (the driver keeps it
    // cached after they are destroyed) is trimmed first, or it would serve these graphs and hide
    // their reservation from the figures below.
    GraphMemoryUsage::trim(&ctx).expect("trim");
    let before = GraphMemoryUsage::of_context(&ctx).expect("usage");
    GraphMemoryUsage::reset_high(&ctx).expect("reset");
    let forward = |s: &Arc<CudaStream>, [x]: [&CudaTensor; 1], _: &()| -> Result<CudaTensor> {
        let rows = x.rows();
        let scratch = s
            .alloc_zeros::<f32>(rows * ROW_FLOATS)
            .map_err(Error::driver("alloc"))?;
        let mut y = s
            .alloc_zeros::<f32>(rows * 4)
            .map_err(Error::driver("alloc"))?;
        // y = x; the scratch is only zeroed (a memset node), which makes it a graph allocation
        // the driver must back.
        s.memcpy_dtod(&x.view::<f32>()?, &mut y)
            .map_err(Error::driver("copy"))?;
        drop(scratch);
        CudaTensor::from_slice(y, &[rows, 4])
    };
    let mut graphs = Runner::capture(
        &stream,
        GraphPlan::new("scratch", &sizes, 0).unwrap(),
        [InputSpec::new(DType::F32, &[4]).unwrap()],
        (),
        forward,
    )
    .expect("capture");
    let needs: Vec<usize> = graphs.stats().sizes.iter().map(|s| s.pool_need).collect();
    let largest = *needs.iter().max().unwrap();
    let sum: usize = needs.iter().sum();
    assert!(
        largest >= 512 * ROW_FLOATS * 4,
        "the scratch is a graph allocation"
    );
    assert_eq!(graphs.pool_bytes(), largest);
    let mut rng = Rng(fresh_seed("cudarc_graph_memory_is_measured_and_released"));
    for &size in sizes.iter().rev() {
        let x = upload(&stream, &rng.vec(size * 4, -1.0, 1.0), size, 4);
        let out = graphs.run([&x]).unwrap();
        assert!(out.replayed());
        assert_eq!(download(&stream, &out), download(&stream, &x));
    }
    stream.synchronize().unwrap();
    let after = GraphMemoryUsage::of_context(&ctx).expect("usage");
    let reserved = after.reserved_high.saturating_sub(before.reserved);
    println!(
        "graph memory nodes: largest graph {:.1} MiB, sum over {} graphs {:.1} MiB, driver reserved \
         {:.1} MiB after replaying each (used high {:.1} MiB): ratio to the largest graph alone {:.2}",
        largest as f64 / 1048576.0,
        needs.len(),
        sum as f64 / 1048576.0,
        reserved as f64 / 1048576.0,
        after.used_high as f64 / 1048576.0,
        reserved as f64 / largest as f64
    );
    assert!(
        reserved as usize >= largest,
        "the driver backs the largest graph"
    );
    println!("{}", graphs.stats());

    // Release: a trim; replays map the memory again and still match.
    graphs.release_memory().expect("release");
    assert!(graphs.is_released());
    let x = upload(&stream, &rng.vec(100 * 4, -1.0, 1.0), 100, 4);
    assert!(matches!(graphs.run([&x]), Err(Error::Released { .. })));
    let trimmed = GraphMemoryUsage::of_context(&ctx).expect("usage");
    println!(
        "after release_memory: reserved {:.1} MiB",
        trimmed.reserved as f64 / 1048576.0
    );
    assert!(
        trimmed.reserved < after.reserved,
        "the trim gave memory back"
    );
    graphs.resume().expect("resume");
    // `resume` uploads the largest graph, which maps its graph memory before any launch.
    stream.synchronize().unwrap();
    let resumed = GraphMemoryUsage::of_context(&ctx).expect("usage");
    println!(
        "after resume, before a launch: reserved {:.1} MiB",
        resumed.reserved as f64 / 1048576.0
    );
    assert!(
        resumed.reserved > trimmed.reserved,
        "resume's uploads mapped the graphs' memory"
    );
    assert_eq!(
        download(&stream, &graphs.run([&x]).unwrap()),
        download(&stream, &x)
    );
}

/// A context that tracks events is refused with the fix in the message, and so are the
/// per-thread and the default streams (one handle, a different stream on each thread).
#[test]
fn cudarc_event_tracking_is_refused() {
    if gpu("cudarc_event_tracking_is_refused").is_none() {
        return;
    }
    let build = |stream: &Arc<CudaStream>| {
        Runner::capture(
            stream,
            GraphPlan::new("refused", &[1, 2], 0).unwrap(),
            [InputSpec::new(DType::F32, &[4]).unwrap()],
            (),
            |s: &Arc<CudaStream>, [x]: [&CudaTensor; 1], _: &()| {
                let y = s
                    .alloc_zeros::<f32>(x.rows() * 4)
                    .map_err(Error::driver("alloc"))?;
                CudaTensor::from_slice(y, &[x.rows(), 4])
            },
        )
        .map(drop)
    };
    let ctx = CudaContext::new(0).unwrap();
    let err = build(&ctx.new_stream().unwrap()).expect_err("refused");
    assert!(err.to_string().contains("disable_event_tracking"), "{err}");
    // SAFETY: no buffer is allocated on this context's streams outside `build`, which uses one.
    let quiet = unsafe { capture_stream(0) }.unwrap();
    for stream in [
        quiet.context().per_thread_stream(),
        quiet.context().default_stream(),
    ] {
        let err = build(&stream).expect_err("refused");
        assert!(err.to_string().contains("stream of their own"), "{err}");
    }
    build(&quiet).expect("a stream of its own on a quiet context");
}

/// A forward that keeps an allocation made under capture, or frees memory allocated before
/// it, fails to capture with an error that says so; the stream is usable afterwards.
#[test]
fn cudarc_escapes_and_foreign_frees_are_capture_errors() {
    let Some(stream) = stream("cudarc_escapes_and_foreign_frees_are_capture_errors") else {
        return;
    };
    struct Leaky {
        kept: RefCell<Vec<CudaSlice<f32>>>,
    }
    impl Leaky {
        #[cuda_graph(sizes = [2])]
        fn forward(
            &self,
            stream: &Arc<CudaStream>,
            x: &CudaTensor,
        ) -> Result<CudaTensor, BoxError> {
            let scratch = stream.alloc_zeros::<f32>(64)?;
            self.kept.borrow_mut().push(scratch);
            let y = stream.alloc_zeros::<f32>(x.rows() * 4)?;
            Ok(CudaTensor::from_slice(y, &[x.rows(), 4])?)
        }
    }
    let spec = || [InputSpec::new(DType::F32, &[4]).unwrap()];
    let leaky = Leaky {
        kept: RefCell::new(Vec::new()),
    };
    let err = leaky.forward_graphs(&stream, spec()).expect_err("escape");
    println!("escape: {err}");
    assert!(err.to_string().contains("kept"), "{err}");

    // Frees, under capture only, a buffer allocated before the capture.
    let outside = RefCell::new(Some(stream.alloc_zeros::<f32>(16).unwrap()));
    let err = Runner::capture(
        &stream,
        GraphPlan::new("freer", &[2], 0).unwrap(),
        spec(),
        (),
        |s: &Arc<CudaStream>, [x]: [&CudaTensor; 1], _: &()| {
            let capturing = s.capture_status().map_err(Error::driver("status"))?
                != cudagraph::cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
            if capturing {
                drop(outside.borrow_mut().take());
            }
            let y = s.alloc_zeros::<f32>(x.rows() * 4).map_err(Error::driver("alloc"))?;
            CudaTensor::from_slice(y, &[x.rows(), 4])
        },
    )
    .expect_err("a foreign free captured");
    println!("foreign free: {err}");
    assert!(err.to_string().contains("outside the capture"), "{err}");
    // The stream left capture mode and works.
    let ok = stream.alloc_zeros::<f32>(8).unwrap();
    assert_eq!(stream.clone_dtoh(&ok).unwrap(), vec![0.0; 8]);
    // What the leaky forward kept under capture is real memory: the runner launched the failed
    // capture's graph once, so the escaped allocation is backed (zeros, as the forward wrote),
    // readable, and freed when dropped, with no error recorded.
    let kept = leaky.kept.take();
    assert_eq!(kept.len(), 2, "one from the warm-up, one from the capture");
    for buffer in &kept {
        assert_eq!(stream.clone_dtoh(buffer).unwrap(), vec![0.0; 64]);
    }
    drop(kept);
    stream.synchronize().unwrap();
    stream.context().check_err().expect("no deferred error");
}

/// A refresh onto new weights re-records every size; replays then match the new model.
#[test]
fn cudarc_refresh_follows_new_weights() {
    let Some(stream) = stream("cudarc_refresh_follows_new_weights") else {
        return;
    };
    let mut rng = Rng(fresh_seed("cudarc_refresh_follows_new_weights"));
    let old = CudarcMlp::new(&stream, DIMS, rng.next_u64()).unwrap();
    let new = CudarcMlp::new(&stream, DIMS, rng.next_u64()).unwrap();
    let graphs = old
        .forward_graphs(&stream, [InputSpec::new(DType::F32, &[DIMS.d_in]).unwrap()])
        .unwrap();
    let (mut graphs, report) = new
        .forward_graphs_refresh(&stream, graphs)
        .expect("refresh");
    println!("refresh: {report:?}");
    assert_eq!(report.updated_in_place + report.reinstantiated, 6);
    let x = upload(
        &stream,
        &random_values(rng.next_u64(), 4 * DIMS.d_in, 1.0),
        4,
        DIMS.d_in,
    );
    let eager = download(&stream, &new.forward(&stream, &x).unwrap());
    assert_eq!(download(&stream, &graphs.run([&x]).unwrap()), eager);
}

/// Issue 24, item 2: the model's cuBLAS handle and weights are ordered on the stream it was
/// built with, so its forward refuses any other stream, also one of the same context (on
/// e876914 it ran there, its GEMMs on the model's stream and its kernel on the other).
#[test]
fn cudarc_mlp_refuses_another_stream() {
    let Some(stream) = stream("cudarc_mlp_refuses_another_stream") else {
        return;
    };
    let mut rng = Rng(fresh_seed("cudarc_mlp_refuses_another_stream"));
    let mlp = CudarcMlp::new(&stream, DIMS, rng.next_u64()).unwrap();
    let other = stream.context().new_stream().unwrap();
    let x = upload(
        &other,
        &random_values(rng.next_u64(), 2 * DIMS.d_in, 1.0),
        2,
        DIMS.d_in,
    );
    let err = mlp
        .forward(&other, &x)
        .expect_err("another stream is refused");
    assert!(err.to_string().contains("not the model's own"), "{err}");
    other.synchronize().unwrap();
    // Its own stream still works.
    let x = upload(
        &stream,
        &random_values(rng.next_u64(), 2 * DIMS.d_in, 1.0),
        2,
        DIMS.d_in,
    );
    assert_eq!(
        download(&stream, &mlp.forward(&stream, &x).unwrap()).len(),
        2 * DIMS.d_out
    );
}

/// Issue 24, item 4: the eager fallback's output is checked as a capture's is. A forward that
/// returns, for sizes no graph covers, a tensor of another stream is refused by `run_with` and
/// `run_eager` (on e876914 both returned it, and `to_owned` then copied it on the runner's
/// stream while the other stream still wrote it).
#[test]
fn cudarc_fallback_output_of_another_stream_is_refused() {
    let Some(stream) = stream("cudarc_fallback_output_of_another_stream_is_refused") else {
        return;
    };
    let other = stream.context().new_stream().unwrap();
    let plan = GraphPlan::new("other_stream_fallback", &[1, 2], 0).unwrap();
    let mut graphs = Runner::capture(
        &stream,
        plan,
        [InputSpec::new(DType::F32, &[4]).unwrap()],
        (),
        |s: &Arc<CudaStream>, [x]: [&CudaTensor; 1], _: &()| {
            // Captured sizes use the runner's stream; larger batches (eager only) another one.
            let on = if x.rows() <= 2 { s } else { &other };
            let y = on
                .alloc_zeros::<f32>(x.rows() * 4)
                .map_err(Error::driver("alloc"))?;
            CudaTensor::from_slice(y, &[x.rows(), 4])
        },
    )
    .expect("capture");
    let small = upload(&stream, &[1.0; 2 * 4], 2, 4);
    assert!(graphs.run([&small]).unwrap().replayed());
    let large = upload(&stream, &[1.0; 5 * 4], 5, 4);
    let err = graphs
        .run([&large])
        .expect_err("a fallback output of another stream");
    assert!(matches!(err, Error::ForeignTensor { .. }), "{err}");
    let err = graphs
        .run_eager([&large], &())
        .expect_err("run_eager's output of another stream");
    assert!(matches!(err, Error::ForeignTensor { .. }), "{err}");
    // An input of another stream is refused too, before the forward runs.
    let foreign = upload(&other, &[1.0; 2 * 4], 2, 4);
    let err = graphs
        .run_eager([&foreign], &())
        .expect_err("run_eager's input of another stream");
    assert!(matches!(err, Error::ForeignTensor { .. }), "{err}");
    other.synchronize().unwrap();
    stream.synchronize().unwrap();
    stream.context().check_err().expect("no deferred error");
}

/// Review of d0c124f, `p7` (node mode): a forward that keeps a graph allocation under capture
/// and then fails. The discarded capture is launched once, so the kept allocation is backed
/// memory of its own: it can be written and read, and it is freed when the tensor drops (on
/// d0c124f it was never backed: reading it faulted).
#[test]
fn cudarc_a_tensor_kept_by_a_failed_capture_is_backed() {
    let Some(stream) = stream("cudarc_a_tensor_kept_by_a_failed_capture_is_backed") else {
        return;
    };
    let stash: RefCell<Option<CudaTensor>> = RefCell::new(None);
    let plan = GraphPlan::new("keep_then_fail", &[4], 0)
        .unwrap()
        .with_lazy_capture(true);
    let mut graphs = Runner::capture(
        &stream,
        plan,
        [InputSpec::new(DType::F32, &[4]).unwrap()],
        (),
        |s: &Arc<CudaStream>, [x]: [&CudaTensor; 1], _: &()| {
            let capturing = s.capture_status().map_err(Error::driver("status"))?
                != cudagraph::cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
            if capturing {
                *stash.borrow_mut() = Some(CudaTensor::zeros::<f32>(s, &[x.rows(), 4])?);
                return Err(Error::invalid("keep_then_fail", "fails after keeping a tensor"));
            }
            CudaTensor::zeros::<f32>(s, &[x.rows(), 4])
        },
    )
    .unwrap();
    let x = upload(&stream, &[1.0; 16], 4, 4);
    let err = graphs.run([&x]).map(drop).expect_err("fails");
    assert!(err.to_string().contains("fails after keeping"), "{err}");
    let kept = stash.borrow_mut().take().expect("kept");
    let marker: Vec<f32> = (0..16).map(|i| 100.0 + i as f32).collect();
    let mut slice = kept.into_slice::<f32>().expect("owns its buffer");
    stream.memcpy_htod(&marker, &mut slice).expect("write");
    assert_eq!(stream.clone_dtoh(&slice).expect("read"), marker);
    drop(slice);
    stream.synchronize().unwrap();
    stream.context().check_err().expect("no deferred error");
}

const SQUARE: MlpDims = MlpDims {
    d_in: 64,
    d_hidden: 128,
    d_out: 64,
};

/// Two cuBLAS MLPs around an island that downloads, computes on the host with a live value of
/// the call and uploads. The first MLP's output is a graph allocation of the first segment
/// that the second segment frees (it crosses the island).
struct TwoMlps {
    a: CudarcMlp,
    b: CudarcMlp,
    /// Set to make the island fail.
    fail: std::cell::Cell<bool>,
}

impl TwoMlps {
    fn new(stream: &Arc<CudaStream>, rng: &mut Rng) -> Self {
        Self {
            a: CudarcMlp::new(stream, SQUARE, rng.next_u64()).unwrap(),
            b: CudarcMlp::new(stream, SQUARE, rng.next_u64()).unwrap(),
            fail: std::cell::Cell::new(false),
        }
    }

    #[cuda_graph(sizes = [1, 2, 4, 8])]
    fn forward(
        &self,
        stream: &Arc<CudaStream>,
        x: &CudaTensor,
        islands: &cudagraph::Islands<(f32,), cudagraph::Raw>,
    ) -> Result<CudaTensor, BoxError> {
        let h = self.a.forward(stream, x)?;
        let g = islands.eager(stream, [&h], |s, [h], &(shift,)| -> Result<_, BoxError> {
            if self.fail.get() {
                return Err("the island was asked to fail".into());
            }
            let host = s.clone_dtoh(&h.view::<f32>()?)?;
            let shifted: Vec<f32> = host.iter().map(|v| v.max(0.0) + shift).collect();
            Ok(CudaTensor::from_slice(s.clone_htod(&shifted)?, h.dims())?)
        })?;
        self.b.forward(stream, &g)
    }
}

/// Issue 26 on plain cudarc: a forward of two cuBLAS MLPs around an island that downloads,
/// computes on the host with a live value of the call and uploads (a synchronisation and two
/// host copies, none capturable). Replays equal the direct forward bit for bit at the captured
/// sizes and within a tight bound at padded ones (cuBLAS may pick another kernel for another
/// row count); the live value changes every call; outputs are poisoned before each run.
#[test]
fn cudarc_islands_replay_like_the_direct_forward() {
    use cudagraph::Islands;
    let Some(stream) = stream("cudarc_islands_replay_like_the_direct_forward") else {
        return;
    };
    let mut rng = Rng(fresh_seed("cudarc_islands_replay_like_the_direct_forward"));
    let model = TwoMlps::new(&stream, &mut rng);
    let spec = InputSpec::new(DType::F32, &[SQUARE.d_in]).unwrap();
    let mut graphs = model
        .forward_graphs(&stream, [spec], (0.0,))
        .expect("capture");
    println!("{}", graphs.stats());
    for s in &graphs.stats().sizes {
        assert_eq!(s.segments, 2, "size {}", s.size);
    }
    for (call, n) in [1usize, 3, 8, 2, 5, 4].into_iter().enumerate() {
        let x = upload(
            &stream,
            &random_values(rng.next_u64(), n * SQUARE.d_in, 1.0),
            n,
            SQUARE.d_in,
        );
        let shift = 0.5 + call as f32;
        let direct = model
            .forward(&stream, &x, &Islands::direct(&(shift,)))
            .unwrap();
        let want = download(&stream, &direct);
        graphs.poison_pool().unwrap();
        let out = graphs.run_live([&x], &(), &(shift,)).expect("run");
        assert!(out.replayed(), "n = {n}");
        let got = download(&stream, &out);
        if [1, 2, 4, 8].contains(&n) {
            assert_eq!(got, want, "n = {n}");
        } else {
            let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / scale)
                .fold(0.0, f32::max);
            assert!(err <= 1e-5, "n = {n}: relative error {err}");
        }
    }
    assert_eq!(
        graphs
            .stats()
            .sizes
            .iter()
            .map(|s| s.island_calls)
            .sum::<u64>(),
        6
    );
    drop(graphs);
    stream.synchronize().unwrap();
    stream.context().check_err().expect("no deferred error");
}

/// Graph allocations that cross an island (made by a segment launched during the capture, freed
/// by a later one) are freed when the recording ends: a runner that never replays, a capture
/// that fails in its island, and an estimate leave the driver's graph memory as they found it
/// (after a trim). Before the fix each left the first MLP's output allocated.
#[test]
fn cudarc_island_crossing_allocations_are_freed() {
    use cudagraph::{GraphPlan, OnCaptureError};
    let Some(stream) = stream("cudarc_island_crossing_allocations_are_freed") else {
        return;
    };
    let mut rng = Rng(fresh_seed("cudarc_island_crossing_allocations_are_freed"));
    let model = TwoMlps::new(&stream, &mut rng);
    let spec = || [InputSpec::new(DType::F32, &[SQUARE.d_in]).unwrap()];
    let used = |what: &str| {
        stream.synchronize().unwrap();
        GraphMemoryUsage::trim(stream.context()).unwrap();
        let usage = GraphMemoryUsage::of_context(stream.context()).unwrap();
        println!("{what}: {usage:?}");
        usage.used
    };
    let baseline = used("baseline");
    // Captured, never replayed, dropped.
    let graphs = model
        .forward_graphs(&stream, spec(), (0.0,))
        .expect("capture");
    drop(graphs);
    assert_eq!(used("a runner dropped without a replay"), baseline);
    // An estimate.
    let estimate = model
        .forward_graph_memory(&stream, spec(), (0.0,))
        .expect("estimate");
    assert!(estimate.pool_bytes > 0);
    // Node mode: the driver's physical figures come with the (virtual) node sum, read while
    // the largest graph was held.
    let held = estimate
        .graph_memory
        .expect("an estimate in node mode reports the driver's graph memory");
    assert!(
        held.reserved > 0,
        "the driver reserved nothing for the largest graph: {held:?}"
    );
    assert_eq!(used("after an estimate"), baseline);
    // The island fails at capture: every size fails (run eagerly instead).
    model.fail.set(true);
    let plan = GraphPlan::new("forward", &[1, 2, 4, 8], 0)
        .unwrap()
        .on_capture_error(OnCaptureError::Eager);
    let failed = Runner::capture_live(
        &stream,
        plan,
        spec(),
        (),
        (0.0,),
        |s: &Arc<CudaStream>,
         [x]: [&CudaTensor; 1],
         _: &(),
         islands: &cudagraph::Islands<(f32,), cudagraph::Raw>| {
            model.forward(s, x, islands).map_err(Error::from_user)
        },
    );
    match failed {
        Ok(runner) => {
            for s in &runner.stats().sizes {
                let error = s.capture_error.as_deref().unwrap_or_default();
                assert!(
                    error.contains("in island 1") && error.contains("asked to fail"),
                    "size {}: {error:?}",
                    s.size
                );
            }
            drop(runner);
        }
        Err(e) => panic!("under OnCaptureError::Eager the runner is built: {e}"),
    }
    model.fail.set(false);
    assert_eq!(used("after captures whose island failed"), baseline);
    stream.context().check_err().expect("no deferred error");
}
