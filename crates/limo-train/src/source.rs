//! Where a run's model, tokenizer and rows come from: a Hugging Face checkpoint or a random
//! initialization; a tokenizer file or the Qwen2.5 tokenizer built into limo; a dataset read by
//! limo-data, a pre-tokenized JSONL file, or the generated arithmetic set of the default run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::DType;
use limo_data::{load_dataset, ChatTokenizer, Format};

use crate::config::TrainConfig;
use crate::synthetic;

/// The Qwen2.5 tokenizer, compiled in so the default run works from any directory.
const QWEN25_TOKENIZER: &[u8] =
    include_bytes!("../../../tests/fixtures/qwen2.5-tokenizer/tokenizer.json");
/// Its tokenizer_config.json (eos, pad, the chat template) and the template alone, as the Hub
/// ships them beside it.
const QWEN25_TOKENIZER_CONFIG: &[u8] =
    include_bytes!("../../../tests/fixtures/qwen2.5-tokenizer/tokenizer_config.json");
const QWEN25_CHAT_TEMPLATE: &[u8] =
    include_bytes!("../../../tests/fixtures/qwen2.5-tokenizer/chat_template.jinja");
pub const BUILTIN_TOKENIZER: &str = "builtin:qwen2.5";

/// Writes the built-in Qwen2.5 tokenizer into `dir` as the Hub ships it: tokenizer.json,
/// tokenizer_config.json (eos, pad, the chat template) and chat_template.jinja.
pub fn write_builtin_tokenizer(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    for (name, text) in [
        ("tokenizer.json", QWEN25_TOKENIZER),
        ("tokenizer_config.json", QWEN25_TOKENIZER_CONFIG),
        ("chat_template.jinja", QWEN25_CHAT_TEMPLATE),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}
pub const BUILTIN_ARITHMETIC: &str = "builtin:arithmetic";

/// One training row: a single example, or several packed ones with positions restarting at 0.
#[derive(Debug, Clone)]
pub struct TrainingRow {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub position_ids: Option<Vec<u32>>,
    /// `file: row N` of a pre-tokenized row, for errors about its ids (other rows' ids come
    /// from the tokenizer).
    pub origin: Option<String>,
}

pub struct PreparedModel {
    pub dir: PathBuf,
    /// tokenizer.json to use, if any.
    pub tokenizer: Option<PathBuf>,
}

/// Resolves the model directory (writing the random initialization into `<out>/init-model`
/// when asked for one) and the tokenizer. With `write` false nothing is written: the ranks of a
/// distributed run other than rank 0 read what rank 0 wrote.
pub fn prepare_model(
    config: &TrainConfig,
    out: &Path,
    write: bool,
) -> anyhow::Result<PreparedModel> {
    let dir = match (config.model_dir(), &config.model.init) {
        (Some((dir, note)), _) => {
            if let Some(note) = note.filter(|_| write) {
                tracing::info!("model: {note}");
            }
            dir
        }
        (None, Some(_)) => {
            let dir = out.join("init-model");
            if write && !dir.join("config.json").exists() {
                let model_config = config.model.init_config()?;
                let tmp = out.join(".init-model.tmp");
                let _ = std::fs::remove_dir_all(&tmp);
                limo_model::init::write_random_checkpoint(
                    &tmp,
                    &model_config,
                    DType::F32,
                    config.model.init_seed,
                    usize::MAX,
                )?;
                std::fs::rename(&tmp, &dir)?;
            }
            dir
        }
        (None, None) => bail!("model: give path or init"),
    };
    let tokenizer = match config.model.tokenizer.as_deref() {
        Some(BUILTIN_TOKENIZER) => {
            let path = out.join("tokenizer").join("tokenizer.json");
            if write {
                // With the chat template, so an export loads with AutoTokenizer and renders
                // conversations as training saw them.
                write_builtin_tokenizer(path.parent().expect("has parent"))?;
            }
            Some(path)
        }
        Some(path) => Some(PathBuf::from(path)),
        None if dir.join("tokenizer.json").exists() => Some(dir.join("tokenizer.json")),
        None => None,
    };
    Ok(PreparedModel { dir, tokenizer })
}

/// Reads (or generates, when `write`) the dataset and turns it into training rows.
pub fn prepare_rows(
    config: &TrainConfig,
    tokenizer: Option<&ChatTokenizer>,
    out: &Path,
    write: bool,
) -> anyhow::Result<Vec<TrainingRow>> {
    let mut data = config.data.clone();
    if data.path == BUILTIN_ARITHMETIC {
        let path = out.join("data").join("arithmetic-train.jsonl");
        if write {
            synthetic::write_jsonl(
                &path,
                &synthetic::problems(config.train.seed, synthetic::TRAIN_PROBLEMS),
            )?;
        }
        data.path = path.display().to_string();
    }
    if data.format == Format::Tokenized {
        return read_tokenized(&data.path);
    }
    let tokenizer = tokenizer.context("data: this format needs a tokenizer (model.tokenizer or tokenizer.json in the model directory)")?;
    let dataset = load_dataset(&data, tokenizer)?;
    let r = &dataset.report;
    tracing::info!(report = ?r, "data loaded");
    if data.packing {
        let packed = dataset.packed(data.cutoff_len)?;
        return Ok(packed
            .into_iter()
            .map(|p| TrainingRow {
                input_ids: p.input_ids,
                labels: p.labels,
                position_ids: Some(p.position_ids),
                origin: None,
            })
            .collect());
    }
    Ok(dataset
        .examples
        .into_iter()
        .map(|e| TrainingRow {
            input_ids: e.input_ids,
            labels: e.labels,
            position_ids: None,
            origin: None,
        })
        .collect())
}

/// Rows of `{"input_ids": [...], "labels": [...], "position_ids"?: [...]}` (what `limo data
/// dump` writes), taken as is, from a file or a folder of them (JSONL, JSON or Parquet, as
/// the other formats). An `attention_mask` (HF tokenized datasets carry one) is accepted when
/// it masks nothing: limo never pads.
pub fn read_tokenized(spec: &str) -> anyhow::Result<Vec<TrainingRow>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        input_ids: Vec<u32>,
        labels: Vec<i64>,
        position_ids: Option<Vec<u32>>,
        attention_mask: Option<Vec<u8>>,
    }
    let hub = limo_data::HubSettings::from_env();
    let mut rows = Vec::new();
    for file in limo_data::resolve_data_files(spec, &hub)? {
        for record in limo_data::reader::read_records(&file)? {
            let at = record.location.clone();
            let value = record.value.map_err(|e| e.at(at.clone()))?;
            let l: Line = serde_json::from_value(value).with_context(|| at.to_string())?;
            let row = TrainingRow {
                input_ids: l.input_ids,
                labels: l.labels,
                position_ids: l.position_ids,
                origin: Some(at.to_string()),
            };
            check_tokenized(&row, l.attention_mask.as_deref()).with_context(|| at.to_string())?;
            rows.push(row);
        }
    }
    Ok(rows)
}

/// One pre-tokenized row's lengths, labels and mask.
fn check_tokenized(row: &TrainingRow, attention_mask: Option<&[u8]>) -> anyhow::Result<()> {
    if row.input_ids.is_empty() || row.labels.len() != row.input_ids.len() {
        bail!("input_ids and labels must be non-empty and of equal length");
    }
    let ignore = limo_ops::linear_cross_entropy::IGNORE_INDEX;
    if let Some(bad) = row.labels.iter().find(|&&x| x < 0 && x != ignore) {
        bail!("label {bad}: labels are token ids or -100");
    }
    if let Some(mask) = attention_mask {
        if mask.len() != row.input_ids.len() || mask.iter().any(|&m| m != 1) {
            bail!(
                "attention_mask must be one 1 per token (limo does not pad: leave padding \
                 tokens out of the row)"
            );
        }
    }
    if (row.position_ids.as_ref()).is_some_and(|p| p.len() != row.input_ids.len()) {
        bail!("position_ids must have one entry per token");
    }
    Ok(())
}
