//! End-to-end tests of `limo train` on its data and schedule: pre-tokenized rows the model
//! cannot take, a resume after the data changed, transformers' warmup_ratio and epoch ends.

mod common;

use std::path::Path;

use common::{golden_config, long_rows, read_jsonl, run_err, run_ok, train_args};

/// Pre-tokenized rows whose ids or labels the golden model (vocabulary 512) cannot take: one
/// error line naming the row, before any step (a label of 512 once failed inside the loss).
#[test]
fn tokenized_ids_outside_the_vocabulary_name_the_row() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    let good = r#"{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}"#;
    for (bad, expected) in [
        (
            r#"{"input_ids": [1, 2, 512], "labels": [1, 2, 3]}"#,
            "rows.jsonl: row 2: token id 512 is outside the model's vocabulary of 512",
        ),
        (
            r#"{"input_ids": [1, 2, 3], "labels": [-100, 2, 600]}"#,
            "rows.jsonl: row 2: token id 600",
        ),
        (
            r#"{"input_ids": [1, 2, 3], "labels": [-100, 2, -5]}"#,
            "rows.jsonl: row 2: label -5",
        ),
        (
            r#"{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "attention_mask": [1, 1, 0]}"#,
            "rows.jsonl: row 2: attention_mask must be one 1 per token",
        ),
    ] {
        std::fs::write(&data, format!("{good}\n{bad}\n")).unwrap();
        let out = tmp.path().join("run");
        let config = golden_config(tmp.path(), &data, &out, "f32", &[]);
        let err = run_err(&train_args(&config, &[]));
        assert!(err.contains(expected), "{bad}: {err}");
        assert!(!out.join("metrics.jsonl").exists(), "{bad}: no step ran");
    }
    // Packed by limo into one row with the good one: still the bad row's own number. Positions
    // that neither count up nor restart at 0 are refused (they would merge documents).
    for (bad, set, expected) in [
        (
            r#"{"input_ids": [1, 2, 512], "labels": [1, 2, 3]}"#,
            "data.packing=true",
            "rows.jsonl: row 2: token id 512",
        ),
        (
            r#"{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4], "position_ids": [0, 1, 1, 2]}"#,
            "data.packing=false",
            "rows.jsonl: row 2: position_ids[2] is 1 after 1",
        ),
    ] {
        std::fs::write(&data, format!("{good}\n{bad}\n")).unwrap();
        let out = tmp.path().join("run");
        let config = golden_config(tmp.path(), &data, &out, "f32", &[set]);
        let err = run_err(&train_args(&config, &[]));
        assert!(err.contains(expected), "{bad}: {err}");
    }
    // Text rows get their ids from the tokenizer: one that is not the model's (Qwen2.5's
    // 151k-token vocabulary on the golden model's 512) is named as the cause.
    let text_data = tmp.path().join("text.jsonl");
    std::fs::write(
        &text_data,
        r#"{"instruction": "What is 2+2?", "input": "", "output": "4"}"#,
    )
    .unwrap();
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/qwen2.5-tokenizer/tokenizer.json");
    let config = golden_config(
        tmp.path(),
        &text_data,
        &tmp.path().join("run-text"),
        "f32",
        &[
            "data.format=\"alpaca\"",
            &format!("model.tokenizer={:?}", tokenizer.display().to_string()),
        ],
    );
    let err = run_err(&train_args(&config, &[]));
    assert!(
        err.contains("training row 1: the tokenizer gave token id")
            && err.contains("model.tokenizer does not belong to this model"),
        "{err}"
    );
    // HF tokenized datasets carry an attention_mask: one that masks nothing is taken.
    let masked = r#"{"input_ids": [1, 2, 3], "labels": [1, 2, 3], "attention_mask": [1, 1, 1]}"#;
    std::fs::write(&data, format!("{good}\n{masked}\n")).unwrap();
    let out = tmp.path().join("run-masked");
    run_ok(&train_args(
        &golden_config(tmp.path(), &data, &out, "f32", &[]),
        &["train.max_steps=1"],
    ));
    // A folder of tokenized files, as for the other formats (it once failed with EISDIR); a
    // malformed row names its file and row.
    let folder = tmp.path().join("rows");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.jsonl"), format!("{good}\n{masked}\n")).unwrap();
    std::fs::write(folder.join("b.jsonl"), format!("{good}\n")).unwrap();
    let out = tmp.path().join("run-folder");
    run_ok(&train_args(
        &golden_config(tmp.path(), &folder, &out, "f32", &[]),
        &["train.max_steps=1"],
    ));
    std::fs::write(
        folder.join("b.jsonl"),
        format!("{good}\n{{\"input_ids\": [1]\n"),
    )
    .unwrap();
    let out = tmp.path().join("run-folder-bad");
    let err = run_err(&train_args(
        &golden_config(tmp.path(), &folder, &out, "f32", &[]),
        &[],
    ));
    assert!(err.contains("b.jsonl: row 2: invalid JSON"), "{err}");
}

/// Rows appended to the data file between a run and its resume: the checkpoint's data order
/// no longer fits, and the one error line names the manifest (it once named nothing).
#[test]
fn a_held_out_row_outside_the_vocabulary_is_named_before_the_first_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    // The record datasets' train_test_split(1 row, seed 42) holds out of 4 is the bad one.
    let held = limo_data::split::numpy_permutation(4, 42)[0];
    let rows: Vec<&str> = (0..4)
        .map(|r| match r == held {
            true => r#"{"input_ids": [1, 2, 512], "labels": [1, 2, 3]}"#,
            false => r#"{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}"#,
        })
        .collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    let out = tmp.path().join("run");
    let set = ["train.seed=42", "data.val_size=1", "train.eval_steps=1"];
    let config = golden_config(tmp.path(), &data, &out, "f32", &set);
    let err = run_err(&train_args(&config, &[]));
    let expected = format!("rows.jsonl: row {}: token id 512", held + 1);
    assert!(err.contains(&expected), "{err}");
    assert!(!out.join("metrics.jsonl").exists(), "no step ran");
}

/// `limo train` on the golden rows with `set`: its stdout and each (step, eval_loss) logged.
fn train_held_out(set: &[&str]) -> (String, Vec<(u64, f64)>) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let data = common::golden().join("train/data.jsonl");
    let config = golden_config(tmp.path(), &data, &out, "f32", set);
    let stdout = run_ok(&train_args(&config, &[]));
    let evals = read_jsonl(&out.join("metrics.jsonl"))
        .iter()
        .filter_map(|m| Some((m["step"].as_u64()?, m.get("eval_loss")?.as_f64()?)))
        .collect();
    (stdout, evals)
}

#[test]
fn validation_loss_is_logged_and_summed_up() {
    let set = ["data.val_size=2", "train.eval_steps=4", "train.max_steps=6"];
    let (stdout, evals) = train_held_out(&set);
    // Every 4 steps and after the last.
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [4, 6]);
    let line = format!(
        "validation loss {:.4} -> {:.4}; output in",
        evals[0].1, evals[1].1
    );
    assert!(stdout.contains(&line), "{stdout}");
}

/// Rows held out without eval_steps are evaluated once, after the last step (LLaMA-Factory's
/// `do_eval`); the summary line gives that one loss.
#[test]
fn held_out_rows_are_evaluated_after_the_last_step() {
    let (stdout, evals) = train_held_out(&["data.val_size=2", "train.max_steps=3"]);
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [3]);
    let line = format!("validation loss {:.4}; output in", evals[0].1);
    assert!(stdout.contains(&line), "{stdout}");
}

#[test]
fn resume_after_the_data_changed_names_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = long_rows(tmp.path(), 6, 16);
    let out = tmp.path().join("run");
    let config = golden_config(tmp.path(), &data, &out, "f32", &[]);
    run_ok(&train_args(&config, &["train.max_steps=2"]));
    let text = std::fs::read_to_string(&data).unwrap();
    let first = text.lines().next().unwrap();
    std::fs::write(&data, format!("{text}{first}\n")).unwrap();
    let mut args = train_args(&config, &["train.max_steps=2"]);
    args.push("--resume".into());
    let err = run_err(&args);
    assert!(
        err.contains("manifest.json: data_order") && err.contains("the dataset has 7"),
        "{err}"
    );
}

/// A row edited between a run and its resume (the same count): the resume would train the
/// rest of the run on rows the checkpoint's data order was not drawn for. Refused; with the
/// data restored the resume goes on.
#[test]
fn resume_on_edited_rows_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = long_rows(tmp.path(), 6, 16);
    let out = tmp.path().join("run");
    let config = golden_config(tmp.path(), &data, &out, "f32", &["output.save_steps=1"]);
    run_ok(&train_args(&config, &["train.max_steps=2"]));
    let text = std::fs::read_to_string(&data).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    // The first prompt token (not a target) becomes another id: same lengths, same labels.
    let mut row: serde_json::Value = serde_json::from_str(first).unwrap();
    let id = row["input_ids"][0].as_u64().unwrap();
    row["input_ids"][0] = ((id + 1) % 512).into();
    std::fs::write(&data, format!("{row}\n{rest}")).unwrap();
    let mut args = train_args(&config, &["train.max_steps=2"]);
    args.extend(["--resume".into(), "1".into()]);
    let err = run_err(&args);
    assert!(err.contains("trained on other rows"), "{err}");
    std::fs::write(&data, text).unwrap();
    run_ok(&args);
}

/// `train.warmup_ratio` is transformers' warmup_ratio: ceil(ratio x total steps) once the run
/// counts its steps (10 here): 0.15 warms up for 2 steps, as warmup_steps = 2 does.
#[test]
fn a_warmup_ratio_warms_up_for_its_share_of_the_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let data = long_rows(tmp.path(), 6, 16);
    let lrs = |name: &str, set: &[&str]| {
        let out = tmp.path().join(name);
        let config = golden_config(tmp.path(), &data, &out, "f32", set);
        run_ok(&train_args(&config, &[]));
        let lr = |m: &serde_json::Value| m["lr"].as_f64().unwrap();
        read_jsonl(&out.join("metrics.jsonl"))
            .iter()
            .map(lr)
            .collect::<Vec<f64>>()
    };
    let steps = lrs("steps", &["train.warmup_steps=2"]);
    let ratio = lrs(
        "ratio",
        &["train.warmup_steps=0", "train.warmup_ratio=0.15"],
    );
    assert_eq!(steps.len(), 10);
    assert_eq!(ratio, steps);
    assert_eq!(
        (steps[0], steps[1]),
        (0.0, 5e-4),
        "update k < 2 uses lr x k / 2"
    );
    let err = run_err(&train_args(
        &golden_config(
            tmp.path(),
            &data,
            &tmp.path().join("both"),
            "f32",
            &["train.warmup_ratio=0.1"],
        ),
        &[],
    ));
    assert!(
        err.contains("give warmup_steps or warmup_ratio, not both"),
        "{err}"
    );
}

/// `train.epoch_tail`: 5 rows, 2 per step, 2 epochs of 3 steps. Each row has a different number
/// of targets (1, 2, 4, 8, 16), so a step's target count names its rows. "wrap" runs on into
/// the next epoch; "repeat" starts each epoch afresh, as transformers' Trainer, with whole
/// epochs at steps 3 and 6: on one rank an epoch's last step holds the one row left (its last
/// micro-batch is short); with global_batch_size it is filled whole with the epoch's first row.
#[test]
fn an_epochs_last_step_wraps_or_repeats_its_first_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, targets) = (counted_rows(tmp.path()), TARGETS);
    let run = |tail: &str, split: [&str; 2]| {
        let out = tmp
            .path()
            .join(format!("{tail}-{}", split[1].replace('=', "-")));
        let set = [
            split[0],
            split[1],
            "train.epochs=2",
            "train.max_steps=6",
            &format!("train.epoch_tail=\"{tail}\""),
        ];
        run_ok(&train_args(
            &golden_config(tmp.path(), &data, &out, "f32", &set),
            &[],
        ));
        let metrics = read_jsonl(&out.join("metrics.jsonl"));
        let field = |name: &str| -> Vec<f64> {
            metrics.iter().map(|m| m[name].as_f64().unwrap()).collect()
        };
        (field("n_target_tokens"), field("epoch"))
    };
    let sum = |rows: [usize; 2]| (targets[rows[0]] + targets[rows[1]]) as f64;
    let two_rows = ["train.batch_size=2", "train.grad_accum=1"];
    let (wrap, wrap_epochs) = run("wrap", two_rows);
    let want = [[0, 1], [2, 3], [4, 0], [1, 2], [3, 4], [0, 1]].map(sum);
    assert_eq!(wrap, want);
    assert_eq!(wrap_epochs, [0.4, 0.8, 1.2, 1.6, 2.0, 2.4]);
    let thirds: Vec<f64> = (1..=6).map(|s| s as f64 / 3.0).collect();
    let last_alone = [3.0, 12.0, 16.0, 3.0, 12.0, 16.0].to_vec();
    let accumulated = ["train.batch_size=1", "train.grad_accum=2"];
    for split in [two_rows, accumulated] {
        assert_eq!(run("repeat", split), (last_alone.clone(), thirds.clone()));
    }
    let global = ["train.batch_size=1", "train.global_batch_size=2"];
    let filled = [[0, 1], [2, 3], [4, 0], [0, 1], [2, 3], [4, 0]].map(sum);
    assert_eq!(run("repeat", global), (filled.to_vec(), thirds));
}

/// Targets of the rows [`counted_rows`] writes: a step's target count names its rows.
const TARGETS: [usize; 5] = [1, 2, 4, 8, 16];

/// 5 tokenized rows of 20 tokens for the golden model, row r with `TARGETS[r]` targets.
fn counted_rows(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("rows.jsonl");
    let rows: Vec<String> = TARGETS
        .iter()
        .enumerate()
        .map(|(r, &k)| {
            let ids: Vec<u32> = (0..20).map(|t| ((r * 37 + t * 11) % 512) as u32).collect();
            let labels: Vec<i64> = (0..20)
                .map(|t| if t >= 20 - k { ids[t] as i64 } else { -100 })
                .collect();
            serde_json::json!({"input_ids": ids, "labels": labels}).to_string()
        })
        .collect();
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    data
}

/// `train.sampler = "torch"` with `epoch_tail = "repeat"` visits the rows step by step as
/// transformers' Trainer did with the same seed (42), on one rank and on two. The expected rows
/// are what transformers 4.x's dataloader gave: torch 2.5.1 and accelerate 1.2.1,
/// `prepare_data_loader(DataLoader(rows, batch_size, RandomSampler), num_processes,
/// use_seedable_sampler=True, even_batches=True)`, `set_epoch(e)` before each epoch.
#[test]
fn the_torch_sampler_visits_rows_as_transformers_did() {
    let tmp = tempfile::tempdir().unwrap();
    let data = counted_rows(tmp.path());
    let run = |sampler: &str, ranks: usize, batch_size: usize| {
        let out = tmp.path().join(format!("{sampler}-{ranks}"));
        let set = [
            &format!("train.batch_size={batch_size}") as &str,
            "train.shuffle=true",
            "train.seed=42",
            &format!("train.sampler={sampler:?}"),
            "train.epoch_tail=\"repeat\"",
            "train.epochs=2",
            "train.max_steps=6",
        ];
        let mut args: Vec<String> = Vec::new();
        if ranks > 1 {
            args.extend(["launch", "--nproc-per-node", "2", "--"].map(String::from));
        }
        args.extend(train_args(
            &golden_config(tmp.path(), &data, &out, "f32", &set),
            &[],
        ));
        run_ok(&args);
        let metrics = read_jsonl(&out.join("metrics.jsonl"));
        let targets = |m: &serde_json::Value| m["n_target_tokens"].as_f64().unwrap() as usize;
        metrics.iter().map(targets).collect::<Vec<usize>>()
    };
    let sums = |steps: &[&[usize]]| -> Vec<usize> {
        steps
            .iter()
            .map(|rows| rows.iter().map(|&r| TARGETS[r]).sum())
            .collect()
    };
    // One GPU, batch 2: [2, 4] [3, 0] [1] | [3, 1] [4, 2] [0] (the last batch is short).
    let one: [&[usize]; 6] = [&[2, 4], &[3, 0], &[1], &[3, 1], &[4, 2], &[0]];
    assert_eq!(run("torch", 1, 2), sums(&one));
    // Two GPUs, batch 1: the last round is filled with each epoch's first row.
    let two: [&[usize]; 6] = [&[2, 4], &[3, 0], &[1, 2], &[3, 1], &[4, 2], &[0, 3]];
    assert_eq!(run("torch", 2, 1), sums(&two));
    // The default sampler draws another order from the same seed.
    assert_ne!(
        run("limo", 1, 2)[..2],
        sums(&one)[..2],
        "limo's own permutation"
    );
}
