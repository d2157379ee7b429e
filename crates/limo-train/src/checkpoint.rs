//! Training checkpoints: `<output>/checkpoints/step-NNNNNNNN/` holding `manifest.json` (step,
//! world size, config hash, data order, parameter layout, checksums), one
//! `rank-RRRRR.safetensors` per rank with the fp32 master weights and Adam moments, and the
//! model's `config.json` plus tokenizer so that `limo export` needs nothing else.
//!
//! A checkpoint is written to a hidden temporary directory, every file and the directory are
//! fsynced, then it is renamed into place, and only then is `checkpoints/latest` replaced (also
//! by rename). A crash at any moment leaves `latest` naming a complete checkpoint.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "manifest.json";
pub const LATEST: &str = "latest";
pub const FORMAT: &str = "limo-checkpoint-v1";

/// What a checkpoint says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// Optimizer steps completed.
    pub step: usize,
    pub world_size: usize,
    pub config_hash: String,
    /// The data order's position (serialized by the trainer).
    pub data_order: serde_json::Value,
    /// Parameter names and shapes in checkpoint order.
    pub params: Vec<(String, Vec<usize>)>,
    /// dtype of the master weights and moments ("f32" or "f64").
    pub master_dtype: String,
    /// For every file of the checkpoint: size in bytes and CRC-32.
    pub files: BTreeMap<String, FileSum>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileSum {
    pub bytes: u64,
    pub crc32: u32,
}

pub fn rank_file(rank: usize) -> String {
    format!("rank-{rank:05}.safetensors")
}

pub fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// Tensors of one rank: `master.<name>`, `exp_avg.<name>`, `exp_avg_sq.<name>`.
pub struct RankState {
    pub master: Vec<Tensor>,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
}

/// Files copied into every checkpoint beside the state (model config, tokenizer).
pub struct SideFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Writes checkpoint `manifest.step` under `checkpoints_dir` atomically, points `latest` at it
/// and deletes all but the newest `keep_last` complete checkpoints.
pub fn save(
    checkpoints_dir: &Path,
    mut manifest: Manifest,
    state: &RankState,
    side_files: &[SideFile],
    keep_last: usize,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(checkpoints_dir)
        .with_context(|| format!("{}", checkpoints_dir.display()))?;
    let name = step_dir_name(manifest.step);
    let tmp = checkpoints_dir.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("{}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp)?;

    let rank_path = tmp.join(rank_file(0));
    let names: Vec<&str> = manifest.params.iter().map(|(n, _)| n.as_str()).collect();
    let mut tensors: Vec<(String, &Tensor)> = Vec::with_capacity(3 * names.len());
    for (kind, list) in [
        ("master", &state.master),
        ("exp_avg", &state.exp_avg),
        ("exp_avg_sq", &state.exp_avg_sq),
    ] {
        for (n, t) in names.iter().zip(list) {
            tensors.push((format!("{kind}.{n}"), t));
        }
    }
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), *t)),
        None,
        &rank_path,
    )
    .with_context(|| format!("{}", rank_path.display()))?;
    fsync_file(&rank_path)?;
    manifest.files.insert(rank_file(0), checksum(&rank_path)?);
    for side in side_files {
        let path = tmp.join(&side.name);
        write_synced(&path, &side.bytes)?;
        manifest.files.insert(side.name.clone(), checksum(&path)?);
    }
    write_synced(
        &tmp.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    fsync_dir(&tmp)?;

    let final_dir = checkpoints_dir.join(&name);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("{}", final_dir.display()))?;
    fsync_dir(checkpoints_dir)?;
    let latest_tmp = checkpoints_dir.join(".latest.tmp");
    write_synced(&latest_tmp, name.as_bytes())?;
    std::fs::rename(&latest_tmp, checkpoints_dir.join(LATEST))?;
    fsync_dir(checkpoints_dir)?;
    prune(checkpoints_dir, keep_last.max(1))?;
    Ok(final_dir)
}

/// Complete checkpoints (`step-*` with a manifest), oldest first.
pub fn list(checkpoints_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(checkpoints_dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
                    && p.join(MANIFEST).exists()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    dirs.sort();
    Ok(dirs)
}

fn prune(checkpoints_dir: &Path, keep_last: usize) -> anyhow::Result<()> {
    let dirs = list(checkpoints_dir)?;
    let latest = std::fs::read_to_string(checkpoints_dir.join(LATEST)).unwrap_or_default();
    for dir in dirs.iter().take(dirs.len().saturating_sub(keep_last)) {
        if dir.file_name().and_then(|n| n.to_str()) != Some(latest.trim()) {
            std::fs::remove_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        }
    }
    Ok(())
}

/// Resolves `--resume latest` (through `checkpoints/latest`) or a checkpoint path.
pub fn resolve(checkpoints_dir: &Path, which: &str) -> anyhow::Result<PathBuf> {
    if which != "latest" {
        return Ok(PathBuf::from(which));
    }
    let pointer = checkpoints_dir.join(LATEST);
    let name = std::fs::read_to_string(&pointer)
        .with_context(|| format!("{}: no checkpoint to resume from", pointer.display()))?;
    Ok(checkpoints_dir.join(name.trim()))
}

/// Reads and verifies a checkpoint: manifest, checksums of every file, and the rank state.
pub fn load(dir: &Path) -> anyhow::Result<(Manifest, RankState)> {
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("{}", manifest_path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: bad manifest", manifest_path.display()))?;
    if manifest.format != FORMAT {
        bail!(
            "{}: format {:?}, expected {FORMAT:?}",
            manifest_path.display(),
            manifest.format
        );
    }
    verify(dir, &manifest)?;
    let rank_path = dir.join(rank_file(0));
    let tensors = candle_core::safetensors::load(&rank_path, &Device::Cpu)
        .with_context(|| format!("{}", rank_path.display()))?;
    let take = |kind: &str| -> anyhow::Result<Vec<Tensor>> {
        manifest
            .params
            .iter()
            .map(|(n, shape)| {
                let key = format!("{kind}.{n}");
                let t = tensors
                    .get(&key)
                    .with_context(|| format!("{}: missing tensor {key}", rank_path.display()))?;
                if t.dims() != shape.as_slice() {
                    bail!(
                        "{}: tensor {key} has shape {:?}, manifest says {shape:?}",
                        rank_path.display(),
                        t.dims()
                    );
                }
                Ok(t.clone())
            })
            .collect()
    };
    let state = RankState {
        master: take("master")?,
        exp_avg: take("exp_avg")?,
        exp_avg_sq: take("exp_avg_sq")?,
    };
    Ok((manifest, state))
}

/// Checks size and CRC-32 of every file the manifest lists.
pub fn verify(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    for (name, expected) in &manifest.files {
        let path = dir.join(name);
        let actual = checksum(&path)?;
        if &actual != expected {
            bail!(
                "{}: checksum mismatch ({} bytes, crc {:08x}; manifest says {} bytes, crc {:08x}): the checkpoint is damaged",
                path.display(),
                actual.bytes,
                actual.crc32,
                expected.bytes,
                expected.crc32
            );
        }
    }
    Ok(())
}

pub fn checksum(path: &Path) -> anyhow::Result<FileSum> {
    use std::io::Read;
    let mut file = File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        bytes,
        crc32: hasher.finalize(),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = File::create(path).with_context(|| format!("{}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()
        .with_context(|| format!("{}", path.display()))
}

fn fsync_file(path: &Path) -> anyhow::Result<()> {
    File::open(path)?
        .sync_all()
        .with_context(|| format!("{}", path.display()))
}

fn fsync_dir(path: &Path) -> anyhow::Result<()> {
    File::open(path)?
        .sync_all()
        .with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(step: usize) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            step,
            world_size: 1,
            config_hash: "h".into(),
            data_order: serde_json::Value::Null,
            params: vec![("w".into(), vec![3])],
            master_dtype: "f32".into(),
            files: BTreeMap::new(),
        }
    }

    fn state(value: f32) -> RankState {
        let t = Tensor::new(&[value; 3], &Device::Cpu).unwrap();
        RankState {
            master: vec![t.clone()],
            exp_avg: vec![t.clone()],
            exp_avg_sq: vec![t],
        }
    }

    #[test]
    fn a_write_interrupted_at_any_stage_leaves_latest_on_a_complete_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = dir.path();
        save(ckpts, manifest(1), &state(1.0), &[], 3).unwrap();
        // A crash while step 2 was being written: a half-written temporary directory and a
        // temporary `latest` that was never renamed.
        std::fs::create_dir_all(ckpts.join(".step-00000002.tmp")).unwrap();
        std::fs::write(ckpts.join(".step-00000002.tmp").join(rank_file(0)), b"torn").unwrap();
        std::fs::write(ckpts.join(".latest.tmp"), b"step-00000002").unwrap();
        let latest = resolve(ckpts, "latest").unwrap();
        assert!(latest.ends_with("step-00000001"));
        let (m, s) = load(&latest).unwrap();
        assert_eq!(m.step, 1);
        assert_eq!(s.master[0].to_vec1::<f32>().unwrap(), vec![1.0; 3]);
        assert_eq!(
            list(ckpts).unwrap().len(),
            1,
            "temporary directories are not checkpoints"
        );
        // The resumed run writes step 2 again over the debris.
        save(ckpts, manifest(2), &state(2.0), &[], 3).unwrap();
        assert!(resolve(ckpts, "latest").unwrap().ends_with("step-00000002"));
        assert_eq!(
            load(&resolve(ckpts, "latest").unwrap()).unwrap().1.master[0]
                .to_vec1::<f32>()
                .unwrap(),
            vec![2.0; 3]
        );
    }

    #[test]
    fn damaged_files_and_old_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let ckpts = dir.path();
        for step in 1..=4 {
            save(ckpts, manifest(step), &state(step as f32), &[], 2).unwrap();
        }
        let kept: Vec<_> = list(ckpts)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(kept, ["step-00000003", "step-00000004"], "keep_last = 2");
        let rank = ckpts.join("step-00000004").join(rank_file(0));
        let mut bytes = std::fs::read(&rank).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&rank, bytes).unwrap();
        let err = load(&ckpts.join("step-00000004"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains("rank-00000.safetensors"),
            "{err}"
        );
    }
}
