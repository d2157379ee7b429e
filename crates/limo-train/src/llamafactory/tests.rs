use super::*;

/// LIMO's recipe, shared with tests/llamafactory_cli.rs (`MODEL`, `DATA`, `OUT` to fill in).
const LIMO_YAML: &str = include_str!("../../../../tests/common/limo_llamafactory.yaml");

fn setup(yaml: &str, info: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("dataset_info.json"), info).unwrap();
    let rows: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"question": "q{i}", "solution": "s{i}"}}"#))
        .collect();
    std::fs::write(data.join("limo.json"), format!("[{}]", rows.join(","))).unwrap();
    let yaml = yaml
        .replace("MODEL", &dir.path().join("model").display().to_string())
        .replace("DATA", &data.display().to_string())
        .replace("OUT", "saves/limo");
    let path = dir.path().join("train.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

const INFO: &str = r#"{"limo": {"file_name": "limo.json", "columns": {"prompt": "question", "response": "solution"}}}"#;

/// [`from_yaml`] of `yaml` beside `info` (see [`setup`]), without overrides.
fn convert(yaml: &str, info: &str) -> anyhow::Result<TrainConfig> {
    let (_dir, path) = setup(yaml, info);
    from_yaml(&path, &[])
}

#[test]
fn limo_recipe_maps() {
    let (dir, path) = setup(LIMO_YAML, INFO);
    let t = translate(&path).unwrap();
    assert_eq!(t.notes.len(), 12, "{:#?}", t.notes);
    let c = from_yaml(&path, &[]).unwrap();
    assert_eq!(c.model.path, Some(dir.path().join("model")));
    assert_eq!(
        (c.model.dtype.as_str(), c.model.device.as_str()),
        ("bf16", "cuda")
    );
    assert_eq!(c.data.format, limo_data::Format::Alpaca);
    assert_eq!(c.data.columns.instruction, "question");
    assert_eq!(c.data.columns.output, "solution");
    assert_eq!(c.data.cutoff_len, 16384);
    assert_eq!(c.data.overlong, limo_data::Overlong::TruncatePairs);
    assert_eq!(
        c.data.system, None,
        "the qwen template's default system prompt"
    );
    assert_eq!(
        (
            c.train.lr,
            c.train.epochs,
            c.train.batch_size,
            c.train.grad_accum
        ),
        (5e-6, 15, 1, 1)
    );
    assert_eq!(
        (c.train.epoch_tail, c.train.sampler, c.train.seed),
        (
            crate::config::EpochTail::Repeat,
            crate::config::SamplerKind::Torch,
            42
        ),
        "whole epochs in transformers' order"
    );
    assert_eq!(
        (c.train.schedule.as_str(), c.train.warmup_steps),
        ("cosine", 0)
    );
    assert_eq!(c.output.dir, PathBuf::from("saves/limo"));
    assert!(c.output.save_every_epoch);
    assert_eq!(c.output.save_steps, 0);
}

#[test]
fn warmup_ratio_counts_rows_and_overrides_apply() {
    let yaml = LIMO_YAML
        .replace("warmup_ratio: 0.0", "warmup_ratio: 0.1")
        .replace(
            "per_device_train_batch_size: 1",
            "per_device_train_batch_size: 2",
        );
    let (_dir, path) = setup(&yaml, INFO);
    // The ratio stays a ratio: 5 rows, 2 per step are 3 steps per epoch, 45 steps, and
    // ceil(4.5) = 5 warmup steps once the run counts them; with max_steps 20, 2.
    let c = from_yaml(&path, &[]).unwrap();
    assert_eq!((c.train.warmup_ratio, c.train.warmup_steps), (Some(0.1), 0));
    assert_eq!(c.train.warmup_steps_of(45), 5);
    assert_eq!(c.train.warmup_steps_of(20), 2);
    // A Hub dataset or packing no longer needs the steps given by hand.
    let c = from_yaml(&path, &["data.packing=true".into()]).unwrap();
    assert_eq!(c.train.warmup_ratio, Some(0.1));
    let c = from_yaml(
        &path,
        &["train.warmup_steps=7".into(), "train.lr=1e-5".into()],
    )
    .unwrap();
    assert_eq!((c.train.warmup_steps, c.train.lr), (7, 1e-5));
    assert_eq!(c.train.warmup_ratio, None);
    // transformers 5 writes the share as warmup_steps below 1; 1 and above are steps (cut to
    // a whole number, as transformers' int()).
    for (warmup, want) in [
        ("0.1", (Some(0.1), 0)),
        ("3", (None, 3)),
        ("2.7", (None, 2)),
    ] {
        let yaml = LIMO_YAML.replace("warmup_ratio: 0.0", &format!("warmup_steps: {warmup}"));
        let c = convert(&yaml, INFO).unwrap();
        assert_eq!(
            (c.train.warmup_ratio, c.train.warmup_steps),
            want,
            "{warmup}"
        );
    }
    // transformers' data_seed orders the data in place of seed (accelerate's sampler).
    let seeds = LIMO_YAML.to_string() + "seed: 7\ndata_seed: 9\n";
    assert_eq!(convert(&seeds, INFO).unwrap().train.seed, 9);
    let seed = LIMO_YAML.to_string() + "seed: 7\n";
    assert_eq!(convert(&seed, INFO).unwrap().train.seed, 7);
    // Both keys with warmup_steps > 0: transformers 4 and 5 disagree, so neither is guessed.
    for both in [
        "warmup_steps: 3\nwarmup_ratio: 0.0",
        "warmup_steps: 0.05\nwarmup_ratio: 0.1",
    ] {
        let err = convert(&LIMO_YAML.replace("warmup_ratio: 0.0", both), INFO).unwrap_err();
        assert!(err.to_string().contains("both given"), "{err}");
    }
    let zero_steps = LIMO_YAML.replace("warmup_ratio: 0.0", "warmup_steps: 0\nwarmup_ratio: 0.1");
    assert_eq!(
        convert(&zero_steps, INFO).unwrap().train.warmup_ratio,
        Some(0.1)
    );
    let unshuffled = LIMO_YAML.to_string() + "disable_shuffling: true\n";
    assert!(!convert(&unshuffled, INFO).unwrap().train.shuffle);
    let yaml = LIMO_YAML.replace("warmup_ratio: 0.0", "warmup_steps: -1");
    let err = convert(&yaml, INFO).unwrap_err().to_string();
    assert!(err.contains("warmup_steps: -1"), "{err}");
}

#[test]
fn schedules_and_save_strategies() {
    let yaml = LIMO_YAML
        .replace(
            "lr_scheduler_type: cosine",
            "lr_scheduler_type: constant_with_warmup",
        )
        .replace("warmup_ratio: 0.0", "warmup_steps: 3")
        .replace(
            "save_strategy: epoch",
            "save_strategy: steps\nsave_steps: 50",
        );
    let c = convert(&yaml, INFO).unwrap();
    assert_eq!(
        (c.train.schedule.as_str(), c.train.warmup_steps),
        ("constant", 3)
    );
    assert_eq!(
        (c.output.save_steps, c.output.save_every_epoch),
        (50, false)
    );

    let yaml = LIMO_YAML
        .replace("lr_scheduler_type: cosine", "lr_scheduler_type: constant")
        .replace("warmup_ratio: 0.0", "warmup_steps: 3")
        .replace("save_strategy: epoch", "save_strategy: \"no\"");
    let c = convert(&yaml, INFO).unwrap();
    assert_eq!(
        (c.train.schedule.as_str(), c.train.warmup_steps),
        ("constant", 0)
    );
    assert_eq!((c.output.save_steps, c.output.save_every_epoch), (0, false));
}

#[test]
fn cosine_with_min_lr_takes_its_floor_from_the_kwargs() {
    let with = |kwargs: &str| {
        let yaml = LIMO_YAML.replace(
            "lr_scheduler_type: cosine",
            &format!("lr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {kwargs}"),
        );
        let c = convert(&yaml, INFO).unwrap();
        assert_eq!(c.train.schedule, Schedule::Cosine, "{kwargs}");
        c.train.min_lr_rate
    };
    assert_eq!(with("{min_lr_rate: 0.1}"), 0.1);
    // transformers' rate: min_lr / learning_rate (5e-6 in LIMO's YAML).
    assert_eq!(with("{min_lr: 5.0e-7}"), 5e-7 / 5e-6);
    // transformers also takes the kwargs as JSON text.
    assert_eq!(with("'{\"min_lr_rate\": 0.25}'"), 0.25);
    assert_eq!(with("{min_lr_rate: 0.1, num_cycles: 0.5}"), 0.1);
    assert_eq!(convert(LIMO_YAML, INFO).unwrap().train.min_lr_rate, 0.0);
    // The floor is the cosine's; on limo's side too.
    let (_dir, path) = setup(LIMO_YAML, INFO);
    let set = [
        "train.schedule=linear".into(),
        "train.min_lr_rate=0.1".into(),
    ];
    let err = format!("{:#}", from_yaml(&path, &set).unwrap_err());
    assert!(
        err.contains("train.min_lr_rate: the floor of the cosine"),
        "{err}"
    );
}

#[test]
fn val_size_and_eval_strategy_hold_out_and_validate() {
    let with = |lines: &str| {
        convert(&(LIMO_YAML.to_string() + lines), INFO).map(|c| {
            (
                c.data.val_size,
                c.train.eval_steps,
                c.train.eval_every_epoch,
            )
        })
    };
    let steps = "val_size: 0.1\neval_strategy: steps\neval_steps: 50\n";
    assert_eq!(with(steps).unwrap(), (0.1, 50, false));
    // eval_steps defaults to logging_steps (1 in LIMO's YAML), as transformers'.
    let default = "val_size: 2\neval_strategy: steps\n";
    assert_eq!(with(default).unwrap(), (2.0, 1, false));
    let epoch = "val_size: 0.25\neval_strategy: epoch\nper_device_eval_batch_size: 1\n";
    assert_eq!(with(epoch).unwrap(), (0.25, 0, true));
    // Held out, never evaluated (transformers' eval_strategy "no").
    assert_eq!(with("val_size: 0.1\n").unwrap(), (0.1, 0, false));
    for (lines, needle) in [
        ("eval_strategy: steps\n", "rows held out by val_size"),
        (
            "val_size: 0.1\neval_strategy: steps\neval_steps: 0.1\n",
            "eval_steps: 0.1",
        ),
        (
            "val_size: 0.1\neval_strategy: best\n",
            "eval_strategy: best",
        ),
        ("val_size: -1\n", "val_size: -1"),
    ] {
        let err = format!("{:#}", with(lines).unwrap_err());
        assert!(err.contains(needle) && err.contains("train.yaml"), "{err}");
    }
    // logging_steps 0 would never evaluate; transformers refuses it.
    let yaml = LIMO_YAML.replace("logging_steps: 1", "logging_steps: 0")
        + "val_size: 0.1\neval_strategy: steps\n";
    let err = format!("{:#}", convert(&yaml, INFO).unwrap_err());
    assert!(err.contains("eval_steps: 0 (from logging_steps)"), "{err}");
}

#[test]
fn unsupported_values_and_unknown_keys_are_named() {
    // The cases of tests/llamafactory_cli.rs, which checks the same errors from the CLI.
    let edits: Vec<(String, String, String)> = serde_json::from_str(include_str!(
        "../../../../tests/common/llamafactory_unsupported.json"
    ))
    .unwrap();
    for (from, to, needle) in edits {
        let err = format!(
            "{:#}",
            convert(&LIMO_YAML.replace(&from, &to), INFO).unwrap_err()
        );
        assert!(err.contains(&needle) && err.contains("train.yaml"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn sharegpt_needs_openai_roles() {
    let info = r#"{"limo": {"file_name": "limo.json", "formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}"#;
    let c = convert(LIMO_YAML, info).unwrap();
    assert_eq!(c.data.format, limo_data::Format::Messages);
    assert_eq!(
        (
            c.data.columns.messages.as_str(),
            c.data.columns.role.as_str()
        ),
        ("messages", "role")
    );
    let info = r#"{"limo": {"file_name": "limo.json", "formatting": "sharegpt"}}"#;
    let err = format!("{:#}", convert(LIMO_YAML, info).unwrap_err());
    assert!(err.contains("user_tag: human"), "{err}");
    let info = r#"{"limo": {"hf_hub_url": "GAIR/LIMO", "columns": {"prompt": "question", "response": "solution"}}}"#;
    assert_eq!(convert(LIMO_YAML, info).unwrap().data.path, "GAIR/LIMO");
}

/// `dataset: a,b`: the first is data's own, the others data.also, each with its own format and
/// columns from dataset_info.json (LLaMA-Factory concatenates them in order).
#[test]
fn several_datasets_are_read_in_order() {
    let info = r#"{"limo": {"file_name": "limo.json", "columns": {"prompt": "question", "response": "solution"}},
        "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}"#;
    let yaml = LIMO_YAML.replace("dataset: limo", "dataset: limo, chat\nmix_strategy: concat");
    let c = convert(&yaml, info).unwrap();
    assert!(c.data.path.ends_with("limo.json"), "{}", c.data.path);
    assert_eq!(c.data.format, limo_data::Format::Alpaca);
    assert_eq!(c.data.also.len(), 1);
    let chat = &c.data.also[0];
    assert!(chat.path.ends_with("chat.jsonl"), "{}", chat.path);
    assert_eq!(chat.format, limo_data::Format::Messages);
    assert_eq!(chat.columns.role, "role");
    // One dataset: no also, and the config's hash stays as before.
    assert!(convert(LIMO_YAML, INFO).unwrap().data.also.is_empty());
}

#[test]
fn average_tokens_across_devices_picks_the_loss_average() {
    use crate::config::LossAverage;
    let absent = convert(LIMO_YAML, INFO).unwrap();
    assert_eq!(absent.train.loss_average, LossAverage::Tokens);
    for (line, want, notes) in [
        (
            "average_tokens_across_devices: false",
            LossAverage::Sequences,
            12,
        ),
        (
            "average_tokens_across_devices: true",
            LossAverage::Tokens,
            12,
        ),
        (
            "average_tokens_across_devices: false\ngradient_accumulation_steps: 4",
            LossAverage::Sequences,
            13,
        ),
        (
            "average_tokens_across_devices: false\nneat_packing: true",
            LossAverage::Sequences,
            13,
        ),
    ] {
        let yaml = LIMO_YAML.replace("gradient_accumulation_steps: 1\n", "") + line + "\n";
        let (_dir, path) = setup(&yaml, INFO);
        let t = translate(&path).unwrap();
        assert_eq!(t.notes.len(), notes, "{line}: {:#?}", t.notes);
        let c = from_yaml(&path, &[]).unwrap();
        assert_eq!(c.train.loss_average, want, "{line}");
    }
    let (_dir, path) = setup(&(LIMO_YAML.to_string() + "weight_decay: 0.1\n"), INFO);
    let notes = translate(&path).unwrap().notes;
    assert!(
        notes.iter().any(|n| n.contains("biases_and_layer_norms")),
        "{notes:#?}"
    );
    let c = from_yaml(&path, &[]).unwrap();
    assert_eq!(c.train.no_decay, crate::config::NoDecay::BiasesAndNorms);
    assert_eq!(c.train.weight_decay, 0.1);
    // Without decay nothing is set (LIMO's own YAML).
    let (_dir, path) = setup(LIMO_YAML, INFO);
    assert!(from_yaml(&path, &[]).unwrap().train.no_decay.is_none());
    let (_dir, path) = setup(
        &(LIMO_YAML.to_string() + "average_tokens_across_devices: 1\n"),
        INFO,
    );
    let err = format!("{:#}", from_yaml(&path, &[]).unwrap_err());
    assert!(err.contains("average_tokens_across_devices"), "{err}");
}
