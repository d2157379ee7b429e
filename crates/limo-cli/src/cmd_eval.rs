//! `limo eval`: LIMO's benchmarks on a model (limo_eval::run), and `limo eval grade`: the
//! grader alone on prediction/reference pairs.

use crate::out::{self, outln};
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use limo_data::config::{Columns, Format};
use limo_eval::benchmarks::ConversationRows;
use limo_eval::benchmarks::NAMES;
use limo_eval::run::{run_on, EvalOptions, UserBenchmark};

use crate::cmd_doctor::DeviceArgs;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: Option<EvalCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Grade `{"prediction", "reference"}` JSON lines; writes each with its verdict.
    Grade(GradeArgs),
}

#[derive(Args)]
struct GradeArgs {
    /// JSONL of {"prediction", "reference"} (a prediction with \boxed{} is extracted first).
    #[arg(long)]
    pairs: PathBuf,
    /// Output JSONL: each line with "extracted" and "correct" added.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// Hugging Face model directory (an export of `limo train`, or any Qwen2 checkpoint), or a
    /// Hub model id found in the Hub cache (HF_HOME, HF_HUB_CACHE; limo downloads no models).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Benchmarks, comma-separated, any case (default, or `all`: all nine): aime, math500,
    /// amc23, cn_math_2024, gaokao, grade_school_math, kaoyan, minerva, olympiadbench.
    #[arg(long, value_delimiter = ',')]
    benchmarks: Vec<String>,
    /// Your own benchmark (instead of --benchmarks): a .jsonl, .json or .parquet file, a folder
    /// of them, or a Hub dataset id like GAIR/LIMO, resolved as `limo train` resolves data. A
    /// benchmark is named after its file, or its folder for a split's file: LIMO's
    /// eval/data/gpqa/test.jsonl (GPQA, not embedded) is gpqa; LIMO's eval/data folder gives
    /// its ten sets, one benchmark per subfolder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Format of --data's rows, named as `limo train`'s data.format: limo (a question and an
    /// answer field; the default), alpaca (instruction [+ input] is the question, output the
    /// reference) or messages (the last user message is the question, the last assistant
    /// message the reference: its last \boxed{} when it has one).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Fields of --data: question and answer (and optionally id), e.g. question=problem. With
    /// --format alpaca, question and answer name the instruction and output columns; alpaca and
    /// messages also take limo train's column keys (input, messages, role, content, ...).
    #[arg(long = "field", value_name = "ROLE=NAME")]
    fields: Vec<String>,
    /// tokenizer.json, its folder, or builtin:qwen2.5 (default: the model directory's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The first N problems of each benchmark.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
    #[arg(long, default_value_t = 32768)]
    max_new_tokens: usize,
    /// 0 is greedy (LIMO's setting). The model's generation_config.json gives only stop ids; its
    /// sampling settings are not read.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Responses per problem (pass@k up to K; at most 65,536).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sequences decoded together (fewer, with a warning, when that many KV caches at prompt +
    /// max-new-tokens would not fit in the device's free memory).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// System prompt (default: LIMO's "Please reason step by step, ..."). Prompts are rendered
    /// with limo's Qwen2.5 chat template, the one training uses; a model's own
    /// chat_template(.jinja) is not read.
    #[arg(long)]
    system: Option<String>,
    /// Output directory: results.jsonl, summary.json; a rerun resumes there. SIGTERM, SIGINT,
    /// SIGUSR1 or SIGHUP saves the unfinished responses (in-flight.json) and exits 128 + the
    /// signal; the same command then continues them where they were. Under `limo launch` each rank
    /// generates its share of the problems on the GPU of its LOCAL_RANK (docs/LAUNCH.md). While
    /// one evaluation runs into a directory (`OUT/.lock`), a second is refused after 10 s.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds between saves of the unfinished responses, so a crash loses at most this much
    /// of their generation (0: after every token). Without a terminal (no progress bar) each
    /// save also logs how many responses are done.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    save_every: f64,
}

pub fn run_cmd(args: EvalArgs) -> anyhow::Result<()> {
    match args.command {
        Some(EvalCommand::Grade(g)) => {
            let (correct, total) = limo_eval::grader::grade_pairs(&g.pairs, &g.out)?;
            outln!(
                "{correct} of {total} correct; verdicts in {}",
                g.out.display()
            )?;
            Ok(())
        }
        None => evaluate(args.run),
    }
}

fn evaluate(a: RunArgs) -> anyhow::Result<()> {
    let Some(model) = a.model else {
        bail!("--model is required (or use `limo eval grade`)");
    };
    let Some(out) = a.out else {
        bail!("--out is required: results.jsonl and summary.json go there");
    };
    let (model, note) = limo_data::hub::resolve_model(&model, &limo_data::HubSettings::from_env());
    match note {
        Some(note) if !model.join("config.json").exists() => bail!("model {note}"),
        Some(note) => tracing::info!("model: {note}"),
        None => {}
    }
    let mut opts = EvalOptions::new(model, out);
    opts.dtype = a.device.dtype()?;
    // Under `limo launch` (or torchrun, Slurm): one rank of a data-parallel evaluation, on the
    // GPU of its LOCAL_RANK.
    let env = limo_dist::DistEnv::from_env()?;
    opts.device = match &env {
        Some(env) if a.device.cuda() => crate::cmd_doctor::open_gpu(env.gpu()?)?,
        _ => a.device.open()?,
    };
    match (&a.data, a.benchmarks.is_empty()) {
        (Some(_), false) => bail!("give --benchmarks or --data, not both"),
        (Some(path), true) => {
            opts.benchmarks.clear();
            opts.files
                .push(user_benchmark(path, a.format.as_deref(), &a.fields)?);
        }
        (None, false) => {
            // "aime, math500" and "AIME" as the names; `all` as no flag.
            let names: Vec<String> = (a.benchmarks.iter())
                .map(|b| b.trim().to_lowercase())
                .filter(|b| !b.is_empty())
                .collect();
            if names.is_empty() {
                bail!("--benchmarks: no benchmark named (leave it out, or `all`, for all nine)");
            }
            if !names.iter().any(|b| b == "all") {
                opts.benchmarks = names;
            }
        }
        (None, true) => {}
    }
    if a.data.is_none() && !a.fields.is_empty() {
        bail!("--field applies to --data");
    }
    if a.data.is_none() && a.format.is_some() {
        bail!("--format applies to --data");
    }
    if let Some(unknown) = opts.benchmarks.iter().find(|b| !known(b)) {
        bail!(
            "--benchmarks: unknown benchmark {unknown:?}; known: {}",
            NAMES.join(", ")
        );
    }
    opts.tokenizer = a.tokenizer;
    opts.limit = a.limit;
    opts.max_new_tokens = a.max_new_tokens;
    opts.temperature = a.temperature;
    opts.top_p = a.top_p;
    opts.samples = a.samples;
    opts.seed = a.seed;
    opts.batch_size = a.batch_size;
    if let Some(system) = a.system {
        opts.system_prompt = Some(system);
    }
    opts.progress = std::io::stderr().is_terminal();
    opts.save_every = std::time::Duration::try_from_secs_f64(a.save_every).map_err(|_| {
        anyhow::anyhow!(
            "--save-every {:?}: give seconds, from 0 to {:e}",
            a.save_every,
            std::time::Duration::MAX.as_secs_f64()
        )
    })?;
    opts.stop_on_signals = true;
    let comm = match env {
        Some(env) => {
            let timeout = limo_dist::env::timeout_from_env(limo_dist::env::DEFAULT_TIMEOUT)?;
            limo_dist::connect(&env, timeout)?
        }
        None => Box::new(limo_dist::SoloComm),
    };
    if let Some(summary) = run_on(&opts, comm.as_ref())? {
        out::print(&limo_eval::run::format_table(&summary))?;
    }
    Ok(())
}

/// A built-in benchmark name (limo_eval also takes the file stems "math" and "amc").
fn known(name: &str) -> bool {
    limo_eval::benchmarks::file_name(name).is_ok()
}

/// The format of `--format` (default limo): a format of limo's training data that has a
/// question and an answer.
fn data_format(name: Option<&str>) -> anyhow::Result<Format> {
    let Some(name) = name else {
        return Ok(Format::Limo);
    };
    match name.parse::<Format>() {
        Ok(Format::Tokenized) => bail!(
            "--format tokenized: tokenized rows carry no question text to prompt with; use limo, \
             alpaca or messages"
        ),
        Ok(format) => Ok(format),
        Err(_) => bail!("--format {name}: unknown format (expected limo, alpaca or messages)"),
    }
}

/// `--data FILE [--format F] --field question=problem --field answer=answer [--field id=id]`.
fn user_benchmark(
    path: &std::path::Path,
    format: Option<&str>,
    fields: &[String],
) -> anyhow::Result<UserBenchmark> {
    let format = data_format(format)?;
    let (mut question, mut answer, mut id) = (None, None, None);
    let mut columns = Columns::default();
    for f in fields {
        let (role, name) = f
            .split_once('=')
            .with_context(|| format!("--field {f}: expected ROLE=NAME"))?;
        if name.is_empty() {
            bail!("--field {f}: empty name");
        }
        match (role, format) {
            ("id", _) => id = Some(name.to_string()),
            ("question", Format::Limo | Format::Alpaca) => question = Some(name.to_string()),
            ("answer", Format::Limo | Format::Alpaca) => answer = Some(name.to_string()),
            ("question" | "answer", _) => bail!(
                "--field {role}=...: with --format messages the question and answer come from \
                 the messages list (map it with --field messages=NAME)"
            ),
            (_, Format::Limo) => {
                bail!("--field {role}=...: the roles are question, answer and id")
            }
            (key, _) => columns
                .set(key, name)
                .map_err(|e| anyhow::anyhow!("--field {f}: {e}"))?,
        }
    }
    let conversation = match format {
        Format::Limo => None,
        _ => {
            if let Some(q) = &question {
                columns.instruction = q.clone();
            }
            if let Some(a) = &answer {
                columns.output = a.clone();
            }
            Some(ConversationRows { format, columns })
        }
    };
    Ok(UserBenchmark {
        path: path.to_path_buf(),
        question_field: question.unwrap_or_else(|| "question".into()),
        answer_field: answer.unwrap_or_else(|| "answer".into()),
        id_field: id,
        conversation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn formats_and_fields() {
        let p = std::path::Path::new("x.jsonl");
        let limo = user_benchmark(p, None, &fields(&["question=problem", "id=k"])).unwrap();
        assert_eq!(
            (limo.question_field.as_str(), limo.answer_field.as_str()),
            ("problem", "answer")
        );
        assert!(limo.conversation.is_none() && limo.id_field.as_deref() == Some("k"));
        let alpaca = user_benchmark(p, Some("alpaca"), &fields(&["answer=response"])).unwrap();
        let c = alpaca.conversation.unwrap();
        assert_eq!(c.format, Format::Alpaca);
        assert_eq!(
            (c.columns.instruction.as_str(), c.columns.output.as_str()),
            ("instruction", "response")
        );
        let msgs =
            user_benchmark(p, Some("messages"), &fields(&["messages=conversations"])).unwrap();
        assert_eq!(msgs.conversation.unwrap().columns.messages, "conversations");

        let err = |format: Option<&str>, f: &[&str]| {
            user_benchmark(p, format, &fields(f))
                .unwrap_err()
                .to_string()
        };
        assert!(err(Some("sharegpt"), &[]).contains("--format sharegpt: unknown format"));
        assert!(err(Some("tokenized"), &[]).contains("no question text"));
        assert!(err(Some("messages"), &["question=q"]).contains("messages list"));
        assert!(err(None, &["messages=m"]).contains("the roles are"));
        assert!(err(Some("alpaca"), &["bogus=x"]).contains("unknown column key"));
        // Each is one line: main prints it after "error: ".
        assert!(!err(Some("tokenized"), &[]).contains('\n'));
    }
}
