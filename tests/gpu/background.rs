//! Background capture (issue 29, `capture = background`): the runner serves at once, each
//! size's first call runs eagerly and captures that size before returning, later calls of it
//! replay; under a stream of calls of random sizes every output equals an init-captured
//! runner's on a twin model bit for bit (a size's first call is made at the size, where the
//! eager forward runs the graph's kernels on its shapes), and `capture_pending` captures what
//! traffic has not reached.

use std::time::Duration;

use cudagraph::{FallbackReason, Result, Runtime, Tensor, cuda_graph};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{Rng, assert_graph_matches_eager, draw_decode_inputs, fresh_seed, gpu};

/// The decoder's step, captured in the background.
struct Background<'a>(&'a Llama);

impl Background<'_> {
    #[cuda_graph(sizes = [1, 2, 4, 8..=32 step 8], pad = [positions = -1], capture = background)]
    fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        self.0.forward(rt, tokens, positions)
    }

    /// The same sizes, captured when the runner is built: the reference.
    #[cuda_graph(sizes = [1, 2, 4, 8..=32 step 8], pad = [positions = -1])]
    fn at_init(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        self.0.forward(rt, tokens, positions)
    }
}

#[test]
fn background_capture_serves_at_once_and_matches_init_capture() -> Result<()> {
    let Some(rt) = gpu("background_capture_serves_at_once_and_matches_init_capture") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "background_capture_serves_at_once_and_matches_init_capture",
    ));
    let cfg = LlamaConfig {
        cache_slots: 32,
        ..LlamaConfig::tiny()
    };
    let seed = rng.next_u64();
    let init_model = Llama::random(&rt, cfg.clone(), seed)?;
    let bg_model = Llama::random(&rt, cfg.clone(), seed)?;
    let reference = Background(&init_model);
    let mut init = reference.at_init_graphs(&rt, cfg.input_specs()?)?;
    let wrapper = Background(&bg_model);
    let mut bg = wrapper.forward_graphs(&rt, cfg.input_specs()?)?;
    let sizes = bg.sizes().to_vec();
    assert_eq!(
        bg.pending_captures(),
        sizes.len(),
        "nothing captured at construction"
    );
    assert!(bg.stats().sizes.iter().all(|s| !s.captured));
    let mut seen = std::collections::BTreeSet::new();
    let mut eager_calls = 0u64;
    for call in 0..40 {
        let mut n = 1 + rng.below(32);
        let size = *sizes.iter().find(|&&s| s >= n).expect("a size holds n");
        let captured_before = bg
            .stats()
            .sizes
            .iter()
            .any(|s| s.size == size && s.captured);
        // A call of a size not captured yet runs eagerly: at exactly the size it runs the
        // graph's kernels on the graph's shapes, so the twins' caches stay equal bit for bit
        // (an eager call of fewer rows could round a key differently, and every later read of
        // it would differ).
        if !captured_before {
            n = size;
            eager_calls += 1;
        }
        let (tokens, positions) = draw_decode_inputs(&rt, &mut rng, &cfg, n)?;
        let want = init.run([&tokens, &positions])?;
        let want = rt.download_f32(&want)?;
        bg.poison_pool()?;
        let out = bg.run([&tokens, &positions])?;
        seen.insert(size);
        assert_eq!(
            out.replayed(),
            captured_before,
            "call {call}: n {n}, size {size}"
        );
        let got = rt.download_f32(&out)?;
        drop(out);
        // A replay ran the same graph as the init runner's; an eager first call, at the size,
        // the same kernels on the same shapes.
        assert_graph_matches_eager(&format!("call {call}, n {n}"), &got, &want, n, true);
        assert!(
            bg.stats()
                .sizes
                .iter()
                .any(|s| s.size == size && s.captured),
            "size {size} captured after its first call"
        );
    }
    let stats = bg.stats();
    assert_eq!(
        stats.fallbacks_for(FallbackReason::NotCapturedYet),
        eager_calls,
        "one eager call per size not captured yet"
    );
    let left = bg.pending_captures();
    let captured = stats.sizes.iter().filter(|s| s.captured).count();
    assert_eq!(left, sizes.len() - captured);
    assert!(
        captured <= seen.len() + 1,
        "only the sizes called, and the largest"
    );
    let captured = bg.capture_pending(Duration::from_secs(120))?;
    assert_eq!(captured, left);
    // One pool for every graph, whatever order traffic captured them in.
    let init_pool = init.stats().pool_bytes;
    let bg_pool = bg.stats().pool_bytes;
    println!("pool: background {bg_pool} B, init {init_pool} B");
    assert!(
        bg_pool as f64 <= 1.05 * init_pool as f64,
        "background capture grew the pool: {bg_pool} B against {init_pool} B"
    );
    assert_eq!(bg.pending_captures(), 0);
    println!("{}", bg.stats());
    // Every size replays now.
    for &n in &sizes {
        let (tokens, positions) = draw_decode_inputs(&rt, &mut rng, &cfg, n)?;
        let want = init.run([&tokens, &positions])?;
        let want = rt.download_f32(&want)?;
        let out = bg.run([&tokens, &positions])?;
        assert!(out.replayed(), "size {n}");
        assert_graph_matches_eager(
            &format!("size {n}"),
            &rt.download_f32(&out)?,
            &want,
            n,
            true,
        );
    }
    Ok(())
}

/// A runner dropped in the middle of a background capture (its forward panics while it is
/// captured: the capture a call starts after its eager run, the first one `capture_pending`
/// starts, and a later one of `capture_pending`) leaves nothing behind: the panic reaches the caller, no stream is left capturing,
/// the abandoned graphs' memory goes back, and the runtime then captures and replays.
#[test]
fn a_runner_dropped_mid_background_capture_leaves_nothing_behind() -> Result<()> {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use cudagraph::{GraphPlan, InputSpec, Runner};

    let Some(rt) = gpu("a_runner_dropped_mid_background_capture_leaves_nothing_behind") else {
        return Ok(());
    };
    let x = rt.upload(&[2.5f32; 16], &[4, 4])?;
    let spec = InputSpec::like(&x)?;
    let (free_before, _) = rt.mem_info()?;
    let panicking = |rt: &Runtime, [x]: [&Tensor; 1], _: &()| -> Result<Tensor> {
        let y = rt.duplicate(x)?;
        if rt.is_capturing() {
            panic!("the forward panics while it is captured in the background");
        }
        Ok(y)
    };
    for round in 0..3 {
        // From a call: the eager run succeeds, the capture after it panics.
        let plan = GraphPlan::new("panics", &[1, 2, 4], 0)?.with_background_capture(true);
        let caught = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
            let mut runner = Runner::capture(&rt, plan, [spec], (), panicking)?;
            drop(runner.run([&x])?);
            Ok(())
        }));
        assert!(
            caught.is_err(),
            "round {round}: the panic reaches the caller"
        );
        assert!(
            !rt.is_capturing(),
            "round {round}: a stream is left capturing"
        );
        // From capture_pending, with nothing called before.
        let plan = GraphPlan::new("panics", &[1, 2, 4], 0)?.with_background_capture(true);
        let caught = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
            let mut runner = Runner::capture(&rt, plan, [spec], (), panicking)?;
            runner.capture_pending(Duration::from_secs(10))?;
            Ok(())
        }));
        assert!(
            caught.is_err(),
            "round {round}: capture_pending's panic reaches the caller"
        );
        assert!(!rt.is_capturing());
        // A later recording panics, not the runner's first (which sizes the pool): one that
        // records into memory the runner already holds.
        let captures = std::cell::Cell::new(0usize);
        let plan = GraphPlan::new("panics", &[1, 2, 4], 0)?.with_background_capture(true);
        let caught = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
            let mut runner = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| {
                let y = rt.duplicate(x)?;
                if rt.is_capturing() {
                    captures.set(captures.get() + 1);
                    if captures.get() > 1 {
                        panic!("the second capture panics");
                    }
                }
                Ok(y)
            })?;
            runner.capture_pending(Duration::from_secs(10))?;
            Ok(())
        }));
        assert!(
            caught.is_err(),
            "round {round}: the second capture's panic reaches the caller"
        );
        assert!(
            captures.get() >= 2,
            "round {round}: the panic came from a later capture"
        );
        assert!(!rt.is_capturing());
    }
    rt.release_cached_memory()?;
    let (free_after, _) = rt.mem_info()?;
    assert!(
        free_after + (64 << 20) >= free_before,
        "the abandoned captures' memory was freed ({free_before} -> {free_after} bytes free)"
    );
    let plan = GraphPlan::new("copy", &[1, 2, 4], 0)?.with_background_capture(true);
    let mut graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| rt.duplicate(x))?;
    let first = graphs.run([&x])?;
    assert!(!first.replayed(), "a size's first call runs eagerly");
    assert_eq!(rt.download::<f32>(&first)?, [2.5; 16]);
    drop(first);
    let out = graphs.run([&x])?;
    assert!(out.replayed(), "captured after its first call");
    assert_eq!(rt.download::<f32>(&out)?, [2.5; 16]);
    Ok(())
}
