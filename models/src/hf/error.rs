//! [`LoadError`]: everything that can go wrong loading a checkpoint, each naming the file and
//! the field or tensor at fault.

use std::path::PathBuf;

/// The architectures the loader reads, for messages.
pub(crate) const SUPPORTED_ARCHITECTURES: &str =
    "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM";

/// Why a checkpoint could not be loaded. Every variant names the file (or folder) it is about;
/// configuration errors name the field, tensor errors the tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Reading a file failed (missing `config.json`, unreadable shard, ...).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The folder has no safetensors weights.
    #[error("{}: no safetensors weights (expected `model.safetensors` or `model.safetensors.index.json`){hint}", dir.display())]
    NoWeights {
        /// The checkpoint folder.
        dir: PathBuf,
        /// What was found instead, if anything (`; found pytorch_model.bin ...`).
        hint: String,
    },
    /// A JSON file (`config.json`, the shard index) does not parse.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration field is missing, malformed or asks for something unsupported.
    #[error("{}: field `{field}`: {message}", path.display())]
    Config {
        /// `config.json`.
        path: PathBuf,
        /// The field (`rope_scaling`, `rope_parameters.rope_type`, `hidden_act`, ...).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The folder has no `tokenizer.json` (a tokenizer is needed for text in and out).
    #[error("{}: no tokenizer.json (text needs the checkpoint's Hugging Face tokenizer; pass token ids instead, or add the file)", dir.display())]
    NoTokenizer {
        /// The checkpoint folder.
        dir: PathBuf,
    },
    /// `tokenizer.json` does not load, or encoding or decoding failed.
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer {
        /// `tokenizer.json`.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// `architectures` names a model this loader does not know.
    #[error("{}: field `architectures`: unsupported architecture `{found}`; supported: {SUPPORTED_ARCHITECTURES}", path.display())]
    UnsupportedArchitecture {
        /// `config.json`.
        path: PathBuf,
        /// The architecture found.
        found: String,
    },
    /// The shard index (`model.safetensors.index.json`) is malformed or disagrees with a shard.
    #[error("{}: {message}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A safetensors header is malformed.
    #[error("{}: invalid safetensors header: {message}", path.display())]
    Header {
        /// The safetensors file.
        path: PathBuf,
        /// What is wrong (the safetensors crate's message).
        message: String,
    },
    /// A safetensors file is shorter than its header says (an interrupted download or copy).
    #[error("{}: truncated: its header describes {expected} bytes, the file has {found}", path.display())]
    Truncated {
        /// The safetensors file.
        path: PathBuf,
        /// The file size the header implies.
        expected: u64,
        /// The file's size.
        found: u64,
    },
    /// A tensor the configuration needs is absent.
    #[error("{}: tensor `{name}` not found (the configuration needs it: {why})", path.display())]
    MissingTensor {
        /// Where it was looked for: the safetensors file, or the shard index.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Why the configuration needs it.
        why: String,
    },
    /// A tensor's shape differs from what the configuration implies.
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?} ({why})", path.display())]
    Shape {
        /// The safetensors file holding it.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
        /// The configuration fields the expected shape comes from.
        why: String,
    },
    /// A tensor has a dtype other than BF16 and F32.
    #[error("{}: tensor `{name}` has dtype {found}; only BF16 and F32 weights are supported", path.display())]
    Dtype {
        /// The safetensors file holding it.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype in the file (`F16`, `F8_E4M3`, ...).
        found: String,
    },
    /// A tensor the configuration has no place for (the configuration and the weights disagree).
    #[error("{}: unexpected tensor `{name}`: {why}", path.display())]
    UnexpectedTensor {
        /// The safetensors file holding it.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Why it does not fit.
        why: String,
    },
    /// Everything validated, but creating the model on the device failed.
    #[error("creating the model on the device failed: {0}")]
    Device(#[from] cudagraph::Error),
}

impl From<LoadError> for cudagraph::Error {
    /// A load error as the runtime's [`Error::InvalidArgument`](cudagraph::Error) of op `load`
    /// (a device error comes back as itself).
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Device(inner) => inner,
            other => cudagraph::Error::invalid("load", other.to_string()),
        }
    }
}
