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
/// [`CompiledResNet::per_image_stage_count`]): well within a 32 MiB last-level cache, which
/// takes in ResNet-50's layer2 with its Winograd filters (10.9 MB) and, in bf16, its layer3
/// (18.6 MB with its F(2x2) filters), but not the f32 layer3 (68 MB with Winograd filters).
const PER_IMAGE_WEIGHT_BYTES: usize = 20 << 20;

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
        let f = self.run_on_pool(x, FeatureLayer::Logits, false);
        Ok(f.logits.unwrap_or_else(|| Tensor::zeros(&[0])))
    }

    /// Stage outputs, pooled embedding and logits, up to `until` (as [`ResNet::forward_features`]).
    pub fn forward_features(&self, x: &Tensor, until: FeatureLayer) -> Result<Features, ModelError> {
        self.config.check_input(x)?;
        Ok(self.run_on_pool(x, until, true))
    }

    /// [`Self::run`] on a thread of the rayon pool. Called from outside the pool (the
    /// binary's main thread), every layer's parallel loop would be handed to the pool and
    /// the caller put to sleep until it ends, then woken: two thread switches per layer,
    /// ~5% of a batch-1 forward's samples in the scheduler. On a worker, the loops start
    /// on that thread and only the other workers are woken.
    fn run_on_pool(&self, x: &Tensor, until: FeatureLayer, keep_layers: bool) -> Features {
        rayon::scope(|_| self.run(x, until, keep_layers))
    }

    /// How many leading stages (with the stem) run one image at a time for a batch of `x`'s
    /// shape, each thread taking whole images: those whose packed weights are at most
    /// [`PER_IMAGE_WEIGHT_BYTES`], so that reading them again for every image stays in the
    /// last-level cache. One image's activations stay in cache too (3.2 MB for ResNet-50's
    /// layer1, 51 MB for a batch of 16), and no layer's threads wait for one another at its
    /// end. Deeper stages, with large weights, run on the whole batch so their weights are
    /// read once. None when the images do not share out evenly over the threads (fewer
    /// than two, or not a multiple of the thread count below four per thread), where some
    /// threads would wait for the last image.
    /// `RESNET_PER_IMAGE_STAGES=k` overrides the count (to tune on another CPU).
    ///
    /// Measured with 2 threads and a 32 MiB L3 (ms per batch, stages run per image):
    /// ResNet-50 at batch 16, fp32: 2 stages 548/556, 3: 564/551; bf16: 2 stages 372-377,
    /// 3: 354-367, 4: 359-360. CIFAR ResNet-20 at batch 64: none 24.8/26.1, all 3 22.0/22.6.
    fn per_image_stage_count(&self, x: &Tensor) -> usize {
        let from_env = || std::env::var("RESNET_PER_IMAGE_STAGES").ok().and_then(|v| v.parse().ok());
        if let Some(forced) = self.per_image_stages.or_else(from_env) {
            return forced;
        }
        let (n, threads) = (x.shape[0], crate::kernels::current_threads().max(1));
        if n < 2 || (!n.is_multiple_of(threads) && n < 4 * threads) {
            return 0;
        }
        let stage_weights = |stage: &Vec<CompiledBlock>| -> usize {
            let projections = stage.iter().map(|b| match &b.shortcut {
                CompiledShortcut::Projection(d) => d.weight_bytes(),
                _ => 0,
            });
            stage.iter().flat_map(|b| &b.convs).map(PackedConv::weight_bytes).sum::<usize>()
                + projections.sum::<usize>()
        };
        self.stages.iter().take_while(|stage| stage_weights(stage) <= PER_IMAGE_WEIGHT_BYTES).count()
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
    use crate::kernels::packed_gemm_bf16::{best_bf16_path, Bf16Path};
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

    /// ResNet-50 at batch 16 runs layer1 and layer2 one image at a time in f32 (layer3's
    /// weights are 68 MB with Winograd filters) and layer3 too in bf16 (18.6 MB); CIFAR
    /// ResNet-20 all its stages; one image, or images that do not share out over the
    /// threads, never.
    #[test]
    fn per_image_stages_follow_weights_and_threads() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            let r50 = ResNet::from_name("resnet50", 1000).unwrap();
            let batch = |n: usize| Tensor::zeros(&[n, 224, 224, 3]);
            let r50_bf16 = r50.clone().into_compiled_with(Precision::Bf16);
            let r50 = r50.into_compiled();
            assert_eq!(r50.per_image_stage_count(&batch(16)), 2);
            // (The emulation, on CPUs without AVX512-BF16, holds bf16 weights as f32.)
            let native = best_bf16_path() == Bf16Path::Native;
            assert_eq!(r50_bf16.per_image_stage_count(&batch(16)), if native { 3 } else { 2 });
            assert_eq!(r50.per_image_stage_count(&batch(2)), 2);
            assert_eq!(r50.per_image_stage_count(&batch(1)), 0);
            assert_eq!(r50.per_image_stage_count(&batch(3)), 0);
            assert_eq!(r50.per_image_stage_count(&batch(9)), 2);
            let r20 = ResNet::from_name("resnet20", 10).unwrap().into_compiled();
            assert_eq!(r20.per_image_stage_count(&Tensor::zeros(&[64, 32, 32, 3])), 3);
        });
    }

    #[test]
    fn wrong_channels_are_an_error() {
        let compiled = ResNet::from_name("resnet18", 10).unwrap().into_compiled();
        assert!(compiled.forward(&Tensor::zeros(&[1, 32, 32, 1])).is_err());
    }
}
