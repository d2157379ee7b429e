//! Tokenization with a Hugging Face `tokenizer.json`, and turning rendered segments into
//! `input_ids` / `labels`.
//!
//! Each segment is encoded on its own (special tokens recognized, nothing added), exactly as
//! LLaMA-Factory encodes prompt and response separately. Segment boundaries sit right after
//! `<|im_start|>assistant\n` and right after `<|im_end|>\n`, so the concatenation equals
//! encoding the whole rendering, except when an assistant reply starts with whitespace: there the
//! whole-string encoding could merge that whitespace with the header's `\n`, and we keep the
//! LLaMA-Factory split. Tests check the equality on real data.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::example::{Example, IGNORE_INDEX};
use crate::template::Segment;

/// The Qwen2.5 tokenizer compiled into limo, where a tokenizer path is asked for.
pub const BUILTIN: &str = "builtin:qwen2.5";

/// Its files as the Hub ships them: tokenizer.json, tokenizer_config.json (eos, pad, the chat
/// template) and the template alone.
pub const BUILTIN_FILES: [(&str, &[u8]); 3] = [
    (
        "tokenizer.json",
        include_bytes!("../../../tests/fixtures/qwen2.5-tokenizer/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../../tests/fixtures/qwen2.5-tokenizer/tokenizer_config.json"),
    ),
    (
        "chat_template.jinja",
        include_bytes!("../../../tests/fixtures/qwen2.5-tokenizer/chat_template.jinja"),
    ),
];

pub struct ChatTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    im_start: u32,
    im_end: u32,
}

impl ChatTokenizer {
    /// Loads `tokenizer.json`, given as the file itself or a folder holding it, or
    /// [`BUILTIN`].
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.as_os_str() == BUILTIN {
            let inner = tokenizers::Tokenizer::from_bytes(BUILTIN_FILES[0].1).map_err(|e| {
                DataError::Tokenizer {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }
            })?;
            return Self::with_chat_tokens(inner, path.to_path_buf());
        }
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !file.is_file() {
            return Err(DataError::Tokenizer {
                path: file,
                message: "file not found".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| DataError::Tokenizer {
            path: file.clone(),
            message: e.to_string(),
        })?;
        Self::with_chat_tokens(inner, file)
    }

    fn with_chat_tokens(inner: tokenizers::Tokenizer, file: PathBuf) -> Result<Self> {
        let special = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| DataError::Tokenizer {
                    path: file.clone(),
                    message: format!("has no `{token}` token; the Qwen2.5 chat template needs it"),
                })
        };
        let im_start = special("<|im_start|>")?;
        let im_end = special("<|im_end|>")?;
        Ok(ChatTokenizer {
            inner,
            path: file,
            im_start,
            im_end,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn im_start_id(&self) -> u32 {
        self.im_start
    }

    pub fn im_end_id(&self) -> u32 {
        self.im_end
    }

    /// Encodes text as is: special tokens in the text are recognized, none are added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Encodes rendered segments; target segments get their own ids as labels, the rest -100.
    pub fn encode_segments(&self, segments: &[Segment]) -> Result<Example> {
        let mut input_ids = Vec::new();
        let mut labels = Vec::new();
        for segment in segments {
            let ids = self.encode(&segment.text)?;
            if segment.target {
                labels.extend(ids.iter().map(|&id| i64::from(id)));
            } else {
                labels.extend(std::iter::repeat_n(IGNORE_INDEX, ids.len()));
            }
            input_ids.extend(ids);
        }
        Ok(Example { input_ids, labels })
    }
}
