//! `resnet train`: train or fine-tune on a data set, with checkpoints that resume exactly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use resnet_core::model::Shortcut;
use resnet_core::{ResNet, ResNetConfig};
use resnet_data::{open_dataset, random_subset, split_holdout, Augment, Dataset, DatasetKind, Subset};
use resnet_train::{Decay, Granularity, LrSchedule, LrScheduleSpec, SgdConfig, TrainOptions, Warmup};

/// Train or fine-tune a network on a data set.
///
/// Data: `--dataset fashion-mnist|mnist|cifar10|cifar100` (Fashion-MNIST is found where
/// Debian's dataset-fashion-mnist installs it), or `--data PATH` with `--dataset
/// image-folder|npz|...` for your own files. Writes RUN_DIR/metrics.jsonl, curves.png,
/// last.safetensors, best.safetensors and a checkpoint each epoch and on Ctrl-C; `--resume
/// RUN_DIR` continues exactly where it stopped.
///
/// Example: resnet train --arch resnet20 --dataset fashion-mnist --epochs 30 --batch 128
///   --lr 0.1 --schedule cosine --out runs/fmnist
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architecture: the CIFAR nets resnet20/32/44/56/110 and plain20/..., or any
    /// torchvision one (resnet18, resnet50, ...).
    #[arg(long, default_value = "resnet20")]
    pub arch: String,
    #[command(flatten)]
    pub recipe: Recipe,
    /// Input channels (default: the data set's).
    #[arg(long)]
    pub in_channels: Option<usize>,
    /// Classes (default: the data set's).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Start from these weights (a .pth/.safetensors file, or imagenet to fine-tune; the
    /// final layer is replaced when --num-classes differs).
    #[arg(long, alias = "init", value_name = "FILE|imagenet")]
    pub weights: Option<String>,
    /// Train only the final layer.
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Run directory for metrics, curves, weights and checkpoints.
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint (same other options).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
}

/// The data set and the training recipe: shared by `train` and `experiment`, so that an
/// experiment's runs can be continued with `resnet train --resume` and the same flags.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct Recipe {
    /// Data set: fashion-mnist, mnist, cifar10, cifar100, image-folder, npz.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Where the data set's files are (a directory; the .npz file itself for npz).
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 30)]
    pub epochs: u64,
    /// Stop after this many optimizer steps (weights are still saved).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// L2 penalty added to the gradients (SGD's weight_decay).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Leave BatchNorm parameters and biases out of weight decay.
    #[arg(long)]
    pub no_decay_bn_bias: bool,
    /// constant, step (×gamma at each of --milestones epochs) or cosine (to 0 over the run).
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Epochs at which `step` multiplies the LR by --gamma (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "")]
    pub milestones: Vec<String>,
    /// LR factor at each --milestones epoch.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Linear warm-up over this many epochs (from 10% of --lr).
    #[arg(long, default_value_t = 0.0)]
    pub warmup_epochs: f64,
    /// Label smoothing of the cross-entropy, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Clip the gradients' total L2 norm to this.
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Projection (option B) shortcuts for the CIFAR nets instead of zero-padding (A).
    #[arg(long)]
    pub projection_shortcuts: bool,
    /// No random augmentation (by default CIFAR gets a pad-4 crop and flip, Fashion-MNIST a
    /// pad-2 crop and flip, image folders a random resized crop and flip, MNIST and npz none).
    #[arg(long)]
    pub no_augment: bool,
    /// Keep the data set's order instead of shuffling each epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Compute every convolution directly (as a GEMM over its patches) instead of the 3x3
    /// stride-1 ones with at least 16 channels by Winograd F(4x4,3x3). Winograd is 1.1-2.2x
    /// faster on those layers' forward and input gradient (all of the CIFAR nets' 3x3
    /// stride-1 layers included), with rounding errors ~3e-6 of a layer's largest output
    /// instead of ~1e-7.
    #[arg(long)]
    pub no_winograd: bool,
    /// Seed of the initial weights, the data order and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data-loading worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Train on only this many training samples, a seeded random choice (quick experiments;
    /// the test set stays whole).
    #[arg(long, value_name = "N")]
    pub train_samples: Option<usize>,
    /// Fraction of the training set held out for testing when the data set has no test split.
    #[arg(long, default_value_t = 0.1)]
    pub holdout: f64,
    /// Write a step record to metrics.jsonl every this many steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
}

pub fn dataset_kind(name: Option<&str>, data: Option<&PathBuf>) -> anyhow::Result<DatasetKind> {
    match name {
        Some(n) => n.parse::<DatasetKind>().map_err(|e| anyhow::anyhow!("--dataset {n}: {e}")),
        None if data.is_some_and(|p| p.extension().is_some_and(|e| e == "npz")) => Ok(DatasetKind::Npz),
        None if data.is_some() => Ok(DatasetKind::ImageFolder),
        None => anyhow::bail!("pass --dataset NAME (fashion-mnist, mnist, cifar10, cifar100) or --data PATH"),
    }
}

/// Builds the network for a data set: CIFAR nets take the data set's channels and classes.
pub fn build_model(arch: &str, in_channels: usize, num_classes: usize, projection: bool) -> anyhow::Result<ResNet> {
    let mut config = ResNetConfig::from_name(arch)?.with_num_classes(num_classes).with_in_channels(in_channels);
    if projection {
        config = config.with_shortcut(Shortcut::Projection);
    }
    Ok(ResNet::new(config)?)
}

/// What `recipe` trains on and tests on.
pub(crate) struct Splits {
    pub kind: DatasetKind,
    pub train: Arc<dyn Dataset>,
    pub test: Option<Arc<dyn Dataset>>,
}

/// The training data and the data to test on: the data set's test split, or else a seeded
/// `holdout` fraction of its training split.
pub(crate) fn open_splits(recipe: &Recipe) -> anyhow::Result<Splits> {
    let kind = dataset_kind(recipe.dataset.as_deref(), recipe.data.as_ref())?;
    let splits = open_dataset(kind, recipe.data.as_deref())?;
    let Splits { kind, train, test } = match splits.test {
        Some(t) => Splits { kind, train: splits.train, test: Some(t) },
        None => {
            let h = split_holdout(splits.train.len(), recipe.holdout, recipe.seed)?;
            let train: Arc<dyn Dataset> = Arc::new(Subset::new(splits.train.clone(), h.train)?);
            let test: Arc<dyn Dataset> = Arc::new(Subset::new(splits.train, h.holdout)?);
            eprintln!("no test split: holding out {} of {} samples for testing", test.len(), train.len() + test.len());
            Splits { kind, train, test: Some(test) }
        }
    };
    let train = match recipe.train_samples {
        None => train,
        Some(count) => {
            let chosen = random_subset(train.len(), count, recipe.seed).context("--train-samples")?;
            Arc::new(Subset::new(train, chosen)?)
        }
    };
    Ok(Splits { kind, train, test })
}

/// The [`TrainOptions`] of `recipe` for a training set of `train_len` samples of `kind`.
/// Also applies the recipe's choice of convolution algorithm (`--no-winograd`), which is
/// process-wide.
pub(crate) fn train_options(
    recipe: &Recipe,
    kind: DatasetKind,
    train_len: usize,
    run_dir: PathBuf,
    freeze_backbone: bool,
) -> anyhow::Result<TrainOptions> {
    resnet_core::kernels::winograd::set_enabled_for_training(!recipe.no_winograd);
    let steps_per_epoch = (train_len / recipe.batch.max(1)) as u64;
    let decay = match recipe.schedule.as_str() {
        "constant" => Decay::Constant,
        "cosine" => Decay::Cosine { t_max: recipe.epochs * steps_per_epoch, eta_min: 0.0 },
        "step" => {
            let milestones = recipe
                .milestones
                .iter()
                .filter(|m| !m.is_empty())
                .map(|m| m.trim().parse::<u64>().map(|e| e * steps_per_epoch))
                .collect::<Result<Vec<_>, _>>()
                .context("--milestones takes epoch numbers, e.g. 15,25")?;
            Decay::MultiStep { milestones, gamma: recipe.gamma }
        }
        other => anyhow::bail!("--schedule {other}: choose constant, step or cosine"),
    };
    let warmup_steps = (recipe.warmup_epochs * steps_per_epoch as f64).round() as u64;
    let warmup = (warmup_steps > 0).then_some(Warmup { length: warmup_steps, start_factor: 0.1 });
    let spec = LrScheduleSpec { base_lr: recipe.lr, decay, warmup, granularity: Granularity::Step };
    Ok(TrainOptions {
        epochs: recipe.epochs,
        max_steps: recipe.max_steps,
        batch_size: recipe.batch,
        sgd: SgdConfig {
            momentum: recipe.momentum,
            dampening: 0.0,
            nesterov: recipe.nesterov,
            weight_decay: recipe.weight_decay,
        },
        schedule: LrSchedule::new(spec)?,
        no_decay_bn_bias: recipe.no_decay_bn_bias,
        label_smoothing: recipe.label_smoothing,
        clip_grad_norm: recipe.clip_grad_norm,
        freeze_backbone,
        seed: recipe.seed,
        shuffle: !recipe.no_shuffle,
        augment: Augment::for_training(kind, !recipe.no_augment),
        eval_augment: Augment::for_evaluation(kind),
        workers: recipe.workers,
        log_every: recipe.log_every,
        run_dir,
        progress: true,
    })
}

/// A flag that the first Ctrl-C raises (training then finishes its step, saves a checkpoint
/// and returns); a second Ctrl-C exits at once. Install once per process.
pub(crate) fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let handler_flag = stop.clone();
    ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint (Ctrl-C again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let recipe = &args.recipe;
    let Splits { kind, train, test } = open_splits(recipe)?;
    let in_channels = args.in_channels.unwrap_or(train.channels());
    let num_classes = args.num_classes.unwrap_or(train.num_classes());
    let mut model = build_model(&args.arch, in_channels, num_classes, recipe.projection_shortcuts)?;
    seed_parameters_kaiming(&mut model, recipe.seed);
    if let Some(w) = &args.weights {
        init_from(&mut model, w, num_classes)?;
    }
    let run_dir = match (&args.resume, &args.out) {
        (Some(r), _) => r.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => PathBuf::from("runs").join(format!("{}-{}", args.arch, kind.name())),
    };
    let opts = train_options(recipe, kind, train.len(), run_dir.clone(), args.freeze_backbone)?;
    let stop = stop_on_ctrl_c()?;
    eprintln!(
        "training {} ({} parameters) on {} ({} train / {} test samples), run dir {}",
        args.arch,
        model.parameter_count(),
        kind.name(),
        train.len(),
        test.as_ref().map_or(0, |t| t.len()),
        run_dir.display()
    );
    let summary = resnet_train::train(&mut model, train, test, &opts, args.resume.is_some(), &stop)?;
    eprintln!(
        "{} after {} steps ({:.0} s); best test accuracy {}; weights in {}",
        if summary.interrupted { "stopped" } else { "done" },
        summary.steps,
        summary.seconds,
        summary.best_accuracy.map_or("n/a".to_string(), |a| format!("{:.2}%", 100.0 * a)),
        run_dir.join("last.safetensors").display()
    );
    Ok(())
}

/// torchvision's initialisation for ResNets: Kaiming-normal (fan_out, ReLU) conv weights,
/// BN γ=1 β=0, and nn.Linear's default U(±1/sqrt(in)) for `fc`, from a seeded generator.
pub(crate) fn seed_parameters_kaiming(model: &mut ResNet, seed: u64) {
    use resnet_core::model::params::Parameterized;
    use resnet_core::prng::SplitMix64;
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    let fc_bound = 1.0 / (model.fc.in_features as f64).sqrt();
    model.visit_mut("", &mut |name, p| {
        if p.kind != resnet_core::model::ParamKind::Trainable {
            return;
        }
        let values: Vec<f32> = if p.torch_shape.len() == 4 {
            let s = &p.torch_shape;
            let std = (2.0 / (s[0] * s[2] * s[3]) as f64).sqrt();
            (0..p.numel())
                .map(|_| {
                    // Box-Muller on two uniforms.
                    let (u1, u2) = (rng.next_f64().max(1e-300), rng.next_f64());
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
                })
                .collect()
        } else if name.starts_with("fc.") {
            (0..p.numel()).map(|_| rng.uniform_f32(-fc_bound, fc_bound)).collect()
        } else if name.ends_with(".weight") {
            vec![1.0; p.numel()]
        } else {
            vec![0.0; p.numel()]
        };
        p.set_from_torch_order(&values);
    });
}

/// Loads starting weights; a different head size keeps the new (random) `fc`.
fn init_from(model: &mut ResNet, weights: &str, num_classes: usize) -> anyhow::Result<()> {
    let file = if weights.parse::<crate::pretrained::WeightsVariant>().is_ok() {
        let variant = weights.parse()?;
        let arch = model.config.torchvision_name().ok_or_else(|| {
            anyhow::anyhow!("--weights {weights}: pretrained weights exist only for torchvision architectures (resnet18 ... resnext101_64x4d)")
        })?;
        let spec = crate::pretrained::lookup(arch, variant)?;
        crate::pretrained::fetch_pretrained(spec, &crate::pretrained::default_cache_dir()?, None, true)?
    } else {
        PathBuf::from(weights)
    };
    let mut sd = resnet_core::weights::load_state_dict(&file).with_context(|| file.display().to_string())?;
    let head_matches = sd.get("fc.weight").is_some_and(|t| t.shape.first() == Some(&num_classes));
    if !head_matches {
        let mut without_head = resnet_core::weights::StateDict::new();
        for (k, t) in sd.iter().filter(|(k, _)| !k.starts_with("fc.")) {
            without_head.insert(k, t.clone());
        }
        let fc = model.state_dict();
        for k in ["fc.weight", "fc.bias"] {
            if let Some(t) = fc.get(k) {
                without_head.insert(k, t.clone());
            }
        }
        sd = without_head;
        eprintln!("{}: new {num_classes}-class head (the checkpoint's fc is not used)", file.display());
    }
    model.load_state_dict(&sd, true).with_context(|| file.display().to_string())?;
    Ok(())
}
