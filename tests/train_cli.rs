//! End-to-end tests of `limo train` and `limo export`: the transformers trajectory, exact
//! resume after SIGKILL (also during checkpoint writes) and after a SIGTERM's clean stop, export round trips, bad configs, and
//! the embedded default run.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{
    assert_mentions, export_args, golden, golden_config, latest_checkpoint, limo, long_rows,
    loss_grad_summary, master_weights, read_jsonl, rel_l2, run_err, run_ok, train_args,
};

/// [`golden_config`] on the golden's own training data, with all of its settings.
fn golden_data_config(dir: &Path, out: &Path, dtype: &str) -> PathBuf {
    golden_config(dir, &golden().join("train/data.jsonl"), out, dtype, &[])
}

#[test]
fn reproduces_the_transformers_trajectory() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = read_jsonl(&golden().join("train/log.jsonl"));
    let final_ref = candle_core::safetensors::load(
        golden().join("train/final/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // f64 is the tight check. In f32, per-step loss and grad norm hold to 1e-6, but the final
    // weights of parameters with near-zero gradients (k_proj biases: softmax is shift-invariant)
    // drift to ~5e-5 relative: Adam divides each gradient by its own magnitude, so the ~1e-6
    // relative f32 noise of a tiny gradient becomes a full-size update difference.
    for (dtype, step_tol, final_tol) in [("f64", 1e-12, 1e-12), ("f32", 1e-6, 1e-4)] {
        let out = tmp.path().join(dtype);
        let config = golden_data_config(tmp.path(), &out, dtype);
        run_ok(&train_args(&config, &[]));
        let ours = read_jsonl(&out.join("metrics.jsonl"));
        assert_eq!(ours.len(), 10);
        for (o, r) in ours.iter().zip(&reference) {
            for key in ["loss", "grad_norm"] {
                let (a, b) = (o[key].as_f64().unwrap(), r[key].as_f64().unwrap());
                assert!(
                    (a - b).abs() <= step_tol * b.abs(),
                    "{dtype} step {}: {key} {a} vs {b}",
                    r["step"]
                );
            }
            assert_eq!(
                o["lr"].as_f64().unwrap(),
                r["lr"].as_f64().unwrap(),
                "{dtype}: lr"
            );
            assert_eq!(o["n_target_tokens"], r["n_target_tokens"]);
        }
        let master = master_weights(&latest_checkpoint(&out));
        assert_eq!(master.len(), final_ref.len());
        for (name, golden_final) in &final_ref {
            let err = rel_l2(&master[name], golden_final);
            assert!(
                err <= final_tol,
                "{dtype}: final {name} rel L2 error {err:e}"
            );
        }
        // The run exported its final model, which loads and scores like the checkpoint.
        assert!(
            out.join("model/model.safetensors").exists() && out.join("model/config.json").exists()
        );
        assert!(out.join("loss.png").exists());
    }
}

/// `limo train --config CONFIG --resume`: on from the run's `latest` checkpoint.
fn resume_args(config: &Path) -> Vec<String> {
    let mut args = train_args(config, &[]);
    args.push("--resume".into());
    args
}

/// Starts a run (with `resume`, `--resume auto`, as a restarted job) and SIGKILLs it once
/// `metrics.jsonl` shows `kill_after` steps. Returns false if the run finished first.
fn run_and_kill(config: &Path, out: &Path, kill_after: usize, resume: bool) -> bool {
    let mut args = train_args(config, &[]);
    if resume {
        args.extend(["--resume".into(), "auto".into()]);
    }
    let mut child = limo()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "run failed before it was killed");
            return false;
        }
        let steps = std::fs::read_to_string(&metrics)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if steps >= kill_after {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        assert!(Instant::now() < deadline, "run made no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A pseudo-random number from the clock, so every test run kills at other moments.
fn clock_random(modulo: usize) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos as usize / 7) % modulo
}

/// The loss of every step in `out`'s metrics.
fn losses(out: &Path) -> Vec<f64> {
    let rows = read_jsonl(&out.join("metrics.jsonl"));
    rows.iter().map(|m| m["loss"].as_f64().unwrap()).collect()
}

/// Asserts the latest checkpoints of runs `a` and `b` hold the same master weights, bit for bit.
fn same_master_weights(a: &Path, b: &Path, what: &str) {
    let a = master_weights(&latest_checkpoint(a));
    let b = master_weights(&latest_checkpoint(b));
    for (name, ta) in &a {
        let (va, vb): (Vec<f32>, Vec<f32>) = (
            ta.flatten_all().unwrap().to_vec1().unwrap(),
            b[name].flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert!(va == vb, "{name} differs after {what}");
    }
}

/// A 40-step shuffled run of the golden model on long rows, checkpointed every `save_steps`,
/// trained uninterrupted into `a`; and the same config into `b`, for the test to interrupt.
/// Returns both (output, config).
fn reference_run(dir: &Path, save_steps: usize) -> [(PathBuf, PathBuf); 2] {
    let data = long_rows(dir, 9, 384);
    let save = format!("output.save_steps={save_steps}");
    let set = [
        "train.max_steps=40",
        "train.shuffle=true",
        "train.seed=7",
        &save,
    ];
    let [a, b] = ["a", "b"].map(|name| {
        let out = dir.join(name);
        let config = golden_config(dir, &data, &out, "f32", &set);
        (out, config)
    });
    run_ok(&train_args(&a.1, &[]));
    [a, b]
}

#[test]
fn sigkill_then_resume_ends_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 40;
    let [(uninterrupted, config_a), (interrupted, config_b)] = reference_run(tmp.path(), 3);
    // Kill somewhere in the second half, then resume from `latest`.
    let kill_after = steps / 2 + clock_random(steps / 2 - 2);
    assert!(
        run_and_kill(&config_b, &interrupted, kill_after, false),
        "the run ended before step {kill_after}"
    );
    run_ok(&resume_args(&config_b));

    let same_weights = |what: &str| same_master_weights(&uninterrupted, &interrupted, what);
    same_weights(&format!("resume (killed after step {kill_after})"));
    let export_a = std::fs::read(uninterrupted.join("model/model.safetensors")).unwrap();
    let export_b = std::fs::read(interrupted.join("model/model.safetensors")).unwrap();
    assert!(export_a == export_b, "exports differ");
    assert_eq!(
        losses(&uninterrupted),
        losses(&interrupted),
        "the resumed run logs every step once, with the same losses"
    );

    // The finished run resumed from its oldest kept checkpoint, named by step number, redoes
    // the steps after it to the same bits.
    let oldest = limo_train::checkpoint::list(&uninterrupted.join("checkpoints")).unwrap()[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let step: usize = oldest.trim_start_matches("step-").parse().unwrap();
    assert!(step < steps, "{oldest}");
    let mut args = train_args(&config_a, &[]);
    args.extend(["--resume".into(), step.to_string()]);
    run_ok(&args);
    same_weights(&format!("--resume {step}"));
    assert_eq!(losses(&uninterrupted), losses(&interrupted));

    // A damaged `latest`: the error names the step `--resume` can take instead.
    use limo_train::checkpoint;
    let ckpts = uninterrupted.join("checkpoints");
    let latest = checkpoint::resolve(&ckpts, "latest").unwrap();
    let rank = latest.join(checkpoint::rank_file(0));
    let mut bytes = std::fs::read(&rank).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&rank, bytes).unwrap();
    let saved = checkpoint::list(&ckpts).unwrap();
    let other = saved.iter().rev().find(|d| **d != latest).unwrap();
    let other_step: usize = other
        .to_string_lossy()
        .rsplit("step-")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let err = run_err(&resume_args(&config_a));
    assert!(
        err.contains("checksum mismatch")
            && err.contains(&format!(
                "--resume {other_step} continues from the newest other"
            )),
        "{err}"
    );
}

#[test]
fn sigterm_stops_after_the_step_with_a_checkpoint_and_resume_is_exact() {
    stop_mid_run_and_resume(libc::SIGTERM, false);
}

/// A closed terminal (a dropped SSH session): SIGHUP, and stderr gone. Every log line after
/// it fails to write; the run must still stop with its checkpoint and the stop's exit status.
#[test]
fn sighup_with_stderr_gone_stops_with_a_checkpoint_too() {
    stop_mid_run_and_resume(libc::SIGHUP, true);
}

/// Sends `signal` to a run after its third step, checks it stopped after a step with that
/// step's checkpoint (and said so, unless `stderr_gone`: a pipe closed from the start), then
/// that `--resume` ends as the uninterrupted run: weights and every loss.
fn stop_mid_run_and_resume(signal: libc::c_int, stderr_gone: bool) {
    let tmp = tempfile::tempdir().unwrap();
    // No checkpoint falls due before the end: the one after the stop is the signal's.
    let [(uninterrupted, _), (stopped, config_b)] = reference_run(tmp.path(), 100);
    let stderr_path = tmp.path().join("stderr.txt");
    let stderr = match stderr_gone {
        true => std::process::Stdio::piped(),
        false => std::fs::File::create(&stderr_path).unwrap().into(),
    };
    let mut child = limo()
        .args(train_args(&config_b, &[]))
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let metrics = stopped.join("metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended first");
        assert!(Instant::now() < deadline, "run made no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert_eq!(status.code(), Some(128 + signal), "{stderr}");
    let step = read_jsonl(&metrics).len();
    assert!(step < 40, "{stderr}");
    let checkpoint = latest_checkpoint(&stopped);
    assert!(checkpoint.ends_with(limo_train::checkpoint::step_dir_name(step)));
    // The loss curve so far is drawn when the run stops, not only at its end.
    assert!(stopped.join("loss.png").is_file());
    if !stderr_gone {
        let last = stderr.lines().last().unwrap();
        let name = limo_dist::launch::signal_name(signal);
        let expected = format!("error: stopped by {name} after step {step} of 40; checkpoint ");
        assert!(last.starts_with(&expected), "{last}");
        assert!(last.contains(&checkpoint.display().to_string()), "{last}");
    }

    run_ok(&resume_args(&config_b));
    same_master_weights(
        &uninterrupted,
        &stopped,
        &format!("stopping at step {step}"),
    );
    assert_eq!(losses(&uninterrupted), losses(&stopped));
}

#[test]
fn kills_during_checkpoint_writes_never_break_latest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = long_rows(tmp.path(), 5, 96);
    let out = tmp.path().join("run");
    let steps = 30;
    // A checkpoint every step: most of the run's time is spent writing them.
    let set = [
        "train.max_steps=30",
        "output.save_steps=1",
        "output.keep_last=2",
    ];
    let config = golden_config(tmp.path(), &data, &out, "f32", &set);
    let mut kills = 0;
    for round in 0..6 {
        let done = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let kill_after = (done + 1 + clock_random(3)).min(steps);
        // A kill between the first checkpoint and its `latest` leaves no `latest`: auto still
        // continues from the checkpoint (a start without --resume would be refused).
        let resume = round > 0;
        if !run_and_kill(&config, &out, kill_after, resume) {
            break;
        }
        kills += 1;
        if out.join("checkpoints/latest").exists() {
            // `latest` names a complete checkpoint whose checksums hold.
            let latest = latest_checkpoint(&out);
            let manifest: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(latest.join("manifest.json")).unwrap(),
            )
            .unwrap();
            for (file, sum) in manifest["files"].as_object().unwrap() {
                let bytes = std::fs::read(latest.join(file)).unwrap();
                assert_eq!(
                    bytes.len() as u64,
                    sum["bytes"].as_u64().unwrap(),
                    "{file} after kill {kills}"
                );
            }
        }
    }
    assert!(kills >= 2, "the run was killed {kills} times");
    run_ok(&resume_args(&config));
    let metrics = read_jsonl(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), steps);
    let kept: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(kept.len(), 2, "keep_last = 2: {kept:?}");
}

#[test]
fn export_round_trips_through_loss_grad() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = golden_data_config(tmp.path(), &out, "f32");
    run_ok(&train_args(&config, &[]));
    let checkpoint = latest_checkpoint(&out);
    let batch = golden().join("batch.json");
    let loss_of = |model: &Path| -> f64 {
        let grads = tmp.path().join("grads.safetensors");
        loss_grad_summary(model, &batch, &grads)["loss"]
            .as_f64()
            .unwrap()
    };
    // The checkpoint's own loss: its master weights written as a model by hand.
    let by_hand = tmp.path().join("by-hand");
    std::fs::create_dir_all(&by_hand).unwrap();
    std::fs::copy(checkpoint.join("config.json"), by_hand.join("config.json")).unwrap();
    candle_core::safetensors::save(
        &master_weights(&checkpoint),
        by_hand.join("model.safetensors"),
    )
    .unwrap();
    let reference = loss_of(&by_hand);

    let f32_dir = tmp.path().join("f32");
    run_ok(&export_args(&checkpoint, &f32_dir, &["--dtype", "f32"]));
    assert_eq!(loss_of(&f32_dir), reference);
    let bf16_dir = tmp.path().join("bf16");
    run_ok(&export_args(
        &checkpoint,
        &bf16_dir,
        &["--dtype", "bf16", "--max-shard-size", "20KB"],
    ));
    assert!(
        bf16_dir.join("model.safetensors.index.json").exists(),
        "small shards give an index"
    );
    let bf16_loss = loss_of(&bf16_dir);
    assert!(
        (bf16_loss - reference).abs() < 1e-2 * reference,
        "{bf16_loss} vs {reference}"
    );
    assert_ne!(bf16_loss, reference, "bf16 rounding changes the weights");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf16_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    // The golden's transformers 5 config says "dtype" too, which transformers reads first.
    assert_eq!(config["dtype"], "bfloat16");
    // Into the run directory (not a model's files) or over a model: refused, nothing written.
    let err = run_err(&export_args(&checkpoint, &out, &[]));
    assert_mentions(
        &err,
        &[
            "holds .lock, checkpoints, config.toml",
            "export into an empty or new directory",
        ],
    );
    assert!(!out.join("model.safetensors").exists());
    let err = run_err(&export_args(&checkpoint, &f32_dir, &[]));
    assert_mentions(&err, &["already holds a model"]);
    let err = run_err(&export_args(
        &checkpoint,
        &tmp.path().join("x"),
        &["--dtype", "fp32"],
    ));
    assert_mentions(&err, &["--dtype fp32: export writes bf16 or f32"]);
    // An export cut short before its config.json (shards moved, no config, its staging
    // folder still there) is redone; shards without that folder are not an export's to replace.
    std::fs::remove_file(bf16_dir.join("config.json")).unwrap();
    let err = run_err(&export_args(&checkpoint, &bf16_dir, &[]));
    assert_mentions(&err, &["holds generation_config.json, model-00001-of-"]);
    std::fs::create_dir(bf16_dir.join(".export.partial")).unwrap();
    run_ok(&export_args(&checkpoint, &bf16_dir, &["--dtype", "f32"]));
    assert_eq!(loss_of(&bf16_dir), reference);
    // ... with none of the earlier attempt's shards or index beside the new single file.
    let mut left: Vec<String> = std::fs::read_dir(&bf16_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("safetensors"))
        .collect();
    left.sort();
    assert_eq!(left, ["model.safetensors"]);
}

#[test]
fn bad_configs_fail_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let config = golden_data_config(tmp.path(), &out, "f32");
    let text = std::fs::read_to_string(&config).unwrap();
    let cases = [
        (
            "unknown-key.toml",
            text.replace("shuffle = false", "shuffle = false\nlearning_rate = 1"),
            "learning_rate",
        ),
        (
            "wrong-type.toml",
            text.replace("lr = 1e-3", "lr = \"fast\""),
            "train.lr",
        ),
        (
            "no-model.toml",
            text.replace(
                golden().join("model").to_str().unwrap(),
                "/nonexistent/model",
            ),
            "/nonexistent/model",
        ),
        (
            "hub-id-not-cached.toml",
            text.replace(
                golden().join("model").to_str().unwrap(),
                "Qwen/not-in-any-cache",
            ),
            "Qwen/not-in-any-cache is neither a local directory nor in the Hub cache",
        ),
        (
            "bad-schedule.toml",
            text.replace("\"cosine\"", "\"zigzag\""),
            "train.schedule",
        ),
        (
            "bad-device.toml",
            text.replacen("dtype = \"f32\"", "dtype = \"f32\"\ndevice = \"tpu\"", 1),
            "model.device",
        ),
        (
            "bf16-on-cpu.toml",
            text.replacen("dtype = \"f32\"", "dtype = \"bf16\"", 1),
            "model.device = \"cuda\"",
        ),
    ];
    for (name, body, expected) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, body).unwrap();
        let err = run_err(&["train", "--config", path.to_str().unwrap()]);
        assert!(err.contains(expected), "{name}: {err}");
        assert!(
            err.contains(name),
            "{name}: the message names the file: {err}"
        );
    }
    let err = run_err(&train_args(&config, &["train.epochs=0"]));
    assert!(err.contains("train.epochs"), "{err}");
    assert!(!out.exists(), "nothing was written");
    // A relative data path is read from the current directory, and the error says so.
    let err = run_err(&train_args(&config, &["data.path=\"no-such-rows.jsonl\""]));
    assert_mentions(
        &err,
        &[
            "data.path (relative to the current directory ",
            "no-such-rows.jsonl",
        ],
    );
    // A malformed generation_config.json was carried into the checkpoints and the export,
    // where `limo eval` then refused it: refused here.
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(golden().join("model")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let generation = model.join("generation_config.json");
    std::fs::write(&generation, "{\"eos_token_id\": [1, 2],}").unwrap();
    let path = format!("model.path={:?}", model.display().to_string());
    let err = run_err(&train_args(&config, &[&path]));
    assert_mentions(&err, &["generation_config.json: malformed"]);
    assert!(!out.join("checkpoints").exists(), "no step was taken");
}

#[test]
fn embedded_default_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let stdout = run_ok(&[
        "train",
        "--set",
        &format!("output.dir=\"{}\"", out.display()),
        "--set",
        "train.max_steps=4",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "output.save_steps=2",
        "--set",
        "output.eval_examples=2",
        "--set",
        "output.eval_max_new_tokens=4",
    ]);
    assert!(
        stdout.contains("boxed-answer accuracy on 2 held-out problems"),
        "{stdout}"
    );
    let metrics = read_jsonl(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 4);
    let first = metrics[0]["loss"].as_f64().unwrap();
    assert!(
        (first - (151936f64).ln()).abs() < 0.5,
        "a fresh model starts near ln(vocab): {first}"
    );
    assert!(
        metrics[3]["loss"].as_f64().unwrap() < first,
        "the loss falls"
    );
    for file in [
        "loss.png",
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
        "eval.json",
        "data/arithmetic-train.jsonl",
    ] {
        assert!(out.join(file).exists(), "{file}");
    }
    assert!(latest_checkpoint(&out).join("manifest.json").exists());
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
}

#[test]
fn gradient_accumulation_is_a_sum_over_the_step_not_a_mean_of_means() {
    // Rows with different target counts: a mean of micro-batch means would weight them wrongly.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("uneven.jsonl");
    let mut text = String::new();
    for (r, targets) in [3usize, 12, 5, 9].iter().enumerate() {
        let ids: Vec<u32> = (0..16).map(|t| ((r * 53 + t * 29) % 512) as u32).collect();
        let labels: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(t, &i)| if t >= 16 - targets { i as i64 } else { -100 })
            .collect();
        text.push_str(&serde_json::json!({"input_ids": ids, "labels": labels}).to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let run = |name: &str, set: &[&str]| {
        let out = tmp.path().join(name);
        let config = golden_config(tmp.path(), &path, &out, "f64", set);
        run_ok(&train_args(&config, &[]));
        (
            read_jsonl(&out.join("metrics.jsonl")),
            master_weights(&latest_checkpoint(&out)),
        )
    };
    let (one_batch, w_batch) = run("batch", &["train.max_steps=2", "train.batch_size=2"]);
    let (accumulated, w_accum) = run("accum", &["train.max_steps=2", "train.grad_accum=2"]);
    for (a, b) in one_batch.iter().zip(&accumulated) {
        let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((la - lb).abs() < 1e-13 * la, "{la} vs {lb}");
        assert_eq!(a["n_target_tokens"], b["n_target_tokens"]);
    }
    for (name, t) in &w_batch {
        assert!(rel_l2(&w_accum[name], t) < 1e-12, "{name}");
    }
    // The first step holds rows of 3 and 12 targets: its loss is their sum over 15 tokens.
    assert_eq!(one_batch[0]["n_target_tokens"], 15);
}

/// A file where the run keeps a directory: named before the first step (a `checkpoints` file
/// once failed at the first save, after its steps were computed).
#[test]
fn files_where_the_run_keeps_directories_are_named_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = long_rows(tmp.path(), 4, 16);
    let out = tmp.path().join("run");
    let config = golden_config(tmp.path(), &data, &out, "f32", &[]);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("checkpoints"), "").unwrap();
    let err = run_err(&train_args(&config, &["train.max_steps=1"]));
    assert!(
        err.contains("checkpoints: a file where limo keeps a directory"),
        "{err}"
    );
    assert!(!out.join("metrics.jsonl").exists(), "no step ran");
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::write(&out, "").unwrap();
    let err = run_err(&train_args(&config, &["train.max_steps=1"]));
    assert!(err.contains("run: a file, not a directory"), "{err}");
    // A config.json limo may not look at (a link loop; permissions alike) once read "has no
    // config.json".
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::os::unix::fs::symlink(model.join("config.json"), model.join("config.json")).unwrap();
    std::fs::remove_file(&out).unwrap();
    let path = format!("model.path={:?}", model.display().to_string());
    let err = run_err(&train_args(&config, &[path.as_str()]));
    assert!(err.contains("Too many levels of symbolic links"), "{err}");
}

/// A resume with another trajectory is refused, naming each field that differs and its value
/// in the checkpoint's run (kept in the checkpoint); settings that leave the trajectory alone
/// are not named.
#[test]
fn a_refused_resume_names_the_fields_that_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = golden_data_config(tmp.path(), &out, "f32");
    run_ok(&train_args(&config, &["train.max_steps=2"]));
    let mut args = train_args(
        &config,
        &[
            "train.max_steps=2",
            "train.lr=1e-2",
            "train.activation_checkpointing=false",
        ],
    );
    args.push("--resume".into());
    let err = run_err(&args);
    assert!(
        err.contains("train.lr: here 0.01, the checkpoint's run 0.001"),
        "{err}"
    );
    assert!(!err.contains("activation_checkpointing"), "{err}");
    // Every checkpoint of the run is refused alike: no hint to resume from another one.
    assert!(!err.contains("newest other checkpoint"), "{err}");
    // Rows per step is not a key of the config: the message says what sets it.
    let mut args = train_args(&config, &["train.max_steps=2", "train.batch_size=2"]);
    args.push("--resume".into());
    let err = run_err(&args);
    assert_mentions(
        &err,
        &[
            "train.rows_per_step: here 2, the checkpoint's run 1",
            "train.batch_size x grad_accum x ranks",
        ],
    );
}
