//! Stopping a run cleanly on SIGTERM, SIGINT, SIGUSR1 or SIGHUP: what a scheduler sends before
//! it preempts or times out a job (Slurm: SIGTERM, then SIGKILL after `KillWait`;
//! `--signal=USR1@T` warns T seconds ahead), what Ctrl-C sends, and what a closed terminal or
//! dropped SSH session sends (nohup's SIGHUP stays ignored: see `install`). While
//! [`StopOnSignals`] is held, the first such signal only records itself; the trainer reads it
//! between steps and stops with a checkpoint, `limo eval` saves its unfinished responses.
//!
//! A repeat within [`REPEAT_WINDOW`] is ignored: one Ctrl-C, or one scheduler's SIGTERM, reaches
//! a rank twice under `limo launch` (directly, and forwarded by the launcher). A repeat after it
//! is someone insisting, and ends the process at once, as the signal would without us.

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::time::Duration;

/// The signals that ask for a clean stop.
pub const STOP_SIGNALS: [libc::c_int; 4] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGHUP];

/// Repeats of a stop signal closer than this to the first are the same request.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// The first stop signal received while handlers are installed, 0 for none.
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// When it came, in CLOCK_MONOTONIC milliseconds.
static FIRST_AT_MS: AtomicI64 = AtomicI64::new(0);

/// CLOCK_MONOTONIC in milliseconds; clock_gettime(2) is async-signal-safe.
fn monotonic_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// Writes to stderr with write(2), the one way to print that is safe in a signal handler.
fn say(msg: &[u8]) {
    // SAFETY: write(2) reads `msg.len()` bytes from a live slice.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // At least 1: 0 marks "no signal yet". The first handler to set the time is the request;
    // one running at the same moment on another thread sees it set.
    let now = monotonic_ms().max(1);
    match FIRST_AT_MS.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => {
            REQUESTED.store(sig, Ordering::SeqCst);
            say(b"limo: stop requested: saving after this step (the signal again, a second later, stops at once)\n");
        }
        Err(first) if now - first >= REPEAT_WINDOW.as_millis() as i64 => {
            // SAFETY: signal(2) and raise(3) are async-signal-safe; the default action ends us.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
        }
        Err(_) => {}
    }
}

/// The exit status of a process that stopped cleanly on `sig` (SIGTERM when another process
/// of the job received it): 128 + its number, as a shell reports a process the signal ended,
/// so a job script tells "stopped, checkpointed" from "failed" (1).
pub fn exit_status(sig: Option<libc::c_int>) -> i32 {
    128 + sig.unwrap_or(libc::SIGTERM)
}

/// Whether `sig` is ignored in this process. An ignored signal stays ignored, as Python leaves
/// it: a shell script's background job ignores Ctrl-C (SIGINT), and nohup SIGHUP; both should
/// go on doing so, in `limo launch` and (inherited across exec) in its ranks.
pub fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: reads the current action without changing it.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut current);
        current.sa_sigaction == libc::SIG_IGN
    }
}

/// Stop signals are recorded while this is held; dropping it restores the previous handlers
/// (outside the training loop a signal acts as it always does: there is nothing to save).
pub struct StopOnSignals {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopOnSignals {
    pub fn install() -> std::io::Result<Self> {
        REQUESTED.store(0, Ordering::SeqCst);
        FIRST_AT_MS.store(0, Ordering::SeqCst);
        let mut previous = Vec::new();
        for sig in STOP_SIGNALS {
            // SAFETY: zeroed is a valid sigaction; the handler only touches atomics, reads the
            // clock and calls write/signal/raise, all async-signal-safe. SA_RESTART keeps
            // blocking reads (a collective's socket) from failing with EINTR.
            unsafe {
                if ignored(sig) {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                for other in STOP_SIGNALS {
                    libc::sigaddset(&mut action.sa_mask, other);
                }
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &action, &mut old) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                previous.push((sig, old));
            }
        }
        Ok(Self { previous })
    }

    /// The first stop signal received since [`install`](Self::install), if any.
    pub fn requested(&self) -> Option<libc::c_int> {
        match REQUESTED.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }
}

impl Drop for StopOnSignals {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restores an action sigaction(2) returned.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}
