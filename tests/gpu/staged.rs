//! Staged inputs (issue 29): a call written straight into the runner's static input buffers
//! (`Runner::stage`), then replayed with no input copy, gives the logits `run()` gives, and its
//! padded rows are padded (a smaller call after a larger one re-pads the rows the larger one
//! wrote), so the KV caches of the two paths stay equal byte for byte.

use cudagraph::{Result, Runtime};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{Rng, fresh_seed, gpu};

fn cache_bits(rt: &Runtime, model: &Llama) -> Result<Vec<u16>> {
    let mut out = Vec::new();
    for (k, v) in model.kv_caches() {
        out.extend(rt.download::<half::bf16>(k)?.iter().map(|x| x.to_bits()));
        out.extend(rt.download::<half::bf16>(v)?.iter().map(|x| x.to_bits()));
    }
    Ok(out)
}

/// Twin models (one seed): one runs `run()`, the other staged calls, over a sequence of batch
/// sizes that shrink and grow within one captured size (4, 3, 1, 8, 5, 5, 2) with fresh
/// tokens and positions; logits bit-equal at every call, caches bit-equal at the end.
#[test]
fn staged_calls_equal_run_and_repad_their_rows() -> Result<()> {
    let Some(rt) = gpu("staged_calls_equal_run_and_repad_their_rows") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("staged_calls_equal_run_and_repad_their_rows"));
    let cfg = LlamaConfig {
        cache_slots: 8,
        ..LlamaConfig::tiny()
    };
    let seed = rng.next_u64();
    let ran = Llama::random(&rt, cfg.clone(), seed)?;
    let staged_model = Llama::random(&rt, cfg.clone(), seed)?;
    let mut by_run = ran.forward_graphs(&rt, cfg.input_specs()?)?;
    let mut by_stage = staged_model.forward_graphs(&rt, cfg.input_specs()?)?;
    for n in [4usize, 3, 1, 8, 5, 5, 2] {
        let tokens: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab) as u32).collect();
        let positions: Vec<i32> = (0..n).map(|_| rng.below(cfg.cache_tokens) as i32).collect();
        let want = {
            let out = by_run.run([&rt.upload(&tokens, &[n])?, &rt.upload(&positions, &[n])?])?;
            rt.download_f32(&out)?
        };
        by_stage.poison_pool()?;
        let staged = by_stage.stage(n)?;
        assert_eq!(staged.rows(), n);
        let [t, p] = staged.inputs();
        assert_eq!(t.shape(), &[n]);
        rt.upload_into(&tokens, t)?;
        rt.upload_into(&positions, p)?;
        let out = staged.run()?;
        assert!(out.replayed(), "n {n}");
        assert_eq!(out.shape(), &[n, cfg.vocab]);
        let got = rt.download_f32(&out)?;
        drop(out);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "n {n}: staged and run logits differ"
        );
    }
    assert!(
        cache_bits(&rt, &ran)? == cache_bits(&rt, &staged_model)?,
        "a padded row of a staged call wrote the cache"
    );
    let stats = by_stage.stats();
    assert_eq!(stats.replay_count(), 7);
    // Bad stagings are errors, not panics: no rows, more rows than any size.
    assert!(by_stage.stage(0).is_err());
    assert!(by_stage.stage(100_000).is_err());
    Ok(())
}
