//! `limo export`: a training checkpoint to a Hugging Face model directory, streamed tensor by
//! tensor so host memory stays bounded by one output shard.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::safetensors::Load;
use candle_core::{DType, Device};
use limo_model::writer::{write_json, ShardedWriter};
use safetensors::SafeTensors;

use crate::checkpoint::{self, rank_file};

/// Files of a checkpoint that an exported model carries along.
const CARRIED: [&str; 4] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];

/// Writes `out` (created; must not hold a model) from checkpoint `dir`.
pub fn export(dir: &Path, out: &Path, dtype: DType, max_shard_bytes: usize) -> anyhow::Result<()> {
    let manifest_path = dir.join(checkpoint::MANIFEST);
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("{}", manifest_path.display()))?;
    let manifest: checkpoint::Manifest =
        serde_json::from_str(&text).with_context(|| format!("{}", manifest_path.display()))?;
    checkpoint::verify(dir, &manifest)?;
    if out.join("config.json").exists() {
        bail!(
            "{}: already holds a model; export into an empty directory",
            out.display()
        );
    }
    let rank_path = dir.join(rank_file(0));
    let file =
        std::fs::File::open(&rank_path).with_context(|| format!("{}", rank_path.display()))?;
    // SAFETY: read-only map of a checkpoint file whose checksum was just verified.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{}", rank_path.display()))?;
    let tensors =
        SafeTensors::deserialize(&map).with_context(|| format!("{}", rank_path.display()))?;

    let mut writer = ShardedWriter::new(out, max_shard_bytes)?;
    for (name, _) in &manifest.params {
        let key = format!("master.{name}");
        let view = tensors
            .tensor(&key)
            .with_context(|| format!("{}: missing {key}", rank_path.display()))?;
        writer.add(name, view.load(&Device::Cpu)?.to_dtype(dtype)?)?;
    }
    writer.finish()?;

    let config_path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}", config_path.display()))?,
    )?;
    config["torch_dtype"] = limo_model::init::dtype_name(dtype).into();
    write_json(&out.join("config.json"), &config)?;
    for name in CARRIED {
        if dir.join(name).exists() {
            std::fs::copy(dir.join(name), out.join(name))
                .with_context(|| format!("{}", out.join(name).display()))?;
        }
    }
    Ok(())
}
