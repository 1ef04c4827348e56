//! A human-readable description of a network: the module tree in the style of PyTorch's
//! `print(model)`, and a per-layer table of output shape, parameters and MACs.

use std::fmt::Write;

use super::layers::{BatchNorm2d, Conv2d, ConvBn, Linear};
use super::resnet::{Block, ResNet};

fn conv_repr(c: &Conv2d) -> String {
    let g = &c.geometry;
    let mut s = format!(
        "Conv2d({}, {}, kernel_size=({}, {}), stride=({}, {})",
        g.in_channels, g.out_channels, g.kernel_h, g.kernel_w, g.stride, g.stride
    );
    if g.padding > 0 {
        let _ = write!(s, ", padding=({}, {})", g.padding, g.padding);
    }
    if g.groups > 1 {
        let _ = write!(s, ", groups={}", g.groups);
    }
    s.push_str(", bias=False)");
    s
}

fn bn_repr(b: &BatchNorm2d) -> String {
    format!("BatchNorm2d({}, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)", b.weight.numel())
}

fn linear_repr(l: &Linear) -> String {
    format!("Linear(in_features={}, out_features={}, bias=True)", l.in_features, l.out_features)
}

fn block_tree(out: &mut String, name: &str, b: &Block, indent: &str) {
    let kind = match b.kind {
        super::BlockKind::Basic => "BasicBlock",
        super::BlockKind::Bottleneck => "Bottleneck",
    };
    let _ = writeln!(out, "{indent}({name}): {kind}(");
    let inner = format!("{indent}  ");
    for (i, c) in b.convs.iter().enumerate() {
        let _ = writeln!(out, "{inner}(conv{}): {}", i + 1, conv_repr(&c.conv));
        let _ = writeln!(out, "{inner}(bn{}): {}", i + 1, bn_repr(&c.bn));
        if b.kind == super::BlockKind::Basic && i == 0 {
            let _ = writeln!(out, "{inner}(relu): ReLU(inplace=True)");
        }
    }
    if b.kind == super::BlockKind::Bottleneck {
        let _ = writeln!(out, "{inner}(relu): ReLU(inplace=True)");
    }
    if let Some(d) = b.downsample() {
        downsample_tree(out, d, &inner);
    }
    let _ = writeln!(out, "{indent})");
}

fn downsample_tree(out: &mut String, d: &ConvBn, indent: &str) {
    let _ = writeln!(out, "{indent}(downsample): Sequential(");
    let _ = writeln!(out, "{indent}  (0): {}", conv_repr(&d.conv));
    let _ = writeln!(out, "{indent}  (1): {}", bn_repr(&d.bn));
    let _ = writeln!(out, "{indent})");
}

/// `print(model)` of torchvision, line for line.
pub fn module_tree(m: &ResNet) -> String {
    let mut out = String::from("ResNet(\n");
    let _ = writeln!(out, "  (conv1): {}", conv_repr(&m.stem.conv));
    let _ = writeln!(out, "  (bn1): {}", bn_repr(&m.stem.bn));
    out.push_str("  (relu): ReLU(inplace=True)\n");
    if m.config.stem == super::Stem::ImageNet {
        out.push_str("  (maxpool): MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=False)\n");
    }
    for (s, stage) in m.stages.iter().enumerate() {
        let _ = writeln!(out, "  (layer{}): Sequential(", s + 1);
        for (i, b) in stage.iter().enumerate() {
            block_tree(&mut out, &i.to_string(), b, "    ");
        }
        out.push_str("  )\n");
    }
    out.push_str("  (avgpool): AdaptiveAvgPool2d(output_size=(1, 1))\n");
    let _ = writeln!(out, "  (fc): {}", linear_repr(&m.fc));
    out.push_str(")\n");
    out
}

/// One row of the layer table.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    pub name: String,
    /// Output shape in PyTorch's NCHW convention, batch 1.
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub macs: usize,
    /// For convolutions: the geometry and the input's height and width.
    pub conv: Option<(crate::kernels::Conv2dGeometry, (usize, usize))>,
}

/// Shapes, parameters and MACs per conv/linear layer for a `side × side` input, batch 1.
/// MACs count the multiply-accumulates of convolutions and the linear layer, as fvcore and
/// torchvision's published GFLOPS do (BN, ReLU and pooling are not counted).
pub fn layer_table(m: &ResNet, side: usize) -> Vec<LayerRow> {
    let mut rows = Vec::new();
    let conv_row = |rows: &mut Vec<LayerRow>, name: String, c: &Conv2d, bn: &BatchNorm2d, h: usize, w: usize| {
        let (oh, ow) = c.geometry.output_hw(h, w);
        let params = c.weight.numel() + 2 * bn.weight.numel();
        rows.push(LayerRow {
            name,
            output_shape: vec![1, c.geometry.out_channels, oh, ow],
            params,
            macs: c.macs(oh, ow),
            conv: Some((c.geometry, (h, w))),
        });
        (oh, ow)
    };
    let (mut h, mut w) = conv_row(&mut rows, "conv1+bn1".into(), &m.stem.conv, &m.stem.bn, side, side);
    if m.config.stem == super::Stem::ImageNet {
        h = (h + 2 - 3) / 2 + 1;
        w = (w + 2 - 3) / 2 + 1;
        rows.push(LayerRow {
            name: "maxpool".into(),
            output_shape: vec![1, m.config.base_planes, h, w],
            params: 0,
            macs: 0,
            conv: None,
        });
    }
    for (s, stage) in m.stages.iter().enumerate() {
        for (b, block) in stage.iter().enumerate() {
            let (in_h, in_w) = (h, w);
            for (i, c) in block.convs.iter().enumerate() {
                (h, w) =
                    conv_row(&mut rows, format!("layer{}.{b}.conv{}+bn{}", s + 1, i + 1, i + 1), &c.conv, &c.bn, h, w);
            }
            if let Some(d) = block.downsample() {
                conv_row(&mut rows, format!("layer{}.{b}.downsample", s + 1), &d.conv, &d.bn, in_h, in_w);
            }
        }
    }
    rows.push(LayerRow {
        name: "avgpool".into(),
        output_shape: vec![1, m.fc.in_features, 1, 1],
        params: 0,
        macs: 0,
        conv: None,
    });
    rows.push(LayerRow {
        name: "fc".into(),
        output_shape: vec![1, m.fc.out_features],
        params: m.fc.weight.numel() + m.fc.bias.numel(),
        macs: m.fc.in_features * m.fc.out_features,
        conv: None,
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_totals_match_torchvision() {
        let m = ResNet::from_name("resnet50", 1000).unwrap();
        let rows = layer_table(&m, 224);
        let params: usize = rows.iter().map(|r| r.params).sum();
        let macs: usize = rows.iter().map(|r| r.macs).sum();
        assert_eq!(params, 25_557_032);
        // torchvision's model card: 4.09 GFLOPS (MACs).
        assert!((4_080_000_000..4_100_000_000).contains(&macs), "{macs}");
        assert_eq!(rows.last().unwrap().output_shape, vec![1, 1000]);
        assert!(module_tree(&m).contains("(layer3): Sequential("));
    }
}
