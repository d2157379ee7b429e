use super::*;

#[test]
fn embedded_default_parses() {
    let c = TrainConfig::parse(TINY_TOML, "tiny.toml", &[]).unwrap();
    assert!(c.train.lr > 0.0);
}

#[test]
fn overrides_apply_and_unknown_keys_are_named() {
    let c = TrainConfig::parse(
        TINY_TOML,
        "tiny.toml",
        &["train.lr=1e-5".into(), "train.schedule=linear".into()],
    )
    .unwrap();
    assert_eq!(c.train.lr, 1e-5);
    assert_eq!(c.train.schedule, "linear");
    let err = TrainConfig::parse(TINY_TOML, "tiny.toml", &["train.lrr=1".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("lrr"), "{err:#}");
    let err =
        TrainConfig::parse(TINY_TOML, "tiny.toml", &["train.lr=\"fast\"".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("invalid type"), "{err:#}");
    // A key without its section was blamed on the config file ("tiny.toml: lr: unknown").
    let err = TrainConfig::parse(TINY_TOML, "tiny.toml", &["lr=1".into()]).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "--set lr=1: expected section.key=value, e.g. train.lr=..."
    );
    // Past TOML's i64 a number read as a word: "invalid type: string".
    let big = "train.max_steps=99999999999999999999".to_string();
    let err = TrainConfig::parse(TINY_TOML, "tiny.toml", &[big]).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "--set train.max_steps=99999999999999999999: 99999999999999999999 is out of range"
    );
    let c = TrainConfig::parse(TINY_TOML, "tiny.toml", &["output.dir=2024_01x".into()]);
    assert_eq!(c.unwrap().output.dir, std::path::PathBuf::from("2024_01x"));
}

#[test]
fn every_shipped_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = TrainConfig::from_file(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(config.train.lr > 0.0);
            seen += 1;
        }
    }
    assert!(seen >= 5, "tiny + LIMO recipes for 0.5B, 1.5B, 7B, 32B");
    let limo = TrainConfig::from_file(&dir.join("limo-qwen2.5-32b.toml"), &[]).unwrap();
    assert_eq!(
        (limo.train.lr, limo.train.epochs, limo.train.batch_size),
        (5e-6, 15, 1)
    );
    assert_eq!((limo.train.warmup_steps, limo.data.cutoff_len), (0, 16384));
    assert_eq!(
        (limo.train.schedule.as_str(), limo.model.dtype.as_str()),
        ("cosine", "bf16")
    );
    assert_eq!(
        limo.model.device,
        DeviceKind::Cuda,
        "the recipe trains on GPUs"
    );
    if !cfg!(feature = "cuda") {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let golden = here.join("../../tests/fixtures/golden/qwen2-tiny/model");
        let set = [format!("model.path={:?}", golden.display().to_string())];
        let recipe = TrainConfig::from_file(&dir.join("limo-qwen2.5-32b.toml"), &set).unwrap();
        let err = recipe.preflight().unwrap_err().to_string();
        assert!(err.contains("needs a build with --features cuda"), "{err}");
    }
    let f64_gpu = TrainConfig::from_file(
        &dir.join("tiny.toml"),
        &["model.device=\"cuda\"".into(), "model.dtype=\"f64\"".into()],
    )
    .unwrap();
    let err = f64_gpu.preflight().unwrap_err().to_string();
    assert!(err.contains("f64 runs on model.device = \"cpu\""), "{err}");
}

/// The trajectory hash and the TOML a run writes (`config.toml`, `--print-config`), pinned
/// as they were when these fields were strings: resuming existing runs depends on both.
#[test]
fn hash_and_written_toml_are_pinned() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let tiny: [(&[&str], [&str; 3]); 9] = [
        (
            &[],
            ["d566da1576ff7070", "e3d657c1027c8a67", "b8305d54b022789d"],
        ),
        (
            &[
                "train.schedule=linear",
                "model.dtype=f64",
                "output.export_dtype=none",
                "data.overlong=drop",
            ],
            ["5c6bf4b52524e0b0", "6068c7160487e8cb", "c85bd2012c73a70a"],
        ),
        (
            &[
                "model.device=cuda",
                "model.dtype=bf16",
                "train.schedule=constant",
                "output.export_dtype=f32",
            ],
            ["ca68c6b1a97a8353", "39c9d3a561c59060", "1954cb5f95b86697"],
        ),
        (
            &[
                "data.format=tokenized",
                "data.path=rows.jsonl",
                "train.reduce_dtype=bf16",
                "train.optimizer_offload=cpu",
            ],
            ["2c4a3d55729ac442", "bd0e14e14b56b049", "beb9faa89b9a5f4e"],
        ),
        (
            &["train.loss_average=sequences"],
            ["858e15739b6940a5", "42b22edaa27f7bb8", "456e035f52bcc977"],
        ),
        (
            &["train.sampler=torch"],
            ["aeb408f2387ea068", "2a5ece096174336f", "669e45238a0db4da"],
        ),
        (
            &["train.epoch_tail=repeat"],
            ["ba3035b4457b9792", "6867f9faa2dd64e7", "cc5820376ca9c82b"],
        ),
        (
            &["train.no_decay=biases_and_norms"],
            ["d566da1576ff7070", "e3d657c1027c8a67", "c576fd3df7fc3305"],
        ),
        (
            &["train.min_lr_rate=0.1"],
            ["7e158c01f98d0179", "c754dc0218082874", "1b553a108c5fd1e7"],
        ),
    ];
    // (trajectory hash at world 1, at world `world`, FNV-1a of the written TOML)
    let pins = |c: &TrainConfig, world: usize| {
        let text = toml::to_string(c).unwrap();
        [
            c.trajectory_hash(1),
            c.trajectory_hash(world),
            format!("{:016x}", fnv1a(text.as_bytes())),
        ]
    };
    for (set, want) in tiny {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let c = TrainConfig::parse(TINY_TOML, "tiny.toml", &set).unwrap();
        assert_eq!(pins(&c, 4), want, "{set:?}");
    }
    for (name, want) in [
        (
            "limo-qwen2.5-0.5b",
            ["84e146820f1a6e92", "df2e599cc5b50723", "60db60aa0548311e"],
        ),
        (
            "limo-qwen2.5-1.5b",
            ["03b9e96c21c90d57", "0c4cb86c0ff0ce86", "f595c830d15aedf4"],
        ),
        (
            "limo-qwen2.5-7b",
            ["8a24f2ffce5134c0", "3dea639895b40789", "48abf5dd1c44c8ca"],
        ),
        (
            "limo-qwen2.5-32b",
            ["5e19be3501995f36", "9bdbfe6ac1b7aa07", "3ac024a8124ac36e"],
        ),
    ] {
        // Pinned before the recipes named their device (which the hash leaves out), averaged
        // over sequences, set 32 rows per step, repeated rows at epoch ends and torch's order (which it keeps).
        let cpu = ["model.device=\"cpu\"".to_string()];
        let recipe = TrainConfig::from_file(&dir.join(format!("{name}.toml")), &cpu).unwrap();
        assert_eq!(recipe.train.loss_average, LossAverage::Sequences, "{name}");
        assert_eq!(recipe.train.global_batch_size, Some(32), "{name}");
        assert_eq!(recipe.train.epoch_tail, EpochTail::Repeat, "{name}");
        assert_eq!(recipe.train.sampler, SamplerKind::Torch, "{name}");
        let mut c = recipe.clone();
        c.train.loss_average = LossAverage::Tokens;
        c.train.global_batch_size = None;
        c.train.epoch_tail = EpochTail::Wrap;
        c.train.sampler = SamplerKind::Limo;
        assert_eq!(pins(&c, 8), want, "{name}");
        assert_ne!(recipe.trajectory_hash(8), c.trajectory_hash(8), "{name}");
    }
    // The default written out is the default left out: the same hash and TOML.
    let tokens = [
        "train.loss_average=tokens".to_string(),
        "train.epoch_tail=wrap".to_string(),
        "train.sampler=limo".to_string(),
    ];
    let explicit = TrainConfig::parse(TINY_TOML, "tiny.toml", &tokens).unwrap();
    assert_eq!(pins(&explicit, 4), tiny[0].1);
}

/// 8 rows per step as 4 micro-batches on 2 ranks or 2 on 4: the same trajectory, except that
/// with epoch_tail = "repeat" an epoch's last step is filled to a round of micro-batches (2
/// rows or 4), so a resume across those world sizes is refused.
#[test]
fn no_decay_is_in_the_hash_only_with_a_weight_decay() {
    let hash = |set: &[&str]| {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        TrainConfig::parse(TINY_TOML, "tiny.toml", &set)
            .unwrap()
            .trajectory_hash(1)
    };
    let skip = "train.no_decay=biases_and_norms";
    assert_eq!(hash(&[skip]), hash(&[]), "weight decay 0");
    let decay = "train.weight_decay=0.1";
    assert_ne!(hash(&[decay, skip]), hash(&[decay]));
}

#[test]
fn repeat_hashes_what_the_epochs_last_step_is_filled_to() {
    let hashes = |tail: &str| {
        [(4, 2), (2, 4)].map(|(accum, world)| {
            let set = [
                "train.batch_size=1".to_string(),
                format!("train.grad_accum={accum}"),
                format!("train.epoch_tail={tail:?}"),
            ];
            let c = TrainConfig::parse(TINY_TOML, "tiny.toml", &set).unwrap();
            assert_eq!(c.rows_per_step(world).unwrap(), 8);
            c.trajectory_hash(world)
        })
    };
    let [a, b] = hashes("wrap");
    assert_eq!(a, b);
    let [a, b] = hashes("repeat");
    assert_ne!(a, b);
}

#[test]
fn sizes_are_parsed_once_and_written_back_as_given() {
    let c = TrainConfig::parse(
        TINY_TOML,
        "tiny.toml",
        &["output.max_shard_size=\"1.5GiB\"".into()],
    )
    .unwrap();
    assert_eq!(c.output.max_shard_size.bytes(), 1_610_612_736);
    let written = toml::to_string(&c).unwrap();
    assert!(written.contains("max_shard_size = \"1.5GiB\""), "{written}");
    let err = TrainConfig::parse(
        TINY_TOML,
        "tiny.toml",
        &["output.max_shard_size=\"5 parsecs\"".into()],
    )
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.starts_with("tiny.toml: output.max_shard_size: "),
        "{text}"
    );
    assert!(text.contains("unknown unit"), "{text}");
}

#[test]
fn unknown_names_are_errors_that_name_the_key_and_the_choices() {
    for (set, key, choices) in [
        ("model.dtype=f16", "model.dtype", "`f32`, `f64`, `bf16`"),
        ("model.device=tpu", "model.device", "`cpu` or `cuda`"),
        (
            "train.schedule=zigzag",
            "train.schedule",
            "`cosine`, `linear`, `constant`",
        ),
        (
            "output.export_dtype=f64",
            "output.export_dtype",
            "`bf16`, `f32`, `none`",
        ),
        (
            "data.overlong=wrap",
            "data.overlong",
            "`truncate`, `truncate_pairs`, `drop`",
        ),
        ("data.format=csv", "data.format", "`limo`, `messages`"),
    ] {
        let err = TrainConfig::parse(TINY_TOML, "tiny.toml", &[set.into()]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with(&format!("tiny.toml: {key}: ")), "{text}");
        assert!(text.contains(choices), "{text}");
    }
    let c = TrainConfig::parse(TINY_TOML, "tiny.toml", &[]).unwrap();
    assert_eq!(c.model.dtype.dtype(), DType::F32);
    assert_eq!(c.output.export_dtype.to_string(), "bf16");
    assert_eq!(ExportDtype::None.dtype(), None);
}

/// Each of these once aborted on an allocation, panicked, wrapped around or failed later
/// on a missing checkpoint.
#[test]
fn out_of_range_counts_are_errors_that_name_the_key() {
    for (set, expected) in [
        ("train.max_steps=0", "train.max_steps must be at least 1"),
        (
            "train.eval_steps=5",
            "train.eval_steps / eval_every_epoch: nothing to validate on",
        ),
        (
            "data.val_size=-1",
            "val_size -1 must be a share below 1 or a count of rows",
        ),
        // Once accepted and taken as 1.
        ("output.keep_last=0", "output.keep_last must be at least 1"),
        ("train.loss_chunk=0", "train.loss_chunk must be at least 1"),
        // Once wrote the run into the current directory.
        ("output.dir=\"\"", "output.dir is empty"),
        ("model.tokenizer=\"\"", "model.tokenizer is empty"),
        (
            "train.batch_size=4294967296",
            "train.batch_size 4294967296 x data.cutoff_len 512",
        ),
        (
            "train.batch_size=9223372036854775807",
            "tokens per micro-batch",
        ),
        ("train.grad_accum=9223372036854775807", "train.grad_accum"),
        ("output.eval_examples=4294967296", "output.eval_examples"),
        // Each of these once turned clipping or decay off, or divided by zero, silently.
        (
            "train.max_grad_norm=-1",
            "train.max_grad_norm: -1 must be a non-negative",
        ),
        ("train.max_grad_norm=nan", "train.max_grad_norm: NaN"),
        ("train.weight_decay=-0.1", "train.weight_decay: -0.1"),
        ("train.adam_eps=0", "train.adam_eps: 0 must be a positive"),
    ] {
        let err = TrainConfig::parse(TINY_TOML, "tiny.toml", &[set.into()]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains(expected), "{set}: {text}");
    }
    let c = TrainConfig::parse(TINY_TOML, "tiny.toml", &["train.grad_accum=3".into()]);
    let c = c.unwrap();
    assert_eq!(c.rows_per_step(5).unwrap(), 4 * 3 * 5);
    let err = c.rows_per_step(usize::MAX).unwrap_err().to_string();
    assert!(
        err.contains("is more than limo handles (16777216)"),
        "{err}"
    );
    // A global batch too large to list (it panicked allocating the step's rows).
    let huge = ["train.global_batch_size=4398046511104".into()];
    let c = TrainConfig::parse(TINY_TOML, "tiny.toml", &huge).unwrap();
    let err = c.rows_per_step(1).unwrap_err().to_string();
    assert!(
        err.contains("4398046511104 rows per optimizer step"),
        "{err}"
    );
}

/// `--set` of one warmup replaces the other; both in one file is an error.
#[test]
fn a_set_warmup_replaces_the_other_kind() {
    // tiny.toml: warmup_steps = 10.
    let ratio =
        TrainConfig::parse(TINY_TOML, "tiny.toml", &["train.warmup_ratio=0.1".into()]).unwrap();
    assert_eq!(
        (ratio.train.warmup_steps, ratio.train.warmup_ratio),
        (0, Some(0.1))
    );
    let text = TINY_TOML.replace("warmup_steps = 10", "warmup_ratio = 0.2");
    assert_ne!(text, TINY_TOML);
    let steps = TrainConfig::parse(&text, "t.toml", &["train.warmup_steps=3".into()]).unwrap();
    assert_eq!(
        (steps.train.warmup_steps, steps.train.warmup_ratio),
        (3, None)
    );
    let both = [
        "train.warmup_steps=3".into(),
        "train.warmup_ratio=0.1".into(),
    ];
    let err = format!(
        "{:#}",
        TrainConfig::parse(TINY_TOML, "tiny.toml", &both).unwrap_err()
    );
    assert!(err.contains("not both"), "{err}");
}

#[test]
fn a_global_batch_size_sets_the_accumulation_per_world_size() {
    let global = |set: &[&str]| {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        TrainConfig::parse(TINY_TOML, "tiny.toml", &set)
    };
    // tiny.toml: batch_size 4.
    let c = global(&["train.global_batch_size=32"]).unwrap();
    for (world, accum) in [(1, 8), (2, 4), (4, 2), (8, 1)] {
        assert_eq!(c.rows_per_step(world).unwrap(), 32, "world {world}");
        assert_eq!(c.grad_accum(world).unwrap(), accum, "world {world}");
    }
    for world in [3, 16] {
        let err = format!("{:#}", c.rows_per_step(world).unwrap_err());
        assert!(
            err.contains("train.global_batch_size 32 is not a multiple of batch_size 4"),
            "{err}"
        );
    }
    // The same rows per step written either way is the same trajectory (resume across them).
    let accum = global(&["train.grad_accum=4"]).unwrap();
    assert_eq!(c.trajectory_hash(2), accum.trajectory_hash(2));
    assert_ne!(c.trajectory_hash(4), accum.trajectory_hash(4));
    assert_eq!(c.grad_accum(1).unwrap(), 8);
    assert_eq!(accum.grad_accum(3).unwrap(), 4);
    for (set, expected) in [
        (
            &["train.global_batch_size=0"][..],
            "train.global_batch_size must be at least 1",
        ),
        (
            &["train.global_batch_size=32", "train.grad_accum=2"][..],
            "not both",
        ),
        (
            &["train.global_batch_size=30"][..],
            "train.global_batch_size 30 is not a multiple of train.batch_size 4",
        ),
    ] {
        let err = format!("{:#}", global(set).unwrap_err());
        assert!(err.contains(expected), "{set:?}: {err}");
    }
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
    assert_eq!(parse_size("2MiB").unwrap(), 2 * 1024 * 1024);
    assert_eq!(parse_size("123").unwrap(), 123);
    assert!(parse_size("5 parsecs").is_err());
    assert_eq!(parse_size("2TB").unwrap(), 2_000_000_000_000);
    assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
    // A bare TOML integer is a byte count (it was refused: "expected a string").
    let c = TrainConfig::parse(TINY_TOML, "t", &["output.max_shard_size=1000".into()]).unwrap();
    assert_eq!(c.output.max_shard_size.bytes(), 1000);
    let err = TrainConfig::parse(TINY_TOML, "t", &["output.max_shard_size=-5".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("at least 1 byte"), "{err:#}");
    let err =
        TrainConfig::parse(TINY_TOML, "t", &["output.max_shard_size=[1]".into()]).unwrap_err();
    assert!(
        format!("{err:#}").contains("output.max_shard_size: expected a size"),
        "{err:#}"
    );
    // Once saturated to 0 (a file per tensor) or to usize::MAX.
    for bad in ["-5GB", "0", "0.1", "99999999999999999999999GB"] {
        let err = parse_size(bad).unwrap_err().to_string();
        assert!(err.contains("at least 1 byte"), "{bad}: {err}");
    }
}

/// A misspelled override was once written into config.json and ignored; a wrong type or
/// value failed later without naming the override.
#[test]
fn init_overrides_are_checked_when_the_config_is_read() {
    // An unknown shape is model.init's fault (it was reported as model.init_overrides').
    let err = TrainConfig::parse(TINY_TOML, "t", &["model.init=huge".into()]).unwrap_err();
    assert!(
        format!("{err:#}").contains("model.init: unknown shape \"huge\""),
        "{err:#}"
    );
    for (set, expected) in [
        (
            "model.init_overrides={ hidden_sise = 128 }",
            "model.init_overrides: hidden_sise: not a config.json field (one of ",
        ),
        (
            "model.init_overrides={ hidden_size = \"big\" }",
            "model.init_overrides: field hidden_size: invalid type: string \"big\"",
        ),
        (
            "model.init_overrides={ hidden_size = 0 }",
            "model.init_overrides: ",
        ),
    ] {
        let err = TrainConfig::parse(TINY_TOML, "tiny.toml", &[set.into()]).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with("tiny.toml: "), "{set}: {text}");
        assert!(text.contains(expected), "{set}: {text}");
    }
    let ok = ["model.init_overrides={ num_hidden_layers = 1, head_dim = 16 }".into()];
    let c = TrainConfig::parse(TINY_TOML, "tiny.toml", &ok).unwrap();
    let json = c.model.init_config().unwrap();
    assert_eq!(
        (
            json["num_hidden_layers"].as_u64(),
            json["head_dim"].as_u64()
        ),
        (Some(1), Some(16))
    );
    // With a checkpoint the overrides would be ignored.
    let with_path = TINY_TOML.replace("init = \"tiny\"", "path = \"m\"");
    let err = TrainConfig::parse(&with_path, "tiny.toml", &[]).unwrap_err();
    assert!(
        format!("{err:#}").contains("model.init_overrides: only with model.init"),
        "{err:#}"
    );
}

/// Syntax errors on one line with their position; a missing field named with its section.
#[test]
fn errors_name_the_line_or_the_section() {
    let err = TrainConfig::parse("[model\ninit = \"tiny\"\n", "c.toml", &[]).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "c.toml: line 1, column 7: unclosed table, expected `]`"
    );
    let err = TrainConfig::parse("[train]\nlr = = 3\n", "c.toml", &[]).unwrap_err();
    assert!(
        format!("{err:#}").starts_with("c.toml: line 2, column 6: "),
        "{err:#}"
    );
    let no_format = TINY_TOML.replace("format = ", "# format = ");
    let err = TrainConfig::parse(&no_format, "c.toml", &[]).unwrap_err();
    assert_eq!(format!("{err:#}"), "c.toml: data: missing field `format`");
    let also = ["data.also=[{ path = \"y.jsonl\" }]".to_string()];
    let err = TrainConfig::parse(TINY_TOML, "c.toml", &also).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "c.toml: data.also: missing field `format`"
    );
    let no_output = &TINY_TOML[..TINY_TOML.find("[output]").unwrap()];
    let err = TrainConfig::parse(no_output, "c.toml", &[]).unwrap_err();
    assert_eq!(format!("{err:#}"), "c.toml: missing field `output`");
    let alpaca = [
        "data.path=\"builtin:arithmetic\"".into(),
        "data.format=alpaca".into(),
    ];
    let err = TrainConfig::parse(TINY_TOML, "c.toml", &alpaca).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "c.toml: data.format: builtin:arithmetic is generated as format = \"limo\" rows"
    );
}
