//! Errors of the training data sets and the loader.

use std::path::{Path, PathBuf};

use crate::DataError;

/// Everything that can go wrong while opening a data set, reading a sample, augmenting it or
/// assembling a batch. Every message is one line and names the file or directory involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// Decoding an image (ImageFolder) failed.
    #[error(transparent)]
    Data(#[from] DataError),

    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    /// A file or directory exists but its content or layout is wrong.
    #[error("{}: {detail}", path.display())]
    Invalid { path: PathBuf, detail: String },

    /// The data set's files were not found where they were looked for.
    #[error("{0}")]
    NotFound(String),

    /// A parameter (batch size, split fraction, augmentation, sample index) is unusable.
    #[error("{0}")]
    Config(String),

    /// The samples of one batch cannot be stacked (different sizes, channels).
    #[error("{0}")]
    Batch(String),

    /// A loader worker thread panicked while producing a batch.
    #[error("data loader worker panicked: {0}")]
    WorkerPanic(String),
}

impl DatasetError {
    pub(crate) fn read(path: &Path, source: std::io::Error) -> Self {
        DatasetError::Read { path: path.to_path_buf(), source }
    }

    pub(crate) fn invalid(path: &Path, detail: impl Into<String>) -> Self {
        DatasetError::Invalid { path: path.to_path_buf(), detail: detail.into() }
    }
}
