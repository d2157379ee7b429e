//! `config.json` of a Hugging Face Qwen2 checkpoint.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

/// Bounds far past any published model (the largest have ~130 layers and ~2e12 parameters)
/// that keep every byte count in a u64 and the per-tensor lists small: a config beyond them is
/// a typo, and without them it would abort on an allocation or wrap around.
const MAX_LAYERS: usize = 1 << 16;
const MAX_PARAMETERS: f64 = (1u64 << 50) as f64;

/// The fields of a Qwen2 `config.json` that the math depends on. The whole file is kept in
/// `raw` so that an exported checkpoint carries every field the user's file had.
#[derive(Debug, Clone)]
pub struct Qwen2Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub raw: Value,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    // null is transformers' None: false, as its default
    tie_word_embeddings: Option<bool>,
    use_sliding_window: Option<bool>,
    rope_scaling: Option<Value>,
    hidden_act: Option<String>,
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

impl Qwen2Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
        Self::from_json(&text).map_err(|e| Error::file(path, e.to_string()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: Value =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("invalid JSON: {e}")))?;
        let c: RawConfig = serde_path_to_error::deserialize(raw.clone())
            .map_err(|e| Error::Config(format!("field {}: {}", e.path(), e.inner())))?;
        // model_type decides, as it does for transformers' AutoConfig; architectures only
        // when it is absent.
        let is_qwen2 = match c.model_type.as_deref() {
            Some(kind) => kind == "qwen2",
            None => c
                .architectures
                .iter()
                .flatten()
                .any(|a| a == "Qwen2ForCausalLM"),
        };
        if !is_qwen2 {
            let found = c
                .model_type
                .or(c.architectures.and_then(|a| a.first().cloned()));
            return Err(Error::Config(format!(
                "architecture {} is not supported: limo trains Qwen2 (model_type \"qwen2\")",
                found.as_deref().unwrap_or("(none given)")
            )));
        }
        // transformers maps both names to SiLU; any other would be computed as SiLU without a word.
        if let Some(act) = c.hidden_act.as_deref() {
            if act != "silu" && act != "swish" {
                return Err(Error::Config(format!(
                    "hidden_act {act:?} is not supported: Qwen2 uses \"silu\""
                )));
            }
        }
        if c.use_sliding_window == Some(true) {
            return Err(Error::Config(
                "use_sliding_window = true is not supported".into(),
            ));
        }
        // `{"rope_type": "default"}` (or `"type"`) is plain RoPE, as transformers reads it.
        let scaling_kind = |v: &Value| v.get("rope_type").or(v.get("type")).cloned();
        match &c.rope_scaling {
            None | Some(Value::Null) => {}
            Some(v) if scaling_kind(v) == Some(Value::from("default")) => {}
            Some(v) => {
                return Err(Error::Config(format!(
                    "rope_scaling {v} is not supported (plain RoPE only)"
                )))
            }
        }
        if let Some(kind) = c
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_type.as_deref())
        {
            if kind != "default" {
                return Err(Error::Config(format!(
                    "rope_parameters.rope_type {kind:?} is not supported"
                )));
            }
        }
        // transformers 5 reads rope_parameters, a top-level rope_theta only without them.
        let rope_theta = (c.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .or(c.rope_theta)
            .ok_or_else(|| {
                Error::Config("rope_theta is missing (top level or rope_parameters)".into())
            })?;
        let kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        let config = Qwen2Config {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: kv_heads,
            head_dim: c
                .head_dim
                .unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
            vocab_size: c.vocab_size,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            raw,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be positive"));
        }
        if self.num_hidden_layers > MAX_LAYERS {
            return bad(format!(
                "num_hidden_layers {} is more than limo handles ({MAX_LAYERS})",
                self.num_hidden_layers
            ));
        }
        if self.head_dim.checked_mul(self.num_attention_heads) != Some(self.hidden_size) {
            return bad(format!(
                "hidden_size {} is not num_attention_heads {} x head_dim {}",
                self.hidden_size, self.num_attention_heads, self.head_dim
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return bad("rms_norm_eps and rope_theta must be positive".into());
        }
        let params = self.parameter_count_f64();
        if params > MAX_PARAMETERS {
            return bad(format!(
                "{params:.3e} parameters (hidden_size {}, intermediate_size {}, vocab_size {}) \
                 are more than limo handles ({MAX_PARAMETERS:.3e})",
                self.hidden_size, self.intermediate_size, self.vocab_size
            ));
        }
        Ok(())
    }

    /// The parameter count in f64, which cannot overflow, for the bound above; exact counts
    /// come from the parameter specs once the config is known to be in range.
    fn parameter_count_f64(&self) -> f64 {
        let [h, i, v, q, kv] = [
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            self.q_dim(),
            self.kv_dim(),
        ]
        .map(|x| x as f64);
        let layer = h * (q + 2.0 * kv) + (q + 2.0 * kv) + q * h + 3.0 * h * i + 2.0 * h;
        let head = if self.tie_word_embeddings { 0.0 } else { v * h };
        v * h + self.num_hidden_layers as f64 * layer + h + head
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 512, "rms_norm_eps": 1e-6, "tie_word_embeddings": true"#;

    #[test]
    fn rope_theta_at_top_level_or_in_rope_parameters() {
        let top = Qwen2Config::from_json(&format!("{BASE}, \"rope_theta\": 1000.0}}")).unwrap();
        assert_eq!(top.rope_theta, 1000.0);
        let nested = format!(
            "{BASE}, \"rope_parameters\": {{\"rope_theta\": 5.0, \"rope_type\": \"default\"}}}}"
        );
        assert_eq!(Qwen2Config::from_json(&nested).unwrap().rope_theta, 5.0);
        assert_eq!(top.head_dim, 16);
        assert!(top.tie_word_embeddings);
        // Both: rope_parameters, as transformers 5 reads them.
        let both =
            format!("{BASE}, \"rope_theta\": 1.0, \"rope_parameters\": {{\"rope_theta\": 5.0}}}}");
        assert_eq!(Qwen2Config::from_json(&both).unwrap().rope_theta, 5.0);
    }

    /// What transformers reads as its defaults: null flags, plain RoPE spelled out.
    #[test]
    fn nulls_and_default_rope_scaling_are_accepted() {
        let untied = BASE.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": null",
        );
        let text = format!(
            "{untied}, \"rope_theta\": 1.0, \"use_sliding_window\": null, \
             \"rope_scaling\": {{\"rope_type\": \"default\"}}}}"
        );
        let c = Qwen2Config::from_json(&text).unwrap();
        assert!(!c.tie_word_embeddings);
        let yarn = text.replace("\"default\"", "\"yarn\"");
        let err = Qwen2Config::from_json(&yarn).unwrap_err().to_string();
        assert!(
            err.contains("rope_scaling {\"rope_type\":\"yarn\"} is not supported"),
            "{err}"
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let missing = Qwen2Config::from_json(&format!("{BASE}}}"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("rope_theta"), "{missing}");
        // BASE with one edit, completed with its rope_theta.
        for (from, to, expected) in [
            ("qwen2", "llama", "llama"),
            (
                "\"hidden_size\": 64",
                "\"hidden_size\": 65",
                "hidden_size 65",
            ),
            (
                "\"hidden_size\": 64",
                "\"hidden_size\": \"64\"",
                "field hidden_size: invalid type: string \"64\"",
            ),
            (
                "\"num_hidden_layers\": 2",
                "\"num_hidden_layers\": -1",
                "field num_hidden_layers: invalid value: integer `-1`",
            ),
            // model_type decides over architectures.
            (
                "\"qwen2\"",
                "\"qwen3\", \"architectures\": [\"Qwen2ForCausalLM\"]",
                "architecture qwen3",
            ),
            (
                "\"vocab_size\": 512",
                "\"vocab_size\": 512, \"hidden_act\": \"gelu\"",
                "hidden_act \"gelu\"",
            ),
            // Once aborted on allocating the per-layer tensor list.
            (
                "\"num_hidden_layers\": 2",
                "\"num_hidden_layers\": 100000000",
                "num_hidden_layers 100000000",
            ),
            // Once wrapped around to a 0.00B-parameter plan.
            (
                "\"vocab_size\": 512",
                "\"vocab_size\": 18446744073709551615",
                "vocab_size 18446744073709551615",
            ),
            (
                "\"hidden_size\": 64, \"intermediate_size\": 128",
                "\"hidden_size\": 4294967296, \"intermediate_size\": 4294967296",
                "more than limo handles",
            ),
            (
                "\"num_attention_heads\": 4",
                "\"num_attention_heads\": 4, \"head_dim\": 4611686018427387904",
                "head_dim 4611686018427387904",
            ),
        ] {
            let edited = BASE.replace(from, to);
            let err = Qwen2Config::from_json(&format!("{edited}, \"rope_theta\": 1.0}}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{to}: {err}");
        }
    }

    #[test]
    fn silu_by_either_name_and_architectures_without_model_type() {
        for act in ["silu", "swish"] {
            let text = format!("{BASE}, \"rope_theta\": 1.0, \"hidden_act\": \"{act}\"}}");
            assert!(Qwen2Config::from_json(&text).is_ok(), "{act}");
        }
        let text = BASE.replace(
            "\"model_type\": \"qwen2\"",
            "\"architectures\": [\"Qwen2ForCausalLM\"]",
        );
        let cfg = Qwen2Config::from_json(&format!("{text}, \"rope_theta\": 1.0}}")).unwrap();
        assert_eq!(cfg.num_hidden_layers, 2);
    }
}
