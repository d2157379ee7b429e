//! Helpers shared by the end-to-end tests of the `limo` binary.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;

pub fn limo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_limo"))
}

/// Edits of LIMO's LLaMA-Factory recipe that limo refuses, as `(from, to, needle)`: the recipe
/// with `from` replaced by `to` fails with one line naming `needle`. limo-train's unit test of
/// the translation reads the same file.
pub fn unsupported_llamafactory_edits() -> Vec<(String, String, String)> {
    serde_json::from_str(include_str!("llamafactory_unsupported.json")).unwrap()
}

pub fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/qwen2-tiny")
}

/// A config training the golden tiny model on `data` (tokenized JSONL) into `out`, with the
/// golden's settings unless `set` (`section.key=value`, TOML values) says otherwise.
pub fn golden_config(dir: &Path, data: &Path, out: &Path, dtype: &str, set: &[&str]) -> PathBuf {
    let mut values: Vec<(String, String)> = [
        (
            "model.path",
            format!("{:?}", golden().join("model").display().to_string()),
        ),
        ("model.dtype", format!("{dtype:?}")),
        ("data.path", format!("{:?}", data.display().to_string())),
        ("data.format", "\"tokenized\"".into()),
        ("train.lr", "1e-3".into()),
        ("train.schedule", "\"cosine\"".into()),
        ("train.warmup_steps", "2".into()),
        ("train.max_steps", "10".into()),
        ("train.batch_size", "1".into()),
        ("train.weight_decay", "0.01".into()),
        ("train.max_grad_norm", "1.0".into()),
        ("train.shuffle", "false".into()),
        ("output.dir", format!("{:?}", out.display().to_string())),
        ("output.export_dtype", "\"f32\"".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for item in set {
        let (k, v) = item.split_once('=').unwrap();
        match values.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = v.to_string(),
            None => values.push((k.to_string(), v.to_string())),
        }
    }
    let mut text = String::new();
    for section in ["model", "data", "train", "output"] {
        text.push_str(&format!("[{section}]\n"));
        for (k, v) in &values {
            if let Some(key) = k.strip_prefix(&format!("{section}.")) {
                text.push_str(&format!("{key} = {v}\n"));
            }
        }
    }
    let path = dir.join(format!(
        "{}.toml",
        out.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// The checkpoint `<out>/checkpoints/latest` names.
pub fn latest_checkpoint(out: &Path) -> PathBuf {
    let name = std::fs::read_to_string(out.join("checkpoints/latest")).unwrap();
    out.join("checkpoints").join(name.trim())
}

/// The final master weights of a checkpoint, merged from its ranks' slices.
pub fn master_weights(checkpoint: &Path) -> std::collections::HashMap<String, Tensor> {
    limo_train::checkpoint::load_params(checkpoint, "master")
        .unwrap()
        .into_iter()
        .collect()
}

/// Runs limo and returns stdout; panics with stderr when it fails.
pub fn run_ok<S: AsRef<OsStr> + Debug>(args: &[S]) -> String {
    let out = limo().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "limo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs limo expecting failure; returns the error line after checking it is the only one and
/// that nothing panicked.
pub fn run_err<S: AsRef<OsStr> + Debug>(args: &[S]) -> String {
    let out = limo().args(args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "limo {args:?} should fail cleanly:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
    lines[0].to_string()
}

/// Relative L2 error `|a - b| / |b|` in f64 (`limo_ops::rel_l2`).
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    limo_ops::rel_l2(a, b).unwrap()
}

/// Arguments of `limo debug loss-grad --model M --batch B --out O`.
pub fn loss_grad_args(model: &Path, batch: &Path, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec!["debug".into(), "loss-grad".into()];
    for (flag, path) in [("--model", model), ("--batch", batch), ("--out", out)] {
        args.push(flag.into());
        args.push(path.display().to_string());
    }
    args
}

/// The JSON summary `limo debug loss-grad` prints (loss, n_target_tokens, grad norm).
pub fn loss_grad_summary(model: &Path, batch: &Path, out: &Path) -> serde_json::Value {
    serde_json::from_str(run_ok(&loss_grad_args(model, batch, out)).trim()).unwrap()
}

/// Arguments of `limo train --config CONFIG`, then `--set S` for each of `sets`.
pub fn train_args(config: &Path, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["train".into(), "--config".into(), path_arg(config)];
    for set in sets {
        args.push("--set".into());
        args.push(set.to_string());
    }
    args
}

/// Arguments of `limo export --checkpoint CHECKPOINT --out OUT`, then `extra`.
pub fn export_args(checkpoint: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["export".into(), "--checkpoint".into(), path_arg(checkpoint)];
    args.extend(["--out".into(), path_arg(out)]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A random-initialized tiny Qwen2.5 checkpoint written by `limo init-model` into `out`.
pub fn init_tiny_model(out: &Path) {
    run_ok(&["init-model", "--shape", "tiny", "--out", &path_arg(out)]);
}

/// Asserts that `message` contains every one of `parts`.
pub fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} is not in: {message}");
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// Tokenized rows for the golden model (vocabulary 512), long enough that steps take time.
pub fn long_rows(dir: &Path, rows: usize, len: usize) -> PathBuf {
    let path = dir.join("rows.jsonl");
    let mut text = String::new();
    for r in 0..rows {
        let ids: Vec<u32> = (0..len)
            .map(|t| ((r * 131 + t * 17 + t * t) % 512) as u32)
            .collect();
        let labels: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(t, &i)| if t < len / 4 { -100 } else { i as i64 })
            .collect();
        text.push_str(&serde_json::json!({"input_ids": ids, "labels": labels}).to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// A port nobody listens on now (for ranks started by hand).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The JSON values of a JSONL file, one per line.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
