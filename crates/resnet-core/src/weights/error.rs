use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or applying weights. Each message names the file
/// (or key) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid weights file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("missing key `{key}` (expected shape {expected:?}); is this checkpoint for another architecture?")]
    MissingKey { key: String, expected: Vec<usize> },
    #[error(
        "unexpected key `{key}` (shape {shape:?}) not in this architecture; pass --strict false to ignore extra keys"
    )]
    UnexpectedKey { key: String, shape: Vec<usize> },
    #[error("key `{key}`: checkpoint has shape {found:?} but this architecture needs {expected:?}; is this checkpoint for another architecture or --num-classes?")]
    ShapeMismatch { key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("key `{key}`: expected a floating-point tensor, found integers")]
    NotFloat { key: String },
    /// The pickle references a global outside the allowlist (`global` is `module name`).
    #[error("{path}: refusing to load: the pickle calls `{global}`, which a state_dict never needs; this file may be malicious")]
    UnsafePickle { path: PathBuf, global: String },
    /// The pickle is a whole pickled `nn.Module` (or TorchScript object), not a state_dict.
    #[error("{path}: refusing to load: the pickle calls `{global}`, so it holds a whole pickled model rather than a state_dict; re-save it with `torch.save(model.state_dict(), path)`")]
    PickledModule { path: PathBuf, global: String },
    /// A pre-1.6 (non-zip) `torch.save` file.
    #[error("{path}: a legacy (pre-1.6, non-zip) PyTorch checkpoint, which is not supported; re-save it with a current PyTorch: `torch.save(torch.load(old_path), new_path)`")]
    LegacyPth { path: PathBuf },
}

impl WeightsError {
    pub fn io(path: &Path, source: std::io::Error) -> WeightsError {
        WeightsError::Io { path: path.to_path_buf(), source }
    }

    pub fn format(path: &Path, reason: impl Into<String>) -> WeightsError {
        WeightsError::Format { path: path.to_path_buf(), reason: reason.into() }
    }
}
