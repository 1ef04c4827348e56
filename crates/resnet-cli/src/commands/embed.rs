//! `resnet embed`: features for search and as a backbone, one row per input.

use std::path::PathBuf;

use anyhow::Context;
use resnet_core::model::FeatureLayer;
use resnet_core::weights::safetensors_io::save_safetensors_with_metadata;
use resnet_core::weights::{StateDict, StoredTensor};
use resnet_data::write_npy_f32;

use crate::inputs::{batch_ranges, expand_inputs, load_batch, progress_bar};
use crate::model_source::{load_model, ModelArgs, PlanArgs};
use crate::preprocessing::DatasetPreset;

/// Extract embeddings or feature maps to .npy or .safetensors.
///
/// The pooled embedding (`pool`, 2048-d for ResNet-50), the logits, or a
/// stage's feature map (`layer1`..`layer4`, written [N, C, H, W] as PyTorch lays it out).
/// Rows follow the input order; directories are walked in sorted order. Nets trained on a
/// small data set (e.g. the CIFAR-style resnet20) take `--dataset NAME` for that data set's
/// preprocessing, as in `resnet classify` (pool is then 64-d). Output is `.npy`
/// (float32, readable by numpy.load) or `.safetensors` (tensor `features`, with the input
/// names in the metadata key `inputs` as a JSON list).
///
/// Example: resnet embed photos/ --layer pool --out embeddings.npy
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images, directories of images, or .npy arrays [N, C, H, W] already preprocessed.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    plan: PlanArgs,
    /// The data set the weights were trained on (fashion-mnist, mnist, cifar10, cifar100):
    /// its input size, grey or RGB, and normalisation. Required for the CIFAR-style nets.
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Which output: logits, pool, layer1, layer2, layer3 or layer4.
    #[arg(long, default_value = "pool")]
    layer: String,
    /// Output file: .npy or .safetensors (written atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Refuse images with more pixels than this (decompression-bomb guard).
    #[arg(long, default_value_t = resnet_data::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

enum OutputFormat {
    Npy,
    Safetensors,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let layer = FeatureLayer::parse(&args.layer).ok_or_else(|| {
        anyhow::anyhow!("--layer {}: choose logits, pool, layer1, layer2, layer3 or layer4", args.layer)
    })?;
    let format = match args.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("npy") => OutputFormat::Npy,
        Some("safetensors") => OutputFormat::Safetensors,
        _ => anyhow::bail!("--out {}: the file name must end in .npy or .safetensors", args.out.display()),
    };
    let dataset = args.dataset.as_deref().map(DatasetPreset::parse).transpose()?;
    let items = expand_inputs(&args.inputs)?;
    let loaded = load_model(&args.model, dataset.as_ref())?;
    // The compiled inference plan: BN folded, weights packed once, fused epilogues.
    let prep = loaded.prep;
    let model = loaded.model.into_compiled_with(args.plan.options());
    let bar = progress_bar(items.len(), "embed");
    let mut row_shape: Option<Vec<usize>> = None;
    let mut data = Vec::new();
    for range in batch_ranges(&items, args.batch) {
        let batch = &items[range.clone()];
        let x = load_batch(batch, &prep, args.max_pixels)?;
        let mut f = model.forward_features(&x, layer)?;
        let (shape, values) = match layer {
            FeatureLayer::Logits => f.logits.map(|t| (t.shape[1..].to_vec(), t.data)),
            FeatureLayer::Pool => f.pool.map(|t| (t.shape[1..].to_vec(), t.data)),
            _ => f.layers.pop().map(|t| {
                let (h, w, c) = (t.shape[1], t.shape[2], t.shape[3]);
                (vec![c, h, w], t.to_nchw())
            }),
        }
        .context("the model produced no output for this layer")?;
        match &row_shape {
            None => row_shape = Some(shape),
            Some(s) if *s != shape => anyhow::bail!(
                "{}: gives {layer:?} of shape {shape:?} but earlier inputs gave {s:?}; embed inputs of different sizes separately",
                batch[0].display_name()
            ),
            Some(_) => {}
        }
        data.extend_from_slice(&values);
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let mut shape = vec![items.len()];
    shape.extend(row_shape.unwrap_or_default());
    match format {
        OutputFormat::Npy => write_npy_f32(&args.out, &shape, &data)?,
        OutputFormat::Safetensors => {
            let mut sd = StateDict::new();
            sd.insert("features", StoredTensor::f32(shape.clone(), data));
            let names: Vec<String> = items.iter().map(|i| i.display_name()).collect();
            let names_json = serde_json::to_string(&names)?;
            save_safetensors_with_metadata(&args.out, &sd, &[("inputs", &names_json), ("layer", &args.layer)])?;
        }
    }
    eprintln!("wrote {} {:?} features of shape {:?} to {}", items.len(), layer, shape, args.out.display());
    Ok(())
}
