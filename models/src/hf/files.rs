//! The safetensors files of a checkpoint folder and their headers: where every tensor is, with
//! its dtype and shape, read without touching the tensor data.
//!
//! A folder holds either `model.safetensors` or shards listed by
//! `model.safetensors.index.json` (`{"weight_map": {"tensor name": "shard file", ...}}`).
//! Each file's header is read and checked against the file's size, so a truncated file is
//! reported before any data is read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::Metadata;
use serde_json::Value;

use super::error::LoadError;

/// The single-file weights' name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index's name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The largest header accepted (the safetensors crate's limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where one tensor's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Index of its file in [`TensorIndex::files`].
    pub file: usize,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Offset of its first byte in the file.
    pub offset: u64,
    /// Its size in bytes.
    pub len: usize,
}

/// Every tensor of a checkpoint, by name, from the files' headers.
#[derive(Debug, Clone)]
pub struct TensorIndex {
    /// The safetensors files.
    pub files: Vec<PathBuf>,
    /// Where tensors that are not found were looked for: the single file or the index.
    pub source: PathBuf,
    /// The tensors, by name.
    pub tensors: BTreeMap<String, TensorEntry>,
}

impl TensorIndex {
    /// Finds the weights of the checkpoint folder `dir` and reads every header.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        if single.is_file() {
            let (data_start, meta) = read_header(&single)?;
            let mut tensors = BTreeMap::new();
            for (name, info) in meta.tensors() {
                tensors.insert(name, entry(0, data_start, info));
            }
            return Ok(Self {
                files: vec![single.clone()],
                source: single,
                tensors,
            });
        }
        if index.is_file() {
            return Self::open_sharded(dir, &index);
        }
        Err(LoadError::NoWeights {
            dir: dir.to_path_buf(),
            hint: other_weights_hint(dir),
        })
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| LoadError::Json {
            path: index.to_path_buf(),
            source,
        })?;
        let bad = |message: String| LoadError::Index {
            path: index.to_path_buf(),
            message,
        };
        let Some(map) = value.get("weight_map").and_then(Value::as_object) else {
            return Err(bad("no `weight_map` object".into()));
        };
        if map.is_empty() {
            return Err(bad("`weight_map` is empty".into()));
        }
        let mut files: Vec<PathBuf> = Vec::new();
        let mut headers: Vec<BTreeMap<String, TensorEntry>> = Vec::new();
        let mut tensors = BTreeMap::new();
        for (name, file) in map {
            let Some(file) = file.as_str() else {
                return Err(bad(format!(
                    "`weight_map.{name}` must be a file name, got {file}"
                )));
            };
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                return Err(bad(format!(
                    "`weight_map.{name}`: `{file}` is not a file name in the checkpoint folder"
                )));
            }
            let path = dir.join(file);
            let at = match files.iter().position(|f| f == &path) {
                Some(at) => at,
                None => {
                    let (data_start, meta) = read_header(&path)?;
                    let at = files.len();
                    headers.push(
                        meta.tensors()
                            .into_iter()
                            .map(|(n, info)| (n, entry(at, data_start, info)))
                            .collect(),
                    );
                    files.push(path);
                    at
                }
            };
            let Some(found) = headers[at].get(name) else {
                return Err(bad(format!(
                    "`weight_map` puts tensor `{name}` in `{file}`, which has no such tensor"
                )));
            };
            tensors.insert(name.clone(), found.clone());
        }
        Ok(Self {
            files,
            source: index.to_path_buf(),
            tensors,
        })
    }

    /// Reads the bytes of `entry` from its file.
    pub fn read(&self, entry: &TensorEntry) -> Result<Vec<u8>, LoadError> {
        let path = &self.files[entry.file];
        let io = |source| LoadError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        file.seek(SeekFrom::Start(entry.offset)).map_err(io)?;
        let mut bytes = vec![0u8; entry.len];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok(bytes)
    }
}

/// A tensor's entry from its header info; `data_start` is where the file's data begins.
fn entry(file: usize, data_start: u64, info: &safetensors::tensor::TensorInfo) -> TensorEntry {
    let (start, end) = info.data_offsets;
    TensorEntry {
        file,
        dtype: info.dtype,
        shape: info.shape.clone(),
        offset: data_start + start as u64,
        len: end - start,
    }
}

/// Reads and validates the header of the safetensors file `path`: returns where its data
/// starts and the metadata. The file's size must be exactly what the header describes.
pub fn read_header(path: &Path) -> Result<(u64, Metadata), LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let header = |message: String| LoadError::Header {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size < 8 {
        return Err(LoadError::Truncated {
            path: path.to_path_buf(),
            expected: 8,
            found: size,
        });
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        return Err(header(format!(
            "the header length field says {n} bytes (at most {MAX_HEADER_BYTES}): not a safetensors file?"
        )));
    }
    if 8 + n > size {
        return Err(LoadError::Truncated {
            path: path.to_path_buf(),
            expected: 8 + n,
            found: size,
        });
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).map_err(io)?;
    let meta: Metadata = serde_json::from_slice(&json).map_err(|e| header(e.to_string()))?;
    let expected = 8 + n + meta.data_len() as u64;
    if size < expected {
        return Err(LoadError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: size,
        });
    }
    if size > expected {
        return Err(header(format!(
            "the file has {} bytes past the {expected} its header describes",
            size - expected
        )));
    }
    Ok((8 + n, meta))
}

/// What weights other than safetensors the folder has, for the "no weights" message.
fn other_weights_hint(dir: &Path) -> String {
    if !dir.is_dir() {
        return "; the folder does not exist".into();
    }
    let others: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".gguf"))
        .collect();
    if others.is_empty() {
        String::new()
    } else {
        format!(
            "; found {} (only safetensors are read: re-save with `save_pretrained(..., safe_serialization=True)`)",
            others.join(", ")
        )
    }
}
