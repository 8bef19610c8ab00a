//! The serving step (issue 28): a step of mixed sequences (decode tokens and prompt chunks,
//! one token per row, per-row slots and positions in device tables) gives each sequence the
//! logits of its own eager forward over the same cache, and writes nothing but its own rows'
//! keys and values: padded rows and slots not in the step keep every byte.

use cudagraph::{Result, Runtime, Tensor};
use cudagraph_models::llama::{Llama, LlamaConfig};
use cudagraph_models::serving::{Piece, StepTables};

use crate::common::{Rng, fresh_seed, gpu, kv_cache_bits};

/// A small Qwen3-like decoder (q/k norms) with `slots` slots of 64 positions.
fn config(slots: usize) -> LlamaConfig {
    LlamaConfig {
        cache_slots: slots,
        qk_norm: true,
        ..LlamaConfig::tiny()
    }
}

fn tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// Prefills `prompt` into `slot` from position `start` eagerly; the logits of its last row.
fn prefill(
    rt: &Runtime,
    model: &Llama,
    prompt: &[u32],
    start: usize,
    slot: usize,
) -> Result<Tensor> {
    model.prefill(rt, &rt.upload(prompt, &[prompt.len()])?, start, slot)
}

/// A graphed step of 24 rows (a captured size) mixing two decode tokens, a whole 13-token
/// prompt and the 9-token continuation of a prompt prefilled before: the eager step's logits of
/// each sequence equal, within the kernels' bound, those of the sequence's own eager prefill
/// over a twin model's cache (other GEMM shapes; the tiled attention sums in another order);
/// the graph's greedy ids equal the eager step's bit for bit (same kernels, same shapes) and
/// the host's argmax of the eager logits; the capture's warm-ups (padded rows only) write no
/// cache byte.
#[test]
fn a_mixed_step_matches_each_sequence_alone() -> Result<()> {
    let Some(rt) = gpu("a_mixed_step_matches_each_sequence_alone") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("a_mixed_step_matches_each_sequence_alone"));
    let cfg = config(6);
    let seed = rng.next_u64();
    let served = Llama::random(&rt, cfg.clone(), seed)?;
    let alone = Llama::random(&rt, cfg.clone(), seed)?;
    let vocab = cfg.vocab;
    // (slot, tokens before the step, tokens in the step)
    let plan = [(4usize, 20usize, 1usize), (0, 0, 13), (2, 10, 9), (5, 7, 1)];
    let mut pieces = Vec::new();
    for &(slot, before, now) in &plan {
        let all = tokens(&mut rng, before + now, vocab);
        if before > 0 {
            prefill(&rt, &served, &all[..before], 0, slot)?;
            prefill(&rt, &alone, &all[..before], 0, slot)?;
        }
        pieces.push(Piece {
            slot,
            start: before,
            tokens: all[before..].to_vec(),
            logits: true,
        });
    }
    let tables = StepTables::build(&pieces)?;
    assert_eq!(tables.rows(), 24);
    let inputs = tables.upload(&rt)?;
    let [t, p, s, ti, l] = inputs.inputs();
    let before = kv_cache_bits(&rt, &served)?;
    // The eager step (logits, then ids: it writes the same cache rows twice, as the replay does).
    let logits_t = served.step_logits(&rt, t, p, s, ti, l)?;
    assert_eq!(
        logits_t.shape(),
        &[6, vocab],
        "min(24 rows, 6 slots) logit rows"
    );
    let logits = rt.download_f32(&logits_t)?;
    let eager_ids: Vec<u32> = rt.download(&served.forward_step(&rt, t, p, s, ti, l)?)?;
    let after_eager = kv_cache_bits(&rt, &served)?;
    assert!(after_eager != before, "the eager step wrote its rows");
    let mut graphs = served.forward_step_graphs(&rt, served.step_input_specs()?)?;
    assert!(
        kv_cache_bits(&rt, &served)? == after_eager,
        "the capture's warm-ups wrote a cache byte"
    );
    graphs.poison_pool()?;
    let out = graphs.run(inputs.inputs())?;
    assert!(out.replayed());
    assert_eq!(out.size(), Some(24));
    assert_eq!(out.shape(), &[24]);
    let ids: Vec<u32> = rt.download(&out)?;
    drop(out);
    assert_eq!(ids, eager_ids, "graph and eager steps differ");
    assert!(
        ids[6..].iter().all(|&id| id == 0),
        "ids past the logit rows are 0"
    );
    for (k, piece) in pieces.iter().enumerate() {
        let want = rt.download_f32(&prefill(
            &rt,
            &alone,
            &piece.tokens,
            piece.start,
            piece.slot,
        )?)?;
        let row = &logits[k * vocab..(k + 1) * vocab];
        let (mut diff, mut norm) = (0f64, 0f64);
        for (g, w) in row.iter().zip(&want) {
            diff += f64::from(g - w).powi(2);
            norm += f64::from(*w).powi(2);
        }
        let err = (diff / norm).sqrt();
        println!(
            "slot {} (positions {}..{}): relative error {err:.2e}",
            piece.slot,
            piece.start,
            piece.start + piece.tokens.len()
        );
        assert!(err < 3e-2, "slot {}: relative error {err}", piece.slot);
        let host_argmax = row
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0;
        assert_eq!(
            ids[k] as usize, host_argmax,
            "greedy id of slot {}",
            piece.slot
        );
    }
    Ok(())
}

/// A step of 5 rows replayed in the graph of 8: its 3 padded rows, and the slots no sequence
/// of the step owns (finished ones), keep every byte of their caches; the step's own slots
/// change only at the positions its rows write.
#[test]
fn padded_rows_and_other_slots_keep_their_cache_bytes() -> Result<()> {
    let Some(rt) = gpu("padded_rows_and_other_slots_keep_their_cache_bytes") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "padded_rows_and_other_slots_keep_their_cache_bytes",
    ));
    let cfg = config(6);
    let model = Llama::random(&rt, cfg.clone(), rng.next_u64())?; // a random cache, every slot
    let mut graphs = model.forward_step_graphs(&rt, model.step_input_specs()?)?;
    let decode_pos = 5 + rng.below(50);
    let chunk_start = rng.below(60);
    let pieces = [
        Piece {
            slot: 3,
            start: decode_pos,
            tokens: tokens(&mut rng, 1, cfg.vocab),
            logits: true,
        },
        Piece {
            slot: 1,
            start: chunk_start,
            tokens: tokens(&mut rng, 4, cfg.vocab),
            logits: true,
        },
    ];
    let tables = StepTables::build(&pieces)?;
    let before = kv_cache_bits(&rt, &model)?;
    let out = graphs.run(tables.upload(&rt)?.inputs())?;
    assert!(out.replayed());
    assert_eq!(out.size(), Some(8), "5 rows pad to 8");
    drop(out);
    rt.synchronize()?;
    let after = kv_cache_bits(&rt, &model)?;
    let (t, row) = (cfg.cache_tokens, cfg.kv_heads * cfg.head_dim);
    let written = |slot: usize, pos: usize| {
        (slot == 3 && pos == decode_pos)
            || (slot == 1 && (chunk_start..chunk_start + 4).contains(&pos))
    };
    let mut changed_rows = 0;
    for (which, (b, a)) in before.iter().zip(&after).enumerate() {
        for slot in 0..cfg.cache_slots {
            for pos in 0..t {
                let at = (slot * t + pos) * row;
                let same = b[at..at + row] == a[at..at + row];
                if written(slot, pos) {
                    changed_rows += usize::from(!same);
                } else {
                    assert!(same, "cache {which}: slot {slot}, position {pos} changed");
                }
            }
        }
    }
    // Keys and values of 5 rows in every layer (a random cache row equal to the new one
    // is possible in principle, not in practice).
    assert_eq!(changed_rows, 5 * 2 * cfg.layers);
    Ok(())
}
