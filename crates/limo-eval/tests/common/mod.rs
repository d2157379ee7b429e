//! The random tiny model the evaluation tests run on.

use std::path::{Path, PathBuf};

use candle_core::DType;
use limo_model::init::{preset_config, write_random_checkpoint};
use tempfile::TempDir;

pub fn tokenizer_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/qwen2.5-tokenizer/tokenizer.json")
}

/// The `tiny` preset made smaller (one layer, hidden 32), real vocabulary and tokenizer;
/// `initializer_range` replaces the preset's when given.
pub fn write_model(dir: &Path, initializer_range: Option<f64>) {
    let mut config = preset_config("tiny").unwrap();
    config["hidden_size"] = 32.into();
    config["intermediate_size"] = 64.into();
    config["num_hidden_layers"] = 1.into();
    if let Some(range) = initializer_range {
        config["initializer_range"] = range.into();
    }
    write_random_checkpoint(dir, &config, DType::F32, 3, usize::MAX).unwrap();
    std::fs::copy(tokenizer_fixture(), dir.join("tokenizer.json")).unwrap();
}

/// A temporary directory with [`write_model`]'s model in its `model` folder.
pub fn model_in_tempdir(initializer_range: Option<f64>) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    write_model(&model, initializer_range);
    (tmp, model)
}
