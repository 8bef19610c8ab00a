//! A decoder step written as a candle user writes one (feature `candle`): candle_nn's
//! `Embedding`, `RmsNorm`, `Linear` and `rotary_emb::rope`, grouped-query attention over a
//! preallocated KV cache written in place, and positions as a device tensor. Only the
//! `#[cuda_graph]` attribute is cudagraph's.
//!
//! One step decodes one token for each of `b` sequences. Inputs, each with the batch as its
//! leading dimension:
//! - `tokens [b]` (u32): the token of each sequence;
//! - `positions [b]` (u32): where it goes in its sequence;
//! - `slots [b]` (u32): which cache row holds the sequence. Row 0 is reserved for padding
//!   (`pad = [slots = 0]`): padded rows of a replay write their keys and values there and
//!   nowhere else.
//!
//! Output: logits `[b, vocab]` (f32).

use candle_core::{CudaDevice, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder, VarMap};

use cudagraph::cuda_graph;

/// The decoder's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandleDecoderConfig {
    /// Vocabulary.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads` is a multiple).
    pub kv_heads: usize,
    /// MLP size.
    pub intermediate: usize,
    /// Cache rows (sequences), row 0 included (the padding row).
    pub max_sequences: usize,
    /// Positions per sequence.
    pub max_positions: usize,
}

impl CandleDecoderConfig {
    /// A small model for tests.
    pub fn tiny() -> Self {
        Self {
            vocab: 512,
            hidden: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 256,
            max_sequences: 17,
            max_positions: 64,
        }
    }

    /// The benchmark model of `examples/candle_decoder.rs` and the GPU test
    /// `candle_decoder_latency`: Qwen3-0.6B-like widths, 4 layers, a cache of 65 sequences x
    /// 256 positions.
    pub fn bench() -> Self {
        Self {
            vocab: 32_000,
            hidden: 1024,
            layers: 4,
            heads: 16,
            kv_heads: 8,
            intermediate: 3072,
            max_sequences: 65,
            max_positions: 256,
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// `[max_sequences * max_positions, kv_heads * head_dim]`, written in place.
    k_cache: Tensor,
    v_cache: Tensor,
}

/// The decoder, with random weights from a `VarMap` and its caches.
pub struct CandleDecoder {
    cfg: CandleDecoderConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    /// `[1, max_positions]`: 0, 1, 2, ... (for the causal mask).
    position_ids: Tensor,
    _vars: VarMap,
}

fn linear(vb: &VarBuilder, name: &str, inputs: usize, outputs: usize) -> Result<Linear> {
    let w = vb.get_with_hints(
        (outputs, inputs),
        name,
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0 / (inputs as f64).sqrt(),
        },
    )?;
    Ok(Linear::new(w, None))
}

fn norm(vb: &VarBuilder, name: &str, size: usize) -> Result<RmsNorm> {
    let w = vb.get_with_hints(size, name, candle_nn::Init::Const(1.0))?;
    Ok(RmsNorm::new(w, 1e-6))
}

impl CandleDecoder {
    /// A decoder of `cfg` on `dev` with random weights (seeded by candle's generator of the
    /// device) and zeroed caches.
    pub fn new(dev: &CudaDevice, cfg: CandleDecoderConfig) -> Result<Self> {
        let device = Device::Cuda(dev.clone());
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &device);
        let kv = cfg.kv_heads * cfg.head_dim();
        let embed = Embedding::new(
            vb.get_with_hints(
                (cfg.vocab, cfg.hidden),
                "embed",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?,
            cfg.hidden,
        );
        let mut layers = Vec::new();
        for i in 0..cfg.layers {
            let vb = vb.pp(format!("layer{i}"));
            let rows = cfg.max_sequences * cfg.max_positions;
            layers.push(Layer {
                input_norm: norm(&vb, "input_norm", cfg.hidden)?,
                q: linear(&vb, "q", cfg.hidden, cfg.hidden)?,
                k: linear(&vb, "k", cfg.hidden, kv)?,
                v: linear(&vb, "v", cfg.hidden, kv)?,
                o: linear(&vb, "o", cfg.hidden, cfg.hidden)?,
                post_norm: norm(&vb, "post_norm", cfg.hidden)?,
                gate: linear(&vb, "gate", cfg.hidden, cfg.intermediate)?,
                up: linear(&vb, "up", cfg.hidden, cfg.intermediate)?,
                down: linear(&vb, "down", cfg.intermediate, cfg.hidden)?,
                k_cache: Tensor::zeros((rows, kv), DType::F32, &device)?,
                v_cache: Tensor::zeros((rows, kv), DType::F32, &device)?,
            });
        }
        let half = cfg.head_dim() / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / cfg.head_dim() as f32))
            .collect();
        let inv_freq = Tensor::new(inv_freq.as_slice(), &device)?.reshape((1, half))?;
        let t = Tensor::arange(0u32, cfg.max_positions as u32, &device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_positions, 1))?;
        let freqs = t.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            position_ids: Tensor::arange(0u32, cfg.max_positions as u32, &device)?
                .reshape((1, cfg.max_positions))?,
            embed,
            layers,
            norm: norm(&vb, "norm", cfg.hidden)?,
            lm_head: linear(&vb, "lm_head", cfg.hidden, cfg.vocab)?,
            cfg,
            _vars: vars,
        })
    }

    /// The configuration.
    pub fn config(&self) -> CandleDecoderConfig {
        self.cfg
    }

    /// Layer `layer`'s key cache, `[max_sequences * max_positions, kv_heads * head_dim]`.
    pub fn k_cache(&self, layer: usize) -> &Tensor {
        &self.layers[layer].k_cache
    }

    /// One decode step (see the module docs).
    #[cuda_graph(
        sizes = [1, 2, 4, 8, 16, 32, 64],
        batch = tokens,
        pad = [slots = 0]
    )]
    pub fn forward(
        &self,
        _dev: &CudaDevice,
        tokens: &Tensor,
        positions: &Tensor,
        slots: &Tensor,
    ) -> Result<Tensor> {
        let cfg = self.cfg;
        let (b, hd) = (tokens.dim(0)?, cfg.head_dim());
        let group = cfg.heads / cfg.kv_heads;
        let mut x = self.embed.forward(tokens)?; // [b, hidden]
        // Rotary angles of each sequence's position: [b, 1, hd/2].
        let cos = self.cos.index_select(positions, 0)?.unsqueeze(1)?;
        let sin = self.sin.index_select(positions, 0)?.unsqueeze(1)?;
        // Cache row of each (sequence, position), and the causal mask over positions.
        let max_pos = cfg.max_positions as f64;
        let flat = (slots.to_dtype(DType::F32)? * max_pos)?
            .add(&positions.to_dtype(DType::F32)?)?
            .to_dtype(DType::U32)?;
        let index = flat
            .unsqueeze(1)?
            .broadcast_as((b, cfg.kv_heads * hd))?
            .contiguous()?;
        let visible = self.position_ids.broadcast_le(&positions.unsqueeze(1)?)?; // [b, max_positions]
        // 0 where visible, -1e9 elsewhere (device arithmetic only: no host upload).
        let mask = visible.to_dtype(DType::F32)?.affine(1e9, -1e9)?.reshape((
            b,
            1,
            1,
            cfg.max_positions,
        ))?;
        for layer in &self.layers {
            let h = layer.input_norm.forward(&x)?;
            let q = layer.q.forward(&h)?.reshape((b, cfg.heads, 1, hd))?;
            let k = layer.k.forward(&h)?.reshape((b, cfg.kv_heads, 1, hd))?;
            let v = layer.v.forward(&h)?;
            let q = candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?;
            // Write this step's keys and values in place.
            layer
                .k_cache
                .scatter_set(&index, &k.reshape((b, cfg.kv_heads * hd))?, 0)?;
            layer.v_cache.scatter_set(&index, &v, 0)?;
            // Each sequence's whole cache row: [b, kv_heads, max_positions, hd].
            let rows = |cache: &Tensor| -> Result<Tensor> {
                cache
                    .reshape((cfg.max_sequences, cfg.max_positions, cfg.kv_heads, hd))?
                    .index_select(slots, 0)?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (keys, values) = (rows(&layer.k_cache)?, rows(&layer.v_cache)?);
            // Grouped-query attention: each kv head serves `group` query heads.
            let q = q.reshape((b, cfg.kv_heads, group, hd))?;
            let scores = (q.matmul(&keys.transpose(2, 3)?.contiguous()?)? / (hd as f64).sqrt())?
                .reshape((b, cfg.heads, 1, cfg.max_positions))?
                .broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((
                b,
                cfg.kv_heads,
                group,
                cfg.max_positions,
            ))?;
            let attn = probs.matmul(&values)?.reshape((b, cfg.hidden))?;
            x = (x + layer.o.forward(&attn)?)?;
            let h = layer.post_norm.forward(&x)?;
            let mlp = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&mlp)?)?;
        }
        self.lm_head.forward(&self.norm.forward(&x)?)?.contiguous()
    }
}
