//! `resnet classify`: top-k ImageNet (or a small data set's, or custom) classes for each image.

use std::fmt::Write;
use std::path::PathBuf;

use resnet_core::kernels::elementwise::{softmax_rows, top_k};
use serde::Serialize;

use crate::inputs::{batch_ranges, expand_inputs, load_batch, progress_bar};
use crate::labels::{imagenet_label, IMAGENET_CLASSES};
use crate::model_source::{load_model, ModelArgs, PlanArgs};
use crate::preprocessing::DatasetPreset;

/// Classify images: top classes with probabilities.
///
/// ImageNet nets (resnet18 ... resnext101_64x4d): decode, resize the shorter side (256, or
/// the weights' own size), center crop 224, normalise with ImageNet mean/std, run the model,
/// print the top classes with probabilities.
///
/// Nets trained with `resnet train` on a small data set (the CIFAR-style resnet20 ... 110,
/// plain20 ... 110, or any net trained with --dataset): pass the same --dataset. Input
/// channels and classes are read from the checkpoint. The image is converted to grey
/// (Pillow's convert("L")) for 1-channel nets, its shorter side resized to 28 (MNIST,
/// Fashion-MNIST) or 32 (CIFAR) with antialiased bilinear and the middle square kept (an
/// image already that size is not resized), scaled to 0..1 and normalised with the data
/// set's mean/std; labels are the data set's class names. Photos should look like the data
/// set: Fashion-MNIST and MNIST are light objects on a black background, centred and filling
/// the frame; nothing is inverted automatically.
///
/// Inputs may be image files (JPEG, PNG, WebP, BMP, GIF), directories (walked in sorted
/// order), or `.npy` float32 arrays [N, C, H, W] already preprocessed (C: the net's input
/// channels, 3 or 1).
///
/// Example: resnet classify cat.jpg dog.png --arch resnet50 --weights imagenet --top 3
///
/// Example: resnet classify shirt.png --arch resnet20 --weights runs/fmnist/best.safetensors
/// --dataset fashion-mnist
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images, directories of images, or .npy arrays.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plan: PlanArgs,
    /// The data set the weights were trained on: fashion-mnist, mnist, cifar10 or cifar100.
    /// Sets input size, grey or RGB, normalisation and class names; required for the
    /// CIFAR-style nets. CIFAR-100's names come from --labels (its fine_label_names.txt).
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print JSON: a list with, per input, `file` and `predictions` [{index, label, probability}].
    #[arg(long)]
    json: bool,
    /// Class names, one per line (default: the --dataset's, or ImageNet-1k's when there
    /// are 1000 classes).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = resnet_data::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

#[derive(Serialize)]
struct Prediction {
    index: usize,
    label: String,
    probability: f32,
}

#[derive(Serialize)]
struct ImageResult {
    file: String,
    predictions: Vec<Prediction>,
}

fn read_labels(path: &PathBuf, classes: usize) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read labels: {e}", path.display()))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    if labels.len() != classes {
        anyhow::bail!("{}: has {} labels but the model has {classes} classes", path.display(), labels.len());
    }
    Ok(labels)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.top == 0 {
        anyhow::bail!("--top must be at least 1");
    }
    let dataset = args.dataset.as_deref().map(DatasetPreset::parse).transpose()?;
    let items = expand_inputs(&args.inputs)?;
    let loaded = load_model(&args.model, dataset.as_ref())?;
    let classes = loaded.model.config.num_classes;
    // The compiled inference plan: BN folded, weights packed once, fused epilogues.
    let prep = loaded.prep;
    let model = loaded.model.into_compiled_with(args.plan.options());
    let names = match (&args.labels, &dataset) {
        (Some(p), _) => Some(read_labels(p, classes)?),
        (None, Some(d)) if d.num_classes != classes => anyhow::bail!(
            "{}: the network has {classes} classes but --dataset {} has {}; pass the data set it was trained on, \
             or --labels FILE with {classes} names",
            args.model.weights,
            d.kind,
            d.num_classes
        ),
        (None, Some(d)) => {
            if d.class_names.is_none() {
                eprintln!(
                    "note: --dataset {} has no built-in class names; pass --labels FILE (the data set's \
                     fine_label_names.txt) to name them",
                    d.kind
                );
            }
            d.class_names.clone()
        }
        (None, None) => None,
    };
    let label_of = |i: usize| -> String {
        match &names {
            Some(l) => l[i].clone(),
            None if classes == IMAGENET_CLASSES && dataset.is_none() => imagenet_label(i).unwrap_or("?").to_string(),
            None => format!("class {i}"),
        }
    };
    let bar = progress_bar(items.len(), "classify");
    let mut results = Vec::with_capacity(items.len());
    for range in batch_ranges(&items, args.batch) {
        let batch = &items[range];
        let x = load_batch(batch, &prep, args.max_pixels)?;
        let logits = model.forward(&x)?;
        let probs = softmax_rows(&logits.data, classes);
        for (item, row) in batch.iter().zip(probs.chunks(classes)) {
            let predictions = top_k(row, args.top)
                .into_iter()
                .map(|index| Prediction { index, label: label_of(index), probability: row[index] })
                .collect();
            results.push(ImageResult { file: item.display_name(), predictions });
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&results)?;
        out.push('\n');
    } else {
        for r in &results {
            let _ = writeln!(out, "{}", r.file);
            for (rank, p) in r.predictions.iter().enumerate() {
                let _ = writeln!(out, "  {:>2}. {:>6.2}%  {} ({})", rank + 1, p.probability * 100.0, p.label, p.index);
            }
        }
    }
    crate::output::emit(&out)
}
