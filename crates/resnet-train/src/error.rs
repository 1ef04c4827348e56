use std::path::{Path, PathBuf};

use resnet_core::WeightsError;

/// Everything that can go wrong in this crate. Messages name the file or parameter involved
/// and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file exists but its contents are not what this crate wrote.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A checkpoint directory without the file that names the current checkpoint.
    #[error(
        "{dir}: no checkpoint here ({file} is missing); start a fresh run or point at the run directory that has one"
    )]
    NoCheckpoint { dir: PathBuf, file: PathBuf },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The optimizer was handed parameters that disagree with each other or with its state.
    #[error("parameter `{name}`: {reason}")]
    Slot { name: String, reason: String },
    /// An invalid optimizer or schedule setting.
    #[error("invalid setting: {0}")]
    Config(String),
}

impl TrainError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> TrainError {
        TrainError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> TrainError {
        TrainError::Corrupt { path: path.to_path_buf(), reason: reason.into() }
    }

    pub(crate) fn slot(name: &str, reason: impl Into<String>) -> TrainError {
        TrainError::Slot { name: name.to_string(), reason: reason.into() }
    }
}
