//! Synthetic checkpoints, for tests: a [`Synthetic`] writes a checkpoint folder with random
//! weights as transformers would save it (`config.json`, `model.safetensors` or shards with
//! their index), so the loader can be exercised without downloading anything.
//!
//! Tests that need a broken checkpoint take the pieces — [`Synthetic::config_json`],
//! [`Synthetic::tensors`] — change them, and write them with [`write_json`],
//! [`write_safetensors`] or [`write_shards`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::bf16;
use safetensors::{Dtype, View};
use serde_json::{Value, json};

use super::config::{ConfigDtype, Family};
use super::error::LoadError;
use super::tensors::{assemble, needed_tensors, to_bf16};
use super::{CONFIG_FILE, INDEX_FILE, LoadOptions, SINGLE_FILE};
use crate::llama::LlamaConfig;
use crate::weights::{HostTensor, LlamaWeights};
use cudagraph::kernels::reference::uniform_vec;

/// A synthetic checkpoint: a family, the model's shapes and flags, how to store the weights.
///
/// The tensors written follow [`model`](Self::model)'s flags and `config.json` says what the
/// family can express, so flags the family's configuration cannot state (a Qwen2 without
/// biases, say) make a checkpoint the loader rejects.
#[derive(Debug, Clone, PartialEq)]
pub struct Synthetic {
    /// The family (`architectures`, `model_type`, family-specific fields).
    pub family: Family,
    /// Shapes and variant flags; `cache_slots` and `cache_tokens` are only the
    /// [`load_options`](Self::load_options).
    pub model: LlamaConfig,
    /// The dtype the weights are stored in.
    pub dtype: ConfigDtype,
    /// How many safetensors files: 1 writes `model.safetensors`, more write shards and
    /// `model.safetensors.index.json`.
    pub shards: usize,
    /// The seed of the random values.
    pub seed: u64,
}

impl Synthetic {
    /// A tiny model of `family`, with the family's variant: Llama with grouped-query attention
    /// and an untied head; Qwen2 with q/k/v biases and tied embeddings; Qwen3 with q/k norms
    /// and `head_dim` 48 (q width 192 with hidden 128) and an untied head; Mistral with 8
    /// query heads of 16 on 2 KV heads. bf16, one file, seed 0, a cache of 256 slots of 32.
    pub fn tiny(family: Family) -> Self {
        let base = LlamaConfig {
            vocab: 384,
            hidden: 128,
            layers: 2,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 32,
            intermediate: 256,
            rms_eps: 1e-5,
            rope_theta: 50_000.0,
            rope_scaling: cudagraph::ops::RopeScaling::None,
            cache_slots: 256,
            cache_tokens: 32,
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            tie_embeddings: false,
        };
        let model = match family {
            Family::Llama => base,
            Family::Qwen2 => LlamaConfig {
                qkv_bias: true,
                tie_embeddings: true,
                rope_theta: 1_000_000.0,
                rms_eps: 1e-6,
                ..base
            },
            Family::Qwen3 => LlamaConfig {
                head_dim: 48,
                qk_norm: true,
                rope_theta: 1_000_000.0,
                rms_eps: 1e-6,
                ..base
            },
            Family::Mistral => LlamaConfig {
                q_heads: 8,
                head_dim: 16,
                rope_theta: 100_000.0,
                ..base
            },
        };
        Self {
            family,
            model,
            dtype: ConfigDtype::BF16,
            shards: 1,
            seed: 0,
        }
    }

    /// The cache sizes of [`model`](Self::model), as loader options.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            cache_slots: self.model.cache_slots,
            cache_tokens: self.model.cache_tokens,
        }
    }

    /// `config.json` as transformers 5 writes it (RoPE in `rope_parameters`, `dtype`).
    pub fn config_json(&self) -> Value {
        let m = &self.model;
        let mut c = json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": m.vocab,
            "hidden_size": m.hidden,
            "intermediate_size": m.intermediate,
            "num_hidden_layers": m.layers,
            "num_attention_heads": m.q_heads,
            "num_key_value_heads": m.kv_heads,
            "head_dim": m.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": f64::from(m.rms_eps),
            "max_position_embeddings": 4096,
            "tie_word_embeddings": m.tie_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": f64::from(m.rope_theta)},
            "dtype": match self.dtype {
                ConfigDtype::BF16 => "bfloat16",
                ConfigDtype::F32 => "float32",
            },
            "transformers_version": "synthetic",
        });
        let full: Vec<&str> = vec!["full_attention"; m.layers];
        let extra = match self.family {
            Family::Llama => json!({"attention_bias": m.qkv_bias, "mlp_bias": false}),
            Family::Qwen2 => json!({
                "use_sliding_window": false, "sliding_window": null,
                "max_window_layers": m.layers, "layer_types": full,
            }),
            Family::Qwen3 => json!({
                "attention_bias": m.qkv_bias, "use_sliding_window": false,
                "sliding_window": null, "max_window_layers": m.layers, "layer_types": full,
            }),
            Family::Mistral => json!({"sliding_window": 4096}),
        };
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    }

    /// The checkpoint's tensors, with random values: embeddings uniform in ±1, projections
    /// uniform with standard deviation `1 / sqrt(fan_in)`, norm weights in [0.8, 1.2], biases
    /// in ±0.5.
    pub fn tensors(&self) -> Vec<SynthTensor> {
        needed_tensors(&self.model)
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let len: usize = n.shape.iter().product();
                let (low, high) = if n.name.ends_with("norm.weight") {
                    (0.8, 1.2)
                } else if n.name.ends_with(".bias") {
                    (-0.5, 0.5)
                } else if n.name.contains("embed_tokens") {
                    (-1.0, 1.0)
                } else {
                    let fan_in = n.shape.last().copied().unwrap_or(1).max(1);
                    let a = (3.0 / fan_in as f32).sqrt();
                    (-a, a)
                };
                let seed = self
                    .seed
                    .wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let values = uniform_vec(seed, len, low, high);
                SynthTensor::from_f32(&n.name, &n.shape, &values, self.dtype)
            })
            .collect()
    }

    /// The weights the loader makes of [`tensors`](Self::tensors) (the same conversion and
    /// assembly, without files).
    pub fn host_weights(&self) -> Result<LlamaWeights, LoadError> {
        let mut map = std::collections::BTreeMap::new();
        for t in self.tensors() {
            let data = to_bf16(t.dtype, &t.data).ok_or_else(|| LoadError::Dtype {
                path: PathBuf::from("(synthetic)"),
                name: t.name.clone(),
                found: t.dtype.to_string(),
            })?;
            let tensor = HostTensor::new(&t.shape, data)?;
            map.insert(t.name, tensor);
        }
        assemble(&self.model, map, Path::new("(synthetic)"))
    }

    /// Writes the checkpoint into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_json(&dir.join(CONFIG_FILE), &self.config_json())?;
        let tensors = self.tensors();
        if self.shards <= 1 {
            write_safetensors(&dir.join(SINGLE_FILE), &tensors)
        } else {
            write_shards(dir, &tensors, self.shards)
        }
    }
}

/// One tensor to write: its name, dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthTensor {
    /// The Hugging Face name.
    pub name: String,
    /// The stored dtype.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<usize>,
    /// The bytes (`shape`'s element count times the dtype's size, unless a test wants
    /// otherwise).
    pub data: Vec<u8>,
}

impl SynthTensor {
    /// `values` stored as bf16 (rounded) or f32.
    pub fn from_f32(name: &str, shape: &[usize], values: &[f32], dtype: ConfigDtype) -> Self {
        let (dtype, data) = match dtype {
            ConfigDtype::BF16 => (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_bits().to_le_bytes())
                    .collect(),
            ),
            ConfigDtype::F32 => (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        };
        Self {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }
}

impl View for &SynthTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    std::fs::write(path, text)
}

/// Writes `tensors` as one safetensors file (with `{"format": "pt"}` metadata, as PyTorch
/// does).
pub fn write_safetensors(path: &Path, tensors: &[SynthTensor]) -> io::Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(tensors.iter().map(|t| (t.name.as_str(), t)), Some(meta))
        .map_err(io::Error::other)?;
    std::fs::write(path, bytes)
}

/// Writes `tensors` as `shards` files `model-0000i-of-0000N.safetensors` (consecutive runs of
/// tensors) and the index `model.safetensors.index.json` mapping each tensor to its file.
pub fn write_shards(dir: &Path, tensors: &[SynthTensor], shards: usize) -> io::Result<()> {
    let shards = shards.clamp(1, tensors.len().max(1));
    let per = tensors.len().div_ceil(shards).max(1);
    let mut weight_map = serde_json::Map::new();
    let count = tensors.chunks(per).count();
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        write_safetensors(&dir.join(&file), chunk)?;
        for t in chunk {
            weight_map.insert(t.name.clone(), Value::String(file.clone()));
        }
    }
    let total: usize = tensors.iter().map(|t| t.data.len()).sum();
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_json(&dir.join(INDEX_FILE), &index)
}

/// A fresh folder under the system's temporary directory, removed (with its contents) on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `cudagraph-<tag>-<pid>-<n>-<nanos>` in the temporary directory.
    pub fn new(tag: &str) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "cudagraph-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
