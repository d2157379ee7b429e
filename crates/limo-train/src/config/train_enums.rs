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
