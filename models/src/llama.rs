//! A Llama-family decoder for one decode step over a KV cache, with random weights
//! ([`Llama::random`]) or given ones ([`Llama::from_weights`], which the Hugging Face loader
//! [`hf::load`](super::hf::load) uses).
//!
//! Each batch row is one sequence that owns KV-cache slot `row`; its new token attends to the
//! cache positions `0..=position`. For a batch of one or two rows each layer launches 5
//! kernels: residual add, RMSNorm and QKV projection; RoPE, KV-cache write and attention; output
//! projection; residual add, RMSNorm and gate/up projection; SiLU·mul and down projection
//! (`ops::add_rms_norm_linear`, `ops::rope_attention_decode`, `ops::silu_mul_linear`: the norm
//! and the activation are the small-batch GEMV kernel's prologue). Larger batches run the norm
//! and the activation as kernels of their own before cuBLAS's GEMMs (8 per layer). Biases (Qwen2's
//! q/k/v, Llama's `attention_bias`) are added in the GEMV kernel, or by one `add_bias` each
//! after a GEMM; Qwen3's per-head q/k RMS norm is fused into the attention kernel; an untied LM
//! head is a different weight for the same last projection.

pub use super::llama_config::LlamaConfig;
use super::weights::{HostTensor, LayerWeights, LlamaWeights};
use cudagraph::ops::{self, PrefillChunk, QkNorm};
use cudagraph::{DType, Error, Islands, Result, Runtime, Tensor, cuda_graph};

mod step;

/// Weights of one decoder layer, and its KV cache.
#[derive(Debug)]
pub struct LlamaLayer {
    attn_norm: Tensor,
    qkv: Tensor,
    qkv_bias: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o_proj: Tensor,
    o_bias: Option<Tensor>,
    mlp_norm: Tensor,
    gate_up: Tensor,
    down: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
}

impl LlamaLayer {
    /// Uploads one layer's host weights (already checked) and allocates its zeroed KV cache of
    /// shape `cache` (`[slots, tokens, kv_heads, head_dim]`) for keys and for values.
    pub(crate) fn upload(rt: &Runtime, l: &LayerWeights, cache: [usize; 4]) -> Result<Self> {
        let up = |t: &HostTensor| rt.upload(&t.data, &t.dims);
        let up_opt = |t: &Option<HostTensor>| t.as_ref().map(up).transpose();
        Ok(Self {
            attn_norm: up(&l.attn_norm)?,
            qkv: up(&l.qkv)?,
            qkv_bias: up_opt(&l.qkv_bias)?,
            q_norm: up_opt(&l.q_norm)?,
            k_norm: up_opt(&l.k_norm)?,
            o_proj: up(&l.o_proj)?,
            o_bias: up_opt(&l.o_bias)?,
            mlp_norm: up(&l.mlp_norm)?,
            gate_up: up(&l.gate_up)?,
            down: up(&l.down)?,
            k_cache: rt.zeros(&cache, DType::BF16)?,
            v_cache: rt.zeros(&cache, DType::BF16)?,
        })
    }
}

impl LlamaLayer {
    /// The layer's per-head q/k RMS norm (Qwen3), if it has one.
    fn qk_norm(&self, eps: f32) -> Option<QkNorm<'_>> {
        match (&self.q_norm, &self.k_norm) {
            (Some(q_weight), Some(k_weight)) => Some(QkNorm {
                q_weight,
                k_weight,
                eps,
            }),
            _ => None,
        }
    }

    /// The attention of a serving step's rows: every row's key and value written into this
    /// layer's cache, then each row attends (stream order).
    fn step_attention(
        &self,
        rt: &Runtime,
        (qkv, positions): (&Tensor, &Tensor),
        attn: &ops::AttentionShape,
        rows: &ops::StepRows<'_>,
        eps: f32,
    ) -> Result<Tensor> {
        let qk_norm = self.qk_norm(eps);
        let q = ops::rope_kv_write_step(
            rt,
            qkv,
            positions,
            &self.k_cache,
            &self.v_cache,
            attn,
            rows,
            qk_norm.as_ref(),
        )?;
        ops::attention_step(rt, &q, &self.k_cache, &self.v_cache, positions, attn, rows)
    }
}

/// The parts of a decoder one decode step reads: `cfg` gives the (per-rank) head counts.
pub(crate) struct DecodeParts<'a> {
    pub(crate) cfg: &'a LlamaConfig,
    pub(crate) embed: &'a Tensor,
    pub(crate) layers: &'a [LlamaLayer],
    pub(crate) final_norm: &'a Tensor,
    pub(crate) lm_head: Option<&'a Tensor>,
}

/// What the rows of a forward are. `'p` is the borrow of the model's parts, which an island's
/// attention keeps (it reads and writes the layer's KV cache at every replay).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rows<'a, 'p> {
    /// A decode step: row `b` is the next token of the sequence in KV-cache slot `b`.
    Decode,
    /// A decode step whose attention (RoPE, KV-cache write and attention) runs eagerly in an
    /// island in every layer: the rest is graphed in segments around them (the piecewise shape
    /// of vLLM's and SGLang's graphs).
    DecodeIslands(&'a Islands<'p, 'a>),
    /// A prefill chunk: the rows are consecutive tokens of one sequence (one slot); only the
    /// last row's logits are computed.
    Prefill(&'a PrefillChunk),
    /// `q` tokens per sequence (a draft to verify): rows `b*q..b*q + q` are consecutive tokens
    /// of the sequence in slot `b`; every key is written before any row attends.
    Multi(usize),
    /// A step of mixed sequences (decode tokens and prompt chunks, one token per row, each
    /// row's slot in device tables): logits of the rows `logits` names only.
    Step(StepLogits<'a>),
    /// [`Rows::Step`] with the attention (RoPE, KV-cache write, attention) of every layer in
    /// an eager island.
    StepIslands(&'a Islands<'p, 'a>, StepLogits<'a>),
}

/// The tables of a step of mixed sequences and the rows whose logits it computes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepLogits<'a> {
    /// Each row's slot and each prompt tile ([`ops::StepRows`]).
    pub(crate) rows: ops::StepRows<'a>,
    /// u32 `[n]`: the rows whose logits are computed (the first `count` entries).
    pub(crate) logit_rows: &'a Tensor,
    /// How many logit rows: at most the rows and the cache's slots (a row per sequence).
    pub(crate) count: usize,
}

/// One decode step over `parts`. `reduce` is applied to the output projection's and the down
/// projection's results before each residual add: the identity on one GPU, an all-reduce across
/// the ranks of a tensor-parallel model (whose projections produce partial sums).
pub(crate) fn decode_step(
    rt: &Runtime,
    parts: &DecodeParts<'_>,
    tokens: &Tensor,
    positions: &Tensor,
    reduce: &dyn Fn(&Runtime, Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    forward_rows(rt, parts, (tokens, positions), Rows::Decode, reduce)
}

/// The forward of `rows` over `parts` (a decode step, or a prefill chunk); `reduce` as in
/// [`decode_step`].
pub(crate) fn forward_rows<'p>(
    rt: &Runtime,
    parts: &DecodeParts<'p>,
    (tokens, positions): (&Tensor, &Tensor),
    rows: Rows<'_, 'p>,
    reduce: &dyn Fn(&Runtime, Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let cfg = parts.cfg;
    let attn = cfg.attention();
    if parts.layers.is_empty() {
        return Err(Error::invalid(
            "decode_step",
            "a decoder needs at least one layer",
        ));
    }
    let x = ops::embedding(rt, parts.embed, tokens)?;
    // The residual stream and the delta not yet added to it: each add + RMS norm is fused into
    // the projection that reads the norm (one launch for one or two rows, see
    // `ops::add_rms_norm_linear`).
    let mut residual = x;
    let mut pending: Option<Tensor> = None;
    let norm_linear = |residual: &Tensor,
                       pending: Option<&Tensor>,
                       norm: &Tensor,
                       w: &Tensor,
                       bias: Option<&Tensor>|
     -> Result<(Option<Tensor>, Tensor)> {
        match pending {
            None => Ok((
                None,
                ops::rms_norm_linear(rt, residual, norm, cfg.rms_eps, w, bias)?,
            )),
            Some(delta) => {
                let (sum, y) =
                    ops::add_rms_norm_linear(rt, residual, delta, norm, cfg.rms_eps, w, bias)?;
                Ok((Some(sum), y))
            }
        }
    };
    for layer in parts.layers {
        let (sum, qkv) = norm_linear(
            &residual,
            pending.as_ref(),
            &layer.attn_norm,
            &layer.qkv,
            layer.qkv_bias.as_ref(),
        )?;
        if let Some(sum) = sum {
            residual = sum;
        }
        let qk_norm = layer.qk_norm(cfg.rms_eps);
        let ctx = match rows {
            Rows::Decode => ops::rope_attention_decode(
                rt,
                &qkv,
                positions,
                &layer.k_cache,
                &layer.v_cache,
                &attn,
                qk_norm.as_ref(),
            )?,
            Rows::Multi(q) => {
                let rotated = ops::rope_kv_write_multi(
                    rt,
                    &qkv,
                    positions,
                    &layer.k_cache,
                    &layer.v_cache,
                    &attn,
                    q,
                    qk_norm.as_ref(),
                )?;
                ops::attention_multi(
                    rt,
                    &rotated,
                    &layer.k_cache,
                    &layer.v_cache,
                    positions,
                    &attn,
                    q,
                )?
            }
            // The same kernel, run eagerly at every replay on copies of `qkv` and `positions`;
            // it writes the layer's own cache (borrowed from the model, not copied).
            Rows::DecodeIslands(islands) => {
                let eps = cfg.rms_eps;
                islands.eager(rt, [&qkv, positions], move |rt, [qkv, positions], ()| {
                    let qk_norm = layer.qk_norm(eps);
                    ops::rope_attention_decode(
                        rt,
                        qkv,
                        positions,
                        &layer.k_cache,
                        &layer.v_cache,
                        &attn,
                        qk_norm.as_ref(),
                    )
                })?
            }
            // Every row's key is written before any row attends (stream order).
            Rows::Step(step) => {
                layer.step_attention(rt, (&qkv, positions), &attn, &step.rows, cfg.rms_eps)?
            }
            // The same kernels in an eager island, on copies of the step's inputs and tables.
            Rows::StepIslands(islands, step) => {
                let eps = cfg.rms_eps;
                let inputs = [&qkv, positions, step.rows.slots, step.rows.tiles];
                islands.eager(rt, inputs, move |rt, [qkv, positions, slots, tiles], ()| {
                    let rows = ops::StepRows { slots, tiles };
                    layer.step_attention(rt, (qkv, positions), &attn, &rows, eps)
                })?
            }
            // Every key of the chunk is written before any row attends (stream order).
            Rows::Prefill(chunk) => {
                let q = ops::rope_kv_write_prefill(
                    rt,
                    &qkv,
                    positions,
                    &layer.k_cache,
                    &layer.v_cache,
                    &attn,
                    chunk,
                    qk_norm.as_ref(),
                )?;
                ops::attention_prefill(
                    rt,
                    &q,
                    &layer.k_cache,
                    &layer.v_cache,
                    positions,
                    &attn,
                    chunk,
                )?
            }
        };
        let attn_out = match &layer.o_bias {
            Some(bias) => ops::linear_bias(rt, &ctx, &layer.o_proj, bias)?,
            None => ops::linear(rt, &ctx, &layer.o_proj)?,
        };
        let attn_out = reduce(rt, attn_out)?;
        let (r, gate_up) = ops::add_rms_norm_linear(
            rt,
            &residual,
            &attn_out,
            &layer.mlp_norm,
            cfg.rms_eps,
            &layer.gate_up,
            None,
        )?;
        residual = r;
        pending = Some(reduce(
            rt,
            ops::silu_mul_linear(rt, &gate_up, &layer.down)?,
        )?);
    }
    // Tied embeddings: the LM head is the embedding table.
    let lm_head = parts.lm_head.unwrap_or(parts.embed);
    // Only some rows' logits (a prefill's last row, a step's logit rows): the index of the rows
    // whose hidden states are gathered, as an "embedding".
    let (last_row, step_rows);
    let picked: Option<&Tensor> = match rows {
        Rows::Prefill(_) => {
            let last = u32::try_from(residual.rows() - 1)
                .map_err(|_| Error::invalid("prefill", "more than u32::MAX rows"))?;
            last_row = rt.upload(&[last], &[1])?;
            Some(&last_row)
        }
        Rows::Step(step) | Rows::StepIslands(_, step) => {
            step_rows = step.logit_rows.narrow_rows(0, step.count)?;
            Some(&*step_rows)
        }
        _ => None,
    };
    if let Some(picked) = picked {
        let sum = match &pending {
            Some(delta) => ops::add(rt, &residual, delta)?,
            None => residual,
        };
        let hidden = ops::embedding(rt, &sum, picked)?;
        return ops::rms_norm_linear(rt, &hidden, parts.final_norm, cfg.rms_eps, lm_head, None);
    }
    let (_, logits) = norm_linear(&residual, pending.as_ref(), parts.final_norm, lm_head, None)?;
    Ok(logits)
}

/// A Llama-family decoder with its KV cache.
#[derive(Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<LlamaLayer>,
    final_norm: Tensor,
    /// `None`: tied to `embed`.
    lm_head: Option<Tensor>,
}

impl Llama {
    /// Random weights (uniform, scaled by fan-in) and a random KV cache, from `seed`; the
    /// optional weights ([`LlamaConfig::qkv_bias`], ...) as the configuration asks.
    pub fn random(rt: &Runtime, cfg: LlamaConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
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
        // Grown as layers are allocated (a huge `layers` fails on the device, not here).
        let mut layers = Vec::new();
        let cache = cfg.kv_cache_shape();
        for _ in 0..cfg.layers {
            layers.push(LlamaLayer {
                attn_norm: tensor(&[h], 0.1)?,
                qkv: tensor(&[cfg.qkv_width(), h], w(h))?,
                o_proj: tensor(&[h, cfg.q_width()], w(cfg.q_width()))?,
                mlp_norm: tensor(&[h], 0.1)?,
                gate_up: tensor(&[2 * cfg.intermediate, h], w(h))?,
                down: tensor(&[h, cfg.intermediate], w(cfg.intermediate))?,
                k_cache: tensor(&cache, 1.0)?,
                v_cache: tensor(&cache, 1.0)?,
                qkv_bias: None,
                q_norm: None,
                k_norm: None,
                o_bias: None,
            });
            // The optional weights last, so a configuration without them draws the same
            // weights as before they existed.
            let layer = layers
                .last_mut()
                .ok_or_else(|| Error::invalid("Llama", "no layer"))?;
            if cfg.qkv_bias {
                layer.qkv_bias = Some(tensor(&[cfg.qkv_width()], 0.5)?);
            }
            if cfg.qk_norm {
                layer.q_norm = Some(tensor(&[cfg.head_dim], 0.1)?);
                layer.k_norm = Some(tensor(&[cfg.head_dim], 0.1)?);
            }
            if cfg.o_bias {
                layer.o_bias = Some(tensor(&[h], 0.1)?);
            }
        }
        let final_norm = tensor(&[h], 0.1)?;
        let lm_head = match cfg.tie_embeddings {
            true => None,
            false => Some(tensor(&[cfg.vocab, h], w(h))?),
        };
        // Norm weights near 1, as trained models have them.
        for layer in &layers {
            ops::fill_uniform(rt, &layer.attn_norm, seed ^ 1, 0.9, 1.1)?;
            ops::fill_uniform(rt, &layer.mlp_norm, seed ^ 2, 0.9, 1.1)?;
            for norm in [&layer.q_norm, &layer.k_norm].into_iter().flatten() {
                ops::fill_uniform(rt, norm, seed ^ 4, 0.9, 1.1)?;
            }
        }
        ops::fill_uniform(rt, &final_norm, seed ^ 3, 0.9, 1.1)?;
        rt.synchronize()?;
        Ok(Self {
            cfg,
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// Uploads `weights` (checked against `cfg` first: nothing is uploaded when a tensor is
    /// missing, extra or misshapen) and allocates a zeroed KV cache of
    /// `[cache_slots, cache_tokens, kv_heads, head_dim]` per layer for keys and for values.
    pub fn from_weights(rt: &Runtime, cfg: LlamaConfig, weights: &LlamaWeights) -> Result<Self> {
        cfg.validate()?;
        weights.check(&cfg)?;
        let up = |t: &HostTensor| rt.upload(&t.data, &t.dims);
        let up_opt = |t: &Option<HostTensor>| t.as_ref().map(up).transpose();
        let cache = cfg.kv_cache_shape();
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            layers.push(LlamaLayer::upload(rt, l, cache)?);
        }
        let model = Self {
            embed: up(&weights.embed)?,
            final_norm: up(&weights.final_norm)?,
            lm_head: up_opt(&weights.lm_head)?,
            layers,
            cfg,
        };
        rt.synchronize()?;
        Ok(model)
    }

    /// The model's shapes.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// The same weights with a new, zeroed KV cache of `slots` slots of `tokens` positions (a
    /// server sizes it from the memory its graphs leave). The old caches are freed first, so
    /// the two need not fit together; an error (a size the configuration refuses, or no
    /// memory) drops the model.
    pub fn with_cache(mut self, rt: &Runtime, slots: usize, tokens: usize) -> Result<Self> {
        let cfg = LlamaConfig {
            cache_slots: slots,
            cache_tokens: tokens,
            ..self.cfg.clone()
        };
        cfg.validate()?;
        let shape = cfg.kv_cache_shape();
        for layer in &mut self.layers {
            // Free before allocating: the old and the new cache need not fit together.
            layer.k_cache = rt.zeros(&[1, 1, 1, 1], DType::BF16)?;
            layer.v_cache = rt.zeros(&[1, 1, 1, 1], DType::BF16)?;
        }
        for layer in &mut self.layers {
            layer.k_cache = rt.zeros(&shape, DType::BF16)?;
            layer.v_cache = rt.zeros(&shape, DType::BF16)?;
        }
        self.cfg = cfg;
        Ok(self)
    }

    /// Bytes of the KV cache of one slot of `tokens` positions, over every layer (keys and
    /// values); `None` on overflow.
    pub fn kv_bytes_per_slot(&self, tokens: usize) -> Option<usize> {
        tokens
            .checked_mul(self.cfg.kv_heads)?
            .checked_mul(self.cfg.head_dim)?
            .checked_mul(2 * 2)?
            .checked_mul(self.cfg.layers)
    }

    /// Each layer's key and value caches (`[cache_slots, cache_tokens, kv_heads, head_dim]`
    /// bf16), for inspection.
    pub fn kv_caches(&self) -> impl Iterator<Item = (&Tensor, &Tensor)> {
        self.layers.iter().map(|l| (&l.k_cache, &l.v_cache))
    }

    /// Prefills `tokens` (u32 `[n]`, `n >= 1`), the tokens at positions `start..start + n` of
    /// the sequence in KV-cache slot `slot`, in one eager forward: every row's key and value is
    /// written into the cache and each row attends causally (over positions `0..=its own` of
    /// the slot, so a prompt may be prefilled in chunks). Returns the logits of the last row
    /// (the next token after the chunk), bf16 `[1, vocab]`.
    ///
    /// The same kernels as [`forward`](Self::forward), except that the attention of a decode
    /// step is split in two launches (write every key, then attend). A dynamic RoPE scaling
    /// uses the sequence's length after the chunk (`start + n`) for every row, as transformers
    /// does for one forward over a prompt.
    ///
    /// Decoding goes on with [`forward`](Self::forward) (or its graphs), whose row `b` uses slot
    /// `b`: a sequence prefilled into slot `s` is decoded as row `s` of a batch of at least
    /// `s + 1` rows (the others real sequences, or padding at position -1).
    ///
    /// ```no_run
    /// # use cudagraph_models::llama::{Llama, LlamaConfig};
    /// # fn main() -> cudagraph::Result<()> {
    /// let rt = cudagraph::Runtime::new(0)?;
    /// let model = Llama::random(&rt, LlamaConfig::tiny(), 0)?;
    /// let prompt = rt.upload(&[1u32, 17, 42, 99], &[4])?;
    /// let logits = model.prefill(&rt, &prompt, 0, 0)?; // slot 0, positions 0..4
    /// assert_eq!(logits.shape(), [1, model.config().vocab]);
    /// # Ok(()) }
    /// ```
    pub fn prefill(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        start: usize,
        slot: usize,
    ) -> Result<Tensor> {
        const OP: &str = "Llama::prefill";
        if tokens.dtype() != DType::U32 || tokens.shape().len() != 1 || tokens.rows() == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "`tokens` must be u32 [n] with n >= 1, got {:?} {:?}",
                    tokens.dtype(),
                    tokens.shape()
                ),
            ));
        }
        let n = tokens.rows();
        if slot >= self.cfg.cache_slots {
            return Err(Error::invalid(
                OP,
                format!(
                    "slot {slot} is outside the KV cache's {} slots",
                    self.cfg.cache_slots
                ),
            ));
        }
        let seq_len = start
            .checked_add(n)
            .filter(|&end| end <= self.cfg.cache_tokens)
            .ok_or_else(|| {
                Error::invalid(
                    OP,
                    format!(
                        "positions {start}..{start}+{n} do not fit the KV cache's {} positions",
                        self.cfg.cache_tokens
                    ),
                )
            })?;
        let positions: Vec<i32> = (start..seq_len)
            .map(|p| i32::try_from(p).map_err(|_| Error::invalid(OP, "a position overflows i32")))
            .collect::<Result<_>>()?;
        let positions = rt.upload(&positions, &[n])?;
        let chunk = PrefillChunk { slot, seq_len };
        forward_rows(
            rt,
            &self.parts(),
            (tokens, &positions),
            Rows::Prefill(&chunk),
            &|_, t| Ok(t),
        )
    }

    /// The parts one forward reads.
    fn parts(&self) -> DecodeParts<'_> {
        DecodeParts {
            cfg: &self.cfg,
            embed: &self.embed,
            layers: &self.layers,
            final_norm: &self.final_norm,
            lm_head: self.lm_head.as_ref(),
        }
    }

    /// One decode step: the logits (`[n, vocab]` bf16) of the next token of `n` sequences,
    /// given each one's new token (`[n]` u32) and its position (`[n]` i32). Writes the new keys
    /// and values into the KV cache.
    ///
    /// Padded rows and warm-ups run with position `-1` (`pad = [positions = -1]`): the
    /// KV-write and attention kernels skip them, so only the `n` real rows write the cache.
    #[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8], pad = [positions = -1])]
    pub fn forward(&self, rt: &Runtime, tokens: &Tensor, positions: &Tensor) -> Result<Tensor> {
        decode_step(rt, &self.parts(), tokens, positions, &|_, t| Ok(t))
    }

    /// A decode step of `q` tokens per sequence (speculative decoding's verification of a
    /// `q`-token draft): `tokens` `[b, q]` u32 and `positions` `[b, q]` i32 (consecutive
    /// positions of sequence `b`, in slot `b`); returns the logits `[b, q, vocab]`. Graphed by
    /// the batch and by `q` (1 to 4, padded up with position -1, so padded tokens write no
    /// cache); the tokens of a sequence attend to each other causally.
    #[cuda_graph(
        sizes = [1, 2, 4, 8..=64 step 8],
        buckets = [tokens[1] + positions[1] = [1, 2, 3, 4]],
        pad = [positions = -1]
    )]
    pub fn forward_multi(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
    ) -> Result<Tensor> {
        let (b, q) = (tokens.rows(), tokens.dim(1)?);
        if positions.shape() != tokens.shape() {
            return Err(Error::invalid(
                "forward_multi",
                format!(
                    "tokens {:?} and positions {:?} must have one shape, [b, q]",
                    tokens.shape(),
                    positions.shape()
                ),
            ));
        }
        let flat_tokens = tokens.reshape(&[b * q])?;
        let flat_positions = positions.reshape(&[b * q])?;
        let logits = forward_rows(
            rt,
            &self.parts(),
            (&flat_tokens, &flat_positions),
            Rows::Multi(q),
            &|_, t| Ok(t),
        )?;
        let vocab = logits.dim(1)?;
        logits.into_shape(&[b, q, vocab])
    }

    /// [`forward`](Self::forward) with the attention of every layer (RoPE, KV-cache write and
    /// attention) in an eager island: graphed, each size is the layers' other ops in
    /// `layers + 1` segments, and the attention kernel runs between them at every replay. The
    /// same kernels as `forward`, so the logits are the same bits; what differs is the cost,
    /// which `decode_bench --islands-bench` measures.
    #[cuda_graph(sizes = [1, 2, 4, 8..=256 step 8], pad = [positions = -1])]
    pub fn forward_islands(
        &self,
        rt: &Runtime,
        tokens: &Tensor,
        positions: &Tensor,
        islands: &Islands,
    ) -> Result<Tensor> {
        forward_rows(
            rt,
            &self.parts(),
            (tokens, positions),
            Rows::DecodeIslands(islands),
            &|_, t| Ok(t),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cfg` is rejected by `validate` with an `InvalidArgument` naming `` `field` ``.
    #[track_caller]
    fn rejected(cfg: &LlamaConfig, field: &str) -> String {
        match cfg.validate() {
            Err(e @ Error::InvalidArgument { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&format!("`{field}`")),
                    "the error should name `{field}`: {message}"
                );
                message
            }
            other => panic!("expected an InvalidArgument naming `{field}`, got {other:?}"),
        }
    }

    #[test]
    fn presets_validate() {
        LlamaConfig::tiny().validate().unwrap();
        LlamaConfig::qwen3_0_6b_shaped().validate().unwrap();
    }

    #[test]
    fn huge_sizes_are_rejected_naming_the_field() {
        let tiny = LlamaConfig::tiny();
        let cases = [
            (
                LlamaConfig {
                    vocab: usize::MAX / 2,
                    ..tiny.clone()
                },
                "vocab",
            ),
            (
                LlamaConfig {
                    hidden: 1 << 40,
                    ..tiny.clone()
                },
                "hidden",
            ),
            // 2 * intermediate wraps to 0 in a release build.
            (
                LlamaConfig {
                    intermediate: usize::MAX / 2 + 1,
                    ..tiny.clone()
                },
                "intermediate",
            ),
            // Fits an int, but the gate/up projection's 2 * intermediate rows do not.
            (
                LlamaConfig {
                    intermediate: 1 << 30,
                    ..tiny.clone()
                },
                "intermediate",
            ),
            (
                LlamaConfig {
                    cache_slots: usize::MAX / 4,
                    ..tiny.clone()
                },
                "cache_slots",
            ),
            (
                LlamaConfig {
                    layers: usize::MAX,
                    ..tiny.clone()
                },
                "layers",
            ),
            (
                LlamaConfig {
                    q_heads: usize::MAX / 64,
                    kv_heads: usize::MAX / 64,
                    ..tiny.clone()
                },
                "q_heads",
            ),
            // Each head count fits an int, the qkv width (q_heads + 2 * kv_heads) * head_dim
            // does not.
            (
                LlamaConfig {
                    q_heads: 1 << 28,
                    kv_heads: 1 << 28,
                    ..tiny.clone()
                },
                "q_heads",
            ),
            (
                LlamaConfig {
                    q_heads: 1 << 10,
                    kv_heads: 1 << 29,
                    ..tiny.clone()
                },
                "kv_heads",
            ),
        ];
        for (cfg, field) in &cases {
            rejected(cfg, field);
        }
    }

    #[test]
    fn a_kv_cache_too_large_to_address_is_rejected() {
        // Every dimension fits the kernels' int, the product of the four does not fit 64 bits.
        let cfg = LlamaConfig {
            cache_slots: i32::MAX as usize,
            cache_tokens: ops::MAX_ATTENTION_CONTEXT,
            q_heads: 1 << 20,
            kv_heads: 1 << 20,
            head_dim: 256,
            hidden: 1,
            ..LlamaConfig::tiny()
        };
        let message = rejected(&cfg, "cache_slots");
        assert!(message.contains("KV cache"), "{message}");
        assert!(message.contains("overflows usize"), "{message}");
        // Each layer's pieces fit; all of them together do not.
        let cfg = LlamaConfig {
            layers: i32::MAX as usize,
            cache_slots: 1 << 20,
            cache_tokens: 1 << 13,
            q_heads: 1 << 10,
            kv_heads: 1 << 10,
            head_dim: 256,
            ..LlamaConfig::tiny()
        };
        let message = rejected(&cfg, "layers");
        assert!(message.contains("model's bytes"), "{message}");
    }

    #[test]
    fn sizes_that_fit_are_accepted() {
        // Large but addressable: every derived size fits.
        let cfg = LlamaConfig {
            vocab: 1 << 20,
            hidden: 1 << 16,
            intermediate: (1 << 30) - 1,
            cache_slots: 1 << 16,
            ..LlamaConfig::tiny()
        };
        cfg.validate().unwrap();
        assert_eq!(cfg.qkv_width(), (4 + 2 * 2) * 64);
        assert_eq!(cfg.q_width(), 4 * 64);
    }
}
