//! One job per directory: rank 0 of a `limo train` or `limo eval` holds an OS lock on
//! `<dir>/.lock` (holding its pid) for the whole run, so a second job into the same directory
//! (a job submitted twice, a requeue while the old job still runs) is refused instead of
//! interleaving its files with the first's. The OS releases the lock when the process ends,
//! however it ends; a holder still exiting (a killed run being replaced) gets a few seconds.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a second job waits for the holder to go before it is refused.
pub const WAIT: Duration = Duration::from_secs(10);

/// Locks `dir` (created if missing) for this process, or fails naming the holder's pid and
/// what it is `doing` ("training into this run directory"). `None` on a filesystem without
/// locks, after a warning: better unprotected than not at all.
pub fn lock_dir(dir: &Path, doing: &str) -> anyhow::Result<Option<File>> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: a file, not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let path = dir.join(".lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}", path.display()))?;
    let deadline = Instant::now() + WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                bail!(
                    "{}: another limo process (pid {}) is {doing}",
                    dir.display(),
                    holder.trim()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(
                    "{}: cannot lock ({e}); a second job here would not be refused",
                    path.display()
                );
                return Ok(None);
            }
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(Some(file))
}
