//! Fixtures shared by the limo-data integration tests. They live in the repository's
//! tests/fixtures so the suite runs on a fresh clone.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::OnceLock;

use limo_data::ChatTokenizer;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn tokenizer_dir() -> PathBuf {
    fixtures().join("qwen2.5-tokenizer")
}

pub fn data(name: &str) -> PathBuf {
    fixtures().join("data").join(name)
}

/// Loading the 7 MB tokenizer.json takes a moment; share one per test binary.
pub fn tokenizer() -> &'static ChatTokenizer {
    static TOKENIZER: OnceLock<ChatTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        ChatTokenizer::from_path(&tokenizer_dir()).expect("fixture tokenizer loads")
    })
}
