//! Where a run's model, tokenizer and rows come from: a Hugging Face checkpoint or a random
//! initialization; a tokenizer file or the Qwen2.5 tokenizer built into limo; a dataset read by
//! limo-data, a pre-tokenized JSONL file, or the generated arithmetic set of the default run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::DType;
use limo_data::dataset::load_dataset_split;
use limo_data::{ChatTokenizer, DataConfig, Format, OnBadRow, Overlong};

use crate::config::TrainConfig;
use crate::synthetic;

pub const BUILTIN_TOKENIZER: &str = limo_data::tokenize::BUILTIN;

/// Writes the built-in Qwen2.5 tokenizer into `dir` as the Hub ships it: tokenizer.json,
/// tokenizer_config.json (eos, pad, the chat template) and chat_template.jinja.
pub fn write_builtin_tokenizer(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    for (name, text) in limo_data::tokenize::BUILTIN_FILES {
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
    /// from the tokenizer): one per document when limo packed the row, else one.
    pub origins: Vec<String>,
}

/// A hash of training rows (their count, ids, labels and positions), to compare ranks' rows and
/// a resume's rows with the checkpoint's.
pub fn rows_hash(rows: &[TrainingRow]) -> u64 {
    let words = rows.iter().flat_map(|r| {
        let ids = r.input_ids.iter().map(|&i| u64::from(i));
        let labels = r.labels.iter().map(|&l| l as u64);
        let positions = r.position_ids.iter().flatten().map(|&p| u64::from(p));
        let row = [r.input_ids.len() as u64].into_iter();
        row.chain(ids).chain(labels).chain(positions)
    });
    let seed = 0xcbf2_9ce4_8422_2325_u64 ^ rows.len() as u64;
    words.fold(seed, |h, w| (h ^ w).wrapping_mul(0x0100_0000_01b3))
}

impl TrainingRow {
    /// The `file: row N` that token `t` (of the ids or the labels) came from.
    pub fn origin_of(&self, t: usize) -> Option<&str> {
        let document = match (&self.position_ids, self.origins.len()) {
            (Some(p), n) if n > 1 => p[1..=t.min(p.len() - 1)]
                .iter()
                .filter(|&&p| p == 0)
                .count(),
            _ => 0,
        };
        self.origins.get(document).map(String::as_str)
    }
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

/// `e`, for a relative `data.path` that is not there (nor a Hub dataset id), said to be read
/// from the current directory: a config's paths are not read beside the config.
fn relative_to_here(e: anyhow::Error, path: &str) -> anyhow::Error {
    let relative = Path::new(path);
    let missing = relative.is_relative()
        && !relative.exists()
        && limo_data::hub::hub_dataset_id(path).is_none();
    match std::env::current_dir() {
        Ok(cwd) if missing => e.context(format!(
            "data.path (relative to the current directory {})",
            cwd.display()
        )),
        _ => e,
    }
}

/// Reads (or generates, when `write`) the dataset and turns it into training rows and, with
/// `data.val_size`, validation rows (one example each, never packed).
pub fn prepare_rows(
    config: &TrainConfig,
    tokenizer: Option<&ChatTokenizer>,
    out: &Path,
    write: bool,
) -> anyhow::Result<(Vec<TrainingRow>, Vec<TrainingRow>)> {
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
        return read_tokenized_split(&data, config.train.seed)
            .map_err(|e| relative_to_here(e, &data.path));
    }
    let tokenizer = tokenizer.context("data: this format needs a tokenizer (model.tokenizer or tokenizer.json in the model directory)")?;
    let (dataset, validation) = load_dataset_split(&data, tokenizer, config.train.seed)
        .map_err(|e| relative_to_here(e.into(), &data.path))?;
    let r = &dataset.report;
    tracing::info!(report = ?r, "data loaded");
    let unpacked = |examples: Vec<limo_data::Example>| -> Vec<TrainingRow> {
        examples
            .into_iter()
            .map(|e| TrainingRow {
                input_ids: e.input_ids,
                labels: e.labels,
                position_ids: None,
                origins: Vec::new(),
            })
            .collect()
    };
    let validation = validation.map_or_else(Vec::new, |v| unpacked(v.examples));
    if data.packing {
        let packed = dataset.packed(data.cutoff_len)?;
        let rows = packed
            .into_iter()
            .map(|p| TrainingRow {
                input_ids: p.input_ids,
                labels: p.labels,
                position_ids: Some(p.position_ids),
                origins: Vec::new(),
            })
            .collect();
        return Ok((rows, validation));
    }
    Ok((unpacked(dataset.examples), validation))
}

/// Every token id and label of `rows` (`what` rows) inside a vocabulary of `vocab`: an id
/// outside it would fail one rank in the middle of a collective.
pub fn check_vocabulary(rows: &[TrainingRow], vocab: u64, what: &str) -> anyhow::Result<()> {
    // Labels too: pre-tokenized rows carry their own, which need not be among the inputs.
    // (token index, id) of the first id outside the vocabulary.
    let outside = |r: &TrainingRow| {
        let ids = r.input_ids.iter().map(|&i| i as u64).enumerate();
        let labels = r.labels.iter().map(|&l| l.max(0) as u64).enumerate();
        ids.chain(labels).find(|&(_, id)| id >= vocab)
    };
    if let Some((n, row, t, bad)) = rows
        .iter()
        .enumerate()
        .find_map(|(n, r)| outside(r).map(|(t, id)| (n + 1, r, t, id)))
    {
        match row.origin_of(t) {
            Some(at) => {
                bail!("data: {at}: token id {bad} is outside the model's vocabulary of {vocab}")
            }
            None => bail!(
                "data: {what} row {n}: the tokenizer gave token id {bad}, outside the model's \
                 vocabulary of {vocab}: model.tokenizer does not belong to this model"
            ),
        }
    }
    Ok(())
}

/// Rows of `{"input_ids": [...], "labels": [...], "position_ids"?: [...]}` (what `limo data
/// dump` writes), from a file or a folder of them (JSONL, JSON or Parquet, as the other
/// formats), with the `[data]` settings that apply to token ids: `limit`, `on_bad_row`, the
/// cutoff (`cutoff_len`, `overlong`) and `packing` (of rows not packed already). An
/// `attention_mask` (HF tokenized datasets carry one) is accepted when it masks nothing: limo
/// never pads.
///
/// Every row: `data.val_size` holds none out here (see [`read_tokenized_split`]).
pub fn read_tokenized(data: &DataConfig) -> anyhow::Result<Vec<TrainingRow>> {
    let all = DataConfig {
        val_size: 0.0,
        ..data.clone()
    };
    Ok(read_tokenized_split(&all, 0)?.0)
}

/// [`read_tokenized`] with `data.val_size` rows of the records read held out, split with
/// `seed` as [`limo_data::dataset::load_dataset_split`] splits text rows.
pub fn read_tokenized_split(
    data: &DataConfig,
    seed: u64,
) -> anyhow::Result<(Vec<TrainingRow>, Vec<TrainingRow>)> {
    data.validate()?;
    let hub = limo_data::HubSettings::from_env();
    let limit = data.limit.unwrap_or(usize::MAX);
    let (mut rows, mut skipped, mut records) = (Vec::new(), Vec::new(), 0);
    'files: for file in limo_data::resolve_data_files(&data.path, &hub)? {
        for record in limo_data::reader::read_records(&file)? {
            if rows.len() >= limit {
                break 'files;
            }
            records += 1;
            match tokenized_row(record) {
                Ok(row) => rows.push((records - 1, row)),
                Err(e) if data.on_bad_row == OnBadRow::Skip => skipped.push(format!("{e:#}")),
                Err(e) => return Err(e),
            }
        }
    }
    if let Some(first) = skipped.first() {
        tracing::warn!(
            "data: {} malformed rows skipped (on_bad_row = skip); the first: {first}",
            skipped.len()
        );
    }
    if data.val_size == 0.0 {
        let rows = rows.into_iter().map(|(_, r)| r).collect();
        return Ok((cut_tokenized(rows, data, skipped.len(), true)?, Vec::new()));
    }
    let [train, validation] =
        limo_data::dataset::split_records(rows, records, data.val_size, seed)?;
    Ok((
        cut_tokenized(train, data, skipped.len(), true)?,
        cut_tokenized(validation, data, 0, false)?,
    ))
}

/// The cutoff of `data` applied to tokenized rows, then (training rows) its packing.
fn cut_tokenized(
    mut rows: Vec<TrainingRow>,
    data: &DataConfig,
    skipped: usize,
    training: bool,
) -> anyhow::Result<Vec<TrainingRow>> {
    let (read, cutoff) = (rows.len(), data.cutoff_len);
    let mut over = 0;
    rows.retain_mut(|row| {
        if row.input_ids.len() <= cutoff {
            return true;
        }
        over += 1;
        match data.overlong {
            // TruncatePairs was refused above.
            Overlong::Drop | Overlong::TruncatePairs => false,
            Overlong::Truncate => {
                row.input_ids.truncate(cutoff);
                row.labels.truncate(cutoff);
                if let Some(p) = row.position_ids.as_mut() {
                    p.truncate(cutoff);
                }
                // labels[0] is never a target (the first token has nothing before it), nor is
                // the first label of a later packed document (`Batch::from_rows`).
                let starts = |t: usize| row.position_ids.as_ref().is_some_and(|p| p[t] == 0);
                (1..row.labels.len()).any(|t| row.labels[t] >= 0 && !starts(t))
            }
        }
    });
    if over > 0 {
        tracing::info!(
            "data: {over} rows over cutoff_len {cutoff} ({:?}): {} left out (dropped, or no \
             target left)",
            data.overlong,
            read - rows.len()
        );
    }
    if rows.is_empty() {
        let which = if training { "" } else { " to validate on" };
        bail!(
            "data: {}: no usable rows{which} ({read} read, {skipped} skipped as malformed, {} \
             left out by the cutoff of {cutoff} tokens)",
            data.path,
            read
        );
    }
    match data.packing && training {
        true => pack_tokenized(rows, cutoff),
        false => Ok(rows),
    }
}

/// One record as a pre-tokenized row, checked; errors name its file and row.
fn tokenized_row(record: limo_data::reader::RawRecord) -> anyhow::Result<TrainingRow> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        input_ids: Vec<u32>,
        labels: Vec<i64>,
        position_ids: Option<Vec<u32>>,
        attention_mask: Option<Vec<u8>>,
    }
    let at = record.location.clone();
    let value = record.value.map_err(|e| e.at(at.clone()))?;
    let l: Line = serde_json::from_value(value).with_context(|| at.to_string())?;
    let row = TrainingRow {
        input_ids: l.input_ids,
        labels: l.labels,
        position_ids: l.position_ids,
        origins: vec![at.to_string()],
    };
    check_tokenized(&row, l.attention_mask.as_deref()).with_context(|| at.to_string())?;
    Ok(row)
}

/// `data.packing` over pre-tokenized rows, as over tokenized text: several rows per row of at
/// most `cutoff` tokens. Rows that carry position_ids are packed already.
fn pack_tokenized(rows: Vec<TrainingRow>, cutoff: usize) -> anyhow::Result<Vec<TrainingRow>> {
    if let Some(packed) = rows.iter().find(|r| r.position_ids.is_some()) {
        bail!(
            "data.packing: {} carries position_ids (a packed row, as `limo data dump --packing` \
             writes); set data.packing = false for packed data",
            packed.origins.first().map_or("a row", String::as_str)
        );
    }
    let examples: Vec<limo_data::Example> = rows
        .iter()
        .map(|r| limo_data::Example {
            input_ids: r.input_ids.clone(),
            labels: r.labels.clone(),
        })
        .collect();
    Ok(limo_data::pack(&examples, cutoff)?
        .into_iter()
        .map(|p| {
            let origins = p.examples.iter().flat_map(|&i| rows[i].origins.clone());
            TrainingRow {
                input_ids: p.input_ids,
                labels: p.labels,
                position_ids: Some(p.position_ids),
                origins: origins.collect(),
            }
        })
        .collect())
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
    if let Some(p) = &row.position_ids {
        if p.len() != row.input_ids.len() {
            bail!("position_ids must have one entry per token");
        }
        // Documents are found where positions restart at 0; anything else would silently
        // merge two documents or give a token the wrong rotary position.
        if let Some(t) = (1..p.len()).find(|&t| p[t] != 0 && p[t - 1].checked_add(1) != Some(p[t]))
        {
            bail!(
                "position_ids[{t}] is {} after {}: positions count up by 1 within a document \
                 and restart at 0 where the next one starts",
                p[t],
                p[t - 1]
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of `n` tokens, ids from `first`, the last half targets.
    fn line(first: u32, n: u32) -> String {
        let ids: Vec<u32> = (first..first + n).collect();
        let labels: Vec<i64> = (0..n)
            .map(|i| match i < n / 2 {
                true => -100,
                false => i64::from(first + i),
            })
            .collect();
        serde_json::json!({"input_ids": ids, "labels": labels}).to_string()
    }

    /// The `[data]` settings that apply to token ids act on pre-tokenized rows as on text
    /// (they were once ignored: `limit = 8` trained on all 20 rows).
    #[test]
    fn tokenized_rows_take_limit_cutoff_skip_and_packing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        let bad = r#"{"input_ids": [1, 2], "labelz": [1, 2]}"#;
        let text = [line(10, 4), line(20, 12), bad.to_string(), line(40, 6)].join("\n");
        std::fs::write(&path, text).unwrap();
        let config = |edit: &dyn Fn(&mut DataConfig)| {
            let mut c = DataConfig::new(path.display().to_string(), Format::Tokenized);
            c.on_bad_row = OnBadRow::Skip;
            edit(&mut c);
            c
        };
        let lens =
            |rows: &[TrainingRow]| rows.iter().map(|r| r.input_ids.len()).collect::<Vec<_>>();

        assert_eq!(lens(&read_tokenized(&config(&|_| {})).unwrap()), [4, 12, 6]);
        let err = read_tokenized(&config(&|c| c.on_bad_row = OnBadRow::Fail)).unwrap_err();
        assert!(format!("{err:#}").contains("rows.jsonl: row 3"), "{err:#}");
        assert_eq!(
            lens(&read_tokenized(&config(&|c| c.limit = Some(2))).unwrap()),
            [4, 12]
        );

        // Truncated to 8: the 12-token row keeps ids 20..28 and its targets from 26 on.
        let rows = read_tokenized(&config(&|c| c.cutoff_len = 8)).unwrap();
        assert_eq!(lens(&rows), [4, 8, 6]);
        assert_eq!(rows[1].labels[5..], [-100, 26, 27]);
        // A row whose targets all lie past the cutoff is left out; `drop` leaves out any row
        // over it.
        let rows = read_tokenized(&config(&|c| c.cutoff_len = 5)).unwrap();
        assert_eq!(lens(&rows), [4, 5]);
        let rows = read_tokenized(&config(&|c| {
            c.cutoff_len = 6;
            c.overlong = Overlong::Drop;
        }))
        .unwrap();
        assert_eq!(lens(&rows), [4, 6]);
        let err = read_tokenized(&config(&|c| c.cutoff_len = 2)).unwrap_err();
        assert!(err.to_string().contains("no usable rows"), "{err}");
        // labels[0] is no target (nothing precedes the first token): a row left with only
        // it is left out too.
        let first_only = serde_json::json!({"input_ids": [7, 8, 9], "labels": [7, -100, 9]});
        let other = dir.path().join("first-only.jsonl");
        std::fs::write(&other, first_only.to_string()).unwrap();
        let mut c = config(&|c| c.cutoff_len = 2);
        c.path = other.display().to_string();
        let err = read_tokenized(&c).unwrap_err();
        assert!(err.to_string().contains("no usable rows"), "{err}");
        // Nor is a later packed document's first label.
        let packed = serde_json::json!({"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 5, -100],
            "position_ids": [0, 1, 0, 1]});
        std::fs::write(&other, packed.to_string()).unwrap();
        let mut c = config(&|c| c.cutoff_len = 3);
        c.path = other.display().to_string();
        let err = read_tokenized(&c).unwrap_err();
        assert!(err.to_string().contains("no usable rows"), "{err}");

        // Packed into rows of 16: 12 + 4 and 6, positions restarting per document; each
        // document keeps its own origin.
        let rows = read_tokenized(&config(&|c| {
            c.cutoff_len = 16;
            c.packing = true;
        }))
        .unwrap();
        assert_eq!(lens(&rows), [16, 6]);
        let positions = rows[0].position_ids.as_ref().unwrap();
        assert_eq!(positions[10..14], [10, 11, 0, 1]);
        // Each token's origin is its own document's row.
        assert!(rows[0].origin_of(0).unwrap().ends_with("rows.jsonl: row 2"));
        assert!(rows[0]
            .origin_of(13)
            .unwrap()
            .ends_with("rows.jsonl: row 1"));
        // Rows packed already are refused, not packed twice.
        let packed = serde_json::json!({"input_ids": [1, 2], "labels": [1, 2],
            "position_ids": [0, 0]});
        std::fs::write(&path, packed.to_string()).unwrap();
        let err = read_tokenized(&config(&|c| c.packing = true)).unwrap_err();
        assert!(err.to_string().contains("carries position_ids"), "{err}");
    }
}
