//! Files written whole or not at all. The bytes go to a temporary file beside the target
//! (`NAME.tmp`), synced, then renamed over it; an error (a full disk) or a panic before then
//! removes the temporary, so the target is the old file (or none) or the new one, never a part
//! of one. The output directory's own files (`summary.json`, `run.json`, in-flight saves,
//! ranks' done marks) and the files `limo eval grade --out` and `limo data dump --out` write.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// A file being written in place of `path` (see the module documentation): [`commit`]
/// puts it there; dropped before then, it leaves `path` as it was.
///
/// A `path` that is a device or a pipe (`/dev/stdout`, a FIFO) is written straight: there is
/// nothing to rename over it.
///
/// [`commit`]: AtomicFile::commit
pub struct AtomicFile {
    out: BufWriter<File>,
    /// The temporary file and the path it becomes, until it is renamed; `None` when writing
    /// straight to the target.
    rename: Option<(PathBuf, PathBuf)>,
}

/// The temporary file `path` is written through: `NAME.tmp` in its directory.
pub fn temp_path(path: &Path) -> Option<PathBuf> {
    let mut name = path.file_name()?.to_os_string();
    name.push(".tmp");
    Some(path.with_file_name(name))
}

impl AtomicFile {
    /// Creates the temporary file of `path` (the file a symbolic link points to is replaced,
    /// not the link). Errors are those of creating `path`: the caller names it.
    pub fn create(path: &Path) -> io::Result<Self> {
        let existing = std::fs::metadata(path).ok();
        let target = match &existing {
            Some(m) if m.is_file() => std::fs::canonicalize(path)?,
            // A device or a pipe; a directory, which fails to open for writing as it should.
            Some(_) => return Self::straight(path),
            None => path.to_path_buf(),
        };
        let Some(tmp) = temp_path(&target) else {
            return Self::straight(path);
        };
        let file = File::create(&tmp)?;
        let this = Self {
            out: BufWriter::new(file),
            rename: Some((tmp.clone(), target)),
        };
        // The file it replaces keeps its permissions (dropping `this` removes the temporary).
        if let Some(m) = existing {
            std::fs::set_permissions(&tmp, m.permissions())?;
        }
        Ok(this)
    }

    fn straight(path: &Path) -> io::Result<Self> {
        Ok(Self {
            out: BufWriter::new(File::create(path)?),
            rename: None,
        })
    }

    /// Flushes and syncs the temporary file and renames it over the target.
    pub fn commit(mut self) -> io::Result<()> {
        self.out.flush()?;
        if let Some((tmp, target)) = &self.rename {
            self.out.get_ref().sync_all()?;
            std::fs::rename(tmp, target)?;
        }
        self.rename = None;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some((tmp, _)) = &self.rename {
            // Best effort: the error that got here is what the caller reports.
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `text` to `path` through a synced temporary file renamed into place, so a crash or
/// a full disk leaves the old file or the new one (summary.json, run.json, in-flight saves,
/// ranks' done marks), and no temporary file after an error.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let written = AtomicFile::create(path).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.commit()
    });
    written.with_context(|| format!("writing {}", path.display()))
}

/// Removes the temporary files of [`write_atomic`]s into the output directory `dir` that a
/// killed run left (`in-flight.json.tmp`, `in-flight.rank-N.json.tmp`, `summary.json.tmp`,
/// `run.json.tmp`, `.done.rank-N.json.tmp`), before a run writes there again.
pub(crate) fn remove_leftover_temps(dir: &Path) -> anyhow::Result<()> {
    let ours = |name: &str| {
        let Some(json) = name.strip_suffix(".tmp") else {
            return false;
        };
        json == crate::run::SUMMARY_FILE
            || json == crate::run::RUN_FILE
            || (json.ends_with(".json")
                && (json.starts_with("in-flight") || json.starts_with(".done.rank-")))
    };
    for path in crate::ranks::files_like(dir, "", ".json.tmp")? {
        let is_ours = path.file_name().is_some_and(|n| ours(&n.to_string_lossy()));
        if is_ours {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_target_changes_only_on_commit_and_a_dropped_file_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"new, but cut off").unwrap();
        file.flush().unwrap();
        assert_eq!(names(dir.path()), ["out.jsonl", "out.jsonl.tmp"]);
        // An error before commit: the file is dropped.
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(names(dir.path()), ["out.jsonl"]);

        let mut file = AtomicFile::create(&path).unwrap();
        file.write_all(b"new\n").unwrap();
        file.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(names(dir.path()), ["out.jsonl"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_permissions_and_a_link_its_target() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        write_atomic(&link, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(names(dir.path()), ["link.json", "out.json"]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn devices_are_written_straight() {
        let mut null = AtomicFile::create(Path::new("/dev/null")).unwrap();
        null.write_all(b"x").unwrap();
        null.commit().unwrap();
        // /dev/full: every write fails with ENOSPC, named as writing the file.
        let err = write_atomic(Path::new("/dev/full"), "x").unwrap_err();
        assert!(
            format!("{err:#}").starts_with("writing /dev/full: "),
            "{err:#}"
        );
        assert!(!Path::new("/dev/full.tmp").exists());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_and_the_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A path inside a file: nothing can be created there.
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let path = file.join("run.json");
        let err = write_atomic(&path, "{}").unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("writing {}: ", path.display())),
            "{err:#}"
        );
        assert_eq!(names(dir.path()), ["file"]);
    }

    #[test]
    fn leftover_temporaries_of_the_run_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let ours = [
            "in-flight.json.tmp",
            "in-flight.rank-1.json.tmp",
            "summary.json.tmp",
            "run.json.tmp",
            ".done.rank-2.json.tmp",
        ];
        let others = ["in-flight.json", "notes.json.tmp", "results.jsonl"];
        for name in ours.iter().chain(&others) {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        remove_leftover_temps(dir.path()).unwrap();
        let mut left = others.to_vec();
        left.sort();
        assert_eq!(names(dir.path()), left);
    }
}
