//! LLaMA-Factory's training YAML (`llamafactory-cli train x.yaml`), read as it is: its
//! arguments become limo's [`TrainConfig`], the dataset named by `dataset` is looked up in
//! `<dataset_dir>/dataset_info.json` (LLaMA-Factory's format), and `--set section.key=value`
//! applies on top, to limo's fields. Arguments that do not apply to limo (DeepSpeed, flash
//! attention, caching, worker counts, ...) are accepted with one note each on stderr; values
//! limo cannot train (LoRA, DPO, another chat template) and unknown arguments are errors naming
//! the key and the file. Absent arguments take LLaMA-Factory's (transformers') defaults, not
//! limo's: `cutoff_len` 2048, `learning_rate` 5e-5, 3 epochs, a linear schedule, batch 8,
//! a checkpoint every 500 steps.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde_yaml::Value;

use limo_data::Format;

use crate::config::{DeviceKind, ModelDtype, Schedule, TrainConfig};

/// The arguments mapped onto limo's fields (everything else is a note or an error).
const MAPPED: &[&str] = &[
    "model_name_or_path",
    "dataset",
    "dataset_dir",
    "mix_strategy",
    "cutoff_len",
    "max_samples",
    "val_size",
    "eval_strategy",
    "eval_steps",
    "per_device_eval_batch_size",
    "packing",
    "neat_packing",
    "default_system",
    "output_dir",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
    "data_seed",
    "disable_shuffling",
    "bf16",
    "fp16",
    "disable_gradient_checkpointing",
    "average_tokens_across_devices",
];

/// What a LLaMA-Factory YAML becomes before `--set` and validation.
#[derive(Debug)]
pub struct Translation {
    /// limo's config as a TOML table (`[model]`, `[data]`, `[train]`, `[output]`).
    pub table: toml::Table,
    /// One line per argument that limo accepts without using it, saying why.
    pub notes: Vec<String>,
    /// `data.system`: `default_system`, else none (LLaMA-Factory's qwen template then uses
    /// Qwen2.5's own default system prompt). Set after parsing, since TOML has no null.
    pub system: Option<String>,
}

/// Reads a LLaMA-Factory training YAML as limo's config, applies `overrides` (limo's
/// `section.key=value`) and validates. Prints one note per not-applicable argument on stderr.
///
/// `warmup_ratio` becomes `train.warmup_ratio` (ceil(ratio x total steps) once the run counts
/// its rows, as transformers computes it); `--set train.warmup_steps=N` takes precedence.
pub fn from_yaml(path: &Path, overrides: &[String]) -> anyhow::Result<TrainConfig> {
    let origin = path.display().to_string();
    let translation = translate(path)?;
    for note in &translation.notes {
        eprintln!("note: {origin}: {note}");
    }
    let overridden = |key: &str| overrides.iter().any(|o| o.trim_start().starts_with(key));
    // `--set train.warmup_steps` replaces a warmup_ratio (TrainConfig::parse).
    let text = toml::to_string(&translation.table)?;
    let mut config = TrainConfig::parse(&text, &origin, overrides)?;
    if !overridden("data.system") {
        config.data.system = translation.system.clone();
    }
    Ok(config)
}

/// `config` as the TOML `limo train --print-config` prints (a `data.system` of none, the
/// Qwen2.5 template's own default system prompt as LLaMA-Factory's qwen template uses it, is
/// `system = false`).
pub fn resolved_toml(config: &TrainConfig) -> anyhow::Result<String> {
    Ok(toml::to_string(config)?)
}

/// The YAML's arguments as limo's config table, without `--set` or validation.
pub fn translate(path: &Path) -> anyhow::Result<Translation> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| origin.clone())?;
    let yaml: Value = serde_yaml::from_str(&text).map_err(|e| anyhow!("{origin}: {e}"))?;
    let entries = match yaml {
        Value::Mapping(map) => map,
        Value::Null => serde_yaml::Mapping::new(),
        _ => bail!("{origin}: expected a mapping of LLaMA-Factory arguments (key: value)"),
    };
    let mut args = Args {
        origin: origin.clone(),
        entries: Vec::new(),
    };
    for (key, value) in entries {
        let Value::String(key) = key else {
            bail!("{origin}: {key:?}: argument names are strings");
        };
        args.entries.push((key, value));
    }

    let mut notes = Vec::new();
    for (key, value) in &args.entries {
        if MAPPED.contains(&key.as_str()) {
            continue;
        }
        match not_applicable(key, value) {
            Ok(Some(note)) => notes.push(format!("{key}: {note}")),
            Ok(None) => {}
            Err(why) => bail!("{origin}: {key}: {why}"),
        }
    }

    let mut model = toml::Table::new();
    let mut data = toml::Table::new();
    let mut train = toml::Table::new();
    let mut output = toml::Table::new();

    // model
    let name = args
        .str("model_name_or_path")?
        .ok_or_else(|| anyhow!("{origin}: model_name_or_path: required"))?;
    let hub = limo_data::HubSettings::from_env();
    let (model_path, note) = limo_data::hub::resolve_model(Path::new(&name), &hub);
    notes.extend(note.map(|n| format!("model_name_or_path: {n}")));
    model.insert("path".into(), model_path.display().to_string().into());
    if args.bool("fp16")?.unwrap_or(false) {
        bail!("{origin}: fp16: limo computes in bf16 (bf16: true) or f32, not fp16");
    }
    if args.bool("bf16")?.unwrap_or(false) {
        // limo's bf16 runs on the GPU, as LLaMA-Factory's does.
        model.insert("dtype".into(), ModelDtype::Bf16.as_str().into());
        model.insert("device".into(), DeviceKind::Cuda.as_str().into());
    }

    // data
    let dataset = args
        .str("dataset")?
        .ok_or_else(|| anyhow!("{origin}: dataset: required (a name in dataset_info.json)"))?;
    let dataset_dir = args.str("dataset_dir")?.unwrap_or_else(|| "data".into());
    let dir = dataset_dir_path(&dataset_dir, path);
    // Several datasets are concatenated in order (mix_strategy concat): the first is data's
    // own, the others data.also.
    let mut also = Vec::new();
    for (i, name) in dataset.split(',').map(str::trim).enumerate() {
        let mut entry = toml::Table::new();
        dataset_entry(name, &dir, &mut entry, &mut notes)
            .map_err(|e| anyhow!("{origin}: dataset: {e:#}"))?;
        match i {
            0 => data.extend(entry),
            _ => also.push(toml::Value::Table(entry)),
        }
    }
    if !also.is_empty() {
        data.insert("also".into(), also.into());
    }
    match args.str("mix_strategy")?.as_deref() {
        None | Some("concat") => {}
        Some(other) => bail!(
            "{origin}: mix_strategy: {other}: limo concatenates the datasets in order (concat)"
        ),
    }
    data.insert(
        "cutoff_len".into(),
        to_int(args.uint("cutoff_len")?.unwrap_or(2048)),
    );
    // LLaMA-Factory cuts each (prompt, response) pair by infer_seqlen, not the row's tail.
    data.insert("overlong".into(), "truncate_pairs".into());
    if let Some(limit) = args.uint("max_samples")? {
        data.insert("limit".into(), to_int(limit));
    }
    validation(&args, &mut data, &mut train, &mut notes)?;
    let packing = args.bool("packing")?.unwrap_or(false);
    let neat = args.bool("neat_packing")?.unwrap_or(false);
    if packing || neat {
        data.insert("packing".into(), true.into());
        if !neat {
            notes.push(
                "packing: limo's packed rows never attend across documents (LLaMA-Factory's neat_packing)".into(),
            );
        }
    }
    let system = match args.get("default_system") {
        Some(Value::String(system)) => Some(system.clone()),
        None => None,
        Some(_) => bail!("{origin}: default_system: expected a string"),
    };

    // train
    let lr = args.float("learning_rate")?.unwrap_or(5e-5);
    train.insert("lr".into(), lr.into());
    let epochs = args.float("num_train_epochs")?.unwrap_or(3.0);
    if epochs.fract() != 0.0 || epochs < 1.0 {
        bail!("{origin}: num_train_epochs: {epochs}: limo trains whole epochs (1, 2, ...); use --set train.max_steps=N for part of one");
    }
    train.insert("epochs".into(), to_int(epochs as u64));
    match args.int("max_steps")? {
        Some(steps) if steps > 0 => {
            train.insert("max_steps".into(), steps.into());
        }
        _ => {}
    }
    train.insert(
        "batch_size".into(),
        to_int(args.uint("per_device_train_batch_size")?.unwrap_or(8)),
    );
    train.insert(
        "grad_accum".into(),
        to_int(args.uint("gradient_accumulation_steps")?.unwrap_or(1)),
    );
    let scheduler = args
        .str("lr_scheduler_type")?
        .unwrap_or_else(|| "linear".into());
    // transformers 5 reads a warmup_steps below 1 as the share of the steps and lets a given
    // warmup_ratio (deprecated) replace warmup_steps; transformers 4 lets warmup_steps > 0 win.
    // Both given, with warmup_steps > 0, the two disagree: refused.
    let warmup_steps = args.float("warmup_steps")?.unwrap_or(0.0);
    if !(warmup_steps >= 0.0 && warmup_steps.is_finite()) {
        bail!("{origin}: warmup_steps: {warmup_steps} (expected steps, or a share below 1)");
    }
    let given_ratio = args.float("warmup_ratio")?;
    if warmup_steps > 0.0 && given_ratio.is_some() {
        bail!(
            "{origin}: warmup_steps and warmup_ratio are both given: transformers 4 uses \
             warmup_steps, transformers 5 warmup_ratio; keep the one your run used"
        );
    }
    let (warmup, warmup_ratio) = match warmup_steps < 1.0 {
        true if warmup_steps > 0.0 => (0, warmup_steps),
        true => (0, given_ratio.unwrap_or(0.0)),
        false => (warmup_steps as u64, 0.0),
    };
    if !(0.0..=1.0).contains(&warmup_ratio) {
        bail!("{origin}: warmup_ratio: {warmup_ratio} (expected 0 to 1)");
    }
    let (schedule, warms_up) = match scheduler.as_str() {
        "cosine" | "cosine_with_min_lr" => (Schedule::Cosine, true),
        "linear" => (Schedule::Linear, true),
        "constant_with_warmup" => (Schedule::Constant, true),
        // transformers' constant schedule has no warmup, whatever warmup_* says.
        "constant" => (Schedule::Constant, false),
        other => bail!(
            "{origin}: lr_scheduler_type: {other}: limo schedules cosine, cosine_with_min_lr, linear, constant and constant_with_warmup"
        ),
    };
    let kwargs = scheduler_kwargs(&args)?;
    for (key, value) in &kwargs {
        let known = match (scheduler.as_str(), key.as_str()) {
            ("cosine_with_min_lr", "min_lr" | "min_lr_rate") => true,
            // transformers' default half cosine: the same schedule.
            ("cosine" | "cosine_with_min_lr", "num_cycles") => value.as_f64() == Some(0.5),
            _ => false,
        };
        if !known {
            bail!(
                "{origin}: lr_scheduler_kwargs: {key}: {value}: limo takes min_lr or \
                 min_lr_rate with lr_scheduler_type cosine_with_min_lr (and num_cycles 0.5)"
            );
        }
    }
    if scheduler == "cosine_with_min_lr" {
        // As transformers' get_cosine_with_min_lr_schedule_with_warmup: one of the two, the
        // rate of min_lr being min_lr / learning_rate.
        let kwarg = |key: &str| -> anyhow::Result<Option<f64>> {
            kwargs
                .get(key)
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        anyhow!("{origin}: lr_scheduler_kwargs: {key}: expected a number, got {v}")
                    })
                })
                .transpose()
        };
        let rate = match (kwarg("min_lr")?, kwarg("min_lr_rate")?) {
            (Some(_), Some(_)) => {
                bail!("{origin}: lr_scheduler_kwargs: give min_lr or min_lr_rate, not both")
            }
            (Some(min_lr), None) => min_lr / lr,
            (None, Some(rate)) => rate,
            (None, None) => bail!(
                "{origin}: lr_scheduler_type: cosine_with_min_lr needs lr_scheduler_kwargs with \
                 min_lr or min_lr_rate"
            ),
        };
        train.insert("min_lr_rate".into(), rate.into());
    }
    train.insert("schedule".into(), schedule.as_str().into());
    if !warms_up {
        if warmup > 0 || warmup_ratio > 0.0 {
            notes.push("lr_scheduler_type: constant has no warmup in transformers, so limo's warmup is 0 (constant_with_warmup warms up)".into());
        }
    } else if warmup > 0 {
        train.insert("warmup_steps".into(), to_int(warmup));
    } else if warmup_ratio > 0.0 {
        train.insert("warmup_ratio".into(), warmup_ratio.into());
    }
    for (key, field) in [
        ("weight_decay", "weight_decay"),
        ("adam_beta1", "adam_beta1"),
        ("adam_beta2", "adam_beta2"),
        ("adam_epsilon", "adam_eps"),
        ("max_grad_norm", "max_grad_norm"),
    ] {
        if let Some(v) = args.float(key)? {
            if key == "weight_decay" && v > 0.0 {
                // transformers' Trainer puts biases and norm weights in a group without decay.
                train.insert("no_decay".into(), "biases_and_norms".into());
                notes.push(format!("weight_decay: {v}: no_decay = \"biases_and_norms\" as transformers 4.53 on; with an older transformers set train.no_decay = \"biases\" (up to 4.48) or \"biases_and_layer_norms\" (4.49 to 4.52)"));
            }
            train.insert(field.into(), v.into());
        }
    }
    // LLaMA-Factory's disable_shuffling reads the rows in order (a SequentialSampler).
    if args.bool("disable_shuffling")?.unwrap_or(false) {
        train.insert("shuffle".into(), false.into());
    }
    // limo's seed only orders the data, which data_seed does alone in transformers.
    if let Some(seed) = args.uint("data_seed")?.or(args.uint("seed")?) {
        train.insert("seed".into(), to_int(seed));
    }
    // transformers never mixes epochs in a step: accelerate fills an epoch's last round of
    // micro-batches with its first rows; limo's "repeat" does that at the run's own split.
    train.insert("epoch_tail".into(), "repeat".into());
    // transformers' Trainer shuffles with torch.randperm seeded seed + epoch (seed 42 unless
    // the YAML says, as limo's default).
    train.insert("sampler".into(), "torch".into());
    // transformers < 4.54 defaults to false: each GPU averages its own tokens and the GPUs'
    // gradients are averaged, so with one example per GPU and step every example weighs the
    // same. limo's "sequences" is that for any split; absent, limo's default (all tokens).
    if let Some(across) = args.bool("average_tokens_across_devices")? {
        let average = if across { "tokens" } else { "sequences" };
        train.insert("loss_average".into(), average.into());
        let per_gpu = (args.uint("per_device_train_batch_size")?.unwrap_or(8))
            .saturating_mul(args.uint("gradient_accumulation_steps")?.unwrap_or(1));
        if !across && (per_gpu > 1 || packing || neat) {
            let what = if per_gpu > 1 {
                format!("{per_gpu} rows per GPU and step")
            } else {
                "packed rows (several examples each)".to_string()
            };
            notes.push(format!("average_tokens_across_devices: false with {what}: transformers averages each GPU's tokens, then the GPUs; limo weighs every example the same (train.loss_average = \"sequences\")"));
        }
    }
    if args
        .bool("disable_gradient_checkpointing")?
        .unwrap_or(false)
    {
        train.insert("activation_checkpointing".into(), false.into());
    }

    // output
    let dir = args
        .str("output_dir")?
        .ok_or_else(|| anyhow!("{origin}: output_dir: required"))?;
    output.insert("dir".into(), dir.into());
    let strategy = args.str("save_strategy")?.unwrap_or_else(|| "steps".into());
    let (save_steps, every_epoch) = match strategy.as_str() {
        "steps" => (args.uint("save_steps")?.unwrap_or(500), false),
        "epoch" => (0, true),
        "no" => {
            notes.push(
                "save_strategy: no: limo still checkpoints the last step (and exports the model)"
                    .into(),
            );
            (0, false)
        }
        "best" => bail!("{origin}: save_strategy: best needs evaluation during training, which limo does not run (steps, epoch or no)"),
        other => bail!("{origin}: save_strategy: {other} (expected steps, epoch or no)"),
    };
    if strategy != "steps" && args.get("save_steps").is_some() {
        notes.push(format!(
            "save_steps: not used with save_strategy: {strategy}"
        ));
    }
    output.insert("save_steps".into(), to_int(save_steps));
    output.insert("save_every_epoch".into(), every_epoch.into());
    if let Some(limit) = args.uint("save_total_limit")? {
        if limit > 0 {
            output.insert("keep_last".into(), to_int(limit));
        }
    }
    if args.bool("overwrite_output_dir")? == Some(true) {
        output.insert("overwrite".into(), true.into());
    }

    let mut table = toml::Table::new();
    table.insert("model".into(), model.into());
    table.insert("data".into(), data.into());
    table.insert("train".into(), train.into());
    table.insert("output".into(), output.into());
    Ok(Translation {
        table,
        notes,
        system,
    })
}

/// The note for an argument limo accepts without using it (None: nothing worth saying), or why
/// its value cannot be trained, or that the argument is unknown.
fn not_applicable(key: &str, value: &Value) -> Result<Option<String>, String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        _ => String::from("?"),
    };
    let is_true = matches!(value, Value::Bool(true)) || text == "true";
    let note = |s: &str| Ok(Some(s.to_string()));
    match key {
        "stage" if text == "sft" => note("limo trains supervised fine-tuning (sft)"),
        "stage" => Err(format!("{text}: limo trains stage sft only")),
        "do_train" if is_true => note("limo train always trains"),
        "do_eval" => note("limo evaluates rows held out by val_size after the last step, and as eval_strategy says"),
        "do_train" => Err("false: limo train trains (remove the key or set it to true)".into()),
        "finetuning_type" if text == "full" => note("limo fine-tunes every parameter (full)"),
        "finetuning_type" => Err(format!(
            "{text}: limo does full fine-tuning only (finetuning_type: full)"
        )),
        "template" if matches!(text.as_str(), "qwen" | "default_qwen" | "") => note(
            "limo renders the Qwen2.5 chat template (LLaMA-Factory's qwen) with the model's tokenizer",
        ),
        "template" => Err(format!(
            "{text}: limo renders the Qwen2.5 chat template only (template: qwen)"
        )),
        "deepspeed" => note("limo shards with its own ZeRO-3 (limo launch); the DeepSpeed config is not read"),
        "flash_attn" => note("limo uses its own attention kernels (flash attention on CUDA)"),
        "overwrite_cache" => note("limo keeps no preprocessing cache"),
        "preprocessing_num_workers" | "dataloader_num_workers" => {
            note("limo tokenizes on all cores")
        }
        "ddp_timeout" => note("limo's collective timeout is LIMO_DIST_TIMEOUT (default 900 s)"),
        "overwrite_output_dir" if is_true => note("output.overwrite = true: an earlier run's checkpoints in output.dir are deleted; --resume auto continues that run instead"),
        "overwrite_output_dir" => note("limo refuses an output.dir holding an earlier run's checkpoints; --resume auto continues that run (as LLaMA-Factory resumes from its last checkpoint)"),
        "plot_loss" => note("limo always writes loss.png"),
        "logging_steps" => note("limo logs every step to metrics.jsonl"),
        "report_to" => note("limo writes metrics.jsonl (see output.report_to)"),
        "save_only_model" => note("limo's checkpoints keep the optimizer state for exact resume; the final model is exported to output.dir/model"),
        "trust_remote_code" => note("limo reads Qwen2 checkpoints itself; no remote code runs"),
        "optim" if matches!(text.as_str(), "adamw_torch" | "adamw_torch_fused" | "adamw_hf") => {
            note("limo's AdamW on fp32 master weights")
        }
        "optim" => Err(format!("{text}: limo trains with AdamW (adamw_torch)")),
        "resume_from_checkpoint" => {
            Err("use limo train --resume [latest|PATH] instead".into())
        }
        _ => Err(
            "not a LLaMA-Factory argument limo knows (docs/CONFIG.md, \"LLaMA-Factory YAML\")"
                .into(),
        ),
    }
}

/// `val_size` and transformers' evaluation arguments: the rows held out as LLaMA-Factory holds
/// them out (`data.val_size`), evaluated every `eval_steps` (and at the end) or every epoch.
fn validation(
    args: &Args,
    data: &mut toml::Table,
    train: &mut toml::Table,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let origin = &args.origin;
    let val_size = args.float("val_size")?.unwrap_or(0.0);
    if !(val_size >= 0.0 && val_size.is_finite()) {
        bail!("{origin}: val_size: {val_size} (a share below 1, or a count of rows)");
    }
    // LLaMA-Factory ignores a val_size below 1e-6.
    if val_size > 1e-6 {
        data.insert("val_size".into(), val_size.into());
    }
    let strategy = args.str("eval_strategy")?.unwrap_or_else(|| "no".into());
    match strategy.as_str() {
        "no" => {
            if val_size > 1e-6 {
                notes.push("val_size without eval_strategy: the rows are held out and evaluated once, after the last step (LLaMA-Factory does so with do_eval)".into());
            }
            return Ok(());
        }
        "steps" | "epoch" if val_size <= 1e-6 => {
            bail!("{origin}: eval_strategy: {strategy}: limo validates on rows held out by val_size (eval_dataset is not read)")
        }
        "steps" => {
            // transformers: eval_steps defaults to logging_steps (500 by default).
            let steps = match args.float("eval_steps")? {
                Some(s) if s >= 1.0 && s.fract() == 0.0 => s as u64,
                Some(s) => bail!(
                    "{origin}: eval_steps: {s}: limo takes whole steps (a share of the run is \
                     transformers' reading of a value below 1)"
                ),
                None => args.uint("logging_steps")?.unwrap_or(500),
            };
            if steps == 0 {
                bail!("{origin}: eval_steps: 0 (from logging_steps): give eval_steps of 1 or more");
            }
            train.insert("eval_steps".into(), to_int(steps));
        }
        "epoch" => {
            train.insert("eval_every_epoch".into(), true.into());
        }
        other => bail!("{origin}: eval_strategy: {other} (expected no, steps or epoch)"),
    }
    if args
        .uint("per_device_eval_batch_size")?
        .unwrap_or(8) // transformers' default
        != 1
    {
        notes.push("per_device_eval_batch_size: limo evaluates one row at a time; its eval_loss is transformers' with per_device_eval_batch_size 1 (the mean of each row's mean loss)".into());
    }
    Ok(())
}

/// `lr_scheduler_kwargs`: a mapping, or JSON text as transformers also takes it (empty when
/// absent).
fn scheduler_kwargs(args: &Args) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let key = "lr_scheduler_kwargs";
    let value = match args.get(key) {
        None => return Ok(Default::default()),
        Some(Value::String(text)) => serde_json::from_str(text)
            .map_err(|e| anyhow!("{}: {key}: not a JSON object: {e}", args.origin))?,
        Some(v) => serde_json::to_value(v)
            .map_err(|e| anyhow!("{}: {key}: not a mapping: {e}", args.origin))?,
    };
    match value {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(args.wrong(
            key,
            "a mapping such as {min_lr_rate: 0.1}",
            &serde_yaml::to_value(other)?,
        )),
    }
}

/// `dataset_dir` as LLaMA-Factory reads it (relative to the working directory), else relative to
/// the YAML's folder.
fn dataset_dir_path(dir: &str, yaml: &Path) -> PathBuf {
    let given = PathBuf::from(dir);
    if given.is_absolute() || given.exists() {
        return given;
    }
    match yaml.parent() {
        Some(parent) if parent.join(&given).exists() => parent.join(&given),
        _ => given,
    }
}

/// Fills `data` (path, format, columns) from the `dataset` entry of `dir/dataset_info.json`.
fn dataset_entry(
    dataset: &str,
    dir: &Path,
    data: &mut toml::Table,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    if dataset.is_empty() {
        bail!("an empty name (a stray comma?)");
    }
    let info_path = dir.join("dataset_info.json");
    let text = std::fs::read_to_string(&info_path)
        .with_context(|| format!("{} (dataset_dir)", info_path.display()))?;
    let info: serde_json::Value =
        serde_json::from_str(&text).with_context(|| info_path.display().to_string())?;
    let entry = info
        .get(dataset)
        .and_then(|e| e.as_object())
        .ok_or_else(|| anyhow!("{dataset}: not in {}", info_path.display()))?;
    let at = |key: &str| format!("{}: {dataset}.{key}", info_path.display());
    let string = |key: &str| -> anyhow::Result<Option<String>> {
        match entry.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => bail!("{}: expected a string", at(key)),
        }
    };
    for key in entry.keys() {
        match key.as_str() {
            "file_name" | "hf_hub_url" | "formatting" | "columns" | "tags" | "split" => {}
            "ms_hub_url" | "om_hub_url" | "script_url" | "cloud_file_name" => {}
            "ranking" if entry[key] == serde_json::Value::Bool(false) => {}
            "ranking" => bail!("{}: preference data; limo trains sft", at(key)),
            other => bail!("{}: not supported by limo", at(other)),
        }
    }
    if let Some(split) = string("split")? {
        if split != "train" {
            bail!("{}: {split}: limo reads the train split", at("split"));
        }
    }
    let path = if let Some(id) = string("hf_hub_url")? {
        id
    } else if let Some(file) = string("file_name")? {
        dir.join(file).display().to_string()
    } else {
        bail!(
            "{dataset}: limo reads file_name or hf_hub_url ({})",
            info_path.display()
        );
    };
    data.insert("path".into(), path.into());

    // A string of the entry's "columns" or "tags" object.
    let field = |section: &str, key: &str| -> anyhow::Result<Option<String>> {
        match entry.get(section).and_then(|c| c.get(key)) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => bail!("{}: expected a string", at(&format!("{section}.{key}"))),
        }
    };
    let column = |key: &str| field("columns", key);
    let tag = |key: &str| field("tags", key);
    let formatting = string("formatting")?.unwrap_or_else(|| "alpaca".into());
    let (format, known_columns): (Format, &[&str]) = match formatting.as_str() {
        "alpaca" => (Format::Alpaca, &["prompt", "query", "response", "system"]),
        "sharegpt" => (Format::Messages, &["messages", "system"]),
        other => bail!(
            "{}: {other} (expected alpaca or sharegpt)",
            at("formatting")
        ),
    };
    if let Some(columns) = entry.get("columns").and_then(|c| c.as_object()) {
        for key in columns.keys() {
            if !known_columns.contains(&key.as_str()) {
                bail!(
                    "{}: not supported by limo ({formatting} columns: {})",
                    at(&format!("columns.{key}")),
                    known_columns.join(", ")
                );
            }
        }
    }
    data.insert("format".into(), toml::Value::try_from(format)?);
    if format == Format::Alpaca && entry.get("tags").is_some() {
        notes.push(format!(
            "dataset_info.json: {dataset}.tags: not used by alpaca formatting"
        ));
    }
    // Each limo column: the entry's section and key that name it, and LLaMA-Factory's default.
    let names = if format == Format::Alpaca {
        [
            ("instruction", "columns", "prompt", "instruction"),
            ("input", "columns", "query", "input"),
            ("output", "columns", "response", "output"),
        ]
    } else {
        [
            ("messages", "columns", "messages", "conversations"),
            ("role", "tags", "role_tag", "from"),
            ("content", "tags", "content_tag", "value"),
        ]
    };
    let mut columns = toml::Table::new();
    for (limo_column, section, key, default) in names {
        let name = field(section, key)?.unwrap_or_else(|| default.into());
        columns.insert(limo_column.into(), name.into());
    }
    if format != Format::Alpaca {
        for (key, default, limo_role) in [
            ("user_tag", "human", "user"),
            ("assistant_tag", "gpt", "assistant"),
            ("system_tag", "system", "system"),
        ] {
            let value = tag(key)?.unwrap_or_else(|| default.into());
            if value != limo_role {
                bail!(
                    "{}: {value}: limo's messages format reads the roles user, assistant and system (set tags.user_tag \"user\", assistant_tag \"assistant\", or convert the file)",
                    at(&format!("tags.{key}"))
                );
            }
        }
        if let Some(tags) = entry.get("tags").and_then(|c| c.as_object()) {
            for key in tags.keys() {
                if !matches!(
                    key.as_str(),
                    "role_tag"
                        | "content_tag"
                        | "user_tag"
                        | "assistant_tag"
                        | "system_tag"
                        | "observation_tag"
                        | "function_tag"
                ) {
                    bail!("{}: not supported by limo", at(&format!("tags.{key}")));
                }
            }
        }
    }
    if let Some(system) = column("system")? {
        columns.insert("system".into(), system.into());
    }
    data.insert("columns".into(), columns.into());
    Ok(())
}

fn to_int(v: u64) -> toml::Value {
    toml::Value::Integer(v as i64)
}

mod args;
use args::Args;

#[cfg(test)]
mod tests;
