//! What users trip on: `limo export --checkpoint` takes any way of naming a checkpoint (and an
//! export cut short never looks like a model), `limo train --resume auto` works with or without
//! one, exports of a run on the built-in tokenizer carry the chat template and are readable by
//! everyone, and logs have no colour codes off a terminal.

use std::path::Path;
use std::process::{Command, Output};

fn limo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_limo"))
        .args(args)
        .output()
        .expect("the limo binary runs")
}

/// The embedded default, 2 steps, a checkpoint after each (only the newest kept: each is 234 MB
/// and tests run side by side), resumable with `resume`.
fn train(out: &Path, resume: Option<&str>) -> Output {
    let dir = format!("output.dir={:?}", out.display().to_string());
    let mut args = vec![
        "train",
        "--set",
        "train.max_steps=2",
        "--set",
        "output.save_steps=1",
        "--set",
        "output.keep_last=1",
        "--set",
        "output.eval_examples=0",
        "--set",
        &dir,
    ];
    if let Some(r) = resume {
        args.extend(["--resume", r]);
    }
    limo(&args)
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn export_takes_a_run_its_checkpoints_latest_or_a_step() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let log = ok(&train(&run, None));
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal: {log}"
    );
    // Each checkpoint's size (19.8M parameters x 12 B, and the tokenizer) and write time.
    let saved = log
        .lines()
        .find(|l| l.contains("checkpoint saved"))
        .unwrap();
    assert!(saved.contains(" gib=0.23 seconds="), "{saved}");

    let step = run.join("checkpoints").join("step-00000002");
    let names = [
        run.clone(),
        run.join("checkpoints"),
        run.join("checkpoints").join("latest"),
        step.clone(),
    ];
    let mut exports = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let out = tmp.path().join(format!("export-{k}"));
        ok(&limo(&[
            "export",
            "--checkpoint",
            name.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]));
        exports.push(std::fs::read(out.join("model.safetensors")).unwrap());
    }
    assert!(
        exports.windows(2).all(|w| w[0] == w[1]),
        "every name is the same checkpoint"
    );

    // An export cut short (here: a folder where tokenizer.json must go) leaves no config.json,
    // so nothing loads it as a model and a rerun is allowed; the rerun cleans up after it.
    let cut = tmp.path().join("cut");
    std::fs::create_dir_all(cut.join("tokenizer.json")).unwrap();
    std::fs::write(cut.join("tokenizer.json").join("in-the-way"), "").unwrap();
    let export_cut = || {
        let (step, cut) = (step.to_str().unwrap(), cut.to_str().unwrap());
        limo(&["export", "--checkpoint", step, "--out", cut])
    };
    let failed = export_cut();
    assert_eq!(failed.status.code(), Some(1));
    assert!(!cut.join("config.json").exists());
    std::fs::remove_dir_all(cut.join("tokenizer.json")).unwrap();
    assert!(export_cut().status.success());
    assert!(cut.join("config.json").is_file() && cut.join("tokenizer.json").is_file());
    assert!(!cut.join(".export.partial").exists());
    assert!(std::fs::read(cut.join("model.safetensors")).unwrap() == exports[0]);

    let bad = limo(&[
        "export",
        "--checkpoint",
        tmp.path().to_str().unwrap(),
        "--out",
        "x",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not a checkpoint") && err.trim().lines().count() == 1,
        "{err}"
    );

    // The run's own export: the chat template travels with the tokenizer, files are 0644.
    let model = run.join("model");
    let config = std::fs::read_to_string(model.join("tokenizer_config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert!(model.join("chat_template.jinja").is_file());
    #[cfg(unix)]
    for entry in std::fs::read_dir(&model).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o044, 0o044, "{:?} is {mode:o}", entry.file_name());
    }
}

#[test]
fn resume_auto_starts_fresh_then_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let first = ok(&train(&run, Some("auto")));
    assert!(!first.contains("resumed"), "{first}");
    let metrics = || std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let after_first = metrics();
    assert_eq!(after_first.lines().count(), 2);
    let second = ok(&train(&run, Some("auto")));
    assert!(second.contains("resumed"), "{second}");
    assert_eq!(
        metrics(),
        after_first,
        "nothing left to train: the metrics stay"
    );
    // A plain --resume with no checkpoint still says so.
    let fresh = tmp.path().join("fresh");
    let out = train(&fresh, Some("latest"));
    assert_eq!(out.status.code(), Some(1));
}

/// `limo` with stdout connected to `stdout` (stderr captured).
fn limo_to(args: &[&str], stdout: std::process::Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_limo"))
        .args(args)
        .stdout(stdout)
        .output()
        .expect("the limo binary runs")
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_and_a_full_disk_is_an_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let recipe = root.join("configs/limo-qwen2.5-32b.toml");
    let recipe = recipe.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"prediction\": \"\\\\boxed{3}\", \"reference\": \"3\"}\n",
    )
    .unwrap();
    let verdicts = dir.path().join("verdicts.jsonl");
    let commands: [&[&str]; 3] = [
        &["plan", "--config", recipe, "--gpus", "8"],
        &["plan", "--config", recipe, "--gpus", "8", "--json"],
        &[
            "eval",
            "grade",
            "--pairs",
            pairs.to_str().unwrap(),
            "--out",
            verdicts.to_str().unwrap(),
        ],
    ];
    for args in commands {
        // `limo ... | head -0`: the reader is gone before the first write (EPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = limo_to(args, writer.into());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}\n{stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");

        let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
        let out = limo_to(args, full.unwrap().into());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error: writing to standard output"),
            "{args:?}: {stderr}"
        );
    }
    // The grader's file was written both times.
    let written = std::fs::read_to_string(&verdicts).unwrap();
    assert_eq!(written.lines().count(), 1, "{written}");
}
