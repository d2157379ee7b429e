//! One error type for the whole crate. Every error caused by user input names the file and,
//! where it applies, the row and the field, so a user can fix the data without a debugger.

use std::fmt;
use std::path::PathBuf;

/// Where a bad row lives. `row` is 1-based: the line number for JSONL, the element index + 1 for
/// a JSON array, the record index + 1 for Parquet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLocation {
    pub file: PathBuf,
    pub row: usize,
}

impl fmt::Display for RowLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: row {}", self.file.display(), self.row)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // The I/O error is in the message, not a `source`: `{:#}` would print it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file as a whole cannot be read (bad JSON array, unreadable Parquet footer, ...).
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// One record is malformed; with `on_bad_row = skip` these are counted instead.
    #[error("{location}: {}{message}", field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Row {
        location: RowLocation,
        field: Option<String>,
        message: String,
    },
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    #[error("invalid data configuration: {0}")]
    Config(String),
    #[error("Hugging Face Hub: {0}")]
    Hub(String),
    #[error("sampler: {0}")]
    Sampler(String),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            error: source,
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::File {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A problem inside one record, before the file and row are known; the reader adds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn record(message: impl Into<String>) -> Self {
        FieldError {
            field: None,
            message: message.into(),
        }
    }

    pub fn at(self, location: RowLocation) -> DataError {
        DataError::Row {
            location,
            field: self.field,
            message: self.message,
        }
    }
}
