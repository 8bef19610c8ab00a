//! Hugging Face checkpoints of the Llama family: a folder with `config.json` and
//! `model.safetensors` (or shards `model-0000N-of-0000M.safetensors` listed by
//! `model.safetensors.index.json`), loaded into a [`Llama`].
//!
//! Families ([`Family`]): `LlamaForCausalLM` (grouped-query attention, `rope_theta`,
//! `rms_norm_eps`, tied or untied embeddings, `attention_bias`), `Qwen2ForCausalLM` (q/k/v
//! biases), `Qwen3ForCausalLM` (per-head q/k RMS norm, `head_dim` independent of the hidden
//! size) and `MistralForCausalLM`. Weights are BF16 or F32 (converted to bf16 on the host,
//! round to nearest even).
//!
//! Loading is host work first, device work last, and everything is checked before anything
//! is read or uploaded:
//!
//! 1. [`Checkpoint::open`] parses `config.json` ([`HfConfig`]), finds the safetensors files,
//!    reads their headers (a file shorter than its header says is reported as truncated) and
//!    checks every tensor the configuration needs: present, BF16 or F32, the right shape; and
//!    no tensor the configuration has no place for. No tensor data is read.
//! 2. [`Checkpoint::read_weights`] reads the tensors and converts them to the model's bf16
//!    layout ([`LlamaWeights`]).
//! 3. [`Llama::from_weights`] uploads them.
//!
//! [`load`] does all three. Every failure is a [`LoadError`] naming the file and the field or
//! tensor at fault.
//!
//! ```no_run
//! use cudagraph_models::hf::{self, LoadOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = cudagraph::Runtime::new(0)?;
//! let model = hf::load(&rt, "path/to/Qwen3-0.6B".as_ref(), &LoadOptions::default())?;
//! let mut graphs = model.forward_graphs(&rt, model.config().input_specs()?)?;
//! # Ok(()) }
//! ```

mod config;
mod error;
mod fields;
mod files;
pub(crate) mod generation;
mod options;
mod rope;
pub mod synthetic;
mod tensors;
#[cfg(feature = "text")]
mod tokenizer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use config::{ConfigDtype, Family, HfConfig, parse_config};
pub use error::LoadError;
pub use files::{INDEX_FILE, SINGLE_FILE, TensorEntry, TensorIndex};
pub use generation::GENERATION_CONFIG_FILE;
pub use options::LoadOptions;
pub use tensors::{Needed, needed_tensors};
#[cfg(feature = "text")]
pub use tokenizer::{TOKENIZER_FILE, Tokenizer};

use crate::llama::Llama;
use crate::weights::LlamaWeights;
use cudagraph::Runtime;

/// The configuration file's name.
pub const CONFIG_FILE: &str = "config.json";

/// A checkpoint folder whose configuration and tensor headers are read and validated; no
/// tensor data has been read yet.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    config: HfConfig,
    index: TensorIndex,
}

impl Checkpoint {
    /// Reads `dir/config.json` (and `generation_config.json`'s special tokens, when the folder
    /// has one) and every safetensors header, and checks each tensor the configuration needs
    /// (presence, dtype, shape) and that nothing else is there.
    pub fn open(dir: &Path, opts: &LoadOptions) -> Result<Self, LoadError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| LoadError::Io {
            path: config_path.clone(),
            source,
        })?;
        let mut config = parse_config(&config_path, &text, opts)?;
        generation::apply_generation_config(dir, &mut config)?;
        let index = TensorIndex::open(dir)?;
        tensors::validate(&index, &config.model)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            index,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The validated configuration.
    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    /// The safetensors files and their tensors.
    pub fn index(&self) -> &TensorIndex {
        &self.index
    }

    /// Reads every tensor and converts it to the model's bf16 layout (q/k/v and gate/up
    /// stacked).
    pub fn read_weights(&self) -> Result<LlamaWeights, LoadError> {
        let model = &self.config.model;
        let tensors = tensors::read_all(&self.index, model)?;
        tensors::assemble(model, tensors, &self.index.source)
    }

    /// Reads the weights and uploads them: the model, with a zeroed KV cache.
    pub fn load(&self, rt: &Runtime) -> Result<Llama, LoadError> {
        let weights = self.read_weights()?;
        Ok(Llama::from_weights(
            rt,
            self.config.model.clone(),
            &weights,
        )?)
    }
}

/// Loads the checkpoint folder `dir` onto `rt`'s device: [`Checkpoint::open`], then
/// [`Checkpoint::load`].
pub fn load(rt: &Runtime, dir: &Path, opts: &LoadOptions) -> Result<Llama, LoadError> {
    Checkpoint::open(dir, opts)?.load(rt)
}
