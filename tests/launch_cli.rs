//! `limo launch` end to end, with `limo comm-check` as the workload: a healthy job, a rank that
//! is SIGKILLed mid-run (with and without the launcher), and a rank that never starts.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{free_port, limo};

/// The error line of a failed limo run, after checking it failed cleanly (exit 1, no panic).
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "should fail cleanly:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
    lines[0].to_string()
}

/// Pids the ranks announced (`comm-check: rank R of W, pid P`), by rank.
fn pids(stderr: &str) -> BTreeMap<usize, u32> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("comm-check: rank ").nth(1)?;
            let (rank, rest) = rest.split_once(" of ")?;
            let pid = rest.split("pid ").nth(1)?;
            Some((rank.parse().ok()?, pid.trim().parse().ok()?))
        })
        .collect()
}

/// Whether `pid` is still a live (not zombie) process running limo.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !state.starts_with('Z') && stat.contains("(limo)")
}

/// `limo comm-check` as rank `rank` of `world`, placed by torchrun's variables.
fn rank_process(rank: usize, world: usize, port: u16, args: &[&str]) -> Command {
    let mut cmd = limo();
    cmd.arg("comm-check")
        .args(args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    cmd
}

#[test]
fn three_ranks_agree() {
    let out = limo()
        .args(["launch", "--nproc-per-node", "3", "--timeout", "60", "--"])
        .args(["comm-check", "--iterations", "200"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let mut checksums = BTreeMap::new();
    for line in stdout.lines() {
        // "[rank R] comm-check: rank R world 3 iterations 200 checksum X ok"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 12, "{line}");
        assert_eq!(words[0..2], ["[rank", &format!("{}]", words[4])], "{line}");
        assert_eq!(words[5..9], ["world", "3", "iterations", "200"], "{line}");
        assert_eq!(words[11], "ok", "{line}");
        checksums.insert(words[4].to_string(), words[10].to_string());
    }
    assert_eq!(checksums.len(), 3, "{stdout}");
    // More ranks than cores (CI's 2) is worth a warning, not an error.
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(stderr.contains("3 ranks on"), 3 > cores, "{stderr}");
    assert!(
        checksums.values().all(|c| c == &checksums["0"]),
        "{checksums:?}"
    );
    // One process per rank.
    let pids = pids(&stderr);
    assert_eq!(pids.len(), 3, "{stderr}");
    assert_eq!(
        pids.values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3
    );
}

#[test]
fn a_killed_rank_fails_the_launch_promptly_and_leaves_no_process() {
    let timeout = Duration::from_secs(30);
    let start = Instant::now();
    let out = limo()
        .args(["launch", "--nproc-per-node", "3", "--timeout", "30", "--"])
        .args(["comm-check", "--iterations", "100000000"])
        .args(["--die-rank", "1", "--die-after-ms", "700"])
        .output()
        .unwrap();
    let took = start.elapsed();
    let err = error_line(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pids = pids(&stderr);
    assert_eq!(pids.len(), 3, "{stderr}");
    assert!(
        err.contains(&format!(
            "rank 1 (pid {}) was killed by signal 9 (SIGKILL)",
            pids[&1]
        )),
        "{err}"
    );
    assert!(took < timeout, "took {took:?}");
    eprintln!("launch failed {took:?} after start: {err}");
    for (rank, pid) in pids {
        assert!(!alive(pid), "rank {rank} (pid {pid}) outlived the launch");
    }
}

#[test]
fn without_a_launcher_the_survivors_name_the_dead_rank() {
    let port = free_port();
    let start = Instant::now();
    let children: Vec<_> = (0..3)
        .map(|rank| {
            rank_process(
                rank,
                3,
                port,
                &["--iterations", "100000000", "--timeout", "30"],
            )
            .args(["--die-rank", "2", "--die-after-ms", "700"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(outs[2].status.signal(), Some(9));
    // Rank 0 saw the connection close. Rank 1 usually hears it from rank 0, but rank 0 exits
    // right after telling it, and the close can reach rank 1 first (a TCP reset drops the
    // unread notice): then rank 1 names rank 0. Either way it fails promptly, naming a rank.
    let err = error_line(&outs[0]);
    assert!(err.contains("rank 2 closed its connection"), "{err}");
    let err = error_line(&outs[1]);
    assert!(
        err.contains("rank 2 closed its connection")
            || err.contains("rank 0 closed its connection"),
        "{err}"
    );
}

#[test]
fn a_rank_that_never_starts_is_named_within_the_timeout() {
    let start = Instant::now();
    let out = rank_process(0, 2, free_port(), &[])
        .env("LIMO_DIST_TIMEOUT", "2")
        .output()
        .unwrap();
    let took = start.elapsed();
    let err = error_line(&out);
    assert!(
        err.contains("rendezvous timed out after 2s waiting for ranks [1]"),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "took {took:?}"
    );
}

/// Once a rendezvous that "timed out after 0ns".
#[test]
fn a_timeout_below_a_millisecond_is_refused_naming_the_variable() {
    let out = rank_process(0, 2, free_port(), &[])
        .env("LIMO_DIST_TIMEOUT", "1e-10")
        .output()
        .unwrap();
    assert_eq!(
        error_line(&out),
        "error: LIMO_DIST_TIMEOUT=\"1e-10\": must be at least 0.001 seconds (1 ms)"
    );
}

#[test]
fn launch_refuses_bad_arguments() {
    let max = u64::MAX.to_string();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--nproc-per-node", "2", "--timeout", "soon"],
            "--timeout soon",
        ),
        // Once taken, and passed to the ranks as "0", which they refused.
        (
            &["--nproc-per-node", "2", "--timeout", "1e-12"],
            "--timeout 1e-12: must be at least 0.001 seconds (1 ms)",
        ),
        (
            &["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2"],
            "--node-rank 2 is not below --nnodes 2",
        ),
        // Port 0 is a free port on one machine (below); across machines it cannot be agreed on.
        (
            &[
                "--nproc-per-node",
                "2",
                "--nnodes",
                "2",
                "--master-port",
                "0",
            ],
            "--master-port 0: the nodes must agree on one port",
        ),
        // The world size once wrapped around; rank 1 then waited for a rendezvous that never
        // came.
        (
            &[
                "--nproc-per-node",
                "2",
                "--nnodes",
                &max,
                "--node-rank",
                "1",
            ],
            "is more than 1048576 ranks",
        ),
        // Launchers nested in every rank would multiply the job.
        (
            &["--nproc-per-node", "2", "--", "launch"],
            "would start a launcher in every rank",
        ),
        (&["--nproc-per-node", "0"], "must be at least 1"),
    ];
    for (args, expected) in cases {
        let out = limo()
            .arg("launch")
            .args(args)
            .args(["--", "comm-check"])
            .output()
            .unwrap();
        let err = error_line(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let out = limo()
        .args([
            "launch",
            "--nproc-per-node",
            "2",
            "--master-port",
            "0",
            "--",
        ])
        .args(["comm-check", "--iterations", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn sigterm_to_the_launcher_reaches_every_rank() {
    use std::io::{BufRead, BufReader};
    let mut launcher = limo()
        .args(["launch", "--nproc-per-node", "2", "--"])
        .args(["comm-check", "--iterations", "100000000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until both ranks announced themselves, then signal the launcher alone.
    let mut stderr = BufReader::new(launcher.stderr.take().unwrap());
    let mut seen = String::new();
    while pids(&seen).len() < 2 {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{seen}");
        seen += &line;
    }
    let start = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &launcher.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = launcher.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{seen}{rest}");
    assert!(
        rest.contains("error: interrupted by signal 15 (SIGTERM): forwarded to the ranks"),
        "{rest}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    for (rank, pid) in pids(&seen) {
        assert!(!alive(pid), "rank {rank} (pid {pid}) outlived the launch");
    }
}

#[test]
fn sigterm_while_ranks_start_stops_the_starting() {
    use std::io::{BufRead, BufReader};
    // Far more ranks than start in the test's time: `limo --version` each, which exit at once.
    let mut launcher = limo()
        .args(["launch", "--nproc-per-node", "100000", "--", "--version"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(launcher.stdout.take().unwrap());
    let mut first = String::new();
    assert!(stdout.read_line(&mut first).unwrap() > 0);
    let status = Command::new("kill")
        .args(["-TERM", &launcher.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Drain stdout so the forwarders never block, then wait with a deadline.
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = launcher.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            launcher.kill().unwrap();
            launcher.wait().unwrap();
            panic!("the launcher still starts ranks 30 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = drain.join();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut launcher.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(
        stderr.contains("error: interrupted by signal 15 (SIGTERM): forwarded to the ranks"),
        "{stderr}"
    );
}
