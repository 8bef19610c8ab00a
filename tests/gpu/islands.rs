//! Eager islands (issue 26): a forward graphed around the ops a graph can't hold. Islands at the
//! start, in the middle (two in a row, one that synchronises with the host) and at the end;
//! live arguments that change every call; errors and panics inside islands; the debug mode.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use cudagraph::{DType, Error, InputSpec, Islands, Result, Runtime, Tensor, cuda_graph, ops};
use half::bf16;

use crate::common::{Rng, fresh_seed, gpu, upload_bf16};

const D: usize = 64;

/// Four islands around three segments' worth of ops.
struct IslandModel {
    w: Tensor,
    /// Set to make the middle island fail (at the next call that runs it).
    fail: Cell<bool>,
}

impl IslandModel {
    fn new(rt: &Runtime, rng: &mut Rng) -> Result<Self> {
        let (w, _) = upload_bf16(rt, &rng.vec(D, -1.0, 1.0), &[D])?;
        Ok(Self {
            w,
            fail: Cell::new(false),
        })
    }

    /// `live.0` scales the input in the first island (a host value of each call); the second
    /// downloads its input, computes on the host and uploads (a synchronisation and a host
    /// copy, neither capturable); the third multiplies; the last adds the input again.
    #[cuda_graph(sizes = [1, 2, 4, 8])]
    fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands<(f32,)>) -> Result<Tensor> {
        // An island first thing (the first segment is empty).
        let a = islands.eager(rt, [x], |rt, [x], &(scale,)| ops::scale(rt, x, scale))?;
        let b = ops::add_bias(rt, &a, &self.w)?;
        // Two in a row, the first synchronising with the host.
        let c = islands.eager(rt, [&b], |rt, [b], _| {
            if self.fail.get() {
                return Err(Error::invalid("island", "asked to fail"));
            }
            let host = rt.download::<bf16>(b)?;
            let plus_one: Vec<bf16> = host
                .iter()
                .map(|v| bf16::from_f32(v.to_f32() + 1.0))
                .collect();
            rt.upload(&plus_one, b.shape())
        })?;
        let d = islands.eager(rt, [&c, &b], |rt, [c, b], _| ops::mul(rt, c, b))?;
        let e = ops::add(rt, &d, &a)?;
        // A bare break, then an island last thing (the last segment copies its output).
        islands.graph_break(rt)?;
        islands.eager(rt, [&e, x], |rt, [e, x], _| ops::add(rt, e, x))
    }
}

fn bits(rt: &Runtime, t: &Tensor) -> Result<Vec<u16>> {
    Ok(rt
        .download::<bf16>(t)?
        .into_iter()
        .map(bf16::to_bits)
        .collect())
}

/// Replays equal the forward run directly (islands in place) bit for bit, at every captured
/// size and at padded ones (every op is row-wise), with a live argument that changes every
/// call; the pool is poisoned before each call; every size has 6 segments (5 cuts) and its
/// islands are counted.
#[test]
fn islands_replay_like_the_direct_forward() -> Result<()> {
    let Some(rt) = gpu("islands_replay_like_the_direct_forward") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("islands_replay_like_the_direct_forward"));
    let model = IslandModel::new(&rt, &mut rng)?;
    let spec = InputSpec::new(DType::BF16, &[D])?;
    let mut graphs = model.forward_graphs(&rt, [spec], (0.5,))?;
    println!("{}", graphs.stats());
    for s in &graphs.stats().sizes {
        assert_eq!(s.segments, 6, "size {}: {:?}", s.size, s.segment_nodes);
        assert_eq!(s.segment_nodes.len(), 6);
        assert_eq!(s.segment_nodes[0], 0, "nothing before the first island");
    }
    for (call, n) in [1, 2, 3, 4, 5, 8, 7, 1].into_iter().enumerate() {
        let (x, _) = upload_bf16(&rt, &rng.vec(n * D, -1.0, 1.0), &[n, D])?;
        let scale = 0.25 + call as f32; // a new live value every call
        let want = bits(&rt, &model.forward(&rt, &x, &Islands::direct(&(scale,)))?)?;
        graphs.poison_pool()?;
        let out = graphs.run_live([&x], &(), &(scale,))?;
        assert!(out.replayed(), "n = {n}");
        assert_eq!(out.shape(), &[n, D]);
        assert_eq!(bits(&rt, &out)?, want, "n = {n}, scale {scale}");
    }
    let calls: u64 = graphs.stats().sizes.iter().map(|s| s.island_calls).sum();
    assert_eq!(
        calls,
        8 * 4,
        "4 islands per replay (the bare break is not one)"
    );
    assert!(graphs.stats().island_buffer_bytes > 0);
    // All segments of all sizes share one pool: no more than the largest size's segments alone.
    let alone = model.forward_graph_memory(&rt, [spec], (0.5,))?;
    let pool = graphs.stats().pool_bytes;
    println!(
        "pool {pool} B, the largest size alone {} B",
        alone.pool_bytes
    );
    assert!(alone.pool_bytes > 0);
    assert!(
        pool as f64 <= 1.05 * alone.pool_bytes as f64,
        "{pool} vs {alone:?}"
    );
    Ok(())
}

/// An island that fails at a replay returns its error; the runner stays usable and the next
/// call replays right. A panic inside an island during a capture leaves the stream out of
/// capture and the runner usable for the sizes that captured.
#[test]
fn a_failing_island_leaves_the_runner_usable() -> Result<()> {
    let Some(rt) = gpu("a_failing_island_leaves_the_runner_usable") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("a_failing_island_leaves_the_runner_usable"));
    let model = IslandModel::new(&rt, &mut rng)?;
    let spec = InputSpec::new(DType::BF16, &[D])?;
    let mut graphs = model.forward_graphs(&rt, [spec], (1.0,))?;
    let (x, _) = upload_bf16(&rt, &rng.vec(4 * D, -1.0, 1.0), &[4, D])?;
    model.fail.set(true);
    let err = graphs
        .run_live([&x], &(), &(1.0,))
        .map(drop)
        .expect_err("fails");
    assert!(err.to_string().contains("asked to fail"), "{err}");
    model.fail.set(false);
    let want = bits(&rt, &model.forward(&rt, &x, &Islands::direct(&(2.0,)))?)?;
    let out = graphs.run_live([&x], &(), &(2.0,))?;
    assert!(out.replayed());
    assert_eq!(bits(&rt, &out)?, want);
    drop(out);

    // A panic inside an island while a size captures (lazily).
    struct Panicky;
    impl Panicky {
        #[cuda_graph(sizes = [2, 4], capture = lazy)]
        fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands) -> Result<Tensor> {
            let y = ops::add(rt, x, x)?;
            islands.eager(rt, [&y], |rt, [y], ()| {
                if y.rows() == 2 && rt.is_capturing() {
                    unreachable!("an island never runs while the stream captures");
                }
                if y.rows() == 2 {
                    panic!("the island panics");
                }
                rt.duplicate(y)
            })
        }
    }
    let panicky = Panicky;
    let mut lazy = panicky.forward_graphs(&rt, [spec])?;
    let (x4, _) = upload_bf16(&rt, &rng.vec(4 * D, -1.0, 1.0), &[4, D])?;
    assert!(lazy.run([&x4])?.replayed());
    let (x2, _) = upload_bf16(&rt, &rng.vec(2 * D, -1.0, 1.0), &[2, D])?;
    let panicked = catch_unwind(AssertUnwindSafe(|| lazy.run([&x2]).map(drop)));
    assert!(panicked.is_err());
    assert!(!rt.is_capturing(), "the stream left capture mode");
    rt.synchronize()?;
    let want = bits(&rt, &panicky.forward(&rt, &x4, &Islands::direct(&()))?)?;
    let out = lazy.run([&x4])?;
    assert!(out.replayed());
    assert_eq!(bits(&rt, &out)?, want);
    Ok(())
}

/// The debug mode (`CUDAGRAPH_EAGER=1`, `set_debug_eager`): calls a graph would replay run the
/// forward eagerly through the same dispatch, padding and output path, and give the same bits.
#[test]
fn the_debug_mode_runs_eagerly_through_the_replay_path() -> Result<()> {
    let Some(rt) = gpu("the_debug_mode_runs_eagerly_through_the_replay_path") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "the_debug_mode_runs_eagerly_through_the_replay_path",
    ));
    let model = IslandModel::new(&rt, &mut rng)?;
    let spec = InputSpec::new(DType::BF16, &[D])?;
    let mut graphs = model.forward_graphs(&rt, [spec], (1.0,))?;
    let (x, _) = upload_bf16(&rt, &rng.vec(3 * D, -1.0, 1.0), &[3, D])?;
    let first = graphs.run_live([&x], &(), &(3.0,))?;
    let replayed = bits(&rt, &first)?;
    drop(first);
    graphs.set_debug_eager(true);
    assert!(graphs.debug_eager_enabled());
    let out = graphs.run_live([&x], &(), &(3.0,))?;
    assert!(!out.replayed());
    assert_eq!(out.size(), Some(4), "dispatched to the size-4 graph's path");
    assert_eq!(bits(&rt, &out)?, replayed);
    drop(out);
    let s = &graphs.stats().sizes[2];
    assert_eq!((s.size, s.debug_eager_calls, s.replays), (4, 1, 1));
    graphs.set_debug_eager(false);
    assert!(graphs.run_live([&x], &(), &(3.0,))?.replayed());
    drop(graphs);

    // Built under CUDAGRAPH_EAGER=1: nothing is captured (a forward whose capture fails is
    // what one bisects), every call runs through the replay path; turned off, sizes are
    // captured at first use. (The suite runs its tests one at a time: `run.sh` passes
    // `--test-threads=1`, so no other test reads the environment meanwhile.)
    // SAFETY: no other thread of this process reads or writes the environment now.
    unsafe { std::env::set_var(cudagraph::EAGER_ENV, "1") };
    let built = model.forward_graphs(&rt, [spec], (1.0,));
    // SAFETY: as above.
    unsafe { std::env::remove_var(cudagraph::EAGER_ENV) };
    let mut graphs = built?;
    assert!(graphs.debug_eager_enabled());
    assert_eq!(
        graphs
            .stats()
            .sizes
            .iter()
            .map(|s| s.segments)
            .sum::<usize>(),
        0
    );
    let out = graphs.run_live([&x], &(), &(3.0,))?;
    assert!(!out.replayed());
    assert_eq!(bits(&rt, &out)?, replayed);
    drop(out);
    graphs.set_debug_eager(false);
    let out = graphs.run_live([&x], &(), &(3.0,))?;
    assert!(out.replayed(), "captured at first use");
    assert_eq!(bits(&rt, &out)?, replayed);
    Ok(())
}

/// A forward whose islands read the runtime's memory figures and the longest position of the
/// batch (a host value derived per call, passed live): what an attention island with a grid
/// sized by the longest context does. The result follows the live value every call.
#[test]
fn a_live_host_value_reaches_the_island_every_call() -> Result<()> {
    let Some(rt) = gpu("a_live_host_value_reaches_the_island_every_call") else {
        return Ok(());
    };
    struct Longest;
    impl Longest {
        /// Each row gets `longest` added (its grid, in a real kernel, would be sized by it).
        #[cuda_graph(sizes = [1, 2, 4])]
        fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands<(usize,)>) -> Result<Tensor> {
            let y = ops::scale(rt, x, 2.0)?;
            islands.eager(rt, [&y], |rt, [y], &(longest,)| {
                let add = rt.upload(&vec![bf16::from_f32(longest as f32); y.numel()], y.shape())?;
                ops::add(rt, y, &add)
            })
        }
    }
    let spec = InputSpec::new(DType::BF16, &[8])?;
    let mut graphs = Longest.forward_graphs(&rt, [spec], (0,))?;
    let x = rt.upload(&[bf16::ONE; 2 * 8], &[2, 8])?;
    // (Integers up to 256 are exact in bf16.)
    for longest in [17usize, 100, 3, 250] {
        let out = graphs.run_live([&x], &(), &(longest,))?;
        assert!(out.replayed());
        assert_eq!(rt.download_f32(&out)?, vec![2.0 + longest as f32; 16]);
    }
    Ok(())
}

/// Capture diagnostics name the function, the size, the part of the forward (the island that
/// failed, or the segment an illegal op sits in) and the op; a synchronisation outside an
/// island points at `islands.eager`. The stream is out of capture after each failure.
#[test]
fn capture_errors_name_the_segment_and_the_island() -> Result<()> {
    let Some(rt) = gpu("capture_errors_name_the_segment_and_the_island") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("capture_errors_name_the_segment_and_the_island"));
    // The middle island (island 2) fails.
    let model = IslandModel::new(&rt, &mut rng)?;
    model.fail.set(true);
    let spec = InputSpec::new(DType::BF16, &[D])?;
    let err = model
        .forward_graphs(&rt, [spec], (1.0,))
        .map(drop)
        .expect_err("island 2 fails");
    println!("{err}");
    let text = err.to_string();
    // (Sizes capture largest first: size 8 is the first that fails.)
    for want in ["`forward`", "size 8", "in island 2", "asked to fail"] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    assert!(!rt.is_capturing());

    // A download outside any island, in the second segment.
    struct Stray;
    impl Stray {
        #[cuda_graph(sizes = [2])]
        fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands) -> Result<Tensor> {
            let y = ops::add(rt, x, x)?;
            let z = islands.eager(rt, [&y], |rt, [y], ()| rt.duplicate(y))?;
            let _host = rt.download::<bf16>(&z)?;
            ops::add(rt, &z, x)
        }
    }
    let err = Stray
        .forward_graphs(&rt, [spec])
        .map(drop)
        .expect_err("a host copy under capture");
    println!("{err}");
    let text = err.to_string();
    for want in ["size 2", "in segment 2 (after island 1)", "islands.eager"] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    assert!(!rt.is_capturing());
    // The runtime is usable.
    let x = rt.zeros(&[2, D], DType::BF16)?;
    rt.synchronize()?;
    drop(Stray.forward(&rt, &x, &Islands::direct(&()))?);
    Ok(())
}

/// The decoder with its attention in an island in every layer (`Llama::forward_islands`, 3
/// segments a size for 2 layers) gives the logits and the KV cache of the fully graphed
/// forward bit for bit, at captured and padded sizes: the same kernels run, the attention
/// between segments. Two models of one seed, one per runner, so each cache evolves alike.
#[test]
fn a_decoder_with_attention_islands_matches_the_full_graph() -> Result<()> {
    use cudagraph_models::llama::{Llama, LlamaConfig};
    let Some(rt) = gpu("a_decoder_with_attention_islands_matches_the_full_graph") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "a_decoder_with_attention_islands_matches_the_full_graph",
    ));
    // 8 layers: a warm-up that held each layer's island input (256 KiB at the largest size)
    // past its island would measure 2 MiB more than the capture uses (run 67's 1.36x pool).
    let cfg = LlamaConfig {
        qk_norm: true,
        layers: 8,
        ..LlamaConfig::tiny()
    };
    let seed = rng.next_u64();
    let full = Llama::random(&rt, cfg.clone(), seed)?;
    let pieces = Llama::random(&rt, cfg.clone(), seed)?;
    let mut full_graphs = full.forward_graphs(&rt, cfg.input_specs()?)?;
    let mut piece_graphs = pieces.forward_islands_graphs(&rt, cfg.input_specs()?)?;
    for s in &piece_graphs.stats().sizes {
        assert_eq!(s.segments, cfg.layers + 1, "size {}", s.size);
    }
    let (full_pool, piece_pool) = (
        full_graphs.stats().pool_bytes,
        piece_graphs.stats().pool_bytes,
    );
    println!("pool: full graphs {full_pool} B, island graphs {piece_pool} B");
    assert!(
        piece_pool as f64 <= 1.05 * full_pool as f64,
        "the island graphs' pool {piece_pool} B against the full graphs' {full_pool} B"
    );
    for n in [1usize, 3, 8, 13, 64, 250] {
        let tokens: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab) as u32).collect();
        let positions: Vec<i32> = (0..n).map(|_| rng.below(cfg.cache_tokens) as i32).collect();
        let tokens = rt.upload(&tokens, &[n])?;
        let positions = rt.upload(&positions, &[n])?;
        full_graphs.poison_pool()?;
        piece_graphs.poison_pool()?;
        let a = full_graphs.run([&tokens, &positions])?;
        let b = piece_graphs.run([&tokens, &positions])?;
        assert!(a.replayed() && b.replayed(), "n = {n}");
        assert_eq!(bits(&rt, &b)?, bits(&rt, &a)?, "logits, n = {n}");
    }
    for ((k1, v1), (k2, v2)) in full.kv_caches().zip(pieces.kv_caches()) {
        assert_eq!(bits(&rt, k2)?, bits(&rt, k1)?, "keys");
        assert_eq!(bits(&rt, v2)?, bits(&rt, v1)?, "values");
    }
    Ok(())
}

/// An island that writes a model buffer passed to it as an input (not borrowed) writes the real
/// buffer when replayed, as in a direct call: inputs outside the capture's memory are handed
/// over as they are, only the capture's own tensors are copied. A rank-0 output is refused at
/// capture with an error that says what to do.
#[test]
fn an_island_writes_a_model_buffer_passed_as_input() -> Result<()> {
    let Some(rt) = gpu("an_island_writes_a_model_buffer_passed_as_input") else {
        return Ok(());
    };
    struct Logger {
        /// The last call's rows, written by the island.
        log: Tensor,
    }
    impl Logger {
        #[cuda_graph(sizes = [4])]
        fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands) -> Result<Tensor> {
            let y = ops::scale(rt, x, 3.0)?;
            islands.eager(rt, [&y, &self.log], |rt, [y, log], ()| {
                rt.copy(y, log)?;
                rt.duplicate(y)
            })
        }
    }
    let mut rng = Rng(fresh_seed(
        "an_island_writes_a_model_buffer_passed_as_input",
    ));
    let model = Logger {
        log: rt.zeros(&[4, D], DType::BF16)?,
    };
    let spec = InputSpec::new(DType::BF16, &[D])?;
    let mut graphs = model.forward_graphs(&rt, [spec])?;
    let (x, _) = upload_bf16(&rt, &rng.vec(4 * D, -1.0, 1.0), &[4, D])?;
    let out = graphs.run([&x])?;
    assert!(out.replayed());
    let want = bits(&rt, &out)?;
    drop(out);
    assert_eq!(
        bits(&rt, &model.log)?,
        want,
        "the model's buffer holds this call's rows"
    );

    struct Scalar;
    impl Scalar {
        #[cuda_graph(sizes = [2])]
        fn forward(&self, rt: &Runtime, x: &Tensor, islands: &Islands) -> Result<Tensor> {
            let _count =
                islands.eager(rt, [x], |rt, [x], ()| rt.upload(&[x.rows() as f32], &[]))?;
            rt.duplicate(x)
        }
    }
    let err = Scalar
        .forward_graphs(&rt, [spec])
        .map(drop)
        .expect_err("a rank-0 output");
    println!("{err}");
    assert!(err.to_string().contains("shape [1]"), "{err}");
    assert!(!rt.is_capturing());
    Ok(())
}
