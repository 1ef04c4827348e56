//! `resnet summary`: the module tree and a per-layer table of shapes, parameters and MACs.

use std::fmt::Write;

use resnet_core::model::summary::{layer_table, module_tree};
use resnet_core::ResNet;

/// Show an architecture's layers, parameters and MACs.
///
/// PyTorch-style module tree, then output shape, parameters and
/// multiply-accumulates (MACs) per layer for one image, and the totals.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architecture (resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2,
    /// wide_resnet101_2, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d).
    #[arg(long, default_value = "resnet50")]
    arch: String,
    /// Input height and width in pixels.
    #[arg(long, default_value_t = 224)]
    input: usize,
    /// Outputs of the final linear layer (default: 1000, or 10 for the CIFAR nets).
    #[arg(long)]
    num_classes: Option<usize>,
    /// Print only the table (no module tree).
    #[arg(long)]
    table_only: bool,
}

fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.input < 32 {
        anyhow::bail!("--input {} is too small: ResNets downsample 32x; use at least 32", args.input);
    }
    let mut config = resnet_core::ResNetConfig::from_name(&args.arch)?;
    if let Some(classes) = args.num_classes {
        config = config.with_num_classes(classes);
    }
    let model = ResNet::new(config)?;
    let mut out = String::new();
    if !args.table_only {
        let _ = writeln!(out, "{}", module_tree(&model));
    }
    let rows = layer_table(&model, args.input);
    let _ = writeln!(out, "{:<28} {:>22} {:>14} {:>16}", "layer", "output shape", "params", "MACs");
    let _ = writeln!(out, "{}", "-".repeat(83));
    for r in &rows {
        let shape = format!("{:?}", r.output_shape);
        let _ =
            writeln!(out, "{:<28} {:>22} {:>14} {:>16}", r.name, shape, group_digits(r.params), group_digits(r.macs));
    }
    let params: usize = rows.iter().map(|r| r.params).sum();
    let macs: usize = rows.iter().map(|r| r.macs).sum();
    let _ = writeln!(out, "{}", "-".repeat(83));
    let _ = writeln!(out, "total parameters: {}", group_digits(params));
    let _ =
        writeln!(out, "total MACs at {0}x{0}: {1} ({2:.2} GMACs)", args.input, group_digits(macs), macs as f64 / 1e9);
    crate::output::emit(&out)
}
