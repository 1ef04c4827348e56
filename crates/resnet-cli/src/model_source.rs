//! Turning `--arch`, `--weights` and `--dataset` into a ready model and the preprocessing its
//! inputs need.

use std::path::Path;

use anyhow::Context;
use resnet_core::model::seeded::seed_parameters;
use resnet_core::model::{CompileOptions, Precision, Shortcut, Stem};
use resnet_core::weights::load_state_dict;
use resnet_core::{ResNet, ResNetConfig, StateDict};

use crate::commands::train::build_model;
use crate::preprocessing::{DatasetPreset, InputPrep, DATASET_NAMES};
use crate::pretrained;

/// The options every command that runs a model shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Architecture: resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2,
    /// wide_resnet101_2, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d; or the
    /// paper's CIFAR-style nets resnet20/32/44/56/110 and plain20/32/44/56/110 (as `resnet
    /// train` makes them; these need --dataset).
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    /// Weights: a `.pth` or `.safetensors` file (e.g. the best.safetensors `resnet train`
    /// wrote); `imagenet` (torchvision's V1 weights, downloaded once into the cache) or
    /// `imagenet-v2`; or `random` (seeded, for tests).
    #[arg(long, default_value = "imagenet", value_name = "FILE|imagenet|imagenet-v2|random")]
    pub weights: String,
    /// Outputs of the final layer (default: read from the checkpoint's `fc.weight`; 1000 for
    /// ImageNet weights; the --dataset's classes, else 1000, for random weights). When given,
    /// it must agree with the checkpoint.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// `false` ignores checkpoint keys this architecture does not have.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub strict: bool,
    /// Resize the shorter side to this many pixels before the center crop (default: 256,
    /// or what the pretrained weights were trained with, e.g. 232 for most V2 weights).
    /// ImageNet preprocessing only.
    #[arg(long, value_name = "PIXELS")]
    pub resize: Option<u32>,
}

/// How a loaded network is compiled for inference (`resnet classify`, `embed`, `bench`).
#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// Number format of the convolutions' multiplies: fp32, or bf16 (weights and each
    /// layer's input rounded to bfloat16, sums in f32; AVX512-BF16's vdpbf16ps where the CPU
    /// has it, about 1.5x fp32's speed, logits within ~0.5% of fp32's; a slow emulation
    /// elsewhere).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fp32)]
    pub precision: PrecisionArg,
    /// Compute 3x3 stride-1 convolutions directly instead of by Winograd: F(4x4,3x3) in
    /// fp32 (about 2x faster on those layers, rounding errors ~2e-6 of a layer's largest
    /// output instead of ~1e-7), F(2x2,3x3) in bf16 on layers of 128 channels and more (1.1-1.5x
    /// faster there, errors ~4e-3 instead of ~2.4e-3). With `bench --train`, the training
    /// convolutions too.
    #[arg(long)]
    pub no_winograd: bool,
}

impl PlanArgs {
    pub fn options(&self) -> CompileOptions {
        CompileOptions { precision: self.precision.into(), winograd: !self.no_winograd }
    }
}

/// `--precision` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionArg {
    Fp32,
    Bf16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Fp32 => Precision::F32,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

impl PrecisionArg {
    pub fn name(self) -> &'static str {
        match self {
            PrecisionArg::Fp32 => "fp32",
            PrecisionArg::Bf16 => "bf16",
        }
    }
}

/// A model with its weights and the preprocessing its inputs need.
pub struct LoadedModel {
    pub model: ResNet,
    pub prep: InputPrep,
}

/// Builds `--arch` with `--weights`. Input channels and classes come from the checkpoint
/// (`conv1.weight`, `fc.weight`), so a net from `resnet train` loads with no more flags than
/// its architecture and data set. With `dataset` the inputs get that data set's
/// preprocessing, without it ImageNet's; the CIFAR-style nets need a data set.
pub fn load_model(args: &ModelArgs, dataset: Option<&DatasetPreset>) -> anyhow::Result<LoadedModel> {
    let base = ResNetConfig::from_name(&args.arch)?;
    let cifar = base.stem == Stem::Cifar;
    if cifar && dataset.is_none() {
        anyhow::bail!(
            "--arch {} is a CIFAR-style net: pass --dataset NAME ({DATASET_NAMES}), the data set it was trained on, \
             which sets the input size, channels, normalisation and class names",
            args.arch
        );
    }
    if args.resize == Some(0) {
        anyhow::bail!("--resize must be at least 1 pixel");
    }
    if let (Some(d), Some(r)) = (dataset, args.resize) {
        anyhow::bail!(
            "--resize {r} applies to ImageNet preprocessing only; with --dataset {} images become {}x{} (drop --resize)",
            d.kind,
            d.side,
            d.side
        );
    }
    let default_classes = dataset.map_or(1000, |d| d.num_classes);
    let default_channels = dataset.map_or(3, |d| d.channels);
    let mut resize = 256;
    let model = match args.weights.as_str() {
        "random" => {
            let classes = args.num_classes.unwrap_or(default_classes);
            let mut model = build_model(&args.arch, default_channels, classes, false)?;
            seed_parameters(&mut model, 0);
            model
        }
        name if name.parse::<pretrained::WeightsVariant>().is_ok() => {
            if cifar {
                anyhow::bail!(
                    "--weights {name}: pretrained weights exist only for the torchvision architectures; for --arch {} \
                     pass the .safetensors file `resnet train` wrote",
                    args.arch
                );
            }
            if let Some(n) = args.num_classes.filter(|&n| n != 1000) {
                anyhow::bail!(
                    "--weights {name} has 1000 ImageNet classes; drop --num-classes {n} or pass your own checkpoint"
                );
            }
            let variant: pretrained::WeightsVariant = name.parse()?;
            let spec = pretrained::lookup(&args.arch, variant)?;
            resize = spec.resize;
            let file = pretrained::fetch_pretrained(spec, &pretrained::default_cache_dir()?, None, true)?;
            let mut model = ResNet::new(base)?;
            load_weights_file(&mut model, &file, args.strict)?;
            model
        }
        path => load_checkpoint(args, Path::new(path), default_classes, default_channels)?,
    };
    let weights = &args.weights;
    let channels = model.config.in_channels;
    let prep = match dataset {
        Some(d) if d.channels != channels => anyhow::bail!(
            "{weights}: the network takes {channels}-channel images but --dataset {} has {}-channel ones; pass the \
             data set the weights were trained on (fashion-mnist or mnist: 1 channel; cifar10 or cifar100: 3)",
            d.kind,
            d.channels
        ),
        Some(d) => InputPrep::for_dataset(d),
        None if channels != 3 => anyhow::bail!(
            "{weights}: the network takes {channels}-channel images but ImageNet preprocessing gives 3; pass \
             --dataset NAME ({DATASET_NAMES}), the data set it was trained on"
        ),
        None => InputPrep::imagenet(args.resize.unwrap_or(resize)),
    };
    Ok(LoadedModel { model, prep })
}

/// A checkpoint file: the network's input channels and classes (and, for the CIFAR nets,
/// option-B shortcuts) are read from it, `--num-classes` must agree.
fn load_checkpoint(
    args: &ModelArgs,
    file: &Path,
    default_classes: usize,
    default_channels: usize,
) -> anyhow::Result<ResNet> {
    check_exists(file)?;
    let sd = load_state_dict(file)?;
    let classes_in_file = sd.get("fc.weight").and_then(|t| t.shape.first().copied());
    if let (Some(n), Some(k)) = (args.num_classes, classes_in_file) {
        if n != k {
            anyhow::bail!(
                "{}: the checkpoint's fc has {k} classes but --num-classes is {n}; drop --num-classes (it is read \
                 from the checkpoint) or pass --num-classes {k}",
                file.display()
            );
        }
    }
    let classes = args.num_classes.or(classes_in_file).unwrap_or(default_classes);
    let channels = sd.get("conv1.weight").and_then(|t| t.shape.get(1).copied()).unwrap_or(default_channels);
    let base = ResNetConfig::from_name(&args.arch)?;
    let projection =
        base.stem == Stem::Cifar && base.shortcut == Shortcut::ZeroPad && sd.keys().any(|k| k.contains(".downsample."));
    let mut model = build_model(&args.arch, channels, classes, projection)?;
    apply_state_dict(&mut model, &sd, file, args.strict)?;
    Ok(model)
}

fn check_exists(file: &Path) -> anyhow::Result<()> {
    if !file.exists() {
        anyhow::bail!(
            "{}: no such weights file (use a .pth/.safetensors path, `imagenet`, `imagenet-v2` or `random`)",
            file.display()
        );
    }
    Ok(())
}

/// Loads `file` into `model`, explaining a mismatch in terms of architectures.
pub fn load_weights_file(model: &mut ResNet, file: &Path, strict: bool) -> anyhow::Result<()> {
    check_exists(file)?;
    let sd = load_state_dict(file)?;
    apply_state_dict(model, &sd, file, strict)
}

fn apply_state_dict(model: &mut ResNet, sd: &StateDict, file: &Path, strict: bool) -> anyhow::Result<()> {
    if let Err(e) = model.load_state_dict(sd, strict) {
        let classes = sd.get("fc.weight").and_then(|t| t.shape.first().copied());
        let hint = match (ResNetConfig::infer_from_state_dict(sd), cifar_depth(sd)) {
            (Some((name, classes)), _)
                if Some(name.as_str()) != model.config.torchvision_name() || classes != model.config.num_classes =>
            {
                format!(" (this checkpoint looks like {name} with {classes} classes: try --arch {name} --num-classes {classes})")
            }
            (None, Some(depth))
                if model.config.stem != Stem::Cifar || model.config.layers != vec![(depth - 2) / 6; 3] =>
            {
                let classes = classes.map_or(String::new(), |k| format!(" with {k} classes"));
                format!(" (this checkpoint looks like a CIFAR-style net of depth {depth}{classes}: try --arch resnet{depth} or plain{depth})")
            }
            _ => String::new(),
        };
        return Err(anyhow::anyhow!("{e}{hint}")).with_context(|| format!("{}", file.display()));
    }
    Ok(())
}

/// The depth `6n + 2` of a CIFAR-style net's state_dict (three stages of n blocks, a 16-channel
/// first conv), or `None` when it is not one.
fn cifar_depth(sd: &StateDict) -> Option<usize> {
    if sd.get("conv1.weight")?.shape.first() != Some(&16) || sd.keys().any(|k| k.starts_with("layer4.")) {
        return None;
    }
    let blocks = |stage: usize| {
        sd.keys()
            .filter_map(|k| {
                k.strip_prefix(&format!("layer{stage}.")).and_then(|r| r.split('.').next()?.parse::<usize>().ok())
            })
            .max()
            .map(|b| b + 1)
    };
    let n = blocks(1)?;
    (blocks(2) == Some(n) && blocks(3) == Some(n)).then_some(6 * n + 2)
}
