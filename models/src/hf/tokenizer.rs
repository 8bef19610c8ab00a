//! Text in and out: a checkpoint's `tokenizer.json`, read by the Hugging Face `tokenizers`
//! crate (the library transformers' fast tokenizers run on), so ids and text are the ones
//! transformers' fast tokenizer gives for the same file. What only `tokenizer_config.json`
//! says (`add_bos_token` overrides, `clean_up_tokenization_spaces`, chat templates) is not read:
//! a checkpoint whose config changes what its `tokenizer.json` does would differ there.

use std::path::{Path, PathBuf};

use super::error::LoadError;

/// The tokenizer file's name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A checkpoint's tokenizer (`tokenizer.json`).
///
/// ```no_run
/// use cudagraph_models::hf::Tokenizer;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tok = Tokenizer::open("path/to/Qwen3-0.6B".as_ref())?;
/// let ids = tok.encode("Hello, world", true)?; // with the special tokens the file adds
/// assert_eq!(tok.decode(&ids, true)?, "Hello, world");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Reads `dir/tokenizer.json`; [`LoadError::NoTokenizer`] when the folder has none.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(LoadError::NoTokenizer {
                dir: dir.to_path_buf(),
            });
        }
        Self::from_file(&path)
    }

    /// Reads a `tokenizer.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| LoadError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// The ids of `text`; with `add_special_tokens` the file's post-processor adds its special
    /// tokens (a BOS, say), as transformers' `tokenizer(text)` does by default.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, LoadError> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; `skip_special_tokens` leaves out special tokens (BOS, EOS, ...), as
    /// transformers' `decode(ids, skip_special_tokens=True)` does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, LoadError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    /// The vocabulary's size, with added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: tokenizers::Error) -> LoadError {
        LoadError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer with a BOS template, written as a `tokenizer.json` would be.
    fn write_tokenizer(dir: &Path) {
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
            },
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordLevel", "vocab": {"<s>": 0, "<unk>": 1, "hello": 2, "world": 3, ",": 4}, "unk_token": "<unk>"}
        });
        std::fs::write(dir.join(TOKENIZER_FILE), json.to_string()).unwrap();
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cudagraph-tok-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn encodes_and_decodes_with_the_files_special_tokens() {
        let dir = temp_dir("ok");
        write_tokenizer(&dir);
        let tok = Tokenizer::open(&dir).unwrap();
        assert_eq!(tok.encode("hello , world", true).unwrap(), [0, 2, 4, 3]);
        assert_eq!(tok.encode("hello , world", false).unwrap(), [2, 4, 3]);
        assert_eq!(tok.encode("hello moon", false).unwrap(), [2, 1]);
        assert_eq!(tok.decode(&[0, 2, 4, 3], true).unwrap(), "hello, world");
        assert_eq!(tok.vocab_size(), 5);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_folder_without_a_tokenizer_says_so() {
        let dir = temp_dir("none");
        let err = Tokenizer::open(&dir).unwrap_err();
        assert!(matches!(err, LoadError::NoTokenizer { .. }), "{err}");
        assert!(err.to_string().contains("no tokenizer.json"), "{err}");
        std::fs::write(dir.join(TOKENIZER_FILE), "{not json").unwrap();
        let err = Tokenizer::open(&dir).unwrap_err();
        assert!(matches!(err, LoadError::Tokenizer { .. }), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
