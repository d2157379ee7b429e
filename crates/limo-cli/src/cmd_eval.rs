//! `limo eval`: LIMO's benchmarks on a model (limo_eval::run), and `limo eval grade`: the
//! grader alone on prediction/reference pairs.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::{Args, Subcommand};
use limo_eval::benchmarks::NAMES;
use limo_eval::run::{run, EvalOptions, UserBenchmark};

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
    /// Hugging Face model directory (an export of `limo train`, or any Qwen2 checkpoint).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Benchmarks, comma-separated (default: all nine): aime, math500, amc23, cn_math_2024,
    /// gaokao, grade_school_math, kaoyan, minerva, olympiadbench.
    #[arg(long, value_delimiter = ',')]
    benchmarks: Vec<String>,
    /// Your own benchmark (instead of --benchmarks): a .jsonl, .json or .parquet file, a folder
    /// of them, or a Hub dataset id like GAIR/LIMO, resolved as `limo train` resolves data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Fields of --data: question and answer (and optionally id), e.g. question=problem.
    #[arg(long = "field", value_name = "ROLE=NAME")]
    fields: Vec<String>,
    /// tokenizer.json or its folder (default: the model directory's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The first N problems of each benchmark.
    #[arg(long)]
    limit: Option<usize>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// Compute dtype (default: bf16 on cuda, f32 on cpu).
    #[arg(long, value_parser = ["bf16", "f32", "f64"])]
    dtype: Option<String>,
    #[arg(long, default_value_t = 32768)]
    max_new_tokens: usize,
    /// 0 is greedy (LIMO's setting).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Responses per problem (pass@k up to K).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// System prompt (default: LIMO's "Please reason step by step, ...").
    #[arg(long)]
    system: Option<String>,
    /// Output directory: results.jsonl, summary.json; a rerun resumes there.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run_cmd(args: EvalArgs) -> anyhow::Result<()> {
    match args.command {
        Some(EvalCommand::Grade(g)) => {
            let (correct, total) = limo_eval::grader::grade_pairs(&g.pairs, &g.out)?;
            println!(
                "{correct} of {total} correct; verdicts in {}",
                g.out.display()
            );
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
    let mut opts = EvalOptions::new(model, out);
    let cuda = a.device == "cuda";
    let dtype = crate::cmd_doctor::compute_dtype(cuda, a.dtype.as_deref())?;
    opts.device = if cuda {
        crate::cmd_doctor::open_gpu(a.gpu)?
    } else {
        Device::Cpu
    };
    opts.dtype = dtype;
    match (&a.data, a.benchmarks.is_empty()) {
        (Some(_), false) => bail!("give --benchmarks or --data, not both"),
        (Some(path), true) => {
            opts.benchmarks.clear();
            opts.files.push(user_benchmark(path, &a.fields)?);
        }
        (None, false) => opts.benchmarks = a.benchmarks,
        (None, true) => {}
    }
    if a.data.is_none() && !a.fields.is_empty() {
        bail!("--field applies to --data");
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
    run(&opts)?;
    Ok(())
}

/// A built-in benchmark name (limo_eval also takes the file stems "math" and "amc").
fn known(name: &str) -> bool {
    limo_eval::benchmarks::file_name(name).is_ok()
}

/// `--data FILE --field question=problem --field answer=answer [--field id=id]`.
fn user_benchmark(path: &std::path::Path, fields: &[String]) -> anyhow::Result<UserBenchmark> {
    let (mut question, mut answer, mut id) = ("question".to_string(), "answer".to_string(), None);
    for f in fields {
        let (role, name) = f
            .split_once('=')
            .with_context(|| format!("--field {f}: expected ROLE=NAME"))?;
        match role {
            "question" => question = name.to_string(),
            "answer" => answer = name.to_string(),
            "id" => id = Some(name.to_string()),
            other => bail!("--field {other}=...: the roles are question, answer and id"),
        }
    }
    Ok(UserBenchmark {
        path: path.to_path_buf(),
        question_field: question,
        answer_field: answer,
        id_field: id,
    })
}
