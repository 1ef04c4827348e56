//! PyTorch zip checkpoints (to be written).
use super::*;
pub fn load_pth(path: &Path) -> Result<StateDict, WeightsError> {
    Err(WeightsError::format(
        path,
        "pth loading not yet implemented",
    ))
}
