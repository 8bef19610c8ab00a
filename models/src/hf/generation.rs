//! `generation_config.json`: the special tokens transformers' `generate` uses. When the file
//! names `eos_token_id` (one id or a list: Llama 3.x lists three) or `bos_token_id`, they
//! replace `config.json`'s, as transformers does. A file that names neither keeps
//! `config.json`'s; a malformed file is an error naming it (rather than a silent fallback).

use std::path::Path;

use super::config::HfConfig;
use super::error::LoadError;
use super::fields::{Fields, json_object, token_ids};

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
    let obj = json_object(path, text)?;
    let f = Fields { path, obj: &obj };
    if let Some(v) = f.get("eos_token_id") {
        config.eos_token_ids = token_ids(&f, "eos_token_id", v)?;
    }
    if let Some(v) = f.get("bos_token_id") {
        config.bos_token_id = token_ids(&f, "bos_token_id", v)?.first().copied();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use crate::hf::rope::tests::{llama, parse, rejected};

    #[test]
    fn special_tokens_default_by_family_and_read_lists() {
        let cfg = parse(&llama(json!({}))).unwrap();
        assert_eq!(
            (cfg.bos_token_id, cfg.eos_token_ids.as_slice()),
            (Some(1), &[2][..])
        );
        let cfg = parse(&llama(
            json!({"bos_token_id": 128000, "eos_token_id": [128001, 128009]}),
        ))
        .unwrap();
        assert_eq!(cfg.bos_token_id, Some(128000));
        assert_eq!(cfg.eos_token_ids, [128001, 128009]);
        let cfg = parse(&llama(json!({"eos_token_id": null}))).unwrap();
        assert!(cfg.eos_token_ids.is_empty());
        let mut qwen = llama(json!({"architectures": ["Qwen2ForCausalLM"]}));
        qwen.as_object_mut().unwrap().remove("eos_token_id");
        let cfg = parse(&qwen).unwrap();
        assert_eq!((cfg.bos_token_id, cfg.eos_token_ids.len()), (None, 0));
        let (field, _) = rejected(json!({"eos_token_id": "two"}));
        assert_eq!(field, "eos_token_id");
        let (field, _) = rejected(json!({"eos_token_id": [2, -1]}));
        assert_eq!(field, "eos_token_id");
    }

    #[test]
    fn generation_config_replaces_the_special_tokens() {
        let mut cfg = parse(&llama(json!({}))).unwrap();
        let path = Path::new("generation_config.json");
        super::apply_text(
            path,
            r#"{"eos_token_id": [7, 8], "do_sample": true}"#,
            &mut cfg,
        )
        .unwrap();
        assert_eq!(cfg.eos_token_ids, [7, 8]);
        assert_eq!(cfg.bos_token_id, Some(1));
        let err = super::apply_text(path, r#"{"eos_token_id": 1.5}"#, &mut cfg).unwrap_err();
        assert!(err.to_string().contains("generation_config.json"), "{err}");
    }
}
