//! The ResNet: stem, four stages of residual blocks, pooling and a linear head, with
//! torchvision's structure and parameter names.

use super::config::{BlockKind, ModelError, ResNetConfig, Shortcut, Stem};
use super::layers::{ConvBn, Linear};
use super::params::{self, join, LoadReport, Param, Parameterized};
use crate::kernels::shortcut::subsample_zero_pad_nhwc;
use crate::kernels::{global_avg_pool_nhwc, max_pool2d_nhwc};
use crate::tensor::Tensor;
use crate::weights::{StateDict, WeightsError};

/// What a block adds to its branch's output.
#[derive(Clone, Debug)]
pub enum ShortcutPath {
    Identity,
    /// torchvision's `downsample`: strided 1x1 conv + BN (option B).
    Projection(Box<ConvBn>),
    /// Option A: sample every `stride`-th pixel, zero-pad channels `before`/`after`.
    ZeroPad {
        stride: usize,
        before: usize,
        after: usize,
    },
    /// Plain networks: nothing is added.
    None,
}

/// A residual block, `y = relu(F(x) + shortcut(x))`. The convs of `F` are `convs[0..]`
/// (conv1/bn1, conv2/bn2, and conv3/bn3 for a bottleneck).
#[derive(Clone, Debug)]
pub struct Block {
    pub kind: BlockKind,
    pub convs: Vec<ConvBn>,
    pub shortcut: ShortcutPath,
}

impl Block {
    fn new(
        kind: BlockKind,
        shortcut: Shortcut,
        in_c: usize,
        planes: usize,
        stride: usize,
        groups: usize,
        width_per_group: usize,
    ) -> Block {
        let out_c = planes * kind.expansion();
        let convs = match kind {
            BlockKind::Basic => {
                vec![ConvBn::new(in_c, planes, 3, stride, 1, 1), ConvBn::new(planes, planes, 3, 1, 1, 1)]
            }
            BlockKind::Bottleneck => {
                // torchvision: width = int(planes * (base_width / 64.)) * groups; stride on the 3x3.
                let width = planes * width_per_group / 64 * groups;
                vec![
                    ConvBn::new(in_c, width, 1, 1, 0, 1),
                    ConvBn::new(width, width, 3, stride, 1, groups),
                    ConvBn::new(width, out_c, 1, 1, 0, 1),
                ]
            }
        };
        let reshapes = stride != 1 || in_c != out_c;
        let shortcut = match shortcut {
            Shortcut::None => ShortcutPath::None,
            _ if !reshapes => ShortcutPath::Identity,
            Shortcut::Projection => ShortcutPath::Projection(Box::new(ConvBn::new(in_c, out_c, 1, stride, 0, 1))),
            Shortcut::ZeroPad => {
                let extra = out_c.saturating_sub(in_c);
                ShortcutPath::ZeroPad { stride, before: extra / 2, after: extra - extra / 2 }
            }
        };
        Block { kind, convs, shortcut }
    }

    /// The projection conv + BN, if this block has one (torchvision's `downsample`).
    pub fn downsample(&self) -> Option<&ConvBn> {
        match &self.shortcut {
            ShortcutPath::Projection(d) => Some(d),
            _ => None,
        }
    }

    /// Eval-mode forward. The last conv's epilogue adds the shortcut and applies the ReLU.
    pub fn forward_eval(&self, x: &Tensor) -> Tensor {
        let shortcut_owned = match &self.shortcut {
            ShortcutPath::Projection(d) => Some(d.forward_eval(x, None, false)),
            ShortcutPath::ZeroPad { stride, before, after } => {
                Some(subsample_zero_pad_nhwc(x, *stride, *before, *after))
            }
            ShortcutPath::Identity | ShortcutPath::None => None,
        };
        let shortcut = match &self.shortcut {
            ShortcutPath::None => None,
            _ => Some(shortcut_owned.as_ref().unwrap_or(x)),
        };
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, c) in self.convs.iter().enumerate() {
            h = if i == last { c.forward_eval(&h, shortcut, true) } else { c.forward_eval(&h, None, true) };
        }
        h
    }
}

impl Parameterized for Block {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for (i, c) in self.convs.iter().enumerate() {
            c.conv.visit(&join(prefix, &format!("conv{}", i + 1)), f);
            c.bn.visit(&join(prefix, &format!("bn{}", i + 1)), f);
        }
        if let ShortcutPath::Projection(d) = &self.shortcut {
            d.visit(&join(prefix, "downsample"), f);
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        for (i, c) in self.convs.iter_mut().enumerate() {
            c.conv.visit_mut(&join(prefix, &format!("conv{}", i + 1)), f);
            c.bn.visit_mut(&join(prefix, &format!("bn{}", i + 1)), f);
        }
        if let ShortcutPath::Projection(d) = &mut self.shortcut {
            d.visit_mut(&join(prefix, "downsample"), f);
        }
    }
}

/// Where to stop a forward pass and what to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FeatureLayer {
    Layer1,
    Layer2,
    Layer3,
    Layer4,
    /// Global-average-pooled `[N, C]` embedding (2048-d for ResNet-50).
    Pool,
    Logits,
}

impl FeatureLayer {
    pub fn parse(s: &str) -> Option<FeatureLayer> {
        Some(match s {
            "layer1" => FeatureLayer::Layer1,
            "layer2" => FeatureLayer::Layer2,
            "layer3" => FeatureLayer::Layer3,
            "layer4" => FeatureLayer::Layer4,
            "pool" | "avgpool" | "embedding" => FeatureLayer::Pool,
            "logits" | "fc" => FeatureLayer::Logits,
            _ => return None,
        })
    }
}

/// Every stage's output of one forward pass (`None` past the requested layer).
#[derive(Clone, Debug, Default)]
pub struct Features {
    /// `layers[k]` is stage k+1's NHWC output.
    pub layers: Vec<Tensor>,
    pub pool: Option<Tensor>,
    pub logits: Option<Tensor>,
}

/// A ResNet of the torchvision family.
#[derive(Clone, Debug)]
pub struct ResNet {
    pub config: ResNetConfig,
    pub stem: ConvBn,
    pub stages: Vec<Vec<Block>>,
    pub fc: Linear,
}

impl ResNet {
    /// Builds the network with placeholder weights (conv 0, BN identity); load or seed them.
    pub fn new(config: ResNetConfig) -> Result<ResNet, ModelError> {
        config.validate()?;
        let stem = match config.stem {
            Stem::ImageNet => ConvBn::new(config.in_channels, config.base_planes, 7, 2, 3, 1),
            Stem::Cifar => ConvBn::new(config.in_channels, config.base_planes, 3, 1, 1, 1),
        };
        let mut in_c = config.base_planes;
        let mut stages = Vec::new();
        for (s, &depth) in config.layers.iter().enumerate() {
            let planes = config.base_planes << s;
            let stride = if s == 0 { 1 } else { 2 };
            let mut blocks = Vec::new();
            for b in 0..depth {
                let block = Block::new(
                    config.block,
                    config.shortcut,
                    in_c,
                    planes,
                    if b == 0 { stride } else { 1 },
                    config.groups,
                    config.width_per_group,
                );
                in_c = planes * config.block.expansion();
                blocks.push(block);
            }
            stages.push(blocks);
        }
        let fc = Linear::new(in_c, config.num_classes);
        Ok(ResNet { config, stem, stages, fc })
    }

    /// `ResNet::new(ResNetConfig::from_name(name))` with `num_classes` outputs.
    pub fn from_name(name: &str, num_classes: usize) -> Result<ResNet, ModelError> {
        ResNet::new(ResNetConfig::from_name(name)?.with_num_classes(num_classes))
    }

    /// Trainable parameter count, as `sum(p.numel() for p in model.parameters())`.
    pub fn parameter_count(&self) -> usize {
        params::count_trainable(self)
    }

    /// Loads a torchvision-named state_dict (`strict`: extra keys are errors).
    pub fn load_state_dict(&mut self, sd: &StateDict, strict: bool) -> Result<LoadReport, WeightsError> {
        params::load_state_dict(self, sd, strict)
    }

    pub fn state_dict(&self) -> StateDict {
        params::to_state_dict(self)
    }

    pub(crate) fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        self.config.check_input(x)
    }

    /// Eval-mode logits `[N, num_classes]` for an NHWC batch `[N, H, W, C_in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let f = self.forward_features(x, FeatureLayer::Logits)?;
        Ok(f.logits.unwrap_or_else(|| Tensor::zeros(&[0])))
    }

    /// Eval-mode forward that keeps each stage's output, stopping after `until`.
    pub fn forward_features(&self, x: &Tensor, until: FeatureLayer) -> Result<Features, ModelError> {
        self.check_input(x)?;
        let mut h = self.stem.forward_eval(x, None, true);
        if self.config.stem == Stem::ImageNet {
            h = max_pool2d_nhwc(&h, 3, 2, 1);
        }
        let mut features = Features::default();
        let stage_layers = [FeatureLayer::Layer1, FeatureLayer::Layer2, FeatureLayer::Layer3, FeatureLayer::Layer4];
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                h = block.forward_eval(&h);
            }
            features.layers.push(h.clone());
            if stage_layers.get(s) == Some(&until) {
                return Ok(features);
            }
        }
        let pooled = global_avg_pool_nhwc(&h);
        if until == FeatureLayer::Pool {
            features.pool = Some(pooled);
            return Ok(features);
        }
        features.logits = Some(self.fc.forward(&pooled));
        features.pool = Some(pooled);
        Ok(features)
    }
}

impl Parameterized for ResNet {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.stem.conv.visit(&join(prefix, "conv1"), f);
        self.stem.bn.visit(&join(prefix, "bn1"), f);
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                block.visit(&join(prefix, &format!("layer{}.{}", s + 1, b)), f);
            }
        }
        self.fc.visit(&join(prefix, "fc"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        self.stem.conv.visit_mut(&join(prefix, "conv1"), f);
        self.stem.bn.visit_mut(&join(prefix, "bn1"), f);
        for (s, stage) in self.stages.iter_mut().enumerate() {
            for (b, block) in stage.iter_mut().enumerate() {
                block.visit_mut(&join(prefix, &format!("layer{}.{}", s + 1, b)), f);
            }
        }
        self.fc.visit_mut(&join(prefix, "fc"), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_equal_torchvision() {
        // From torchvision 0.29: sum(p.numel() for p in get_model(name).parameters()).
        let expected = [
            ("resnet18", 11_689_512),
            ("resnet34", 21_797_672),
            ("resnet50", 25_557_032),
            ("resnet101", 44_549_160),
            ("resnet152", 60_192_808),
            ("wide_resnet50_2", 68_883_240),
            ("wide_resnet101_2", 126_886_696),
            ("resnext50_32x4d", 25_028_904),
            ("resnext101_32x8d", 88_791_336),
            ("resnext101_64x4d", 83_455_272),
        ];
        for (name, count) in expected {
            let m = ResNet::from_name(name, 1000).unwrap();
            assert_eq!(m.parameter_count(), count, "{name}");
        }
    }

    #[test]
    fn state_dict_keys_follow_torchvision() {
        let m = ResNet::from_name("resnet50", 10).unwrap();
        let sd = m.state_dict();
        let keys: Vec<&str> = sd.keys().collect();
        assert_eq!(keys[0], "conv1.weight");
        assert_eq!(keys[5], "bn1.num_batches_tracked");
        assert!(sd.contains("layer3.4.bn2.running_var"));
        assert!(sd.contains("layer1.0.downsample.0.weight"));
        assert!(sd.contains("layer2.0.downsample.1.num_batches_tracked"));
        assert!(!sd.contains("layer1.1.downsample.0.weight"));
        assert_eq!(sd.get("fc.weight").unwrap().shape, vec![10, 2048]);
        assert_eq!(sd.len(), 320);
    }
}
