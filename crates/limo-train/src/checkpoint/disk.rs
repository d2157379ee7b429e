//! The disk a run needs in `output.dir`: each checkpoint (every rank's slices of the master
//! weights and both Adam moments), how many exist at once, and the export. `limo plan` prints
//! it; `limo train` warns before the first step when the filesystem has less free, instead of
//! failing at the first checkpoint that does not fit, hours in.

use std::path::Path;

use limo_model::Qwen2Config;
use serde::Serialize;

use crate::optim::master_dtype;
use crate::zero3::plan::{group_sizes, padded, GIB};
use crate::TrainConfig;

/// Bytes on disk, by what holds them (safetensors headers and side files not counted: KiB to a
/// few MiB against GiB).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiskUse {
    /// One rank's file: its slices of master weights, exp_avg and exp_avg_sq.
    pub rank_file: u64,
    /// One checkpoint: every rank's file.
    pub checkpoint: u64,
    /// Checkpoints on disk at once: `keep_last`, and the next while it is written.
    pub checkpoints_at_once: u64,
    /// The exported model (0 with `export_dtype = "none"`).
    pub export: u64,
    /// Everything at once: `checkpoints_at_once x checkpoint + export`.
    pub peak: u64,
}

/// What `config`'s run of model `cfg` over `world` ranks writes.
pub fn disk_use(cfg: &Qwen2Config, config: &TrainConfig, world: u64) -> DiskUse {
    let master = master_dtype(config.model.dtype.dtype()).size_in_bytes() as u64;
    let sizes = group_sizes(cfg);
    // Each group is padded to a multiple of the world size; a rank holds 1/world of each.
    let shard: u64 = sizes.iter().map(|&n| padded(n, world) / world).sum();
    let rank_file = 3 * master * shard;
    let checkpoint = rank_file * world;
    let checkpoints_at_once = (config.output.keep_last.max(1) as u64).saturating_add(1);
    let params: u64 = sizes.iter().sum();
    let export = config
        .output
        .export_dtype
        .dtype()
        .map_or(0, |d| params * d.size_in_bytes() as u64);
    DiskUse {
        rank_file,
        checkpoint,
        checkpoints_at_once,
        export,
        // keep_last may be "all of them" written large
        peak: checkpoints_at_once
            .saturating_mul(checkpoint)
            .saturating_add(export),
    }
}

/// A warning when `free` bytes, with the `reused` bytes of checkpoints and an export already in
/// the run directory (a resumed run replaces them), cannot hold `need.peak`.
pub fn space_warning(dir: &Path, free: u64, reused: u64, need: &DiskUse) -> Option<String> {
    let room = free.saturating_add(reused);
    if room >= need.peak {
        return None;
    }
    let gib = human;
    Some(format!(
        "{}: {} free{}, but the run needs up to {}: {} checkpoints of {} at once (keep_last, and \
         the next while it is written){}; it fails when the disk fills (lower output.keep_last, \
         or free space)",
        dir.display(),
        gib(free),
        if reused > 0 {
            format!(" (+{} of its own checkpoints and export)", gib(reused))
        } else {
            String::new()
        },
        gib(need.peak),
        need.checkpoints_at_once,
        gib(need.checkpoint),
        if need.export > 0 {
            format!(" and a {} export", gib(need.export))
        } else {
            String::new()
        },
    ))
}

/// An error line when `free` bytes cannot hold the `need` bytes of `what` in `dir`.
pub fn shortfall(dir: &Path, free: u64, need: u64, what: &str) -> Option<String> {
    (free < need).then(|| {
        format!(
            "{}: {} free, {what} needs {}",
            dir.display(),
            human(free),
            human(need)
        )
    })
}

/// GiB with one decimal, or whole MiB below 1 GiB.
fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir` (or its nearest
/// existing ancestor: the run directory may not exist yet).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let path = std::ffi::CString::new(existing.as_os_str().as_bytes())?;
    // SAFETY: statvfs(3) fills the zeroed struct from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Bytes of the files under `dir` (0 when it does not exist).
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(peak: u64) -> DiskUse {
        DiskUse {
            rank_file: GIB,
            checkpoint: 2 * GIB,
            checkpoints_at_once: 3,
            export: peak - 6 * GIB,
            peak,
        }
    }

    #[test]
    fn the_warning_counts_what_a_resumed_run_replaces() {
        let dir = Path::new("/runs/a");
        let n = need(7 * GIB);
        assert!(space_warning(dir, 7 * GIB, 0, &n).is_none());
        assert!(space_warning(dir, 3 * GIB, 4 * GIB, &n).is_none());
        let w = space_warning(dir, 3 * GIB, GIB / 2, &n).unwrap();
        for part in [
            "/runs/a: 3.0 GiB free (+512 MiB of its own",
            "needs up to 7.0 GiB: 3 checkpoints of 2.0 GiB",
            "a 1.0 GiB export",
        ] {
            assert!(w.contains(part), "{part:?} not in {w}");
        }
    }

    #[test]
    fn a_shortfall_names_the_directory_and_both_sizes() {
        let dir = Path::new("/models/out");
        assert!(shortfall(dir, 2 * GIB, 2 * GIB, "the export").is_none());
        assert_eq!(
            shortfall(dir, 300 << 20, 2 * GIB, "the export").unwrap(),
            "/models/out: 300 MiB free, the export needs 2.0 GiB"
        );
    }

    #[test]
    fn free_bytes_reads_the_nearest_existing_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let free = free_bytes(tmp.path()).unwrap();
        assert!(free > 0);
        let missing = tmp.path().join("not/yet/there");
        let again = free_bytes(&missing).unwrap();
        // The same filesystem, give or take what other processes wrote in between.
        assert!(again.abs_diff(free) < free / 10 + GIB, "{free} vs {again}");
        std::fs::write(tmp.path().join("f"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/g"), vec![0u8; 24]).unwrap();
        assert_eq!(tree_bytes(tmp.path()), 1024);
        assert_eq!(tree_bytes(&missing), 0);
    }
}
