//! Signal handlers are the process's, shared by every test thread: this binary holds only these
//! tests, so no other test's handlers (the launcher's) race with them, and the one that must
//! die runs in a child process.

use limo_dist::stop::StopOnSignals;

fn current_action(sig: libc::c_int) -> libc::sighandler_t {
    // SAFETY: reads the current action without changing it.
    unsafe {
        let mut cur: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut cur);
        cur.sa_sigaction
    }
}

#[test]
fn a_signal_is_recorded_repeats_are_ignored_and_drop_restores() {
    let stop = StopOnSignals::install().unwrap();
    assert_eq!(stop.requested(), None);
    assert_ne!(current_action(libc::SIGTERM), libc::SIG_DFL);
    // SAFETY: raise(3) runs our handler on this thread before it returns.
    unsafe { libc::raise(libc::SIGUSR1) };
    assert_eq!(stop.requested(), Some(libc::SIGUSR1));
    // A second signal inside the window is the same request: still alive, still SIGUSR1.
    unsafe { libc::raise(libc::SIGTERM) };
    assert_eq!(stop.requested(), Some(libc::SIGUSR1));
    drop(stop);
    for sig in limo_dist::stop::STOP_SIGNALS {
        assert_eq!(current_action(sig), libc::SIG_DFL, "signal {sig}");
    }
    // A fresh install forgets the old request.
    let stop = StopOnSignals::install().unwrap();
    assert_eq!(stop.requested(), None);
    drop(stop);

    // An ignored signal (a background job's SIGINT) stays ignored, before, during and after.
    // SAFETY: sets, then restores, the disposition of SIGUSR1 in this test's own process.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    let stop = StopOnSignals::install().unwrap();
    assert_eq!(current_action(libc::SIGUSR1), libc::SIG_IGN);
    unsafe { libc::raise(libc::SIGUSR1) };
    assert_eq!(stop.requested(), None);
    unsafe { libc::raise(libc::SIGTERM) };
    assert_eq!(stop.requested(), Some(libc::SIGTERM));
    drop(stop);
    assert_eq!(current_action(libc::SIGUSR1), libc::SIG_IGN);
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_DFL) };
}

#[test]
fn a_repeat_after_the_window_ends_the_process() {
    const CHILD: &str = "LIMO_STOP_SIGNALS_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let stop = StopOnSignals::install().unwrap();
        // SAFETY: raise(3) runs our handler on this thread before it returns.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(stop.requested(), Some(libc::SIGTERM));
        std::thread::sleep(limo_dist::stop::REPEAT_WINDOW + std::time::Duration::from_millis(50));
        unsafe { libc::raise(libc::SIGTERM) };
        // Still alive: the child exits normally, which the parent reports as a failure.
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_repeat_after_the_window_ends_the_process"])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
}
