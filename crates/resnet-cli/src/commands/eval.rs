//! `resnet eval`: accuracy, top-5 and the confusion matrix of weights on a data set.

use std::fmt::Write;
use std::path::PathBuf;

use resnet_data::{open_dataset, Augment};

use super::train::{build_model, dataset_kind};
use crate::model_source::load_weights_file;

/// Evaluate weights on a data set's test split: accuracy, top-5, loss, confusion matrix.
///
/// Example: resnet eval --arch resnet20 --weights runs/fmnist/best.safetensors --dataset fashion-mnist
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = "resnet20")]
    arch: String,
    /// Weights to evaluate (.safetensors or .pth).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Data set: fashion-mnist, mnist, cifar10, cifar100, image-folder, npz.
    #[arg(long)]
    dataset: Option<String>,
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Evaluate the training split instead of the test split.
    #[arg(long)]
    train_split: bool,
    /// Projection (option B) shortcuts, if the weights were trained with them.
    #[arg(long)]
    projection_shortcuts: bool,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Print JSON: accuracy, top5 (fractions), count, loss, confusion (rows: true class).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let kind = dataset_kind(args.dataset.as_deref(), args.data.as_ref())?;
    let splits = open_dataset(kind, args.data.as_deref())?;
    let data = match (args.train_split, splits.test) {
        (false, Some(test)) => test,
        (false, None) => {
            eprintln!("{}: no test split; evaluating the training split", kind.name());
            splits.train
        }
        (true, _) => splits.train,
    };
    let mut model = build_model(&args.arch, data.channels(), data.num_classes(), args.projection_shortcuts)?;
    load_weights_file(&mut model, &args.weights, true)?;
    let eval_augment: Augment = Augment::for_evaluation(kind);
    let r = resnet_train::evaluate(&model, data.clone(), eval_augment, args.batch, args.workers)?;
    let mut out = String::new();
    if args.json {
        let v = serde_json::json!({
            "arch": args.arch, "weights": args.weights, "dataset": kind.name(), "count": r.count,
            "accuracy": r.accuracy(), "top5": r.top5(), "loss": r.loss, "confusion": r.confusion,
        });
        out = format!("{}\n", serde_json::to_string_pretty(&v)?);
    } else {
        let _ = writeln!(out, "{} on {} ({} images)", args.weights.display(), kind.name(), r.count);
        let _ =
            writeln!(out, "accuracy {:.2}%  top-5 {:.2}%  loss {:.4}", 100.0 * r.accuracy(), 100.0 * r.top5(), r.loss);
        let names = data.class_names().map(|n| n.to_vec());
        let _ = writeln!(out, "confusion matrix (rows: true class, columns: predicted):");
        for (i, row) in r.confusion.iter().enumerate() {
            let label = names.as_ref().and_then(|n| n.get(i).cloned()).unwrap_or_else(|| i.to_string());
            let cells: Vec<String> = row.iter().map(|c| format!("{c:>5}")).collect();
            let _ = writeln!(out, "{label:>14} {}", cells.join(""));
        }
    }
    crate::output::emit(&out)
}
