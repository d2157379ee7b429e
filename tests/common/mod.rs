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

pub fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/qwen2-tiny")
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
