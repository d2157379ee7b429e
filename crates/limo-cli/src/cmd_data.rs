//! `limo data dump` and `limo data stats`: the dataset exactly as the trainer will see it.

use crate::out::{self, outln};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use limo_data::{
    apply_cutoff, length_stats, pack, tokenize_split_untruncated, ChatTokenizer, DataConfig,
    Example, Format, HubSettings, LengthStats, LoadReport, Overlong, DEFAULT_CUTOFF_LEN,
};
use limo_eval::AtomicFile;
use limo_train::source::BUILTIN_ARITHMETIC;
use limo_train::{synthetic, TrainConfig};
use serde::Serialize;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write one {"input_ids": [...], "labels": [...]} JSON line per example (labels: -100 = not learned).
    Dump(DumpArgs),
    /// Examples, token-length percentiles and histogram, share of target tokens, how many exceed the cutoff.
    Stats(StatsArgs),
}

#[derive(Args)]
pub struct DataArgs {
    /// A run config (as `limo train --config` reads it): its [data] section (data.also,
    /// val_size, cutoff, columns, packing...) and its tokenizer, instead of the flags below.
    /// The rows data.val_size holds out are counted apart, not dumped.
    #[arg(long, conflicts_with_all = [
        "data", "format", "tokenizer", "system", "qwen_default_system", "cutoff_len",
        "drop_overlong", "truncate_pairs", "limit", "columns", "on_bad_row",
    ])]
    config: Option<PathBuf>,
    /// With --config: override a field, e.g. --set data.cutoff_len=4096 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE", requires = "config")]
    overrides: Vec<String>,
    /// A .json/.jsonl/.parquet file, a folder of them, a Hub dataset id such as GAIR/LIMO
    /// (HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE are respected), or builtin:arithmetic (the
    /// embedded default's generated problems, seed 42).
    #[arg(long, required_unless_present = "config")]
    data: Option<String>,
    /// Record format: limo (question, solution[, answer]), messages (role/content list) or
    /// alpaca (instruction, input, output).
    #[arg(long, value_parser = ["limo", "messages", "alpaca"], required_unless_present = "config")]
    format: Option<String>,
    /// tokenizer.json, a folder holding one, or builtin:qwen2.5 (compiled into limo).
    #[arg(long, required_unless_present = "config")]
    tokenizer: Option<PathBuf>,
    /// System prompt for examples without one (default: LIMO's "Please reason step by step, ...").
    #[arg(long, conflicts_with = "qwen_default_system")]
    system: Option<String>,
    /// Use the Qwen2.5 template's own default system prompt ("You are Qwen, ...") instead.
    #[arg(long)]
    qwen_default_system: bool,
    /// Longest example in tokens; longer ones are truncated (or dropped with --drop-overlong).
    #[arg(long, default_value_t = DEFAULT_CUTOFF_LEN)]
    cutoff_len: usize,
    /// Drop examples longer than --cutoff-len instead of truncating them.
    #[arg(long, conflicts_with = "truncate_pairs")]
    drop_overlong: bool,
    /// Cut examples longer than --cutoff-len as LLaMA-Factory does (data.overlong =
    /// "truncate_pairs": each prompt/response pair in turn, a short response kept whole).
    #[arg(long)]
    truncate_pairs: bool,
    /// Read at most N examples.
    #[arg(long)]
    limit: Option<usize>,
    /// Map a field to a column of the data, e.g. --column question=problem (repeatable).
    /// Keys: question, solution, answer, messages, role, content, instruction, input, output, system.
    #[arg(long = "column", value_name = "KEY=NAME")]
    columns: Vec<String>,
    /// What to do with a malformed row: fail (default) or skip and count it.
    #[arg(long, value_parser = ["fail", "skip"], default_value = "fail")]
    on_bad_row: String,
}

#[derive(Args)]
pub struct DumpArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output JSONL file.
    #[arg(long)]
    out: PathBuf,
    /// Write packed rows (input_ids, labels, position_ids) of up to --cutoff-len tokens instead.
    #[arg(long)]
    packing: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Print the statistics as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Dump(args) => dump(args),
        DataCommand::Stats(args) => stats(args),
    }
}

/// What `limo data` reads: the data settings, the tokenizer, the split's seed, and the folder
/// holding generated problems (builtin:arithmetic) while they are read.
struct Inputs {
    data: DataConfig,
    tokenizer: PathBuf,
    seed: u64,
    /// Kept for its lifetime: the folder is deleted when it drops.
    generated: Option<tempfile::TempDir>,
}

impl DataArgs {
    fn inputs(&self) -> anyhow::Result<Inputs> {
        // clap's `requires` does not hold here (an arg other args are required unless).
        if let (None, Some(first)) = (&self.config, self.overrides.first()) {
            bail!("--set {first}: --set overrides a field of --config FILE; without one, use the flags (--limit, --cutoff-len, ...)");
        }
        let (mut data, tokenizer, seed) = match &self.config {
            Some(file) => {
                let config = TrainConfig::from_file(file, &self.overrides)?;
                let tokenizer = config_tokenizer(&config, file)?;
                (config.data, tokenizer, config.train.seed)
            }
            None => (
                self.config()?,
                self.tokenizer.clone().expect("clap requires it"),
                42,
            ),
        };
        if data.format == Format::Tokenized {
            bail!(
                "data.format = \"tokenized\": those rows are token ids already; limo data reads \
                 the text formats (limo, messages, alpaca)"
            );
        }
        let generated = if data.path == BUILTIN_ARITHMETIC {
            let dir = tempfile::tempdir().context("a temporary folder for builtin:arithmetic")?;
            let path = dir.path().join("arithmetic-train.jsonl");
            let problems = synthetic::problems(seed, synthetic::TRAIN_PROBLEMS);
            synthetic::write_jsonl(&path, &problems)?;
            data.path = path.display().to_string();
            Some(dir)
        } else {
            None
        };
        Ok(Inputs {
            data,
            tokenizer,
            seed,
            generated,
        })
    }

    fn config(&self) -> anyhow::Result<DataConfig> {
        let (data, format) = (self.data.clone(), self.format.as_deref());
        let mut config = DataConfig::new(
            data.expect("clap requires it"),
            format.expect("clap requires it").parse()?,
        );
        for mapping in &self.columns {
            let Some((key, name)) = mapping.split_once('=') else {
                bail!("--column expects KEY=NAME, got `{mapping}`");
            };
            config.columns.set(key.trim(), name.trim())?;
        }
        if self.qwen_default_system {
            config.system = None;
        } else if let Some(system) = &self.system {
            config.system = Some(system.clone());
        }
        config.cutoff_len = self.cutoff_len;
        config.overlong = match (self.drop_overlong, self.truncate_pairs) {
            (true, _) => Overlong::Drop,
            (false, true) => Overlong::TruncatePairs,
            (false, false) => Overlong::Truncate,
        };
        config.limit = self.limit;
        config.on_bad_row =
            serde_json::from_value(serde_json::Value::String(self.on_bad_row.clone()))?;
        config.validate()?;
        Ok(config)
    }
}

/// The tokenizer `limo train` would use for `config`: model.tokenizer, else the model
/// directory's tokenizer.json.
fn config_tokenizer(config: &TrainConfig, file: &Path) -> anyhow::Result<PathBuf> {
    if let Some(tokenizer) = &config.model.tokenizer {
        return Ok(PathBuf::from(tokenizer));
    }
    match config.model_dir() {
        Some((dir, _)) if dir.join("tokenizer.json").exists() => Ok(dir.join("tokenizer.json")),
        _ => bail!(
            "{}: no tokenizer: set model.tokenizer (a tokenizer.json, or builtin:qwen2.5), or \
             give a model.path holding tokenizer.json",
            file.display()
        ),
    }
}

impl Inputs {
    /// Full-length training examples, how many held-out ones validation keeps (after the
    /// cutoff, as `limo train` counts them), and the read report; the time logged.
    fn tokenize(&self) -> anyhow::Result<(Vec<Example>, usize, LoadReport)> {
        let config = &self.data;
        let started = Instant::now();
        let tokenizer = ChatTokenizer::from_path(&self.tokenizer)?;
        let loaded = Instant::now();
        let (examples, held_out, report) =
            tokenize_split_untruncated(config, &tokenizer, &HubSettings::from_env(), self.seed)?;
        let tokens: usize = examples.iter().map(Example::len).sum();
        tracing::info!(
            "tokenizer loaded in {:.3} s; read and tokenized {} examples ({} tokens) in {:.3} s",
            (loaded - started).as_secs_f64(),
            examples.len(),
            tokens,
            loaded.elapsed().as_secs_f64()
        );
        if report.skipped > 0 {
            tracing::warn!(
                "skipped {} malformed rows; first: {}",
                report.skipped,
                report.skipped_examples[0]
            );
        }
        let (held_out, _) = apply_cutoff(held_out, config.cutoff_len, config.overlong);
        Ok((examples, held_out.len(), report))
    }
}

#[derive(Serialize)]
struct DumpRow<'a> {
    input_ids: &'a [u32],
    labels: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    position_ids: Option<&'a [u32]>,
}

fn dump(args: DumpArgs) -> anyhow::Result<()> {
    let inputs = args.data.inputs()?;
    let config = &inputs.data;
    let (examples, held_out, report) = inputs.tokenize()?;
    // Writing over a data file would replace the dataset with its dump.
    let out_file = args.out.canonicalize().ok();
    if let Some(file) = (report.files.iter()).find(|f| f.canonicalize().ok() == out_file) {
        bail!(
            "--out {}: that is the data file {}; write the dump elsewhere",
            args.out.display(),
            file.display()
        );
    }
    let (examples, cutoff) = apply_cutoff(examples, config.cutoff_len, config.overlong);
    // An empty dump is a dataset `limo train` refuses: say so now, as it would.
    if examples.is_empty() {
        bail!(
            "no examples left after the cutoff of {} tokens ({} over it, {} without a target \
             token); nothing written to {}",
            config.cutoff_len,
            cutoff.over_cutoff,
            cutoff.dropped_no_target,
            args.out.display()
        );
    }
    let mut out = create(&args.out)?;
    let write_error = || format!("cannot write {}", args.out.display());
    let written = if args.packing || config.packing {
        let rows = pack(&examples, config.cutoff_len)?;
        for row in &rows {
            let line = DumpRow {
                input_ids: &row.input_ids,
                labels: &row.labels,
                position_ids: Some(&row.position_ids),
            };
            serde_json::to_writer(&mut out, &line).with_context(write_error)?;
            out.write_all(b"\n").with_context(write_error)?;
        }
        rows.len()
    } else {
        for example in &examples {
            let line = DumpRow {
                input_ids: &example.input_ids,
                labels: &example.labels,
                position_ids: None,
            };
            serde_json::to_writer(&mut out, &line).with_context(write_error)?;
            out.write_all(b"\n").with_context(write_error)?;
        }
        examples.len()
    };
    out.commit().with_context(write_error)?;
    let held_out = match held_out {
        0 => String::new(),
        n => format!("; {n} held out by data.val_size, not written"),
    };
    eprintln!(
        "wrote {written} {} to {} ({} examples; {} over the cutoff of {}: {} truncated, {} dropped{held_out})",
        if args.packing || config.packing { "packed rows" } else { "examples" },
        args.out.display(),
        examples.len(),
        cutoff.over_cutoff,
        config.cutoff_len,
        cutoff.truncated,
        cutoff.dropped_overlong + cutoff.dropped_no_target,
    );
    Ok(())
}

/// The dump's file, written whole or not at all: a failed dump (a full disk) leaves the old
/// file, or none, rather than a part of one.
fn create(path: &Path) -> anyhow::Result<AtomicFile> {
    AtomicFile::create(path).with_context(|| format!("cannot create {}", path.display()))
}

#[derive(Serialize)]
struct StatsOutput {
    files: Vec<PathBuf>,
    rows: usize,
    skipped: usize,
    #[serde(flatten)]
    lengths: LengthStats,
    truncated: usize,
    dropped: usize,
    examples_after_cutoff: usize,
    /// Examples data.val_size holds out (with --config), counted apart from everything above.
    held_out: usize,
}

fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let inputs = args.data.inputs()?;
    let config = &inputs.data;
    let (examples, held_out, mut report) = inputs.tokenize()?;
    if inputs.generated.is_some() {
        let name = format!("{BUILTIN_ARITHMETIC} (generated, seed {})", inputs.seed);
        report.files = vec![PathBuf::from(name)];
    }
    let lengths = length_stats(&examples, config.cutoff_len);
    let (kept, cutoff) = apply_cutoff(examples, config.cutoff_len, config.overlong);
    let output = StatsOutput {
        files: report.files,
        rows: report.rows,
        skipped: report.skipped,
        lengths,
        truncated: cutoff.truncated,
        dropped: cutoff.dropped_overlong + cutoff.dropped_no_target,
        examples_after_cutoff: kept.len(),
        held_out,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&output)?)?;
    } else {
        out::print(&render_stats(&output))?;
    }
    Ok(())
}

fn render_stats(s: &StatsOutput) -> String {
    let l = &s.lengths;
    let mut text = String::new();
    let files: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
    text += &format!("files: {}\n", files.join(", "));
    text += &format!(
        "rows read: {}, skipped as malformed: {}\n",
        s.rows, s.skipped
    );
    text += &format!("examples: {}\n", l.examples);
    if s.held_out > 0 {
        text += &format!(
            "held out by data.val_size: {} examples (not counted below)\n",
            s.held_out
        );
    }
    text += &format!(
        "tokens: {} (min {}, mean {:.1}, max {})\n",
        l.total_tokens, l.min, l.mean, l.max
    );
    let percentiles: Vec<String> = l
        .percentiles
        .iter()
        .map(|(p, v)| format!("p{p} {v}"))
        .collect();
    text += &format!("length percentiles: {}\n", percentiles.join(", "));
    text += &format!(
        "target tokens: {} ({:.2}% of all tokens)\n",
        l.target_tokens,
        100.0 * l.target_share
    );
    text += &format!(
        "over cutoff_len {}: {} ({} truncated, {} dropped; {} examples remain)\n",
        l.cutoff_len, l.over_cutoff, s.truncated, s.dropped, s.examples_after_cutoff
    );
    text += "length histogram (tokens):\n";
    let widest = l
        .histogram
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(1)
        .max(1);
    for bin in &l.histogram {
        let bar = "#".repeat((bin.count * 40).div_ceil(widest));
        text += &format!(
            "  {:>6} - {:<6} {:>7}  {bar}\n",
            bin.from,
            bin.to - 1,
            bin.count
        );
    }
    text
}
