//! Issue 13's holes, each closed: overflowing shapes, graphs outliving what they read, outputs
//! that escape, tensors of another runtime, padded rows and warm-ups writing model state, and
//! panics during capture.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use cudagraph::{
    DType, Error, GraphPlan, InputSpec, PadValue, Result, Runner, Runtime, Tensor, cuda_graph, ops,
};
use cudagraph_models::llama::{Llama, LlamaConfig};
use half::bf16;

use crate::common::{
    Rng, download_f32, draw_decode_inputs as draw, fresh_seed, gpu, kv_cache_bits, upload_bf16,
};

/// The review's overflow: a 2-element tensor reshaped to `[2^63 + 1, 2]` (2 elements once the
/// product wraps) and a row view 2^39 bytes past the allocation are errors, not views.
#[test]
fn overflowing_shapes_are_errors() -> Result<()> {
    let Some(rt) = gpu("overflowing_shapes_are_errors") else {
        return Ok(());
    };
    let t = rt.upload(&[1.0f32, 2.0], &[2])?;
    assert!(t.reshape(&[(1 << 63) + 1, 2]).is_err());
    assert!(t.reshape(&[1 << 62, 4]).is_err());
    assert!(t.narrow_rows(1 << 37, 1).is_err());
    assert!(t.narrow_rows(usize::MAX, 2).is_err());
    assert!(rt.alloc(&[1 << 62, 4], DType::F32).is_err());
    assert!(rt.alloc(&[(1 << 63) + 1, 2], DType::BF16).is_err());
    assert!(InputSpec::new(DType::F32, &[1 << 40, 1 << 40]).is_err());
    let ok = t.reshape(&[1, 2])?;
    assert_eq!(rt.download::<f32>(&ok)?, [1.0, 2.0]);
    Ok(())
}

/// A graph keeps every buffer its kernels read: a weight swapped out of a `RefCell` after the
/// capture (the old one dropped, the driver's cache trimmed) is still what the graph reads.
#[test]
fn graph_keeps_a_swapped_weight_alive() -> Result<()> {
    let Some(rt) = gpu("graph_keeps_a_swapped_weight_alive") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("graph_keeps_a_swapped_weight_alive"));
    let old = rng.vec(4096, -1.0, 1.0);
    let new = rng.vec(4096, -1.0, 1.0);
    let weight = RefCell::new(rt.upload(&old, &[4096])?);
    let dst = rt.zeros(&[4096], DType::F32)?;
    let graph = rt.capture(|rt| rt.copy(&weight.borrow(), &dst))?;
    *weight.borrow_mut() = rt.upload(&new, &[4096])?;
    // Give freed memory back to the driver: a use after free would now fault (or read
    // whatever the driver maps there next).
    rt.release_cached_memory()?;
    let scratch = rt.upload(&new, &[4096])?;
    rt.fill_bytes(&dst, 0xFF)?;
    graph.replay()?;
    assert_eq!(
        rt.download::<f32>(&dst)?,
        old,
        "the graph reads the old weight"
    );
    drop(scratch);
    Ok(())
}

struct Swappable {
    w: RefCell<Tensor>,
}

impl Swappable {
    #[cuda_graph(sizes = [1, 2, 4])]
    fn forward(&self, rt: &Runtime, x: &Tensor) -> Result<Tensor> {
        ops::linear(rt, x, &self.w.borrow())
    }
}

/// The same through a runner: the weight swapped behind the runner's back stays alive, and the
/// replay equals, bit for bit, the eager forward on the old weight.
#[test]
fn runner_keeps_a_swapped_weight_alive() -> Result<()> {
    let Some(rt) = gpu("runner_keeps_a_swapped_weight_alive") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("runner_keeps_a_swapped_weight_alive"));
    let (w, _) = upload_bf16(&rt, &rng.vec(64 * 128, -0.1, 0.1), &[64, 128])?;
    let model = Swappable { w: RefCell::new(w) };
    let (x, _) = upload_bf16(&rt, &rng.vec(4 * 128, -1.0, 1.0), &[4, 128])?;
    let eager = download_f32(&rt, &model.forward(&rt, &x)?)?;
    let mut graphs = model.forward_graphs(&rt, [InputSpec::like(&x)?])?;
    let (w2, _) = upload_bf16(&rt, &rng.vec(64 * 128, -0.1, 0.1), &[64, 128])?;
    *model.w.borrow_mut() = w2;
    rt.release_cached_memory()?;
    graphs.poison_pool()?;
    let out = graphs.run([&x])?;
    assert!(out.replayed());
    assert_eq!(
        download_f32(&rt, &out)?,
        eager,
        "bit-exact on the old weight"
    );
    Ok(())
}

/// A tensor of another runtime (another stream on the same device) is refused by the runtime,
/// the ops and the runner; `copy_from` brings it over with both streams ordered.
#[test]
fn tensors_of_another_runtime_are_refused() -> Result<()> {
    let Some(a) = gpu("tensors_of_another_runtime_are_refused") else {
        return Ok(());
    };
    let b = Runtime::new(0)?;
    let mut rng = Rng(fresh_seed("tensors_of_another_runtime_are_refused"));
    let values = rng.vec(256, -1.0, 1.0);
    let ta = a.upload(&values, &[2, 128])?;
    let tb = b.zeros(&[2, 128], DType::F32)?;
    let foreign = |r: Result<()>| matches!(r, Err(Error::ForeignTensor { .. }));
    assert!(foreign(b.download::<f32>(&ta).map(drop)));
    assert!(foreign(b.copy(&ta, &tb)));
    assert!(foreign(b.fill_bytes(&ta, 0)));
    let (xa, _) = upload_bf16(&a, &values, &[2, 128])?;
    let (xb, _) = upload_bf16(&b, &values, &[2, 128])?;
    assert!(foreign(ops::add(&b, &xa, &xb).map(drop)));
    let plan = GraphPlan::new("copy", &[2], 0)?;
    let mut graphs = Runner::capture(&b, plan, [InputSpec::like(&xb)?], (), |rt, [x], ()| {
        rt.duplicate(x)
    })?;
    assert!(foreign(graphs.run([&xa]).map(drop)));
    let moved = b.copy_from(&a, &ta)?;
    assert_eq!(b.download::<f32>(&moved)?, values);
    Ok(())
}

/// A forward that keeps a tensor it allocated during the capture (in a `RefCell` outside it)
/// would alias memory every replay rewrites: the capture fails, naming it, and nothing leaks.
#[test]
fn a_tensor_escaping_the_capture_is_an_error() -> Result<()> {
    let Some(rt) = gpu("a_tensor_escaping_the_capture_is_an_error") else {
        return Ok(());
    };
    let stash: RefCell<Option<Tensor>> = RefCell::new(None);
    let x = rt.upload(&[1.0f32; 8], &[2, 4])?;
    let plan = GraphPlan::new("stash", &[2], 0)?;
    let err = Runner::capture(&rt, plan, [InputSpec::like(&x)?], (), |rt, [x], ()| {
        if rt.is_capturing() {
            *stash.borrow_mut() = Some(rt.duplicate(x)?);
        }
        rt.duplicate(x)
    })
    .map(drop)
    .expect_err("the capture must fail");
    let message = err.to_string();
    assert!(message.contains("still alive"), "{message}");
    drop(stash.take());
    let err = rt
        .capture(|rt| {
            *stash.borrow_mut() = Some(rt.zeros(&[4], DType::F32)?);
            Ok(())
        })
        .map(drop)
        .expect_err("Runtime::capture checks too");
    assert!(err.to_string().contains("still alive"), "{err}");
    drop(stash.take());
    assert!(!rt.is_capturing());
    assert_eq!(rt.download::<f32>(&rt.duplicate(&x)?)?, [1.0; 8]);
    Ok(())
}

/// `to_owned` is the real copy of an output: it survives the next run; `size` says which graph
/// served a call.
#[test]
fn owned_copies_survive_the_next_run() -> Result<()> {
    let Some(rt) = gpu("owned_copies_survive_the_next_run") else {
        return Ok(());
    };
    let plan = GraphPlan::new("copy", &[1, 2, 4], 0)?;
    let spec = InputSpec::new(DType::F32, &[4])?;
    let mut graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| rt.duplicate(x))?;
    let first = rt.upload(&[1.0f32; 12], &[3, 4])?;
    let second = rt.upload(&[2.0f32; 12], &[3, 4])?;
    let out = graphs.run([&first])?;
    assert_eq!(out.size(), Some(4));
    let kept = out.to_owned()?;
    let out = graphs.run([&second])?;
    assert_eq!(rt.download::<f32>(&out)?, [2.0; 12]);
    assert_eq!(rt.download::<f32>(&kept)?, [1.0; 12]);
    let big = rt.upload(&[3.0f32; 20], &[5, 4])?;
    let out = graphs.run([&big])?;
    assert_eq!((out.replayed(), out.size()), (false, None));
    Ok(())
}

/// Asserts that `after` equals `before` except the cache rows `(slot, position)` in `written`.
fn only_rows_written(
    what: &str,
    cfg: &LlamaConfig,
    before: &[Vec<u16>],
    after: &[Vec<u16>],
    written: &[(usize, usize)],
) {
    let row = cfg.kv_heads * cfg.head_dim;
    for (c, (b, a)) in before.iter().zip(after).enumerate() {
        for slot in 0..cfg.cache_slots {
            for t in 0..cfg.cache_tokens {
                let at = (slot * cfg.cache_tokens + t) * row;
                if written.contains(&(slot, t)) {
                    continue;
                }
                assert!(
                    b[at..at + row] == a[at..at + row],
                    "{what}: cache {c} slot {slot} position {t} changed"
                );
            }
        }
    }
}

/// Padded rows and warm-ups write no cache: capturing 35 sizes leaves every cache byte as it
/// was, and a replay of `n < size` rows writes exactly its `n` rows' positions.
#[test]
fn padded_rows_and_warm_ups_leave_the_cache_alone() -> Result<()> {
    let Some(rt) = gpu("padded_rows_and_warm_ups_leave_the_cache_alone") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("padded_rows_and_warm_ups_leave_the_cache_alone"));
    let model = Llama::random(&rt, LlamaConfig::tiny(), rng.next_u64())?;
    let cfg = model.config().clone();
    let before = kv_cache_bits(&rt, &model)?;
    let mut graphs = model.forward_graphs(&rt, cfg.input_specs()?)?;
    let captured = kv_cache_bits(&rt, &model)?;
    only_rows_written("after capturing 35 sizes", &cfg, &before, &captured, &[]);
    for n in [5, 13, 3] {
        let tokens: Vec<u32> = (0..n).map(|_| rng.below(cfg.vocab) as u32).collect();
        let positions: Vec<i32> = (0..n).map(|_| rng.below(cfg.cache_tokens) as i32).collect();
        let (t, p) = (rt.upload(&tokens, &[n])?, rt.upload(&positions, &[n])?);
        let start = kv_cache_bits(&rt, &model)?;
        let out = graphs.run([&t, &p])?;
        assert!(out.replayed() && out.size() > Some(n), "n = {n} is padded");
        drop(out);
        let end = kv_cache_bits(&rt, &model)?;
        let written: Vec<(usize, usize)> = positions
            .iter()
            .enumerate()
            .map(|(s, &p)| (s, p as usize))
            .collect();
        only_rows_written(&format!("replay of n = {n}"), &cfg, &start, &end, &written);
        assert_ne!(start, end, "the real rows wrote the cache");
    }
    // Lazy capture at run time: its warm-up runs before this call's inputs are copied in; with
    // the pad value it writes nothing either.
    let plan = GraphPlan::new("forward", &[8], 0)?
        .with_lazy_capture(true)
        .with_pad(1, PadValue::Int(-1));
    let mut lazy = Runner::capture(&rt, plan, cfg.input_specs()?, (), |rt, [t, p], ()| {
        model.forward(rt, t, p)
    })?;
    let (t, p) = draw(&rt, &mut rng, &cfg, 3)?;
    let positions = rt.download::<i32>(&p)?;
    let start = kv_cache_bits(&rt, &model)?;
    assert!(lazy.run([&t, &p])?.replayed());
    let end = kv_cache_bits(&rt, &model)?;
    let written: Vec<(usize, usize)> = positions
        .iter()
        .enumerate()
        .map(|(s, &p)| (s, p as usize))
        .collect();
    only_rows_written(
        "lazy capture and replay of n = 3",
        &cfg,
        &start,
        &end,
        &written,
    );
    Ok(())
}

/// A panic in the forward during capture ends the capture and frees the partial graph; the
/// runtime then runs eager and captured forwards correctly.
#[test]
fn a_panic_during_capture_leaves_the_runtime_usable() -> Result<()> {
    let Some(rt) = gpu("a_panic_during_capture_leaves_the_runtime_usable") else {
        return Ok(());
    };
    let x = rt.upload(&[1.5f32; 8], &[2, 4])?;
    let spec = InputSpec::like(&x)?;
    let (free_before, _) = rt.mem_info()?;
    for _ in 0..3 {
        let plan = GraphPlan::new("panics", &[1, 2], 0)?;
        let caught = catch_unwind(AssertUnwindSafe(|| {
            Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| {
                let y = rt.duplicate(x)?;
                if rt.is_capturing() {
                    panic!("the forward panics while it is captured");
                }
                Ok(y)
            })
            .map(drop)
        }));
        assert!(caught.is_err(), "the panic propagates");
        assert!(!rt.is_capturing());
        let caught = catch_unwind(AssertUnwindSafe(|| {
            rt.capture(|rt| {
                if rt.is_capturing() {
                    panic!("Runtime::capture's body panics");
                }
                Ok(())
            })
            .map(drop)
        }));
        assert!(caught.is_err());
    }
    rt.release_cached_memory()?;
    let (free_after, _) = rt.mem_info()?;
    assert!(
        free_after + (64 << 20) >= free_before,
        "the abandoned captures' pools were freed ({free_before} -> {free_after} bytes free)"
    );
    assert_eq!(rt.download::<f32>(&rt.duplicate(&x)?)?, [1.5; 8]);
    let plan = GraphPlan::new("copy", &[1, 2], 0)?;
    let mut graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| rt.duplicate(x))?;
    let out = graphs.run([&x])?;
    assert!(out.replayed());
    assert_eq!(rt.download::<f32>(&out)?, [1.5; 8]);
    Ok(())
}

/// A user's kernel module named like a built-in one (same module and kernel names) does not
/// replace the kernel the built-in launcher launches (its argument list is the launcher's).
#[test]
fn a_user_module_named_like_a_builtin_one_is_its_own() -> Result<()> {
    static IMPOSTOR: cudagraph::KernelModule = cudagraph::KernelModule {
        name: "elementwise",
        source: r#"extern "C" __global__ void add_bf16(const unsigned short* a, const unsigned short* b, unsigned short* out, unsigned long long n) { if (n > 0 && threadIdx.x == 0 && blockIdx.x == 0) { out[0] = 0; } }"#,
        functions: &["add_bf16"],
    };
    let Some(rt) = gpu("a_user_module_named_like_a_builtin_one_is_its_own") else {
        return Ok(());
    };
    rt.function(&IMPOSTOR, "add_bf16")?;
    let mut rng = Rng(fresh_seed(
        "a_user_module_named_like_a_builtin_one_is_its_own",
    ));
    let (a, ha) = upload_bf16(&rt, &rng.vec(512, 1.0, 2.0), &[512])?;
    let (b, hb) = upload_bf16(&rt, &rng.vec(512, 1.0, 2.0), &[512])?;
    let sum = download_f32(&rt, &ops::add(&rt, &a, &b)?)?;
    for i in 0..512 {
        let expect = bf16::from_f32(ha[i] + hb[i]).to_f32();
        assert_eq!(sum[i], expect, "element {i}: the built-in add ran");
    }
    Ok(())
}

/// A failed refresh hands back a runner that replays the *old* forward: no graph of it still
/// points at what the failed forward read (here a bias dropped right after the refresh).
#[test]
fn a_failed_refresh_keeps_the_old_graphs() -> Result<()> {
    let Some(rt) = gpu("a_failed_refresh_keeps_the_old_graphs") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("a_failed_refresh_keeps_the_old_graphs"));
    let (x, _) = upload_bf16(&rt, &rng.vec(4 * 64, -1.0, 1.0), &[4, 64])?;
    let plan = GraphPlan::new("copy", &[2, 4], 0)?;
    let runner = Runner::capture(&rt, plan, [InputSpec::like(&x)?], (), |rt, [x], ()| {
        rt.duplicate(x)
    })?;
    let failed = {
        let (bias, _) = upload_bf16(&rt, &rng.vec(64, 1.0, 2.0), &[64])?;
        runner
            .refresh(&rt, |rt, [x], ()| {
                let y = ops::add_bias(rt, x, &bias)?;
                if rt.is_capturing() {
                    return Err(Error::invalid("test", "this forward can't be captured"));
                }
                Ok(y)
            })
            .map(drop)
            .expect_err("the refresh fails")
    };
    rt.release_cached_memory()?;
    let mut runner = *failed.runner;
    let out = runner.run([&x])?;
    assert!(out.replayed());
    assert_eq!(
        download_f32(&rt, &out)?,
        download_f32(&rt, &x)?,
        "the old forward"
    );
    Ok(())
}

/// After a capture failed because the forward kept a pool tensor, no graph of the runner
/// writes where that tensor lives: its chunk is quarantined, and the sizes that used it are
/// captured again elsewhere.
#[test]
fn an_escaped_tensor_is_never_rewritten() -> Result<()> {
    let Some(rt) = gpu("an_escaped_tensor_is_never_rewritten") else {
        return Ok(());
    };
    let stash: RefCell<Option<Tensor>> = RefCell::new(None);
    let plan = GraphPlan::new("stash", &[4, 8], 0)?.with_lazy_capture(true);
    let spec = InputSpec::new(DType::F32, &[16])?;
    let mut runner = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| {
        if rt.is_capturing() && x.rows() == 4 {
            *stash.borrow_mut() = Some(rt.duplicate(x)?);
        }
        rt.duplicate(x)
    })?;
    let fill = |n: usize, v: f32| rt.upload(&vec![v; n * 16], &[n, 16]);
    assert!(runner.run([&fill(8, 1.0)?])?.replayed()); // size 8 captured into the pool
    let err = runner
        .run([&fill(4, 2.0)?])
        .map(drop)
        .expect_err("size 4 keeps a tensor");
    assert!(err.to_string().contains("still alive"), "{err}");
    let kept = stash
        .borrow()
        .as_ref()
        .map(|t| rt.download::<f32>(t))
        .transpose()?;
    for v in [3.0, 4.0] {
        let out = runner.run([&fill(8, v)?])?;
        assert!(out.replayed());
        assert_eq!(rt.download::<f32>(&out)?, vec![v; 128]);
    }
    let now = stash
        .borrow()
        .as_ref()
        .map(|t| rt.download::<f32>(t))
        .transpose()?;
    assert_eq!(now, kept, "no replay rewrote the escaped tensor");
    // A graph that reads an escaped tensor keeps its memory alive.
    drop(runner);
    let dst = rt.zeros(&[64], DType::F32)?;
    let graph = {
        let err = rt
            .capture(|rt| {
                *stash.borrow_mut() = Some(rt.upload(&[7.0f32; 64], &[64]).or_else(|_| {
                    let t = rt.zeros(&[64], DType::F32)?;
                    Ok::<_, Error>(t)
                })?);
                Ok(())
            })
            .map(drop);
        // The upload is refused under capture; the zeros escape.
        assert!(err.is_err());
        rt.capture(|rt| rt.copy(stash.borrow().as_ref().expect("stashed"), &dst))?
    };
    drop(stash.take());
    rt.release_cached_memory()?;
    rt.fill_bytes(&dst, 0xFF)?;
    graph.replay()?;
    assert_eq!(rt.download::<f32>(&dst)?, [0.0; 64]);
    Ok(())
}

/// Runner calls inside another capture are refused (the outer graph would keep none of the
/// runner's memory), and so is poisoning a released pool.
#[test]
fn runner_calls_inside_a_capture_are_refused() -> Result<()> {
    let Some(rt) = gpu("runner_calls_inside_a_capture_are_refused") else {
        return Ok(());
    };
    let x = rt.upload(&[1.0f32; 32], &[2, 16])?;
    let plan = GraphPlan::new("copy", &[2], 0)?;
    let spec = InputSpec::like(&x)?;
    let runner = RefCell::new(Some(Runner::capture(
        &rt,
        plan,
        [spec],
        (),
        |rt, [x], ()| rt.duplicate(x),
    )?));
    let dst = rt.zeros(&[2, 16], DType::F32)?;
    let err = rt
        .capture(|rt| {
            let mut cell = runner.borrow_mut();
            let r = cell.as_mut().expect("runner");
            let out = r.run([&x])?;
            rt.copy(&out, &dst)
        })
        .map(drop)
        .expect_err("run inside a capture");
    assert!(matches!(err, Error::Capture { .. }), "{err}");
    let err = rt
        .capture(|_| runner.borrow().as_ref().expect("runner").poison_pool())
        .map(drop)
        .expect_err("poison inside a capture");
    assert!(
        err.to_string().contains("not allowed while capturing"),
        "{err}"
    );
    let mut r = runner.take().expect("runner");
    r.release_memory()?;
    assert!(matches!(r.poison_pool(), Err(Error::Released { .. })));
    r.resume()?;
    let out = r.run([&x])?;
    assert_eq!(rt.download::<f32>(&out)?, [1.0; 32]);
    Ok(())
}

/// Attention reads its caches in 16-byte loads: a cache view at an odd offset is refused.
#[test]
fn a_misaligned_kv_cache_is_refused() -> Result<()> {
    let Some(rt) = gpu("a_misaligned_kv_cache_is_refused") else {
        return Ok(());
    };
    let shape = ops::AttentionShape {
        q_heads: 1,
        kv_heads: 1,
        head_dim: 8,
        rope_theta: 1e4,
        rope_scaling: cudagraph::ops::RopeScaling::None,
    };
    let buf = rt.zeros(&[9], DType::BF16)?;
    let rows = buf.narrow_rows(1, 8)?;
    let k = rows.reshape(&[1, 1, 1, 8])?;
    let v = rt.zeros(&[1, 1, 1, 8], DType::BF16)?;
    let q = rt.zeros(&[1, 8], DType::BF16)?;
    let pos = rt.upload(&[0i32], &[1])?;
    let err = ops::attention_decode(&rt, &q, &k, &v, &pos, &shape).expect_err("misaligned");
    assert!(err.to_string().contains("16-byte"), "{err}");
    Ok(())
}

/// A graph that recorded an all-reduce keeps its communicator: dropping the communicator
/// before the graph neither hangs nor frees what the replay uses (one rank on one GPU).
#[cfg(feature = "nccl")]
#[test]
fn a_graph_keeps_its_communicator() -> Result<()> {
    let Some(rt) = gpu("a_graph_keeps_its_communicator") else {
        return Ok(());
    };
    if !cudagraph::nccl::nccl_available() {
        println!("skipped a_graph_keeps_its_communicator: NCCL not installed");
        return Ok(());
    }
    // SAFETY: one rank: every collective trivially matches its peers'.
    let comm = RefCell::new(Some(
        unsafe { cudagraph::nccl::NcclComm::init_all(&[0]) }?.remove(0),
    ));
    let values: Vec<f32> = (0..256).map(|i| i as f32 / 8.0).collect();
    let (x, _) = upload_bf16(&rt, &values, &[256])?;
    let dst = rt.zeros(&[256], DType::BF16)?;
    let reduce = |rt: &Runtime| -> Result<Tensor> {
        let borrowed = comm.borrow();
        let c = borrowed
            .as_ref()
            .ok_or_else(|| Error::invalid("test", "no communicator"))?;
        cudagraph::nccl::all_reduce_sum(rt, c, &x)
    };
    reduce(&rt)?; // NCCL connects outside the capture
    rt.synchronize()?;
    let graph = rt.capture(|rt| rt.copy(&reduce(rt)?, &dst))?;
    drop(comm.take());
    graph.replay()?;
    assert_eq!(download_f32(&rt, &dst)?, download_f32(&rt, &x)?);
    Ok(())
}

/// What a kept tensor holds after `replays` of `runner`'s size-8 graph: a marker written into
/// it first must survive (the review of d0c124f: a tensor kept by a capture that then *failed*
/// sat in a chunk other graphs kept rewriting).
fn kept_survives_replays<const N: usize>(
    rt: &Runtime,
    runner: &mut Runner<'_, N>,
    kept: &Tensor,
    inputs: impl Fn(f32) -> Result<[Tensor; N]>,
) -> Result<()> {
    let marker: Vec<f32> = (0..kept.numel()).map(|i| 1000.0 + i as f32).collect();
    rt.copy(&rt.upload(&marker, kept.shape())?, kept)?;
    for v in [3.0, 4.0] {
        let x = inputs(v)?;
        let refs: [&Tensor; N] = std::array::from_fn(|i| &x[i]);
        let out = runner.run(refs)?;
        assert!(out.replayed());
        assert!(rt.download::<f32>(&out)?.iter().all(|&o| o == v));
    }
    assert_eq!(
        rt.download::<f32>(kept)?,
        marker,
        "a replay rewrote a tensor a failed capture kept"
    );
    Ok(())
}

/// Review of d0c124f, finding 1 (lazy plan, `p4`): the forward keeps a tensor under capture of
/// size 4 and then fails. The error comes back, the chunk is set aside, and the size-8 graph
/// (captured into that chunk before) is captured again elsewhere: its replays never write where
/// the kept tensor lives.
#[test]
fn a_tensor_kept_by_a_failed_capture_is_never_rewritten() -> Result<()> {
    let Some(rt) = gpu("a_tensor_kept_by_a_failed_capture_is_never_rewritten") else {
        return Ok(());
    };
    let stash: RefCell<Option<Tensor>> = RefCell::new(None);
    let plan = GraphPlan::new("keep_then_fail", &[4, 8], 0)?.with_lazy_capture(true);
    let spec = InputSpec::new(DType::F32, &[16])?;
    let mut runner = Runner::capture(&rt, plan, [spec], (), |rt: &Runtime, [x], ()| {
        if rt.is_capturing() && x.rows() == 4 {
            *stash.borrow_mut() = Some(rt.duplicate(x)?);
            return Err(Error::invalid(
                "keep_then_fail",
                "fails after keeping a tensor",
            ));
        }
        rt.duplicate(x)
    })?;
    let fill = |n: usize, v: f32| rt.upload(&vec![v; n * 16], &[n, 16]);
    assert!(runner.run([&fill(8, 1.0)?])?.replayed());
    let err = runner.run([&fill(4, 2.0)?]).map(drop).expect_err("fails");
    assert!(err.to_string().contains("fails after keeping"), "{err}");
    let kept = stash.borrow_mut().take().expect("kept");
    kept_survives_replays(&rt, &mut runner, &kept, |v| Ok([fill(8, v)?]))
}

/// The same after a panic: the forward keeps a tensor under capture, then panics; the panic is
/// caught by the caller and the runner used again.
#[test]
fn a_tensor_kept_before_a_panic_is_never_rewritten() -> Result<()> {
    let Some(rt) = gpu("a_tensor_kept_before_a_panic_is_never_rewritten") else {
        return Ok(());
    };
    let stash: RefCell<Option<Tensor>> = RefCell::new(None);
    let plan = GraphPlan::new("keep_then_panic", &[4, 8], 0)?.with_lazy_capture(true);
    let spec = InputSpec::new(DType::F32, &[16])?;
    let mut runner = Runner::capture(&rt, plan, [spec], (), |rt: &Runtime, [x], ()| {
        if rt.is_capturing() && x.rows() == 4 {
            *stash.borrow_mut() = Some(rt.duplicate(x)?);
            panic!("the forward panics after keeping a tensor");
        }
        rt.duplicate(x)
    })?;
    let fill = |n: usize, v: f32| rt.upload(&vec![v; n * 16], &[n, 16]);
    assert!(runner.run([&fill(8, 1.0)?])?.replayed());
    let four = fill(4, 2.0)?;
    let panicked = catch_unwind(AssertUnwindSafe(|| runner.run([&four]).map(drop)));
    assert!(panicked.is_err(), "the forward panicked");
    let kept = stash.borrow_mut().take().expect("kept");
    kept_survives_replays(&rt, &mut runner, &kept, |v| Ok([fill(8, v)?]))
}

/// Review of d0c124f, `p6`: the first capture of a size goes straight into the pool's largest
/// chunk; the forward keeps a tensor there, then runs the chunk out, and the retry (a warm-up,
/// then a new chunk) succeeds. `Runner::capture` returns Ok, and the chunk the kept tensor
/// lives in is set aside all the same.
#[test]
fn a_tensor_kept_before_the_pool_ran_out_is_never_rewritten() -> Result<()> {
    let Some(rt) = gpu("a_tensor_kept_before_the_pool_ran_out_is_never_rewritten") else {
        return Ok(());
    };
    let stash: RefCell<Option<Tensor>> = RefCell::new(None);
    let plan =
        GraphPlan::new("keep_then_exhaust", &[1, 8], 0)?.with_warmup(cudagraph::Warmup::IfNeeded);
    let spec = InputSpec::new(DType::F32, &[16])?;
    let mut runner = Runner::capture(&rt, plan, [spec], (), |rt: &Runtime, [x], ()| {
        let y = rt.duplicate(x)?;
        if x.rows() == 1 {
            if rt.is_capturing() && stash.borrow().is_none() {
                *stash.borrow_mut() = Some(rt.duplicate(x)?);
            }
            // Larger than the chunk the size-8 graph made: the first record runs it out.
            let _scratch = rt.alloc(&[1 << 22], DType::F32)?;
        }
        Ok(y)
    })?;
    let kept = stash.borrow_mut().take().expect("kept");
    let fill = |n: usize, v: f32| rt.upload(&vec![v; n * 16], &[n, 16]);
    kept_survives_replays(&rt, &mut runner, &kept, |v| Ok([fill(8, v)?]))
}

/// Review of d0c124f, `p3`: a refresh whose new forward keeps a tensor under capture and then
/// fails gives the old runner back; its graphs never write where the kept tensor lives.
#[test]
fn a_tensor_kept_by_a_failed_refresh_is_never_rewritten() -> Result<()> {
    let Some(rt) = gpu("a_tensor_kept_by_a_failed_refresh_is_never_rewritten") else {
        return Ok(());
    };
    let stash: RefCell<Option<Tensor>> = RefCell::new(None);
    let plan = GraphPlan::new("refresh_keep", &[8], 0)?;
    let spec = InputSpec::new(DType::F32, &[16])?;
    let runner = Runner::capture(&rt, plan, [spec], (), |rt: &Runtime, [x], ()| {
        rt.duplicate(x)
    })?;
    let failed = runner
        .refresh(&rt, |rt: &Runtime, [x]: [&Tensor; 1], _: &()| {
            if rt.is_capturing() {
                *stash.borrow_mut() = Some(rt.duplicate(x)?);
                return Err(Error::invalid(
                    "refresh_keep",
                    "fails after keeping a tensor",
                ));
            }
            rt.duplicate(x)
        })
        .map(drop)
        .expect_err("the refresh fails");
    let mut runner = *failed.runner;
    let kept = stash.borrow_mut().take().expect("kept");
    let fill = |n: usize, v: f32| rt.upload(&vec![v; n * 16], &[n, 16]);
    kept_survives_replays(&rt, &mut runner, &kept, |v| Ok([fill(8, v)?]))
}
