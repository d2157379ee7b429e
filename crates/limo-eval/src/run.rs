//! The evaluation run: every (problem, sample) of the chosen benchmarks is rendered with the
//! Qwen2.5 chat template (LIMO's system prompt, the question as the user turn, then the
//! assistant header), generated with batched KV-cache decoding (continuous batching: a
//! finished sequence's slot goes to the next prompt), graded, and appended to
//! `out_dir/results.jsonl` as it finishes. A rerun with the same `out_dir` skips what is
//! already there (a torn last line is dropped and redone), then writes `summary.json` and
//! prints the table.
//!
//! Each sample draws from its own stream seeded by (seed, benchmark, id, sample), so its
//! response does not depend on the batch it ran in, and a resumed run samples what an
//! uninterrupted one would have. Unfinished responses are saved and continued
//! (`in_flight.rs`); several processes split the problems (`ranks.rs`).

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use limo_data::format::{Conversation, Message, Role};
use limo_data::template::{render, rendered_text, IM_START};
use limo_data::ChatTokenizer;
use limo_model::checkpoint::load_checkpoint;
use limo_model::generate::{derive_seed, kv_cache_bytes, Generator, Sampling};
use limo_model::Qwen2Config;
use serde::{Deserialize, Serialize};

use crate::benchmarks::{self, Problem, NAMES};
use crate::checks;
use crate::grader::{extract_answer, is_equivalent};
use crate::in_flight::{self, Saved, Stopped};
use crate::ranks;
use crate::summary::write_summary;
pub use crate::summary::{format_table, pass_at_k, summarize, BenchmarkSummary, Summary};
use limo_dist::comm::Communicator;

/// LIMO's evaluation system prompt.
pub const LIMO_SYSTEM_PROMPT: &str =
    "Please reason step by step, and put your final answer within \\boxed{}.";
/// `<|im_end|>` and `<|endoftext|>` of the Qwen2.5 vocabulary: generation stops at either.
pub const QWEN_STOP_IDS: [u32; 2] = [151645, 151643];
pub const RESULTS_FILE: &str = "results.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
/// The settings that make the responses what they are, kept so that a rerun in the same
/// out_dir resumes only a run with the same settings.
pub const RUN_FILE: &str = "run.json";

/// A benchmark from a user's data: a file, a folder or a Hub dataset id (see
/// [`benchmarks::load_data`]).
#[derive(Debug, Clone)]
pub struct UserBenchmark {
    pub path: PathBuf,
    pub question_field: String,
    pub answer_field: String,
    /// The field that names a problem; its row number when `None`.
    pub id_field: Option<String>,
    /// Rows in a conversation format of limo's training data (`--format alpaca|messages`)
    /// instead of the two fields above.
    pub conversation: Option<crate::benchmarks::ConversationRows>,
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// A Hugging Face Qwen2 model directory (config.json, safetensors).
    pub model_dir: PathBuf,
    /// tokenizer.json (the file or its folder); the model directory's when `None`.
    pub tokenizer: Option<PathBuf>,
    /// Built-in benchmarks by name ([`NAMES`]).
    pub benchmarks: Vec<String>,
    /// Benchmarks from the user's files, after the built-in ones.
    pub files: Vec<UserBenchmark>,
    /// The first `limit` problems of each benchmark.
    pub limit: Option<usize>,
    pub device: Device,
    /// The dtype the weights are loaded in and the model computes in.
    pub dtype: DType,
    pub max_new_tokens: usize,
    /// 0: greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// Responses per problem; pass@k is reported for k up to it.
    pub samples: usize,
    pub seed: u64,
    /// Sequences decoded together.
    pub batch_size: usize,
    /// The system prompt; `None` leaves the Qwen2.5 template's default.
    pub system_prompt: Option<String>,
    pub out_dir: PathBuf,
    /// A progress bar on stderr.
    pub progress: bool,
    /// How often unfinished responses are saved to [`in_flight::IN_FLIGHT_FILE`] (zero: after
    /// every token).
    pub save_every: Duration,
    /// SIGTERM, SIGINT, SIGUSR1 or SIGHUP saves unfinished responses and ends the run with
    /// [`Stopped`] (`limo eval`); without it a signal acts as it always does.
    pub stop_on_signals: bool,
}

impl EvalOptions {
    /// LIMO's settings: all nine benchmarks, greedy, one sample, 32768 new tokens, f32 on the
    /// CPU.
    pub fn new(model_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            tokenizer: None,
            benchmarks: NAMES.iter().map(|s| s.to_string()).collect(),
            files: Vec::new(),
            limit: None,
            device: Device::Cpu,
            dtype: DType::F32,
            max_new_tokens: 32768,
            temperature: 0.0,
            top_p: 1.0,
            samples: 1,
            seed: 0,
            batch_size: 32,
            system_prompt: Some(LIMO_SYSTEM_PROMPT.to_string()),
            out_dir: out_dir.into(),
            progress: false,
            save_every: Duration::from_secs(60),
            stop_on_signals: false,
        }
    }
}

/// One line of `results.jsonl`: one sample of one problem.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultRecord {
    pub id: String,
    pub benchmark: String,
    pub sample: usize,
    pub question: String,
    pub response: String,
    pub extracted: Option<String>,
    pub reference: String,
    pub correct: bool,
    /// Generated tokens, without the stop token.
    pub tokens: usize,
    /// Whether a stop token ended the response (false: cut at max_new_tokens).
    #[serde(default)]
    pub stopped: bool,
    /// From the prompt's entry into the batch to its last token.
    pub seconds: f64,
}

impl ResultRecord {
    fn key(&self) -> (String, String, usize) {
        (self.benchmark.clone(), self.id.clone(), self.sample)
    }
}

/// The token ids of the prompt: system, user question, assistant header (`limo eval` and the
/// default run's evaluation).
pub fn prompt_ids(
    tokenizer: &ChatTokenizer,
    system: Option<&str>,
    question: &str,
) -> anyhow::Result<Vec<u32>> {
    let conversation = Conversation {
        system: None,
        turns: vec![Message {
            role: Role::User,
            content: question.to_string(),
        }],
    };
    let text = format!(
        "{}{IM_START}assistant\n",
        rendered_text(&render(&conversation, system))
    );
    Ok(tokenizer.encode(&text)?)
}

/// Reads `results.jsonl` (if any): the complete records, in order. A torn or unreadable last
/// line (a run killed mid-write) is cut from the file, to be generated again; a malformed line
/// before it is an error.
pub(crate) fn read_results(path: &Path) -> anyhow::Result<Vec<ResultRecord>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let mut records = Vec::new();
    let mut good_end = 0;
    let mut start = 0;
    let mut line_no = 0;
    while start < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') else {
            break; // no newline: torn
        };
        let end = start + nl;
        let line = &bytes[start..end];
        let is_last = end + 1 >= bytes.len();
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            start = end + 1;
            good_end = start;
            continue;
        }
        match serde_json::from_slice::<ResultRecord>(line) {
            Ok(r) => {
                records.push(r);
                start = end + 1;
                good_end = start;
            }
            Err(_) if is_last => break,
            Err(e) => bail!("{} line {line_no}: malformed result ({e})", path.display()),
        }
    }
    if good_end < bytes.len() {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("{}", path.display()))?;
        file.set_len(good_end as u64)
            .with_context(|| format!("{}: cutting the torn last line", path.display()))?;
    }
    Ok(records)
}

/// The problems of every requested benchmark, in order, each cut to `limit`.
fn load_problems(opts: &EvalOptions) -> anyhow::Result<Vec<Vec<Problem>>> {
    let mut all = Vec::new();
    for name in &opts.benchmarks {
        if !NAMES.contains(&name.as_str()) {
            bail!(
                "unknown benchmark {name:?}; expected one of {}",
                NAMES.join(", ")
            );
        }
    }
    let mut names: Vec<&String> = Vec::new();
    for name in &opts.benchmarks {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    for name in names {
        all.push(benchmarks::load(name)?);
    }
    for f in &opts.files {
        let rows_as = match &f.conversation {
            Some(c) => benchmarks::RowsAs::Conversation(c),
            None => benchmarks::RowsAs::Fields {
                question: &f.question_field,
                answer: &f.answer_field,
            },
        };
        all.extend(benchmarks::load_data(
            &f.path.to_string_lossy(),
            rows_as,
            f.id_field.as_deref(),
        )?);
    }
    if let Some(limit) = opts.limit {
        for problems in &mut all {
            problems.truncate(limit);
        }
    }
    Ok(all)
}

/// Sequences to generate at once: `requested`, or fewer when that many KV caches at their
/// longest (`per_sequence` bytes each: the longest prompt plus max_new_tokens) would not fit
/// in 90% of `available` bytes (the rest: weights' neighbours, activations, the allocator). The
/// cache grows only as responses lengthen, so without this a long response could run out of
/// memory hours into a run. An error when not even one sequence fits.
pub fn fit_batch(
    requested: usize,
    per_sequence: u64,
    available: Option<u64>,
) -> anyhow::Result<usize> {
    let Some(available) = available else {
        return Ok(requested);
    };
    let usable = available / 10 * 9;
    let fits = usable.checked_div(per_sequence).unwrap_or(u64::MAX);
    if fits == 0 {
        bail!(
            "--max-new-tokens: one sequence's KV cache at its longest needs {:.2} GiB, more than \
             the {:.2} GiB available; lower --max-new-tokens",
            per_sequence as f64 / GIB,
            available as f64 / GIB
        );
    }
    let batch = requested.min(usize::try_from(fits).unwrap_or(usize::MAX));
    if batch < requested {
        tracing::warn!(
            "--batch-size {requested} -> {batch}: {requested} KV caches at their longest \
             ({:.2} GiB each) would not fit in the {:.2} GiB available",
            per_sequence as f64 / GIB,
            available as f64 / GIB
        );
    }
    Ok(batch)
}

const MAX_SAMPLES: usize = 1 << 16;

const GIB: f64 = (1u64 << 30) as f64;

fn check_options(opts: &EvalOptions) -> anyhow::Result<()> {
    if opts.samples == 0 {
        bail!("--samples must be at least 1");
    }
    if opts.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // Either would finish at once having evaluated nothing, yet print a table.
    if opts.max_new_tokens == 0 {
        bail!("max_new_tokens must be at least 1");
    }
    if opts.limit == Some(0) {
        bail!("limit must be at least 1 (leave it out for every problem)");
    }
    // Every (problem, sample) is a job held in memory; pass@k estimates use far fewer.
    if opts.samples > MAX_SAMPLES {
        bail!(
            "--samples {} is more than {MAX_SAMPLES} responses per problem",
            opts.samples
        );
    }
    if opts.benchmarks.is_empty() && opts.files.is_empty() {
        bail!("no benchmark to run");
    }
    if opts.device.is_cpu() && matches!(opts.dtype, DType::BF16 | DType::F16) {
        bail!(
            "dtype {:?} is not supported on the CPU; use f32 (or f64)",
            opts.dtype
        );
    }
    if opts.temperature == 0.0 && opts.samples > 1 {
        tracing::warn!(
            "{} samples at temperature 0 are {} identical greedy responses",
            opts.samples,
            opts.samples
        );
    }
    Ok(())
}

pub(crate) struct Job<'a> {
    pub(crate) problem: &'a Problem,
    pub(crate) sample: usize,
    pub(crate) prompt: Vec<u32>,
    /// Where an interrupted run left it (saved from this prompt).
    pub(crate) from: Option<Saved>,
}

impl Job<'_> {
    fn key(&self) -> (String, String, usize) {
        (
            self.problem.benchmark.clone(),
            self.problem.id.clone(),
            self.sample,
        )
    }
}

/// Runs the evaluation (see the module documentation) and returns its summary.
pub fn run(opts: &EvalOptions) -> anyhow::Result<Summary> {
    let summary = run_on(opts, &limo_dist::SoloComm)?;
    Ok(summary.expect("rank 0 reports"))
}

/// [`run`] as rank `comm.rank()` of a data-parallel evaluation (module `ranks`): the summary
/// on rank 0, `None` on the others.
pub fn run_on(opts: &EvalOptions, comm: &dyn Communicator) -> anyhow::Result<Option<Summary>> {
    check_options(opts)?;
    let config_path = opts.model_dir.join("config.json");
    // is_file says false for a file it may not look at: say why.
    if let Err(e) = std::fs::metadata(&config_path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            bail!("model {}: {e}", config_path.display());
        }
    }
    if !config_path.is_file() {
        bail!(
            "model {}: no config.json (expected a Hugging Face model directory)",
            opts.model_dir.display()
        );
    }
    let problems = load_problems(opts)?;
    let tokenizer_path = opts
        .tokenizer
        .clone()
        .unwrap_or_else(|| opts.model_dir.clone());
    let tokenizer = ChatTokenizer::from_path(&tokenizer_path)?;
    let dir = &opts.out_dir;
    if dir.exists() && !dir.is_dir() {
        bail!(
            "{}: a file, not a directory (results.jsonl and summary.json go in a directory)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (rank, world) = (comm.rank(), comm.world_size());
    // A second evaluation into this directory would append to the same files.
    let _lock = match rank {
        0 => limo_dist::lock::lock_dir(dir, "evaluating into this directory")?,
        _ => None,
    };
    // Rank 0 settles the directory (run.json; the parts and temporary files a stopped run
    // left) before any rank reads it, and every rank has read it before any writes.
    if rank == 0 {
        crate::atomic::remove_leftover_temps(dir)?;
        checks::check_same_run(opts, &tokenizer_path)?;
        ranks::clear_marks(dir)?;
        ranks::fold_parts(dir)?;
        in_flight::carry_over(dir)?;
    }
    comm.barrier()?;
    if world > 1 {
        limo_dist::shared_dir::check(dir, "--out", comm, &candle_core::Device::Cpu)?;
    }
    if rank != 0 {
        checks::check_same_run(opts, &tokenizer_path)?;
    }
    let previous = read_results(&dir.join(RESULTS_FILE))?;
    let mut saved = in_flight::read_all(dir)?;
    comm.barrier()?;
    checks::check_same_problems(&previous, &problems, &dir.join(RESULTS_FILE))?;
    let done: HashSet<(String, String, usize)> = previous.iter().map(ResultRecord::key).collect();

    // Every (problem, sample) not yet done, in a fixed order, on every rank: each takes the
    // next unclaimed one when its batch has room (module ranks).
    let mut wanted: HashSet<(String, String, usize)> = HashSet::new();
    let mut jobs = Vec::new();
    for problem in problems.iter().flatten() {
        for sample in 0..opts.samples {
            let key = (problem.benchmark.clone(), problem.id.clone(), sample);
            if !wanted.insert(key.clone()) {
                bail!(
                    "benchmark {}: problem id {:?} appears twice",
                    problem.benchmark,
                    problem.id
                );
            }
            if done.contains(&key) {
                continue;
            }
            let prompt = prompt_ids(&tokenizer, opts.system_prompt.as_deref(), &problem.question)?;
            let from = saved.remove(&key).filter(|s| {
                let same = s.continues(&prompt);
                if !same && rank == 0 {
                    tracing::warn!(
                        "{}: {} {:?} sample {}: the prompt changed since it was saved; \
                         generating it from the start",
                        dir.display(),
                        s.benchmark,
                        s.id,
                        s.sample
                    );
                }
                same
            });
            jobs.push(Job {
                problem,
                sample,
                prompt,
                from,
            });
        }
    }
    let resumed = wanted.len() - jobs.len();

    let started = Instant::now();
    let files = RankFiles {
        results: ranks::results_part(dir, rank, world),
        in_flight: in_flight::own_path(dir, rank, world),
        claims: (world > 1).then(|| ranks::Claims::new(dir)),
    };
    let progress = Progress {
        done: resumed,
        total: wanted.len(),
    };
    let tally = match jobs.is_empty() {
        true => Ok(ranks::Tally::default()),
        false => generate_jobs(opts, &tokenizer, &jobs, (&files, world), progress),
    };
    let tally = match tally {
        Err(e) if rank != 0 => {
            ranks::mark_failed(dir, rank, &e);
            return Err(e);
        }
        t => t?,
    };
    if rank != 0 {
        // Its in-flight file goes with the others' once rank 0 has every result.
        ranks::mark_done(dir, rank, &tally)?;
        return Ok(None);
    }
    let tallies = ranks::wait_for_ranks(dir, world)?;
    let seconds = started.elapsed().as_secs_f64();
    ranks::fold_parts(dir)?;
    // Every response asked for is in results.jsonl: only other selections' saved ones stay.
    in_flight::keep_unasked(dir, |key| wanted.contains(key))?;
    ranks::clear_marks(dir)?;
    let total = tallies.iter().fold(tally, |a, b| ranks::Tally {
        generated: a.generated + b.generated,
        continued: a.continued + b.continued,
        tokens: a.tokens + b.tokens,
    });

    let mut records = read_results(&dir.join(RESULTS_FILE))?;
    let mut seen = HashSet::new();
    records.retain(|r| seen.insert(r.key()));
    let all = records.len();
    records.retain(|r| wanted.contains(&r.key()));
    let order: Vec<String> = problems
        .iter()
        .filter_map(|p| p.first().map(|p| p.benchmark.clone()))
        .collect();
    let summary = Summary {
        model: opts.model_dir.display().to_string(),
        dtype: format!("{:?}", opts.dtype).to_lowercase(),
        max_new_tokens: opts.max_new_tokens,
        temperature: opts.temperature,
        top_p: opts.top_p,
        samples: opts.samples,
        seed: opts.seed,
        benchmarks: summarize(&records, &order),
        generated: total.generated,
        resumed,
        continued: total.continued,
        other_results: all - records.len(),
        seconds,
        throughput_tokens_per_s: if seconds > 0.0 {
            total.tokens as f64 / seconds
        } else {
            0.0
        },
    };
    write_summary(&dir.join(SUMMARY_FILE), &summary)?;
    Ok(Some(summary))
}

/// The files one rank writes.
struct RankFiles {
    results: PathBuf,
    in_flight: PathBuf,
    /// Of a run with several ranks: the jobs each has taken.
    claims: Option<ranks::Claims>,
}

/// Responses of the run done before this invocation, of all it asks for (for the stop message).
#[derive(Clone, Copy)]
struct Progress {
    done: usize,
    total: usize,
}

/// Generates `jobs` (continuous batching), appending each finished response to
/// `files.results` and saving the unfinished ones to `files.in_flight` every
/// `opts.save_every` and on a stop signal.
fn generate_jobs(
    opts: &EvalOptions,
    tokenizer: &ChatTokenizer,
    jobs: &[Job],
    (files, world): (&RankFiles, usize),
    progress: Progress,
) -> anyhow::Result<ranks::Tally> {
    let in_model = || format!("model {}", opts.model_dir.display());
    // Checked before the weights load: seconds, where loading a 32B model takes minutes.
    let config =
        Qwen2Config::from_file(&opts.model_dir.join("config.json")).with_context(in_model)?;
    let stops = checks::stop_ids(&config, &opts.model_dir, tokenizer)?;
    checks::check_jobs(opts, &config, &stops, jobs)?;
    let (config, weights) =
        load_checkpoint(&opts.model_dir, opts.dtype, &opts.device).with_context(in_model)?;
    let sampling = Sampling {
        temperature: opts.temperature,
        top_p: opts.top_p,
        seed: opts.seed,
    };
    let mut generator = Generator::new(&config, &weights, opts.max_new_tokens, &stops, sampling)?;
    let longest = jobs.iter().map(|j| j.prompt.len()).max().unwrap_or(0);
    let batch_size = fit_batch(
        opts.batch_size,
        kv_cache_bytes(
            &config,
            weights.embed.dtype(),
            longest.saturating_add(opts.max_new_tokens),
        ),
        limo_ops::available_memory(&opts.device),
    )?;
    let batch_size = ranks::rank_batch(batch_size, jobs.len(), world);
    let results_path = &files.results;
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(results_path)
        .with_context(|| format!("{}", results_path.display()))?;
    // The bar counts the responses this rank finished and the jobs other ranks took.
    let bar = progress_bar(opts.progress, jobs.len());
    let mut tally = ranks::Tally::default();
    let mut taken = 0;
    // Tokens of finished responses, and those of them generated before a restart.
    let (mut tokens, mut continued_tokens) = (0, 0);
    let mut next = 0;
    // When each job entered the batch, less the seconds it had taken before a restart.
    let mut entered: Vec<Option<Instant>> = vec![None; jobs.len()];
    let stop = match opts.stop_on_signals {
        true => Some(limo_dist::stop::StopOnSignals::install().context("signal handlers")?),
        false => None,
    };
    let (started, mut last_save) = (Instant::now(), Instant::now());
    while next < jobs.len() || !generator.is_empty() {
        while next < jobs.len() && generator.in_flight() < batch_size {
            let job = &jobs[next];
            if let Some(claims) = &files.claims {
                if !claims.take(next)? {
                    bar.inc(1);
                    next += 1;
                    continue;
                }
            }
            taken += 1;
            let mut entry = Instant::now();
            match &job.from {
                Some(saved) => {
                    tally.continued += 1;
                    continued_tokens += saved.ids.len();
                    generator.add_continued(next, job.prompt.clone(), saved.continuation())?;
                    // read_all checked that seconds is a duration.
                    let taken = Duration::try_from_secs_f64(saved.seconds).unwrap_or_default();
                    entry = entry.checked_sub(taken).unwrap_or(entry);
                }
                None => {
                    let key = format!(
                        "{}\0{}\0{}",
                        job.problem.benchmark, job.problem.id, job.sample
                    );
                    generator.add(
                        next,
                        job.prompt.clone(),
                        derive_seed(opts.seed, key.as_bytes()),
                    )?
                }
            }
            entered[next] = Some(entry);
            next += 1;
        }
        let finished = generator.step().map_err(|e| match generator.non_finite() {
            Some(key) => not_finite(&jobs[key], &opts.model_dir),
            None => e.into(),
        })?;
        for (key, generated) in finished {
            let job = &jobs[key];
            let response = tokenizer.decode(&generated.ids)?;
            let extracted = extract_answer(&response);
            let correct = extracted
                .as_deref()
                .is_some_and(|e| is_equivalent(e, &job.problem.answer));
            let record = ResultRecord {
                id: job.problem.id.clone(),
                benchmark: job.problem.benchmark.clone(),
                sample: job.sample,
                question: job.problem.question.clone(),
                response,
                extracted,
                reference: job.problem.answer.clone(),
                correct,
                tokens: generated.ids.len(),
                stopped: generated.stopped,
                seconds: entered[key].expect("entered").elapsed().as_secs_f64(),
            };
            let mut line = serde_json::to_string(&record)?;
            line.push('\n');
            out.write_all(line.as_bytes())
                .and_then(|_| out.flush())
                .with_context(|| format!("writing {}", results_path.display()))?;
            tally.generated += 1;
            tokens += record.tokens;
            bar.inc(1);
        }
        let signal = stop.as_ref().and_then(|s| s.requested());
        if signal.is_some() || last_save.elapsed() >= opts.save_every {
            let sequences: Vec<Saved> = generator
                .in_progress()
                .into_iter()
                .map(|(key, c)| {
                    let seconds = entered[key].map_or(0.0, |t| t.elapsed().as_secs_f64());
                    Saved::new(&jobs[key].key(), &jobs[key].prompt, c, seconds)
                })
                .collect();
            let n = sequences.len();
            in_flight::write(&files.in_flight, sequences)?;
            last_save = Instant::now();
            // Without the bar (a log file, a batch job), each save says how far the run is.
            if !opts.progress {
                let share = match files.claims {
                    Some(_) => format!("the {taken} it took so far"),
                    None => jobs.len().to_string(),
                };
                tracing::info!(
                    "eval: {} of {} responses done, {n} in flight saved; this process: {} of \
                     {share} in {:.0} s",
                    progress.done + tally.generated,
                    progress.total,
                    tally.generated,
                    started.elapsed().as_secs_f64()
                );
            }
            if let Some(signal) = signal {
                bar.finish_and_clear();
                return Err(Stopped {
                    signal,
                    done: progress.done + tally.generated,
                    total: progress.total,
                    saved: n,
                    path: files.in_flight.clone(),
                }
                .into());
            }
        }
    }
    bar.finish_and_clear();
    // The same file on every run of this rank and world: sync it before saying it is done.
    out.sync_all()
        .with_context(|| format!("writing {}", results_path.display()))?;
    tally.tokens = tokens - continued_tokens;
    Ok(tally)
}

/// The error for a job whose next token would come from logits with a NaN or infinity in
/// them (weights gone NaN, an overflow in a low precision).
fn not_finite(job: &Job, model: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} problem {:?} sample {}: the model's logits are not finite (NaN or infinity); check \
         the weights of {}",
        job.problem.benchmark,
        job.problem.id,
        job.sample,
        model.display()
    )
}

fn progress_bar(show: bool, len: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} responses [{elapsed} < {eta}]",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_shrinks_to_the_kv_caches_that_fit() {
        const G: u64 = 1 << 30;
        // Unknown memory: as asked. Room for all: as asked.
        assert_eq!(fit_batch(32, G, None).unwrap(), 32);
        assert_eq!(fit_batch(32, G, Some(100 * G)).unwrap(), 32);
        // 90% of 10 GiB holds 9 caches of 1 GiB.
        assert_eq!(fit_batch(32, G, Some(10 * G)).unwrap(), 9);
        assert_eq!(fit_batch(4, G, Some(10 * G)).unwrap(), 4);
        let err = fit_batch(32, 20 * G, Some(10 * G)).unwrap_err().to_string();
        assert!(
            err.contains("20.00 GiB") && err.contains("10.00 GiB"),
            "{err}"
        );
    }
}
