//! Reading and writing Hugging Face checkpoint files: sharding round trips, and every kind of
//! broken checkpoint gives an error that names the file and the tensor.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use limo_model::checkpoint::{load_checkpoint, INDEX_FILE};
use limo_model::init::{preset_config, write_random_checkpoint};
use limo_model::writer::ShardedWriter;
use limo_model::{ModelWeights, Qwen2Config};

fn golden_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/qwen2-tiny/model")
}

/// The golden model's config and weights, and a `ShardedWriter` into `dir` that already holds
/// the config: the tests write the weights, as they are or broken.
fn golden_writer(dir: &Path, max_shard_bytes: usize) -> (ShardedWriter, Qwen2Config, ModelWeights) {
    let (cfg, weights) = load_checkpoint(&golden_model(), DType::F32, &Device::Cpu).unwrap();
    std::fs::copy(golden_model().join("config.json"), dir.join("config.json")).unwrap();
    (
        ShardedWriter::new(dir, max_shard_bytes).unwrap(),
        cfg,
        weights,
    )
}

/// Writes the golden model again, in `dtype`, through `ShardedWriter`.
fn rewrite_golden(dir: &Path, max_shard_bytes: usize, dtype: DType) {
    let (mut writer, cfg, weights) = golden_writer(dir, max_shard_bytes);
    for (name, t) in weights.named(&cfg) {
        writer.add(&name, t.to_dtype(dtype).unwrap()).unwrap();
    }
    writer.finish().unwrap();
}

/// The values of `t`, flattened: the tests compare weights for exact equality.
fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_same_weights(a: &ModelWeights, b: &ModelWeights, cfg: &Qwen2Config) {
    for ((name, x), (_, y)) in a.named(cfg).into_iter().zip(b.named(cfg)) {
        assert!(values(x) == values(y), "{name}");
    }
}

/// Loading `dir` fails with an error that names every one of `parts`.
fn assert_load_fails_naming(dir: &Path, parts: &[&str]) {
    let err = load_checkpoint(dir, DType::F32, &Device::Cpu)
        .expect_err("load must fail")
        .to_string();
    for part in parts {
        assert!(err.contains(part), "{part:?} is not in: {err}");
    }
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
    // A whole model.safetensors beside the shards is what transformers loads, so limo too:
    // here the golden's weights in bf16 (rounded, so unlike the f32 shards).
    let whole = tempfile::tempdir().unwrap();
    rewrite_golden(whole.path(), usize::MAX, DType::BF16);
    let single = whole.path().join("model.safetensors");
    std::fs::copy(&single, dir.path().join("model.safetensors")).unwrap();
    let (_, bf16) = load_checkpoint(whole.path(), DType::F32, &Device::Cpu).unwrap();
    let (_, both) = load_checkpoint(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_same_weights(&bf16, &both, &cfg);
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
    assert!(values(&reread.embed) == values(&rounded));
    assert!(values(&reread.embed) != values(&original.embed));
}

#[test]
fn truncated_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    rewrite_golden(dir.path(), usize::MAX, DType::F32);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert_load_fails_naming(dir.path(), &["model.safetensors", "truncated"]);
}

#[test]
fn wrong_shape_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, cfg, weights) = golden_writer(dir.path(), usize::MAX);
    for (name, t) in weights.named(&cfg) {
        let t = if name == "model.layers.1.mlp.up_proj.weight" {
            t.narrow(0, 0, 100).unwrap()
        } else {
            t.clone()
        };
        writer.add(&name, t).unwrap();
    }
    writer.finish().unwrap();
    assert_load_fails_naming(
        dir.path(),
        &["model.layers.1.mlp.up_proj.weight", "[100, 64]"],
    );
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let write = |skip: &str, extra: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, cfg, weights) = golden_writer(dir.path(), usize::MAX);
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
    assert_load_fails_naming(
        dir.path(),
        &["missing tensor model.layers.0.self_attn.k_proj.bias"],
    );
    let dir = write("", Some("model.layers.7.mlp.up_proj.weight"));
    assert_load_fails_naming(
        dir.path(),
        &["unexpected tensor model.layers.7.mlp.up_proj.weight"],
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
    assert_load_fails_naming(dir.path(), &[INDEX_FILE, "bad index"]);
    std::fs::write(&index_path, "{\"weight_map\": 3}").unwrap();
    assert_load_fails_naming(dir.path(), &[INDEX_FILE, "bad index"]);
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
    assert_load_fails_naming(dir.path(), &["model.embed_tokens.weight", "[512, 96]"]);
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
