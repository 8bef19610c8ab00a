//! [`LlamaConfig`]: the shapes of a Llama-family decoder, checked so that every size the
//! kernels and the allocator see fits (a failed check names the fields and the formula).

use cudagraph::ops::{self, AttentionShape, RopeScaling};
use cudagraph::{DType, Error, InputSpec, Result};

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
    /// RoPE scaling for long contexts (`rope_type` of a Hugging Face config).
    pub rope_scaling: RopeScaling,
    /// KV-cache slots (the largest batch the cache serves).
    pub cache_slots: usize,
    /// KV-cache tokens per slot.
    pub cache_tokens: usize,
    /// The q, k and v projections have biases (Qwen2; Llama and Qwen3 with `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection has a bias (Llama and Qwen3 with `attention_bias`).
    pub o_bias: bool,
    /// Per-head RMS norm of q and k before RoPE (Qwen3's `q_norm` / `k_norm`), with
    /// [`rms_eps`](Self::rms_eps).
    pub qk_norm: bool,
    /// The LM head is the embedding table (`tie_word_embeddings`); otherwise a separate
    /// `[vocab, hidden]` weight.
    pub tie_embeddings: bool,
}

impl LlamaConfig {
    /// Shaped like Qwen3-0.6B: hidden 1024, 28 layers, 16 heads x 64 (8 KV heads), MLP 3072,
    /// vocabulary 151936, with a KV cache of 256 tokens for 320 sequences. Tied embeddings and
    /// no q/k norm (the benchmark's model: 9 kernels per layer).
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
            rope_scaling: RopeScaling::None,
            cache_slots: 320,
            cache_tokens: 256,
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            tie_embeddings: true,
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
            rope_scaling: RopeScaling::None,
            cache_slots: 320,
            cache_tokens: 64,
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            tie_embeddings: true,
        }
    }

    /// The attention geometry the kernels take.
    pub fn attention(&self) -> AttentionShape {
        AttentionShape {
            q_heads: self.q_heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling,
        }
    }

    /// Width of the fused q/k/v projection: `(q_heads + 2 kv_heads) head_dim`.
    ///
    /// Unchecked arithmetic: call it on a configuration that passed [`validate`](Self::validate),
    /// which rejects every configuration whose derived sizes overflow (this one fits an `i32`).
    pub fn qkv_width(&self) -> usize {
        (self.q_heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Width of the attention output (the output projection's input): `q_heads head_dim`, which
    /// need not equal `hidden` (Qwen3).
    ///
    /// Unchecked arithmetic: safe after [`validate`](Self::validate) (it then fits an `i32`).
    pub fn q_width(&self) -> usize {
        self.q_heads * self.head_dim
    }

    /// Checks what the kernels need: every size > 0, `q_heads` a multiple of `kv_heads`,
    /// `head_dim` a multiple of 8 and at most 256, a finite positive RoPE base, a finite
    /// `rms_eps >= 0`, and a KV cache the attention kernel can hold.
    ///
    /// It also rejects any configuration whose sizes do not fit, with an error naming the field
    /// at fault: each size must fit the kernels' 32-bit `int` (so must the row widths
    /// [`qkv_width`](Self::qkv_width), [`q_width`](Self::q_width) and `2 * intermediate`), and
    /// every derived element count and byte size must fit a `usize`: each weight's, the
    /// KV cache's ([`kv_cache_shape`](Self::kv_cache_shape)) and the whole model's. After it
    /// succeeds the unchecked helpers ([`qkv_width`](Self::qkv_width),
    /// [`q_width`](Self::q_width), [`kv_cache_shape`](Self::kv_cache_shape)) and products of
    /// these sizes such as `vocab * hidden` cannot overflow.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab", self.vocab),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("intermediate", self.intermediate),
            ("cache_slots", self.cache_slots),
            ("cache_tokens", self.cache_tokens),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::invalid(
                "LlamaConfig",
                format!("`{name}` must be > 0"),
            ));
        }
        self.check_sizes().map_err(|e| {
            Error::invalid(
                "LlamaConfig",
                format!("`{}` ({}): {}", e.field, e.value, e.message),
            )
        })?;
        self.attention().validate("LlamaConfig")?;
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return Err(Error::invalid(
                "LlamaConfig",
                format!("`rms_eps` must be finite and >= 0, got {}", self.rms_eps),
            ));
        }
        if self.cache_tokens > ops::MAX_ATTENTION_CONTEXT {
            return Err(Error::invalid(
                "LlamaConfig",
                format!(
                    "`cache_tokens` ({}) exceeds the attention kernel's {}",
                    self.cache_tokens,
                    ops::MAX_ATTENTION_CONTEXT
                ),
            ));
        }
        Ok(())
    }

    /// The graph inputs of [`Llama::forward`](crate::llama::Llama::forward): token ids (`[n]` u32) and positions (`[n]` i32).
    pub fn input_specs(&self) -> Result<[InputSpec; 2]> {
        Ok([
            InputSpec::new(DType::U32, &[])?,
            InputSpec::new(DType::I32, &[])?,
        ])
    }
}

/// A size of a [`LlamaConfig`] that does not fit: the field to blame (the largest of the
/// fields the size is made of), its value, and what overflows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SizeError {
    /// The [`LlamaConfig`] field (`vocab`, `hidden`, ...).
    pub(crate) field: &'static str,
    /// Its value.
    pub(crate) value: usize,
    /// What does not fit, with its formula and values.
    pub(crate) message: String,
}

/// The largest size the kernels take as a 32-bit `int`.
const KERNEL_INT_MAX: usize = i32::MAX as usize;

/// A size derived from [`LlamaConfig`] fields with checked arithmetic: `None` once it
/// overflowed, with the fields it is made of and its formula (in names and in values).
#[derive(Debug, Clone)]
struct Size {
    value: Option<usize>,
    fields: Vec<(&'static str, usize)>,
    formula: String,
    values: String,
}

impl Size {
    fn field(name: &'static str, value: usize) -> Self {
        Self {
            value: Some(value),
            fields: vec![(name, value)],
            formula: name.to_string(),
            values: value.to_string(),
        }
    }

    fn constant(value: usize) -> Self {
        Self {
            value: Some(value),
            fields: Vec::new(),
            formula: value.to_string(),
            values: value.to_string(),
        }
    }

    fn combine(&self, other: &Self, value: Option<usize>, op: &str, parens: bool) -> Self {
        let wrap = |a: &str, b: &str| match parens {
            true => format!("({a} {op} {b})"),
            false => format!("{a} {op} {b}"),
        };
        Self {
            value,
            fields: [&self.fields[..], &other.fields[..]].concat(),
            formula: wrap(&self.formula, &other.formula),
            values: wrap(&self.values, &other.values),
        }
    }

    fn times(&self, other: &Self) -> Self {
        let value = self
            .value
            .zip(other.value)
            .and_then(|(a, b)| a.checked_mul(b));
        self.combine(other, value, "*", false)
    }

    fn plus(&self, other: &Self) -> Self {
        let value = self
            .value
            .zip(other.value)
            .and_then(|(a, b)| a.checked_add(b));
        self.combine(other, value, "+", true)
    }

    /// The value when it fits `limit`; else an error for `what`, blaming `blame` or (when
    /// `None`) the largest field the size is made of (the first of equals).
    fn check(
        &self,
        what: &str,
        limit: usize,
        blame: Option<(&'static str, usize)>,
    ) -> std::result::Result<usize, SizeError> {
        if let Some(v) = self.value.filter(|&v| v <= limit) {
            return Ok(v);
        }
        let largest = self
            .fields
            .iter()
            .copied()
            .reduce(|best, f| if f.1 > best.1 { f } else { best });
        let (field, value) = blame.or(largest).unwrap_or(("(none)", 0));
        let limit = match limit {
            KERNEL_INT_MAX => format!("exceeds the kernels' 32-bit int ({KERNEL_INT_MAX})"),
            _ => "overflows usize".to_string(),
        };
        Err(SizeError {
            field,
            value,
            message: format!("{what} {} = {} {limit}", self.formula, self.values),
        })
    }
}

impl LlamaConfig {
    /// Checks that every size fits (see [`validate`](Self::validate)); the error names the
    /// field to blame. Needs no other invariant: it runs on any configuration.
    pub(crate) fn check_sizes(&self) -> std::result::Result<(), SizeError> {
        let fields = [
            ("vocab", self.vocab),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("q_heads", self.q_heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate", self.intermediate),
            ("cache_slots", self.cache_slots),
            ("cache_tokens", self.cache_tokens),
        ];
        // Every size is passed to some kernel as an int (layers: bounded all the same).
        if let Some(&(field, value)) = fields.iter().find(|f| f.1 > KERNEL_INT_MAX) {
            return Err(SizeError {
                field,
                value,
                message: format!("exceeds the kernels' 32-bit int ({KERNEL_INT_MAX})"),
            });
        }
        let [
            vocab,
            hidden,
            _layers,
            q_heads,
            kv_heads,
            head_dim,
            intermediate,
            cache_slots,
            cache_tokens,
        ] = fields.map(|(name, value)| Size::field(name, value));
        let (two, int, max) = (Size::constant(2), KERNEL_INT_MAX, usize::MAX);

        // Row widths the kernels take as ints.
        let qkv = q_heads.plus(&two.times(&kv_heads)).times(&head_dim);
        qkv.check("the qkv projection's width", int, None)?;
        let q = q_heads.times(&head_dim);
        q.check("the attention output's width", int, None)?;
        let gate_up = two.times(&intermediate);
        gate_up.check("the gate/up projection's rows", int, None)?;

        // Each tensor's element count and bf16 bytes, and how many of it a layer holds.
        let embed = vocab.times(&hidden);
        let kv_cache = cache_slots
            .times(&cache_tokens)
            .times(&kv_heads)
            .times(&head_dim);
        let per_layer = [
            ("attn_norm and mlp_norm", hidden.clone(), 2),
            ("qkv weight", qkv.times(&hidden), 1),
            ("qkv bias", qkv.clone(), usize::from(self.qkv_bias)),
            ("q/k norm", head_dim.clone(), 2 * usize::from(self.qk_norm)),
            ("o_proj weight", hidden.times(&q), 1),
            ("o_proj bias", hidden.clone(), usize::from(self.o_bias)),
            ("gate_up weight", gate_up.times(&hidden), 1),
            ("down weight", hidden.times(&intermediate), 1),
            ("KV cache", kv_cache, 2),
        ];
        let mut layer_bytes = Some(0usize);
        for (name, elements, copies) in &per_layer {
            elements.check(&format!("the {name}'s element count"), max, None)?;
            let bytes = elements.times(&two);
            let bytes = bytes.check(&format!("the {name}'s bytes"), max, None)?;
            layer_bytes =
                layer_bytes.and_then(|total| total.checked_add(bytes.checked_mul(*copies)?));
        }
        embed.check("the embedding's element count", max, None)?;
        let embed_bytes = embed
            .times(&two)
            .check("the embedding's bytes", max, None)?;
        // Every layer, the embedding (twice when the LM head is untied) and the final norm.
        let embed_copies = if self.tie_embeddings { 1 } else { 2 };
        let total = layer_bytes
            .and_then(|b| b.checked_mul(self.layers))
            .and_then(|b| b.checked_add(embed_bytes.checked_mul(embed_copies)?))
            .and_then(|b| b.checked_add(self.hidden.checked_mul(2)?));
        let total = Size {
            value: total,
            fields: vec![("layers", self.layers)],
            formula: "layers * (the bytes of one layer) + the embedding and LM head".into(),
            values: match layer_bytes {
                Some(b) => format!("{} * {b} + ...", self.layers),
                None => format!("{} * (more than usize) + ...", self.layers),
            },
        };
        total.check(
            "the model's bytes (weights and KV caches)",
            max,
            Some(("layers", self.layers)),
        )?;
        Ok(())
    }

    /// Bytes of the weights one decode step reads at batch 1 (bf16): every layer's projections,
    /// biases and norms, the LM head (the embedding table when tied) and the final norm; the
    /// embedding row and the KV cache read are left out (a few MB at most). `None` on overflow
    /// (which [`validate`](Self::validate) rules out). The memory floor of a decode step is
    /// these bytes at the device's bandwidth.
    pub fn decode_weight_bytes(&self) -> Option<usize> {
        let q = self.q_heads.checked_mul(self.head_dim)?;
        let qkv = self.qkv_width();
        let h = self.hidden;
        let per_layer = [
            qkv.checked_mul(h)?,
            if self.qkv_bias { qkv } else { 0 },
            if self.qk_norm { 2 * self.head_dim } else { 0 },
            q.checked_mul(h)?,
            if self.o_bias { h } else { 0 },
            self.intermediate.checked_mul(2)?.checked_mul(h)?,
            self.intermediate.checked_mul(h)?,
            h.checked_mul(2)?,
        ]
        .into_iter()
        .try_fold(0usize, |a, b| a.checked_add(b))?;
        let elements = per_layer
            .checked_mul(self.layers)?
            .checked_add(self.vocab.checked_mul(h)?)?
            .checked_add(h)?;
        elements.checked_mul(2)
    }

    /// Shape of one layer's key (or value) cache: `[cache_slots, cache_tokens, kv_heads,
    /// head_dim]` (its element count and bytes fit a `usize` after
    /// [`validate`](Self::validate)).
    pub fn kv_cache_shape(&self) -> [usize; 4] {
        [
            self.cache_slots,
            self.cache_tokens,
            self.kv_heads,
            self.head_dim,
        ]
    }
}

/// The shapes in a few words: `28 layers, hidden 1024, 16x64 heads, 8 KV heads, MLP 3072,
/// vocab 151936`.
impl std::fmt::Display for LlamaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers, hidden {}, {}x{} heads, {} KV heads, MLP {}, vocab {}",
            self.layers,
            self.hidden,
            self.q_heads,
            self.head_dim,
            self.kv_heads,
            self.intermediate,
            self.vocab
        )
    }
}
