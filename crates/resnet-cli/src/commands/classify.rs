//! `resnet classify`: top-k ImageNet (or custom) classes for each image.

use std::fmt::Write;
use std::path::PathBuf;

use resnet_core::kernels::elementwise::{softmax_rows, top_k};
use resnet_data::Preprocess;
use serde::Serialize;

use crate::inputs::{batch_ranges, expand_inputs, load_batch, progress_bar};
use crate::labels::{imagenet_label, IMAGENET_CLASSES};
use crate::model_source::{load_model, ModelArgs};

/// Classify images: top classes with probabilities.
///
/// Decode, resize the shorter side (256, or the weights' own size), center
/// crop 224, normalise with ImageNet mean/std, run the model, print the top classes with
/// probabilities. Inputs may be image files (JPEG, PNG, WebP, BMP, GIF), directories
/// (walked in sorted order), or `.npy` float32 arrays [N, 3, H, W] already preprocessed.
///
/// Example: resnet classify cat.jpg dog.png --arch resnet50 --weights imagenet --top 3
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images, directories of images, or .npy arrays.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print JSON: a list with, per input, `file` and `predictions` [{index, label, probability}].
    #[arg(long)]
    json: bool,
    /// Class names, one per line (default: ImageNet-1k's when there are 1000 classes).
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
    let items = expand_inputs(&args.inputs)?;
    let loaded = load_model(&args.model)?;
    let classes = loaded.model.config.num_classes;
    let custom_labels = match &args.labels {
        Some(p) => Some(read_labels(p, classes)?),
        None => None,
    };
    let label_of = |i: usize| -> String {
        match &custom_labels {
            Some(l) => l[i].clone(),
            None if classes == IMAGENET_CLASSES => imagenet_label(i).unwrap_or("?").to_string(),
            None => format!("class {i}"),
        }
    };
    let pre = Preprocess::imagenet_with_resize(loaded.resize);
    let bar = progress_bar(items.len(), "classify");
    let mut results = Vec::with_capacity(items.len());
    for range in batch_ranges(&items, args.batch) {
        let batch = &items[range];
        let x = load_batch(batch, &pre, args.max_pixels)?;
        let logits = loaded.model.forward(&x)?;
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
