//! `generation_config.json`: the special tokens transformers' `generate` uses. When the file
//! names `eos_token_id` (one id or a list: Llama 3.x lists three) or `bos_token_id`, they
//! replace `config.json`'s, as transformers does.

use std::path::Path;

use serde_json::Value;

use super::config::{Fields, HfConfig, token_ids};
use super::error::LoadError;

/// The generation configuration's name.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// Applies `dir/generation_config.json`, when the folder has one, to `config`.
pub(super) fn apply_generation_config(dir: &Path, config: &mut HfConfig) -> Result<(), LoadError> {
    let path = dir.join(GENERATION_CONFIG_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    apply_text(&path, &text, config)
}

/// [`apply_generation_config`] on the file's `text`.
pub(crate) fn apply_text(path: &Path, text: &str, config: &mut HfConfig) -> Result<(), LoadError> {
    let value: Value = serde_json::from_str(text).map_err(|source| LoadError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let Some(obj) = value.as_object() else {
        return Err(LoadError::Config {
            path: path.to_path_buf(),
            field: "(top level)".into(),
            message: format!("must be a JSON object, got {value}"),
        });
    };
    let f = Fields { path, obj };
    if let Some(v) = f.get("eos_token_id") {
        config.eos_token_ids = token_ids(&f, "eos_token_id", v)?;
    }
    if let Some(v) = f.get("bos_token_id") {
        config.bos_token_id = token_ids(&f, "bos_token_id", v)?.first().copied();
    }
    Ok(())
}
