//! Random-initialized checkpoints in Hugging Face format with the exact shapes of the
//! Qwen2.5-Instruct family, for tests and benchmarks that cannot download weights.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde_json::{json, Map, Value};

use crate::params::ModelWeights;
use crate::writer::{write_json, ShardedWriter};
use crate::{Error, Qwen2Config, Result};

/// The model shapes `limo init-model` knows.
pub const SHAPES: [&str; 7] = ["tiny", "0.5b", "1.5b", "3b", "7b", "14b", "32b"];

/// `config.json` of Qwen2.5-{size}-Instruct (fields as the Hub publishes them); `tiny` is a
/// 2-layer model with the real vocabulary, small enough to train on a laptop CPU.
pub fn preset_config(shape: &str) -> Result<Value> {
    // (hidden, intermediate, layers, heads, kv heads, vocab, tied, max_window_layers)
    let (h, i, l, nh, nkv, vocab, tied, mwl) = match shape {
        "tiny" => (64, 128, 2, 4, 2, 151936, true, 2),
        "0.5b" => (896, 4864, 24, 14, 2, 151936, true, 21),
        "1.5b" => (1536, 8960, 28, 12, 2, 151936, true, 21),
        "3b" => (2048, 11008, 36, 16, 2, 151936, true, 70),
        "7b" => (3584, 18944, 28, 28, 4, 152064, false, 28),
        "14b" => (5120, 13824, 48, 40, 8, 152064, false, 70),
        "32b" => (5120, 27648, 64, 40, 8, 152064, false, 70),
        other => {
            return Err(Error::Config(format!(
                "unknown shape {other:?}; expected one of {}",
                SHAPES.join(", ")
            )));
        }
    };
    Ok(json!({
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": h,
        "initializer_range": 0.02,
        "intermediate_size": i,
        "max_position_embeddings": 32768,
        "max_window_layers": mwl,
        "model_type": "qwen2",
        "num_attention_heads": nh,
        "num_hidden_layers": l,
        "num_key_value_heads": nkv,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": vocab
    }))
}

/// Fields of config.json that limo reads and a preset leaves out.
const OPTIONAL_FIELDS: [&str; 3] = ["head_dim", "rope_scaling", "rope_parameters"];

/// `preset_config(shape)` with `overrides` (`model.init_overrides`) applied. A key that is
/// neither a field of the preset nor one limo reads is an error: a typo (`hidden_sise`) would
/// otherwise be written into config.json and ignored.
pub fn preset_with_overrides(shape: &str, overrides: &Map<String, Value>) -> Result<Value> {
    let mut config = preset_config(shape)?;
    for (key, value) in overrides {
        if config.get(key).is_none() && !OPTIONAL_FIELDS.contains(&key.as_str()) {
            let mut known: Vec<&str> = config
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.as_str())
                .collect();
            known.extend(OPTIONAL_FIELDS);
            known.sort_unstable();
            return Err(Error::Config(format!(
                "{key}: not a config.json field (one of {})",
                known.join(", ")
            )));
        }
        config[key] = value.clone();
    }
    Ok(config)
}

/// `generation_config.json` of the Qwen2.5-Instruct models.
pub fn generation_config() -> Value {
    json!({
        "bos_token_id": 151643,
        "pad_token_id": 151643,
        "do_sample": true,
        "eos_token_id": [151645, 151643],
        "repetition_penalty": 1.05,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "transformers_version": "4.43.1"
    })
}

/// Writes `config` and weights drawn as transformers initializes Qwen2 (matrices and
/// embedding N(0, initializer_range), biases 0, norms 1) into `dir`, in `dtype`, sharded at
/// `max_shard_bytes`. The same seed gives the same weights.
/// The weights' dtype in a config.json: `torch_dtype`, and `dtype` where the config has it
/// (transformers 5 writes `dtype` and reads it before `torch_dtype`).
pub fn set_dtype(config: &mut Value, dtype: DType) {
    config["torch_dtype"] = json!(dtype_name(dtype));
    if config.get("dtype").is_some() {
        config["dtype"] = json!(dtype_name(dtype));
    }
}

pub fn write_random_checkpoint(
    dir: &Path,
    config: &Value,
    dtype: DType,
    seed: u64,
    max_shard_bytes: usize,
) -> Result<()> {
    let cfg = Qwen2Config::from_json(&config.to_string())?;
    let std = config["initializer_range"].as_f64().unwrap_or(0.02);
    let mut config = config.clone();
    set_dtype(&mut config, dtype);
    let mut writer = ShardedWriter::new(dir, max_shard_bytes)?;
    for (k, spec) in ModelWeights::specs(&cfg).iter().enumerate() {
        let n: usize = spec.shape.iter().product();
        let values: Vec<f32> = if spec.name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if spec.name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            // One stream per tensor: a tensor's values do not depend on the others' sizes.
            let mut rng =
                StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(k as u64));
            let normal = Normal::new(0.0f32, std as f32).expect("positive std");
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        };
        let tensor =
            Tensor::from_vec(values, spec.shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
        writer.add(&spec.name, tensor)?;
    }
    writer.finish()?;
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("generation_config.json"), &generation_config())
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}
