//! `load_dataset` from a serde configuration: column mapping, limit, cutoff policies and report.

mod common;

use limo_data::dataset::load_dataset_split;
use limo_data::{load_dataset, DataConfig, Format, OnBadRow, Overlong, Source, LIMO_SYSTEM_PROMPT};

fn math_config(extra: &str) -> DataConfig {
    let json = format!(
        r#"{{"path": {:?}, "format": "limo", "columns": {{"question": "problem"}}{extra}}}"#,
        common::data("math.jsonl").display().to_string()
    );
    serde_json::from_str(&json).unwrap()
}

#[test]
fn limit_and_system_prompt_apply() {
    let config = math_config(r#", "limit": 3"#);
    assert_eq!(config.system.as_deref(), Some(LIMO_SYSTEM_PROMPT));
    let dataset = load_dataset(&config, common::tokenizer()).unwrap();
    assert_eq!((dataset.examples.len(), dataset.report.rows), (3, 3));
    let text = common::tokenizer()
        .decode(&dataset.examples[0].input_ids)
        .unwrap();
    assert!(text.starts_with(&format!(
        "<|im_start|>system\n{LIMO_SYSTEM_PROMPT}<|im_end|>\n"
    )));

    let custom = math_config(r#", "limit": 1, "system": "Think.""#);
    let text = common::tokenizer()
        .decode(&load_dataset(&custom, common::tokenizer()).unwrap().examples[0].input_ids)
        .unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nThink.<|im_end|>\n"),
        "{text}"
    );
}

#[test]
fn truncate_and_drop_agree_with_full_lengths() {
    let full = load_dataset(&math_config(""), common::tokenizer())
        .unwrap()
        .examples;
    assert_eq!(full.len(), 500);
    let cutoff = 300;
    let over = full.iter().filter(|e| e.len() > cutoff).count();

    let dropped = load_dataset(
        &math_config(r#", "cutoff_len": 300, "overlong": "drop""#),
        common::tokenizer(),
    )
    .unwrap();
    assert_eq!(dropped.report.cutoff.over_cutoff, over);
    assert_eq!(dropped.report.cutoff.dropped_overlong, over);
    let kept: Vec<_> = full.iter().filter(|e| e.len() <= cutoff).cloned().collect();
    assert_eq!(dropped.examples, kept);

    let mut truncating = math_config("");
    truncating.cutoff_len = cutoff;
    assert_eq!(truncating.overlong, Overlong::Truncate);
    let truncated = load_dataset(&truncating, common::tokenizer()).unwrap();
    let counts = truncated.report.cutoff;
    assert_eq!(counts.over_cutoff, over);
    assert_eq!(counts.truncated + counts.dropped_no_target, over);
    assert_eq!(truncated.examples.len(), 500 - counts.dropped_no_target);
    assert!(truncated
        .examples
        .iter()
        .all(|e| e.len() <= cutoff && e.num_targets() > 0));
}

/// `also`: the records of every dataset in order, as one file holding them all would give
/// them (LLaMA-Factory's `dataset: a,b`, concatenated), the validation split over all of them.
#[test]
fn also_reads_datasets_as_one_concatenated_file() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::data("math.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = (tmp.path().join("a.jsonl"), tmp.path().join("b.jsonl"));
    std::fs::write(&a, lines[..200].join("\n") + "\n").unwrap();
    std::fs::write(&b, lines[200..].join("\n") + "\n").unwrap();
    let whole = math_config("");
    let mut parts = whole.clone();
    parts.path = a.display().to_string();
    parts.also = vec![Source {
        path: b.display().to_string(),
        format: Format::Limo,
        columns: whole.columns.clone(),
    }];
    let one = load_dataset(&whole, common::tokenizer()).unwrap();
    let two = load_dataset(&parts, common::tokenizer()).unwrap();
    assert_eq!(two.examples, one.examples);
    assert_eq!((two.report.rows, two.report.files), (500, vec![a, b]));
    for config in [&whole, &parts] {
        assert_eq!(config.sources().len(), config.also.len() + 1);
    }
    let split = |c: &DataConfig| {
        let c = DataConfig {
            val_size: 0.1,
            ..c.clone()
        };
        let (train, val) = load_dataset_split(&c, common::tokenizer(), 42).unwrap();
        (train.examples, val.unwrap().examples)
    };
    let (train, val) = split(&parts);
    assert_eq!((train.len(), val.len()), (450, 50));
    assert_eq!((train, val), split(&whole));
}

/// Datasets of different formats each read with their own columns; `limit` counts each.
#[test]
fn also_mixes_formats_and_limits_each_dataset() {
    let alpaca = DataConfig::new(
        common::data("alpaca.json").display().to_string(),
        Format::Alpaca,
    );
    let messages = DataConfig::new(
        common::data("messages.jsonl").display().to_string(),
        Format::Messages,
    );
    let alone = |c: &DataConfig| load_dataset(c, common::tokenizer()).unwrap().examples;
    let mut both = alpaca.clone();
    both.also = vec![Source {
        path: messages.path.clone(),
        format: Format::Messages,
        columns: messages.columns.clone(),
    }];
    let mut want = alone(&alpaca);
    want.extend(alone(&messages));
    assert_eq!((want.len(), alone(&both)), (5, want.clone()));
    both.limit = Some(1);
    let limited = load_dataset(&both, common::tokenizer()).unwrap();
    assert_eq!(limited.examples, [want[0].clone(), want[2].clone()]);
    assert_eq!(limited.report.rows, 2);
}

#[test]
fn also_names_the_dataset_that_fails() {
    let mut config = DataConfig::new(
        common::data("alpaca.json").display().to_string(),
        Format::Alpaca,
    );
    // The messages file read as alpaca: no record has an instruction.
    let wrong = common::data("messages.jsonl").display().to_string();
    config.also = vec![Source {
        path: wrong.clone(),
        format: Format::Alpaca,
        columns: Default::default(),
    }];
    let err = load_dataset(&config, common::tokenizer())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("messages.jsonl") && err.contains("row 1"),
        "{err}"
    );
    config.on_bad_row = OnBadRow::Skip;
    let err = load_dataset(&config, common::tokenizer())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "no usable examples in {wrong} (3 rows read, 3 skipped"
        )),
        "{err}"
    );
    config.also[0].format = Format::Tokenized;
    let err = load_dataset(&config, common::tokenizer())
        .unwrap_err()
        .to_string();
    assert!(err.contains("also[0]: tokenized rows"), "{err}");
    config.also[0].path.clear();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("also[0].path is empty"), "{err}");
}
