//! Turning `--arch` and `--weights` into a ready model and its preprocessing.

use std::path::{Path, PathBuf};

use anyhow::Context;
use resnet_core::model::seeded::seed_parameters;
use resnet_core::weights::load_state_dict;
use resnet_core::{ResNet, ResNetConfig};

use crate::pretrained;

/// The options every command that runs a model shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Architecture: resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2,
    /// wide_resnet101_2, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d.
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    /// Weights: a `.pth` or `.safetensors` file; `imagenet` (torchvision's V1 weights,
    /// downloaded once into the cache) or `imagenet-v2`; or `random` (seeded, for tests).
    #[arg(long, default_value = "imagenet", value_name = "FILE|imagenet|imagenet-v2|random")]
    pub weights: String,
    /// Outputs of the final layer (must match the checkpoint's `fc.weight`).
    #[arg(long, default_value_t = 1000)]
    pub num_classes: usize,
    /// `false` ignores checkpoint keys this architecture does not have.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub strict: bool,
    /// Resize the shorter side to this many pixels before the center crop (default: 256,
    /// or what the pretrained weights were trained with, e.g. 232 for most V2 weights).
    #[arg(long, value_name = "PIXELS")]
    pub resize: Option<u32>,
}

/// A model with its weights and the resize its weights expect.
pub struct LoadedModel {
    pub model: ResNet,
    pub resize: u32,
}

pub fn load_model(args: &ModelArgs) -> anyhow::Result<LoadedModel> {
    let config = ResNetConfig::from_name(&args.arch)?.with_num_classes(args.num_classes);
    let mut model = ResNet::new(config)?;
    let mut resize = 256;
    let file: PathBuf = match args.weights.as_str() {
        "random" => {
            seed_parameters(&mut model, 0);
            return Ok(LoadedModel { model, resize: args.resize.unwrap_or(resize) });
        }
        name if name.parse::<pretrained::WeightsVariant>().is_ok() => {
            let variant: pretrained::WeightsVariant = name.parse()?;
            if args.num_classes != 1000 {
                anyhow::bail!(
                    "--weights {name} has 1000 ImageNet classes; drop --num-classes {} or pass your own checkpoint",
                    args.num_classes
                );
            }
            let spec = pretrained::lookup(&args.arch, variant)?;
            resize = spec.resize;
            pretrained::fetch_pretrained(spec, &pretrained::default_cache_dir()?, None, true)?
        }
        path => PathBuf::from(path),
    };
    load_weights_file(&mut model, &file, args.strict)?;
    Ok(LoadedModel { model, resize: args.resize.unwrap_or(resize) })
}

/// Loads `file` into `model`, explaining a mismatch in terms of architectures.
pub fn load_weights_file(model: &mut ResNet, file: &Path, strict: bool) -> anyhow::Result<()> {
    if !file.exists() {
        anyhow::bail!(
            "{}: no such weights file (use a .pth/.safetensors path, `imagenet`, `imagenet-v2` or `random`)",
            file.display()
        );
    }
    let sd = load_state_dict(file)?;
    if let Err(e) = model.load_state_dict(&sd, strict) {
        let hint = match ResNetConfig::infer_from_state_dict(&sd) {
            Some((name, classes))
                if Some(name.as_str()) != model.config.torchvision_name() || classes != model.config.num_classes =>
            {
                format!(" (this checkpoint looks like {name} with {classes} classes: try --arch {name} --num-classes {classes})")
            }
            _ => String::new(),
        };
        return Err(anyhow::anyhow!("{e}{hint}")).with_context(|| format!("{}", file.display()));
    }
    Ok(())
}
