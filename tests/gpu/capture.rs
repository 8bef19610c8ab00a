//! Capture without the macro, and capture failures.

use cudagraph::{DType, Error, GraphPlan, InputSpec, Result, Runner, Runtime, Tensor};

use crate::common::{Rng, download_f32, fresh_seed, gpu, upload_bf16};

#[test]
fn runtime_capture_replays_a_copy() -> Result<()> {
    let Some(rt) = gpu("runtime_capture_replays_a_copy") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("runtime_capture_replays_a_copy"));
    let values = rng.vec(1000, -1.0, 1.0);
    let (src, rounded) = upload_bf16(&rt, &values, &[1000])?;
    let dst = rt.alloc(&[1000], DType::BF16)?;
    rt.fill_bytes(&dst, 0xFF)?;
    let graph = rt.capture(|rt| rt.copy(&src, &dst))?;
    assert!(graph.node_count() >= 1);
    // Poisoned destination, then replay: every element written.
    rt.fill_bytes(&dst, 0xFF)?;
    graph.replay()?;
    assert_eq!(download_f32(&rt, &dst)?, rounded);
    // New source contents, same graph: the replay reads them.
    let fresh = rng.vec(1000, -1.0, 1.0);
    let (src2, rounded2) = upload_bf16(&rt, &fresh, &[1000])?;
    rt.copy(&src2, &src)?;
    graph.replay()?;
    assert_eq!(download_f32(&rt, &dst)?, rounded2);
    Ok(())
}

const SYNC_LINE: u32 = line!() + 4;

fn sync_inside(rt: &Runtime, x: &Tensor) -> Result<Tensor> {
    let y = rt.duplicate(x)?;
    rt.synchronize()?;
    Ok(y)
}

#[test]
fn illegal_op_names_function_size_and_op_and_leaves_runtime_usable() -> Result<()> {
    let Some(rt) = gpu("illegal_op_names_function_size_and_op") else {
        return Ok(());
    };
    rt.release_cached_memory()?;
    let (free_before, _) = rt.mem_info()?;
    let plan = GraphPlan::new("sync_inside", &[2, 4], 0)?;
    let spec = [InputSpec::new(DType::F32, &[8])?];
    let err = Runner::capture(&rt, plan, spec, (), |rt, [x], ()| sync_inside(rt, x))
        .expect_err("a synchronize under capture must fail the capture");
    let text = err.to_string();
    match &err {
        Error::Capture {
            function,
            size,
            site,
            source,
        } => {
            assert_eq!(*function, "sync_inside");
            assert_eq!(*size, 4, "largest size is captured first");
            assert_eq!(site.map(|s| s.op), Some("synchronize"));
            assert_eq!(
                site.map(|s| s.location.line()),
                Some(SYNC_LINE),
                "the caller's line"
            );
            assert!(
                matches!(**source, Error::IllegalDuringCapture { .. }),
                "{source}"
            );
        }
        other => panic!("expected a capture error, got {other}"),
    }
    assert!(
        text.contains("sync_inside") && text.contains("size 4"),
        "{text}"
    );
    // Still usable: an eager copy round-trips.
    let x = rt.upload(&[1.0f32, 2.0, 3.0], &[3])?;
    let y = rt.duplicate(&x)?;
    assert_eq!(rt.download::<f32>(&y)?, [1.0, 2.0, 3.0]);
    drop((x, y));
    rt.release_cached_memory()?;
    let (free_after, _) = rt.mem_info()?;
    let leaked = free_before.saturating_sub(free_after);
    assert!(
        leaked < 4 << 20,
        "{leaked} bytes not returned after a failed capture"
    );
    Ok(())
}
