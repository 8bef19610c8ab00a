//! Sharding (Megatron style, see the [module docs](super#sharding-megatron-style)): the
//! per-rank shapes ([`shard_config`]), the slicing of a layer's host weights
//! ([`shard_layer`], [`shard_weights`]), and random host weights to shard
//! ([`random_weights`]).

use std::ops::Range;

use half::bf16;

use crate::llama::LlamaConfig;
use crate::weights::{HostTensor, LayerWeights, LlamaWeights};
use cudagraph::kernels::reference::uniform_value;
use cudagraph::{Error, Result};

/// The shapes one rank of `world` holds: `q_heads`, `kv_heads` and `intermediate` divided by
/// `world` (each must divide evenly), everything else as in `cfg`.
pub fn shard_config(cfg: &LlamaConfig, world: usize) -> Result<LlamaConfig> {
    cfg.validate()?;
    if world == 0 {
        return Err(Error::invalid("shard_config", "tensor parallelism of 0"));
    }
    for (name, value) in [
        ("q_heads", cfg.q_heads),
        ("kv_heads", cfg.kv_heads),
        ("intermediate", cfg.intermediate),
    ] {
        if value % world != 0 {
            return Err(Error::invalid(
                "shard_config",
                format!("`{name}` ({value}) is not divisible by the tensor parallelism ({world})"),
            ));
        }
    }
    let local = LlamaConfig {
        q_heads: cfg.q_heads / world,
        kv_heads: cfg.kv_heads / world,
        intermediate: cfg.intermediate / world,
        ..cfg.clone()
    };
    local.validate()?;
    Ok(local)
}

/// The rows `ranges` of `t` (along its first dimension), concatenated.
fn take_rows(t: &HostTensor, ranges: &[Range<usize>]) -> Result<HostTensor> {
    let rows = t.dims.first().copied().unwrap_or(0);
    let row_len: usize = t.dims.iter().skip(1).product();
    let mut data = Vec::with_capacity(ranges.iter().map(|r| r.len() * row_len).sum());
    for r in ranges {
        if r.end > rows || r.start > r.end {
            return Err(Error::invalid(
                "shard",
                format!("rows {r:?} out of a tensor of {rows} rows"),
            ));
        }
        data.extend_from_slice(&t.data[r.start * row_len..r.end * row_len]);
    }
    let mut dims = t.dims.clone();
    if let Some(first) = dims.first_mut() {
        *first = ranges.iter().map(|r| r.len()).sum();
    }
    HostTensor::new(&dims, data)
}

/// Columns `cols` of the 2-D tensor `t`.
fn take_cols(t: &HostTensor, cols: Range<usize>) -> Result<HostTensor> {
    let [rows, width] = t.dims[..] else {
        return Err(Error::invalid(
            "shard",
            format!("column slice of a tensor of dimensions {:?}", t.dims),
        ));
    };
    if cols.end > width || cols.start > cols.end {
        return Err(Error::invalid(
            "shard",
            format!("columns {cols:?} out of a tensor of {width} columns"),
        ));
    }
    let mut data = Vec::with_capacity(rows * cols.len());
    for row in t.data.chunks_exact(width) {
        data.extend_from_slice(&row[cols.clone()]);
    }
    HostTensor::new(&[rows, cols.len()], data)
}

/// Rank `rank`'s part of one layer (see the [module docs](super#sharding-megatron-style)): the
/// q/k/v rows of its heads, the output projection's columns of its heads, its slice of gate/up rows
/// and down columns; the output bias on rank 0 and zeros elsewhere (added once); norms replicated.
pub fn shard_layer(
    cfg: &LlamaConfig,
    layer: &LayerWeights,
    rank: usize,
    world: usize,
) -> Result<LayerWeights> {
    let local = shard_config(cfg, world)?;
    if rank >= world {
        return Err(Error::invalid(
            "shard_layer",
            format!("rank {rank} of {world}"),
        ));
    }
    let d = cfg.head_dim;
    let (q, kv) = (local.q_heads * d, local.kv_heads * d);
    let k_start = cfg.q_heads * d;
    let v_start = k_start + cfg.kv_heads * d;
    let qkv_rows = [
        rank * q..(rank + 1) * q,
        k_start + rank * kv..k_start + (rank + 1) * kv,
        v_start + rank * kv..v_start + (rank + 1) * kv,
    ];
    let i = local.intermediate;
    let gate_up_rows = [
        rank * i..(rank + 1) * i,
        cfg.intermediate + rank * i..cfg.intermediate + (rank + 1) * i,
    ];
    let o_bias = match (&layer.o_bias, rank) {
        (Some(b), 0) => Some(b.clone()),
        (Some(b), _) => Some(HostTensor::new(&b.dims, vec![bf16::ZERO; b.data.len()])?),
        (None, _) => None,
    };
    Ok(LayerWeights {
        attn_norm: layer.attn_norm.clone(),
        qkv: take_rows(&layer.qkv, &qkv_rows)?,
        qkv_bias: layer
            .qkv_bias
            .as_ref()
            .map(|b| take_rows(b, &qkv_rows))
            .transpose()?,
        q_norm: layer.q_norm.clone(),
        k_norm: layer.k_norm.clone(),
        o_proj: take_cols(&layer.o_proj, rank * q..(rank + 1) * q)?,
        o_bias,
        mlp_norm: layer.mlp_norm.clone(),
        gate_up: take_rows(&layer.gate_up, &gate_up_rows)?,
        down: take_cols(&layer.down, rank * i..(rank + 1) * i)?,
    })
}

/// Rank `rank`'s weights of a model of `cfg` sharded over `world` ranks: valid weights of
/// [`shard_config`]`(cfg, world)`. [`TpLlama::from_weights`](super::TpLlama::from_weights) shards
/// layer by layer instead (less host memory); this is the same slicing, whole, for inspection and
/// tests.
pub fn shard_weights(
    cfg: &LlamaConfig,
    weights: &LlamaWeights,
    rank: usize,
    world: usize,
) -> Result<LlamaWeights> {
    weights.check(cfg)?;
    let shard = LlamaWeights {
        embed: weights.embed.clone(),
        layers: weights
            .layers
            .iter()
            .map(|l| shard_layer(cfg, l, rank, world))
            .collect::<Result<_>>()?,
        final_norm: weights.final_norm.clone(),
        lm_head: weights.lm_head.clone(),
    };
    shard.check(&shard_config(cfg, world)?)?;
    Ok(shard)
}

/// Random host weights for `cfg`, deterministic in `seed` (each tensor its own stream of
/// [`uniform_value`]): embedding and LM head uniform in ±1 and ±1/√hidden, projections ±1/√fan_in,
/// norm weights in [0.9, 1.1], q/k/v biases ±0.5, output bias ±0.1, as [`Llama::random`] draws
/// them on the device. Generated on all cores (a Qwen3-0.6B-shaped model takes about a second).
///
/// [`Llama::random`]: crate::llama::Llama::random
pub fn random_weights(cfg: &LlamaConfig, seed: u64) -> Result<LlamaWeights> {
    cfg.validate()?;
    let mut index = 0u64;
    let mut tensor = |dims: &[usize], low: f32, high: f32| -> Result<HostTensor> {
        index += 1;
        let stream = seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
        HostTensor::new(dims, uniform_bf16(stream, dims.iter().product(), low, high))
    };
    let h = cfg.hidden;
    let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
    let embed = tensor(&[cfg.vocab, h], -1.0, 1.0)?;
    let mut layers = Vec::with_capacity(cfg.layers);
    for _ in 0..cfg.layers {
        let q = cfg.q_width();
        let (qkv_w, o_w, h_w, i_w) = (w(h), w(q), w(h), w(cfg.intermediate));
        layers.push(LayerWeights {
            attn_norm: tensor(&[h], 0.9, 1.1)?,
            qkv: tensor(&[cfg.qkv_width(), h], -qkv_w, qkv_w)?,
            qkv_bias: match cfg.qkv_bias {
                true => Some(tensor(&[cfg.qkv_width()], -0.5, 0.5)?),
                false => None,
            },
            q_norm: match cfg.qk_norm {
                true => Some(tensor(&[cfg.head_dim], 0.9, 1.1)?),
                false => None,
            },
            k_norm: match cfg.qk_norm {
                true => Some(tensor(&[cfg.head_dim], 0.9, 1.1)?),
                false => None,
            },
            o_proj: tensor(&[h, q], -o_w, o_w)?,
            o_bias: match cfg.o_bias {
                true => Some(tensor(&[h], -0.1, 0.1)?),
                false => None,
            },
            mlp_norm: tensor(&[h], 0.9, 1.1)?,
            gate_up: tensor(&[2 * cfg.intermediate, h], -h_w, h_w)?,
            down: tensor(&[h, cfg.intermediate], -i_w, i_w)?,
        });
    }
    let final_norm = tensor(&[h], 0.9, 1.1)?;
    let lm_head = match cfg.tie_embeddings {
        true => None,
        false => Some(tensor(&[cfg.vocab, h], -w(h), w(h))?),
    };
    let weights = LlamaWeights {
        embed,
        layers,
        final_norm,
        lm_head,
    };
    weights.check(cfg)?;
    Ok(weights)
}

/// `len` bf16 values `uniform_value(seed, i, low, high)`, computed on all cores.
fn uniform_bf16(seed: u64, len: usize, low: f32, high: f32) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; len];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = len.div_ceil(threads).max(1 << 16);
    let fill = |start: usize, part: &mut [bf16]| {
        for (j, v) in part.iter_mut().enumerate() {
            *v = bf16::from_f32(uniform_value(seed, (start + j) as u64, low, high));
        }
    };
    if len <= chunk {
        fill(0, &mut out);
        return out;
    }
    std::thread::scope(|scope| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            scope.spawn(move || fill(c * chunk, part));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LlamaConfig {
        LlamaConfig {
            vocab: 40,
            hidden: 16,
            layers: 2,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 8,
            intermediate: 24,
            cache_slots: 4,
            cache_tokens: 8,
            qkv_bias: true,
            o_bias: true,
            qk_norm: true,
            tie_embeddings: false,
            ..LlamaConfig::tiny()
        }
    }

    /// Row `r`, column `c` of a 2-D host tensor.
    fn at(t: &HostTensor, r: usize, c: usize) -> f32 {
        t.data[r * t.dims[1] + c].to_f32()
    }

    #[test]
    fn shard_config_divides_heads_and_mlp() {
        let local = shard_config(&cfg(), 2).unwrap();
        assert_eq!(
            (local.q_heads, local.kv_heads, local.intermediate),
            (2, 1, 12)
        );
        assert_eq!((local.hidden, local.vocab), (16, 40));
        assert!(shard_config(&cfg(), 4).is_err(), "kv_heads 2 over 4 ranks");
        assert!(shard_config(&cfg(), 0).is_err());
        let one = shard_config(&cfg(), 1).unwrap();
        assert_eq!(one, cfg());
    }

    #[test]
    fn random_weights_are_deterministic_and_fit() {
        let a = random_weights(&cfg(), 3).unwrap();
        let b = random_weights(&cfg(), 3).unwrap();
        let c = random_weights(&cfg(), 4).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        a.check(&cfg()).unwrap();
        assert!(
            a.layers[0]
                .attn_norm
                .to_f32()
                .iter()
                .all(|v| (0.89..=1.11).contains(v))
        );
        // Large tensors take the multi-threaded path; the values don't depend on it.
        let big = uniform_bf16(9, (1 << 18) + 3, -1.0, 1.0);
        let at_end = bf16::from_f32(uniform_value(9, (1 << 18) + 2, -1.0, 1.0));
        assert_eq!(big[(1 << 18) + 2], at_end);
    }

    /// Every weight element lands on exactly one rank (or, replicated, on every rank), where
    /// the Megatron slicing says.
    #[test]
    fn shards_partition_the_weights() {
        let cfg = cfg();
        let full = random_weights(&cfg, 1).unwrap();
        let shards: Vec<_> = (0..2)
            .map(|r| shard_weights(&cfg, &full, r, 2).unwrap())
            .collect();
        let d = cfg.head_dim;
        let l = &full.layers[1];
        for (rank, shard) in shards.iter().enumerate() {
            let s = &shard.layers[1];
            assert_eq!(s.qkv.dims, vec![(2 + 2) * d, 16]);
            // q rows: heads 2 rank .. 2 rank + 2; k and v rows: kv head `rank`.
            for row in 0..2 * d {
                assert_eq!(at(&s.qkv, row, 5), at(&l.qkv, rank * 2 * d + row, 5));
            }
            for row in 0..d {
                let k = 4 * d + rank * d + row;
                let v = 6 * d + rank * d + row;
                assert_eq!(at(&s.qkv, 2 * d + row, 3), at(&l.qkv, k, 3));
                assert_eq!(at(&s.qkv, 3 * d + row, 3), at(&l.qkv, v, 3));
                let bias = s.qkv_bias.as_ref().unwrap().to_f32();
                let full_bias = l.qkv_bias.as_ref().unwrap().to_f32();
                assert_eq!(bias[3 * d + row], full_bias[v]);
            }
            // o_proj columns of the rank's heads.
            assert_eq!(s.o_proj.dims, vec![16, 2 * d]);
            for col in 0..2 * d {
                assert_eq!(at(&s.o_proj, 7, col), at(&l.o_proj, 7, rank * 2 * d + col));
            }
            // gate rows, up rows, down columns of the rank's slice of the MLP.
            assert_eq!(s.gate_up.dims, vec![24, 16]);
            for j in 0..12 {
                assert_eq!(at(&s.gate_up, j, 2), at(&l.gate_up, rank * 12 + j, 2));
                assert_eq!(
                    at(&s.gate_up, 12 + j, 2),
                    at(&l.gate_up, 24 + rank * 12 + j, 2)
                );
                assert_eq!(at(&s.down, 9, j), at(&l.down, 9, rank * 12 + j));
            }
            // The output bias once: rank 0 holds it, the others zeros.
            let o_bias = s.o_bias.as_ref().unwrap().to_f32();
            match rank {
                0 => assert_eq!(o_bias, l.o_bias.as_ref().unwrap().to_f32()),
                _ => assert!(o_bias.iter().all(|&v| v == 0.0)),
            }
            // Replicated.
            assert_eq!(s.q_norm, l.q_norm);
            assert_eq!(s.mlp_norm, l.mlp_norm);
            assert_eq!(shard.embed, full.embed);
            assert_eq!(shard.lm_head, full.lm_head);
        }
    }

    /// Row-parallel halves sum to the full product, column-parallel halves concatenate to it:
    /// the sharded MLP equals the full one up to rounding (host f32 math).
    #[test]
    fn sharded_mlp_sums_to_the_full_one() {
        let cfg = cfg();
        let full = random_weights(&cfg, 2).unwrap();
        let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let mlp = |l: &LayerWeights, inter: usize| -> Vec<f32> {
            let gu = l.gate_up.to_f32();
            let down = l.down.to_f32();
            let dot = |row: &[f32]| row.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>();
            let act: Vec<f32> = (0..inter)
                .map(|j| {
                    let g = dot(&gu[j * 16..(j + 1) * 16]);
                    let u = dot(&gu[(inter + j) * 16..(inter + j + 1) * 16]);
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            (0..16)
                .map(|o| (0..inter).map(|j| down[o * inter + j] * act[j]).sum())
                .collect()
        };
        let reference = mlp(&full.layers[0], 24);
        let mut sum = [0f32; 16];
        for rank in 0..2 {
            let s = shard_layer(&cfg, &full.layers[0], rank, 2).unwrap();
            for (acc, v) in sum.iter_mut().zip(mlp(&s, 12)) {
                *acc += v;
            }
        }
        for (a, b) in sum.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn slicing_errors_are_errors() {
        let t = HostTensor::new(&[2, 3], vec![bf16::ONE; 6]).unwrap();
        assert!(take_rows(&t, &[0..1, 1..3]).is_err());
        assert!(take_cols(&t, 2..4).is_err());
        let v = HostTensor::new(&[3], vec![bf16::ONE; 3]).unwrap();
        assert!(take_cols(&v, 0..1).is_err());
        assert_eq!(take_rows(&v, &[0..1, 2..3]).unwrap().dims, vec![2]);
        let layer = &random_weights(&cfg(), 0).unwrap().layers[0];
        assert!(
            shard_layer(&cfg(), layer, 2, 2).is_err(),
            "rank out of range"
        );
    }
}
