//! The run configuration: a TOML file with `[model]`, `[data]`, `[train]` and `[output]`
//! sections. Unknown keys are errors that name the key; `--set section.key=value` overrides any
//! field before validation.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::DType;
use limo_data::DataConfig;
use serde::{Deserialize, Serialize};

pub use crate::schedule::Schedule;

/// A config value that is one of a few names. The serde names are the only list of them: a
/// bad value fails the parse with "unknown variant `x`, expected one of ..." (named by file and
/// key), so `validate` never matches strings; `as_str` and Display give the name back.
macro_rules! config_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The value as the config file spells it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Compares with the config file's spelling (`schedule == "cosine"`).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}
pub(crate) use config_enum;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    /// The dataset, as `limo data` reads it (see limo-data's `DataConfig`). A `path` of
    /// `builtin:arithmetic` generates the embedded default's arithmetic word problems.
    pub data: DataConfig,
    pub train: TrainSection,
    pub output: OutputSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face checkpoint directory to fine-tune. Leave out to start from random weights
    /// of `init` (tests, benchmarks, the embedded default).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Qwen2.5 shape for random initialization: tiny, 0.5b, 1.5b, 3b, 7b, 14b, 32b.
    #[serde(default)]
    pub init: Option<String>,
    /// Overrides of the `init` shape's config.json fields (e.g. `{ hidden_size = 128 }`).
    #[serde(default)]
    pub init_overrides: toml::Table,
    /// Seed of the random initialization.
    #[serde(default)]
    pub init_seed: u64,
    /// tokenizer.json (or a directory holding one); default: the model directory's. The
    /// embedded default uses `builtin:qwen2.5`, the Qwen2.5 tokenizer compiled into limo.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Compute dtype: f32 or f64 on CPU; bf16 (or f32) on CUDA. Master weights and Adam
    /// moments are f32 (f64 for f64).
    #[serde(default)]
    pub dtype: ModelDtype,
    /// Where the forward and backward run: "cpu", or "cuda" (rank r of a node uses GPU
    /// LOCAL_RANK; needs a build with `--features cuda`).
    #[serde(default)]
    pub device: DeviceKind,
}

impl ModelSection {
    /// config.json of `init` with `init_overrides` applied.
    pub fn init_config(&self) -> anyhow::Result<serde_json::Value> {
        let shape = self.init.as_deref().context("model.init is not set")?;
        let serde_json::Value::Object(overrides) = serde_json::to_value(&self.init_overrides)?
        else {
            bail!("model.init_overrides must be a table");
        };
        Ok(limo_model::init::preset_with_overrides(shape, &overrides)?)
    }
}

config_enum! {
    /// `model.dtype`.
    #[derive(Default)]
    pub enum ModelDtype {
        #[default]
        F32 = "f32",
        F64 = "f64",
        Bf16 = "bf16",
    }
}

impl ModelDtype {
    pub fn dtype(self) -> DType {
        match self {
            ModelDtype::F32 => DType::F32,
            ModelDtype::F64 => DType::F64,
            ModelDtype::Bf16 => DType::BF16,
        }
    }
}

config_enum! {
    /// `model.device`: the kind of device; which GPU a rank uses comes from LOCAL_RANK.
    #[derive(Default)]
    pub enum DeviceKind {
        #[default]
        Cpu = "cpu",
        Cuda = "cuda",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Peak learning rate.
    pub lr: f64,
    /// cosine, linear or constant (after warmup).
    #[serde(default)]
    pub schedule: Schedule,
    /// Where the cosine ends, as a share of `lr` (transformers' `cosine_with_min_lr` with
    /// `min_lr_rate`): 0 (the default) decays to 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_lr_rate: f64,
    /// Linear warmup steps: update k < warmup uses lr * k / warmup (update 0 uses lr 0).
    #[serde(default)]
    pub warmup_steps: usize,
    /// Warmup as a share of the run's steps (transformers' warmup_ratio): ceil(ratio x total
    /// steps), counted once the data is read. Give it or warmup_steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    /// Passes over the dataset.
    #[serde(default = "one")]
    pub epochs: usize,
    /// Stop after this many optimizer steps (default: epochs x steps per epoch).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Examples (rows) per micro-batch on each rank (per GPU). A step consumes
    /// `batch_size x grad_accum x world size` rows (or `global_batch_size`).
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step. The step's loss is normalized over all its
    /// micro-batches (`loss_average`), not a mean of micro-batch means.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Rows per optimizer step over all ranks, whatever the world size: `grad_accum` follows
    /// as `global_batch_size / (batch_size x world size)`, which must divide evenly. A recipe
    /// then trains the same trajectory on 8 GPUs as on 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch_size: Option<usize>,
    /// Decoupled weight decay (AdamW), applied to every parameter but those of `no_decay`.
    #[serde(default)]
    pub weight_decay: f64,
    /// The parameters weight decay skips: "none" (the default: every one), "biases",
    /// "biases_and_layer_norms" or "biases_and_norms", as transformers' Trainer up to 4.48,
    /// 4.49 to 4.52, and from 4.53 on leaves them out.
    #[serde(default, skip_serializing_if = "NoDecay::is_none")]
    pub no_decay: NoDecay,
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_eps")]
    pub adam_eps: f64,
    /// Validation (with `data.val_size`): the loss on the held-out rows every this many steps
    /// (0: only after the last step, as always with `data.val_size`), logged as `eval_loss`.
    /// Changes no number of the training.
    #[serde(default, skip_serializing_if = "is_zero_steps")]
    pub eval_steps: usize,
    /// Validation at the end of every epoch too.
    #[serde(default, skip_serializing_if = "is_false")]
    pub eval_every_epoch: bool,
    /// Clip the global gradient norm to this (0 = no clipping).
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Seed of the data order.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Shuffle the examples every epoch (false: file order).
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// An epoch's last step when the rows do not fill it: "wrap" (the default: it goes on
    /// into the next epoch's order) or "repeat" (as transformers' Trainer: the epoch's first
    /// rows fill it up to `TrainSection::epoch_tail_rows` and the next epoch starts on the next
    /// step: every epoch is then its own ceil(rows / rows per step) steps).
    #[serde(default, skip_serializing_if = "EpochTail::is_wrap")]
    pub epoch_tail: EpochTail,
    /// How each epoch's shuffle is drawn: "limo" (the default) or "torch" (as transformers'
    /// Trainer: torch.randperm(rows) seeded `seed` + epoch; with the same seed and rows in the
    /// same order, each epoch visits them in the order the transformers run did).
    #[serde(default, skip_serializing_if = "SamplerKind::is_limo")]
    pub sampler: SamplerKind,
    /// Tokens per chunk of the fused head + loss.
    #[serde(default = "default_loss_chunk")]
    pub loss_chunk: usize,
    /// What the step's loss averages over: "tokens" (the default: every target token of the
    /// step weighs the same) or "sequences" (every example weighs the same: the mean over the
    /// step's examples of each one's mean token loss, as LIMO's own run computed it).
    #[serde(default, skip_serializing_if = "LossAverage::is_tokens")]
    pub loss_average: LossAverage,
    /// Keep only each layer's input (and its attention's output: `recompute_attention`) in the
    /// forward and recompute the layer in the backward (less activation memory, one more
    /// forward): `true` (every layer), `false`, a number of layers (the first ones), or
    /// `"auto"` (the fewest with which `limo plan` fits the GPU). Does not change the numbers.
    #[serde(default)]
    pub activation_checkpointing: Checkpointing,
    /// With activation checkpointing, recompute each layer's attention in the backward too.
    /// false (the default): the forward also keeps the attention's output and log-sum-exp
    /// (2 B x q_dim + 4 B x heads per token per layer) and the recompute skips the attention
    /// forward, a quarter to a third of a layer's FLOPs at 16k tokens. Does not change the
    /// numbers.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recompute_attention: bool,
    /// The dtype gradients cross the reduce-scatter in: "fp32" (the default: every rank's
    /// partial sum exact to fp32) or "bf16" (half the bytes on the wire, FSDP's reduce_dtype;
    /// each partial sum rounded to bf16 before it is added).
    #[serde(default, skip_serializing_if = "ReduceDtype::is_fp32")]
    pub reduce_dtype: ReduceDtype,
    /// Where each rank keeps its fp32 master weights and Adam moments: "none" (on its device,
    /// the default) or "cpu" (host memory; AdamW runs on the host's cores, the device keeps the
    /// compute slice and the gradient accumulator). Changes no number.
    #[serde(default, skip_serializing_if = "OptimizerOffload::is_none")]
    pub optimizer_offload: OptimizerOffload,
}

/// The most rows one optimizer step takes over all ranks (LIMO's recipe takes 32).
pub const MAX_ROWS_PER_STEP: usize = 1 << 24;

impl TrainSection {
    /// Rows one optimizer step consumes over all ranks: `global_batch_size`, or else
    /// batch_size x grad_accum x world.
    pub fn rows_per_step(&self, world_size: usize) -> anyhow::Result<usize> {
        let t = self;
        let per_micro_batch = t.batch_size.checked_mul(world_size);
        if let Some(global) = t.global_batch_size {
            if !per_micro_batch.is_some_and(|p| p > 0 && global % p == 0) {
                bail!(
                    "train.global_batch_size {global} is not a multiple of batch_size {} x {world_size} ranks: \
                     choose a batch_size and a number of ranks whose product divides it",
                    t.batch_size
                );
            }
        }
        let rows = match t.global_batch_size {
            Some(global) => global,
            None => per_micro_batch
                .and_then(|n| n.checked_mul(t.grad_accum))
                .unwrap_or(usize::MAX),
        };
        // A step's rows are listed (8 bytes each) before its first micro-batch.
        if rows > MAX_ROWS_PER_STEP {
            bail!(
                "train: {rows} rows per optimizer step (global_batch_size, or batch_size {} x \
                 grad_accum {} x {world_size} ranks) is more than limo handles ({MAX_ROWS_PER_STEP})",
                t.batch_size,
                t.grad_accum
            );
        }
        Ok(rows)
    }

    /// With `epoch_tail = "repeat"`, an epoch's last step is filled up to a multiple of this
    /// many rows: the whole step with `global_batch_size` (the run it copies has one
    /// micro-batch per step), else as transformers' Trainer: one micro-batch on every rank
    /// (accelerate pads the last round on many ranks; with gradient accumulation the epoch's
    /// last step then runs fewer micro-batches), nothing on one rank (its last micro-batch is
    /// short).
    pub fn epoch_tail_rows(&self, world_size: usize) -> anyhow::Result<usize> {
        match self.global_batch_size {
            Some(_) => self.rows_per_step(world_size),
            None if world_size == 1 => Ok(1),
            None => Ok(self.batch_size.saturating_mul(world_size)),
        }
    }

    /// Warmup steps of a run of `total_steps`: `warmup_steps`, or what `warmup_ratio` makes of
    /// it (ceil, as transformers' `get_warmup_steps`).
    pub fn warmup_steps_of(&self, total_steps: usize) -> usize {
        match self.warmup_ratio {
            Some(ratio) => (ratio * total_steps as f64).ceil() as usize,
            None => self.warmup_steps,
        }
    }

    /// Micro-batches per optimizer step on `world_size` ranks: `grad_accum`, or what
    /// `global_batch_size` makes of it.
    pub fn grad_accum_at(&self, world_size: usize) -> anyhow::Result<usize> {
        let rows = self.rows_per_step(world_size)?;
        match self.batch_size.checked_mul(world_size) {
            Some(per_micro_batch) if per_micro_batch > 0 => Ok(rows / per_micro_batch),
            _ => bail!(
                "{world_size} ranks of batch_size {}: no micro-batch",
                self.batch_size
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Run directory: metrics.jsonl, loss.png, checkpoints/, model/ (the export).
    pub dir: PathBuf,
    /// Save a checkpoint every N optimizer steps (0 = only at epoch ends if enabled).
    #[serde(default)]
    pub save_steps: usize,
    /// Save a checkpoint at the end of every epoch.
    #[serde(default = "yes")]
    pub save_every_epoch: bool,
    /// Keep the last K checkpoints (older ones are deleted once a newer one is complete).
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    /// Export the final model to `<dir>/model` in this dtype (bf16 or f32); "none" skips it.
    #[serde(default)]
    pub export_dtype: ExportDtype,
    /// Largest safetensors shard of the export, e.g. "5GB" or "500MB".
    #[serde(default = "default_shard_size")]
    pub max_shard_size: ByteSize,
    /// After training, greedy-decode this many held-out examples and report boxed-answer
    /// accuracy before and after (0 = off).
    #[serde(default)]
    pub eval_examples: usize,
    /// Tokens generated per evaluated example.
    #[serde(default = "default_max_new_tokens")]
    pub eval_max_new_tokens: usize,
    /// Where step metrics go: "jsonl" (`metrics.jsonl`, always written: resume and the plot
    /// read it) and "tensorboard" (event files under `<dir>/tensorboard/`).
    #[serde(default = "default_report_to")]
    pub report_to: Vec<ReportTo>,
    /// A run started without `--resume` into a directory whose `checkpoints/` holds an
    /// earlier run's checkpoints: refused (false), or those checkpoints are deleted (true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub overwrite: bool,
}

config_enum! {
    /// `output.export_dtype`.
    #[derive(Default)]
    pub enum ExportDtype {
        #[default]
        Bf16 = "bf16",
        F32 = "f32",
        None = "none",
    }
}

impl ExportDtype {
    /// The dtype of the exported weights; `None` when no export is wanted.
    pub fn dtype(self) -> Option<DType> {
        match self {
            ExportDtype::Bf16 => Some(DType::BF16),
            ExportDtype::F32 => Some(DType::F32),
            ExportDtype::None => None,
        }
    }
}

config_enum! {
    /// A destination of `output.report_to`.
    pub enum ReportTo {
        Jsonl = "jsonl",
        Tensorboard = "tensorboard",
    }
}

fn default_report_to() -> Vec<ReportTo> {
    vec![ReportTo::Jsonl]
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !b
}
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
fn is_zero_steps(n: &usize) -> bool {
    *n == 0
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    42
}
fn default_loss_chunk() -> usize {
    limo_model::model::DEFAULT_LOSS_CHUNK
}
fn default_keep() -> usize {
    2
}
fn default_shard_size() -> ByteSize {
    "5GB".parse().expect("a valid size")
}
fn default_max_new_tokens() -> usize {
    64
}

/// The embedded default run (`limo train` with no `--config`).
/// Held-out problems of `builtin:arithmetic` decoded before and after training; more is a typo.
const MAX_EVAL_EXAMPLES: usize = 10_000;

pub const TINY_TOML: &str = include_str!("../../../configs/tiny.toml");

impl TrainConfig {
    /// Parses TOML text, applies `section.key=value` overrides, and validates. `origin` names
    /// the file in errors.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> anyhow::Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| errors::syntax_error(text, origin, &e))?;
        for item in overrides {
            overrides::apply_override(&mut table, item)?;
        }
        // The two ways to give the warmup exclude each other: `--set` of one replaces the other
        // (`--set train.warmup_ratio=0.1` on a config with warmup_steps).
        let set = |key: &str| overrides.iter().any(|o| o.trim_start().starts_with(key));
        for (given, replaced) in [
            ("train.warmup_ratio", "warmup_steps"),
            ("train.warmup_steps", "warmup_ratio"),
        ] {
            let other = format!("train.{replaced}");
            if set(given) && !set(&other) {
                if let Some(toml::Value::Table(train)) = table.get_mut("train") {
                    train.remove(replaced);
                }
            }
        }
        // Round-trip through text so that serde errors carry the key and its position.
        let merged = toml::to_string(&table)?;
        let config: TrainConfig = toml::from_str(&merged).map_err(|e| {
            // A missing section spans the whole text, whose first line is a section's header.
            let section = ["model", "data", "train", "output"]
                .iter()
                .any(|s| e.message() == format!("missing field `{s}`"));
            let key = e
                .span()
                .filter(|_| !section)
                .map(|span| errors::key_at(&merged, span.start))
                .unwrap_or_default();
            anyhow::anyhow!("{origin}: {key}{}", e.message())
        })?;
        config.validate().with_context(|| origin.to_string())?;
        Ok(config)
    }

    pub fn from_file(path: &Path, overrides: &[String]) -> anyhow::Result<Self> {
        // LLaMA-Factory's training YAML, read as it is (crate::llamafactory).
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        {
            return crate::llamafactory::from_yaml(path, overrides);
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let t = &self.train;
        match (&self.model.path, &self.model.init) {
            (Some(_), Some(_)) => bail!("model: give either path or init, not both"),
            (None, None) => bail!("model: give path (a Hugging Face checkpoint) or init (a shape)"),
            _ => {}
        }
        if !(t.lr >= 0.0 && t.lr.is_finite()) {
            bail!("train.lr: {} must be a non-negative number", t.lr);
        }
        for (name, v) in [
            ("train.batch_size", t.batch_size),
            ("train.grad_accum", t.grad_accum),
            ("train.epochs", t.epochs),
            ("train.loss_chunk", t.loss_chunk),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if t.max_steps == Some(0) {
            bail!("train.max_steps must be at least 1 (leave it out to train for train.epochs)");
        }
        if self
            .model
            .tokenizer
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            bail!("model.tokenizer is empty: a tokenizer.json, its folder or builtin:qwen2.5 (or leave it out: the model's own)");
        }
        // Once the current directory: a run's files among whatever else is there.
        if self.output.dir.as_os_str().is_empty() {
            bail!("output.dir is empty: name the run directory (e.g. \"runs/limo-32b\")");
        }
        if self.output.keep_last == 0 {
            bail!("output.keep_last must be at least 1 (the newest checkpoint is what --resume continues)");
        }
        // The kernels count a micro-batch's tokens in 32-bit ints; far past any memory, a value
        // beyond it is a typo that would otherwise abort on an allocation.
        let tokens = t.batch_size.checked_mul(self.data.cutoff_len);
        if tokens.is_none_or(|n| n > i32::MAX as usize) {
            bail!(
                "train.batch_size {} x data.cutoff_len {} tokens per micro-batch is more than \
                 limo handles ({})",
                t.batch_size,
                self.data.cutoff_len,
                i32::MAX
            );
        }
        match t.warmup_ratio {
            Some(r) if !(0.0..=1.0).contains(&r) => {
                bail!("train.warmup_ratio: {r} (a share of the steps, 0 to 1)")
            }
            Some(_) if t.warmup_steps > 0 => {
                bail!("train: give warmup_steps or warmup_ratio, not both")
            }
            _ => {}
        }
        match t.global_batch_size {
            Some(0) => bail!("train.global_batch_size must be at least 1"),
            Some(_) if t.grad_accum != 1 => bail!(
                "train: give global_batch_size (grad_accum then follows from the world size) or grad_accum, not both (add --set train.grad_accum=1)"
            ),
            Some(global) if global % t.batch_size.max(1) != 0 => bail!(
                "train.global_batch_size {global} is not a multiple of train.batch_size {}, so no number of ranks splits it",
                t.batch_size
            ),
            _ => {}
        }
        if t.grad_accum > i32::MAX as usize {
            bail!(
                "train.grad_accum {} is more than limo handles ({})",
                t.grad_accum,
                i32::MAX
            );
        }
        if self.output.eval_examples > MAX_EVAL_EXAMPLES {
            bail!(
                "output.eval_examples {} is more than {MAX_EVAL_EXAMPLES} (each is decoded \
                 before and after training)",
                self.output.eval_examples
            );
        }
        // NaN or a negative norm would silently turn clipping off; 0 is the documented "off".
        if !(t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite()) {
            bail!(
                "train.max_grad_norm: {} must be a non-negative number (0: no clipping)",
                t.max_grad_norm
            );
        }
        if !(0.0..=1.0).contains(&t.min_lr_rate) {
            bail!(
                "train.min_lr_rate: {} (a share of lr, 0 to 1)",
                t.min_lr_rate
            );
        }
        if (t.eval_steps > 0 || t.eval_every_epoch) && self.data.val_size == 0.0 {
            bail!(
                "train.eval_steps / eval_every_epoch: nothing to validate on; set data.val_size \
                 (a share of the rows, or a count) to hold rows out"
            );
        }
        if t.min_lr_rate != 0.0 && t.schedule != Schedule::Cosine {
            bail!(
                "train.min_lr_rate: the floor of the cosine; schedule \"{}\" has none",
                t.schedule
            );
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            bail!(
                "train.weight_decay: {} must be a non-negative number",
                t.weight_decay
            );
        }
        if !(t.adam_eps > 0.0 && t.adam_eps.is_finite()) {
            bail!("train.adam_eps: {} must be a positive number", t.adam_eps);
        }
        if !(0.0..1.0).contains(&t.adam_beta1) || !(0.0..1.0).contains(&t.adam_beta2) {
            bail!("train.adam_beta1/adam_beta2 must be in [0, 1)");
        }
        if let Some(shape) = &self.model.init {
            limo_model::init::preset_config(shape).context("model.init")?;
            // A typo or a wrong type in an override fails here, naming the key, not later.
            let config = self.model.init_config().context("model.init_overrides")?;
            limo_model::Qwen2Config::from_json(&config.to_string())
                .context("model.init_overrides")?;
        } else if !self.model.init_overrides.is_empty() {
            bail!("model.init_overrides: only with model.init (a model.path has its config.json)");
        }
        self.data.validate().context("data")?;
        let builtin = crate::source::BUILTIN_ARITHMETIC;
        if !self.data.also.is_empty()
            && (self.data.path == builtin || self.data.also.iter().any(|s| s.path == builtin))
        {
            bail!("data.also: {builtin} is generated alone; it mixes with no other dataset");
        }
        if self.data.path == builtin && self.data.format != limo_data::Format::Limo {
            bail!("data.format: {builtin} is generated as format = \"limo\" rows");
        }
        Ok(())
    }

    /// `model.path` as a directory: a Hub model id (`Qwen/Qwen2.5-32B-Instruct`) is its
    /// snapshot in the Hub cache; with a note for the log. `None` with `model.init`.
    pub fn model_dir(&self) -> Option<(PathBuf, Option<String>)> {
        let hub = limo_data::HubSettings::from_env();
        (self.model.path.as_ref()).map(|path| limo_data::hub::resolve_model(path, &hub))
    }

    /// What must hold on this machine before a run starts: [`Self::preflight_build`] and
    /// [`Self::preflight_model`]. Separate from `validate` so recipes for GPU clusters still
    /// parse (and are tested) anywhere.
    pub fn preflight(&self) -> anyhow::Result<()> {
        self.preflight_build()?;
        self.preflight_model()
    }

    /// The model directory exists here (a node may lack a copy the others have, or resolve a
    /// Hub id in another cache: ranks agree on this one after they connect).
    pub fn preflight_model(&self) -> anyhow::Result<()> {
        if let Some((dir, note)) = self.model_dir() {
            let config_json = dir.join("config.json");
            // exists() says false for a file it may not look at: say why.
            if let Err(e) = std::fs::metadata(&config_json) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    bail!("model.path: {}: {e}", config_json.display());
                }
            }
            if !config_json.exists() {
                match note {
                    Some(note) => bail!("model.path: {note}"),
                    None => bail!(
                        "model.path: {} has no config.json (a Hugging Face checkpoint directory)",
                        dir.display()
                    ),
                }
            }
        }
        Ok(())
    }

    /// The device and dtype run on this build: the same answer on every rank of a run.
    pub fn preflight_build(&self) -> anyhow::Result<()> {
        // The GPU's optimizer kernel and state are f32; f64 is the CPU's parity dtype.
        if self.model.dtype == ModelDtype::F64 && self.model.device == DeviceKind::Cuda {
            bail!("model.dtype: f64 runs on model.device = \"cpu\"; use bf16 or f32 on cuda");
        }
        if self.model.device == DeviceKind::Cuda && !cfg!(feature = "cuda") {
            bail!("model.device: \"cuda\" needs a build with --features cuda (docs/CUDA.md)");
        }
        if self.model.dtype == ModelDtype::Bf16 && self.model.device == DeviceKind::Cpu {
            bail!(
                "model.dtype: bf16 training runs on model.device = \"cuda\"; use f32 or f64 on CPU"
            );
        }
        Ok(())
    }

    /// See [`TrainSection::rows_per_step`].
    pub fn rows_per_step(&self, world_size: usize) -> anyhow::Result<usize> {
        self.train.rows_per_step(world_size)
    }

    /// See [`TrainSection::grad_accum_at`].
    pub fn grad_accum(&self, world_size: usize) -> anyhow::Result<usize> {
        self.train.grad_accum_at(world_size)
    }

    /// A hash of everything that shapes the trajectory (model, data, train; not output), kept in
    /// every checkpoint so a resume with a different recipe is refused.
    /// Identifies the training trajectory, to refuse resuming a different run. It depends on
    /// the rows per step (`batch_size x grad_accum x world_size`), not on how they are split,
    /// so a run may resume at another world size with the same global batch; settings that do
    /// not change the trajectory (activation checkpointing, optimizer offload, the device) are
    /// left out.
    pub fn trajectory_hash(&self, world_size: usize) -> String {
        let [model, _, train] = self.trajectory_view(world_size);
        // The data section as its struct writes it (field order), as the hash always had it.
        let text = serde_json::to_string(&(&model, &self.data, &train)).expect("serializable");
        format!("{:016x}", fnv1a(text.as_bytes()))
    }

    /// What [`Self::trajectory_hash`] hashes: the model, data and train sections, without the
    /// settings that leave the trajectory alone and with rows per step for the batch split.
    pub fn trajectory_view(&self, world_size: usize) -> [serde_json::Value; 3] {
        let mut train = serde_json::to_value(&self.train).expect("serializable");
        let map = train.as_object_mut().expect("a struct");
        for key in [
            "batch_size",
            "grad_accum",
            "global_batch_size",
            "activation_checkpointing",
            "recompute_attention",
            "optimizer_offload",
            "eval_steps",
            "eval_every_epoch",
        ] {
            map.remove(key);
        }
        map.insert(
            "rows_per_step".into(),
            self.rows_per_step(world_size).unwrap_or(usize::MAX).into(),
        );
        if self.train.weight_decay == 0.0 {
            // Which parameters skip a decay of 0 changes nothing.
            map.remove("no_decay");
        }
        if self.train.epoch_tail == EpochTail::Repeat {
            // What an epoch's last step is filled up to depends on the split.
            let rows = self.train.epoch_tail_rows(world_size);
            map.insert("epoch_tail_rows".into(), rows.unwrap_or(usize::MAX).into());
        }
        let mut model = serde_json::to_value(&self.model).expect("serializable");
        model.as_object_mut().expect("a struct").remove("device");
        let data = serde_json::to_value(&self.data).expect("serializable");
        [model, data, train]
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A config enum from its name as a command-line flag gives it: the serde names stay the one
/// list, and a bad name reads "unknown variant `x`, expected ...".
pub fn from_name<T: serde::de::DeserializeOwned>(name: &str) -> anyhow::Result<T> {
    use serde::de::{value::Error, IntoDeserializer};
    Ok(T::deserialize(
        IntoDeserializer::<Error>::into_deserializer(name),
    )?)
}

mod errors;
mod overrides;
mod size;
pub use size::{parse_size, ByteSize};
mod checkpointing;
pub use checkpointing::Checkpointing;
mod train_enums;
pub use train_enums::{
    EpochTail, LossAverage, NoDecay, OptimizerOffload, ReduceDtype, SamplerKind,
};

#[cfg(test)]
mod tests;
