//! `resnet convert`: a torchvision `.pth` (or safetensors) checkpoint to safetensors.

use std::path::PathBuf;

use anyhow::Context;
use resnet_core::weights::{load_state_dict, safetensors_io::save_safetensors};

/// Convert a .pth checkpoint to safetensors.
///
/// Writes safetensors with the same key names (torchvision's), so both
/// PyTorch (`safetensors.torch.load_file`) and `resnet` read it. The pickle in a `.pth` is
/// read by a restricted reader that never runs code. Floating tensors are written as f32.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input checkpoint (`.pth` from torch.save of a state_dict, or `.safetensors`).
    input: PathBuf,
    /// Output `.safetensors` file (written atomically).
    output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sd = load_state_dict(&args.input)?;
    save_safetensors(&args.output, &sd).with_context(|| format!("writing {}", args.output.display()))?;
    let values: usize = sd.iter().map(|(_, t)| t.numel()).sum();
    crate::output::emit(&format!("wrote {} tensors ({} values) to {}\n", sd.len(), values, args.output.display()))
}
