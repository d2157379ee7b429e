//! Standard output that a closed pipe does not turn into a panic.
//!
//! `println!` panics when stdout is a pipe whose reader has gone (`limo plan ... | head -3`):
//! Rust ignores SIGPIPE, so the write fails with EPIPE. A command whose reader has left has
//! nobody to tell, so the rest of its output is dropped and the command finishes normally
//! (its files are written either way). Any other failure (a full disk behind `>`) is an error.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set at the first EPIPE: later prints are skipped instead of failing again.
static READER_GONE: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> anyhow::Result<()> {
    if READER_GONE.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            READER_GONE.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("writing to standard output: {e}")),
    }
}

/// `println!` that returns `anyhow::Result<()>` (see the module's note).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;
