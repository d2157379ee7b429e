//! `limo train --config x.yaml`: LLaMA-Factory's training YAML read as it is, `--print-config`,
//! the notes for arguments that do not apply, one-line errors for what limo cannot train, and a
//! short real run from such a YAML.

mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_mentions, init_tiny_model, limo, run_err, run_ok, train_args,
    unsupported_llamafactory_edits,
};
use limo_train::TrainConfig;

/// LIMO's LLaMA-Factory recipe (GAIR-NLP/LIMO), with `MODEL`, `DATA` and `OUT` to fill in.
const LIMO_YAML: &str = include_str!("common/limo_llamafactory.yaml");

/// The arguments that do not apply to limo in LIMO_YAML: each gets one note.
const NOT_APPLICABLE: [&str; 12] = [
    "stage",
    "do_train",
    "finetuning_type",
    "deepspeed",
    "flash_attn",
    "template",
    "overwrite_cache",
    "preprocessing_num_workers",
    "logging_steps",
    "plot_loss",
    "overwrite_output_dir",
    "ddp_timeout",
];

/// A tempdir with `data/dataset_info.json` naming `limo` (alpaca formatting, LIMO's columns),
/// `data/limo.json` (6 question/solution rows) and `train.yaml` from `yaml` (LIMO_YAML edited).
fn setup(yaml: &str, model: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("dataset_info.json"),
        r#"{"limo": {"file_name": "limo.json", "formatting": "alpaca",
            "columns": {"prompt": "question", "response": "solution"}}}"#,
    )
    .unwrap();
    let rows: Vec<String> = (0..6)
        .map(|i| {
            format!(
                r#"{{"question": "What is {i} + {i}?", "solution": "{i} + {i} = \\boxed{{{}}}."}}"#,
                2 * i
            )
        })
        .collect();
    std::fs::write(data.join("limo.json"), format!("[{}]", rows.join(",\n"))).unwrap();
    let text = yaml
        .replace("MODEL", &model.display().to_string())
        .replace("DATA", &data.display().to_string())
        .replace("OUT", &dir.path().join("out").display().to_string());
    let path = dir.path().join("train.yaml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// `limo train --config YAML --set ... --print-config`.
fn print_config_args(yaml: &Path, set: &[&str]) -> Vec<String> {
    let mut args = train_args(yaml, set);
    args.push("--print-config".into());
    args
}

fn print_config(yaml: &Path, set: &[&str]) -> (TrainConfig, String, String) {
    let out = limo().args(print_config_args(yaml, set)).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let config = TrainConfig::parse(&stdout, "--print-config output", &[])
        .unwrap_or_else(|e| panic!("{e:#}\n{stdout}"));
    (config, stdout, stderr)
}

#[test]
fn limo_recipe_maps_to_limo_config() {
    let model = Path::new("/models/Qwen2.5-32B-Instruct");
    let (dir, yaml) = setup(LIMO_YAML, model);
    let (c, stdout, stderr) = print_config(&yaml, &[]);
    assert_eq!(c.model.path.as_deref(), Some(model));
    assert_eq!(
        (c.model.dtype.as_str(), c.model.device.as_str()),
        ("bf16", "cuda")
    );
    assert_eq!(
        c.data.path,
        dir.path().join("data/limo.json").display().to_string()
    );
    assert_eq!(c.data.format, limo_data::Format::Alpaca);
    assert_eq!(
        (
            c.data.columns.instruction.as_str(),
            c.data.columns.output.as_str()
        ),
        ("question", "solution")
    );
    assert_eq!(c.data.cutoff_len, 16384);
    assert!(
        stdout.contains("system = false"),
        "the qwen template's default system prompt, as LLaMA-Factory:\n{stdout}"
    );
    // Read back, the printed config is the same run (an absent key was LIMO's prompt).
    assert_eq!(c.data.system, None);
    let t = &c.train;
    assert_eq!(
        (t.lr, t.epochs, t.batch_size, t.grad_accum),
        (5e-6, 15, 1, 1)
    );
    assert_eq!(
        (t.schedule.as_str(), t.warmup_steps, t.max_steps),
        ("cosine", 0, None)
    );
    assert_eq!(c.output.dir, dir.path().join("out"));
    assert!(c.output.save_every_epoch);
    assert_eq!(c.output.save_steps, 0);

    // One note per argument that does not apply, and nothing else on stderr.
    let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), NOT_APPLICABLE.len(), "{stderr}");
    for key in NOT_APPLICABLE {
        assert!(
            notes
                .iter()
                .any(|n| n.contains(&format!("train.yaml: {key}: "))),
            "{key}:\n{stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), notes.len(), "{stderr}");

    // --set applies on top, to limo's fields.
    let (c, _, _) = print_config(
        &yaml,
        &[
            "train.lr=1e-5",
            "model.device=cpu",
            "model.dtype=f32",
            "data.packing=true",
        ],
    );
    assert_eq!(c.train.lr, 1e-5);
    assert_eq!(
        (c.model.dtype.as_str(), c.model.device.as_str()),
        ("f32", "cpu")
    );
    assert!(c.data.packing);
    // overwrite_output_dir: true (LIMO's YAML) starts afresh over an earlier run's checkpoints.
    assert!(c.output.overwrite);

    // warmup_ratio stays a ratio (6 rows, 2 per step, 15 epochs = 45 steps: ceil(0.1 x 45) = 5
    // once the run counts them).
    let (_dir, yaml) = setup(
        &LIMO_YAML
            .replace("warmup_ratio: 0.0", "warmup_ratio: 0.1")
            .replace(
                "gradient_accumulation_steps: 1",
                "gradient_accumulation_steps: 2",
            ),
        model,
    );
    let (c, _, stderr) = print_config(&yaml, &[]);
    assert_eq!(c.train.warmup_ratio, Some(0.1), "{stderr}");
    assert_eq!(c.train.warmup_steps_of(45), 5);
}

#[test]
fn unsupported_values_and_unknown_keys_are_one_line_errors() {
    let model = Path::new("/models/m");
    for (from, to, key) in unsupported_llamafactory_edits() {
        let (_dir, yaml) = setup(&LIMO_YAML.replace(&from, &to), model);
        let line = run_err(&print_config_args(&yaml, &[]));
        assert_mentions(&line, &[&key, "train.yaml"]);
    }
    // A dataset missing from dataset_info.json.
    let (_dir, yaml) = setup(&LIMO_YAML.replace("dataset: limo", "dataset: gsm8k"), model);
    let line = run_err(&train_args(&yaml, &[]));
    assert_mentions(&line, &["gsm8k", "dataset_info.json"]);
}

#[test]
fn trains_two_steps_from_a_llamafactory_yaml() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("tiny");
    init_tiny_model(&model);
    // A local model directory brings its tokenizer, as a Hub checkpoint does.
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2.5-tokenizer");
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixtures.join(file), model.join(file)).unwrap();
    }
    let yaml_text = LIMO_YAML.replace("cutoff_len: 16384", "cutoff_len: 64");
    let (dir, yaml) = setup(&yaml_text, &model);
    let stdout = run_ok(&train_args(
        &yaml,
        &[
            "train.max_steps=2",
            "model.device=cpu",
            "model.dtype=f32",
            "output.export_dtype=none",
        ],
    ));
    assert!(stdout.contains("trained 2 steps"), "{stdout}");
    let metrics = std::fs::read_to_string(dir.path().join("out").join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        2,
        "{metrics}"
    );
}
