//! The serving step's kernels (issue 28) against the host reference: `attention_step` (decode
//! rows through the decode kernel with per-row slots, prompt chunks through the tiled causal
//! kernel, tiles of 8 rows and a shorter last one), `rope_kv_write_step` (each row's key and
//! value at its own slot and position), padded and slot-less rows, and `argmax_rows_padded`.

use cudagraph::kernels::reference as r;
use cudagraph::ops::{self, AttentionShape, StepRows};
use cudagraph::{Result, Runtime, Tensor};
use cudagraph_models::serving::{Piece, StepTables};

use crate::common::{Rng, assert_close, download_f32, fresh_seed, gpu, upload_bf16};

const KERNEL_TOL: f64 = 8e-3;

/// Head layouts (q heads, kv heads, head dim) and cache (slots, positions).
const CASES: [(usize, usize, usize, usize, usize); 3] = [
    (16, 8, 64, 6, 256),
    (4, 4, 128, 5, 100),
    (8, 2, 256, 4, 300),
];

/// A key cache and a value cache of `dims` ([slots, positions, kv heads, head dim]) with random
/// bf16 values, each with its values on the host.
fn random_caches(rt: &Runtime, rng: &mut Rng, dims: [usize; 4]) -> Result<[(Tensor, Vec<f32>); 2]> {
    let len = dims.iter().product();
    Ok([
        upload_bf16(rt, &rng.vec(len, -1.0, 1.0), &dims)?,
        upload_bf16(rt, &rng.vec(len, -1.0, 1.0), &dims)?,
    ])
}

fn shape(q_heads: usize, kv_heads: usize, head_dim: usize) -> AttentionShape {
    AttentionShape {
        q_heads,
        kv_heads,
        head_dim,
        rope_theta: 10_000.0,
        rope_scaling: ops::RopeScaling::None,
    }
}

/// The step's tables with two rows appended: one padded (position -1), one without a slot
/// (slot -1), both alone.
fn tables_with_padding(pieces: &[Piece]) -> Result<StepTables> {
    let mut t = StepTables::build(pieces)?;
    for (pos, slot) in [(-1, 0), (3, -1)] {
        t.tokens.push(0);
        t.positions.push(pos);
        t.slots.extend([slot, 1]);
        t.tiles.extend([0, 0]);
        t.logit_rows.push(0);
    }
    Ok(t)
}

fn upload_i32(rt: &Runtime, v: &[i32], dims: &[usize]) -> Result<Tensor> {
    rt.upload(v, dims)
}

#[test]
fn attention_step_matches_the_reference_row_by_row() -> Result<()> {
    let Some(rt) = gpu("attention_step_matches_the_reference_row_by_row") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed(
        "attention_step_matches_the_reference_row_by_row",
    ));
    for (q_heads, kv_heads, head_dim, slots, tokens) in CASES {
        let cfg = shape(q_heads, kv_heads, head_dim);
        let [(k_cache, k_ref), (v_cache, v_ref)] =
            random_caches(&rt, &mut rng, [slots, tokens, kv_heads, head_dim])?;
        // Two decode rows, a 21-row chunk (tiles of 8, 8, 5) starting mid-slot, a 3-row chunk
        // from position 0, a row past the cache's end (clamped).
        let pieces = [
            Piece {
                slot: 1,
                start: rng.below(tokens),
                tokens: vec![0],
                logits: true,
            },
            Piece {
                slot: 0,
                start: 17,
                tokens: vec![0; 21],
                logits: true,
            },
            Piece {
                slot: 2,
                start: 0,
                tokens: vec![0; 3],
                logits: true,
            },
            Piece {
                slot: 3,
                start: tokens + 9,
                tokens: vec![0],
                logits: true,
            },
        ];
        let t = tables_with_padding(&pieces)?;
        let n = t.rows();
        let q_width = q_heads * head_dim;
        let (q, q_ref) = upload_bf16(&rt, &rng.vec(n * q_width, -1.0, 1.0), &[n, q_width])?;
        let positions = upload_i32(&rt, &t.positions, &[n])?;
        let slots_t = upload_i32(&rt, &t.slots, &[n, 2])?;
        let tiles_t = upload_i32(&rt, &t.tiles, &[n, 2])?;
        let rows = StepRows {
            slots: &slots_t,
            tiles: &tiles_t,
        };
        let out = download_f32(
            &rt,
            &ops::attention_step(&rt, &q, &k_cache, &v_cache, &positions, &cfg, &rows)?,
        )?;
        for row in 0..n {
            let (slot, pos) = (t.slots[2 * row], t.positions[row]);
            let q_row = &q_ref[row * q_width..(row + 1) * q_width];
            let want = if slot < 0 || slot as usize >= slots {
                vec![0.0; q_width]
            } else {
                r::attention_prefill_ref(
                    q_row,
                    (&k_ref, &v_ref),
                    &[pos],
                    tokens,
                    &cfg,
                    slot as usize,
                )
            };
            assert_close(
                &format!(
                    "heads {q_heads}/{kv_heads}x{head_dim}: row {row} (slot {slot}, position {pos})"
                ),
                &out[row * q_width..(row + 1) * q_width],
                &want,
                KERNEL_TOL,
            );
        }
    }
    Ok(())
}

/// `rope_kv_write_step` writes each row's key and value at its own slot and position, as the
/// prefill write does for one slot, and nothing for a padded or slot-less row.
#[test]
fn rope_kv_write_step_writes_each_row_at_its_slot() -> Result<()> {
    let Some(rt) = gpu("rope_kv_write_step_writes_each_row_at_its_slot") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("rope_kv_write_step_writes_each_row_at_its_slot"));
    let (q_heads, kv_heads, head_dim, slots, tokens) = CASES[0];
    let cfg = shape(q_heads, kv_heads, head_dim);
    let [(k_cache, mut k_ref), (v_cache, mut v_ref)] =
        random_caches(&rt, &mut rng, [slots, tokens, kv_heads, head_dim])?;
    let pieces = [
        Piece {
            slot: 4,
            start: 30,
            tokens: vec![0],
            logits: true,
        },
        Piece {
            slot: 2,
            start: 5,
            tokens: vec![0; 11],
            logits: true,
        },
    ];
    let t = tables_with_padding(&pieces)?;
    let n = t.rows();
    let width = (q_heads + 2 * kv_heads) * head_dim;
    let (qkv, qkv_ref) = upload_bf16(&rt, &rng.vec(n * width, -1.0, 1.0), &[n, width])?;
    let positions = upload_i32(&rt, &t.positions, &[n])?;
    let slots_t = upload_i32(&rt, &t.slots, &[n, 2])?;
    let tiles_t = upload_i32(&rt, &t.tiles, &[n, 2])?;
    let rows = StepRows {
        slots: &slots_t,
        tiles: &tiles_t,
    };
    let q = ops::rope_kv_write_step(&rt, &qkv, &positions, &k_cache, &v_cache, &cfg, &rows, None)?;
    // The reference: each row through the one-slot prefill write of its own slot.
    let mut q_want = Vec::with_capacity(n * q_heads * head_dim);
    for row in 0..n {
        let (slot, pos) = (t.slots[2 * row], t.positions[row]);
        let qkv_row = &qkv_ref[row * width..(row + 1) * width];
        if slot < 0 || slot as usize >= slots || pos < 0 {
            q_want.extend(std::iter::repeat_n(0.0, q_heads * head_dim));
            continue;
        }
        let chunk = ops::PrefillChunk {
            slot: slot as usize,
            seq_len: pos as usize + 1,
        };
        q_want.extend(r::rope_kv_write_prefill_ref(
            qkv_row,
            &[pos],
            (&mut k_ref, &mut v_ref),
            tokens,
            &cfg,
            &chunk,
        ));
    }
    assert_close("step q", &download_f32(&rt, &q)?, &q_want, KERNEL_TOL);
    assert_close(
        "step k cache",
        &download_f32(&rt, &k_cache)?,
        &k_ref,
        KERNEL_TOL,
    );
    assert_close("step v cache", &download_f32(&rt, &v_cache)?, &v_ref, 0.0);
    Ok(())
}

/// Greedy ids: the host's argmax of each row (first of equal maxima), zeros past the logits.
#[test]
fn argmax_rows_padded_matches_the_host() -> Result<()> {
    let Some(rt) = gpu("argmax_rows_padded_matches_the_host") else {
        return Ok(());
    };
    let mut rng = Rng(fresh_seed("argmax_rows_padded_matches_the_host"));
    let (m, cols) = (5, 151_936);
    let mut values = rng.vec(m * cols, -4.0, 4.0);
    values[2 * cols + 7] = 9.0; // a tie in row 2: the first wins
    values[2 * cols + 900] = 9.0;
    let (x, host) = upload_bf16(&rt, &values, &[m, cols])?;
    let ids: Vec<u32> = rt.download(&ops::argmax_rows_padded(&rt, &x, 8)?)?;
    for row in 0..m {
        let r = &host[row * cols..(row + 1) * cols];
        let best = r
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &v)| if v > b.1 { (i, v) } else { b },
            )
            .0;
        assert_eq!(ids[row] as usize, best, "row {row}");
    }
    assert_eq!(ids[2], 7);
    assert_eq!(&ids[m..], [0, 0, 0]);
    assert!(
        ops::argmax_rows_padded(&rt, &x, 4).is_err(),
        "fewer rows than logits"
    );
    Ok(())
}
