//! Holes of the old code (before the soundness fix): each test asserts what the fixed code
//! guarantees, so on this tree each one is expected to FAIL (that is the proof the hole
//! existed). Built from commit a34584d with its old API.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};

use cudagraph::ops::{self, AttentionShape};
use cudagraph::{DType, Error, GraphPlan, InputSpec, Result, Runner, Runtime, Tensor, cuda_graph};
use half::bf16;

use crate::common::{Rng, fresh_seed, gpu, upload_bf16};

/// Hole 1: a reshape whose element count overflows `usize` must be refused (the old product
/// wraps to 2 and the reshape is accepted).
#[test]
fn hole_1_overflowing_reshape_is_refused() -> Result<()> {
    let Some(rt) = gpu("hole_1_overflowing_reshape_is_refused") else {
        return Ok(());
    };
    let t = rt.upload(&[1.0f32, 2.0], &[2])?;
    let r = t.reshape(&[(1usize << 63) + 1, 2]);
    assert!(
        r.is_err(),
        "a reshape to [(1<<63)+1, 2] (overflowing element count) was accepted: {r:?}"
    );
    Ok(())
}

/// Hole 2: a graph must keep alive what it reads. The weight is swapped and the old one
/// dropped after the capture; the replay must still copy the captured values A.
#[test]
fn hole_2_graph_keeps_swapped_weight_alive() -> Result<()> {
    let Some(rt) = gpu("hole_2_graph_keeps_swapped_weight_alive") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("hole_2_graph_keeps_swapped_weight_alive"));
    const LEN: usize = 4096;
    let a = rng.vec(LEN, -1.0, 1.0);
    let b = rng.vec(LEN, 10.0, 20.0);
    let weight = RefCell::new(rt.upload(&a, &[LEN])?);
    let dst = rt.zeros(&[LEN], DType::F32)?;
    let graph = rt.capture(|rt| rt.copy(&weight.borrow(), &dst))?;
    // Swap the weight: the old tensor (the one the graph reads) is dropped here.
    *weight.borrow_mut() = rt.upload(&b, &[LEN])?;
    rt.release_cached_memory()?;
    // A scratch tensor of B, to reuse the freed memory.
    let _scratch = rt.upload(&b, &[LEN])?;
    rt.fill_bytes(&dst, 0xFF)?;
    graph.replay()?;
    rt.synchronize()?;
    let got = rt.download::<f32>(&dst)?;
    let equal_b = got == b;
    let nan = got.iter().filter(|v| v.is_nan()).count();
    assert!(
        got == a,
        "replay did not copy the captured weight A (equals B: {equal_b}; NaN elements: {nan}; \
         first values {:?} vs A {:?})",
        &got[..4],
        &a[..4]
    );
    Ok(())
}

/// Hole 3: a clone of a run's output must be a real copy, not an alias of the graph pool that
/// the next run overwrites.
#[test]
fn hole_3_output_clone_is_a_real_copy() -> Result<()> {
    let Some(rt) = gpu("hole_3_output_clone_is_a_real_copy") else {
        return Ok(());
    };
    let plan = GraphPlan::new("dup", &[1, 2, 4], 0)?;
    let spec = InputSpec::new(DType::F32, &[4])?;
    let mut graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| rt.duplicate(x))?;
    let first = rt.upload(&[1.0f32; 12], &[3, 4])?;
    let second = rt.upload(&[2.0f32; 12], &[3, 4])?;
    let kept = graphs.run([&first])?.clone();
    {
        let out = graphs.run([&second])?;
        assert_eq!(rt.download::<f32>(&out)?, vec![2.0f32; 12]);
    }
    rt.synchronize()?;
    assert_eq!(
        rt.download::<f32>(&kept)?,
        vec![1.0f32; 12],
        "the kept clone of the first output changed with the second run (it aliases the pool)"
    );
    Ok(())
}

/// Hole 4: a tensor of one runtime must be refused by another runtime.
#[test]
fn hole_4_tensor_of_another_runtime_is_refused() -> Result<()> {
    let Some(rt) = gpu("hole_4_tensor_of_another_runtime_is_refused") else {
        return Ok(());
    };
    let ta = rt.upload(&[1.0f32, 2.0, 3.0], &[3])?;
    let b = Runtime::new(0)?;
    let r = b.download::<f32>(&ta);
    assert!(
        r.is_err(),
        "runtime b downloaded a tensor of runtime rt: {r:?}"
    );
    Ok(())
}

const SLOTS: usize = 8;
const TOKENS: usize = 16;
const KV_HEADS: usize = 2;
const Q_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const QKV: usize = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM; // 384

struct CacheWriter {
    k_cache: Tensor,
    v_cache: Tensor,
    attn: AttentionShape,
}

impl CacheWriter {
    #[cuda_graph(sizes = [8])]
    fn forward(&self, rt: &Runtime, qkv: &Tensor, positions: &Tensor) -> Result<Tensor> {
        ops::rope_kv_write(rt, qkv, positions, &self.k_cache, &self.v_cache, &self.attn)
    }
}

fn cache_bits(rt: &Runtime, m: &CacheWriter) -> Result<(Vec<u16>, Vec<u16>)> {
    let k: Vec<u16> = rt.download::<bf16>(&m.k_cache)?.iter().map(|v| v.to_bits()).collect();
    let v: Vec<u16> = rt.download::<bf16>(&m.v_cache)?.iter().map(|v| v.to_bits()).collect();
    Ok((k, v))
}

/// Elements of one slot (`[TOKENS, KV_HEADS, HEAD_DIM]`).
const SLOT_ELEMS: usize = TOKENS * KV_HEADS * HEAD_DIM;

/// Slots (of `0..SLOTS`) whose bytes differ between `a` and `b`.
fn changed_slots(a: &[u16], b: &[u16]) -> Vec<usize> {
    (0..SLOTS)
        .filter(|s| a[s * SLOT_ELEMS..(s + 1) * SLOT_ELEMS] != b[s * SLOT_ELEMS..(s + 1) * SLOT_ELEMS])
        .collect()
}

/// Hole 5: building the graphs (warm-up and capture) must leave the KV cache alone, and the
/// padded rows of a smaller batch must not write the cache (old: the warm-up writes position 0
/// of slots 0..8, and padded rows replay the stale rows of the static input buffers).
#[test]
fn hole_5_padded_rows_and_warm_ups_leave_cache_alone() -> Result<()> {
    let Some(rt) = gpu("hole_5_padded_rows_and_warm_ups_leave_cache_alone") else {
        return Ok(());
    };
    let seed = fresh_seed("hole_5_padded_rows_and_warm_ups_leave_cache_alone");
    let mut rng = Rng(seed);
    let dims = [SLOTS, TOKENS, KV_HEADS, HEAD_DIM];
    let k_cache = rt.zeros(&dims, DType::BF16)?;
    let v_cache = rt.zeros(&dims, DType::BF16)?;
    ops::fill_uniform(&rt, &k_cache, seed ^ 1, -1.0, 1.0)?;
    ops::fill_uniform(&rt, &v_cache, seed ^ 2, -1.0, 1.0)?;
    let model = CacheWriter {
        k_cache,
        v_cache,
        attn: AttentionShape {
            q_heads: Q_HEADS,
            kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            rope_theta: 10000.0,
        },
    };
    let mut failures: Vec<String> = Vec::new();

    // (a) Warm-up and capture leave the cache alone.
    let (k0, v0) = cache_bits(&rt, &model)?;
    let specs = [
        InputSpec::new(DType::BF16, &[QKV])?,
        InputSpec::new(DType::I32, &[])?,
    ];
    let mut graphs = model.forward_graphs(&rt, specs)?;
    rt.synchronize()?;
    let (k1, v1) = cache_bits(&rt, &model)?;
    if k1 != k0 || v1 != v0 {
        failures.push(format!(
            "building the graphs (warm-up + capture) wrote the cache: k slots {:?}, v slots {:?} changed",
            changed_slots(&k0, &k1),
            changed_slots(&v0, &v1)
        ));
    }

    // Fill the static input buffers with real rows (a full batch of 8, positions 8..16), then
    // redraw the cache so any stale rewrite shows.
    let (qkv8, _) = upload_bf16(&rt, &rng.vec(SLOTS * QKV, -1.0, 1.0), &[SLOTS, QKV])?;
    let pos8: Vec<i32> = (0..SLOTS as i32).map(|i| 8 + i).collect();
    let pos8 = rt.upload(&pos8, &[SLOTS])?;
    {
        let out = graphs.run([&qkv8, &pos8])?;
        println!("hole_5: full batch replayed: {}", out.replayed());
    }
    rt.synchronize()?;
    ops::fill_uniform(&rt, &model.k_cache, seed ^ 3, -1.0, 1.0)?;
    ops::fill_uniform(&rt, &model.v_cache, seed ^ 4, -1.0, 1.0)?;
    let (k2, v2) = cache_bits(&rt, &model)?;

    // (b) 3 rows (positions 5, 6, 7): slots 3..8 are padding and must stay byte-identical.
    let (qkv3, _) = upload_bf16(&rt, &rng.vec(3 * QKV, -1.0, 1.0), &[3, QKV])?;
    let pos3 = rt.upload(&[5i32, 6, 7], &[3])?;
    {
        let out = graphs.run([&qkv3, &pos3])?;
        println!("hole_5: 3-row batch replayed: {}", out.replayed());
    }
    rt.synchronize()?;
    let (k3, v3) = cache_bits(&rt, &model)?;
    let pad = 3 * SLOT_ELEMS..SLOTS * SLOT_ELEMS;
    if k3[pad.clone()] != k2[pad.clone()] || v3[pad.clone()] != v2[pad.clone()] {
        failures.push(format!(
            "a 3-row run wrote padded slots: k slots {:?}, v slots {:?} changed (3.. are padding)",
            changed_slots(&k2, &k3),
            changed_slots(&v2, &v3)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
    Ok(())
}

/// Hole 6: a panic inside the forward during capture must end the capture, leaving the
/// runtime's stream usable and a later capture working.
#[test]
fn hole_6_panic_during_capture_leaves_runtime_usable() -> Result<()> {
    let Some(rt) = gpu("hole_6_panic_during_capture_leaves_runtime_usable") else {
        return Ok(());
    };
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    let x = rt.upload(&values, &[3, 4])?;
    let spec = InputSpec::new(DType::F32, &[4])?;
    let plan = GraphPlan::new("panics", &[1, 2, 4], 0)?;
    let caught = catch_unwind(AssertUnwindSafe(|| {
        Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| {
            let y = rt.duplicate(x)?;
            if rt.is_capturing() {
                panic!("boom (hole_6: injected panic during capture)");
            }
            Ok(y)
        })
        .map(drop)
    }));
    assert!(caught.is_err(), "the panic during capture did not propagate");
    assert!(!rt.is_capturing(), "the runtime still reports a capture after the panic");
    // The stream itself must work: an eager copy and a download.
    let z = rt.duplicate(&x)?;
    assert_eq!(rt.download::<f32>(&z)?, values, "eager copy after the panic");
    rt.synchronize()?;
    // And a second capture of a forward that does not panic succeeds and replays correctly.
    let spec = InputSpec::new(DType::F32, &[4])?;
    let plan = GraphPlan::new("after_panic", &[1, 2, 4], 0)?;
    let mut graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| rt.duplicate(x))?;
    let out = graphs.run([&x])?;
    assert!(out.replayed(), "the capture after the panic did not replay");
    assert_eq!(rt.download::<f32>(&out)?, values, "replay after the panic");
    Ok(())
}

struct Norm {
    w: Tensor,
}

impl Norm {
    /// `eps` NaN stands for the default (1e-6).
    #[cuda_graph(sizes = [1, 2, 4], static_args = [eps])]
    fn forward(&self, rt: &Runtime, x: &Tensor, eps: f32) -> Result<Tensor> {
        let eps = if eps.is_nan() { 1e-6 } else { eps };
        ops::rms_norm(rt, x, &self.w, eps)
    }
}

/// Hole 7: a NaN static must match the captured NaN (by bits) and replay (old: `NaN != NaN`,
/// so every run falls back to eager).
#[test]
fn hole_7_nan_static_replays() -> Result<()> {
    let Some(rt) = gpu("hole_7_nan_static_replays") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("hole_7_nan_static_replays"));
    let (w, _) = upload_bf16(&rt, &rng.vec(256, 0.9, 1.1), &[256])?;
    let (x, _) = upload_bf16(&rt, &rng.vec(3 * 256, -1.0, 1.0), &[3, 256])?;
    let model = Norm { w };
    let mut graphs = model.forward_graphs(&rt, [InputSpec::like(&x)?], f32::NAN)?;
    let out = graphs.run_with([&x], &(f32::NAN,))?;
    assert!(out.replayed(), "a run with the captured NaN static fell back to eager");
    Ok(())
}

/// Hole 8: a lazy size whose capture failed must not be captured again on every later call.
#[test]
fn hole_8_failed_lazy_size_not_recaptured() -> Result<()> {
    let Some(rt) = gpu("hole_8_failed_lazy_size_not_recaptured") else {
        return Ok(());
    };
    let attempts = Cell::new(0usize);
    let plan = GraphPlan::new("fails", &[2, 4], 0)?.with_lazy_capture(true);
    let spec = InputSpec::new(DType::F32, &[16])?;
    let mut graphs = Runner::capture(&rt, plan, [spec], (), |rt, [x], ()| {
        if rt.is_capturing() {
            attempts.set(attempts.get() + 1);
            return Err(Error::invalid("t", "no"));
        }
        rt.duplicate(x)
    })?;
    let x = rt.zeros(&[2, 16], DType::F32)?;
    for i in 0..3 {
        let r = graphs.run([&x]).map(drop);
        println!("hole_8: run {i}: {r:?}");
    }
    assert!(!rt.is_capturing());
    rt.synchronize()?;
    assert_eq!(attempts.get(), 1, "the failed lazy size was captured again on later calls");
    Ok(())
}

/// Hole 9: a size table up to 65535 must be accepted. CPU-only: always runs.
#[test]
fn hole_9_size_65535_is_accepted() -> Result<()> {
    let r = cudagraph::SizeTable::new(&[1, 65535]);
    assert!(r.is_ok(), "SizeTable::new(&[1, 65535]) refused: {:?}", r.err());
    Ok(())
}
