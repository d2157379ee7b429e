//! Reading and writing Hugging Face checkpoint files: sharding round trips, and every kind of
//! broken checkpoint gives an error that names the file and the tensor.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use limo_model::checkpoint::{load_checkpoint, INDEX_FILE};
use limo_model::init::{preset_config, write_random_checkpoint};
use limo_model::writer::ShardedWriter;
use limo_model::ModelWeights;

fn golden_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/qwen2-tiny/model")
}

/// Copies the golden model's config and writes its weights through `ShardedWriter`.
fn rewrite_golden(dir: &Path, max_shard_bytes: usize, dtype: DType) {
    let (cfg, weights) = load_checkpoint(&golden_model(), DType::F32, &Device::Cpu).unwrap();
    std::fs::copy(golden_model().join("config.json"), dir.join("config.json")).unwrap();
    let mut writer = ShardedWriter::new(dir, max_shard_bytes).unwrap();
    for (name, t) in weights.named(&cfg) {
        writer.add(&name, t.to_dtype(dtype).unwrap()).unwrap();
    }
    writer.finish().unwrap();
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_same_weights(a: &ModelWeights, b: &ModelWeights, cfg: &limo_model::Qwen2Config) {
    for ((name, x), (_, y)) in a.named(cfg).into_iter().zip(b.named(cfg)) {
        assert_eq!(max_abs_diff(x, y), 0.0, "{name}");
    }
}

fn load_err(dir: &Path) -> String {
    load_checkpoint(dir, DType::F32, &Device::Cpu)
        .expect_err("load must fail")
        .to_string()
}

#[test]
fn sharded_checkpoint_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_golden(dir.path(), 40_000, DType::F32);
    let shards: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() > 3, "small shards: {shards:?}");
    assert!(shards
        .iter()
        .all(|n| n.ends_with(&format!("-of-{:05}.safetensors", shards.len()))));
    assert!(dir.path().join(INDEX_FILE).exists());
    let (cfg, original) = load_checkpoint(&golden_model(), DType::F32, &Device::Cpu).unwrap();
    let (_, reread) = load_checkpoint(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_same_weights(&original, &reread, &cfg);
}

#[test]
fn bf16_checkpoint_loads_as_rounded_values() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_golden(dir.path(), usize::MAX, DType::BF16);
    let (_, original) = load_checkpoint(&golden_model(), DType::F32, &Device::Cpu).unwrap();
    let (_, reread) = load_checkpoint(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let rounded = original
        .embed
        .to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(max_abs_diff(&reread.embed, &rounded), 0.0);
    assert!(max_abs_diff(&reread.embed, &original.embed) > 0.0);
}

#[test]
fn truncated_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_golden(dir.path(), usize::MAX, DType::F32);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, weights) = load_checkpoint(&golden_model(), DType::F32, &Device::Cpu).unwrap();
    std::fs::copy(
        golden_model().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let mut writer = ShardedWriter::new(dir.path(), usize::MAX).unwrap();
    for (name, t) in weights.named(&cfg) {
        let t = if name == "model.layers.1.mlp.up_proj.weight" {
            t.narrow(0, 0, 100).unwrap()
        } else {
            t.clone()
        };
        writer.add(&name, t).unwrap();
    }
    writer.finish().unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("[100, 64]"),
        "{err}"
    );
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let (cfg, weights) = load_checkpoint(&golden_model(), DType::F32, &Device::Cpu).unwrap();
    let write = |skip: &str, extra: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            golden_model().join("config.json"),
            dir.path().join("config.json"),
        )
        .unwrap();
        let mut writer = ShardedWriter::new(dir.path(), usize::MAX).unwrap();
        for (name, t) in weights.named(&cfg) {
            if name != skip {
                writer.add(&name, t.clone()).unwrap();
            }
        }
        if let Some(extra) = extra {
            writer.add(extra, weights.final_norm.clone()).unwrap();
        }
        writer.finish().unwrap();
        dir
    };
    let dir = write("model.layers.0.self_attn.k_proj.bias", None);
    let err = load_err(dir.path());
    assert!(
        err.contains("missing tensor model.layers.0.self_attn.k_proj.bias"),
        "{err}"
    );
    let dir = write("", Some("model.layers.7.mlp.up_proj.weight"));
    let err = load_err(dir.path());
    assert!(
        err.contains("unexpected tensor model.layers.7.mlp.up_proj.weight"),
        "{err}"
    );
}

#[test]
fn bad_index_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_golden(dir.path(), 40_000, DType::F32);
    let index_path = dir.path().join(INDEX_FILE);
    let text = std::fs::read_to_string(&index_path).unwrap();
    let moved = text.replacen("model-00001-of", "model-00002-of", 1);
    std::fs::write(&index_path, moved).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains(INDEX_FILE) && err.contains("bad index"),
        "{err}"
    );
    std::fs::write(&index_path, "{\"weight_map\": 3}").unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains(INDEX_FILE) && err.contains("bad index"),
        "{err}"
    );
}

#[test]
fn config_with_wrong_hidden_size_names_the_tensor_and_the_config() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_golden(dir.path(), usize::MAX, DType::F32);
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        text.replace("\"hidden_size\": 64", "\"hidden_size\": 96"),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.embed_tokens.weight") && err.contains("[512, 96]"),
        "{err}"
    );
}

#[test]
fn random_init_is_seeded_and_shaped_like_qwen() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = preset_config("0.5b").unwrap();
    config["num_hidden_layers"] = 1.into();
    config["vocab_size"] = 1000.into();
    write_random_checkpoint(dir.path(), &config, DType::BF16, 7, usize::MAX).unwrap();
    let (cfg, w) = load_checkpoint(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads
        ),
        (896, 14, 2)
    );
    assert!(w.lm_head.is_none(), "0.5B ties its head");
    let std = w
        .embed
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt();
    assert!((std - 0.02).abs() < 0.001, "embedding std {std}");
    let ones = w.layers[0]
        .input_norm
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(ones, 896.0);
    let again = tempfile::tempdir().unwrap();
    write_random_checkpoint(again.path(), &config, DType::BF16, 7, usize::MAX).unwrap();
    let a = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let b = std::fs::read(again.path().join("model.safetensors")).unwrap();
    assert!(a == b, "same seed, same bytes");
}
