//! `limo export`: a training checkpoint to Hugging Face format.

use crate::out::outln;
use std::path::PathBuf;

use clap::Args;
use limo_model::model::parse_dtype;
use limo_train::config::parse_size;

#[derive(Args)]
pub struct ExportArgs {
    /// The checkpoint: a step directory (runs/NAME/checkpoints/step-N), `checkpoints/latest`,
    /// the `checkpoints/` directory or the run directory (their latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output directory for the Hugging Face model.
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype of the export: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Largest safetensors shard, e.g. 5GB.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if !matches!(args.dtype.as_str(), "bf16" | "f32") {
        anyhow::bail!("--dtype {}: export writes bf16 or f32", args.dtype);
    }
    let dtype = parse_dtype(&args.dtype)?;
    let shard = parse_size(&args.max_shard_size)?;
    let checkpoint = limo_train::checkpoint::find(&args.checkpoint)?;
    limo_train::export::export(&checkpoint, &args.out, dtype, shard)?;
    outln!(
        "exported {} to {}",
        checkpoint.display(),
        args.out.display()
    )?;
    Ok(())
}
