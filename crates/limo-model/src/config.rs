//! `config.json` of a Hugging Face Qwen2 checkpoint.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result};

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
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    use_sliding_window: bool,
    rope_scaling: Option<Value>,
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
        let c: RawConfig =
            serde_json::from_value(raw.clone()).map_err(|e| Error::Config(e.to_string()))?;
        let is_qwen2 = c.model_type.as_deref() == Some("qwen2")
            || c.architectures
                .iter()
                .flatten()
                .any(|a| a == "Qwen2ForCausalLM");
        if !is_qwen2 {
            let found = c
                .model_type
                .or(c.architectures.and_then(|a| a.first().cloned()));
            return Err(Error::Config(format!(
                "architecture {} is not supported: limo trains Qwen2 (model_type \"qwen2\")",
                found.as_deref().unwrap_or("(none given)")
            )));
        }
        if c.use_sliding_window {
            return Err(Error::Config(
                "use_sliding_window = true is not supported".into(),
            ));
        }
        if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(Error::Config("rope_scaling is not supported".into()));
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
        let rope_theta = c
            .rope_theta
            .or(c.rope_parameters.as_ref().and_then(|p| p.rope_theta))
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
            tie_word_embeddings: c.tie_word_embeddings,
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
        if self.head_dim * self.num_attention_heads != self.hidden_size {
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
        Ok(())
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
                "invalid type",
            ),
        ] {
            let edited = BASE.replace(from, to);
            let err = Qwen2Config::from_json(&format!("{edited}, \"rope_theta\": 1.0}}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{to}: {err}");
        }
    }
}
