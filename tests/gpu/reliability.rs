//! Capture failures (each cause named in plain words, with the op and line), failure policies,
//! out-of-memory, bad input, and two runners in two threads.

use std::cell::{Cell, RefCell};

use cudagraph::cudarc::driver::{CudaSlice, result as cu};
use cudagraph::kernels::reference::linear_ref;
use cudagraph::ops;
use cudagraph::{
    DType, Error, FallbackReason, GraphPlan, InputSpec, OnCaptureError, Result, Runner, Runtime,
    Tensor,
};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{
    Rng, assert_close, assert_graph_matches_eager, download_f32, fresh_seed, gpu, upload_bf16,
};

const HIDDEN: usize = 64;
/// This file, to check that reported source lines hold the failing call.
const SOURCE: &str = include_str!("reliability.rs");
const SIZES: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// `rt` usable after a failure: an eager linear on fresh data matches the host reference.
/// An eager linear layer still matches the reference, through each of its kernels: 1 and 2 rows
/// (the small-batch kernels) and 40 rows (the GEMM backend). Run before a measurement of free
/// memory too, so that all are initialised (cuBLAS's handle and workspace are allocated at first
/// use, once per runtime, and are not a leak).
fn eager_still_correct(rt: &Runtime, rng: &mut Rng) -> Result<()> {
    let (w, wr) = upload_bf16(rt, &rng.vec(HIDDEN * HIDDEN, -0.2, 0.2), &[HIDDEN, HIDDEN])?;
    for rows in [1, 2, 40] {
        let (x, xr) = upload_bf16(rt, &rng.vec(rows * HIDDEN, -1.0, 1.0), &[rows, HIDDEN])?;
        let y = ops::linear(rt, &x, &w)?;
        assert_close(
            &format!("eager linear of {rows} rows after a failed capture"),
            &download_f32(rt, &y)?,
            &linear_ref(&xr, &wr, None, HIDDEN),
            8e-3,
        );
    }
    Ok(())
}

fn free_bytes(rt: &Runtime) -> Result<usize> {
    rt.release_cached_memory()?;
    Ok(rt.mem_info()?.0)
}

/// Captures `forward` over SIZES; expects a capture error whose text names the function, a
/// size, `op` at `line`, and `cause`; checks that memory returns and the runtime still works.
fn expect_capture_failure(
    rt: &Runtime,
    rng: &mut Rng,
    forward: impl Fn(&Runtime, &Tensor) -> Result<Tensor>,
    op: &str,
    call: &str,
    cause: &str,
) -> Result<()> {
    // Warm the runtime (cuBLAS handle and workspace, kernel modules) so the memory check below
    // sees only what the failed capture could leak.
    eager_still_correct(rt, rng)?;
    let before = free_bytes(rt)?;
    let plan = GraphPlan::new("probe", &SIZES, 0)?;
    let err = Runner::capture(
        rt,
        plan,
        [InputSpec::new(DType::BF16, &[HIDDEN])?],
        (),
        |rt, [x], ()| forward(rt, x),
    )
    .expect_err("the capture must fail");
    let text = err.to_string();
    println!("{text}");
    let Error::Capture { function, site, .. } = &err else {
        panic!("not a capture error: {text}")
    };
    assert_eq!(*function, "probe");
    assert_eq!(site.map(|s| s.op), Some(op), "{text}");
    let line = site.map_or(0, |s| s.location.line()) as usize;
    let source_line = SOURCE.lines().nth(line.wrapping_sub(1)).unwrap_or("");
    assert!(
        site.is_some_and(|s| s.location.file().ends_with("reliability.rs")),
        "{text}"
    );
    assert!(
        source_line.contains(call),
        "line {line} is `{source_line}`, not the call `{call}`: {text}"
    );
    assert!(text.contains(cause), "cause `{cause}` missing from: {text}");
    rt.synchronize()?;
    eager_still_correct(rt, rng)?;
    let after = free_bytes(rt)?;
    let leaked = before.saturating_sub(after);
    assert!(
        leaked < 4 << 20,
        "{leaked} bytes not returned after the failed capture: {text}"
    );
    Ok(())
}

#[test]
fn host_copy_during_capture_is_named() -> Result<()> {
    let Some(rt) = gpu("host_copy_during_capture_is_named") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("host_copy_during_capture_is_named"));
    let forward = |rt: &Runtime, x: &Tensor| -> Result<Tensor> {
        let y = rt.duplicate(x)?;
        let _host: Vec<half::bf16> = rt.download(&y)?;
        Ok(y)
    };
    expect_capture_failure(
        &rt,
        &mut rng,
        forward,
        "download",
        "rt.download(",
        "a host copy",
    )
}

#[test]
fn driver_allocation_during_capture_is_named() -> Result<()> {
    let Some(rt) = gpu("driver_allocation_during_capture_is_named") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("driver_allocation_during_capture_is_named"));
    let forward = |rt: &Runtime, x: &Tensor| -> Result<Tensor> {
        let y = rt.duplicate(x)?;
        rt.enter_op("cuMemAlloc in user code");
        // SAFETY: a plain device allocation, freed right below when it succeeds (eagerly).
        let ptr = unsafe { cu::malloc_sync(1 << 20) }.map_err(Error::driver("cuMemAlloc"))?;
        // SAFETY: `ptr` was allocated just above and is freed once.
        unsafe { cu::free_sync(ptr) }.map_err(Error::driver("cuMemFree"))?;
        Ok(y)
    };
    expect_capture_failure(
        &rt,
        &mut rng,
        forward,
        "cuMemAlloc in user code",
        "rt.enter_op(\"cuMemAlloc in user code\")",
        "an allocation from the driver",
    )
}

#[test]
fn free_of_outside_memory_during_capture_is_named() -> Result<()> {
    let Some(rt) = gpu("free_of_outside_memory_during_capture_is_named") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("free_of_outside_memory_during_capture_is_named"));
    // A cudarc buffer allocated before the capture, dropped by the forward while it records.
    // SAFETY: the buffer is used on the runtime's stream only; the test drops it inside the
    // capture on purpose, which the capture must refuse (the point of the test).
    let stream = unsafe { rt.stream() };
    let outside: RefCell<Option<CudaSlice<u8>>> = RefCell::new(Some(
        stream
            .alloc_zeros::<u8>(1 << 20)
            .map_err(Error::driver("alloc"))?,
    ));
    let forward = |rt: &Runtime, x: &Tensor| -> Result<Tensor> {
        let y = rt.duplicate(x)?;
        if rt.is_capturing() {
            rt.enter_op("drop of an outside buffer");
            drop(outside.borrow_mut().take());
        }
        Ok(y)
    };
    expect_capture_failure(
        &rt,
        &mut rng,
        forward,
        "drop of an outside buffer",
        "rt.enter_op(\"drop of an outside buffer\")",
        "a free of memory allocated outside the capture",
    )
}

#[test]
fn failure_halfway_aborts_or_runs_eagerly() -> Result<()> {
    let Some(rt) = gpu("failure_halfway_aborts_or_runs_eagerly") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("failure_halfway_aborts_or_runs_eagerly"));
    let (w, wr) = upload_bf16(&rt, &rng.vec(HIDDEN * HIDDEN, -0.2, 0.2), &[HIDDEN, HIDDEN])?;
    // Fails when asked for 8 rows, in warm-up or capture alike: sizes 32 and 16 are captured
    // first, then 8 breaks.
    let forward = |rt: &Runtime, x: &Tensor| -> Result<Tensor> {
        if x.rows() == 8 {
            return Err(Error::invalid("injected", "failure injected at 8 rows"));
        }
        ops::linear(rt, x, &w)
    };
    let spec = [InputSpec::new(DType::BF16, &[HIDDEN])?];
    eager_still_correct(&rt, &mut rng)?;
    let before = free_bytes(&rt)?;
    let err = Runner::capture(
        &rt,
        GraphPlan::new("halfway", &SIZES, 0)?,
        spec,
        (),
        |rt, [x], ()| forward(rt, x),
    )
    .expect_err("abort is the default");
    assert!(matches!(err, Error::Capture { size: 8, .. }), "{err}");
    eager_still_correct(&rt, &mut rng)?;
    let leaked = before.saturating_sub(free_bytes(&rt)?);
    assert!(
        leaked < 4 << 20,
        "{leaked} bytes kept after an aborted capture"
    );

    let plan = GraphPlan::new("halfway", &SIZES, 0)?.on_capture_error(OnCaptureError::Eager);
    let mut graphs = Runner::capture(&rt, plan, spec, (), |rt, [x], ()| forward(rt, x))?;
    let failed: Vec<usize> = graphs
        .stats()
        .sizes
        .iter()
        .filter(|s| s.capture_error.is_some())
        .map(|s| s.size)
        .collect();
    assert_eq!(failed, [8]);
    for n in [3, 20, 6] {
        let (x, xr) = upload_bf16(&rt, &rng.vec(n * HIDDEN, -1.0, 1.0), &[n, HIDDEN])?;
        let out = graphs.run([&x])?;
        // 6 pads to the failed size 8: the eager function runs (on 6 rows it succeeds).
        assert_eq!(out.replayed(), n != 6, "n = {n}");
        assert_close(
            "replay next to a failed size, or its eager fallback",
            &download_f32(&rt, &out)?,
            &linear_ref(&xr, &wr, None, HIDDEN),
            8e-3,
        );
    }
    assert_eq!(
        graphs.stats().fallbacks_for(FallbackReason::CaptureFailed),
        1
    );
    Ok(())
}

#[test]
fn out_of_memory_during_capture_is_typed_and_clean() -> Result<()> {
    let Some(rt) = gpu("out_of_memory_during_capture_is_typed_and_clean") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("out_of_memory"));
    let (_, total) = rt.mem_info()?;
    let huge = total; // more than is free: the allocation must fail
    eager_still_correct(&rt, &mut rng)?;
    let before = free_bytes(&rt)?;
    let calls = Cell::new(0usize);
    let err = Runner::capture(
        &rt,
        GraphPlan::new("oom", &SIZES, 0)?,
        [InputSpec::new(DType::BF16, &[HIDDEN])?],
        (),
        |rt, [x], ()| {
            calls.set(calls.get() + 1);
            let _big = rt.alloc(&[huge], DType::BF16)?;
            rt.duplicate(x)
        },
    )
    .expect_err("an allocation larger than the device must fail");
    let text = err.to_string();
    println!("{text}");
    assert!(
        matches!(
            err,
            Error::Capture {
                function: "oom",
                size: 32,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("OUT_OF_MEMORY") || text.contains("out of memory"),
        "{text}"
    );
    eager_still_correct(&rt, &mut rng)?;
    let leaked = before.saturating_sub(free_bytes(&rt)?);
    assert!(
        leaked < 4 << 20,
        "{leaked} bytes kept after an out-of-memory capture"
    );
    Ok(())
}

#[test]
fn bad_inputs_are_errors_or_counted_fallbacks() -> Result<()> {
    let Some(rt) = gpu("bad_inputs_are_errors_or_counted_fallbacks") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("bad_inputs"));
    let model = Llama::random(&rt, LlamaConfig::tiny(), rng.next_u64())?;
    let mut graphs = model.forward_graphs(&rt, model.config().input_specs()?)?;
    let positions = rt.upload(&[1i32, 2, 3], &[3])?;
    // Wrong dtype: no graph replays; the eager path rejects it with a typed error.
    let float_tokens = rt.upload(&[1.0f32, 2.0, 3.0], &[3])?;
    let err = graphs
        .run([&float_tokens, &positions])
        .expect_err("f32 token ids are rejected");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(
        graphs.stats().fallbacks_for(FallbackReason::ShapeMismatch),
        1
    );
    // Wrong number of dimensions: likewise.
    let tokens_2d = rt.upload(&[1u32, 2, 3], &[3, 1])?;
    let out = graphs.run([&tokens_2d, &positions]);
    if let Ok(out) = &out {
        assert!(!out.replayed());
    }
    assert_eq!(
        graphs.stats().fallbacks_for(FallbackReason::ShapeMismatch),
        2
    );
    // Zero rows, and rank-0 inputs: typed errors.
    let empty = rt.alloc(&[0], DType::U32)?;
    assert!(matches!(
        graphs.run([&empty, &positions]),
        Err(Error::InvalidArgument { .. })
    ));
    let scalar = rt.upload(&[1u32], &[])?;
    assert!(matches!(
        graphs.run([&scalar, &positions]),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(
        graphs.stats().replay_count(),
        0,
        "no bad input ever replays a graph"
    );
    Ok(())
}

#[test]
fn two_runners_in_two_threads() -> Result<()> {
    if gpu("two_runners_in_two_threads").is_none() {
        return Ok(());
    }
    let seed = fresh_seed("two_runners_in_two_threads");
    let worker = move |salt: u64| -> Result<f64> {
        let rt = Runtime::new(0)?;
        let mut rng = Rng(seed ^ salt);
        let model = Llama::random(&rt, LlamaConfig::tiny(), rng.next_u64())?;
        let mut graphs = model.forward_graphs(&rt, model.config().input_specs()?)?;
        let mut worst = 0f64;
        for _ in 0..20 {
            let n = 1 + rng.below(256);
            let cfg = model.config();
            let tokens: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab) as u32).collect();
            let positions: Vec<i32> = (0..n).map(|_| rng.below(cfg.cache_tokens) as i32).collect();
            let (t, p) = (rt.upload(&tokens, &[n])?, rt.upload(&positions, &[n])?);
            let eager = download_f32(&rt, &model.forward(&rt, &t, &p)?)?;
            let out = graphs.run([&t, &p])?;
            assert!(out.replayed());
            let exact = out.size() == Some(n);
            let got = download_f32(&rt, &out)?;
            worst = worst.max(assert_graph_matches_eager(
                "two threads",
                &got,
                &eager,
                n,
                exact,
            ));
        }
        Ok(worst)
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| worker(1));
        let b = s.spawn(|| worker(2));
        (a.join(), b.join())
    });
    let (a, b) = (
        a.expect("thread 1 panicked")?,
        b.expect("thread 2 panicked")?,
    );
    // Each replay was checked in its thread: bit-exact at captured sizes, per-row elsewhere.
    println!("two_runners_in_two_threads: worst padded per-row ratios {a:.3e}, {b:.3e}");
    Ok(())
}

#[test]
fn tensor_on_another_device_is_an_error() -> Result<()> {
    let Some(rt) = gpu("tensor_on_another_device_is_an_error") else {
        return Ok(());
    };
    if Runtime::device_count()? < 2 {
        println!("skipped tensor_on_another_device_is_an_error: one GPU visible, needs two");
        return Ok(());
    }
    let other = Runtime::new(1)?;
    let mut rng = Rng(fresh_seed("tensor_on_another_device_is_an_error"));
    let (w, _) = upload_bf16(&rt, &rng.vec(HIDDEN * HIDDEN, -0.2, 0.2), &[HIDDEN, HIDDEN])?;
    let plan = GraphPlan::new("devices", &SIZES, 0)?;
    let spec = [InputSpec::new(DType::BF16, &[HIDDEN])?];
    let mut graphs = Runner::capture(&rt, plan, spec, (), |rt, [x], ()| ops::linear(rt, x, &w))?;
    let (x_elsewhere, _) = upload_bf16(&other, &rng.vec(4 * HIDDEN, -1.0, 1.0), &[4, HIDDEN])?;
    let err = graphs
        .run([&x_elsewhere])
        .expect_err("a tensor on device 1 given to a runner on device 0");
    println!("tensor_on_another_device_is_an_error: {err}");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(
        graphs.stats().replay_count() + graphs.stats().fallback_count(),
        0
    );
    Ok(())
}
