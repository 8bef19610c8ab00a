//! `config.json`: the model family and shapes, validated field by field.
//!
//! Both spellings transformers has written are read: RoPE as `rope_parameters`
//! (`{"rope_type": "default", "rope_theta": ...}`, transformers 5) or as top-level `rope_theta`
//! with `rope_scaling` (transformers 4), with the scalings of [`super::rope`], and the dtype as
//! `dtype` or `torch_dtype`.

use std::path::Path;

use serde_json::Value;

use super::error::LoadError;
use super::fields::{Fields, json_object, token_id, token_ids};
use super::options::LoadOptions;
use super::rope::parse_rope;
use crate::llama::LlamaConfig;
use cudagraph::ops::MAX_HEAD_DIM;

/// A model family the loader reads: the `architectures` entry of `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `LlamaForCausalLM`: optional `attention_bias` (q, k, v and o), tied or untied embeddings.
    Llama,
    /// `Qwen2ForCausalLM`: q, k and v biases.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head q/k RMS norm, `head_dim` independent of the hidden size,
    /// optional `attention_bias`.
    Qwen3,
    /// `MistralForCausalLM`: no biases; a sliding window as long as the KV cache is accepted.
    Mistral,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 4] = [Family::Llama, Family::Qwen2, Family::Qwen3, Family::Mistral];

    /// The `architectures` entry (`LlamaForCausalLM`, ...).
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Mistral => "MistralForCausalLM",
        }
    }

    /// The `model_type` (`llama`, `qwen2`, `qwen3`, `mistral`).
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Mistral => "mistral",
        }
    }

    /// The family of an `architectures` entry.
    pub fn from_architecture(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.architecture() == name)
    }

    /// transformers' default `max_position_embeddings` for the family (2048 for Llama, 32768
    /// for Qwen2 and Qwen3, 131072 for Mistral).
    pub fn default_max_positions(self) -> usize {
        match self {
            Family::Llama => 2048,
            Family::Qwen2 | Family::Qwen3 => 32768,
            Family::Mistral => 4096 * 32,
        }
    }

    /// transformers' default `bos_token_id` for the family.
    pub fn default_bos(self) -> Option<u32> {
        match self {
            Family::Llama | Family::Mistral => Some(1),
            Family::Qwen2 | Family::Qwen3 => None,
        }
    }

    /// transformers' default `eos_token_id` for the family.
    pub fn default_eos(self) -> Option<u32> {
        match self {
            Family::Llama | Family::Mistral => Some(2),
            Family::Qwen2 | Family::Qwen3 => None,
        }
    }

    /// The family of a `model_type`.
    pub fn from_model_type(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == name)
    }
}

/// The dtype `config.json` declares for the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigDtype {
    /// `bfloat16`.
    BF16,
    /// `float32`.
    F32,
}

/// A validated `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// The model family.
    pub family: Family,
    /// The model's shapes and variant flags, with the KV cache of the [`LoadOptions`].
    pub model: LlamaConfig,
    /// The declared weight dtype (`dtype` or `torch_dtype`), if any.
    pub dtype: Option<ConfigDtype>,
    /// `max_position_embeddings`, if given. RoPE is computed for any position; a `dynamic`
    /// scaling reads it, and `llama3` and `yarn` fall back to it for their original context
    /// (the family's default when absent, as transformers uses).
    pub max_position_embeddings: Option<usize>,
    /// `bos_token_id` (the family's default when absent: 1 for Llama and Mistral, none for
    /// Qwen).
    pub bos_token_id: Option<u32>,
    /// `eos_token_id`, one id or a list (the family's default when absent: 2 for Llama and
    /// Mistral, none for Qwen). Generation stops at any of them;
    /// [`Checkpoint::open`](super::Checkpoint::open) replaces them with
    /// `generation_config.json`'s when that file names some, as transformers' `generate` does.
    pub eos_token_ids: Vec<u32>,
}

/// Parses and validates `config.json` (`text`, read from `path`).
pub fn parse_config(path: &Path, text: &str, opts: &LoadOptions) -> Result<HfConfig, LoadError> {
    let obj = json_object(path, text)?;
    let f = Fields { path, obj: &obj };
    let family = family(&f)?;
    reject_unsupported(&f, family)?;

    let hidden = f.usize_req("hidden_size")?;
    let q_heads = f.usize_req("num_attention_heads")?;
    let kv_heads = f.usize_opt("num_key_value_heads")?.unwrap_or(q_heads);
    if q_heads % kv_heads != 0 {
        return Err(f.err(
            "num_key_value_heads",
            format!("{kv_heads} does not divide num_attention_heads ({q_heads})"),
        ));
    }
    let head_dim = match f.usize_opt("head_dim")? {
        Some(d) => d,
        // transformers' Qwen3Config defaults head_dim to 128; the others derive it.
        None if family == Family::Qwen3 => 128,
        None if hidden % q_heads == 0 => hidden / q_heads,
        None => {
            return Err(f.err(
                "head_dim",
                format!("absent, and hidden_size ({hidden}) is not a multiple of num_attention_heads ({q_heads})"),
            ));
        }
    };
    if head_dim % 8 != 0 || head_dim > MAX_HEAD_DIM {
        return Err(f.err(
            "head_dim",
            format!("{head_dim} is not supported: the kernels need a multiple of 8, at most {MAX_HEAD_DIM}"),
        ));
    }
    let rms_eps = f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6);
    if rms_eps < 0.0 {
        return Err(f.err("rms_norm_eps", format!("must be >= 0, got {rms_eps}")));
    }
    let max_position_embeddings = f.usize_opt("max_position_embeddings")?;
    let rope = parse_rope(
        &f,
        head_dim,
        max_position_embeddings.unwrap_or(family.default_max_positions()),
    )?;
    let attention_bias = f.bool_opt("attention_bias")?.unwrap_or(false);
    let (qkv_bias, o_bias) = match family {
        Family::Llama | Family::Qwen3 => (attention_bias, attention_bias),
        Family::Qwen2 => (true, false),
        Family::Mistral => (false, false),
    };
    let model = LlamaConfig {
        vocab: f.usize_req("vocab_size")?,
        hidden,
        layers: f.usize_req("num_hidden_layers")?,
        q_heads,
        kv_heads,
        head_dim,
        intermediate: f.usize_req("intermediate_size")?,
        rms_eps: rms_eps as f32,
        rope_theta: rope.theta,
        rope_scaling: rope.scaling,
        cache_slots: opts.cache_slots,
        cache_tokens: opts.cache_tokens,
        qkv_bias,
        o_bias,
        qk_norm: family == Family::Qwen3,
        tie_embeddings: f.bool_opt("tie_word_embeddings")?.unwrap_or(false),
    };
    // Sizes first, so that a hostile config with huge numbers is named by its field (every
    // derived size is checked, nothing wraps).
    model.check_sizes().map_err(|e| {
        f.err(
            config_field(e.field),
            format!("{} ({}): {}", e.field, e.value, e.message),
        )
    })?;
    sliding_window(&f, family, &model)?;
    model
        .validate()
        .map_err(|e| f.err("(model shape)", e.to_string()))?;
    Ok(HfConfig {
        family,
        model,
        dtype: dtype(&f)?,
        max_position_embeddings,
        bos_token_id: match f.get("bos_token_id") {
            Some(v) => Some(token_id(&f, "bos_token_id", v)?),
            None if f.obj.contains_key("bos_token_id") => None,
            None => family.default_bos(),
        },
        eos_token_ids: match f.get("eos_token_id") {
            Some(v) => token_ids(&f, "eos_token_id", v)?,
            None if f.obj.contains_key("eos_token_id") => Vec::new(),
            None => family.default_eos().into_iter().collect(),
        },
    })
}

/// The `config.json` field a [`LlamaConfig`] field is read from (the KV-cache sizes come from
/// the [`LoadOptions`]).
fn config_field(model_field: &str) -> &'static str {
    match model_field {
        "vocab" => "vocab_size",
        "hidden" => "hidden_size",
        "layers" => "num_hidden_layers",
        "q_heads" => "num_attention_heads",
        "kv_heads" => "num_key_value_heads",
        "head_dim" => "head_dim",
        "intermediate" => "intermediate_size",
        "cache_slots" => "(load options) cache_slots",
        "cache_tokens" => "(load options) cache_tokens",
        _ => "(model shape)",
    }
}

/// The family, from `architectures` (else `model_type`); `model_type` must agree.
fn family(f: &Fields<'_>) -> Result<Family, LoadError> {
    let model_type = f.str_opt("model_type")?;
    let family = match f.get("architectures") {
        Some(Value::Array(names)) if !names.is_empty() => {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            let found = names.iter().find_map(|n| Family::from_architecture(n));
            match (found, names.first()) {
                (Some(family), _) => family,
                (None, first) => {
                    return Err(LoadError::UnsupportedArchitecture {
                        path: f.path.to_path_buf(),
                        found: first.map_or_else(|| "(not a string)".into(), |s| s.to_string()),
                    });
                }
            }
        }
        Some(other) if !matches!(other, Value::Array(_)) => {
            return Err(f.err(
                "architectures",
                format!("must be a list of names, got {other}"),
            ));
        }
        _ => match model_type {
            Some(mt) => {
                Family::from_model_type(mt).ok_or_else(|| LoadError::UnsupportedArchitecture {
                    path: f.path.to_path_buf(),
                    found: format!("model_type {mt}"),
                })?
            }
            None => return Err(f.err("architectures", "missing (and no `model_type` either)")),
        },
    };
    if let Some(mt) = model_type.filter(|&mt| mt != family.model_type()) {
        return Err(f.err(
            "model_type",
            format!(
                "`{mt}` disagrees with architectures `{}` (model_type `{}`)",
                family.architecture(),
                family.model_type()
            ),
        ));
    }
    Ok(family)
}

/// Fields that ask for something the model does not implement.
fn reject_unsupported(f: &Fields<'_>, family: Family) -> Result<(), LoadError> {
    if let Some(act) = f.str_opt("hidden_act")?.filter(|&a| a != "silu") {
        return Err(f.err(
            "hidden_act",
            format!("`{act}` is not supported; only `silu` (SwiGLU MLP)"),
        ));
    }
    if f.bool_opt("mlp_bias")? == Some(true) {
        return Err(f.err("mlp_bias", "MLP biases are not supported"));
    }
    if family == Family::Mistral && f.bool_opt("attention_bias")? == Some(true) {
        return Err(f.err(
            "attention_bias",
            "Mistral has no attention biases; transformers would ignore them",
        ));
    }
    if let Some(q) = f.get("quantization_config") {
        return Err(f.err(
            "quantization_config",
            format!("quantized checkpoints are not supported (found {q})"),
        ));
    }
    if let Some(p) = f.f64_opt("partial_rotary_factor")?.filter(|&p| p != 1.0) {
        return Err(f.err(
            "partial_rotary_factor",
            format!("partial RoPE ({p}) is not supported"),
        ));
    }
    Ok(())
}

/// Sliding-window attention equals full attention while the window covers the whole KV cache;
/// a shorter window is an error naming `sliding_window`.
fn sliding_window(f: &Fields<'_>, family: Family, model: &LlamaConfig) -> Result<(), LoadError> {
    let window = f.usize_opt("sliding_window")?;
    let used = match family {
        Family::Llama => false,
        Family::Mistral => window.is_some(),
        Family::Qwen2 | Family::Qwen3 => match f.get("layer_types") {
            Some(Value::Array(types)) => {
                if let Some(bad) = types
                    .iter()
                    .find(|t| !matches!(t.as_str(), Some("full_attention" | "sliding_attention")))
                {
                    return Err(f.err("layer_types", format!("unknown layer type {bad}")));
                }
                f.bool_opt("use_sliding_window")? == Some(true)
                    && types
                        .iter()
                        .any(|t| t.as_str() == Some("sliding_attention"))
            }
            Some(other) => {
                return Err(f.err("layer_types", format!("must be a list, got {other}")));
            }
            None => {
                let max_window_layers = f.usize_opt("max_window_layers")?.unwrap_or(28);
                f.bool_opt("use_sliding_window")? == Some(true) && max_window_layers < model.layers
            }
        },
    };
    match window {
        Some(w) if used && w < model.cache_tokens => Err(f.err(
            "sliding_window",
            format!(
                "sliding-window attention ({w} positions) is not supported; it equals full attention only when the window covers the KV cache: load with cache_tokens <= {w} (asked for {})",
                model.cache_tokens
            ),
        )),
        _ => Ok(()),
    }
}

/// The declared dtype: `dtype` (transformers 5) or `torch_dtype` (4); bf16 and f32 only.
fn dtype(f: &Fields<'_>) -> Result<Option<ConfigDtype>, LoadError> {
    for field in ["dtype", "torch_dtype"] {
        if let Some(name) = f.str_opt(field)? {
            return match name {
                "bfloat16" => Ok(Some(ConfigDtype::BF16)),
                "float32" => Ok(Some(ConfigDtype::F32)),
                other => Err(f.err(
                    field,
                    format!("`{other}` weights are not supported; only bfloat16 and float32"),
                )),
            };
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn qwen3_json() -> Value {
        json!({
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "num_hidden_layers": 2,
            "vocab_size": 100,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": true,
            "torch_dtype": "bfloat16",
        })
    }

    fn parse(config: &Value) -> Result<HfConfig, LoadError> {
        let opts = LoadOptions::default();
        parse_config(Path::new("config.json"), &config.to_string(), &opts)
    }

    /// The field a config error names (panics on success or another error).
    #[track_caller]
    fn field_of(config: &Value) -> String {
        match parse(config) {
            Err(LoadError::Config { field, message, .. }) => {
                assert!(
                    message.contains("overflow") || message.contains("32-bit"),
                    "{message}"
                );
                field
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn the_base_config_parses() {
        let cfg = parse(&qwen3_json()).unwrap();
        assert_eq!(cfg.model.intermediate, 128);
    }

    #[test]
    fn huge_sizes_are_rejected_naming_the_field() {
        for (field, value) in [
            ("intermediate_size", json!(u64::MAX / 2 + 1)),
            ("intermediate_size", json!(1u64 << 40)),
            ("vocab_size", json!(u64::MAX / 2)),
            ("hidden_size", json!(1u64 << 40)),
            ("num_hidden_layers", json!(u64::MAX)),
        ] {
            let mut config = qwen3_json();
            config[field] = value.clone();
            assert_eq!(field_of(&config), field, "{field} = {value}");
        }
        // Heads: (q_heads + 2 * kv_heads) * head_dim wraps.
        let mut config = qwen3_json();
        config["num_attention_heads"] = json!(u64::MAX / 64);
        config["num_key_value_heads"] = json!(u64::MAX / 64);
        assert_eq!(field_of(&config), "num_attention_heads");
    }
}
