//! The tensors a configuration needs (Hugging Face names and shapes), their validation against
//! a checkpoint's headers, and their assembly into [`LlamaWeights`] (bf16, q/k/v and gate/up
//! stacked).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use half::bf16;
use safetensors::Dtype;

use super::error::LoadError;
use super::files::TensorIndex;
use crate::llama::LlamaConfig;
use crate::weights::{HostTensor, LayerWeights, LlamaWeights};

/// One tensor a configuration needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Needed {
    /// Its Hugging Face name (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The configuration fields the shape (and the need) come from, for messages.
    pub why: String,
}

/// Every tensor `cfg` needs, in load order.
pub fn needed_tensors(cfg: &LlamaConfig) -> Vec<Needed> {
    let (h, d, v, inter) = (cfg.hidden, cfg.head_dim, cfg.vocab, cfg.intermediate);
    let (q, kv) = (cfg.q_heads * d, cfg.kv_heads * d);
    let mut out = Vec::new();
    let mut need = |name: String, shape: &[usize], why: String| {
        out.push(Needed {
            name,
            shape: shape.to_vec(),
            why,
        })
    };
    let heads = |n: &str, count: usize| format!("{n} {count} x head_dim {d}");
    need(
        "model.embed_tokens.weight".into(),
        &[v, h],
        format!("vocab_size {v} x hidden_size {h}"),
    );
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        let hidden = format!("hidden_size {h}");
        need(format!("{p}.input_layernorm.weight"), &[h], hidden.clone());
        let projections = [
            ("q", q, heads("num_attention_heads", cfg.q_heads)),
            ("k", kv, heads("num_key_value_heads", cfg.kv_heads)),
            ("v", kv, heads("num_key_value_heads", cfg.kv_heads)),
        ];
        for (x, rows, why) in &projections {
            need(
                format!("{p}.self_attn.{x}_proj.weight"),
                &[*rows, h],
                format!("{why}, hidden_size {h}"),
            );
        }
        if cfg.qkv_bias {
            for (x, rows, why) in &projections {
                need(
                    format!("{p}.self_attn.{x}_proj.bias"),
                    &[*rows],
                    format!("{why}; q/k/v biases: Qwen2, or attention_bias"),
                );
            }
        }
        if cfg.qk_norm {
            for x in ["q", "k"] {
                need(
                    format!("{p}.self_attn.{x}_norm.weight"),
                    &[d],
                    format!("head_dim {d}; Qwen3's per-head q/k norm"),
                );
            }
        }
        need(
            format!("{p}.self_attn.o_proj.weight"),
            &[h, q],
            format!(
                "hidden_size {h}, {}",
                heads("num_attention_heads", cfg.q_heads)
            ),
        );
        if cfg.o_bias {
            need(
                format!("{p}.self_attn.o_proj.bias"),
                &[h],
                format!("hidden_size {h}; attention_bias"),
            );
        }
        need(format!("{p}.post_attention_layernorm.weight"), &[h], hidden);
        for x in ["gate", "up"] {
            need(
                format!("{p}.mlp.{x}_proj.weight"),
                &[inter, h],
                format!("intermediate_size {inter} x hidden_size {h}"),
            );
        }
        need(
            format!("{p}.mlp.down_proj.weight"),
            &[h, inter],
            format!("hidden_size {h} x intermediate_size {inter}"),
        );
    }
    need("model.norm.weight".into(), &[h], format!("hidden_size {h}"));
    if !cfg.tie_embeddings {
        need(
            "lm_head.weight".into(),
            &[v, h],
            format!("vocab_size {v} x hidden_size {h}; tie_word_embeddings is false"),
        );
    }
    out
}

/// Checks every needed tensor's presence, dtype (BF16 or F32) and shape, then that the
/// checkpoint holds nothing the configuration has no place for.
pub fn validate(index: &TensorIndex, cfg: &LlamaConfig) -> Result<(), LoadError> {
    let needed = needed_tensors(cfg);
    for n in &needed {
        let Some(entry) = index.tensors.get(&n.name) else {
            return Err(LoadError::MissingTensor {
                path: index.source.clone(),
                name: n.name.clone(),
                why: n.why.clone(),
            });
        };
        let path = index.files[entry.file].clone();
        if !matches!(entry.dtype, Dtype::BF16 | Dtype::F32) {
            return Err(LoadError::Dtype {
                path,
                name: n.name.clone(),
                found: entry.dtype.to_string(),
            });
        }
        if entry.shape != n.shape {
            return Err(LoadError::Shape {
                path,
                name: n.name.clone(),
                expected: n.shape.clone(),
                found: entry.shape.clone(),
                why: n.why.clone(),
            });
        }
    }
    let names: BTreeSet<&str> = needed.iter().map(|n| n.name.as_str()).collect();
    for (name, entry) in &index.tensors {
        if names.contains(name.as_str()) || ignorable(name, cfg) {
            continue;
        }
        return Err(LoadError::UnexpectedTensor {
            path: index.files[entry.file].clone(),
            name: name.clone(),
            why: unexpected_reason(name, cfg),
        });
    }
    Ok(())
}

/// Tensors a checkpoint may hold that the model does not use.
fn ignorable(name: &str, cfg: &LlamaConfig) -> bool {
    // Old checkpoints saved RoPE's frequencies; a tied checkpoint may still save the head.
    name.ends_with("rotary_emb.inv_freq") || (name == "lm_head.weight" && cfg.tie_embeddings)
}

/// Why `name` does not fit `cfg`, as precisely as the name allows.
fn unexpected_reason(name: &str, cfg: &LlamaConfig) -> String {
    let layer = name
        .strip_prefix("model.layers.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    match layer {
        Some(i) if i >= cfg.layers => {
            format!("layer {i}, but num_hidden_layers is {}", cfg.layers)
        }
        _ if name.ends_with("_proj.bias") => format!(
            "a bias the configuration does not enable (q/k/v biases: {}, o_proj bias: {}; see attention_bias and the architecture)",
            cfg.qkv_bias, cfg.o_bias
        ),
        _ if name.contains("q_norm") || name.contains("k_norm") => {
            "q/k norms belong to Qwen3ForCausalLM only".into()
        }
        _ => "the configuration has no place for it (config.json and the weights disagree?)".into(),
    }
}

/// A tensor's bytes (`dtype` BF16 or F32, little-endian) as bf16 values (f32 rounded to
/// nearest even).
pub fn to_bf16(dtype: Dtype, bytes: &[u8]) -> Option<Vec<bf16>> {
    match dtype {
        Dtype::BF16 if bytes.len() % 2 == 0 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        ),
        Dtype::F32 if bytes.len() % 4 == 0 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
        ),
        _ => None,
    }
}

/// Reads every needed tensor of a [`validate`]d index and converts it to bf16.
pub fn read_all(
    index: &TensorIndex,
    cfg: &LlamaConfig,
) -> Result<BTreeMap<String, HostTensor>, LoadError> {
    let mut out = BTreeMap::new();
    for n in needed_tensors(cfg) {
        let entry = index
            .tensors
            .get(&n.name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: index.source.clone(),
                name: n.name.clone(),
                why: n.why.clone(),
            })?;
        let bytes = index.read(entry)?;
        let data = to_bf16(entry.dtype, &bytes).ok_or_else(|| LoadError::Dtype {
            path: index.files[entry.file].clone(),
            name: n.name.clone(),
            found: entry.dtype.to_string(),
        })?;
        let tensor = HostTensor::new(&entry.shape, data).map_err(|e| LoadError::Header {
            path: index.files[entry.file].clone(),
            message: format!("tensor `{}`: {e}", n.name),
        })?;
        out.insert(n.name, tensor);
    }
    Ok(out)
}

/// Assembles the tensors `cfg` needs (by Hugging Face name, as [`read_all`] returns them) into
/// the model's layout; `source` names the checkpoint in errors.
pub fn assemble(
    cfg: &LlamaConfig,
    mut tensors: BTreeMap<String, HostTensor>,
    source: &Path,
) -> Result<LlamaWeights, LoadError> {
    let mut take = |name: String| {
        tensors
            .remove(&name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: source.to_path_buf(),
                name,
                why: "the configuration needs it".into(),
            })
    };
    let stack = |parts: Vec<HostTensor>| {
        HostTensor::concat_rows(&parts).map_err(|e| LoadError::Header {
            path: source.to_path_buf(),
            message: e.to_string(),
        })
    };
    let mut layers = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let p = format!("model.layers.{i}");
        let attn = |x: &str, kind: &str| format!("{p}.self_attn.{x}.{kind}");
        let mut qkv_parts = Vec::with_capacity(3);
        for x in ["q_proj", "k_proj", "v_proj"] {
            qkv_parts.push(take(attn(x, "weight"))?);
        }
        let qkv_bias = match cfg.qkv_bias {
            true => {
                let mut parts = Vec::with_capacity(3);
                for x in ["q_proj", "k_proj", "v_proj"] {
                    parts.push(take(attn(x, "bias"))?);
                }
                Some(stack(parts)?)
            }
            false => None,
        };
        let (q_norm, k_norm) = match cfg.qk_norm {
            true => (
                Some(take(attn("q_norm", "weight"))?),
                Some(take(attn("k_norm", "weight"))?),
            ),
            false => (None, None),
        };
        let o_bias = match cfg.o_bias {
            true => Some(take(attn("o_proj", "bias"))?),
            false => None,
        };
        let gate = take(format!("{p}.mlp.gate_proj.weight"))?;
        let up = take(format!("{p}.mlp.up_proj.weight"))?;
        layers.push(LayerWeights {
            attn_norm: take(format!("{p}.input_layernorm.weight"))?,
            qkv: stack(qkv_parts)?,
            qkv_bias,
            q_norm,
            k_norm,
            o_proj: take(attn("o_proj", "weight"))?,
            o_bias,
            mlp_norm: take(format!("{p}.post_attention_layernorm.weight"))?,
            gate_up: stack(vec![gate, up])?,
            down: take(format!("{p}.mlp.down_proj.weight"))?,
        });
    }
    let lm_head = match cfg.tie_embeddings {
        true => None,
        false => Some(take("lm_head.weight".into())?),
    };
    Ok(LlamaWeights {
        embed: take("model.embed_tokens.weight".into())?,
        layers,
        final_norm: take("model.norm.weight".into())?,
        lm_head,
    })
}
