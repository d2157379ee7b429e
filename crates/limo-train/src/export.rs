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
    // A run directory, say, would get a model's files among its own; so would a folder of
    // someone else's shards. Only an interrupted export (its staging folder still there: it
    // goes last, after config.json) is redone in place.
    let interrupted = out.join(STAGING).is_dir();
    let foreign = foreign_entries(out, interrupted);
    if !foreign.is_empty() {
        bail!(
            "{}: holds {}{}; export into an empty or new directory",
            out.display(),
            foreign.join(", "),
            if interrupted {
                " (not a model's files)"
            } else {
                ""
            }
        );
    }
    // After an earlier attempt's files are gone (shards it moved in before its config.json:
    // other names, or an index, than this export's would be left beside it): their space
    // counts as free.
    if interrupted {
        remove_leftovers(out)?;
    }
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
    limo_model::init::set_dtype(&mut config, dtype);
    write_json(&staging.join("config.json"), &config)?;
    move_into_place(&staging, out)
}

/// Writes `<output>/model` from the final checkpoint.
pub fn export_final(
    config: &crate::TrainConfig,
    dtype: DType,
    final_checkpoint: &Path,
) -> anyhow::Result<()> {
    let export_dir = config.output.dir.join("model");
    if export_dir.exists() {
        std::fs::remove_dir_all(&export_dir)?;
    }
    let shard = config.output.max_shard_size.bytes();
    export(final_checkpoint, &export_dir, dtype, shard)
}

/// The staging folder inside `out`.
const STAGING: &str = ".export.partial";

/// What `out` holds, sorted: everything, or after an interrupted export what it would not
/// have written (its staging folder, `model.safetensors` or `model-*.safetensors` shards,
/// their index, the carried side files); empty when `out` does not exist. Only an interrupted
/// export's files are ever deleted from `out`.
fn foreign_entries(out: &Path, interrupted: bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let ours = |name: &str| {
        name == STAGING
            || name == "model.safetensors"
            || (name.starts_with("model-") && name.ends_with(".safetensors"))
            || name == "model.safetensors.index.json"
            || CARRIED.contains(&name)
    };
    let mut foreign: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !(interrupted && ours(name)))
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

/// Where the files are written first: inside `out`, so the moves stay on one filesystem (`out`
/// may be a mount point); emptied of an earlier export that was cut short.
fn staging_dir(out: &Path) -> anyhow::Result<PathBuf> {
    let staging = out.join(STAGING);
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
