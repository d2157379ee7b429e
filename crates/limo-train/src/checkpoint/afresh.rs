//! A run that starts from step 0 in a directory an earlier run used: refused over that run's
//! checkpoints unless `output.overwrite`, and cleared of what it would otherwise reuse.

use std::path::PathBuf;

use anyhow::{bail, Context};

use super::{discard, list, LATEST};
use crate::config::TrainConfig;

/// Before a run starts from step 0 in `checkpoints_dir`: an earlier run's complete checkpoints
/// there are an error (the new run's would mix with them, `latest` would point at either, and
/// `keep_last` would delete the old run's), unless `overwrite`, which deletes them first.
pub fn start_afresh(config: &TrainConfig) -> anyhow::Result<()> {
    let (checkpoints_dir, overwrite) = (
        &config.output.dir.join("checkpoints"),
        config.output.overwrite,
    );
    if overwrite {
        keep_the_inputs(config)?;
    }
    let found = list(checkpoints_dir)?;
    if found.is_empty() {
        return Ok(());
    }
    let steps: Vec<String> = found
        .iter()
        .map(|d| match super::step_of(d) {
            Some(step) => step.to_string(),
            None => d
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        })
        .collect();
    let (shown, more) = match steps.len() {
        n if n > 6 => (
            steps[n - 6..].join(", "),
            format!("{} checkpoints, the newest ", n),
        ),
        _ => (steps.join(", "), String::new()),
    };
    if !overwrite {
        bail!(
            "{} holds an earlier run's checkpoints ({more}steps {shown}): --resume continues \
             that run (--resume auto: whenever a checkpoint exists), output.overwrite = true \
             deletes them and starts afresh; or choose another output.dir",
            checkpoints_dir.display()
        );
    }
    tracing::warn!(
        checkpoints = %checkpoints_dir.display(),
        steps = %steps.join(", "),
        "output.overwrite: deleting an earlier run's checkpoints to start afresh"
    );
    match std::fs::remove_file(checkpoints_dir.join(LATEST)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("{}", checkpoints_dir.join(LATEST).display()))?
        }
        _ => {}
    }
    for dir in &found {
        discard(checkpoints_dir, dir)?;
    }
    Ok(())
}

/// Before a run starts from step 0: what an earlier start in its directory left that this one
/// would otherwise mix with or reuse: TensorBoard event files (as metrics.jsonl is rewritten),
/// a random initialization made for `model.init` settings that may since have changed, the
/// evaluation and the plot. An earlier run's exported `model/` (whose checkpoints are gone) is
/// an error unless `output.overwrite`, which deletes it: it would pass for this run's model
/// until this run's export replaced it, or forever with `export_dtype = "none"`.
pub fn clear_an_earlier_start(config: &TrainConfig) -> anyhow::Result<()> {
    let out = &config.output.dir;
    let model = out.join("model");
    if model.is_dir() && !config.output.overwrite {
        bail!(
            "{} holds an earlier run's exported model: output.overwrite = true deletes it and \
             starts afresh; or choose another output.dir",
            model.display()
        );
    }
    let mut stale = vec![out.join("tensorboard"), model];
    if config.model.init.is_some() {
        stale.push(out.join("init-model"));
    }
    for dir in stale.into_iter().filter(|d| d.is_dir()) {
        std::fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    }
    for file in ["eval.json", "loss.png"].map(|f| out.join(f)) {
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("{}", file.display()))?
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses before anything is deleted when a run reads its model, tokenizer or data from what
/// `output.overwrite` deletes (its checkpoints, its export): training again from a run's own
/// `model/` into the same output.dir deleted the model before reading it.
fn keep_the_inputs(config: &TrainConfig) -> anyhow::Result<()> {
    let out = &config.output.dir;
    let deleted: Vec<_> = ["checkpoints", "model"]
        .iter()
        .filter_map(|d| out.join(d).canonicalize().ok())
        .collect();
    let mut inputs: Vec<(&str, PathBuf)> = Vec::new();
    if let Some((dir, _)) = config.model_dir() {
        inputs.push(("model.path", dir));
    }
    if let Some(tokenizer) = &config.model.tokenizer {
        inputs.push(("model.tokenizer", tokenizer.into()));
    }
    inputs.push(("data.path", config.data.path.clone().into()));
    inputs.extend(
        config
            .data
            .also
            .iter()
            .map(|a| ("data.also", a.path.clone().into())),
    );
    for (key, input) in inputs {
        let Ok(real) = input.canonicalize() else {
            continue;
        };
        if let Some(dir) = deleted.iter().find(|d| real.starts_with(d)) {
            bail!(
                "{key} {} is inside {}, which output.overwrite deletes to start afresh: copy it \
                 out first, or train into another output.dir",
                input.display(),
                dir.display()
            );
        }
    }
    Ok(())
}
