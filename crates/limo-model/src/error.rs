//! Errors of model loading and math, each naming the file or tensor at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something wrong with a file of a checkpoint: unreadable, truncated, malformed.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A configuration value that the model cannot use.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
}
