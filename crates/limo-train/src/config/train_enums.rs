//! The typed choices of the `[train]` section.

use candle_core::DType;

config_enum! {
    /// `train.optimizer_offload`.
    #[derive(Default)]
    pub enum OptimizerOffload {
        #[default]
        None = "none",
        Cpu = "cpu",
    }
}

impl OptimizerOffload {
    pub fn is_none(&self) -> bool {
        *self == OptimizerOffload::None
    }
}

config_enum! {
    /// `train.epoch_tail`.
    #[derive(Default)]
    pub enum EpochTail {
        #[default]
        Wrap = "wrap",
        Repeat = "repeat",
    }
}

impl EpochTail {
    pub fn is_wrap(&self) -> bool {
        *self == EpochTail::Wrap
    }
}

config_enum! {
    /// `train.sampler`.
    #[derive(Default)]
    pub enum SamplerKind {
        #[default]
        Limo = "limo",
        Torch = "torch",
    }
}

impl SamplerKind {
    pub fn is_limo(&self) -> bool {
        *self == SamplerKind::Limo
    }

    pub fn permutation(self) -> limo_data::sampler::Permutation {
        match self {
            SamplerKind::Limo => limo_data::sampler::Permutation::Limo,
            SamplerKind::Torch => limo_data::sampler::Permutation::Torch,
        }
    }
}

config_enum! {
    /// `train.loss_average`.
    #[derive(Default)]
    pub enum LossAverage {
        #[default]
        Tokens = "tokens",
        Sequences = "sequences",
    }
}

impl LossAverage {
    pub fn is_tokens(&self) -> bool {
        *self == LossAverage::Tokens
    }
}

config_enum! {
    /// `train.reduce_dtype`.
    #[derive(Default)]
    pub enum ReduceDtype {
        #[default]
        Fp32 = "fp32",
        Bf16 = "bf16",
    }
}

impl ReduceDtype {
    pub fn is_fp32(&self) -> bool {
        *self == ReduceDtype::Fp32
    }

    /// The wire dtype for gradients whose master dtype is `master` (fp32 keeps f64 runs f64).
    pub fn wire(self, master: DType) -> DType {
        match self {
            ReduceDtype::Fp32 => master,
            ReduceDtype::Bf16 => DType::BF16,
        }
    }

    /// Bytes per element on the wire of a bf16 run (fp32 master), for `limo plan`.
    pub fn bytes(self) -> u64 {
        match self {
            ReduceDtype::Fp32 => 4,
            ReduceDtype::Bf16 => 2,
        }
    }
}

config_enum! {
    /// `train.no_decay`: the parameters weight decay leaves alone, as a transformers version's
    /// `Trainer.get_decay_parameter_names` picks them for a Qwen2 model.
    #[derive(Default)]
    pub enum NoDecay {
        /// Every parameter is decayed (limo's default).
        #[default]
        None = "none",
        /// transformers up to 4.48: names containing "bias" (q, k and v's biases).
        Biases = "biases",
        /// transformers 4.49 to 4.52: also names containing "layernorm" or "rmsnorm" (each
        /// layer's two norms, not the final `model.norm`).
        BiasesAndLayerNorms = "biases_and_layer_norms",
        /// transformers 4.53 on (5.x too): also a name part `norm` or ending in `_norm` (every
        /// norm weight).
        BiasesAndNorms = "biases_and_norms",
    }
}

impl NoDecay {
    pub fn is_none(&self) -> bool {
        *self == NoDecay::None
    }

    /// Whether weight decay applies to the parameter `name` (its checkpoint name), by the
    /// tests transformers runs on the lower-cased name.
    pub fn decays(self, name: &str) -> bool {
        let name = name.to_lowercase();
        let bias = name.contains("bias");
        let layer_norm = name.contains("layernorm") || name.contains("rmsnorm");
        let norm = name
            .split('.')
            .any(|part| part == "norm" || part.ends_with("_norm"));
        !match self {
            NoDecay::None => false,
            NoDecay::Biases => bias,
            NoDecay::BiasesAndLayerNorms => bias || layer_norm,
            NoDecay::BiasesAndNorms => bias || layer_norm || norm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What transformers' `get_decay_parameter_names` returns for a Qwen2 model, by version
    /// (checked on transformers 4.48.3, 4.52.4 and 5.24.0).
    #[test]
    fn no_decay_picks_the_parameters_transformers_leaves_undecayed() {
        let names = [
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.self_attn.k_proj.bias",
            "model.layers.0.self_attn.v_proj.bias",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.norm.weight",
            "lm_head.weight",
        ];
        let undecayed = |choice: NoDecay| -> Vec<usize> {
            (0..names.len())
                .filter(|&i| !choice.decays(names[i]))
                .collect()
        };
        assert_eq!(undecayed(NoDecay::None), Vec::<usize>::new());
        assert_eq!(undecayed(NoDecay::Biases), [3, 4, 5]);
        assert_eq!(undecayed(NoDecay::BiasesAndLayerNorms), [1, 3, 4, 5, 7]);
        assert_eq!(undecayed(NoDecay::BiasesAndNorms), [1, 3, 4, 5, 7, 9]);
        // The name tests, on names of other shapes: a part "norm" or ending in "_norm", in
        // any case; "normal" or "norms" are not norms.
        for (name, decayed) in [
            ("encoder.final_norm.weight", false),
            ("model.Norm.weight", false),
            ("model.normal.weight", true),
            ("model.norms.weight", true),
            ("model.RMSNorm_scale", false),
        ] {
            assert_eq!(NoDecay::BiasesAndNorms.decays(name), decayed, "{name}");
        }
    }
}
