//! Ranks of one `limo train` started by hand (as a scheduler's script does, without `limo
//! launch`): before anything is written they agree on the config and on one run directory.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};

use common::{free_port, golden, golden_config, limo, train_args};

/// Rank `rank` of 2 on `port`, in `cwd`, training `config` with `sets`.
fn rank(rank: usize, port: u16, cwd: &Path, config: &Path, sets: &[&str]) -> Child {
    limo()
        .args(train_args(config, sets))
        .current_dir(cwd)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("LIMO_DIST_TIMEOUT", "60")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Both ranks' (exit code, stderr).
fn both(children: [Child; 2]) -> [(Option<i32>, String); 2] {
    children.map(|c| {
        let out = c.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
}

/// A rank with another learning rate once trained its shard of another run, and both exited 0.
#[test]
fn a_rank_with_another_config_stops_every_rank_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = golden_config(
        tmp.path(),
        &golden().join("train/data.jsonl"),
        &out,
        "f32",
        &[],
    );
    let port = free_port();
    let [(code0, err0), (code1, err1)] = both([
        rank(0, port, tmp.path(), &config, &[]),
        rank(1, port, tmp.path(), &config, &["train.lr=1e-2"]),
    ]);
    assert_eq!((code0, code1), (Some(1), Some(1)), "{err0}\n{err1}");
    assert!(
        err0.contains("rank(s) [1] run a different config than rank 0"),
        "{err0}"
    );
    assert!(err1.contains("train.lr: here 0.01, rank 0 0.001"), "{err1}");
    assert!(!out.join("metrics.jsonl").exists(), "no step ran");
}

/// The same relative output.dir from two working directories (two nodes without a shared
/// filesystem): refused before the first step, not at the first checkpoint.
#[test]
fn ranks_that_do_not_share_the_run_directory_stop_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let config = golden_config(
        tmp.path(),
        &golden().join("train/data.jsonl"),
        Path::new("run"),
        "f32",
        &[],
    );
    let [node0, node1] = ["node0", "node1"].map(|n| tmp.path().join(n));
    for node in [&node0, &node1] {
        std::fs::create_dir(node).unwrap();
    }
    let port = free_port();
    let [(code0, err0), (code1, err1)] = both([
        rank(0, port, &node0, &config, &[]),
        rank(1, port, &node1, &config, &[]),
    ]);
    assert_eq!((code0, code1), (Some(1), Some(1)), "{err0}\n{err1}");
    for err in [&err0, &err1] {
        assert!(
            err.contains("output.dir run: rank(s) [1] do not see what rank 0 writes there"),
            "{err}"
        );
    }
    assert!(!node0.join("run/metrics.jsonl").exists(), "no step ran");
}

/// The same relative data path on two nodes whose copies differ (one row edited): the ranks
/// would train on different rows under the same indices. Refused before the first step.
#[test]
fn ranks_that_read_different_rows_stop_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = golden_config(tmp.path(), Path::new("rows.jsonl"), &out, "f32", &[]);
    let rows = std::fs::read_to_string(golden().join("train/data.jsonl")).unwrap();
    let edited = rows.replacen("168, 170", "168, 171", 1);
    assert_ne!(rows, edited);
    let [node0, node1] = ["node0", "node1"].map(|n| tmp.path().join(n));
    for (node, text) in [(&node0, &rows), (&node1, &edited)] {
        std::fs::create_dir(node).unwrap();
        std::fs::write(node.join("rows.jsonl"), text).unwrap();
    }
    let port = free_port();
    let [(code0, err0), (code1, err1)] = both([
        rank(0, port, &node0, &config, &[]),
        rank(1, port, &node1, &config, &[]),
    ]);
    assert_eq!((code0, code1), (Some(1), Some(1)), "{err0}\n{err1}");
    assert!(
        err0.contains("rank(s) [1] read different training rows than rank 0"),
        "{err0}"
    );
    assert!(
        err1.contains("this rank read 6 training rows that differ from rank 0's 6"),
        "{err1}"
    );
    assert!(!out.join("metrics.jsonl").exists(), "no step ran");
}

/// A model copied to every node but one (a relative model.path, one node without the copy):
/// the rank without it reports what it lacks and every rank stops at once, rather than the
/// others waiting out the rendezvous timeout for a rank that never joins.
#[test]
fn a_rank_without_the_model_stops_every_rank_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = golden_config(
        tmp.path(),
        &golden().join("train/data.jsonl"),
        &out,
        "f32",
        &["model.path=\"model\""],
    );
    let [node0, node1] = ["node0", "node1"].map(|n| tmp.path().join(n));
    for node in [&node0, &node1] {
        std::fs::create_dir(node).unwrap();
    }
    std::os::unix::fs::symlink(golden().join("model"), node0.join("model")).unwrap();
    let port = free_port();
    let started = std::time::Instant::now();
    let [(code0, err0), (code1, err1)] = both([
        rank(0, port, &node0, &config, &[]),
        rank(1, port, &node1, &config, &[]),
    ]);
    assert_eq!((code0, code1), (Some(1), Some(1)), "{err0}\n{err1}");
    assert!(
        err0.contains("finding the model failed on rank(s) [1]"),
        "{err0}"
    );
    // Its own error, with the config file's name as a single process gives it.
    let named = format!("{}: model.path", config.display());
    assert!(err1.contains(&named), "{err1}");
    // LIMO_DIST_TIMEOUT is 60 s: the ranks stopped without waiting for it.
    assert!(started.elapsed().as_secs() < 45, "{:?}", started.elapsed());
    assert!(!out.join("metrics.jsonl").exists(), "no step ran");
}
