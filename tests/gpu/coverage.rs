//! Runner features the suite had no GPU test for: lazy capture at run time, a changed static
//! falling back, a NaN static replaying, the generated `_graph_memory` and `_graphs_refresh`,
//! more than four inputs, and the retry when the pool is exhausted.

use cudagraph::{
    DType, Error, FallbackReason, GraphPlan, InputSpec, Result, Runner, Runtime, Tensor,
    cuda_graph, ops,
};

use crate::common::{Rng, download_f32, fresh_seed, gpu, upload_bf16};

struct Norm {
    w: Tensor,
}

impl Norm {
    /// `eps` NaN means "the default" (1e-6): a NaN static the graphs must match by its bits.
    #[cuda_graph(sizes = [1, 2, 4, 8], static_args = [eps])]
    fn forward(&self, rt: &Runtime, x: &Tensor, eps: f32) -> Result<Tensor> {
        let eps = if eps.is_nan() { 1e-6 } else { eps };
        ops::rms_norm(rt, x, &self.w, eps)
    }

    #[cuda_graph(sizes = [2, 4], capture = lazy)]
    fn lazy(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(rt, x, &self.w, 1e-6)
    }
}

fn norm(rt: &Runtime, rng: &mut Rng) -> Result<(Norm, Tensor)> {
    let (w, _) = upload_bf16(rt, &rng.vec(256, 0.9, 1.1), &[256])?;
    let (x, _) = upload_bf16(rt, &rng.vec(4 * 256, -1.0, 1.0), &[4, 256])?;
    Ok((Norm { w }, x))
}

/// Lazy capture happens at the first run of a size; the replay equals eager bit for bit.
#[test]
fn lazy_capture_at_run_time() -> Result<()> {
    let Some(rt) = gpu("lazy_capture_at_run_time") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("lazy_capture_at_run_time"));
    let (model, x) = norm(&rt, &mut rng)?;
    let mut graphs = model.lazy_graphs(&rt, [InputSpec::like(&x)?])?;
    assert!(graphs.stats().sizes.iter().all(|s| !s.captured));
    let eager = download_f32(&rt, &model.lazy(&rt, &x)?)?;
    let out = graphs.run([&x])?;
    assert!(out.replayed());
    assert_eq!(download_f32(&rt, &out)?, eager);
    let captured: Vec<bool> = graphs.stats().sizes.iter().map(|s| s.captured).collect();
    assert_eq!(captured, [false, true], "only the size used was captured");
    Ok(())
}

/// A changed static falls back (counted), the captured one replays, and a NaN static matches
/// itself (compared by bits).
#[test]
fn statics_fall_back_when_changed_and_nan_replays() -> Result<()> {
    let Some(rt) = gpu("statics_fall_back_when_changed_and_nan_replays") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("statics_fall_back_when_changed_and_nan_replays"));
    let (model, x) = norm(&rt, &mut rng)?;
    let spec = [InputSpec::like(&x)?];
    let mut graphs = model.forward_graphs(&rt, spec, 1e-5)?;
    let eager = download_f32(&rt, &model.forward(&rt, &x, 1e-5)?)?;
    let out = graphs.run_with([&x], &(1e-5,))?;
    assert!(out.replayed());
    assert_eq!(download_f32(&rt, &out)?, eager);
    let changed = download_f32(&rt, &model.forward(&rt, &x, 1e-2)?)?;
    let out = graphs.run_with([&x], &(1e-2,))?;
    assert!(!out.replayed(), "a changed static runs eagerly");
    assert_eq!(download_f32(&rt, &out)?, changed);
    assert_eq!(
        graphs.stats().fallbacks_for(FallbackReason::StaticChanged),
        1
    );
    let mut nan = model.forward_graphs(&rt, spec, f32::NAN)?;
    for _ in 0..2 {
        assert!(
            nan.run_with([&x], &(f32::NAN,))?.replayed(),
            "NaN == NaN by bits"
        );
    }
    assert_eq!(nan.stats().fallback_count(), 0);
    Ok(())
}

/// The generated `_graph_memory` predicts what `_graphs` holds; the generated
/// `_graphs_refresh` rebuilds the graphs for new weights, bit-exact against eager.
#[test]
fn generated_memory_estimate_and_refresh() -> Result<()> {
    let Some(rt) = gpu("generated_memory_estimate_and_refresh") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("generated_memory_estimate_and_refresh"));
    let (model, x) = norm(&rt, &mut rng)?;
    let spec = [InputSpec::like(&x)?];
    let estimate = model.forward_graph_memory(&rt, spec, 1e-6)?;
    assert_eq!(
        estimate.graph_memory, None,
        "cudagraph's tensors: the pool is the physical figure, no graph memory nodes"
    );
    let graphs = model.forward_graphs(&rt, spec, 1e-6)?;
    assert_eq!(
        estimate.total(),
        graphs.pool_bytes() + graphs.stats().static_input_bytes
    );
    let (fresh, _) = norm(&rt, &mut rng)?;
    let (mut graphs, report) = fresh.forward_graphs_refresh(&rt, graphs)?;
    assert_eq!(report.updated_in_place + report.reinstantiated, 4);
    let eager = download_f32(&rt, &fresh.forward(&rt, &x, 1e-6)?)?;
    let out = graphs.run_with([&x], &(1e-6,))?;
    assert!(out.replayed());
    assert_eq!(
        download_f32(&rt, &out)?,
        eager,
        "the refreshed graph uses the new weight"
    );
    Ok(())
}

#[cuda_graph(sizes = [1, 4, 8])]
fn sum5(
    rt: &Runtime,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    d: &Tensor,
    e: &Tensor,
) -> Result<Tensor> {
    let ab = ops::add(rt, a, b)?;
    let cd = ops::add(rt, c, d)?;
    ops::add(rt, &ops::add(rt, &ab, &cd)?, e)
}

/// Five inputs (the one-launch copy takes four; more go by memcpy), exact and padded sizes.
#[test]
fn more_than_four_inputs() -> Result<()> {
    let Some(rt) = gpu("more_than_four_inputs") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("more_than_four_inputs"));
    let spec = InputSpec::new(DType::BF16, &[64])?;
    let mut graphs = sum5_graphs(&rt, [spec; 5])?;
    for n in [4, 3, 8, 1] {
        let mut inputs = Vec::new();
        for _ in 0..5 {
            inputs.push(upload_bf16(&rt, &rng.vec(n * 64, -1.0, 1.0), &[n, 64])?.0);
        }
        let [a, b, c, d, e] = [0, 1, 2, 3, 4].map(|i| &inputs[i]);
        let eager = download_f32(&rt, &sum5(&rt, a, b, c, d, e)?)?;
        graphs.poison_pool()?;
        let out = graphs.run([a, b, c, d, e])?;
        assert!(out.replayed());
        assert_eq!(
            download_f32(&rt, &out)?,
            eager,
            "n = {n}: same kernels, same rows"
        );
    }
    Ok(())
}

/// A forward that needs more memory at a smaller size than at the largest: the capture
/// straight into the shared chunk runs out, warms up, and gets a chunk of its own.
#[test]
fn pool_exhaustion_is_retried_with_a_larger_chunk() -> Result<()> {
    let Some(rt) = gpu("pool_exhaustion_is_retried_with_a_larger_chunk") else {
        return Ok(());
    };
    let forward = |rt: &Runtime, x: &Tensor| -> Result<Tensor> {
        if x.rows() == 1 {
            // Eight MiB of scratch only at size 1.
            let scratch = rt.zeros(&[8 << 20], DType::U32)?;
            drop(scratch);
        }
        rt.duplicate(x)
    };
    let plan = GraphPlan::new("grows", &[1, 64], 0)?;
    let spec = InputSpec::new(DType::F32, &[16])?;
    let mut graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| forward(rt, x))?;
    let sizes = &graphs.stats().sizes;
    assert!(sizes[0].pool_need > sizes[1].pool_need, "{sizes:?}");
    assert!(graphs.pool_bytes() >= sizes[0].pool_need + sizes[1].pool_need);
    for n in [1, 40] {
        let values: Vec<f32> = (0..n * 16).map(|i| i as f32).collect();
        let x = rt.upload(&values, &[n, 16])?;
        let out = graphs.run([&x])?;
        assert!(out.replayed());
        assert_eq!(rt.download::<f32>(&out)?, values);
    }
    Ok(())
}

/// `refresh` moves a size to a larger chunk when the new forward needs more pool memory, and
/// when the new forward fails it gives the old runner back, still correct: the size it had
/// already rebuilt for the new forward is dropped and captured again, with the old one, on use.
#[test]
fn refresh_grows_the_pool_and_returns_the_runner_on_error() -> Result<()> {
    let Some(rt) = gpu("refresh_grows_the_pool_and_returns_the_runner_on_error") else {
        return Ok(());
    };
    let plan = GraphPlan::new("refreshed", &[2, 4], 0)?;
    let spec = InputSpec::new(DType::F32, &[16])?;
    let graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| rt.duplicate(x))?;
    let before = graphs.pool_bytes();
    let (graphs, report) = graphs
        .refresh(&rt, |rt, [x], ()| {
            drop(rt.zeros(&[4 << 20], DType::U32)?); // 16 MiB of scratch
            rt.duplicate(x)
        })
        .map_err(Error::from)?;
    assert_eq!(report.updated_in_place + report.reinstantiated, 2);
    assert!(graphs.pool_bytes() > before, "a larger chunk was added");
    let check = |graphs: &mut Runner<'_, 1>, n: usize| -> Result<()> {
        let values: Vec<f32> = (0..n * 16).map(|i| (i * 7) as f32).collect();
        let x = rt.upload(&values, &[n, 16])?;
        let out = graphs.run([&x])?;
        assert!(out.replayed(), "n = {n}");
        assert_eq!(rt.download::<f32>(&out)?, values, "n = {n}");
        Ok(())
    };
    let mut graphs = graphs;
    for n in [2, 4, 3] {
        check(&mut graphs, n)?;
    }
    // Size 4 is rebuilt first (largest first), then size 2 fails.
    let failed = graphs
        .refresh(&rt, |rt, [x], ()| {
            if rt.is_capturing() && x.rows() == 2 {
                return Err(Error::invalid(
                    "refresh test",
                    "this forward can't be captured",
                ));
            }
            rt.duplicate(x)
        })
        .map(drop)
        .expect_err("the refresh fails at size 2");
    assert!(
        failed.error.to_string().contains("can't be captured"),
        "{failed}"
    );
    let mut graphs = *failed.runner;
    let captured: Vec<bool> = graphs.stats().sizes.iter().map(|s| s.captured).collect();
    assert_eq!(captured, [true, false], "size 4 was dropped, size 2 kept");
    for n in [2, 4, 3, 1] {
        check(&mut graphs, n)?;
    }
    Ok(())
}

/// A lazy size whose capture failed under `OnCaptureError::Abort` reports the error once and
/// is not captured again on every later call.
#[test]
fn a_failed_lazy_size_is_not_recaptured() -> Result<()> {
    let Some(rt) = gpu("a_failed_lazy_size_is_not_recaptured") else {
        return Ok(());
    };
    let attempts = std::cell::Cell::new(0);
    let plan = GraphPlan::new("fails", &[2, 4], 0)?.with_lazy_capture(true);
    let spec = InputSpec::new(DType::F32, &[16])?;
    let mut graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| {
        if rt.is_capturing() {
            attempts.set(attempts.get() + 1);
            return Err(Error::invalid(
                "lazy test",
                "this forward can't be captured",
            ));
        }
        rt.duplicate(x)
    })?;
    let x = rt.zeros(&[2, 16], DType::F32)?;
    let first = graphs.run([&x]).map(drop).expect_err("the capture fails");
    assert!(matches!(first, Error::Capture { .. }), "{first}");
    assert_eq!(attempts.get(), 1);
    for _ in 0..3 {
        let again = graphs.run([&x]).map(drop).expect_err("still failed");
        assert!(
            matches!(again, Error::CaptureFailedEarlier { size: 2, .. }),
            "{again}"
        );
    }
    assert_eq!(attempts.get(), 1, "not captured again");
    Ok(())
}

/// `refresh` checks the new forward's output like a capture does: one that does not return
/// the batch as its leading dimension fails, and the runner comes back, still correct.
#[test]
fn refresh_checks_the_output_rows() -> Result<()> {
    let Some(rt) = gpu("refresh_checks_the_output_rows") else {
        return Ok(());
    };
    let plan = GraphPlan::new("rows", &[2, 4], 0)?;
    let spec = InputSpec::new(DType::F32, &[16])?;
    let runner = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| rt.duplicate(x))?;
    let failed = runner
        .refresh(&rt, |rt, [x], ()| {
            let first = x.narrow_rows(0, 1)?;
            rt.duplicate(&first)
        })
        .map(drop)
        .expect_err("one row for a batch of 4");
    let message = failed.error.to_string();
    assert!(
        message.contains("leading dimension must be the batch"),
        "{message}"
    );
    let mut runner = *failed.runner;
    let values: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let x = rt.upload(&values, &[4, 16])?;
    let out = runner.run([&x])?;
    assert!(out.replayed());
    assert_eq!(rt.download::<f32>(&out)?, values);
    Ok(())
}
