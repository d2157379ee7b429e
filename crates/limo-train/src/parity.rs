//! Loss and gradients of one batch through the training code (a world-size-1 [`ShardedModel`]):
//! what `limo debug loss-grad` writes and the golden-parity tests compare with transformers.
//! There is no second forward and backward to keep in step with the trainer's.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use limo_dist::SoloComm;
use limo_model::checkpoint::{SafetensorFiles, CONFIG_FILE};
use limo_model::{Batch, Qwen2Config};
use limo_ops::GradScale;

use crate::config::{Checkpointing, TrainSection};
use crate::zero3::{load_shards, ShardedModel};

/// One batch's loss and gradients.
pub struct BatchGrads {
    pub cfg: Qwen2Config,
    /// Sum of per-token losses over the batch's targets.
    pub loss_sum: f64,
    pub n_targets: usize,
    /// `[N]` per-token cross-entropy, 0 where not a target.
    pub per_token_loss: Tensor,
    /// Gradients of the mean loss, every parameter under its Hugging Face name, in the master
    /// dtype (f32 for bf16 and f32, f64 for f64).
    pub grads: Vec<(String, Tensor)>,
}

impl BatchGrads {
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.n_targets as f64
    }
}

/// Loads the checkpoint in `model_dir` onto `device` in `dtype` and runs the training step's
/// forward and backward on `batch` (no update), the mean loss's gradients accumulated in the
/// master dtype.
pub fn batch_loss_and_grads(
    model_dir: &Path,
    dtype: DType,
    device: &Device,
    batch: &Batch,
    loss_chunk: usize,
) -> anyhow::Result<BatchGrads> {
    let cfg = Qwen2Config::from_file(&model_dir.join(CONFIG_FILE))?;
    let targets = batch.targets.iter().filter(|&&t| t >= 0).map(|&t| t as u64);
    if let Some(bad) = (batch.input_ids.iter().map(|&id| id as u64))
        .chain(targets)
        .find(|&id| id >= cfg.vocab_size as u64)
    {
        bail!(
            "batch: token id {bad} is outside the vocabulary of {}",
            cfg.vocab_size
        );
    }
    let n_targets = batch.n_targets();
    if n_targets == 0 {
        bail!("batch: no target tokens (every shifted label is -100)");
    }
    let files = SafetensorFiles::open(model_dir)?;
    files.check_names(&cfg)?;
    let shards = load_shards(&cfg, &files, dtype, 1, 0)?;
    // Defaults of every other field; no checkpointing: the backward uses the saved activations.
    let mut train: TrainSection = toml::from_str("lr = 0.0").context("default train section")?;
    train.loss_chunk = loss_chunk;
    train.activation_checkpointing = Checkpointing::None;
    let model = ShardedModel::new(
        cfg.clone(),
        shards,
        dtype,
        device,
        &train,
        Box::new(SoloComm),
    )?;
    let mut grads = model.zero_grads();
    let out = model.loss_and_grads(
        batch,
        GradScale::Uniform(1.0 / n_targets as f64),
        loss_chunk,
        &mut grads,
    )?;
    let grads = model.named_grads(&grads.slices()?)?;
    Ok(BatchGrads {
        cfg,
        loss_sum: out.loss_sum.to_vec1::<f64>()?[0],
        n_targets,
        per_token_loss: out.per_token_loss,
        grads,
    })
}
