//! A Llama-style decoder for one decode step over a KV cache, with random weights.
//!
//! Each batch row is one sequence that owns KV-cache slot `row`; its new token attends to the
//! cache positions `0..=position`. Per layer the forward launches 9 kernels: fused residual
//! add and RMSNorm, QKV projection, RoPE and KV-cache write, attention, output projection, fused
//! add and RMSNorm, gate/up projection, SiLU·mul, down projection.

use crate::ops::{self, AttentionShape};
use crate::{DType, Error, InputSpec, Result, Runtime, Tensor, cuda_graph};

/// Shapes of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `q_heads`).
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// MLP intermediate size.
    pub intermediate: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// KV-cache slots (the largest batch the cache serves).
    pub cache_slots: usize,
    /// KV-cache tokens per slot.
    pub cache_tokens: usize,
}

impl LlamaConfig {
    /// Shaped like Qwen3-0.6B: hidden 1024, 28 layers, 16 heads x 64 (8 KV heads), MLP 3072,
    /// vocabulary 151936, with a KV cache of 256 tokens for 320 sequences.
    pub fn qwen3_0_6b_shaped() -> Self {
        Self {
            vocab: 151_936,
            hidden: 1024,
            layers: 28,
            q_heads: 16,
            kv_heads: 8,
            head_dim: 64,
            intermediate: 3072,
            rms_eps: 1e-6,
            rope_theta: 1_000_000.0,
            cache_slots: 320,
            cache_tokens: 256,
        }
    }

    /// A small model for tests: 2 layers, hidden 256.
    pub fn tiny() -> Self {
        Self {
            vocab: 1000,
            hidden: 256,
            layers: 2,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 64,
            intermediate: 512,
            rms_eps: 1e-6,
            rope_theta: 10_000.0,
            cache_slots: 320,
            cache_tokens: 64,
        }
    }

    fn attention(&self) -> AttentionShape {
        AttentionShape {
            q_heads: self.q_heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
        }
    }

    fn qkv_width(&self) -> usize {
        (self.q_heads + 2 * self.kv_heads) * self.head_dim
    }

    /// The graph inputs of [`Llama::forward`]: token ids (`[n]` u32) and positions (`[n]` i32).
    pub fn input_specs(&self) -> Result<[InputSpec; 2]> {
        Ok([
            InputSpec::new(DType::U32, &[])?,
            InputSpec::new(DType::I32, &[])?,
        ])
    }
}

/// Weights of one decoder layer.
#[derive(Debug)]
pub struct LlamaLayer {
    attn_norm: Tensor,
    qkv: Tensor,
    o_proj: Tensor,
    mlp_norm: Tensor,
    gate_up: Tensor,
    down: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
}

/// A Llama-style decoder with its KV cache.
#[derive(Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<LlamaLayer>,
    final_norm: Tensor,
}

impl Llama {
    /// Random weights (uniform, scaled by fan-in) and a random KV cache, from `seed`.
    pub fn random(rt: &Runtime, cfg: LlamaConfig, seed: u64) -> Result<Self> {
        if cfg.q_heads % cfg.kv_heads != 0 || cfg.q_heads * cfg.head_dim != cfg.hidden {
            return Err(Error::invalid(
                "LlamaConfig",
                "q_heads must be a multiple of kv_heads and q_heads * head_dim equal hidden",
            ));
        }
        let mut next_seed = seed;
        let mut tensor = |dims: &[usize], scale: f32| -> Result<Tensor> {
            let t = rt.alloc(dims, DType::BF16)?;
            next_seed = next_seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            ops::fill_uniform(rt, &t, next_seed, -scale, scale)?;
            Ok(t)
        };
        let h = cfg.hidden;
        let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
        let embed = tensor(&[cfg.vocab, h], 1.0)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        let cache = [
            cfg.cache_slots,
            cfg.cache_tokens,
            cfg.kv_heads,
            cfg.head_dim,
        ];
        for _ in 0..cfg.layers {
            layers.push(LlamaLayer {
                attn_norm: tensor(&[h], 0.1)?,
                qkv: tensor(&[cfg.qkv_width(), h], w(h))?,
                o_proj: tensor(&[h, cfg.q_heads * cfg.head_dim], w(h))?,
                mlp_norm: tensor(&[h], 0.1)?,
                gate_up: tensor(&[2 * cfg.intermediate, h], w(h))?,
                down: tensor(&[h, cfg.intermediate], w(cfg.intermediate))?,
                k_cache: tensor(&cache, 1.0)?,
                v_cache: tensor(&cache, 1.0)?,
            });
        }
        let final_norm = tensor(&[h], 0.1)?;
        // Norm weights near 1, as trained models have them.
        for layer in &layers {
            ops::fill_uniform(rt, &layer.attn_norm, seed ^ 1, 0.9, 1.1)?;
            ops::fill_uniform(rt, &layer.mlp_norm, seed ^ 2, 0.9, 1.1)?;
        }
        ops::fill_uniform(rt, &final_norm, seed ^ 3, 0.9, 1.1)?;
        rt.synchronize()?;
        Ok(Self {
            cfg,
            embed,
            layers,
            final_norm,
        })
    }

    /// The model's shapes.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// One decode step: the logits (`[n, vocab]` bf16) of the next token of `n` sequences,
    /// given each one's new token (`[n]` u32) and its position (`[n]` i32). Writes the new keys
    /// and values into the KV cache.
    #[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8])]
    pub fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let attn = cfg.attention();
        let mut residual = ops::embedding(rt, &self.embed, tokens)?;
        let mut normed = ops::rms_norm(rt, &residual, &self.layers[0].attn_norm, cfg.rms_eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = ops::linear(rt, &normed, &layer.qkv)?;
            let q = ops::rope_kv_write(rt, &qkv, positions, &layer.k_cache, &layer.v_cache, &attn)?;
            let ctx =
                ops::attention_decode(rt, &q, &layer.k_cache, &layer.v_cache, positions, &attn)?;
            let attn_out = ops::linear(rt, &ctx, &layer.o_proj)?;
            let (r, n) = ops::add_rms_norm(rt, &residual, &attn_out, &layer.mlp_norm, cfg.rms_eps)?;
            let gate_up = ops::linear(rt, &n, &layer.gate_up)?;
            let act = ops::silu_mul(rt, &gate_up)?;
            let mlp_out = ops::linear(rt, &act, &layer.down)?;
            let next_norm = match self.layers.get(i + 1) {
                Some(next) => &next.attn_norm,
                None => &self.final_norm,
            };
            (residual, normed) = ops::add_rms_norm(rt, &r, &mlp_out, next_norm, cfg.rms_eps)?;
        }
        // Tied embeddings: the LM head is the embedding table.
        ops::linear(rt, &normed, &self.embed)
    }
}
