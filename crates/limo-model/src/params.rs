//! The parameters of a Qwen2 model under their Hugging Face names, grouped the way ZeRO-3 will
//! shard them: the embedding, one group per decoder layer, the final norm and the head.
//! Gradients use the same types.

use candle_core::Tensor;

use crate::{Qwen2Config, Result};

/// One parameter: its Hugging Face name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Tensor names of a decoder layer after `model.layers.{i}.`, in [`LayerWeights`] field order.
pub const LAYER_SUFFIXES: [&str; 12] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// The weights (or gradients) of one decoder layer. Linear weights are `[out, in]` as in
/// PyTorch.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_norm: Tensor,
    pub q_weight: Tensor,
    pub q_bias: Tensor,
    pub k_weight: Tensor,
    pub k_bias: Tensor,
    pub v_weight: Tensor,
    pub v_bias: Tensor,
    pub o_weight: Tensor,
    pub post_norm: Tensor,
    pub gate_weight: Tensor,
    pub up_weight: Tensor,
    pub down_weight: Tensor,
}

impl LayerWeights {
    /// The tensors in [`LAYER_SUFFIXES`] order.
    pub fn tensors(&self) -> [&Tensor; 12] {
        [
            &self.input_norm,
            &self.q_weight,
            &self.q_bias,
            &self.k_weight,
            &self.k_bias,
            &self.v_weight,
            &self.v_bias,
            &self.o_weight,
            &self.post_norm,
            &self.gate_weight,
            &self.up_weight,
            &self.down_weight,
        ]
    }

    /// Builds from tensors in [`LAYER_SUFFIXES`] order.
    pub fn from_tensors(t: [Tensor; 12]) -> Self {
        let [input_norm, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, o_weight, post_norm, gate_weight, up_weight, down_weight] =
            t;
        Self {
            input_norm,
            q_weight,
            q_bias,
            k_weight,
            k_bias,
            v_weight,
            v_bias,
            o_weight,
            post_norm,
            gate_weight,
            up_weight,
            down_weight,
        }
    }

    /// Names and shapes of layer `index`.
    pub fn specs(cfg: &Qwen2Config, index: usize) -> Vec<ParamSpec> {
        let (h, i, q, kv) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.q_dim(),
            cfg.kv_dim(),
        );
        let shapes: [Vec<usize>; 12] = [
            vec![h],
            vec![q, h],
            vec![q],
            vec![kv, h],
            vec![kv],
            vec![kv, h],
            vec![kv],
            vec![h, q],
            vec![h],
            vec![i, h],
            vec![i, h],
            vec![h, i],
        ];
        LAYER_SUFFIXES
            .iter()
            .zip(shapes)
            .map(|(suffix, shape)| ParamSpec {
                name: format!("model.layers.{index}.{suffix}"),
                shape,
            })
            .collect()
    }
}

/// All weights (or gradients) of a Qwen2 causal LM. `lm_head` is `None` when the head is tied
/// to the embedding.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    pub lm_head: Option<Tensor>,
}

impl ModelWeights {
    /// Every parameter of `cfg` in checkpoint order: embedding, layers, final norm, head.
    pub fn specs(cfg: &Qwen2Config) -> Vec<ParamSpec> {
        let mut specs = vec![ParamSpec {
            name: EMBED.into(),
            shape: vec![cfg.vocab_size, cfg.hidden_size],
        }];
        for layer in 0..cfg.num_hidden_layers {
            specs.extend(LayerWeights::specs(cfg, layer));
        }
        specs.push(ParamSpec {
            name: FINAL_NORM.into(),
            shape: vec![cfg.hidden_size],
        });
        if !cfg.tie_word_embeddings {
            specs.push(ParamSpec {
                name: LM_HEAD.into(),
                shape: vec![cfg.vocab_size, cfg.hidden_size],
            });
        }
        specs
    }

    /// Builds the weights by asking `load` for each parameter of [`Self::specs`] in order.
    pub fn build(
        cfg: &Qwen2Config,
        mut load: impl FnMut(&ParamSpec) -> Result<Tensor>,
    ) -> Result<Self> {
        let mut specs = Self::specs(cfg).into_iter();
        let mut next = || load(&specs.next().expect("specs cover every parameter"));
        let embed = next()?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            let tensors: Vec<Tensor> = (0..LAYER_SUFFIXES.len())
                .map(|_| next())
                .collect::<Result<_>>()?;
            let tensors: [Tensor; 12] = tensors.try_into().expect("12 layer tensors");
            layers.push(LayerWeights::from_tensors(tensors));
        }
        let final_norm = next()?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(next()?)
        };
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// The tensors in [`Self::specs`] order, with their names.
    pub fn named<'a>(&'a self, cfg: &Qwen2Config) -> Vec<(String, &'a Tensor)> {
        let mut tensors = vec![&self.embed];
        for layer in &self.layers {
            tensors.extend(layer.tensors());
        }
        tensors.push(&self.final_norm);
        tensors.extend(self.lm_head.as_ref());
        Self::specs(cfg)
            .into_iter()
            .map(|s| s.name)
            .zip(tensors)
            .collect()
    }

    /// The output projection: `lm_head`, or the embedding when tied.
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}
