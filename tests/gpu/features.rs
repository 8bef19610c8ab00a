//! What no other tool gives: the memory estimate before committing, size advice from traffic,
//! and refresh of every graph for new weights without a new capture.

use cudagraph::{GraphPlan, Result, Runner};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{
    Rng, assert_graph_matches_eager, download_f32, draw_decode_inputs as draw, fresh_seed, gpu,
};

fn sizes() -> Vec<usize> {
    [1, 2, 4].into_iter().chain((8..=256).step_by(8)).collect()
}

#[test]
fn memory_estimate_is_within_five_percent() -> Result<()> {
    let Some(rt) = gpu("memory_estimate_is_within_five_percent") else {
        return Ok(());
    };
    let cfg = LlamaConfig::qwen3_0_6b_shaped();
    let model = Llama::random(&rt, cfg.clone(), fresh_seed("memory_estimate"))?;
    let estimate = Runner::estimate(
        &rt,
        GraphPlan::new("forward", &sizes(), 0)?,
        cfg.input_specs()?,
        (),
        |rt, [t, p], ()| model.forward(rt, t, p),
    )?;
    let graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
    let held = graphs.stats().pool_bytes + graphs.stats().static_input_bytes;
    let off = (estimate.total() as f64 - held as f64).abs() / held as f64;
    println!(
        "memory estimate: {:.1} MiB estimated (largest size alone), {:.1} MiB held after capturing all {} sizes: off by {:.2}%",
        estimate.total() as f64 / 1048576.0,
        held as f64 / 1048576.0,
        graphs.sizes().len(),
        off * 100.0
    );
    assert!(off <= 0.05, "estimate off by {:.2}%", off * 100.0);
    Ok(())
}

#[test]
fn size_advice_from_recorded_traffic() -> Result<()> {
    let Some(rt) = gpu("size_advice_from_recorded_traffic") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("size_advice"));
    let model = Llama::random(&rt, LlamaConfig::tiny(), rng.next_u64())?;
    let mut graphs = model.forward_graphs(&rt, model.config().input_specs()?)?;
    // Skewed traffic: mostly small batches, some around 33.
    for i in 0..200 {
        let n = if i % 4 == 0 { 33 } else { 1 + rng.below(5) };
        let (t, p) = draw(&rt, &mut rng, model.config(), n)?;
        graphs.run([&t, &p])?;
    }
    let waste = graphs.stats().padding_waste();
    let advice = graphs.advise_sizes(6)?;
    println!(
        "traffic padding waste with the captured sizes: {:.1}%; advice: {advice}",
        waste * 100.0
    );
    assert!(advice.sizes.contains(&33), "{advice}");
    assert!(
        advice.waste() <= waste,
        "the advice never pads more than the sizes in use"
    );
    Ok(())
}

#[test]
fn refresh_for_new_weights_matches_eager() -> Result<()> {
    let Some(rt) = gpu("refresh_for_new_weights_matches_eager") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("refresh"));
    let old = Llama::random(&rt, LlamaConfig::tiny(), rng.next_u64())?;
    let new = Llama::random(&rt, LlamaConfig::tiny(), rng.next_u64())?;
    let graphs = old.forward_graphs(&rt, old.config().input_specs()?)?;
    let capture_s = graphs.stats().capture_wall.as_secs_f64();
    let (mut graphs, report) = graphs.refresh(&rt, |rt, [t, p], ()| new.forward(rt, t, p))?;
    drop(old); // the refreshed runner no longer borrows the old model
    println!(
        "refresh: {} graphs updated in place, {} re-instantiated, {:.1} ms (capture was {:.1} ms)",
        report.updated_in_place,
        report.reinstantiated,
        report.time.as_secs_f64() * 1e3,
        capture_s * 1e3
    );
    assert_eq!(report.updated_in_place + report.reinstantiated, 35);
    let mut worst = 0f64;
    for &n in graphs.sizes().to_vec().iter() {
        let (t, p) = draw(&rt, &mut rng, new.config(), n)?;
        let eager = download_f32(&rt, &new.forward(&rt, &t, &p)?)?;
        graphs.poison_pool()?;
        let out = graphs.run([&t, &p])?;
        assert!(out.replayed());
        // Every n here is a captured size: the same kernels as eager, bit for bit.
        let got = download_f32(&rt, &out)?;
        worst = worst.max(assert_graph_matches_eager(
            &format!("n = {n}: refreshed graph vs new eager"),
            &got,
            &eager,
            n,
            true,
        ));
    }
    println!("refresh: every size matches the new weights' eager forward (worst {worst:.3e})");
    Ok(())
}

/// `Runtime::download_f32` widens bf16 exactly, passes f32 through and names the dtype of an
/// integer tensor in its error.
#[test]
fn download_f32_reads_any_float_tensor() -> cudagraph::Result<()> {
    let Some(rt) = crate::common::gpu("download_f32_reads_any_float_tensor") else {
        return Ok(());
    };
    let values: Vec<f32> = (0..37).map(|i| i as f32 * 0.375 - 5.0).collect();
    let bf: Vec<half::bf16> = values.iter().copied().map(half::bf16::from_f32).collect();
    let t = rt.upload(&bf, &[37])?;
    let widened: Vec<f32> = bf.iter().map(|v| v.to_f32()).collect();
    assert_eq!(rt.download_f32(&t)?, widened);
    let t = rt.upload(&values, &[37])?;
    assert_eq!(rt.download_f32(&t)?, values);
    let ids = rt.upload(&[1u32, 2, 3], &[3])?;
    let err = rt.download_f32(&ids).unwrap_err();
    assert!(err.to_string().contains("u32"), "{err}");
    Ok(())
}
