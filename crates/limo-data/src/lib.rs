//! Datasets, the Qwen2.5 chat template, tokenization and batching for limo.
//!
//! The trainer's path: [`DataConfig`] → [`ChatTokenizer::from_path`] → [`load_dataset`] →
//! optionally [`Dataset::packed`] → a [`Sampler`] over examples or rows, whose
//! [`SamplerState`] goes into every checkpoint.

pub mod config;
pub mod cutoff;
pub mod dataset;
pub mod error;
pub mod example;
pub mod format;
pub mod hub;
pub mod packing;
pub mod reader;
pub mod sampler;
pub mod split;
pub mod stats;
pub mod template;
pub mod tokenize;

pub use config::{
    Columns, DataConfig, Format, OnBadRow, Overlong, Source, DEFAULT_CUTOFF_LEN, LIMO_SYSTEM_PROMPT,
};
pub use cutoff::{apply_cutoff, CutoffCounts};
pub use dataset::{
    encode_record, load_dataset, tokenize_split_untruncated, tokenize_untruncated, Dataset,
    LoadReport,
};
pub use error::{DataError, Result};
pub use example::{Example, IGNORE_INDEX};
pub use hub::{resolve_data_files, HubSettings};
pub use packing::{document_ids, may_attend, pack, PackedRow};
pub use sampler::{Sampler, SamplerState};
pub use stats::{length_stats, LengthStats};
pub use tokenize::ChatTokenizer;
