//! A ResNet compiled for inference: every conv + BatchNorm becomes one [`PackedConv`]
//! (BN folded into the weights and a bias, weights packed once for the GEMM micro-kernel,
//! bias + residual + ReLU applied as the GEMM stores), and the head a packed matrix.
//! The flow is [`ResNet::forward_features`]'s, block by block; the results agree with it
//! to float rounding (summation order differs), which the tests below check.
//!
//! [`Precision::Bf16`] packs the convolutions' weights in bf16 for the AVX512-BF16 kernel;
//! the head (the fully connected layer) stays f32, since it is a sliver of the work and
//! holds the logits' last rounding.
//!
//! Compiling consumes the network ([`ResNet::into_compiled`]) and packs one layer at a time,
//! dropping each layer's original weights as it goes, so memory does not hold two copies.

use super::config::{ModelError, ResNetConfig, Stem};
use super::layers::ConvBn;
use super::resnet::{Block, FeatureLayer, Features, ResNet, ShortcutPath};
use crate::kernels::conv_packed::{PackedConv, Precision};
use crate::kernels::packed_gemm::{packed_matmul, PackedEpilogue, PackedMatrix};
use crate::kernels::shortcut::subsample_zero_pad_nhwc;
use crate::kernels::{global_avg_pool_nhwc, max_pool2d_nhwc};
use crate::tensor::Tensor;

enum CompiledShortcut {
    Identity,
    Projection(PackedConv),
    ZeroPad { stride: usize, before: usize, after: usize },
    None,
}

struct CompiledBlock {
    convs: Vec<PackedConv>,
    shortcut: CompiledShortcut,
}

/// An inference-only ResNet; see the module documentation.
pub struct CompiledResNet {
    pub config: ResNetConfig,
    precision: Precision,
    stem: PackedConv,
    stages: Vec<Vec<CompiledBlock>>,
    fc: PackedMatrix,
    fc_bias: Vec<f32>,
}

/// Packs one conv + BN, releasing the original weights.
fn compile_unit(mut unit: ConvBn, precision: Precision) -> PackedConv {
    let (scale, shift) = unit.bn.eval_scale_shift();
    let weight = std::mem::take(&mut unit.conv.weight.data);
    PackedConv::with_precision(unit.conv.geometry, &weight, &scale, shift, precision)
}

fn compile_block(block: Block, precision: Precision) -> CompiledBlock {
    let shortcut = match block.shortcut {
        ShortcutPath::Identity => CompiledShortcut::Identity,
        ShortcutPath::Projection(d) => CompiledShortcut::Projection(compile_unit(*d, precision)),
        ShortcutPath::ZeroPad { stride, before, after } => CompiledShortcut::ZeroPad { stride, before, after },
        ShortcutPath::None => CompiledShortcut::None,
    };
    CompiledBlock { convs: block.convs.into_iter().map(|c| compile_unit(c, precision)).collect(), shortcut }
}

impl ResNet {
    /// Compiles this network for f32 inference, consuming it (see [`CompiledResNet`]).
    pub fn into_compiled(self) -> CompiledResNet {
        self.into_compiled_with(Precision::F32)
    }

    /// Compiles this network for inference in `precision`, consuming it.
    pub fn into_compiled_with(self, precision: Precision) -> CompiledResNet {
        let ResNet { config, stem, stages, fc } = self;
        let stem = compile_unit(stem, precision);
        let stages = stages.into_iter().map(|s| s.into_iter().map(|b| compile_block(b, precision)).collect()).collect();
        let packed_fc = PackedMatrix::from_rows(&fc.weight.data, fc.out_features, fc.in_features, None);
        CompiledResNet { config, precision, stem, stages, fc: packed_fc, fc_bias: fc.bias.data }
    }

    /// Compiles a copy in f32, keeping this network (for training or comparison).
    pub fn compile(&self) -> CompiledResNet {
        self.clone().into_compiled()
    }
}

impl CompiledBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let shortcut_owned = match &self.shortcut {
            CompiledShortcut::Projection(d) => Some(d.forward(x, None, false)),
            CompiledShortcut::ZeroPad { stride, before, after } => {
                Some(subsample_zero_pad_nhwc(x, *stride, *before, *after))
            }
            CompiledShortcut::Identity | CompiledShortcut::None => None,
        };
        let shortcut = match &self.shortcut {
            CompiledShortcut::None => None,
            _ => Some(shortcut_owned.as_ref().unwrap_or(x)),
        };
        let last = self.convs.len() - 1;
        let mut h: Option<Tensor> = None;
        for (i, conv) in self.convs.iter().enumerate() {
            let input = h.as_ref().unwrap_or(x);
            let residual = if i == last { shortcut } else { None };
            h = Some(conv.forward(input, residual, true));
        }
        h.unwrap_or_else(|| x.clone())
    }
}

impl CompiledResNet {
    /// The number format the convolutions multiply in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Logits `[N, classes]` for NHWC input `[N, H, W, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let f = self.forward_features(x, FeatureLayer::Logits)?;
        Ok(f.logits.unwrap_or_else(|| Tensor::zeros(&[0])))
    }

    /// Stage outputs, pooled embedding and logits, up to `until` (as [`ResNet::forward_features`]).
    pub fn forward_features(&self, x: &Tensor, until: FeatureLayer) -> Result<Features, ModelError> {
        self.config.check_input(x)?;
        let mut h = self.stem.forward(x, None, true);
        if self.config.stem == Stem::ImageNet {
            h = max_pool2d_nhwc(&h, 3, 2, 1);
        }
        let mut features = Features::default();
        let stage_layers = [FeatureLayer::Layer1, FeatureLayer::Layer2, FeatureLayer::Layer3, FeatureLayer::Layer4];
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                h = block.forward(&h);
            }
            let wanted = stage_layers.get(s) == Some(&until);
            features.layers.push(h.clone());
            if wanted {
                return Ok(features);
            }
        }
        let pooled = global_avg_pool_nhwc(&h);
        if until == FeatureLayer::Pool {
            features.pool = Some(pooled);
            return Ok(features);
        }
        let n = pooled.shape[0];
        let mut logits = Tensor::zeros(&[n, self.fc.n()]);
        let e = PackedEpilogue { bias: Some(&self.fc_bias), ..PackedEpilogue::default() };
        packed_matmul(&pooled.data, n, self.fc.k(), &self.fc, &mut logits.data, &e);
        features.logits = Some(logits);
        features.pool = Some(pooled);
        Ok(features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::seeded::{seed_parameters, seeded_values};

    /// Compiled and uncompiled forward agree for a bottleneck net with projections, a
    /// grouped one, and a CIFAR net with option-A shortcuts: logits within 1e-4 of the
    /// largest logit (summation order differs across ~50 layers).
    #[test]
    fn compiled_forward_equals_the_network() {
        for (arch, side, channels) in [("resnet50", 64, 3), ("resnext50_32x4d", 32, 3), ("resnet20", 28, 1)] {
            let config = ResNetConfig::from_name(arch).unwrap().with_num_classes(10).with_in_channels(channels);
            let mut model = ResNet::new(config).unwrap();
            seed_parameters(&mut model, 3);
            let x =
                Tensor::from_vec(&[2, side, side, channels], seeded_values(4, 2 * side * side * channels, -2.0, 2.0))
                    .unwrap();
            let expected = model.forward_features(&x, FeatureLayer::Logits).unwrap();
            let compiled = model.compile();
            let got = compiled.forward_features(&x, FeatureLayer::Logits).unwrap();
            for (a, b) in [(&got.logits, &expected.logits), (&got.pool, &expected.pool)] {
                let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
                let scale = b.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
                for (x, y) in a.data.iter().zip(&b.data) {
                    assert!((x - y).abs() <= 1e-4 * scale, "{arch}: {x} vs {y}");
                }
            }
            assert_eq!(got.layers.len(), expected.layers.len());
            let stage2 = compiled.forward_features(&x, FeatureLayer::Layer2).unwrap();
            assert_eq!(stage2.layers.len(), 2);
            assert!(stage2.logits.is_none());
        }
    }

    #[test]
    fn wrong_channels_are_an_error() {
        let compiled = ResNet::from_name("resnet18", 10).unwrap().into_compiled();
        assert!(compiled.forward(&Tensor::zeros(&[1, 32, 32, 1])).is_err());
    }
}
