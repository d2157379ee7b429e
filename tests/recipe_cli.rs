//! The LIMO recipe as shipped (`configs/limo-qwen2.5-32b.toml`), with only the model, device
//! and dtype swapped for a tiny random Qwen2.5 on CPU ranks: its Hub dataset id read from a
//! Hub cache, 32 rows per step whatever the ranks, every example weighing the same, whole
//! epochs (the last step of each filled with its first rows), the export.

mod common;

use std::path::{Path, PathBuf};

use common::{init_tiny_model, limo, read_jsonl};

/// A Hub cache (as huggingface_hub lays it out) holding `GAIR/LIMO` as 40 problems in LIMO's
/// format, solutions of different lengths.
fn limo_hub_home(dir: &Path) -> PathBuf {
    let home = dir.join("hf-home");
    let repo = home.join("hub/datasets--GAIR--LIMO");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
    let rows: Vec<String> = (0..40)
        .map(|i| {
            let steps = "We add the numbers one digit at a time. ".repeat(1 + i % 7);
            serde_json::json!({
                "question": format!("What is ${i} + {}$?", 2 * i),
                "solution": format!("{steps}So the sum is $\\boxed{{{}}}$.", 3 * i),
                "answer": (3 * i).to_string(),
            })
            .to_string()
        })
        .collect();
    std::fs::write(snapshot.join("limo.jsonl"), rows.join("\n") + "\n").unwrap();
    home
}

#[test]
fn the_32b_recipe_runs_as_written_on_two_cpu_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    init_tiny_model(&model);
    let home = limo_hub_home(tmp.path());
    let out = tmp.path().join("run");
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/limo-qwen2.5-32b.toml");
    let sets = [
        format!("model.path={:?}", model.display().to_string()),
        "model.device=\"cpu\"".into(),
        "model.dtype=\"f32\"".into(),
        "train.max_steps=2".into(),
        format!("output.dir={:?}", out.display().to_string()),
    ];
    let mut args: Vec<String> = ["launch", "--nproc-per-node", "2", "--", "train", "--config"]
        .map(String::from)
        .to_vec();
    args.push(recipe.display().to_string());
    for set in &sets {
        args.extend(["--set".to_string(), set.clone()]);
    }
    let output = limo()
        .args(&args)
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("trained 2 steps on 2 rank(s)"), "{stdout}");
    // 32 rows per step on 2 ranks of 1 row: 16 micro-batches each; examples weigh the same.
    assert!(stderr.contains("micro_batches_per_step=16"), "{stderr}");
    assert!(stderr.contains("loss_average=\"sequences\""), "{stderr}");
    let metrics = read_jsonl(&out.join("metrics.jsonl"));
    let epochs: Vec<f64> = metrics
        .iter()
        .map(|m| m["epoch"].as_f64().unwrap())
        .collect();
    // 2 steps per epoch of 40 rows: the second takes the last 8 and 24 of the epoch's first.
    assert!(
        stderr.contains("steps_per_epoch=2 epoch_tail=\"repeat\""),
        "{stderr}"
    );
    assert_eq!(epochs, [0.5, 1.0], "32 rows per step, 2 steps per epoch");
    for m in &metrics {
        let loss = m["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{m}");
    }
    assert!(out.join("model/config.json").exists(), "the export");
}
