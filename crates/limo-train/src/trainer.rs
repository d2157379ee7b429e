//! The training loop: load, then for every optimizer step gather micro-batches, forward and
//! backward, clip, update, log, checkpoint; at the end plot and export.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use limo_data::ChatTokenizer;
use limo_model::checkpoint::load_checkpoint;
use limo_model::model::parse_dtype;
use limo_model::{loss_and_grads, Batch, ModelWeights, Qwen2Config};

use crate::checkpoint::{self, Manifest, RankState, SideFile};
use crate::config::{parse_size, TrainConfig};
use crate::eval::{evaluate, Evaluation};
use crate::metrics::{self, StepMetrics};
use crate::optim::{clip_coefficient, global_norm, master_dtype, AdamW, AdamWSettings, Flat};
use crate::order::DataOrder;
use crate::schedule::Schedule;
use crate::source::{prepare_model, prepare_rows, TrainingRow, BUILTIN_ARITHMETIC};
use crate::synthetic;

/// How `limo train` was asked to run.
#[derive(Default)]
pub struct RunOptions {
    /// `latest` or a checkpoint directory.
    pub resume: Option<String>,
    /// Draw the progress bar (off in tests and when stderr is not a terminal).
    pub progress: bool,
}

/// What a finished run reports.
pub struct RunSummary {
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    pub output: PathBuf,
    /// Held-out greedy evaluation before and after training (generated data only).
    pub evaluation: Option<(Evaluation, Evaluation)>,
}

/// Everything the loop carries from step to step.
struct State {
    cfg: Qwen2Config,
    weights: ModelWeights,
    optimizer: AdamW,
    order: DataOrder,
    step: usize,
}

pub fn train(config: &TrainConfig, options: &RunOptions) -> anyhow::Result<RunSummary> {
    config.preflight()?;
    let out = &config.output.dir;
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    std::fs::write(out.join("config.toml"), toml::to_string(config)?)?;
    let dtype = parse_dtype(&config.model.dtype)?;
    let device = Device::Cpu;

    let model = prepare_model(config, out)?;
    let (cfg, weights) = load_checkpoint(&model.dir, dtype, &device)?;
    let tokenizer = model
        .tokenizer
        .as_deref()
        .map(ChatTokenizer::from_path)
        .transpose()?;
    let rows = prepare_rows(config, tokenizer.as_ref(), out)?;
    if let Some(bad) = rows
        .iter()
        .flat_map(|r| &r.input_ids)
        .find(|&&id| id as usize >= cfg.vocab_size)
    {
        bail!(
            "data: token id {bad} is outside the model's vocabulary of {}",
            cfg.vocab_size
        );
    }

    let t = &config.train;
    let per_step = t.batch_size * t.grad_accum;
    let steps_per_epoch = rows.len().div_ceil(per_step);
    let total_steps = t.max_steps.unwrap_or(t.epochs * steps_per_epoch);
    let schedule = Schedule::from_name(&t.schedule).expect("validated");
    let settings = AdamWSettings {
        beta1: t.adam_beta1,
        beta2: t.adam_beta2,
        eps: t.adam_eps,
        weight_decay: t.weight_decay,
    };
    let named = weights.named(&cfg);
    let params: Vec<(String, Vec<usize>)> = named
        .iter()
        .map(|(n, w)| (n.clone(), w.dims().to_vec()))
        .collect();
    let optimizer = AdamW::new(settings, &named.iter().map(|(_, w)| *w).collect::<Vec<_>>())?;
    drop(named);
    let order = DataOrder::new(rows.len(), t.shuffle, t.seed)?;
    let mut state = State {
        optimizer,
        order,
        cfg,
        weights,
        step: 0,
    };

    let checkpoints_dir = out.join("checkpoints");
    let metrics_path = out.join("metrics.jsonl");
    if let Some(which) = &options.resume {
        let dir = checkpoint::resolve(&checkpoints_dir, which)?;
        restore(&mut state, &dir, config, rows.len(), dtype)?;
        metrics::truncate_after(&metrics_path, state.step)?;
        tracing::info!(step = state.step, checkpoint = %dir.display(), "resumed");
    } else {
        let _ = std::fs::remove_file(&metrics_path);
    }

    let held_out = held_out_problems(config);
    let eval_before = match (&tokenizer, held_out.is_empty()) {
        (Some(tok), false) => Some(evaluate(
            &state.cfg,
            &state.weights,
            tok,
            config.data.system.as_deref(),
            &held_out,
            config.output.eval_max_new_tokens,
        )?),
        _ => None,
    };

    let side_files = side_files(&model.dir, model.tokenizer.as_deref())?;
    let bar = progress_bar(options.progress, total_steps, state.step);
    tracing::info!(rows = rows.len(), total_steps, per_step, "training");
    while state.step < total_steps {
        let started = Instant::now();
        let indices = state.order.next_indices(per_step);
        let micro: Vec<Batch> = indices
            .chunks(t.batch_size)
            .map(|c| to_batch(&rows, c))
            .collect::<anyhow::Result<_>>()?;
        let n_targets: usize = micro.iter().map(Batch::n_targets).sum();
        let tokens: usize = micro.iter().map(Batch::tokens).sum();
        let lr = schedule.lr(t.lr, state.step, t.warmup_steps, total_steps);
        let (loss, grad_norm, clip_coef) = if n_targets == 0 {
            tracing::warn!(
                step = state.step + 1,
                "no target tokens in this step; skipping the update"
            );
            (0.0, 0.0, 1.0)
        } else {
            optimizer_step(&mut state, &micro, n_targets, lr, config, dtype)?
        };
        state.step += 1;
        let seconds = started.elapsed().as_secs_f64();
        let m = StepMetrics {
            step: state.step,
            epoch: (state.step * per_step) as f64 / rows.len() as f64,
            lr,
            loss,
            grad_norm,
            clip_coef,
            n_target_tokens: n_targets,
            tokens,
            seconds,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
        };
        metrics::append(&metrics_path, &m)?;
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} gnorm {grad_norm:.3} {:.0} tok/s",
            m.tokens_per_second
        ));
        bar.inc(1);
        tracing::debug!(step = m.step, loss, lr, grad_norm, "step");

        if checkpoint_due(config, state.step, steps_per_epoch, total_steps) {
            save(&state, &checkpoints_dir, config, &params, &side_files)?;
        }
    }
    bar.finish_and_clear();

    let history = metrics::read(&metrics_path)?;
    metrics::plot_loss(&history, &out.join("loss.png"))?;
    if config.output.export_dtype != "none" {
        export_final(
            config,
            &checkpoints_dir.join(checkpoint::step_dir_name(total_steps)),
        )?;
    }
    let evaluation = match (eval_before, &tokenizer) {
        (Some(before), Some(tok)) => Some(evaluate_after(config, &state, tok, &held_out, before)?),
        _ => None,
    };
    Ok(RunSummary {
        evaluation,
        steps: total_steps,
        first_loss: history.first().map_or(f64::NAN, |m| m.loss),
        last_loss: history.last().map_or(f64::NAN, |m| m.loss),
        output: out.clone(),
    })
}

/// Checkpoint every `save_steps`, at epoch ends if asked, and always after the last step.
fn checkpoint_due(
    config: &TrainConfig,
    step: usize,
    steps_per_epoch: usize,
    total_steps: usize,
) -> bool {
    let every = config.output.save_steps;
    (every > 0 && step.is_multiple_of(every))
        || (config.output.save_every_epoch && step.is_multiple_of(steps_per_epoch))
        || step == total_steps
}

/// Writes `<output>/model` from the final checkpoint.
fn export_final(config: &TrainConfig, final_checkpoint: &Path) -> anyhow::Result<()> {
    let export_dir = config.output.dir.join("model");
    if export_dir.exists() {
        std::fs::remove_dir_all(&export_dir)?;
    }
    let dtype = parse_dtype(&config.output.export_dtype)?;
    let shard = parse_size(&config.output.max_shard_size)?;
    crate::export::export(final_checkpoint, &export_dir, dtype, shard)
}

/// Evaluates the trained weights and writes `<output>/eval.json`.
fn evaluate_after(
    config: &TrainConfig,
    state: &State,
    tokenizer: &ChatTokenizer,
    held_out: &[synthetic::Problem],
    before: Evaluation,
) -> anyhow::Result<(Evaluation, Evaluation)> {
    let system = config.data.system.as_deref();
    let max_new = config.output.eval_max_new_tokens;
    let after = evaluate(
        &state.cfg,
        &state.weights,
        tokenizer,
        system,
        held_out,
        max_new,
    )?;
    let samples: Vec<serde_json::Value> = after
        .samples
        .iter()
        .map(|(q, a)| serde_json::json!({"question": q, "generated": a}))
        .collect();
    let report = serde_json::json!({
        "problems": held_out.len(),
        "accuracy_before": before.accuracy(),
        "accuracy_after": after.accuracy(),
        "samples_after": samples,
    });
    std::fs::write(
        config.output.dir.join("eval.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok((before, after))
}

/// One optimizer step over its micro-batches; returns (loss, grad norm, clip coefficient).
fn optimizer_step(
    state: &mut State,
    micro: &[Batch],
    n_targets: usize,
    lr: f64,
    config: &TrainConfig,
    dtype: DType,
) -> anyhow::Result<(f64, f64, f64)> {
    let scale = 1.0 / n_targets as f64;
    let mut loss_sum = 0.0;
    let mut grads: Option<Vec<Tensor>> = None;
    for batch in micro {
        let out = loss_and_grads(
            &state.cfg,
            &state.weights,
            batch,
            scale,
            config.train.loss_chunk,
        )?;
        loss_sum += out.loss_sum;
        let g: Vec<Tensor> = out
            .grads
            .named(&state.cfg)
            .into_iter()
            .map(|(_, t)| t.clone())
            .collect();
        grads = Some(match grads {
            None => g,
            Some(acc) => acc
                .iter()
                .zip(&g)
                .map(|(a, b)| a + b)
                .collect::<candle_core::Result<_>>()?,
        });
    }
    let grads = grads.expect("at least one micro-batch");
    let master = state.optimizer.master_dtype();
    let grads: Vec<Flat> = grads
        .iter()
        .map(|g| Flat::from_tensor(g, master))
        .collect::<candle_core::Result<_>>()?;
    let norm = global_norm(&grads);
    if !norm.is_finite() {
        bail!(
            "step {}: gradient norm is {norm}; stopping before the weights are damaged",
            state.step + 1
        );
    }
    let coef = clip_coefficient(norm, config.train.max_grad_norm);
    state.optimizer.step(&grads, lr, coef);
    state.weights = compute_weights(&state.cfg, &state.optimizer, dtype)?;
    Ok((loss_sum * scale, norm, coef))
}

/// The compute copy of the master weights.
fn compute_weights(
    cfg: &Qwen2Config,
    optimizer: &AdamW,
    dtype: DType,
) -> anyhow::Result<ModelWeights> {
    let mut tensors = optimizer
        .tensors(&optimizer.master, &Device::Cpu)?
        .into_iter();
    Ok(ModelWeights::build(cfg, |_| {
        Ok(tensors
            .next()
            .expect("one master per parameter")
            .to_dtype(dtype)?)
    })?)
}

fn to_batch(rows: &[TrainingRow], indices: &[usize]) -> anyhow::Result<Batch> {
    let ids: Vec<Vec<u32>> = indices.iter().map(|&i| rows[i].input_ids.clone()).collect();
    let labels: Vec<Vec<i64>> = indices.iter().map(|&i| rows[i].labels.clone()).collect();
    let positions: Option<Vec<Vec<u32>>> = indices
        .iter()
        .map(|&i| rows[i].position_ids.clone())
        .collect();
    Ok(Batch::from_rows(&ids, &labels, positions.as_deref())?)
}

fn save(
    state: &State,
    dir: &Path,
    config: &TrainConfig,
    params: &[(String, Vec<usize>)],
    side: &[SideFile],
) -> anyhow::Result<()> {
    let manifest = Manifest {
        format: checkpoint::FORMAT.into(),
        step: state.step,
        world_size: 1,
        config_hash: config.trajectory_hash(),
        data_order: state.order.save(),
        params: params.to_vec(),
        master_dtype: format!("{:?}", state.optimizer.master_dtype()).to_lowercase(),
        files: Default::default(),
    };
    let opt = &state.optimizer;
    let rank = RankState {
        master: opt.tensors(&opt.master, &Device::Cpu)?,
        exp_avg: opt.tensors(&opt.exp_avg, &Device::Cpu)?,
        exp_avg_sq: opt.tensors(&opt.exp_avg_sq, &Device::Cpu)?,
    };
    let path = checkpoint::save(dir, manifest, &rank, side, config.output.keep_last)?;
    tracing::info!(step = state.step, path = %path.display(), "checkpoint saved");
    Ok(())
}

fn restore(
    state: &mut State,
    dir: &Path,
    config: &TrainConfig,
    rows: usize,
    dtype: DType,
) -> anyhow::Result<()> {
    let (manifest, rank) = checkpoint::load(dir)?;
    if manifest.config_hash != config.trajectory_hash() {
        bail!(
            "{}: written by a run with a different model, data or train configuration; resume with the same config",
            dir.display()
        );
    }
    let expected: Vec<(String, Vec<usize>)> = state
        .weights
        .named(&state.cfg)
        .iter()
        .map(|(n, w)| (n.clone(), w.dims().to_vec()))
        .collect();
    if manifest.params != expected {
        bail!("{}: its parameters do not match the model", dir.display());
    }
    let want = master_dtype(dtype);
    if rank.master.iter().any(|t| t.dtype() != want) {
        bail!("{}: master weights are not {want:?}", dir.display());
    }
    let flat = |list: Vec<Tensor>| {
        list.iter()
            .map(|t| Flat::from_tensor(t, want))
            .collect::<candle_core::Result<Vec<_>>>()
    };
    state.optimizer.master = flat(rank.master)?;
    state.optimizer.exp_avg = flat(rank.exp_avg)?;
    state.optimizer.exp_avg_sq = flat(rank.exp_avg_sq)?;
    state.optimizer.updates = manifest.step as u64;
    state.order = DataOrder::restore(&manifest.data_order, rows)?;
    state.step = manifest.step;
    state.weights = compute_weights(&state.cfg, &state.optimizer, dtype)?;
    Ok(())
}

fn side_files(model_dir: &Path, tokenizer: Option<&Path>) -> anyhow::Result<Vec<SideFile>> {
    let mut files = Vec::new();
    for name in ["config.json", "generation_config.json"] {
        let path = model_dir.join(name);
        if path.exists() {
            files.push(SideFile {
                name: name.into(),
                bytes: std::fs::read(&path)?,
            });
        }
    }
    if let Some(tok) = tokenizer {
        let dir = if tok.is_dir() {
            tok.to_path_buf()
        } else {
            tok.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let json = if tok.is_dir() {
            tok.join("tokenizer.json")
        } else {
            tok.to_path_buf()
        };
        files.push(SideFile {
            name: "tokenizer.json".into(),
            bytes: std::fs::read(&json)?,
        });
        for name in ["tokenizer_config.json", "chat_template.jinja"] {
            if dir.join(name).exists() {
                files.push(SideFile {
                    name: name.into(),
                    bytes: std::fs::read(dir.join(name))?,
                });
            }
        }
    }
    Ok(files)
}

fn progress_bar(enabled: bool, total: usize, done: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps, ETA {eta} | {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    bar
}

/// Held-out problems for the generated data set: another seed, minus any training question.
fn held_out_problems(config: &TrainConfig) -> Vec<synthetic::Problem> {
    if config.data.path != BUILTIN_ARITHMETIC || config.output.eval_examples == 0 {
        return Vec::new();
    }
    let train: std::collections::HashSet<String> =
        synthetic::problems(config.train.seed, synthetic::TRAIN_PROBLEMS)
            .into_iter()
            .map(|p| p.question)
            .collect();
    synthetic::problems(
        config.train.seed.wrapping_add(1),
        4 * config.output.eval_examples,
    )
    .into_iter()
    .filter(|p| !train.contains(&p.question))
    .take(config.output.eval_examples)
    .collect()
}
