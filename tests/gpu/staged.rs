//! Staged inputs (issue 29): a call written straight into the runner's static input buffers
//! (`Runner::stage`), then replayed with no input copy, gives the logits `run()` gives, and its
//! padded rows are padded (a smaller call after a larger one re-pads the rows the larger one
//! wrote), so the KV caches of the two paths stay equal byte for byte.

use cudagraph::{Result, Runtime};
use cudagraph_models::llama::{Llama, LlamaConfig};

use crate::common::{Rng, fresh_seed, gpu, kv_cache_bits};

/// Two tiny decoders of one seed (tiny's cache: a slot for every row of its largest captured
/// size, 256): one for `run()`, one for staged calls.
fn twins(rt: &Runtime, rng: &mut Rng) -> Result<(LlamaConfig, Llama, Llama)> {
    let cfg = LlamaConfig::tiny();
    let seed = rng.next_u64();
    let ran = Llama::random(rt, cfg.clone(), seed)?;
    let staged = Llama::random(rt, cfg.clone(), seed)?;
    Ok((cfg, ran, staged))
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
    let (cfg, ran, staged_model) = twins(&rt, &mut rng)?;
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
        kv_cache_bits(&rt, &ran)? == kv_cache_bits(&rt, &staged_model)?,
        "a padded row of a staged call wrote the cache"
    );
    let stats = by_stage.stats();
    assert_eq!(stats.replay_count(), 7);
    // Bad stagings are errors, not panics: no rows, more rows than any size.
    assert!(by_stage.stage(0).is_err());
    assert!(by_stage.stage(100_000).is_err());
    Ok(())
}

/// A staged call re-pads its padded rows even when they held a real row before: call A (4 rows)
/// puts row 3 at position p; an eager forward outside the runners then writes slot 3 at p with
/// another token; call B (3 rows, size 4) must run row 3 padded. Were row 3 left as A's, the
/// staged model would rewrite slot 3 at p with A's key and value; the twin, whose `run()` pads,
/// keeps the eager forward's. The caches are compared bit for bit.
#[test]
fn a_staged_call_pads_rows_an_earlier_call_filled() -> Result<()> {
    let Some(rt) = gpu("a_staged_call_pads_rows_an_earlier_call_filled") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("a_staged_call_pads_rows_an_earlier_call_filled"));
    let (cfg, ran, staged_model) = twins(&rt, &mut rng)?;
    let mut by_run = ran.forward_graphs(&rt, cfg.input_specs()?)?;
    let mut by_stage = staged_model.forward_graphs(&rt, cfg.input_specs()?)?;
    let draw = |rng: &mut Rng, n: usize| -> (Vec<u32>, Vec<i32>) {
        (
            (0..n).map(|_| rng.below(cfg.vocab) as u32).collect(),
            (0..n).map(|_| rng.below(cfg.cache_tokens) as i32).collect(),
        )
    };
    let mut call = |tokens: &[u32], positions: &[i32]| -> Result<()> {
        let n = tokens.len();
        drop(by_run.run([&rt.upload(tokens, &[n])?, &rt.upload(positions, &[n])?])?);
        let staged = by_stage.stage(n)?;
        let [t, p] = staged.inputs();
        rt.upload_into(tokens, t)?;
        rt.upload_into(positions, p)?;
        drop(staged.run()?);
        Ok(())
    };
    let (tokens_a, positions_a) = draw(&mut rng, 4);
    call(&tokens_a, &positions_a)?;
    // The eager forward, outside both runners: slot 3 at A's position, another token.
    let mut tokens_e = tokens_a.clone();
    tokens_e[3] = (tokens_a[3] + 1) % cfg.vocab as u32;
    let mut positions_e = vec![-1i32; 4];
    positions_e[3] = positions_a[3];
    for model in [&ran, &staged_model] {
        drop(model.forward(
            &rt,
            &rt.upload(&tokens_e, &[4])?,
            &rt.upload(&positions_e, &[4])?,
        )?);
    }
    let (tokens_b, positions_b) = draw(&mut rng, 3);
    call(&tokens_b, &positions_b)?;
    rt.synchronize()?;
    assert!(
        kv_cache_bits(&rt, &ran)? == kv_cache_bits(&rt, &staged_model)?,
        "the staged call ran row 3 with an earlier call's token and position"
    );
    Ok(())
}
