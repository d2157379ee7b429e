//! `limo launch -- train`: ranks in separate processes over the TCP communicator train the
//! single-process trajectory, a killed rank stops the whole job with its name, and a stop signal
//! stops every rank after the same step with a checkpoint.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use common::{export_args, golden, golden_config, limo, long_rows, run_ok, train_args};

/// A run of the golden tiny model on its tokenized data, f32, into `out`, with a checkpoint
/// after every step.
fn config(dir: &Path, out: &Path, batch: usize, accum: usize, steps: usize) -> PathBuf {
    let sets = [
        format!("train.max_steps={steps}"),
        format!("train.batch_size={batch}"),
        format!("train.grad_accum={accum}"),
        "output.save_steps=1".into(),
        "output.export_dtype=\"none\"".into(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    golden_config(dir, &golden().join("train/data.jsonl"), out, "f32", &sets)
}

fn losses(out: &Path) -> Vec<f64> {
    limo_train::metrics::read(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|m| m.loss)
        .collect()
}

fn master(out: &Path) -> BTreeMap<String, Tensor> {
    let latest = limo_train::checkpoint::resolve(&out.join("checkpoints"), "latest").unwrap();
    limo_train::checkpoint::load_params(&latest, "master").unwrap()
}

#[test]
fn two_processes_train_exactly_what_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    // One process, 2 micro-batches of 1 row per step; two processes, 1 row each. Both add the
    // same two partial gradients once, so the results are bit-identical.
    let single = tmp.path().join("single");
    run_ok(&train_args(&config(tmp.path(), &single, 1, 2, 6), &[]));
    let launched = tmp.path().join("launched");
    let launch = ["launch", "--nproc-per-node", "2", "--"].map(String::from);
    let train = train_args(&config(tmp.path(), &launched, 1, 1, 6), &[]);
    let stdout = run_ok(&[&launch[..], &train].concat());
    assert!(stdout.contains("on 2 rank(s)"), "{stdout}");
    assert_eq!(losses(&launched), losses(&single));
    let (a, b) = (master(&launched), master(&single));
    assert_eq!(a.len(), b.len());
    for (name, t) in &b {
        let diff = (&a[name] - t)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
    let latest = limo_train::checkpoint::resolve(&launched.join("checkpoints"), "latest").unwrap();
    assert!(latest.join("rank-00000.safetensors").exists());
    assert!(latest.join("rank-00001.safetensors").exists());
    // `limo export` merges the two ranks' slices into the same file one rank writes.
    let export = |out: &Path| -> Vec<u8> {
        let checkpoint =
            limo_train::checkpoint::resolve(&out.join("checkpoints"), "latest").unwrap();
        let model = out.join("exported");
        run_ok(&export_args(&checkpoint, &model, &["--dtype", "f32"]));
        std::fs::read(model.join("model.safetensors")).unwrap()
    };
    assert!(export(&launched) == export(&single), "exports differ");
}

/// Pids of the direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_killed_rank_stops_the_job_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("killed");
    let config = config(tmp.path(), &out, 1, 1, 100_000);
    let mut launcher = limo()
        .args(["launch", "--nproc-per-node", "3", "--timeout", "60", "--"])
        .args(train_args(&config, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training runs (a few steps logged), then SIGKILL rank 1.
    let started = Instant::now();
    while limo_train::metrics::read(&out.join("metrics.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0)
        < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never trained"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 3, "one child per rank: {ranks:?}");
    // The launcher starts ranks in order, so the second child is rank 1.
    let victim = ranks[1];
    let killed_at = Instant::now();
    // SAFETY: kill(2) on a pid we just read from the launcher's children.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let status = launcher.wait().unwrap();
    let waited = killed_at.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(launcher.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        waited < Duration::from_secs(30),
        "the job took {waited:?} to stop"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("rank 1") && last.contains(&victim.to_string()),
        "{last}"
    );
    for pid in ranks {
        assert!(
            !Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "rank pid {pid} still runs"
        );
    }
    // Every checkpoint that `latest` can name is complete.
    let latest = limo_train::checkpoint::resolve(&out.join("checkpoints"), "latest").unwrap();
    assert!(limo_train::checkpoint::load_params(&latest, "master").is_ok());
}

/// The step in a rank's "stopped ... after step N of M" line, if `log` has one for `rank`.
fn stopped_after(log: &str, rank: usize, why: &str) -> Option<usize> {
    let line = log
        .lines()
        .find(|l| l.starts_with(&format!("[rank {rank}] error: stopped {why} after step ")))?;
    let rest = line.split("after step ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

/// Waits until `out`'s metrics show `steps` steps, while `launcher` runs.
fn wait_for_steps(out: &Path, steps: usize, launcher: &mut std::process::Child, log: &Path) {
    let started = Instant::now();
    while limo_train::metrics::read(&out.join("metrics.jsonl")).map_or(0, |m| m.len()) < steps {
        let log = || std::fs::read_to_string(log).unwrap_or_default();
        assert!(launcher.try_wait().unwrap().is_none(), "ended: {}", log());
        assert!(started.elapsed() < Duration::from_secs(120), "{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stop_signal_to_one_rank_or_the_launcher_stops_all_after_one_step_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stopped");
    let sets = [
        "train.max_steps=100000",
        "output.save_steps=1000000",
        "output.export_dtype=\"none\"",
    ];
    // Steps long enough that the forwarded signal's step and checkpoint outlast --grace.
    let data = long_rows(tmp.path(), 4, 1024);
    let config = golden_config(tmp.path(), &data, &out, "f32", &sets);
    let stderr_path = tmp.path().join("stderr.txt");
    let launch = |resume: bool| {
        let mut args = train_args(&config, &[]);
        if resume {
            args.push("--resume".into());
        }
        // A short --grace: a forwarded signal, and a rank's clean stop, are waited for, whatever
        // the grace for failures.
        limo()
            .args(["launch", "--nproc-per-node", "2", "--grace", "0.01", "--"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap()
    };
    let checkpoint_at = |step: usize| {
        let latest = limo_train::checkpoint::resolve(&out.join("checkpoints"), "latest").unwrap();
        assert!(latest.ends_with(limo_train::checkpoint::step_dir_name(step)));
        assert!(limo_train::checkpoint::load_params(&latest, "master").is_ok());
        assert!(latest.join("rank-00000.safetensors").exists());
        assert!(latest.join("rank-00001.safetensors").exists());
    };

    // SIGTERM to rank 1 alone: rank 0 learns of it between steps, and both stop after the same one.
    let mut launcher = launch(false);
    wait_for_steps(&out, 3, &mut launcher, &stderr_path);
    let ranks = children(launcher.id());
    // SAFETY: kill(2) on the launcher's second child, rank 1.
    assert_eq!(unsafe { libc::kill(ranks[1] as i32, libc::SIGTERM) }, 0);
    // A clean stop is no failure: the launcher leaves rank 0 to its checkpoint and exits as
    // the ranks did.
    assert_eq!(launcher.wait().unwrap().code(), Some(143));
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let step = stopped_after(&log, 1, "by SIGTERM").expect(&log);
    let why = "because another rank received a stop signal";
    assert_eq!(stopped_after(&log, 0, why), Some(step), "{log}");
    assert!(!log.contains("exited with status"), "{log}");
    assert_eq!(
        log.lines().last().unwrap(),
        "error: the ranks stopped on SIGTERM (status 143) with their checkpoint"
    );
    assert_eq!(losses(&out).len(), step);
    checkpoint_at(step);

    // Resumed, then SIGTERM to the launcher: forwarded, and waited for past --grace.
    let mut launcher = launch(true);
    wait_for_steps(&out, step + 2, &mut launcher, &stderr_path);
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(
        unsafe { libc::kill(launcher.id() as i32, libc::SIGTERM) },
        0
    );
    // As one process stopped by SIGTERM: 128 + 15, for job scripts that requeue on it.
    assert_eq!(launcher.wait().unwrap().code(), Some(143));
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let last = log.lines().last().unwrap();
    assert_eq!(
        last,
        "error: interrupted by signal 15 (SIGTERM): forwarded to the ranks"
    );
    let later = stopped_after(&log, 0, "by SIGTERM").expect(&log);
    assert_eq!(stopped_after(&log, 1, "by SIGTERM"), Some(later), "{log}");
    assert!(later > step, "{log}");
    assert_eq!(losses(&out).len(), later);
    checkpoint_at(later);
}

/// Under nohup (SIGHUP ignored), a closed terminal's SIGHUP reaches the launcher and its ranks
/// and changes nothing: the run ends as it would have.
#[test]
fn an_ignored_sighup_stays_ignored_under_the_launcher() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let sets = ["train.max_steps=10", "output.export_dtype=\"none\""];
    // Steps long enough that the signals land mid-run.
    let data = long_rows(tmp.path(), 4, 1024);
    let config = golden_config(tmp.path(), &data, &out, "f32", &sets);
    let log = tmp.path().join("stderr.txt");
    let mut cmd = limo();
    cmd.args(["launch", "--nproc-per-node", "2", "--"])
        .args(train_args(&config, &[]))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: signal(2) is async-signal-safe; the child ignores SIGHUP as nohup makes it.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut launcher = cmd.spawn().unwrap();
    wait_for_steps(&out, 2, &mut launcher, &log);
    for pid in children(launcher.id()).into_iter().chain([launcher.id()]) {
        // SAFETY: kill(2) on the launcher and its ranks.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    }
    let at_signal = losses(&out).len();
    let status = launcher.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        at_signal < 10,
        "the signals came after the run: {at_signal} steps"
    );
    assert_eq!(losses(&out).len(), 10, "{text}");
}

/// A 2-rank `limo launch -- train` of 100000 long steps into `out`, stderr to `log`; `launch`
/// are the launcher's options, `before_exec` runs in its process before it starts.
fn long_run(
    tmp: &Path,
    out: &Path,
    log: &Path,
    launch: &[&str],
    before_exec: fn() -> std::io::Result<()>,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let sets = [
        "train.max_steps=100000",
        "output.save_steps=1000000",
        "output.export_dtype=\"none\"",
    ];
    // Steps of about 0.4 s on 2 cores.
    let data = long_rows(tmp, 4, 1024);
    let config = golden_config(tmp, &data, out, "f32", &sets);
    let mut cmd = limo();
    cmd.args(["launch", "--nproc-per-node", "2"])
        .args(launch)
        .arg("--")
        .args(train_args(&config, &[]))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    // SAFETY: `before_exec` only makes async-signal-safe calls (setpgid, signal).
    unsafe { cmd.pre_exec(before_exec) };
    cmd.spawn().unwrap()
}

/// Waits until the metrics gain a step, so that the next one has just begun.
fn wait_for_a_new_step(out: &Path, launcher: &mut std::process::Child, log: &Path) {
    let now = limo_train::metrics::read(&out.join("metrics.jsonl")).map_or(0, |m| m.len());
    wait_for_steps(out, now + 1, launcher, log);
}

/// Ctrl-C pressed twice in a terminal: SIGINT to every process of the job, twice within a
/// second. The ranks take it as one request, and so must the launcher: once it SIGKILLed them
/// at the second, and the stop's checkpoint was lost.
#[test]
fn ctrl_c_twice_within_a_second_is_one_stop_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, log) = (tmp.path().join("run"), tmp.path().join("stderr.txt"));
    // Its own process group, as a terminal's job; Ctrl-C acts even if the tests run where
    // SIGINT is ignored (a script's background job).
    let mut launcher = long_run(tmp.path(), &out, &log, &[], || {
        // SAFETY: setpgid(2) and signal(2) are async-signal-safe.
        unsafe {
            libc::setpgid(0, 0);
            libc::signal(libc::SIGINT, libc::SIG_DFL);
        }
        Ok(())
    });
    wait_for_steps(&out, 2, &mut launcher, &log);
    // At the start of a step, so both presses land before its end.
    wait_for_a_new_step(&out, &mut launcher, &log);
    let group = -(launcher.id() as i32);
    // SAFETY: kill(2) on the launcher's process group.
    assert_eq!(unsafe { libc::kill(group, libc::SIGINT) }, 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(unsafe { libc::kill(group, libc::SIGINT) }, 0);
    assert_eq!(launcher.wait().unwrap().code(), Some(130));
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.lines().last().unwrap(),
        "error: interrupted by signal 2 (SIGINT): forwarded to the ranks"
    );
    let step = stopped_after(&log, 0, "by SIGINT").expect(&log);
    assert_eq!(stopped_after(&log, 1, "by SIGINT"), Some(step), "{log}");
    let latest = limo_train::checkpoint::resolve(&out.join("checkpoints"), "latest").unwrap();
    assert!(latest.ends_with(limo_train::checkpoint::step_dir_name(step)));
    assert!(latest.join("rank-00000.safetensors").exists());
    assert!(latest.join("rank-00001.safetensors").exists());
}

/// A rank that fails while the ranks stop on a forwarded signal fails the launch: rank 1 hangs
/// (SIGSTOP), so rank 0's step times out. Once the launcher waited forever for rank 1, and then
/// reported only the signal.
#[test]
fn a_rank_failing_after_a_forwarded_signal_fails_the_launch_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, log) = (tmp.path().join("run"), tmp.path().join("stderr.txt"));
    let options = ["--timeout", "4", "--grace", "0.5"];
    let mut launcher = long_run(tmp.path(), &out, &log, &options, || Ok(()));
    wait_for_steps(&out, 2, &mut launcher, &log);
    let ranks = children(launcher.id());
    // SAFETY: kill(2) on the launcher's second child (rank 1), then on the launcher.
    unsafe {
        assert_eq!(libc::kill(ranks[1] as i32, libc::SIGSTOP), 0);
        assert_eq!(libc::kill(launcher.id() as i32, libc::SIGTERM), 0);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = launcher.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our child and on the rank it never reaped.
            unsafe {
                libc::kill(ranks[1] as i32, libc::SIGKILL);
                libc::kill(launcher.id() as i32, libc::SIGKILL);
            }
            panic!("the launcher still waits 30 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    let expected = format!(
        "error: interrupted by signal 15 (SIGTERM), forwarded to the ranks: rank 0 (pid {}) \
         exited with status 1; stopping the other 1 rank (1 killed after 500ms)",
        ranks[0]
    );
    assert_eq!(log.lines().last().unwrap(), expected, "{log}");
}
