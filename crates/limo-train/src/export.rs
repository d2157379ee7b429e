//! `limo export`: a training checkpoint to a Hugging Face model directory, streamed tensor by
//! tensor so host memory stays bounded by one output shard.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::DType;
use limo_model::writer::{write_json, ShardedWriter};

use crate::checkpoint::{self, disk, ShardReader};

/// Files of a checkpoint that an exported model carries along.
const CARRIED: [&str; 4] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];

/// Writes `out` (created; must not hold a model) from checkpoint `dir`, merging the ranks'
/// slices one parameter at a time, whatever world size wrote it. The files are written into a
/// hidden folder and moved into `out` when all are there, `config.json` last: an export cut
/// short (a crash, a full disk) leaves no directory that loads as a model, and can be rerun.
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
    // A run directory, say, would get a model's files among its own. An interrupted export's
    // files (no config.json yet) are what a rerun replaces.
    let foreign = foreign_entries(out);
    if !foreign.is_empty() {
        bail!(
            "{}: holds {} (not a model's files); export into an empty or new directory",
            out.display(),
            foreign.join(", ")
        );
    }
    // After an earlier attempt's leftovers are gone (shards it moved in before its config.json:
    // other names, or an index, than this export's would be left beside it): their space
    // counts as free.
    remove_leftovers(out)?;
    let staging = staging_dir(out)?;
    // Fail now rather than after writing most of it.
    let elements: usize = reader
        .manifest
        .params
        .iter()
        .map(|(_, shape)| shape.iter().product::<usize>())
        .sum();
    let need = (elements * dtype.size_in_bytes()) as u64;
    if let Some(short) = disk::free_bytes(out)
        .ok()
        .and_then(|free| disk::shortfall(out, free, need, "the export"))
    {
        bail!(short);
    }
    let mut writer = ShardedWriter::new(&staging, max_shard_bytes)?;
    reader.params("master", |name, tensor| {
        writer.add(name, tensor.to_dtype(dtype)?)?;
        Ok(())
    })?;
    writer.finish()?;
    for name in CARRIED {
        if dir.join(name).exists() {
            std::fs::copy(dir.join(name), staging.join(name))
                .with_context(|| format!("{}", staging.join(name).display()))?;
        }
    }
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}", config_path.display()))?,
    )?;
    config["torch_dtype"] = limo_model::init::dtype_name(dtype).into();
    write_json(&staging.join("config.json"), &config)?;
    move_into_place(&staging, out)
}

/// Where the files are written first: inside `out`, so the moves stay on one filesystem (`out`
/// may be a mount point); emptied of an earlier export that was cut short.
/// What `out` holds besides what an export writes (its staging folder, `model.safetensors` or
/// `model-*.safetensors` shards, their index, the carried side files), sorted; empty when
/// `out` does not exist. Only such files are ever deleted from `out`.
fn foreign_entries(out: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let ours = |name: &str| {
        name == ".export.partial"
            || name == "model.safetensors"
            || (name.starts_with("model-") && name.ends_with(".safetensors"))
            || name == "model.safetensors.index.json"
            || CARRIED.contains(&name)
    };
    let mut foreign: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !ours(name))
        .collect();
    foreign.sort();
    foreign
}

/// Deletes an interrupted export's files from `out` (which holds nothing else).
fn remove_leftovers(out: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(());
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.is_file() {
            std::fs::remove_file(&path).with_context(|| format!("{}", path.display()))?;
        }
    }
    Ok(())
}

fn staging_dir(out: &Path) -> anyhow::Result<PathBuf> {
    let staging = out.join(".export.partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("{}", staging.display()))?;
    }
    Ok(staging)
}

/// Syncs the staged files and moves them into `out`, `config.json` last (its presence says the
/// export is complete).
fn move_into_place(staging: &Path, out: &Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(staging)
        .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
        .with_context(|| format!("{}", staging.display()))?;
    files.sort_by_key(|p| p.file_name() == Some("config.json".as_ref()));
    for f in &files {
        checkpoint::fsync_path(f)?;
    }
    for f in &files {
        let target = out.join(f.file_name().expect("a directory entry has a name"));
        std::fs::rename(f, &target).with_context(|| format!("{}", target.display()))?;
    }
    std::fs::remove_dir(staging).with_context(|| format!("{}", staging.display()))?;
    checkpoint::fsync_path(out)
}
