//! Typed access to the fields of a configuration file's JSON object, with errors naming the
//! file and the field: what `config.json`, its RoPE fields and `generation_config.json` are
//! read with.

use std::path::Path;

use serde_json::{Map, Value};

use super::error::LoadError;

/// Typed access to the fields of a JSON object, with errors naming the file and the field.
pub(super) struct Fields<'a> {
    pub(super) path: &'a Path,
    pub(super) obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub(super) fn err(&self, field: &str, message: impl Into<String>) -> LoadError {
        LoadError::Config {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The field's value, `None` when absent or `null`.
    pub(super) fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    pub(super) fn usize_opt(&self, field: &str) -> Result<Option<usize>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|u| usize::try_from(u).ok()) {
                Some(u) if u > 0 => Ok(Some(u)),
                _ => Err(self.err(field, format!("must be a positive integer, got {v}"))),
            },
        }
    }

    pub(super) fn usize_req(&self, field: &str) -> Result<usize, LoadError> {
        self.usize_opt(field)?
            .ok_or_else(|| self.err(field, "missing (a positive integer is required)"))
    }

    pub(super) fn f64_opt(&self, field: &str) -> Result<Option<f64>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.err(field, format!("must be a finite number, got {v}"))),
            },
        }
    }

    pub(super) fn bool_opt(&self, field: &str) -> Result<Option<bool>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("must be true or false, got {v}"))),
        }
    }

    pub(super) fn str_opt(&self, field: &str) -> Result<Option<&'a str>, LoadError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(field, format!("must be a string, got {v}"))),
        }
    }
}

/// The JSON object of a configuration file's `text` (read from `path`): malformed JSON and a
/// top level that is not an object are errors naming the file.
pub(super) fn json_object(path: &Path, text: &str) -> Result<Map<String, Value>, LoadError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(value) => Err(LoadError::Config {
            path: path.to_path_buf(),
            field: "(top level)".into(),
            message: format!("must be a JSON object, got {value}"),
        }),
        Err(source) => Err(LoadError::Json {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A token id (`field` names it): a non-negative integer that fits a `u32`.
pub(super) fn token_id(f: &Fields<'_>, field: &str, v: &Value) -> Result<u32, LoadError> {
    v.as_u64()
        .and_then(|u| u32::try_from(u).ok())
        .ok_or_else(|| {
            f.err(
                field,
                format!("must be a token id (an integer >= 0), got {v}"),
            )
        })
}

/// One token id or a list of them.
pub(super) fn token_ids(f: &Fields<'_>, field: &str, v: &Value) -> Result<Vec<u32>, LoadError> {
    match v {
        Value::Array(ids) => ids.iter().map(|id| token_id(f, field, id)).collect(),
        one => Ok(vec![token_id(f, field, one)?]),
    }
}
