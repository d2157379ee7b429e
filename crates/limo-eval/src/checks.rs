//! What a run checks before it generates: that a rerun into the same output directory is the
//! same run (its settings, `run.json`; its problems, those of the results already there), and
//! that every prompt and saved response fits the model (its context, its vocabulary, its stop
//! ids; read from config.json and generation_config.json before the weights load).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use limo_data::ChatTokenizer;
use limo_model::Qwen2Config;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::benchmarks::Problem;
use crate::run::{EvalOptions, Job, ResultRecord, QWEN_STOP_IDS, RUN_FILE};

/// The settings of [`RUN_FILE`]: benchmarks, limit and samples may change between runs of one
/// out_dir (results add up); these may not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunSettings {
    model: String,
    dtype: String,
    max_new_tokens: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
    system_prompt: Option<String>,
    /// [`model_files`] of the model and tokenizer: the same path may hold another model by
    /// the next run (`limo train` exports to the same `runs/NAME/model` each time). Empty in
    /// a run.json written before it was recorded: not compared then.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    model_files: String,
}

/// Bytes of each sample [`model_files`] reads.
const SAMPLE: u64 = 64 << 10;

/// A fingerprint of a model directory and its tokenizer, cheap at any size: config.json and
/// tokenizer.json whole, and of every safetensors file its name, size and three samples
/// (start, middle, end). Training changes every weight, so every sample; hashing 60 GB of
/// weights whole at every rerun would take minutes.
pub(crate) fn model_files(model_dir: &Path, tokenizer: &Path) -> anyhow::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let tokenizer = match tokenizer.is_dir() {
        true => tokenizer.join("tokenizer.json"),
        false => tokenizer.to_path_buf(),
    };
    for path in [model_dir.join("config.json"), tokenizer] {
        // A missing tokenizer fails later, with its own message.
        add(&std::fs::read(&path).unwrap_or_default());
    }
    let mut weights: Vec<_> = std::fs::read_dir(model_dir)
        .with_context(|| format!("{}", model_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    weights.sort();
    for path in weights {
        let at = || format!("{}", path.display());
        let mut file = std::fs::File::open(&path).with_context(at)?;
        let size = file.metadata().with_context(at)?.len();
        add(path.file_name().unwrap_or_default().as_encoded_bytes());
        add(&size.to_le_bytes());
        for start in [0, size / 2, size.saturating_sub(SAMPLE)] {
            let mut sample = Vec::new();
            file.seek(SeekFrom::Start(start)).with_context(at)?;
            (&mut file)
                .take(SAMPLE)
                .read_to_end(&mut sample)
                .with_context(at)?;
            add(&sample);
        }
    }
    Ok(format!("{hash:016x}"))
}

/// Writes `run.json` on the first run of `out_dir`; later runs must match it.
pub(crate) fn check_same_run(opts: &EvalOptions, tokenizer: &Path) -> anyhow::Result<()> {
    let model = std::fs::canonicalize(&opts.model_dir).unwrap_or_else(|_| opts.model_dir.clone());
    let settings = RunSettings {
        model_files: model_files(&opts.model_dir, tokenizer)?,
        model: model.display().to_string(),
        dtype: format!("{:?}", opts.dtype).to_lowercase(),
        max_new_tokens: opts.max_new_tokens,
        temperature: opts.temperature,
        top_p: opts.top_p,
        seed: opts.seed,
        system_prompt: opts.system_prompt.clone(),
    };
    let path = opts.out_dir.join(RUN_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    // Absent, or empty as limo before it was written whole left it when the disk was full:
    // written before any result, so no run got further.
    if text.trim().is_empty() {
        let text = serde_json::to_string_pretty(&settings)? + "\n";
        return crate::write_atomic(&path, &text);
    }
    let mut before: RunSettings = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: malformed (delete it: it records the settings of the run, and the next run \
             writes it again with its own)",
            path.display()
        )
    })?;
    if before.model_files.is_empty() {
        before.model_files.clone_from(&settings.model_files);
    }
    if before != settings {
        let (a, b) = (
            serde_json::to_value(&before)?,
            serde_json::to_value(&settings)?,
        );
        let changed: Vec<String> = a
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, v)| format!("{k} {v} -> {}", b[k.as_str()]))
            .collect();
        let files = match before.model_files != settings.model_files {
            true => " (model_files: the model's weights, config or tokenizer differ)",
            false => "",
        };
        bail!(
            "{} holds results of a run with other settings ({}){files}; use another output \
             directory",
            opts.out_dir.display(),
            changed.join(", ")
        );
    }
    Ok(())
}

/// Errors unless every record of `path` (results.jsonl) whose (benchmark, id) is one of
/// `problems` holds that problem's question and reference. Ids are row numbers unless the
/// data names them: an edited file would otherwise keep its old rows' responses, graded
/// against their old references, under its new rows' ids.
pub(crate) fn check_same_problems(
    records: &[ResultRecord],
    problems: &[Vec<Problem>],
    path: &Path,
) -> anyhow::Result<()> {
    let by_id: HashMap<(&str, &str), &Problem> = problems
        .iter()
        .flatten()
        .map(|p| ((p.benchmark.as_str(), p.id.as_str()), p))
        .collect();
    let changed = |r: &ResultRecord| {
        let p = by_id.get(&(r.benchmark.as_str(), r.id.as_str()))?;
        match (r.question == p.question, r.reference == p.answer) {
            (true, true) => None,
            (false, true) => Some("its question".to_string()),
            (q, false) => Some(format!(
                "{}its reference ({:?} there, {:?} in the data)",
                if q { "" } else { "its question and " },
                r.reference,
                p.answer
            )),
        }
    };
    let mut differ = records.iter().filter_map(|r| changed(r).map(|c| (r, c)));
    let Some((r, what)) = differ.next() else {
        return Ok(());
    };
    let more = differ.count();
    bail!(
        "{}: {} problem {:?} holds a response to another problem: {what} differs from the \
         data's{}; evaluate the changed data into a new --out, or delete {} to answer every \
         problem again",
        path.display(),
        r.benchmark,
        r.id,
        match more {
            0 => String::new(),
            n => format!(" (and {n} more results)"),
        },
        path.display()
    )
}

/// The ids generation stops at: `<|im_end|>`, `<|endoftext|>`, and the eos ids of
/// config.json and generation_config.json (either may lack them), those inside the
/// vocabulary. A file or an `eos_token_id` that cannot be read is an error: a stop id lost
/// would let every response run to max_new_tokens.
pub(crate) fn stop_ids(
    config: &Qwen2Config,
    model_dir: &Path,
    tokenizer: &ChatTokenizer,
) -> anyhow::Result<Vec<u32>> {
    let mut ids: Vec<u32> = QWEN_STOP_IDS.to_vec();
    ids.push(tokenizer.im_end_id());
    ids.extend(eos_ids(&config.raw, &model_dir.join("config.json"))?);
    let path = model_dir.join("generation_config.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let json: Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: malformed", path.display()))?;
            if !json.is_object() {
                bail!("{}: not a JSON object", path.display());
            }
            ids.extend(eos_ids(&json, &path)?);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
    ids.retain(|&id| (id as usize) < config.vocab_size);
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The `eos_token_id` of `json` (read from `path`): none, one id, or a list of ids.
fn eos_ids(json: &Value, path: &Path) -> anyhow::Result<Vec<u32>> {
    let value = &json["eos_token_id"];
    let bad = || {
        anyhow!(
            "{}: eos_token_id: expected a token id or a list of them, found {value}",
            path.display()
        )
    };
    let id = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)
    };
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a.iter().map(id).collect(),
        v => Ok(vec![id(v)?]),
    }
}

/// Errors unless every job's prompt fits the model's positions (max_position_embeddings of
/// config.json; a longer one would not run, or would ask for terabytes in the prefill's
/// attention), and every saved response it continues could be one the run saved: tokens of
/// the vocabulary, no stop id, fewer than max_new_tokens.
pub(crate) fn check_jobs(
    opts: &EvalOptions,
    config: &Qwen2Config,
    stops: &[u32],
    jobs: &[Job],
) -> anyhow::Result<()> {
    let positions = match &config.raw["max_position_embeddings"] {
        Value::Null => None,
        v => Some(v.as_u64().ok_or_else(|| {
            anyhow!(
                "{}: max_position_embeddings: expected a number, found {v}",
                opts.model_dir.join("config.json").display()
            )
        })?),
    };
    for job in jobs {
        let n = job.prompt.len();
        if let Some(max) = positions.filter(|&max| n as u64 > max) {
            let p = job.problem;
            bail!(
                "{}: problem {:?}: its prompt is {n} tokens, more than the model's {max} \
                 positions (max_position_embeddings of {})",
                origin(opts, &p.benchmark),
                p.id,
                opts.model_dir.join("config.json").display()
            );
        }
        if let Some(s) = &job.from {
            check_saved(s, config.vocab_size, opts.max_new_tokens, stops)?;
        }
    }
    Ok(())
}

/// What no run saves: the generator would refuse it, naming neither file nor problem.
fn check_saved(
    s: &crate::in_flight::Saved,
    vocab: usize,
    max_new_tokens: usize,
    stops: &[u32],
) -> anyhow::Result<()> {
    if let Some(bad) = s.ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(s.damaged(&format!(
            "token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    if !s.ids.is_empty() && s.ids.len() >= max_new_tokens {
        return Err(s.damaged(&format!(
            "{} tokens generated, the most is {max_new_tokens}",
            s.ids.len()
        )));
    }
    if let Some(stop) = s.ids.iter().find(|t| stops.contains(t)) {
        return Err(s.damaged(&format!("its tokens hold the stop id {stop}")));
    }
    Ok(())
}

/// A benchmark as the user named it: its file for `--data`, else its name.
fn origin(opts: &EvalOptions, benchmark: &str) -> String {
    let file = opts.files.iter().find(|f| {
        f.path
            .file_stem()
            .is_some_and(|s| s.to_string_lossy() == benchmark)
    });
    match file {
        Some(f) => f.path.display().to_string(),
        None => format!("benchmark {benchmark}"),
    }
}
