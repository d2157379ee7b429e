//! Training checkpoints: `<output>/checkpoints/step-NNNNNNNN/` holding `manifest.json` (step,
//! world size, config hash, data order, parameter and group layout, checksums), one
//! `rank-RRRRR.safetensors` per rank with that rank's ZeRO-3 slices of the fp32 master weights
//! and Adam moments (`master.<group>`, `exp_avg.<group>`, `exp_avg_sq.<group>`, flat), and the
//! model's `config.json` plus tokenizer so that `limo export` needs nothing else.
//!
//! A slice is a range of a group's flat layout, so a checkpoint written at one world size is
//! read at another by re-slicing ([`ShardReader`]): no conversion step.
//!
//! A checkpoint is written to a hidden temporary directory (every rank writes its own file
//! there), every file and the directory are fsynced, then rank 0 renames it into place, and
//! only then replaces `checkpoints/latest` (also by rename). A crash at any moment leaves
//! `latest` naming a complete checkpoint.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use limo_dist::comm::Communicator;
use limo_model::{ModelWeights, Qwen2Config};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::optim::{master_dtype, Flat, EXP_AVG, EXP_AVG_SQ, MASTER};
use crate::order::DataOrder;
use crate::zero3::groups::Group;
use crate::zero3::ShardedModel;

pub const MANIFEST: &str = "manifest.json";
pub const LATEST: &str = "latest";
pub const FORMAT: &str = "limo-checkpoint-v2";
/// The three per-rank state lists, as named in the rank files.
pub const KINDS: [&str; 3] = ["master", "exp_avg", "exp_avg_sq"];

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
    /// ZeRO-3 groups: their names and the parameters flattened into each, in order.
    pub groups: Vec<GroupLayout>,
    /// dtype of the master weights and moments ("f32" or "f64").
    pub master_dtype: String,
    /// For every file of the checkpoint: size in bytes and CRC-32.
    pub files: BTreeMap<String, FileSum>,
    /// Hash of the training rows (`source::rows_hash`, hex): a resume on other rows is
    /// refused. Absent in checkpoints written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupLayout {
    pub name: String,
    pub params: Vec<String>,
    /// Elements before padding.
    pub numel: usize,
}

impl GroupLayout {
    pub fn of(groups: &[Group]) -> Vec<Self> {
        groups
            .iter()
            .map(|g| GroupLayout {
                name: g.name.clone(),
                params: g.params.iter().map(|p| p.name.clone()).collect(),
                numel: g.numel(),
            })
            .collect()
    }

    fn shard_len(&self, world: usize) -> usize {
        self.numel.div_ceil(world)
    }
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

/// The step of a checkpoint directory named by [`step_dir_name`]; `None` for another name.
pub fn step_of(dir: &Path) -> Option<usize> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

/// One rank's slices, one flat tensor per group for each of the three lists.
pub struct RankState {
    pub master: Vec<Tensor>,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
}

impl RankState {
    fn lists(&self) -> [&Vec<Tensor>; 3] {
        [&self.master, &self.exp_avg, &self.exp_avg_sq]
    }
}

/// Files copied into every checkpoint beside the state (model config, tokenizer).
pub struct SideFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Writes checkpoint `manifest.step` under `checkpoints_dir` atomically, points `latest` at it
/// and deletes all but the newest `keep_last` complete checkpoints. A collective: every rank
/// calls it with its own `state`; rank 0 writes the manifest and side files and publishes the
/// checkpoint once every rank's file is on disk. A failure on any rank fails every rank, and
/// `latest` keeps naming the previous checkpoint.
pub fn save(
    comm: &dyn Communicator,
    device: &Device,
    checkpoints_dir: &Path,
    mut manifest: Manifest,
    state: &RankState,
    side_files: &[SideFile],
    keep_last: usize,
) -> anyhow::Result<PathBuf> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let name = step_dir_name(manifest.step);
    let tmp = checkpoints_dir.join(format!(".{name}.tmp"));
    let prepared = if rank == 0 {
        prepare_tmp(checkpoints_dir, &tmp)
    } else {
        Ok(())
    };
    crate::zero3::agree(comm, device, prepared, "creating the checkpoint directory")?;

    let written = write_rank_file(&tmp, rank, &manifest, state);
    let sum = written
        .as_ref()
        .map_or(FileSum { bytes: 0, crc32: 0 }, |s| s.clone());
    let sums = comm
        .all_gather(&Tensor::new(
            &[sum.bytes as f64, f64::from(sum.crc32)],
            device,
        )?)?
        .to_vec1::<f64>()?;
    let written = crate::zero3::agree(comm, device, written, "writing a rank file");
    written?;

    let published = if rank == 0 {
        for r in 0..world {
            let file_sum = FileSum {
                bytes: sums[2 * r] as u64,
                crc32: sums[2 * r + 1] as u32,
            };
            manifest.files.insert(rank_file(r), file_sum);
        }
        publish(
            checkpoints_dir,
            &tmp,
            &name,
            &manifest,
            side_files,
            keep_last,
        )
    } else {
        Ok(())
    };
    crate::zero3::agree(comm, device, published, "publishing the checkpoint")?;
    Ok(checkpoints_dir.join(name))
}

fn prepare_tmp(checkpoints_dir: &Path, tmp: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(checkpoints_dir)
        .with_context(|| format!("{}", checkpoints_dir.display()))?;
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).with_context(|| format!("{}", tmp.display()))?;
    }
    std::fs::create_dir_all(tmp).with_context(|| format!("{}", tmp.display()))
}

fn write_rank_file(
    tmp: &Path,
    rank: usize,
    manifest: &Manifest,
    state: &RankState,
) -> anyhow::Result<FileSum> {
    let path = tmp.join(rank_file(rank));
    let mut tensors: Vec<(String, &Tensor)> = Vec::with_capacity(3 * manifest.groups.len());
    for (kind, list) in KINDS.iter().zip(state.lists()) {
        if list.len() != manifest.groups.len() {
            bail!(
                "rank {rank}: {} {kind} slices for {} groups",
                list.len(),
                manifest.groups.len()
            );
        }
        for (group, t) in manifest.groups.iter().zip(list) {
            tensors.push((format!("{kind}.{}", group.name), t));
        }
    }
    // Its message already holds the I/O cause: as a context, a full disk read "No space left on
    // device (os error 28): No space left on device (os error 28)".
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), *t)), None, &path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    fsync_path(&path)?;
    checksum(&path)
}

fn publish(
    checkpoints_dir: &Path,
    tmp: &Path,
    name: &str,
    manifest: &Manifest,
    side_files: &[SideFile],
    keep_last: usize,
) -> anyhow::Result<()> {
    let mut manifest = manifest.clone();
    for side in side_files {
        let path = tmp.join(&side.name);
        write_synced(&path, &side.bytes)?;
        manifest.files.insert(side.name.clone(), checksum(&path)?);
    }
    write_synced(
        &tmp.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    fsync_path(tmp)?;

    let final_dir = checkpoints_dir.join(name);
    // The same step saved again (a run resumed from an older checkpoint): `latest` may name the
    // old directory, so it is renamed aside and deleted only once the new one is in place, not
    // deleted first (a crash during a long delete left `latest` naming nothing).
    let replaced = replaced_dir(checkpoints_dir, name);
    if final_dir.exists() {
        if replaced.exists() {
            std::fs::remove_dir_all(&replaced)
                .with_context(|| format!("{}", replaced.display()))?;
        }
        std::fs::rename(&final_dir, &replaced)
            .with_context(|| format!("{}", final_dir.display()))?;
    }
    std::fs::rename(tmp, &final_dir).with_context(|| format!("{}", final_dir.display()))?;
    fsync_path(checkpoints_dir)?;
    let latest_tmp = checkpoints_dir.join(".latest.tmp");
    write_synced(&latest_tmp, name.as_bytes())?;
    std::fs::rename(&latest_tmp, checkpoints_dir.join(LATEST))
        .with_context(|| format!("{}", checkpoints_dir.join(LATEST).display()))?;
    fsync_path(checkpoints_dir)?;
    // The new checkpoint is in place: a delete that fails (permissions, an immutable file)
    // costs disk space, not the run, and the next save tries again.
    let cleaned = if replaced.exists() {
        std::fs::remove_dir_all(&replaced).with_context(|| format!("{}", replaced.display()))
    } else {
        Ok(())
    };
    if let Err(e) = cleaned.and_then(|()| prune(checkpoints_dir, keep_last.max(1))) {
        tracing::warn!("old checkpoints not deleted: {e:#}");
    }
    Ok(())
}

/// Where [`publish`] moves checkpoint `name` while a new one of the same step takes its place.
fn replaced_dir(checkpoints_dir: &Path, name: &str) -> PathBuf {
    checkpoints_dir.join(format!(".{name}.replaced"))
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

/// Deletes all but the newest `keep_last` complete checkpoints (never `latest`'s), and what a
/// kill during an earlier delete left behind.
fn prune(checkpoints_dir: &Path, keep_last: usize) -> anyhow::Result<()> {
    let dirs = list(checkpoints_dir)?;
    let latest = std::fs::read_to_string(checkpoints_dir.join(LATEST)).unwrap_or_default();
    let is_latest = |dir: &Path| dir.file_name().and_then(|n| n.to_str()) == Some(latest.trim());
    for dir in dirs.iter().take(dirs.len().saturating_sub(keep_last)) {
        if !is_latest(dir) {
            discard(checkpoints_dir, dir)?;
        }
    }
    // Debris of kills (prune runs right after a publish, when no other save is in flight):
    // directories renamed aside for deletion or replacement, temporary directories of saves
    // that never finished, and step directories without a manifest (a checkpoint is published
    // whole by a rename, so only a delete that lost its manifest first leaves one; limo before
    // session 9 deleted in place, and such a directory, invisible to `list`, was never
    // deleted: a full checkpoint's disk space per kill).
    let entries = std::fs::read_dir(checkpoints_dir)
        .with_context(|| format!("{}", checkpoints_dir.display()))?;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !path.is_dir() || is_latest(&path) {
            continue;
        }
        let aside = [DISCARDED, ".replaced", ".tmp"];
        if name.starts_with('.') && aside.iter().any(|suffix| name.ends_with(suffix)) {
            std::fs::remove_dir_all(&path).with_context(|| format!("{}", path.display()))?;
        } else if name.starts_with("step-") && !path.join(MANIFEST).exists() {
            discard(checkpoints_dir, &path)?;
        }
    }
    Ok(())
}

/// Suffix of a checkpoint directory being deleted.
const DISCARDED: &str = ".discarded";

/// Deletes checkpoint `dir` so that a kill part-way leaves no `step-*` directory: renamed
/// aside (atomic), then deleted; the next prune finishes what a kill interrupted.
fn discard(checkpoints_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("step");
    let aside = checkpoints_dir.join(format!(".{name}{DISCARDED}"));
    if aside.exists() {
        std::fs::remove_dir_all(&aside).with_context(|| format!("{}", aside.display()))?;
    }
    std::fs::rename(dir, &aside).with_context(|| format!("{}", dir.display()))?;
    std::fs::remove_dir_all(&aside).with_context(|| format!("{}", aside.display()))
}

/// Reads a checkpoint's manifest and checks its format.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
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
    if manifest.world_size == 0 {
        bail!("{}: world_size is 0", manifest_path.display());
    }
    Ok(manifest)
}

/// Reads ranges of the groups' flat layouts from a checkpoint written at any world size. Each
/// rank file is checksummed the first time it is read, so a rank verifies only what it uses.
pub struct ShardReader {
    dir: PathBuf,
    pub manifest: Manifest,
    maps: Vec<Option<memmap2::Mmap>>,
}

impl ShardReader {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let manifest = read_manifest(dir)?;
        let maps = (0..manifest.world_size).map(|_| None).collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            maps,
        })
    }

    pub fn master_dtype(&self) -> DType {
        if self.manifest.master_dtype == "f64" {
            DType::F64
        } else {
            DType::F32
        }
    }

    fn map(&mut self, rank: usize) -> anyhow::Result<&memmap2::Mmap> {
        if self.maps[rank].is_none() {
            let name = rank_file(rank);
            let path = self.dir.join(&name);
            let expected = self
                .manifest
                .files
                .get(&name)
                .with_context(|| format!("{}: not in the manifest", path.display()))?;
            verify_file(&path, expected)?;
            let file = File::open(&path).with_context(|| format!("{}", path.display()))?;
            // SAFETY: a read-only map of a checkpoint file whose checksum was just verified;
            // checkpoints are never modified in place.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("{}", path.display()))?;
            self.maps[rank] = Some(map);
        }
        Ok(self.maps[rank].as_ref().expect("just mapped"))
    }

    /// Elements `range` of group `group`'s flat layout of list `kind` (zero past its end: the
    /// padding of a new world size).
    pub fn range(&mut self, kind: &str, group: usize, range: Range<usize>) -> anyhow::Result<Flat> {
        let layout = self.manifest.groups[group].clone();
        let old_len = layout.shard_len(self.manifest.world_size);
        let dtype = self.master_dtype();
        let mut out = match dtype {
            DType::F64 => Flat::F64(Vec::with_capacity(range.len())),
            _ => Flat::F32(Vec::with_capacity(range.len())),
        };
        let end = range.end.min(layout.numel);
        let mut i = range.start;
        while i < end {
            let rank = i / old_len;
            let stop = end.min((rank + 1) * old_len);
            let key = format!("{kind}.{}", layout.name);
            let path = self.dir.join(rank_file(rank));
            let map = self.map(rank)?;
            let tensors = safetensors::SafeTensors::deserialize(map)
                .with_context(|| format!("{}", path.display()))?;
            let view = tensors
                .tensor(&key)
                .with_context(|| format!("{}: missing tensor {key}", path.display()))?;
            if view.shape() != [old_len] {
                bail!(
                    "{}: tensor {key} has shape {:?}, expected [{old_len}]",
                    path.display(),
                    view.shape()
                );
            }
            let (from, to) = (i - rank * old_len, stop - rank * old_len);
            append_elements(&mut out, view, from..to)
                .with_context(|| format!("{}: tensor {key}", path.display()))?;
            i = stop;
        }
        out.resize(range.len());
        Ok(out)
    }

    /// The parameters of list `kind` as full tensors (what export writes), one group at a time.
    pub fn params(
        &mut self,
        kind: &str,
        mut each: impl FnMut(&str, Tensor) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let shapes: BTreeMap<String, Vec<usize>> = self.manifest.params.iter().cloned().collect();
        for g in 0..self.manifest.groups.len() {
            let layout = self.manifest.groups[g].clone();
            let mut start = 0;
            for name in &layout.params {
                let shape = shapes.get(name).with_context(|| {
                    format!("manifest: group {} names unknown {name}", layout.name)
                })?;
                let n: usize = shape.iter().product();
                let flat = self.range(kind, g, start..start + n)?;
                each(name, flat.to_tensor(shape, &Device::Cpu)?)?;
                start += n;
            }
        }
        Ok(())
    }
}

fn append_elements(
    out: &mut Flat,
    view: safetensors::tensor::TensorView,
    range: Range<usize>,
) -> anyhow::Result<()> {
    let bytes = view.data();
    match (out, view.dtype()) {
        (Flat::F32(v), safetensors::Dtype::F32) => v.extend(
            bytes[4 * range.start..4 * range.end]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        ),
        (Flat::F64(v), safetensors::Dtype::F64) => v.extend(
            bytes[8 * range.start..8 * range.end]
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))),
        ),
        (_, dtype) => bail!("dtype {dtype:?} does not match the manifest's master dtype"),
    }
    Ok(())
}

/// The full tensors of list `kind` ("master", "exp_avg" or "exp_avg_sq") by parameter name,
/// merged from every rank's slices.
pub fn load_params(dir: &Path, kind: &str) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let mut reader = ShardReader::open(dir)?;
    let mut out = BTreeMap::new();
    reader.params(kind, |name, t| {
        out.insert(name.to_string(), t);
        Ok(())
    })?;
    Ok(out)
}

/// Checks size and CRC-32 of every file the manifest lists.
pub fn verify(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    for (name, expected) in &manifest.files {
        verify_file(&dir.join(name), expected)?;
    }
    Ok(())
}

fn verify_file(path: &Path, expected: &FileSum) -> anyhow::Result<()> {
    let actual = checksum(path)?;
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
    (file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("{}", path.display()))
}

/// Flushes a file or a directory (its entries) to disk.
pub(crate) fn fsync_path(path: &Path) -> anyhow::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}", path.display()))
}

// ---- a training run's checkpoints: what `train` saves and restores ----

pub fn save_run(
    model: &ShardedModel,
    order: &DataOrder,
    step: usize,
    dir: &Path,
    config: &TrainConfig,
    side: &[SideFile],
    rows_hash: u64,
) -> anyhow::Result<()> {
    let manifest = Manifest {
        format: FORMAT.into(),
        step,
        world_size: model.world_size(),
        config_hash: config.trajectory_hash(model.world_size()),
        data_order: order.save(),
        params: param_layout(&model.cfg),
        groups: GroupLayout::of(&model.groups),
        master_dtype: format!("{:?}", model.optimizer()?.master_dtype()).to_lowercase(),
        files: Default::default(),
        rows_hash: Some(format!("{rows_hash:016x}")),
    };
    let started = std::time::Instant::now();
    let opt = model.optimizer()?;
    let rank_state = RankState {
        master: opt.host(MASTER)?,
        exp_avg: opt.host(EXP_AVG)?,
        exp_avg_sq: opt.host(EXP_AVG_SQ)?,
    };
    let path = save(
        model.comm(),
        &model.device,
        dir,
        manifest,
        &rank_state,
        side,
        config.output.keep_last,
    )?;
    if model.rank() == 0 {
        // Size and time: what `output.save_steps` costs, to weigh against the steps a crash loses.
        let gib = disk::tree_bytes(&path) as f64 / (1u64 << 30) as f64;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(step, path = %path.display(), gib = %format!("{gib:.2}"),
            seconds = %format!("{seconds:.1}"), "checkpoint saved");
    }
    Ok(())
}

/// Parameter names and shapes in checkpoint order, as a manifest lists them.
pub fn param_layout(cfg: &Qwen2Config) -> Vec<(String, Vec<usize>)> {
    ModelWeights::specs(cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect()
}

/// The run's config, kept in every checkpoint (checkpoints from before it lack it).
pub const RUN_CONFIG: &str = "run-config.toml";

/// `field: here X, the checkpoint's run Y` for every field of the trajectory that differs
/// between `config` and the config of the run that wrote checkpoint `dir` (at `saved_world`
/// ranks); None when the checkpoint keeps no config, or one this limo cannot read.
fn config_differences(
    dir: &Path,
    config: &TrainConfig,
    world: usize,
    saved_world: usize,
) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(dir.join(RUN_CONFIG)).ok()?;
    let saved = TrainConfig::parse(&text, RUN_CONFIG, &[]).ok()?;
    let flat = |c: &TrainConfig, world: usize| {
        let mut out = Vec::new();
        for (section, view) in ["model", "data", "train"]
            .iter()
            .zip(c.trajectory_view(world))
        {
            crate::agreement::flatten_json(section, &view, &mut out);
        }
        out
    };
    let (mine, theirs) = (flat(config, world), flat(&saved, saved_world));
    Some(crate::agreement::differences(
        mine,
        theirs,
        "the checkpoint's run",
    ))
}

/// What a checkpoint of another run's configuration is refused as (every other checkpoint of
/// the run would be too: no hint to resume from one of them).
pub const DIFFERENT_RUN: &str =
    "written by a run with a different model, data or train configuration";

/// Loads this rank's slices from a checkpoint written at any world size with the same rows
/// per step.
pub fn restore_run(
    model: &mut ShardedModel,
    dir: &Path,
    config: &TrainConfig,
    rows: usize,
    rows_hash: u64,
) -> anyhow::Result<(DataOrder, usize)> {
    let mut reader = ShardReader::open(dir)?;
    let manifest = reader.manifest.clone();
    let world = model.world_size();
    if manifest.config_hash != config.trajectory_hash(world) {
        let fields = match config_differences(dir, config, world, manifest.world_size) {
            Some(fields) if !fields.is_empty() => {
                // Not a key of the config: what sets it.
                let fields = fields.iter().map(|f| match f.starts_with("train.rows_per_step") {
                    true => format!("{f} (rows per step: train.batch_size x grad_accum x ranks, or train.global_batch_size)"),
                    false => f.clone(),
                });
                format!(": {}", fields.collect::<Vec<_>>().join("; "))
            }
            _ => " (or a different number of rows per step: batch_size x grad_accum x world size, or global_batch_size)".into(),
        };
        bail!(
            "{}: {DIFFERENT_RUN}{fields}; resume with the same config",
            dir.display()
        );
    }
    if manifest.params != param_layout(&model.cfg)
        || manifest.groups != GroupLayout::of(&model.groups)
    {
        bail!("{}: its parameters do not match the model", dir.display());
    }
    let want = master_dtype(model.dtype);
    if reader.master_dtype() != want {
        bail!("{}: master weights are not {want:?}", dir.display());
    }
    // Before any state is touched: a data order that does not fit the rows fails the resume.
    let permutation = config.train.sampler.permutation();
    let order = DataOrder::restore(&manifest.data_order, rows, permutation)
        .with_context(|| format!("{}: data_order", dir.join(MANIFEST).display()))?;
    if manifest
        .rows_hash
        .as_ref()
        .is_some_and(|h| *h != format!("{rows_hash:016x}"))
    {
        bail!(
            "{}: written by a run that trained on other rows (the file at data.path, or what it \
             tokenizes to, changed since); resume with the same data, or start a new run from \
             the export (model.path = \"OUT/model\")",
            dir.display()
        );
    }
    let rank = model.rank();
    let mut lists: Vec<Vec<Flat>> = Vec::new();
    for kind in KINDS {
        let slices = (0..model.groups.len())
            .map(|g| reader.range(kind, g, model.groups[g].shard_range(world, rank)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        lists.push(slices);
    }
    let [master, exp_avg, exp_avg_sq]: [Vec<Flat>; 3] =
        lists.try_into().expect("three state lists");
    model.restore_state(&master, &exp_avg, &exp_avg_sq, manifest.step as u64)?;
    Ok((order, manifest.step))
}

pub fn side_files(model_dir: &Path, tokenizer: Option<&Path>) -> anyhow::Result<Vec<SideFile>> {
    let mut files = Vec::new();
    for name in ["config.json", "generation_config.json"] {
        let path = model_dir.join(name);
        if path.exists() {
            let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
            // Carried into every checkpoint and the export, where `limo eval` reads it.
            let json = serde_json::from_slice::<serde_json::Value>(&bytes);
            match json {
                Ok(v) if v.is_object() => {}
                Ok(_) => bail!("{}: not a JSON object", path.display()),
                Err(e) => bail!("{}: malformed: {e}", path.display()),
            }
            files.push(SideFile {
                name: name.into(),
                bytes,
            });
        }
    }
    if let Some(tok) = tokenizer {
        let dir = if tok.is_dir() {
            tok.to_path_buf()
        } else {
            tok.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let json = if tok.is_dir() {
            tok.join("tokenizer.json")
        } else {
            tok.to_path_buf()
        };
        files.push(SideFile {
            name: "tokenizer.json".into(),
            bytes: std::fs::read(&json)?,
        });
        for name in ["tokenizer_config.json", "chat_template.jinja"] {
            if dir.join(name).exists() {
                files.push(SideFile {
                    name: name.into(),
                    bytes: std::fs::read(dir.join(name))?,
                });
            }
        }
    }
    Ok(files)
}

mod afresh;
pub mod disk;
mod find;
pub use afresh::{clear_an_earlier_start, start_afresh};
pub use find::{find, others_hint, resolve};
#[cfg(test)]
mod tests;
