//! `load_dataset` from a serde configuration: column mapping, limit, cutoff policies and report.

mod common;

use limo_data::{load_dataset, DataConfig, Overlong, LIMO_SYSTEM_PROMPT};

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
