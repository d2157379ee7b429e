//! Which checkpoint a `--resume`, an export or a damaged `latest` names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::{list, replaced_dir, step_dir_name, LATEST, MANIFEST};

/// Resolves `--resume`: `latest` (through `checkpoints/latest`), a step number (`20`) or a
/// checkpoint's name (`step-00000020`) among this run's checkpoints (looked up there first),
/// or a path [`find`] accepts (a checkpoint, its `latest` pointer, a checkpoints or a run
/// directory). Anything else is an error listing the run's checkpoints.
pub fn resolve(checkpoints_dir: &Path, which: &str) -> anyhow::Result<PathBuf> {
    if which == LATEST {
        let pointer = checkpoints_dir.join(LATEST);
        let name = match std::fs::read_to_string(&pointer) {
            Ok(name) => name,
            // A kill right after the first checkpoint leaves it without `latest`.
            Err(_) if !list(checkpoints_dir)?.is_empty() => bail!(
                "{}: missing; {}: --resume auto continues from the newest, --resume STEP from \
                 another",
                pointer.display(),
                saved_list(checkpoints_dir)?
            ),
            Err(e) => Err(e)
                .with_context(|| format!("{}: no checkpoint to resume from", pointer.display()))?,
        };
        let (dir, aside) = (
            checkpoints_dir.join(name.trim()),
            replaced_dir(checkpoints_dir, name.trim()),
        );
        // A kill between the two renames that replace a step saved again: the old checkpoint,
        // complete, is still aside.
        if !dir.join(MANIFEST).is_file() && aside.join(MANIFEST).is_file() {
            return Ok(aside);
        }
        if !dir.join(MANIFEST).is_file() {
            bail!(
                "{}: names {:?}, which is not a complete checkpoint (no {}); {}",
                pointer.display(),
                name.trim(),
                dir.join(MANIFEST).display(),
                saved_list(checkpoints_dir)?
            );
        }
        return Ok(dir);
    }
    if !which.contains(std::path::MAIN_SEPARATOR) {
        let name = match which.parse::<usize>() {
            Ok(step) => step_dir_name(step),
            Err(_) => which.to_string(),
        };
        let in_run = checkpoints_dir.join(name);
        if in_run.join(MANIFEST).is_file() {
            return Ok(in_run);
        }
    }
    let as_path = Path::new(which);
    if as_path.exists() {
        return find(as_path).with_context(|| format!("--resume {which}"));
    }
    bail!(
        "--resume {which}: no checkpoint by that name or path ({})",
        saved_list(checkpoints_dir)?
    )
}

/// For a checkpoint `latest` named that failed to load: the run's other checkpoints, as the
/// `--resume STEP` that continues from one (the damaged one is kept for the user to look at).
pub fn others_hint(checkpoints_dir: &Path, failed: &Path) -> String {
    let steps: Vec<String> = list(checkpoints_dir)
        .unwrap_or_default()
        .iter()
        .filter(|d| d.file_name() != failed.file_name())
        .filter_map(|d| super::step_of(d))
        .map(|step| step.to_string())
        .collect();
    match steps.last() {
        Some(last) => format!(
            "--resume {last} continues from the newest other checkpoint in {} (steps {})",
            checkpoints_dir.display(),
            steps.join(", ")
        ),
        None => format!(
            "there is no other checkpoint in {}",
            checkpoints_dir.display()
        ),
    }
}

/// "this run's checkpoints in DIR: step-..., step-..." (or "none"), for errors.
fn saved_list(checkpoints_dir: &Path) -> anyhow::Result<String> {
    let saved: Vec<String> = list(checkpoints_dir)?
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    Ok(format!(
        "this run's checkpoints in {}: {}",
        checkpoints_dir.display(),
        if saved.is_empty() {
            "none".to_string()
        } else {
            saved.join(", ")
        }
    ))
}

/// The checkpoint `path` names: a checkpoint (step) directory, a `latest` pointer file, a
/// `checkpoints/` directory (its latest) or a run directory (its `checkpoints/` latest).
pub fn find(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join(MANIFEST).is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_file() && path.file_name().is_some_and(|n| n == LATEST) {
        return resolve(path.parent().unwrap_or(Path::new(".")), "latest");
    }
    for dir in [path.to_path_buf(), path.join("checkpoints")] {
        if dir.join(LATEST).is_file() {
            return resolve(&dir, "latest");
        }
    }
    bail!(
        "{}: not a checkpoint (no {MANIFEST}), a checkpoints directory or a run directory (no {LATEST})",
        path.display()
    )
}
