//! Graphs keyed by more than the batch (issue 27): a host value rounded up to buckets, a
//! variant, and an input dimension padded to buckets; every key replays like the eager forward
//! at the key's values, keys beyond the table fall back with their reason, one pool serves every
//! graph, lazy capture goes key by key.

use cudagraph::{DType, FallbackReason, InputSpec, Result, Runtime, Tensor, cuda_graph, ops};
use half::bf16;

use crate::common::{Rng, fresh_seed, gpu};

/// `cols * ctx * mode`: `ctx` rounded up to 16, 64 or 256, `mode` 1 or 2, `cols` padded to 4
/// or 8 columns with zeros.
struct Keyed;

impl Keyed {
    #[cuda_graph(
        sizes = [1, 2, 4],
        buckets = [ctx = [16, 64, 256], cols[1] = [4, 8]],
        variants = [mode = [1, 2]],
        pad = [cols = 0]
    )]
    fn forward(&self, rt: &Runtime, cols: &Tensor, ctx: usize, mode: u8) -> Result<Tensor> {
        ops::scale(rt, cols, ctx as f32 * f32::from(mode))
    }

    /// The same, captured key by key on first use.
    #[cuda_graph(
        sizes = [1, 2, 4],
        buckets = [ctx = [16, 64, 256], cols[1] = [4, 8]],
        variants = [mode = [1, 2]],
        pad = [cols = 0],
        capture = lazy
    )]
    fn lazy(&self, rt: &Runtime, cols: &Tensor, ctx: usize, mode: u8) -> Result<Tensor> {
        ops::scale(rt, cols, ctx as f32 * f32::from(mode))
    }
}

/// The bucket of `value` in `buckets`.
fn bucket(buckets: &[usize], value: usize) -> Option<usize> {
    buckets.iter().copied().find(|&b| value <= b)
}

/// Random values 1, 2 or 3 (products with the scales stay exact in bf16).
fn cols(rt: &Runtime, rng: &mut Rng, n: usize, c: usize) -> Result<(Tensor, Vec<f32>)> {
    let host: Vec<f32> = (0..n * c).map(|_| (1 + rng.below(3)) as f32).collect();
    let bf: Vec<bf16> = host.iter().copied().map(bf16::from_f32).collect();
    Ok((rt.upload(&bf, &[n, c])?, host))
}

/// Every (size, ctx bucket, column bucket, mode) replays what the eager forward computes on
/// the padded input at the bucket's value, bit for bit; a value one past a boundary uses the
/// next bucket; the forward sees the padded shape; the pool serves all 36 graphs at the size of
/// the largest alone (<= 1.05x); calls are histogrammed per key.
#[test]
fn every_key_replays_like_eager_at_its_bucket() -> Result<()> {
    let Some(rt) = gpu("every_key_replays_like_eager_at_its_bucket") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("every_key_replays_like_eager_at_its_bucket"));
    // The spec's column count is replaced by the largest bucket.
    let spec = InputSpec::new(DType::BF16, &[8])?;
    let mut graphs = Keyed.forward_graphs(&rt, [spec])?;
    let stats = graphs.stats().clone();
    println!("{stats}");
    assert_eq!(
        stats.sizes.len(),
        3 * 3 * 2 * 2,
        "sizes x ctx x mode x cols"
    );
    assert!(stats.sizes.iter().all(|s| s.captured));
    let alone = Keyed.forward_graph_memory(&rt, [spec])?;
    println!(
        "pool {} B for {} graphs; the largest alone {} B",
        stats.pool_bytes,
        stats.sizes.len(),
        alone.pool_bytes
    );
    assert!(stats.pool_bytes as f64 <= 1.05 * alone.pool_bytes as f64);
    let mut calls = 0;
    for ctx in [1usize, 16, 17, 64, 65, 200, 256] {
        for c in [1usize, 4, 5, 8] {
            for mode in [1u8, 2] {
                for n in [1usize, 3, 4] {
                    let (input, host) = cols(&rt, &mut rng, n, c)?;
                    let ctx_b = bucket(&[16, 64, 256], ctx).unwrap();
                    let c_b = bucket(&[4, 8], c).unwrap();
                    graphs.poison_pool()?;
                    let out = graphs.run_with([&input], &(ctx, mode))?;
                    calls += 1;
                    assert!(out.replayed(), "ctx {ctx}, c {c}, mode {mode}, n {n}");
                    assert_eq!(out.shape(), &[n, c_b], "the forward sees the padded shape");
                    let got = rt.download_f32(&out)?;
                    drop(out);
                    let scale = ctx_b as f32 * f32::from(mode);
                    for r in 0..n {
                        for j in 0..c_b {
                            let want = if j < c { host[r * c + j] * scale } else { 0.0 };
                            assert_eq!(
                                got[r * c_b + j],
                                want,
                                "ctx {ctx} (bucket {ctx_b}), c {c} (bucket {c_b}), mode {mode}, row {r}, column {j}"
                            );
                        }
                    }
                }
            }
        }
    }
    let stats = graphs.stats();
    assert_eq!(stats.replay_count(), calls);
    assert_eq!(stats.fallback_count(), 0);
    let ctx_counts = &stats.keys.get("ctx").expect("ctx histogram").counts;
    assert_eq!(ctx_counts.get(&17), Some(&(4 * 2 * 3)));
    let col_counts = &stats.keys.get("cols[1]").expect("cols histogram").counts;
    assert_eq!(col_counts.get(&5), Some(&(7 * 2 * 3)));
    // Bucket advice from the traffic: two ctx buckets, the largest the largest value seen.
    let largest = *ctx_counts.keys().max().expect("ctx values") as usize;
    let advice = graphs.advise_buckets("ctx", 2)?;
    println!("{advice}");
    assert_eq!(advice.advice.sizes.len(), 2);
    assert_eq!(advice.advice.sizes.last(), Some(&largest));
    assert!(advice.attribute().starts_with("buckets = [ctx = ["));
    let dims = graphs.advise_buckets("cols[1]", 1)?;
    assert_eq!(dims.advice.sizes.len(), 1);
    for bad in ["mode", "nope"] {
        let e = graphs.advise_buckets(bad, 2).unwrap_err().to_string();
        assert!(e.contains("ctx, cols[1]"), "{e}");
    }
    Ok(())
}

/// Keys beyond the table fall back with their own reason and run the forward on the call's
/// own values; a variant switched every call replays the right graph set.
#[test]
fn keys_beyond_the_table_fall_back_with_their_reason() -> Result<()> {
    let Some(rt) = gpu("keys_beyond_the_table_fall_back_with_their_reason") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "keys_beyond_the_table_fall_back_with_their_reason",
    ));
    let spec = InputSpec::new(DType::BF16, &[8])?;
    let mut graphs = Keyed.forward_graphs(&rt, [spec])?;
    let (input, host) = cols(&rt, &mut rng, 2, 3)?;
    // A variant switched per call.
    for (call, mode) in [1u8, 2, 2, 1, 2].into_iter().enumerate() {
        let out = graphs.run_with([&input], &(20, mode))?;
        assert!(out.replayed(), "call {call}");
        let got = rt.download_f32(&out)?;
        assert_eq!(got[0], host[0] * 64.0 * f32::from(mode), "call {call}");
    }
    // ctx above the largest bucket: eager, with the call's own value.
    let out = graphs.run_with([&input], &(300, 1))?;
    assert!(!out.replayed());
    assert_eq!(out.shape(), &[2, 3], "unpadded");
    assert_eq!(rt.download_f32(&out)?[0], host[0] * 300.0);
    drop(out);
    // Columns above the largest bucket.
    let (wide, wide_host) = cols(&rt, &mut rng, 2, 9)?;
    let out = graphs.run_with([&wide], &(16, 1))?;
    assert!(!out.replayed());
    assert_eq!(rt.download_f32(&out)?[0], wide_host[0] * 16.0);
    drop(out);
    // An unlisted variant.
    let out = graphs.run_with([&input], &(16, 3))?;
    assert!(!out.replayed());
    assert_eq!(rt.download_f32(&out)?[0], host[0] * 48.0);
    drop(out);
    let stats = graphs.stats();
    assert_eq!(stats.fallbacks_for(FallbackReason::AboveBuckets), 2);
    assert_eq!(stats.fallbacks_for(FallbackReason::UnlistedVariant), 1);
    assert_eq!(stats.keys.unlisted_variants, 1);
    // A batch too large is that, whatever the key.
    let (big, _) = cols(&rt, &mut rng, 5, 3)?;
    assert!(!graphs.run_with([&big], &(16, 1))?.replayed());
    assert_eq!(graphs.stats().fallbacks_for(FallbackReason::TooLarge), 1);
    Ok(())
}

/// Lazy capture goes key by key: a call captures its own (size, key) graph only.
#[test]
fn lazy_capture_is_per_key() -> Result<()> {
    let Some(rt) = gpu("lazy_capture_is_per_key") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("lazy_capture_is_per_key"));
    let spec = InputSpec::new(DType::BF16, &[8])?;
    let mut graphs = Keyed.lazy_graphs(&rt, [spec])?;
    assert_eq!(
        graphs.stats().sizes.iter().filter(|s| s.captured).count(),
        0
    );
    let (input, host) = cols(&rt, &mut rng, 3, 6)?;
    let out = graphs.run_with([&input], &(100, 2))?;
    assert!(out.replayed());
    assert_eq!(rt.download_f32(&out)?[0], host[0] * 512.0);
    drop(out);
    let captured: Vec<(usize, String)> = graphs
        .stats()
        .sizes
        .iter()
        .filter(|s| s.captured)
        .map(|s| (s.size, s.key.clone()))
        .collect();
    assert_eq!(
        captured,
        vec![(4, "ctx ≤ 256, mode = 2, cols[1] = 8".to_owned())]
    );
    Ok(())
}

/// The decoder's multi-token step (`Llama::forward_multi`, graphed by the batch and by `q` with
/// `tokens[1] + positions[1] = [1, 2, 3, 4]`) gives, for each of its `q` tokens, the logits of
/// the token-by-token decode steps over the same cache, within the kernels' bound (other GEMM
/// shapes and the unfused attention run), at captured and padded batch sizes.
#[test]
fn a_multi_token_step_matches_token_by_token_steps() -> Result<()> {
    use cudagraph_models::llama::{Llama, LlamaConfig};
    let Some(rt) = gpu("a_multi_token_step_matches_token_by_token_steps") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "a_multi_token_step_matches_token_by_token_steps",
    ));
    let cfg = LlamaConfig::tiny();
    let seed = rng.next_u64();
    let multi = Llama::random(&rt, cfg.clone(), seed)?;
    let steps = Llama::random(&rt, cfg.clone(), seed)?;
    let specs = [
        InputSpec::new(DType::U32, &[4])?,
        InputSpec::new(DType::I32, &[4])?,
    ];
    let mut graphs = multi.forward_multi_graphs(&rt, specs)?;
    println!("{}", graphs.stats());
    for (b, q) in [(1usize, 1usize), (3, 2), (4, 3), (2, 4), (5, 4)] {
        let tokens: Vec<u32> = (0..b * q).map(|_| rng.below(cfg.vocab) as u32).collect();
        let mut positions = Vec::with_capacity(b * q);
        for _ in 0..b {
            let base = rng.below(cfg.cache_tokens - q) as i32;
            positions.extend((0..q as i32).map(|j| base + j));
        }
        let t = rt.upload(&tokens, &[b, q])?;
        let p = rt.upload(&positions, &[b, q])?;
        graphs.poison_pool()?;
        let out = graphs.run([&t, &p])?;
        assert!(out.replayed(), "b {b}, q {q}");
        // q in 1..=4 is its own bucket: no padded columns.
        assert_eq!(out.shape(), &[b, q, cfg.vocab], "b {b}, q {q}");
        let got = rt.download_f32(&out)?;
        drop(out);
        let width = q;
        for j in 0..q {
            let col_t: Vec<u32> = (0..b).map(|r| tokens[r * q + j]).collect();
            let col_p: Vec<i32> = (0..b).map(|r| positions[r * q + j]).collect();
            let want = rt.download_f32(&steps.forward(
                &rt,
                &rt.upload(&col_t, &[b])?,
                &rt.upload(&col_p, &[b])?,
            )?)?;
            let (mut diff, mut norm) = (0f64, 0f64);
            for r in 0..b {
                for v in 0..cfg.vocab {
                    let g = f64::from(got[(r * width + j) * cfg.vocab + v]);
                    let w = f64::from(want[r * cfg.vocab + v]);
                    diff += (g - w) * (g - w);
                    norm += w * w;
                }
            }
            let err = (diff / norm).sqrt();
            println!("b {b}, q {q}, token {j}: relative error {err:.2e}");
            assert!(err < 3e-2, "b {b}, q {q}, token {j}: relative error {err}");
        }
    }
    Ok(())
}
