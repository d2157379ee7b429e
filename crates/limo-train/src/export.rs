//! `limo export`: a training checkpoint to a Hugging Face model directory, streamed tensor by
//! tensor so host memory stays bounded by one output shard.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::DType;
use limo_model::writer::{write_json, ShardedWriter};

use crate::checkpoint::{self, ShardReader};

/// Files of a checkpoint that an exported model carries along.
const CARRIED: [&str; 4] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];

/// Writes `out` (created; must not hold a model) from checkpoint `dir`, merging the ranks'
/// slices one parameter at a time, whatever world size wrote it.
pub fn export(dir: &Path, out: &Path, dtype: DType, max_shard_bytes: usize) -> anyhow::Result<()> {
    let mut reader = ShardReader::open(dir)?;
    // Side files are checked here; rank files as they are read.
    for (name, sum) in &reader.manifest.files {
        if !name.starts_with("rank-") {
            let one = [(name.clone(), sum.clone())].into_iter().collect();
            let manifest = checkpoint::Manifest {
                files: one,
                ..reader.manifest.clone()
            };
            checkpoint::verify(dir, &manifest)?;
        }
    }
    if out.join("config.json").exists() {
        bail!(
            "{}: already holds a model; export into an empty directory",
            out.display()
        );
    }
    let mut writer = ShardedWriter::new(out, max_shard_bytes)?;
    reader.params("master", |name, tensor| {
        writer.add(name, tensor.to_dtype(dtype)?)?;
        Ok(())
    })?;
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
