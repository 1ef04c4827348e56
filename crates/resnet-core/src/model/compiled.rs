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

use rayon::prelude::*;

use super::config::{ModelError, ResNetConfig, Stem};
use super::layers::ConvBn;
use super::resnet::{Block, FeatureLayer, Features, ResNet, ShortcutPath};
use crate::kernels::buffers::{keep_buffers_for_inference, recycle, take_buffer};
use crate::kernels::conv_packed::{CompileOptions, PackedConv, Precision};
use crate::kernels::packed_gemm::{packed_matmul, PackedEpilogue, PackedMatrix};
use crate::kernels::shortcut::subsample_zero_pad_nhwc;
use crate::kernels::{global_avg_pool_nhwc, max_pool2d_nhwc};
use crate::tensor::Tensor;

/// Largest packed weights of a stage that runs one image at a time (see
/// [`CompiledResNet::per_image_stage_count`]): about a third of a 32 MiB last-level cache,
/// which takes in ResNet-50's layer2 with its Winograd filters (10.9 MB) but not layer3.
const PER_IMAGE_WEIGHT_BYTES: usize = 12 << 20;

/// Smallest whole-batch activation of a stage that runs one image at a time: half a 32 MiB
/// last-level cache (below it, the batch stays in cache anyway).
const PER_IMAGE_BATCH_BYTES: usize = 16 << 20;

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
    /// Stages run one image at a time when set (else the rule of `per_image_stage_count`).
    per_image_stages: Option<usize>,
    stem: PackedConv,
    stages: Vec<Vec<CompiledBlock>>,
    fc: PackedMatrix,
    fc_bias: Vec<f32>,
}

/// Packs one conv + BN, releasing the original weights.
fn compile_unit(mut unit: ConvBn, options: CompileOptions) -> PackedConv {
    let (scale, shift) = unit.bn.eval_scale_shift();
    let weight = std::mem::take(&mut unit.conv.weight.data);
    PackedConv::compile(unit.conv.geometry, &weight, &scale, shift, options)
}

fn compile_block(block: Block, options: CompileOptions) -> CompiledBlock {
    let shortcut = match block.shortcut {
        ShortcutPath::Identity => CompiledShortcut::Identity,
        ShortcutPath::Projection(d) => CompiledShortcut::Projection(compile_unit(*d, options)),
        ShortcutPath::ZeroPad { stride, before, after } => CompiledShortcut::ZeroPad { stride, before, after },
        ShortcutPath::None => CompiledShortcut::None,
    };
    CompiledBlock { convs: block.convs.into_iter().map(|c| compile_unit(c, options)).collect(), shortcut }
}

impl ResNet {
    /// Compiles this network for f32 inference with the default options (Winograd for the
    /// 3x3 stride-1 convolutions), consuming it (see [`CompiledResNet`]).
    pub fn into_compiled(self) -> CompiledResNet {
        self.into_compiled_with(CompileOptions::default())
    }

    /// Compiles this network for inference as `options` say (a [`Precision`] alone takes
    /// the default for the rest), consuming it.
    pub fn into_compiled_with(self, options: impl Into<CompileOptions>) -> CompiledResNet {
        let options = options.into();
        let precision = options.precision;
        let ResNet { config, stem, stages, fc } = self;
        let stem = compile_unit(stem, options);
        let stages = stages.into_iter().map(|s| s.into_iter().map(|b| compile_block(b, options)).collect()).collect();
        let packed_fc = PackedMatrix::from_rows(&fc.weight.data, fc.out_features, fc.in_features, None);
        CompiledResNet { config, precision, per_image_stages: None, stem, stages, fc: packed_fc, fc_bias: fc.bias.data }
    }

    /// Compiles a copy with the default options, keeping this network (for training or
    /// comparison).
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
            let out = conv.forward(input, residual, true);
            // The previous activation has been read: its buffer serves a later output.
            if let Some(done) = h.replace(out) {
                recycle(done);
            }
        }
        if let Some(s) = shortcut_owned {
            recycle(s);
        }
        h.unwrap_or_else(|| x.clone())
    }
}

impl CompiledResNet {
    /// The number format the convolutions multiply in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs the first `stages` stages (and the stem) one image at a time for every batch,
    /// instead of choosing by weight and activation size; `None` restores the choice. The
    /// results are the same either way; this is for tuning and tests.
    pub fn set_per_image_stages(&mut self, stages: Option<usize>) {
        self.per_image_stages = stages;
    }

    /// Logits `[N, classes]` for NHWC input `[N, H, W, C]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.config.check_input(x)?;
        let f = self.run(x, FeatureLayer::Logits, false);
        Ok(f.logits.unwrap_or_else(|| Tensor::zeros(&[0])))
    }

    /// Stage outputs, pooled embedding and logits, up to `until` (as [`ResNet::forward_features`]).
    pub fn forward_features(&self, x: &Tensor, until: FeatureLayer) -> Result<Features, ModelError> {
        self.config.check_input(x)?;
        Ok(self.run(x, until, true))
    }

    /// How many leading stages (with the stem) run one image at a time for a batch of `x`'s
    /// shape: those whose packed weights are at most [`PER_IMAGE_WEIGHT_BYTES`] and whose
    /// largest activation, over the whole batch, is at least [`PER_IMAGE_BATCH_BYTES`]. There
    /// a whole batch's activations (51 MB for ResNet-50's layer1 at batch 16) would stream
    /// through memory at every layer, while one image's (3.2 MB) stays in cache, and the
    /// weights, small enough to stay in the last-level cache, are cheap to read again per
    /// image. Deeper stages, with large weights and small activations, run on the whole batch
    /// so their weights are read once; so do small nets whose whole batch fits in cache (CIFAR
    /// ResNet-20 at batch 64: 4 MB; one image at a time there was 1.6x slower).
    /// `RESNET_PER_IMAGE_STAGES=k` overrides the count (to tune on another CPU).
    ///
    /// Measured for ResNet-50 at batch 16, 2 threads, 32 MiB L3 (images/s, fp32 / bf16):
    /// 0 stages 18.9 / 29.0, 1: 19.5 / 30.2, 2: 21.1 / 33.8, 3: 18.8 / 30.4, 4: 18.0 / 30.7.
    fn per_image_stage_count(&self, x: &Tensor) -> usize {
        let from_env = || std::env::var("RESNET_PER_IMAGE_STAGES").ok().and_then(|v| v.parse().ok());
        if let Some(forced) = self.per_image_stages.or_else(from_env) {
            return forced;
        }
        let n = x.shape[0];
        let (mut h, mut w) = self.stem_output_hw(x.shape[1], x.shape[2]);
        let mut count = 0;
        for stage in &self.stages {
            let mut weights = 0;
            let mut largest_activation = 0;
            for block in stage {
                let block_input = (h, w);
                for conv in &block.convs {
                    weights += conv.weight_bytes();
                    (h, w) = conv.geometry.output_hw(h, w);
                    largest_activation = largest_activation.max(4 * h * w * conv.geometry.out_channels);
                }
                if let CompiledShortcut::Projection(d) = &block.shortcut {
                    weights += d.weight_bytes();
                    let (sh, sw) = d.geometry.output_hw(block_input.0, block_input.1);
                    largest_activation = largest_activation.max(4 * sh * sw * d.geometry.out_channels);
                }
            }
            if weights > PER_IMAGE_WEIGHT_BYTES || n * largest_activation < PER_IMAGE_BATCH_BYTES {
                break;
            }
            count += 1;
        }
        count
    }

    /// Height and width after the stem (and its max-pool) for an `h × w` input.
    fn stem_output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let (h, w) = self.stem.geometry.output_hw(h, w);
        if self.config.stem == Stem::ImageNet {
            ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1)
        } else {
            (h, w)
        }
    }

    /// Each stage's output shape `[H, W, C]` for one `h × w` image.
    fn stage_output_shapes(&self, h: usize, w: usize) -> Vec<[usize; 3]> {
        let (mut h, mut w) = self.stem_output_hw(h, w);
        let mut channels = self.stem.geometry.out_channels;
        let mut shapes = Vec::new();
        for stage in &self.stages {
            for block in stage {
                for conv in &block.convs {
                    (h, w) = conv.geometry.output_hw(h, w);
                    channels = conv.geometry.out_channels;
                }
            }
            shapes.push([h, w, channels]);
        }
        shapes
    }

    /// The forward pass; stage outputs are kept only when `keep_layers` (copying them costs
    /// a pass over each stage's output).
    fn run(&self, x: &Tensor, until: FeatureLayer, keep_layers: bool) -> Features {
        let stage_layers = [FeatureLayer::Layer1, FeatureLayer::Layer2, FeatureLayer::Layer3, FeatureLayer::Layer4];
        let wanted_stage = stage_layers.iter().position(|&l| l == until);
        keep_buffers_for_inference();
        let n = x.shape[0];
        let front = if n > 1 { self.per_image_stage_count(x).min(self.stages.len()) } else { 0 };
        let mut features = Features::default();

        // The stem and the first `front` stages, one image at a time, each stage's outputs
        // gathered into one batch tensor (images are outermost in NHWC, so it is a concatenation).
        let stem = |x: &Tensor| {
            let h = self.stem.forward(x, None, true);
            if self.config.stem == Stem::ImageNet {
                let pooled = max_pool2d_nhwc(&h, 3, 2, 1);
                recycle(h);
                pooled
            } else {
                h
            }
        };
        let mut h = if front == 0 {
            stem(x)
        } else {
            let per_image = x.data.len() / n;
            let last_front = if keep_layers { wanted_stage.map_or(front, |s| s + 1).min(front) } else { front };
            // The batch tensors the front stages' outputs are gathered into (images are
            // outermost in NHWC): all of them when `keep_layers`, else the last.
            let first_kept = if keep_layers { 0 } else { last_front - 1 };
            let shapes = self.stage_output_shapes(x.shape[1], x.shape[2]);
            let mut outputs: Vec<Tensor> = shapes[first_kept..last_front]
                .iter()
                .map(|&[h, w, c]| {
                    let shape = [n, h, w, c];
                    // Every value is written below, one image's slice each.
                    Tensor::from_vec(&shape, take_buffer(n * h * w * c)).unwrap_or_else(|| Tensor::zeros(&shape))
                })
                .collect();
            let mut slots: Vec<Vec<&mut [f32]>> = (0..n).map(|_| Vec::new()).collect();
            for t in &mut outputs {
                let len = t.data.len() / n;
                for (slot, chunk) in slots.iter_mut().zip(t.data.chunks_mut(len.max(1))) {
                    slot.push(chunk);
                }
            }
            // Images in parallel, each through the front stages on one thread: a layer of
            // one image is too little work to split across threads without their waiting
            // at every layer's end (5-10% faster at batch 16, fp32 and bf16).
            slots.into_par_iter().zip(x.data.par_chunks(per_image.max(1))).for_each(|(mut slot, image)| {
                let mut shape = x.shape.clone();
                shape[0] = 1;
                let one = Tensor::from_vec(&shape, image.to_vec()).unwrap_or_else(|| Tensor::zeros(&[0]));
                let mut h = stem(&one);
                for (s, stage) in self.stages[..last_front].iter().enumerate() {
                    for block in stage {
                        let next = block.forward(&h);
                        recycle(std::mem::replace(&mut h, next));
                    }
                    if s >= first_kept {
                        slot[s - first_kept].copy_from_slice(&h.data);
                    }
                }
                // Copied out: the buffer serves the next image.
                recycle(h);
            });
            let last = outputs.pop().unwrap_or_else(|| Tensor::zeros(&[0]));
            if keep_layers {
                features.layers = outputs;
                features.layers.push(last.clone());
            }
            if wanted_stage.is_some_and(|s| s < last_front) {
                return features;
            }
            last
        };
        let done = features.layers.len().max(front);
        for (s, stage) in self.stages.iter().enumerate().skip(done) {
            for block in stage {
                let next = block.forward(&h);
                recycle(std::mem::replace(&mut h, next));
            }
            if keep_layers {
                features.layers.push(h.clone());
            }
            if wanted_stage == Some(s) {
                return features;
            }
        }
        let pooled = global_avg_pool_nhwc(&h);
        if until == FeatureLayer::Pool {
            features.pool = Some(pooled);
            return features;
        }
        let n = pooled.shape[0];
        let mut logits = Tensor::zeros(&[n, self.fc.n()]);
        let e = PackedEpilogue { bias: Some(&self.fc_bias), ..PackedEpilogue::default() };
        packed_matmul(&pooled.data, n, self.fc.k(), &self.fc, &mut logits.data, &e);
        features.logits = Some(logits);
        features.pool = Some(pooled);
        features
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
            let mut compiled = model.compile();
            // Whole batches (what these small inputs get by default), the first stage one image
            // at a time, and every stage one image at a time.
            for per_image in [None, Some(1), Some(compiled.config.layers.len())] {
                compiled.set_per_image_stages(per_image);
                let case = format!("{arch}, per-image stages {per_image:?}");
                let got = compiled.forward_features(&x, FeatureLayer::Logits).unwrap();
                for (a, b) in [(&got.logits, &expected.logits), (&got.pool, &expected.pool)] {
                    let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
                    let scale = b.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
                    for (x, y) in a.data.iter().zip(&b.data) {
                        assert!((x - y).abs() <= 1e-4 * scale, "{case}: {x} vs {y}");
                    }
                }
                assert_eq!(got.layers.len(), expected.layers.len());
                for (a, b) in got.layers.iter().zip(&expected.layers) {
                    assert_eq!(a.shape, b.shape);
                    let scale = b.data.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
                    assert!(a.data.iter().zip(&b.data).all(|(x, y)| (x - y).abs() <= 1e-4 * scale), "{case}: stage");
                }
                // Stopping inside and after the stages that run one image at a time.
                for (until, count) in [(FeatureLayer::Layer1, 1), (FeatureLayer::Layer2, 2), (FeatureLayer::Layer3, 3)]
                {
                    let partial = compiled.forward_features(&x, until).unwrap();
                    assert_eq!(partial.layers.len(), count);
                    assert!(partial.logits.is_none());
                    assert_eq!(partial.layers[count - 1].data, got.layers[count - 1].data, "{case} {until:?}");
                }
            }
        }
    }

    /// ResNet-50 at 224x224 and batch 16 runs layer1 and layer2 one image at a time (their
    /// batch activations are 51 and 26 MB, their weights at most 11 MB); one image never
    /// splits; CIFAR ResNet-20 at batch 64 keeps whole batches (4 MB of activations).
    #[test]
    fn per_image_stages_follow_weights_and_batch_activations() {
        let r50 = ResNet::from_name("resnet50", 1000).unwrap().into_compiled();
        assert_eq!(r50.per_image_stage_count(&Tensor::zeros(&[16, 224, 224, 3])), 2);
        assert_eq!(r50.per_image_stage_count(&Tensor::zeros(&[2, 224, 224, 3])), 0);
        let r20 = ResNet::from_name("resnet20", 10).unwrap().into_compiled();
        assert_eq!(r20.per_image_stage_count(&Tensor::zeros(&[64, 32, 32, 3])), 0);
    }

    #[test]
    fn wrong_channels_are_an_error() {
        let compiled = ResNet::from_name("resnet18", 10).unwrap().into_compiled();
        assert!(compiled.forward(&Tensor::zeros(&[1, 32, 32, 1])).is_err());
    }
}
