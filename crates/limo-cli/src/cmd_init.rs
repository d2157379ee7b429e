//! `limo init-model`: a random-initialized Qwen2.5-shaped checkpoint in Hugging Face format,
//! with the Qwen2.5 tokenizer.

use crate::out::outln;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use limo_model::init::{preset_config, write_random_checkpoint, SHAPES};
use limo_model::model::parse_dtype;
use limo_train::source::write_builtin_tokenizer;

#[derive(Args)]
pub struct InitModelArgs {
    /// Model shape: tiny, 0.5b, 1.5b, 3b, 7b, 14b or 32b (Qwen2.5-Instruct configs).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SHAPES))]
    shape: String,
    /// Decoder layers (default: the shape's; fewer for quick tests of large shapes, more to grow it).
    #[arg(long)]
    layers: Option<usize>,
    /// Weight dtype: bf16, f32, f16 or f64.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest safetensors shard, in bytes (default 5 GB as transformers writes).
    #[arg(long, default_value_t = 5_000_000_000)]
    max_shard_bytes: usize,
    /// Output directory (must not hold a checkpoint already).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: InitModelArgs) -> anyhow::Result<()> {
    let mut config = preset_config(&args.shape)?;
    if let Some(layers) = args.layers {
        if layers == 0 {
            bail!("--layers must be at least 1");
        }
        config["num_hidden_layers"] = layers.into();
        config["max_window_layers"] = layers.into();
    }
    let dtype = parse_dtype(&args.dtype)?;
    // Weights left beside a new model would be loaded with it or instead of it.
    let model_file = |name: &str| {
        name == "config.json" || name.ends_with(".safetensors") || name.ends_with(".index.json")
    };
    let held: Vec<String> = std::fs::read_dir(&args.out)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| model_file(n))
                .collect()
        })
        .unwrap_or_default();
    if !held.is_empty() {
        bail!(
            "{}: already holds a checkpoint's files ({}); choose an empty directory",
            args.out.display(),
            held.join(", ")
        );
    }
    // Written aside, then moved in with config.json last: a failure (a full disk) never leaves
    // a directory that looks like a model, and a rerun starts over.
    let staging = args.out.join(".init-model.partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("{}", staging.display()))?;
    }
    write_random_checkpoint(&staging, &config, dtype, args.seed, args.max_shard_bytes)
        .with_context(|| format!("writing {}", args.out.display()))?;
    // Every shape has Qwen2.5's vocabulary: with its tokenizer the directory is a whole model
    // that `limo eval`, `limo train` and transformers load as it is.
    write_builtin_tokenizer(&staging)?;
    move_in(&staging, &args.out)?;
    outln!(
        "wrote a random {} checkpoint with the Qwen2.5 tokenizer to {}",
        args.shape,
        args.out.display()
    )?;
    Ok(())
}

/// Moves the files of `staging` into `out`, config.json last, then removes `staging`.
fn move_in(staging: &Path, out: &Path) -> anyhow::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(staging)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect())
        .with_context(|| format!("{}", staging.display()))?;
    names.sort_by_key(|name| name == "config.json");
    for name in names {
        let to = out.join(&name);
        std::fs::rename(staging.join(&name), &to).with_context(|| format!("{}", to.display()))?;
    }
    std::fs::remove_dir(staging).with_context(|| format!("{}", staging.display()))
}
