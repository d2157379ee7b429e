//! End-to-end tests of a run directory across invocations of `limo train`: a live run's lock,
//! a new run over an earlier one's checkpoints (refused, or `output.overwrite`), `--resume
//! auto`, and what a fresh start makes anew.

mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_mentions, golden, golden_config, latest_checkpoint, limo, run_err, run_ok, train_args,
};

/// [`golden_config`] on the golden's own training data, with all of its settings.
fn golden_data_config(dir: &Path, out: &Path, dtype: &str) -> PathBuf {
    golden_config(dir, &golden().join("train/data.jsonl"), out, dtype, &[])
}

/// A second run into a directory a live run holds is refused (it once interleaved its
/// checkpoints and metrics with the first's); once the holder is gone, the run goes ahead.
#[test]
fn a_run_directory_in_use_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = golden_data_config(tmp.path(), &out, "f32");
    std::fs::create_dir_all(&out).unwrap();
    let holder = std::fs::File::create(out.join(".lock")).unwrap();
    holder.lock().unwrap();
    std::fs::write(out.join(".lock"), "4242").unwrap();
    let err = run_err(&train_args(&config, &["train.max_steps=1"]));
    assert!(
        err.contains("another limo process (pid 4242) is training into this run directory"),
        "{err}"
    );
    assert!(!out.join("config.toml").exists(), "nothing was written");
    drop(holder);
    run_ok(&train_args(&config, &["train.max_steps=1"]));
    // Its checkpoints deleted, its export is still an earlier run's model: not silently kept.
    std::fs::remove_dir_all(out.join("checkpoints")).unwrap();
    let err = run_err(&train_args(&config, &["train.max_steps=1"]));
    assert_mentions(
        &err,
        &["holds an earlier run's exported model", "output.overwrite"],
    );
    assert!(out.join("model/config.json").exists(), "kept");
    // Training again from that model into the same directory with overwrite: refused before
    // anything is deleted (it deleted the model it was about to read).
    let model = format!("model.path={:?}", out.join("model").display().to_string());
    let again = ["train.max_steps=1", "output.overwrite=true", &model];
    let err = run_err(&train_args(&config, &again));
    assert_mentions(&err, &["model.path", "which output.overwrite deletes"]);
    assert!(out.join("model/config.json").exists(), "kept");
}

/// A run started without `--resume` into a directory holding an earlier run's checkpoints is
/// refused (it once mixed its checkpoints with them, pointed `latest` at its own, and let
/// `keep_last` delete the earlier run's); `output.overwrite = true` deletes them first.
#[test]
fn a_new_run_over_an_earlier_runs_checkpoints_needs_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = golden_data_config(tmp.path(), &out, "f32");
    let steps = || {
        let mut names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("step-"))
            .collect();
        names.sort();
        names
    };
    let lines = || {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    let every_step = ["output.save_steps=1", "output.keep_last=3"];
    run_ok(&train_args(
        &config,
        &[&every_step[..], &["train.max_steps=3"]].concat(),
    ));
    let first = ["step-00000001", "step-00000002", "step-00000003"];
    assert_eq!(steps(), first);
    let second = [&every_step[..], &["train.max_steps=2", "train.lr=2e-3"]].concat();
    let err = run_err(&train_args(&config, &second));
    assert_mentions(
        &err,
        &[
            "holds an earlier run's checkpoints (steps 1, 2, 3)",
            "--resume continues",
            "output.overwrite = true",
        ],
    );
    // Nothing of the earlier run was touched.
    assert_eq!(steps(), first);
    assert!(latest_checkpoint(&out).ends_with("step-00000003"));
    assert_eq!(lines(), 3);
    assert!(out.join("model/config.json").exists() && out.join("loss.png").exists());
    let no_export = ["output.overwrite=true", "output.export_dtype=none"];
    let afresh = limo()
        .args(train_args(&config, &[&second[..], &no_export].concat()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&afresh.stderr);
    assert!(afresh.status.success(), "{stderr}");
    assert!(
        stderr.contains("deleting an earlier run's checkpoints"),
        "{stderr}"
    );
    // The golden config's 2 warmup steps are the whole of this 2-step run: said.
    assert!(
        stderr.contains("the warmup (2 steps) covers the whole run (2 steps)"),
        "{stderr}"
    );
    assert_eq!(steps(), ["step-00000001", "step-00000002"]);
    assert!(latest_checkpoint(&out).ends_with("step-00000002"));
    assert_eq!(lines(), 2);
    // The earlier run's export went with its checkpoints (this run exports none).
    assert!(!out.join("model").exists());
    assert!(out.join("loss.png").exists(), "this run's plot");
    // --resume auto, with checkpoints there, continues the run instead (here: already done),
    // also when `latest` was never written (a kill right after the first checkpoint).
    let mut resume = train_args(&config, &second);
    resume.extend(["--resume".to_string(), "auto".to_string()]);
    run_ok(&resume);
    assert_eq!(steps(), ["step-00000001", "step-00000002"]);
    assert_eq!(lines(), 2);
    std::fs::remove_file(out.join("checkpoints/latest")).unwrap();
    let mut latest = train_args(&config, &second);
    latest.push("--resume".into());
    assert_mentions(
        &run_err(&latest),
        &[
            "latest: missing",
            "step-00000001, step-00000002",
            "--resume auto",
        ],
    );
    let again = limo().args(&resume).output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("resumed step=2") && stderr.contains("step-00000002"),
        "{stderr}"
    );
}

/// The demo starts afresh each time (`output.overwrite` in the embedded config), its random
/// initialization made again for the `model.init` settings of this run, not the last one's.
#[test]
fn a_fresh_start_makes_its_own_initialization() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let run = |layers: usize| {
        let overrides = format!(
            "model.init_overrides={{ hidden_size = 64, intermediate_size = 128, \
             num_attention_heads = 2, num_key_value_heads = 1, num_hidden_layers = {layers} }}"
        );
        run_ok(&[
            "train",
            "--set",
            &overrides,
            "--set",
            "train.max_steps=1",
            "--set",
            "output.eval_examples=0",
            "--set",
            "output.export_dtype=\"none\"",
            "--set",
            &format!("output.dir={:?}", out.display().to_string()),
        ]);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("init-model/config.json")).unwrap(),
        )
        .unwrap();
        config["num_hidden_layers"].as_u64().unwrap()
    };
    assert_eq!(run(1), 1);
    assert_eq!(
        run(3),
        3,
        "the earlier run's 1-layer initialization was reused"
    );
}
