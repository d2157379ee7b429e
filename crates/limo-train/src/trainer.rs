//! The training loop: load, then for every optimizer step gather micro-batches, forward and
//! backward, clip, update, log, checkpoint; at the end plot and export.
//!
//! Every run is a ZeRO-3 run over a `Communicator` (a single process is world size 1). Each
//! step consumes `batch_size x grad_accum x world_size` rows; every rank follows the same data
//! order and takes its own `batch_size` rows of every micro-batch. Rank 0 alone writes the run
//! directory (metrics, plot, export, evaluation); every rank writes its checkpoint slice.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use limo_data::ChatTokenizer;
use limo_dist::comm::Communicator;
use limo_dist::stop::StopOnSignals;
use limo_dist::SoloComm;
use limo_model::checkpoint::{SafetensorFiles, CONFIG_FILE};
use limo_model::{Batch, Qwen2Config};
use limo_ops::GradScale;

use crate::agreement;
use crate::checkpoint::{self, disk};
use crate::config::{EpochTail, LossAverage, ReportTo, TrainConfig, TrainSection};
use crate::eval::{evaluate_after, evaluate_on_lead, held_out_problems, Evaluation};
use crate::metrics::{self, StepMetrics};
use crate::optim::{clip_coefficient, Flat};
use crate::order::DataOrder;
use crate::source::{check_vocabulary, prepare_model, prepare_rows, PreparedModel, TrainingRow};
use crate::tensorboard::EventWriter;
use crate::zero3::{agree, load_shards, ShardedModel};

/// How `limo train` was asked to run.
#[derive(Default)]
pub struct RunOptions {
    /// `latest`, `auto` (resume if the run has a checkpoint), a step or a checkpoint directory.
    pub resume: Option<String>,
    /// Draw the progress bar (off in tests and when stderr is not a terminal).
    pub progress: bool,
    /// This process's rank of a distributed run; `None` trains alone (world size 1).
    pub comm: Option<Box<dyn Communicator>>,
    /// Where this rank computes; `None` is the CPU.
    pub device: Option<Device>,
    /// SIGTERM, SIGINT or SIGUSR1 during the steps ends the run after the current step, with a
    /// checkpoint, as [`Stopped`] (the `limo` binary; a library caller keeps its own handlers).
    pub stop_on_signals: bool,
    /// Where the config came from (its file), to name in front of this rank's own finding
    /// that the model is missing.
    pub origin: Option<String>,
}

/// The run stopped early, on a signal (a scheduler's preemption warning, Ctrl-C), after
/// checkpointing its last step on every rank: `--resume` continues it exactly.
#[derive(Debug)]
pub struct Stopped {
    /// The signal this rank received; `None` when only another rank did.
    pub signal: Option<i32>,
    pub step: usize,
    pub total_steps: usize,
    pub checkpoint: PathBuf,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.signal {
            Some(sig) => format!("by {}", limo_dist::launch::signal_name(sig)),
            None => "because another rank received a stop signal".into(),
        };
        write!(
            f,
            "stopped {why} after step {} of {}; checkpoint {} saved; --resume continues the run",
            self.step,
            self.total_steps,
            self.checkpoint.display()
        )
    }
}

impl std::error::Error for Stopped {}

/// What a finished run reports.
pub struct RunSummary {
    pub rank: usize,
    pub world_size: usize,
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    /// The run's first and last validation loss (`data.val_size`; rank 0).
    pub eval_loss: Option<(f64, f64)>,
    pub output: PathBuf,
    /// Held-out greedy evaluation before and after training (generated data only; rank 0).
    pub evaluation: Option<(Evaluation, Evaluation)>,
}

/// A run in progress: the model's shards, where the data order and the step count stand, and
/// what every step writes.
struct Run<'a> {
    config: &'a TrainConfig,
    model: ShardedModel,
    order: DataOrder,
    /// Optimizer steps done.
    step: usize,
    rows: Vec<TrainingRow>,
    /// `source::rows_hash` of `rows`, kept in every checkpoint.
    rows_hash: u64,
    rows_per_step: usize,
    steps_per_epoch: usize,
    total_steps: usize,
    /// `train.warmup_steps`, or `warmup_ratio` of `total_steps`.
    warmup_steps: usize,
    /// Tokenizer and config files every checkpoint carries, for export.
    side_files: Vec<checkpoint::SideFile>,
    tensorboard: Option<EventWriter>,
    bar: ProgressBar,
}

/// What rank 0 prepares and every rank reads: model location, tokenizer, training rows.
struct Inputs {
    model: PreparedModel,
    tokenizer: Option<ChatTokenizer>,
    rows: Vec<TrainingRow>,
    /// Held out by `data.val_size` (empty without it).
    validation: Vec<TrainingRow>,
}

fn prepare_inputs(config: &TrainConfig, write: bool) -> anyhow::Result<Inputs> {
    let out = &config.output.dir;
    if write {
        std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
        // Found now, not at the first save, after hours of steps.
        let export = config.output.export_dtype.dtype().is_some();
        let dirs = [Some("checkpoints"), export.then_some("model")];
        for dir in dirs.into_iter().flatten().map(|name| out.join(name)) {
            if dir.exists() && !dir.is_dir() {
                bail!("{}: a file where limo keeps a directory", dir.display());
            }
        }
        let path = out.join("config.toml");
        std::fs::write(&path, toml::to_string(config)?)
            .with_context(|| format!("{}", path.display()))?;
    }
    let model = prepare_model(config, out, write)?;
    let tokenizer = model
        .tokenizer
        .as_deref()
        .map(ChatTokenizer::from_path)
        .transpose()?;
    let (rows, validation) = prepare_rows(config, tokenizer.as_ref(), out, write)?;
    Ok(Inputs {
        model,
        tokenizer,
        rows,
        validation,
    })
}

/// Reads the model's config and this rank's slices of its weights, once every training and
/// validation row is known to fit its vocabulary.
fn load_model(
    dir: &Path,
    rows: [&[TrainingRow]; 2],
    dtype: DType,
    world: usize,
    rank: usize,
) -> anyhow::Result<(Qwen2Config, Vec<Flat>)> {
    let cfg = Qwen2Config::from_file(&dir.join(CONFIG_FILE))?;
    for (rows, what) in rows.into_iter().zip(["training", "validation"]) {
        check_vocabulary(rows, cfg.vocab_size as u64, what)?;
    }
    let files = SafetensorFiles::open(dir)?;
    files.check_names(&cfg)?;
    let shards = load_shards(&cfg, &files, dtype, world, rank)?;
    Ok((cfg, shards))
}

/// Trains the run `config` describes, as one rank of `options.comm`: load, resume, then for
/// every step `Run::train_step`, log, checkpoint; at the end plot, export and evaluate.
pub fn train(config: &TrainConfig, options: RunOptions) -> anyhow::Result<RunSummary> {
    config.preflight_build()?;
    let comm = options.comm.unwrap_or_else(|| Box::new(SoloComm));
    let device = options.device.unwrap_or(Device::Cpu);
    agreement::same_config(config, options.resume.as_deref(), comm.as_ref(), &device)?;
    let model_here = config.preflight_model().map_err(|e| match &options.origin {
        Some(origin) => anyhow::anyhow!("{origin}: {e}"),
        None => e,
    });
    agree(comm.as_ref(), &device, model_here, "finding the model")?;
    // A global batch size this world size cannot split fails here (on every rank, as the
    // configs agree), before any data is read.
    config.rows_per_step(comm.world_size())?;
    let lead = comm.rank() == 0;
    // A second `limo train` into the same directory (a job submitted twice, a requeue while
    // the old job still runs) would interleave its checkpoints and metrics with this one's.
    let lock = lead
        .then(|| limo_dist::lock::lock_dir(&config.output.dir, "training into this run directory"))
        .transpose();
    let _lock = agree(comm.as_ref(), &device, lock, "locking the run directory")?;
    let out = &config.output.dir;
    limo_dist::shared_dir::check(out, "output.dir", comm.as_ref(), &device)?;
    let resume =
        agreement::resume_choice(options.resume.as_deref(), config, comm.as_ref(), &device)?;
    let afresh = match (&resume, lead) {
        (None, true) => checkpoint::start_afresh(config)
            .and_then(|()| checkpoint::clear_an_earlier_start(config)),
        _ => Ok(()),
    };
    agree(comm.as_ref(), &device, afresh, "checking the run directory")?;
    let (inputs, cfg, shards) = read_inputs(config, comm.as_ref(), &device)?;
    if lead {
        warn_if_the_disk_is_short(config, &cfg, comm.world_size());
    }
    let checkpointed = crate::zero3::plan::for_this_gpu(config, &cfg, comm.as_ref(), &device);
    let Inputs {
        model: prepared,
        tokenizer,
        rows,
        validation,
    } = inputs;
    if lead && !validation.is_empty() {
        tracing::info!(
            rows = validation.len(),
            "validation rows held out (data.val_size)"
        );
    }
    let mut run = Run::new(
        config,
        &prepared,
        rows,
        (cfg, shards, checkpointed),
        device,
        comm,
    )?;
    match &resume {
        Some(which) => run.resume(which)?,
        None if lead => {
            let _ = std::fs::remove_file(run.metrics_path());
        }
        None => {}
    }
    let held_out = held_out_problems(config);
    let eval_before = match (&tokenizer, held_out.is_empty()) {
        (Some(tok), false) => evaluate_on_lead(config, &run.model, tok, &held_out)?,
        _ => None,
    };

    run.show_progress(options.progress);
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    let stop = options
        .stop_on_signals
        .then(StopOnSignals::install)
        .transpose()
        .context("installing the stop-signal handlers")?;
    while run.step < run.total_steps {
        let mut m = run.train_step()?;
        if !validation.is_empty() && run.eval_due() {
            m.eval_loss = run.validation_loss(&validation)?;
            match m.eval_loss {
                Some(loss) if lead => tracing::info!(step = m.step, eval_loss = loss, "validation"),
                None if lead => tracing::warn!(step = m.step, "no validation row has a target"),
                _ => {}
            }
        }
        run.log(&m)?;
        if first_loss.is_nan() {
            first_loss = m.loss;
        }
        last_loss = m.loss;
        let stop_now = |run: &Run| match &stop {
            Some(stop) if run.step < run.total_steps => stop_agreed(&run.model, stop),
            _ => Ok(false),
        };
        let mut stopping = stop_now(&run)?;
        if stopping || run.checkpoint_due() {
            run.save()?;
            // A signal during the save: this step's checkpoint is written, so stop now rather
            // than after one more step and a second save.
            stopping = stopping || stop_now(&run)?;
        }
        if stopping {
            run.bar.abandon();
            if lead {
                // The curve so far, beside the checkpoint the run continues from.
                run.plot(&metrics::read(&run.metrics_path())?);
            }
            let signal = stop.as_ref().and_then(StopOnSignals::requested);
            return Err(run.stopped(signal).into());
        }
    }
    // From here a signal acts as it always does: the last checkpoint is written.
    drop(stop);
    run.bar.finish_and_clear();

    let mut eval_loss = None;
    if lead {
        let history = run.plot_and_export()?;
        if let Some((first, last)) = history.first().zip(history.last()) {
            (first_loss, last_loss) = (first.loss, last.loss);
        }
        let mut evals = history.iter().filter_map(|m| m.eval_loss);
        eval_loss = evals
            .next()
            .map(|first| (first, evals.next_back().unwrap_or(first)));
    }
    let evaluation = match (eval_before, &tokenizer) {
        (Some(before), Some(tok)) => evaluate_after(config, &run.model, tok, &held_out, before)?,
        _ => None,
    };
    // Nobody leaves while rank 0 still exports: a launcher may stop the job when one exits.
    run.model.comm().barrier()?;
    Ok(RunSummary {
        rank: run.model.rank(),
        world_size: run.model.world_size(),
        evaluation,
        steps: run.total_steps,
        first_loss,
        last_loss,
        eval_loss,
        output: config.output.dir.clone(),
    })
}

/// Rank 0 writes the run directory's inputs first; then every rank reads them, and its slices
/// of the model's weights.
fn read_inputs(
    config: &TrainConfig,
    comm: &dyn Communicator,
    device: &Device,
) -> anyhow::Result<(Inputs, Qwen2Config, Vec<Flat>)> {
    let first = (comm.rank() == 0)
        .then(|| prepare_inputs(config, true))
        .transpose();
    let first = agree(comm, device, first, "preparing the run")?;
    let inputs = first.map_or_else(|| prepare_inputs(config, false), Ok);
    let inputs = agree(comm, device, inputs, "reading the model and data")?;
    let dtype = config.model.dtype.dtype();
    let (world, rank) = (comm.world_size(), comm.rank());
    let rows = [inputs.rows.as_slice(), inputs.validation.as_slice()];
    let loaded = load_model(&inputs.model.dir, rows, dtype, world, rank);
    let (cfg, shards) = agree(comm, device, loaded, "loading the model")?;
    Ok((inputs, cfg, shards))
}

/// A filesystem that cannot hold the run's checkpoints fails it at the first one that does not
/// fit, hours in: say so before the first step.
fn warn_if_the_disk_is_short(config: &TrainConfig, cfg: &Qwen2Config, world: usize) {
    let out = &config.output.dir;
    let need = disk::disk_use(cfg, config, world as u64);
    let reused = disk::tree_bytes(&out.join("checkpoints")) + disk::tree_bytes(&out.join("model"));
    let free = disk::free_bytes(out);
    if let Some(w) = free
        .ok()
        .and_then(|free| disk::space_warning(out, free, reused, &need))
    {
        tracing::warn!("{w}");
    }
}

impl<'a> Run<'a> {
    fn new(
        config: &'a TrainConfig,
        prepared: &PreparedModel,
        rows: Vec<TrainingRow>,
        (cfg, shards, checkpointed): (Qwen2Config, Vec<Flat>, Option<usize>),
        device: Device,
        comm: Box<dyn Communicator>,
    ) -> anyhow::Result<Self> {
        let t = &config.train;
        let (world, lead) = (comm.world_size(), comm.rank() == 0);
        // Hashed once: compared across ranks first (what follows may fail on one rank only
        // when the rows differ), kept in every checkpoint.
        let rows_hash = crate::source::rows_hash(&rows);
        agreement::same_rows(rows_hash, rows.len(), comm.as_ref(), &device)?;
        let rows_per_step = config.rows_per_step(world)?;
        let steps_per_epoch = rows.len().div_ceil(rows_per_step);
        let total_steps = match t.max_steps {
            Some(steps) => steps,
            None => t.epochs.checked_mul(steps_per_epoch).with_context(|| {
                format!(
                    "train.epochs {} x {steps_per_epoch} steps per epoch overflows",
                    t.epochs
                )
            })?,
        };
        let dtype = config.model.dtype.dtype();
        let mut model = ShardedModel::new(cfg, shards, dtype, &device, t, comm)?;
        model.checkpointed_layers = checkpointed.unwrap_or(model.checkpointed_layers);
        let order = DataOrder::new(rows.len(), t.shuffle, t.seed, t.sampler.permutation())?;
        let tb = (lead && config.output.report_to.contains(&ReportTo::Tensorboard))
            .then(|| EventWriter::create(&config.output.dir.join("tensorboard")))
            .transpose();
        let tensorboard = agree(model.comm(), &device, tb, "opening TensorBoard")?;
        let mut side_files = checkpoint::side_files(&prepared.dir, prepared.tokenizer.as_deref())?;
        // The run's own config, so that a resume refused for another one can name the fields.
        side_files.push(checkpoint::SideFile {
            name: checkpoint::RUN_CONFIG.into(),
            bytes: toml::to_string(config)?.into_bytes(),
        });
        Ok(Self {
            config,
            model,
            order,
            step: 0,
            rows_hash,
            rows,
            rows_per_step,
            steps_per_epoch,
            total_steps,
            warmup_steps: config.train.warmup_steps_of(total_steps),
            side_files,
            tensorboard,
            bar: ProgressBar::hidden(),
        })
    }

    fn checkpoints_dir(&self) -> PathBuf {
        self.config.output.dir.join("checkpoints")
    }

    fn metrics_path(&self) -> PathBuf {
        self.config.output.dir.join("metrics.jsonl")
    }

    /// Restores the model's state, the data order and the step from a checkpoint (`latest`, a
    /// step or a directory); the metrics of later steps are dropped, to be logged again.
    fn resume(&mut self, which: &str) -> anyhow::Result<()> {
        let checkpoints = self.checkpoints_dir();
        let restored = checkpoint::resolve(&checkpoints, which).and_then(|dir| {
            let (rows, hash) = (self.rows.len(), self.rows_hash);
            checkpoint::restore_run(&mut self.model, &dir, self.config, rows, hash)
                .map_err(|e| {
                    // A damaged `latest`: an older checkpoint may do; another configuration's
                    // run: none will.
                    let damaged = !format!("{e:#}").contains(checkpoint::DIFFERENT_RUN);
                    match which {
                        checkpoint::LATEST if damaged => anyhow::anyhow!(
                            "{e:#}; {}",
                            checkpoint::others_hint(&checkpoints, &dir)
                        ),
                        _ => e,
                    }
                })
                .map(|r| (dir, r))
        });
        let device = self.model.device.clone();
        let what = "resuming from the checkpoint";
        let (dir, (order, step)) = agree(self.model.comm(), &device, restored, what)?;
        (self.order, self.step) = (order, step);
        let lead = self.model.rank() == 0;
        if lead {
            metrics::truncate_after(&self.metrics_path(), step)?;
        }
        tracing::info!(step, checkpoint = %dir.display(), rank = self.model.rank(), "resumed");
        #[cfg(feature = "cuda")]
        if lead && device.is_cuda() && !limo_ops::cuda::flash_attention::deterministic_requested() {
            // The state restored is exact; what follows is not bit-for-bit the run that was cut.
            tracing::warn!(
                "resumed on a GPU with the atomic flash backward: the run continues exactly from \
                 the checkpoint, but its later steps match an uninterrupted run to rounding, not \
                 to the bit (dQ's atomic adds vary in order); LIMO_FLASH_DETERMINISTIC=1 for bits"
            );
        }
        Ok(())
    }

    /// Rank 0 draws the progress bar (when `enabled`) and says what the run will do.
    fn show_progress(&mut self, enabled: bool) {
        if self.model.rank() != 0 {
            return;
        }
        self.bar = progress_bar(enabled, self.total_steps, self.step);
        tracing::info!(
            rows = self.rows.len(),
            total_steps = self.total_steps,
            warmup_steps = self.warmup_steps,
            rows_per_step = self.rows_per_step,
            steps_per_epoch = self.steps_per_epoch,
            epoch_tail = self.config.train.epoch_tail.as_str(),
            world = self.model.world_size(),
            micro_batches_per_step =
                self.rows_per_step / (self.config.train.batch_size * self.model.world_size()),
            loss_average = self.config.train.loss_average.as_str(),
            "training"
        );
        // A short trial run of a real config (--set train.max_steps=2) keeps the config's
        // warmup: its learning rate never reaches train.lr, which looks like a broken run.
        if self.warmup_steps >= self.total_steps && self.warmup_steps > 0 {
            tracing::warn!(
                "the warmup ({} steps) covers the whole run ({} steps): the learning rate stays \
                 below train.lr {} throughout",
                self.warmup_steps,
                self.total_steps,
                self.config.train.lr
            );
        }
    }

    /// One optimizer step over this rank's rows of the next `rows_per_step`; what it logs.
    fn train_step(&mut self) -> anyhow::Result<StepMetrics> {
        let started = Instant::now();
        let t = &self.config.train;
        let (world, rank) = (self.model.world_size(), self.model.rank());
        let unit = t.epoch_tail_rows(world)?;
        let indices = self
            .order
            .next_indices(self.rows_per_step, t.epoch_tail, unit);
        let micro: Vec<Batch> = rank_micro_batches(&indices, t.batch_size, world, rank)
            .iter()
            .map(|rows_of_batch| to_batch(&self.rows, rows_of_batch))
            .collect::<anyhow::Result<_>>()?;
        let local = StepTotals::of(&micro);
        let local_tokens: usize = micro.iter().map(Batch::tokens).sum();
        let [n_targets, examples, tokens] = self
            .model
            .sum_over_ranks([local.targets, local.examples, local_tokens].map(|n| n as f64))?
            .map(|n| n as usize);
        let lr = t.schedule.lr(
            t.lr,
            self.step,
            self.warmup_steps,
            self.total_steps,
            t.min_lr_rate,
        );
        let (loss, grad_norm, clip_coef) = if n_targets == 0 {
            tracing::warn!(
                step = self.step + 1,
                "no target tokens in this step; skipping the update"
            );
            (0.0, 0.0, 1.0)
        } else {
            let totals = StepTotals {
                targets: n_targets,
                examples,
            };
            optimizer_step(&mut self.model, &micro, totals, lr, self.step + 1, t)?
        };
        self.step += 1;
        let seconds = started.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.step,
            epoch: match t.epoch_tail {
                EpochTail::Wrap => (self.step * self.rows_per_step) as f64 / self.rows.len() as f64,
                EpochTail::Repeat => self.step as f64 / self.steps_per_epoch as f64,
            },
            lr,
            loss,
            grad_norm,
            clip_coef,
            n_target_tokens: n_targets,
            tokens,
            seconds,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
            eval_loss: None,
        })
    }

    /// Whether the step just done validates: every `eval_steps`, at epoch ends with
    /// `eval_every_epoch`, and after the last step whenever rows are held out (as transformers
    /// 5's eval_strategy "steps" and "epoch", where a run cut by max_steps ends its epoch
    /// there; without either, as LLaMA-Factory's `do_eval`: rows held out are worth one look).
    fn eval_due(&self) -> bool {
        let (t, step) = (&self.config.train, self.step);
        let at_end = step == self.total_steps && self.config.data.val_size > 0.0;
        (t.eval_steps > 0 && step.is_multiple_of(t.eval_steps))
            || (t.eval_every_epoch && step.is_multiple_of(self.steps_per_epoch))
            || at_end
    }

    /// The loss on the validation rows: the mean over rows of each row's mean target loss, as
    /// transformers' `Trainer.evaluate` reports eval_loss with one row per device batch. Rank r
    /// runs rows r, r + world, ...; a rank without a row in a round runs one again (the forward
    /// is made of collectives) and does not count it.
    /// `None` when no validation row has a target (tokenized rows may have none).
    fn validation_loss(&self, rows: &[TrainingRow]) -> anyhow::Result<Option<f64>> {
        let (world, rank) = (self.model.world_size(), self.model.rank());
        let (mut sum_of_means, mut counted) = (0.0, 0.0);
        for round in 0..rows.len().div_ceil(world) {
            let i = round * world + rank;
            let batch = to_batch(rows, &[if i < rows.len() { i } else { rank % rows.len() }])?;
            let targets = StepTotals::of(std::slice::from_ref(&batch)).targets;
            let loss_sum = self.model.loss_sum(&batch, self.config.train.loss_chunk)?;
            if i < rows.len() && targets > 0 {
                sum_of_means += loss_sum.to_vec1::<f64>()?[0] / targets as f64;
                counted += 1.0;
            }
        }
        let [sum, n] = self.model.sum_over_ranks([sum_of_means, counted])?;
        Ok((n > 0.0).then(|| sum / n))
    }

    /// The step's line in metrics.jsonl and TensorBoard (rank 0), and the progress bar.
    fn log(&mut self, m: &StepMetrics) -> anyhow::Result<()> {
        if self.model.rank() == 0 {
            metrics::append(&self.metrics_path(), m)?;
            if let Some(events) = self.tensorboard.as_mut() {
                events.step(m)?;
            }
        }
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} gnorm {:.3} {:.0} tok/s",
            m.loss, m.lr, m.grad_norm, m.tokens_per_second
        ));
        self.bar.inc(1);
        tracing::debug!(
            step = m.step,
            m.loss,
            m.lr,
            m.grad_norm,
            rank = self.model.rank(),
            "step"
        );
        Ok(())
    }

    /// Checkpoint every `save_steps`, at epoch ends if asked, and always after the last step.
    fn checkpoint_due(&self) -> bool {
        let (step, output) = (self.step, &self.config.output);
        (output.save_steps > 0 && step.is_multiple_of(output.save_steps))
            || (output.save_every_epoch && step.is_multiple_of(self.steps_per_epoch))
            || step == self.total_steps
    }

    fn save(&self) -> anyhow::Result<()> {
        checkpoint::save_run(
            &self.model,
            &self.order,
            self.step,
            &self.checkpoints_dir(),
            self.config,
            &self.side_files,
            self.rows_hash,
        )
    }

    fn stopped(&self, signal: Option<i32>) -> Stopped {
        Stopped {
            signal,
            step: self.step,
            total_steps: self.total_steps,
            checkpoint: self
                .checkpoints_dir()
                .join(checkpoint::step_dir_name(self.step)),
        }
    }

    /// loss.png of `history`. A convenience: a failure to draw it costs nothing else.
    fn plot(&self, history: &[StepMetrics]) {
        if let Err(e) = metrics::plot_loss(history, &self.config.output.dir.join("loss.png")) {
            tracing::warn!("no loss plot: {e:#}");
        }
    }

    /// Rank 0 after the last step: loss.png and, if asked, the exported model. Returns the
    /// run's metrics over all its invocations (from before a resume too).
    fn plot_and_export(&self) -> anyhow::Result<Vec<StepMetrics>> {
        let history = metrics::read(&self.metrics_path())?;
        self.plot(&history);
        if let Some(dtype) = self.config.output.export_dtype.dtype() {
            let last = checkpoint::step_dir_name(self.total_steps);
            crate::export::export_final(self.config, dtype, &self.checkpoints_dir().join(last))?;
        }
        Ok(history)
    }
}

/// The rows of `indices` (one step) that `rank` trains on: micro-batch `m` of the step is
/// `indices[(m * world + r) * batch_size..][..batch_size]` on rank `r`, so the step covers the
/// same rows in any split.
fn rank_micro_batches(
    indices: &[usize],
    batch_size: usize,
    world: usize,
    rank: usize,
) -> Vec<Vec<usize>> {
    indices
        .chunks(batch_size)
        .skip(rank)
        .step_by(world)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Whether any rank received a stop signal: every rank must stop after the same step, or the
/// others would wait in the next step's collectives for a rank that left.
fn stop_agreed(model: &ShardedModel, stop: &StopOnSignals) -> anyhow::Result<bool> {
    let [ranks] = model.sum_over_ranks([f64::from(u8::from(stop.requested().is_some()))])?;
    Ok(ranks > 0.0)
}

/// What a step's loss divides by: its target tokens and its examples (documents with
/// targets), of all micro-batches of all ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTotals {
    pub targets: usize,
    pub examples: usize,
}

impl StepTotals {
    /// The totals of these micro-batches alone (one rank's share of a step).
    pub fn of(micro: &[Batch]) -> Self {
        StepTotals {
            targets: micro.iter().map(Batch::n_targets).sum(),
            examples: micro.iter().map(Batch::target_documents).sum(),
        }
    }
}

/// Optimizer step number `step` (from 1) over this rank's micro-batches: zero the gradients,
/// forward and backward each micro-batch, clip and update. Returns (loss, grad norm, clip
/// coefficient), the same on every rank. `totals` counts the targets and examples of all
/// ranks. `limo bench step` times this same function.
pub fn optimizer_step(
    model: &mut ShardedModel,
    micro: &[Batch],
    totals: StepTotals,
    lr: f64,
    step: usize,
    train: &TrainSection,
) -> anyhow::Result<(f64, f64, f64)> {
    let scale = 1.0 / totals.targets as f64;
    let mut grads = model.zero_grads();
    let mut loss_sum = Tensor::zeros(1, DType::F64, &model.device)?;
    for batch in micro {
        let weights;
        let grad_scale = match train.loss_average {
            LossAverage::Tokens => GradScale::Uniform(scale),
            LossAverage::Sequences => {
                weights = batch.sequence_weights(totals.examples);
                GradScale::PerToken(&weights)
            }
        };
        let micro_loss = model.loss_and_grads(batch, grad_scale, train.loss_chunk, &mut grads)?;
        loss_sum = (loss_sum + micro_loss.loss_sum)?;
    }
    let norm_sq = model.step(&grads.slices()?, lr, train.max_grad_norm)?;
    let (loss_sum, norm) = model.read_step(&loss_sum, &norm_sq, step)?;
    // Per-token weights already divide the loss sum.
    let loss = match train.loss_average {
        LossAverage::Tokens => loss_sum * scale,
        LossAverage::Sequences => loss_sum,
    };
    Ok((loss, norm, clip_coefficient(norm, train.max_grad_norm)))
}

fn to_batch(rows: &[TrainingRow], indices: &[usize]) -> anyhow::Result<Batch> {
    let ids: Vec<Vec<u32>> = indices.iter().map(|&i| rows[i].input_ids.clone()).collect();
    let labels: Vec<Vec<i64>> = indices.iter().map(|&i| rows[i].labels.clone()).collect();
    // A packed row keeps its positions beside unpacked ones (tokenized data may mix them):
    // those count from 0.
    let positions: Option<Vec<Vec<u32>>> = indices
        .iter()
        .any(|&i| rows[i].position_ids.is_some())
        .then(|| {
            indices
                .iter()
                .map(|&i| match &rows[i].position_ids {
                    Some(p) => p.clone(),
                    None => (0..rows[i].input_ids.len() as u32).collect(),
                })
                .collect()
        });
    Ok(Batch::from_rows(&ids, &labels, positions.as_deref())?)
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
