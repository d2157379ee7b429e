//! The whole path from a data path to training examples: resolve, read, parse, render,
//! tokenize, apply the cutoff.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::config::{DataConfig, OnBadRow};
use crate::cutoff::{apply_cutoff, CutoffCounts};
use crate::error::{DataError, FieldError, Result};
use crate::example::Example;
use crate::format::parse_record;
use crate::hub::{resolve_data_files, HubSettings};
use crate::packing::{pack, PackedRow};
use crate::reader::read_records;
use crate::template::render;
use crate::tokenize::ChatTokenizer;

/// How many skipped-row messages a report keeps (the count is always exact).
const KEPT_SKIP_MESSAGES: usize = 10;

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    /// Records read (valid or not), up to `limit` valid ones.
    pub rows: usize,
    /// Malformed records skipped under `on_bad_row = skip`.
    pub skipped: usize,
    /// The first few skip reasons, with file and row.
    pub skipped_examples: Vec<String>,
    pub cutoff: CutoffCounts,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// Examples after the cutoff, in file order.
    pub examples: Vec<Example>,
    pub report: LoadReport,
}

impl Dataset {
    /// Packs the examples into rows of at most `cutoff_len` tokens (see [`crate::packing`]).
    pub fn packed(&self, cutoff_len: usize) -> Result<Vec<PackedRow>> {
        pack(&self.examples, cutoff_len)
    }
}

/// Resolves, reads and tokenizes, with the cutoff applied. The trainer's entry point.
pub fn load_dataset(config: &DataConfig, tokenizer: &ChatTokenizer) -> Result<Dataset> {
    let (examples, report) = tokenize_untruncated(config, tokenizer, &HubSettings::from_env())?;
    with_cutoff(examples, report, config)
}

/// [`load_dataset`] with `config.val_size` rows of the records read held out
/// ([`crate::split::train_test_split`] with `seed`): the training examples in the split's
/// order, and the validation ones (`None` without `val_size`). A record that does not encode
/// (`on_bad_row = "skip"`) still counts for the split, as LLaMA-Factory splits before it
/// tokenizes.
pub fn load_dataset_split(
    config: &DataConfig,
    tokenizer: &ChatTokenizer,
    seed: u64,
) -> Result<(Dataset, Option<Dataset>)> {
    let hub = HubSettings::from_env();
    if config.val_size == 0.0 {
        return Ok((load_dataset(config, tokenizer)?, None));
    }
    let (indexed, report) = tokenize_records(config, tokenizer, &hub)?;
    let [train, val] = split_records(indexed, report.rows, config.val_size, seed)?;
    let val_report = LoadReport {
        files: report.files.clone(),
        ..LoadReport::default()
    };
    let held_out = val.len();
    let validation = with_cutoff(val, val_report, config).map_err(|e| {
        DataError::Config(format!(
            "data.val_size: none of the {held_out} usable held-out rows is left: {e}"
        ))
    })?;
    Ok((with_cutoff(train, report, config)?, Some(validation)))
}

/// Items tagged with their record's index, as the training and validation lists of a split of
/// `records` records, each in the split's order.
pub fn split_records<T>(
    indexed: Vec<(usize, T)>,
    records: usize,
    val_size: f64,
    seed: u64,
) -> Result<[Vec<T>; 2]> {
    let split = crate::split::train_test_split(records, val_size, seed)
        .map_err(|e| DataError::Config(format!("data.val_size: {e}")))?;
    // Where each record goes: (0 = train, 1 = validation, its place there).
    let mut place = vec![(0, 0); records];
    for (list, order) in [&split.train, &split.test].into_iter().enumerate() {
        for (at, &record) in order.iter().enumerate() {
            place[record] = (list, at);
        }
    }
    let mut placed: Vec<((usize, usize), T)> = indexed
        .into_iter()
        .map(|(record, item)| (place[record], item))
        .collect();
    placed.sort_by_key(|(p, _)| *p);
    let mut lists = [Vec::new(), Vec::new()];
    for ((list, _), item) in placed {
        lists[list].push(item);
    }
    Ok(lists)
}

fn with_cutoff(
    examples: Vec<Example>,
    mut report: LoadReport,
    config: &DataConfig,
) -> Result<Dataset> {
    let (examples, cutoff) = apply_cutoff(examples, config.cutoff_len, config.overlong);
    report.cutoff = cutoff;
    if examples.is_empty() {
        return Err(DataError::Config(format!(
            "no examples left after the cutoff of {} tokens ({} over it)",
            config.cutoff_len, cutoff.over_cutoff
        )));
    }
    Ok(Dataset { examples, report })
}

/// Every valid record as a full-length example (no cutoff), with the read report.
pub fn tokenize_untruncated(
    config: &DataConfig,
    tokenizer: &ChatTokenizer,
    hub: &HubSettings,
) -> Result<(Vec<Example>, LoadReport)> {
    let (indexed, report) = tokenize_records(config, tokenizer, hub)?;
    Ok((indexed.into_iter().map(|(_, e)| e).collect(), report))
}

/// [`tokenize_untruncated`] split as [`load_dataset_split`] splits: the training examples and
/// the `val_size` held out (empty without it), full length, and the read report.
pub fn tokenize_split_untruncated(
    config: &DataConfig,
    tokenizer: &ChatTokenizer,
    hub: &HubSettings,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>, LoadReport)> {
    let (indexed, report) = tokenize_records(config, tokenizer, hub)?;
    if config.val_size == 0.0 {
        return Ok((
            indexed.into_iter().map(|(_, e)| e).collect(),
            Vec::new(),
            report,
        ));
    }
    let [train, val] = split_records(indexed, report.rows, config.val_size, seed)?;
    Ok((train, val, report))
}

/// [`tokenize_untruncated`], each example with the index of its record among those read (the
/// datasets of `data.also` after the first, their records numbered on).
fn tokenize_records(
    config: &DataConfig,
    tokenizer: &ChatTokenizer,
    hub: &HubSettings,
) -> Result<(Vec<(usize, Example)>, LoadReport)> {
    config.validate()?;
    let mut report = LoadReport::default();
    let mut examples = Vec::new();
    for source in config.sources() {
        tokenize_source(&source, tokenizer, hub, &mut report, &mut examples)?;
    }
    Ok((examples, report))
}

/// One dataset's records appended to `examples` (at most `limit` of them), counted in `report`.
fn tokenize_source(
    config: &DataConfig,
    tokenizer: &ChatTokenizer,
    hub: &HubSettings,
    report: &mut LoadReport,
    examples: &mut Vec<(usize, Example)>,
) -> Result<()> {
    let files = resolve_data_files(&config.path, hub)?;
    report.files.extend(files.iter().cloned());
    let (rows_before, skipped_before, examples_before) =
        (report.rows, report.skipped, examples.len());
    let limit = config.limit.unwrap_or(usize::MAX);
    'files: for file in &files {
        for record in read_records(file)? {
            if examples.len() - examples_before >= limit {
                break 'files;
            }
            report.rows += 1;
            match record
                .value
                .and_then(|value| encode_record(&value, config, tokenizer))
            {
                Ok(example) => examples.push((report.rows - 1, example)),
                Err(problem) => {
                    let error = problem.at(record.location);
                    match config.on_bad_row {
                        OnBadRow::Fail => return Err(error),
                        OnBadRow::Skip => {
                            report.skipped += 1;
                            if report.skipped_examples.len() < KEPT_SKIP_MESSAGES {
                                report.skipped_examples.push(error.to_string());
                            }
                        }
                    }
                }
            }
        }
    }
    if examples.len() == examples_before {
        let why = report
            .skipped_examples
            .get(skipped_before)
            .map(|e| format!("; first problem: {e}"))
            .unwrap_or_default();
        return Err(DataError::Config(format!(
            "no usable examples in {} ({} rows read, {} skipped{why})",
            config.path,
            report.rows - rows_before,
            report.skipped - skipped_before
        )));
    }
    Ok(())
}

/// One record to one example; problems are per-record so a bad row can be skipped.
pub fn encode_record(
    record: &Value,
    config: &DataConfig,
    tokenizer: &ChatTokenizer,
) -> Result<Example, FieldError> {
    let conversation = parse_record(record, config.format, &config.columns)?;
    let segments = render(&conversation, config.system.as_deref());
    tokenizer
        .encode_segments(&segments)
        .map_err(|e| FieldError::record(format!("tokenization failed: {e}")))
}
