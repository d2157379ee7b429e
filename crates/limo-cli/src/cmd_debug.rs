//! `limo debug loss-grad`: the loss and every parameter's gradient of one batch, computed by the
//! training step's own forward and backward (limo_train::parity), written as safetensors in the
//! layout of the transformers goldens, so parity is one file comparison.
//! `--device cuda` runs the same code on a GPU (our kernels, bf16 or f32) and writes the same
//! file, the tensors moved to the CPU: the GPU path checked against the same goldens.

use crate::out::outln;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Subcommand};
use limo_model::model::{parse_dtype, DEFAULT_LOSS_CHUNK};
use limo_model::Batch;
use limo_train::parity::batch_loss_and_grads;
use serde::Deserialize;

#[derive(Subcommand)]
pub enum DebugCommand {
    /// Loss, per-token loss and gradients of one batch (HF label convention).
    LossGrad(LossGradArgs),
    /// Compile candle's PTX kernels on the GPU now, all modules in parallel, filling the
    /// driver's JIT cache (`CUDA_CACHE_PATH`) so later commands load them compiled.
    WarmJit(WarmJitArgs),
}

#[derive(Args)]
pub struct WarmJitArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
}

#[derive(Args)]
pub struct LossGradArgs {
    /// Hugging Face checkpoint directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// JSON with "input_ids" and "labels" ([[...]] per row), optional "position_ids".
    #[arg(long)]
    batch: PathBuf,
    /// Output safetensors: loss, per_token_loss and grad.<parameter name>.
    #[arg(long)]
    out: PathBuf,
    /// Compute dtype: f32 or f64 on the CPU, bf16 or f32 on CUDA.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Where to compute: cpu (the reference) or cuda (needs a --features cuda build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CUDA device ordinal (with --device cuda).
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// Tokens per chunk of the fused head + loss.
    #[arg(long, default_value_t = DEFAULT_LOSS_CHUNK)]
    loss_chunk: usize,
}

pub fn run(cmd: DebugCommand) -> anyhow::Result<()> {
    match cmd {
        DebugCommand::LossGrad(args) => loss_grad(args),
        DebugCommand::WarmJit(args) => warm_jit(args),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    input_ids: Vec<Vec<u32>>,
    labels: Vec<Vec<i64>>,
    position_ids: Option<Vec<Vec<u32>>>,
}

pub fn read_batch(path: &Path) -> anyhow::Result<Batch> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let file: BatchFile =
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    Batch::from_rows(&file.input_ids, &file.labels, file.position_ids.as_deref())
        .with_context(|| format!("{}", path.display()))
}

fn loss_grad(args: LossGradArgs) -> anyhow::Result<()> {
    let dtype = parse_dtype(&args.dtype)?;
    let on_cuda = match args.device.as_str() {
        "cpu" => false,
        "cuda" => true,
        other => bail!("--device {other}: expected cpu or cuda"),
    };
    match (on_cuda, dtype) {
        (false, DType::F32 | DType::F64) | (true, DType::BF16 | DType::F32) => {}
        (false, _) => bail!(
            "--dtype {}: the CPU reference runs in f32 or f64 (bf16 needs --device cuda)",
            args.dtype
        ),
        (true, _) => bail!("--dtype {}: --device cuda runs in bf16 or f32", args.dtype),
    }
    let batch = read_batch(&args.batch)?;
    if batch.n_targets() == 0 {
        bail!(
            "{}: the batch has no target tokens (every shifted label is -100)",
            args.batch.display()
        );
    }
    let (device, device_name) = if on_cuda {
        let gpu = crate::cmd_doctor::open_gpu(args.gpu)?;
        (gpu, format!("cuda:{}", args.gpu))
    } else {
        (Device::Cpu, "cpu".to_string())
    };
    let started = std::time::Instant::now();
    let out = batch_loss_and_grads(&args.model, dtype, &device, &batch, args.loss_chunk)
        .with_context(|| format!("{}", args.batch.display()))?;
    // The backward is queued on the GPU's stream: wait for it before reading the clock.
    device.synchronize()?;
    let seconds = started.elapsed().as_secs_f64();

    // The loss in the compute dtype: f32 for bf16 (the kernels accumulate it in f32).
    let loss_dtype = limo_ops::compute_dtype(dtype);
    let mut tensors: Vec<(String, Tensor)> = vec![
        (
            "loss".into(),
            Tensor::new(out.loss(), &Device::Cpu)?.to_dtype(loss_dtype)?,
        ),
        (
            "per_token_loss".into(),
            per_token_rows(&out.per_token_loss.to_device(&Device::Cpu)?, &batch)?,
        ),
    ];
    let mut norm_sq = 0.0;
    for (name, grad) in &out.grads {
        // Gradients keep their dtype; the norm is summed in f64 on the CPU.
        let grad = grad.to_device(&Device::Cpu)?;
        norm_sq += grad
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
        tensors.push((format!("grad.{name}"), grad));
    }
    let summary = serde_json::json!({
        "loss": out.loss(),
        "n_target_tokens": out.n_targets,
        "grad_global_l2_norm": norm_sq.sqrt(),
        "dtype": args.dtype,
        "device": device_name,
        "seconds": seconds,
    });
    let metadata = HashMap::from([("summary".to_string(), summary.to_string())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &args.out,
    )
    .with_context(|| format!("{}", args.out.display()))?;
    outln!("{summary}")?;
    Ok(())
}

/// One line per candle kernel module (PTX size, seconds to load) and the wall time of all.
fn warm_jit(args: WarmJitArgs) -> anyhow::Result<()> {
    let gpu = crate::cmd_doctor::open_gpu(args.gpu)?;
    warm_jit_on(&gpu)
}

#[cfg(feature = "cuda")]
fn warm_jit_on(gpu: &Device) -> anyhow::Result<()> {
    let Device::Cuda(dev) = gpu else {
        bail!("warm-jit needs a CUDA device")
    };
    let started = std::time::Instant::now();
    let compiled = limo_ops::cuda::jit::warm_candle_jit(dev)?;
    for c in &compiled {
        outln!(
            "jit {:<10} {:>8} KiB of PTX  {:>7.2} s",
            c.module,
            c.ptx_bytes >> 10,
            c.seconds
        )?;
    }
    outln!(
        "jit: {} candle modules loaded in {:.2} s (wall, in parallel)",
        compiled.len(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn warm_jit_on(_gpu: &Device) -> anyhow::Result<()> {
    bail!("no GPU support in this build: build with --features cuda (docs/CUDA.md)")
}

/// `[rows, T]` when every row has the same length (the goldens' layout), else the flat `[N]`.
fn per_token_rows(per_token: &Tensor, batch: &Batch) -> anyhow::Result<Tensor> {
    let lengths: Vec<usize> = batch.row_offsets.windows(2).map(|w| w[1] - w[0]).collect();
    if lengths.windows(2).all(|w| w[0] == w[1]) {
        Ok(per_token.reshape((batch.rows(), lengths[0]))?)
    } else {
        Ok(per_token.clone())
    }
}
