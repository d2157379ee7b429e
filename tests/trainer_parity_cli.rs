//! limo reproduces a transformers Trainer run step by step: `scripts/trainer-parity.py` ran
//! transformers' Trainer (torch 2.15, transformers 5.24, accelerate 1.15; versions in
//! `meta.json`) on the golden tiny Qwen2 in float64 and wrote what it did into
//! `tests/fixtures/trainer-parity`. The settings are what a LLaMA-Factory YAML maps to:
//! torch's shuffle, whole epochs with a short last step, the loss averaged over a step's target
//! tokens across micro-batches, cosine with a warmup share, AdamW, clipping. A second run,
//! `tests/fixtures/trainer-parity-decay`, adds weight decay 0.1, which transformers applies to
//! all but the biases and norm weights (limo's `train.no_decay = "biases_and_norms"`).

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{
    golden_config, latest_checkpoint, master_weights, read_jsonl, rel_l2, run_ok, train_args,
};

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

#[test]
fn reproduces_a_transformers_trainer_run() {
    let fixture = fixtures("trainer-parity");
    let worst = reproduce(&fixture, &["train.weight_decay=0.0"], 1e-12);
    eprintln!("worst final parameter rel L2 {worst:e}");
}

#[test]
fn reproduces_its_weight_decay_which_skips_biases_and_norms() {
    let fixture = fixtures("trainer-parity-decay");
    let decay = "train.weight_decay=0.1";
    let worst = reproduce(
        &fixture,
        &[decay, "train.no_decay=\"biases_and_norms\""],
        1e-12,
    );
    eprintln!("worst final parameter rel L2 {worst:e}");
    // Decaying every parameter instead: the same steps' rows and lr, weights far off.
    let worst = reproduce(&fixture, &[decay], f64::INFINITY);
    assert!(worst > 1e-6, "decaying everything: worst rel L2 {worst:e}");
}

#[test]
fn holds_out_the_rows_llamafactory_holds_out_and_reports_their_loss() {
    // 3 of the 13 rows held out as datasets' train_test_split(0.2, seed 42) holds them out;
    // the 10 others trained in the split's order, and eval_loss every 2 steps and at the end.
    let fixture = fixtures("trainer-parity-eval");
    let eval = [
        "train.weight_decay=0.0",
        "data.val_size=0.2",
        "train.eval_steps=2",
    ];
    let worst = reproduce(&fixture, &eval, 1e-12);
    eprintln!("worst final parameter rel L2 {worst:e}");
}

/// Trains the fixture's run with `extra` settings and checks every step (its rows, the lr
/// exactly, the grad norm within 1e-12, the loss transformers logs in float32 within 1e-6) and
/// the final weights within `weights_tol`. Returns the final weights' worst relative L2 error.
fn reproduce(fixture: &Path, extra: &[&str], weights_tol: f64) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let reference = read_jsonl(&fixture.join("log.jsonl"));
    let out = tmp.path().join("run");
    let mut set = vec![
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.epochs=3",
        "train.lr=1e-3",
        "train.schedule=\"cosine\"",
        "train.warmup_steps=0",
        "train.warmup_ratio=0.1",
        "train.max_grad_norm=1.0",
        "train.seed=42",
        "train.shuffle=true",
        "train.sampler=\"torch\"",
        "train.epoch_tail=\"repeat\"",
    ];
    set.extend(extra);
    let data = fixture.join("data.jsonl");
    // Without golden_config's max_steps: limo counts the run's steps itself (3 epochs of 4).
    let config = golden_config(tmp.path(), &data, &out, "f64", &set);
    let text = std::fs::read_to_string(&config).unwrap();
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("max_steps"))
        .collect();
    std::fs::write(&config, text.join("\n")).unwrap();
    run_ok(&train_args(&config, &[]));
    let ours = read_jsonl(&out.join("metrics.jsonl"));
    assert_eq!(ours.len(), reference.len());
    let rows = read_jsonl(&data);
    for (o, r) in ours.iter().zip(&reference) {
        let step = &r["step"];
        let value = |m: &serde_json::Value, key: &str| m[key].as_f64().unwrap();
        // The step's rows, through their target counts (labels after the first, not -100).
        let targets: u64 = r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let labels = rows[i.as_u64().unwrap() as usize]["labels"]
                    .as_array()
                    .unwrap();
                labels[1..]
                    .iter()
                    .filter(|l| l.as_i64() != Some(-100))
                    .count() as u64
            })
            .sum();
        assert_eq!(
            o["n_target_tokens"].as_u64(),
            Some(targets),
            "step {step}: rows"
        );
        let (lr, want) = (value(o, "lr"), value(r, "lr"));
        assert_eq!(lr, want, "step {step}: lr");
        let (norm, want) = (value(o, "grad_norm"), value(r, "grad_norm"));
        // The first step's norm comes before any update; the others follow the weights.
        let tol = if weights_tol.is_finite() || step == 1 {
            1e-12
        } else {
            f64::INFINITY
        };
        assert!(
            (norm - want).abs() <= tol * want,
            "step {step}: grad_norm {norm} vs {want}"
        );
        // Validation on the same steps, to the same value (f64 on both sides).
        match (o.get("eval_loss"), r.get("eval_loss")) {
            (None, None) => {}
            (Some(ours), Some(theirs)) => {
                let (ours, theirs) = (ours.as_f64().unwrap(), theirs.as_f64().unwrap());
                assert!(
                    (ours - theirs).abs() <= 1e-12 * theirs,
                    "step {step}: eval_loss {ours} vs {theirs}"
                );
            }
            (ours, theirs) => panic!("step {step}: eval_loss {ours:?} vs {theirs:?}"),
        }
        // transformers logs the loss rounded through float32.
        let (loss, want) = (value(o, "loss"), value(r, "loss"));
        assert!(
            (loss - want).abs() <= 1e-6 * want || tol.is_infinite(),
            "step {step}: loss {loss} vs {want}"
        );
    }
    let reference =
        candle_core::safetensors::load(fixture.join("final.safetensors"), &Device::Cpu).unwrap();
    let master = master_weights(&latest_checkpoint(&out));
    assert_eq!(master.len(), reference.len());
    let mut worst = 0f64;
    for (name, want) in &reference {
        let err = rel_l2(&master[name], want);
        assert!(err <= weights_tol, "final {name}: rel L2 error {err:e}");
        worst = worst.max(err);
    }
    worst
}
