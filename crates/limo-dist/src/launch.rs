//! `limo launch`: one child process per local rank with torchrun's variables, their output
//! forwarded line by line with a `[rank R]` prefix, and all-or-nothing supervision: the first
//! child to fail (non-zero exit or a signal) brings the others down (SIGTERM, then SIGKILL after
//! a grace period) and the launch fails naming that rank, its pid and how it died. A child that
//! exits 128 + a stop signal stopped cleanly (with its checkpoint) and fails nothing. SIGINT,
//! SIGTERM, SIGUSR1 and SIGHUP sent to the launcher are forwarded to the children, which may
//! take their time (`limo train` finishes its step and saves a checkpoint); a second signal,
//! once the first's [`REPEAT_WINDOW`] is over (the ranks count the same way), SIGKILLs them. A
//! launch stopped by a signal, or whose ranks all stopped cleanly, exits 128 + the signal
//! ([`Interrupted`]).
//! Unix only (signals).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::env::{DEFAULT_MASTER_PORT, MIN_TIMEOUT, TIMEOUT_VAR};
use crate::stop::{REPEAT_WINDOW, STOP_SIGNALS};

/// What to launch and where it sits in the job.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// `None`: a free port when the job is this machine alone, torchrun's 29500 otherwise
    /// (every node must agree on it, and only rank 0's machine could pick a free one).
    pub master_port: Option<u16>,
    /// Passed to the children as `LIMO_DIST_TIMEOUT` (their rendezvous and collective timeout).
    pub timeout: Option<Duration>,
    /// How long stopped children get between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// How often the supervisor looks at its children and at the signals it received.
const POLL: Duration = Duration::from_millis(20);

/// The last stop signal the launcher received, 0 for none (set by the signal handler).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: the one kind of work that is safe in a signal handler.
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// The launcher was stopped by `signal`, which it forwarded to the ranks: `limo launch` exits
/// 128 + the signal, as one process stopped by it does, so a job script that requeues on that
/// status treats both alike.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: libc::c_int,
    message: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

struct Rank {
    rank: usize,
    child: Child,
    /// Set once the child has been reaped.
    status: Option<ExitStatus>,
}

impl Rank {
    fn describe(&self, status: ExitStatus) -> String {
        format!(
            "rank {} (pid {}) {}",
            self.rank,
            self.child.id(),
            how_it_ended(status)
        )
    }

    fn signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            // SAFETY: kill(2) has no memory effects; the pid is our unreaped child, so it cannot
            // have been reused by another process.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    fn poll(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }
}

/// Runs the job's local ranks to completion; `Err` names the rank that failed first.
pub fn launch(spec: &LaunchSpec) -> anyhow::Result<()> {
    if spec.nproc_per_node == 0 || spec.nnodes == 0 {
        bail!("--nproc-per-node and --nnodes must be at least 1");
    }
    if spec.node_rank >= spec.nnodes {
        bail!(
            "--node-rank {} is not below --nnodes {}",
            spec.node_rank,
            spec.nnodes
        );
    }
    if let Some(t) = spec.timeout.filter(|&t| t < MIN_TIMEOUT) {
        bail!("--timeout {t:?}: must be at least {MIN_TIMEOUT:?}");
    }
    let port = match spec.master_port {
        // 0 is "any port" to a listener, but every rank must connect to the same one.
        Some(0) if spec.nnodes == 1 => free_port()?,
        Some(0) => bail!("--master-port 0: the nodes must agree on one port; name it (e.g. 29500)"),
        Some(p) => p,
        None if spec.nnodes == 1 => free_port()?,
        None => DEFAULT_MASTER_PORT,
    };
    let world = spec
        .nproc_per_node
        .checked_mul(spec.nnodes)
        .filter(|&w| w <= crate::MAX_WORLD_SIZE)
        .with_context(|| {
            format!(
                "--nproc-per-node {} x --nnodes {} is more than {} ranks",
                spec.nproc_per_node,
                spec.nnodes,
                crate::MAX_WORLD_SIZE
            )
        })?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if spec.nproc_per_node > cores {
        // Fine for a test of many ranks; slow for training (ranks take turns on the cores).
        tracing::warn!(
            "{} ranks on {cores} cores of this machine: each rank's CPU work \
             shares the cores; for speed, run at most one rank per core (one per GPU)",
            spec.nproc_per_node
        );
    }
    install_handlers();

    let mut ranks: Vec<Rank> = Vec::new();
    let mut forwarders: Vec<JoinHandle<()>> = Vec::new();
    for local in 0..spec.nproc_per_node {
        // A signal while ranks start (thousands take a while) stops the starting: supervise
        // forwards it to the ranks already running.
        if RECEIVED.load(Ordering::SeqCst) != 0 {
            break;
        }
        let rank = spec.node_rank * spec.nproc_per_node + local;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", spec.nproc_per_node.to_string())
            .env("GROUP_RANK", spec.node_rank.to_string())
            .env("MASTER_ADDR", &spec.master_addr)
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = spec.timeout {
            cmd.env(TIMEOUT_VAR, t.as_secs_f64().to_string());
        }
        // Each rank's CPU work (rayon, candle's matmuls) would start one thread per core;
        // N ranks on a machine would run N threads per core. As torchrun does for OpenMP,
        // split the cores unless the user chose.
        if std::env::var_os(THREADS_VAR).is_none() {
            cmd.env(
                THREADS_VAR,
                threads_per_rank(spec.nproc_per_node).to_string(),
            );
        }
        die_with_parent(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop(&mut ranks, spec.grace);
                return Err(e)
                    .with_context(|| format!("starting rank {rank}: {}", spec.program.display()));
            }
        };
        let (out, err) = (child.stdout.take(), child.stderr.take());
        ranks.push(Rank {
            rank,
            child,
            status: None,
        });
        // A thread per pipe: at thousands of ranks the OS may refuse one, which must stop the
        // ranks already started rather than panic past them.
        let pipes = [
            out.map(|o| (Box::new(o) as Pipe, false)),
            err.map(|e| (Box::new(e) as Pipe, true)),
        ];
        for (pipe, to_stderr) in pipes.into_iter().flatten() {
            match forward(rank, pipe, to_stderr) {
                Ok(thread) => forwarders.push(thread),
                Err(e) => {
                    stop(&mut ranks, spec.grace);
                    return Err(e).with_context(|| format!("forwarding rank {rank}'s output"));
                }
            }
        }
    }

    let outcome = supervise(&mut ranks, spec.grace);
    // The children are gone, so their pipes are closed: the forwarders finish their last lines
    // before the launcher prints its verdict.
    for f in forwarders {
        let _ = f.join();
    }
    outcome
}

/// Waits for the ranks. A forwarded signal is waited for with no deadline of our own: a
/// signalled `limo train` rank finishes its step and writes a checkpoint, which may take
/// minutes, and the scheduler that signalled has its own (Slurm's `KillWait`).
fn supervise(ranks: &mut [Rank], grace: Duration) -> anyhow::Result<()> {
    // The signal the launcher forwarded to the ranks, and when.
    let mut forwarded: Option<(libc::c_int, Instant)> = None;
    loop {
        if let Some(sig) = take_signal() {
            match forwarded {
                None => {
                    ranks.iter().for_each(|r| r.signal(sig));
                    forwarded = Some((sig, Instant::now()));
                }
                // Someone insists: the ranks' checkpoint is given up.
                Some((first, at)) if at.elapsed() >= REPEAT_WINDOW => {
                    let killed = wait_or_kill(ranks, Duration::ZERO);
                    return Err(interrupted(first, killed));
                }
                // The same request, as the ranks take it: a terminal's Ctrl-C reaches them and
                // us at once, and people press it twice. Forwarding it again could reach a rank
                // just past its own window and stop it mid-checkpoint.
                Some(_) => {}
            }
        }
        let signal = forwarded.map(|(sig, _)| sig);
        let (failed, running) = reap(ranks, signal)?;
        if !failed.is_empty() {
            bail!(fail(ranks, failed, running, grace, signal));
        }
        if running == 0 {
            return finish(ranks, signal);
        }
        std::thread::sleep(POLL);
    }
}

/// The signal the launcher received since the last call, if any.
fn take_signal() -> Option<libc::c_int> {
    match RECEIVED.swap(0, Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// Reaps the ranks that exited; returns those that failed, and how many still run. Ranks that
/// stopped cleanly are no failure, and the others are left alone: they agreed to stop after the
/// same step and may be writing their checkpoint, which can take minutes, and a signal could
/// stop one mid-write (a repeat past its window ends it at once). So they are waited for
/// without a deadline, as after a forwarded signal; one that fails meanwhile fails the launch.
fn reap(
    ranks: &mut [Rank],
    forwarded: Option<libc::c_int>,
) -> anyhow::Result<(Vec<(usize, ExitStatus)>, usize)> {
    let mut failed = Vec::new();
    let mut running = 0;
    for (i, r) in ranks.iter_mut().enumerate() {
        match r.poll()? {
            Some(status) if is_failure(status, forwarded.is_some()) => failed.push((i, status)),
            Some(_) => {}
            None => running += 1,
        }
    }
    Ok((failed, running))
}

/// The signal a rank stopped cleanly on: it exited 128 + a stop signal, as `limo train` does
/// after its checkpoint.
fn clean_stop(status: ExitStatus) -> Option<libc::c_int> {
    let sig = status.code()? - 128;
    STOP_SIGNALS.contains(&sig).then_some(sig)
}

/// Whether a rank's exit fails the launch. After a forwarded signal, dying of a stop signal is
/// what a rank without handlers of its own does (`comm-check`, `train` before its first step).
fn is_failure(status: ExitStatus, forwarded: bool) -> bool {
    let killed_by_stop = status.signal().is_some_and(|s| STOP_SIGNALS.contains(&s));
    !(status.success() || clean_stop(status).is_some() || (forwarded && killed_by_stop))
}

/// The launch's verdict once every rank ended without failing.
fn finish(ranks: &[Rank], forwarded: Option<libc::c_int>) -> anyhow::Result<()> {
    if let Some(sig) = forwarded {
        return Err(interrupted(sig, 0));
    }
    match stop_signal(ranks) {
        Some(sig) => Err(Interrupted {
            signal: sig,
            message: format!(
                "the ranks stopped on {} (status {}) with their checkpoint",
                signal_name(sig),
                128 + sig
            ),
        }
        .into()),
        None => Ok(()),
    }
}

fn interrupted(sig: libc::c_int, killed: usize) -> anyhow::Error {
    let mut message = format!(
        "interrupted by signal {sig} ({}): forwarded to the ranks",
        signal_name(sig)
    );
    if killed > 0 {
        message += &format!("; killed {killed} at a second signal");
    }
    Interrupted {
        signal: sig,
        message,
    }
    .into()
}

/// The signal the ranks stopped cleanly on, if any did. A rank signalled itself reports its
/// signal, the ranks that stopped along with it SIGTERM's status, so another signal wins.
fn stop_signal(ranks: &[Rank]) -> Option<libc::c_int> {
    ranks
        .iter()
        .filter_map(|r| clean_stop(r.status?))
        .reduce(|first, next| if first == libc::SIGTERM { next } else { first })
}

/// Names the failed ranks, stops the others (SIGTERM, SIGKILL after `grace`) and returns the
/// launch's error message, which says what the ranks were doing if they were stopping.
fn fail(
    ranks: &mut [Rank],
    mut failed: Vec<(usize, ExitStatus)>,
    running: usize,
    grace: Duration,
    forwarded: Option<libc::c_int>,
) -> String {
    let mut msg = match (forwarded, stop_signal(ranks)) {
        (Some(sig), _) => format!(
            "interrupted by signal {sig} ({}), forwarded to the ranks: ",
            signal_name(sig)
        ),
        (None, Some(sig)) => format!(
            "the ranks were stopping on {} (status {}): ",
            signal_name(sig),
            128 + sig
        ),
        (None, None) => String::new(),
    };
    // Ranks that died of a signal come first: the others most likely failed because of them
    // (a peer's lost connection), a moment later.
    failed.sort_by_key(|&(i, s)| (s.signal().is_none(), i));
    msg += &failed
        .iter()
        .map(|&(i, s)| ranks[i].describe(s))
        .collect::<Vec<_>>()
        .join("; also ");
    if running > 0 {
        msg += &format!(
            "; stopping the other {running} rank{}",
            if running == 1 { "" } else { "s" }
        );
        let killed = wait_or_kill_after_term(ranks, grace);
        if killed > 0 {
            msg += &format!(" ({killed} killed after {grace:?})");
        }
    }
    msg
}

/// SIGTERM to every running rank, then `wait_or_kill`.
fn wait_or_kill_after_term(ranks: &mut [Rank], grace: Duration) -> usize {
    ranks.iter().for_each(|r| r.signal(libc::SIGTERM));
    wait_or_kill(ranks, grace)
}

/// Waits up to `grace` for every rank to exit, then SIGKILLs and reaps the rest; returns how
/// many had to be killed.
fn wait_or_kill(ranks: &mut [Rank], grace: Duration) -> usize {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if ranks.iter_mut().all(|r| !matches!(r.poll(), Ok(None))) {
            return 0;
        }
        std::thread::sleep(POLL);
    }
    let mut killed = 0;
    for r in ranks.iter_mut() {
        if matches!(r.poll(), Ok(None)) {
            r.signal(libc::SIGKILL);
            killed += 1;
            r.status = r.child.wait().ok();
        }
    }
    killed
}

/// Stops the ranks started so far (a later one could not start).
fn stop(ranks: &mut [Rank], grace: Duration) {
    wait_or_kill_after_term(ranks, grace);
}

/// Copies a child's output to ours line by line, each line prefixed with its rank; whole lines
/// are written under the lock, so ranks never interleave within a line.
type Pipe = Box<dyn Read + Send>;

fn forward(rank: usize, from: Pipe, to_stderr: bool) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        let prefix = format!("[rank {rank}] ");
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            let result = if to_stderr {
                let mut e = std::io::stderr().lock();
                e.write_all(prefix.as_bytes())
                    .and_then(|_| e.write_all(&line))
            } else {
                let mut o = std::io::stdout().lock();
                o.write_all(prefix.as_bytes())
                    .and_then(|_| o.write_all(&line))
                    .and_then(|_| o.flush())
            };
            // Our own output is gone (a closed pipe): keep draining so the child never blocks.
            let _ = result;
        }
    })
}

fn install_handlers() {
    for sig in STOP_SIGNALS {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            // Under nohup a closed terminal's SIGHUP must not stop the job.
            if !crate::stop::ignored(sig) {
                let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::signal(sig, handler);
            }
        }
    }
}

/// On Linux, a child gets SIGTERM if the launcher itself dies (even by SIGKILL), so no rank
/// outlives its supervisor.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// A port nobody listens on now (the kernel's pick), for a single-machine job's rendezvous.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// "exited with status 1", "was killed by signal 9 (SIGKILL)".
pub fn how_it_ended(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => format!("ended with {status}"),
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => "unnamed signal",
    }
}

/// Ends this process at once with SIGKILL, as a crash or the OOM killer would (used by
/// `limo comm-check --die-rank` to test how the others react).
pub fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid; nothing runs after it.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// The thread count of rayon and of candle's CPU kernels.
const THREADS_VAR: &str = "RAYON_NUM_THREADS";

/// This machine's cores split over `ranks` processes, at least one each.
fn threads_per_rank(ranks: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / ranks.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_split_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(threads_per_rank(1), cores);
        assert_eq!(threads_per_rank(cores), 1);
        assert_eq!(threads_per_rank(4 * cores), 1, "never zero");
    }

    fn sh(script: &str, nproc: usize) -> anyhow::Result<()> {
        launch(&LaunchSpec {
            nproc_per_node: nproc,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: None,
            timeout: None,
            grace: Duration::from_secs(2),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        })
    }

    #[test]
    fn success_when_every_rank_succeeds() {
        sh(
            "test \"$WORLD_SIZE\" = 3 && test \"$LOCAL_RANK\" = \"$RANK\"",
            3,
        )
        .unwrap();
    }

    #[test]
    fn a_failing_rank_is_named_and_the_others_are_stopped() {
        let start = Instant::now();
        // Rank 1 exits 3 at once; the others would sleep for a minute.
        let err = sh("if [ $RANK = 1 ]; then exit 3; fi; exec sleep 60", 3)
            .unwrap_err()
            .to_string();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert!(err.starts_with("rank 1 (pid "), "{err}");
        assert!(err.contains("exited with status 3"), "{err}");
        assert!(err.contains("stopping the other 2 ranks"), "{err}");
    }

    #[test]
    fn a_signal_death_is_named_with_the_signal() {
        let err = sh("if [ $RANK = 0 ]; then kill -9 $$; fi; exec sleep 60", 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rank 0 (pid ") && err.contains("was killed by signal 9 (SIGKILL)"),
            "{err}"
        );
    }

    /// A rank that exits 143 (stopped cleanly on SIGTERM) fails nothing: the others are not
    /// signalled but waited for, and the launch ends as the ranks did.
    #[test]
    fn ranks_that_stop_cleanly_are_waited_for_and_end_the_launch_as_interrupted() {
        let start = Instant::now();
        // Rank 0 still "saves its checkpoint" for a second; a SIGTERM would end it, failing.
        let err = sh("[ $RANK = 1 ] || sleep 1; exit 143", 2).unwrap_err();
        assert!(start.elapsed() >= Duration::from_secs(1), "not waited for");
        let stopped = err
            .downcast_ref::<Interrupted>()
            .unwrap_or_else(|| panic!("{err:#}"));
        assert_eq!(stopped.signal, libc::SIGTERM);
        assert_eq!(
            stopped.to_string(),
            "the ranks stopped on SIGTERM (status 143) with their checkpoint"
        );
        // The rank signalled itself reports its own signal; the others report SIGTERM.
        let err = sh(
            "[ $RANK = 2 ] && exit 130; [ $RANK = 1 ] && exit 0; exit 143",
            3,
        );
        assert_eq!(
            err.unwrap_err()
                .downcast_ref::<Interrupted>()
                .unwrap()
                .signal,
            libc::SIGINT
        );
    }

    #[test]
    fn a_failure_after_a_clean_stop_still_fails_the_launch() {
        let err = sh("[ $RANK = 1 ] && exit 143; sleep 0.3; exit 1", 2).unwrap_err();
        assert!(err.downcast_ref::<Interrupted>().is_none(), "{err:#}");
        let err = err.to_string();
        assert!(
            err.starts_with("the ranks were stopping on SIGTERM (status 143): rank 0 (pid "),
            "{err}"
        );
        assert!(err.ends_with(") exited with status 1"), "{err}");
        // Without a signal to the launcher, dying of SIGTERM is no clean stop.
        let err = sh("[ $RANK = 1 ] && kill -TERM $$; exec sleep 60", 2).unwrap_err();
        assert!(
            err.to_string()
                .contains("was killed by signal 15 (SIGTERM)"),
            "{err}"
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut spec = LaunchSpec {
            nproc_per_node: 0,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: None,
            timeout: None,
            grace: Duration::from_secs(1),
            program: "/nonexistent/limo".into(),
            args: vec![],
        };
        assert!(launch(&spec).is_err());
        spec.nproc_per_node = 1;
        spec.node_rank = 1;
        assert!(launch(&spec)
            .unwrap_err()
            .to_string()
            .contains("--node-rank"));
        spec.node_rank = 0;
        spec.timeout = Some(Duration::from_nanos(999_999));
        let err = launch(&spec).unwrap_err().to_string();
        assert!(
            err.contains("--timeout 999.999µs: must be at least 1ms"),
            "{err}"
        );
        spec.timeout = None;
        let err = format!("{:#}", launch(&spec).unwrap_err());
        assert!(err.contains("starting rank 0: /nonexistent/limo"), "{err}");
    }
}
