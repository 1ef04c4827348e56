//! Architecture descriptions: torchvision's ResNet family as data.

/// Residual block kind: two 3x3 convs (ResNet-18/34) or 1x1-3x3-1x1 (50 and deeper).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes` (torchvision's `expansion`).
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The first layers, before the residual stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// torchvision: 7x7/2 conv to 64 channels, BN, ReLU, 3x3/2 max-pool.
    ImageNet,
    /// The paper's CIFAR nets: 3x3/1 conv to 16 channels, BN, ReLU, no pooling.
    Cifar,
}

/// What a residual block adds back to its branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shortcut {
    /// Identity, or a strided 1x1 conv + BN where the shape changes (the paper's option B,
    /// torchvision's `downsample`).
    Projection,
    /// Identity, or where the shape changes: every second pixel (from 0) with the new
    /// channels zero-padded, half before and half after (the paper's option A; no weights).
    ZeroPad,
    /// No shortcut at all: the paper's "plain" networks, `y = relu(F(x))`.
    None,
}

/// Everything that decides a network's shape. Names follow torchvision's constructor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks per stage (torchvision: four stages; CIFAR nets: three).
    pub layers: Vec<usize>,
    /// Planes of the first stage; stage s has `base_planes << s` (64 for torchvision, 16 for
    /// the CIFAR nets).
    pub base_planes: usize,
    pub stem: Stem,
    pub shortcut: Shortcut,
    /// Groups of the 3x3 conv (ResNeXt's cardinality).
    pub groups: usize,
    /// Channels per group at planes = 64 (64 for ResNet, 128 for wide, 4 or 8 for ResNeXt).
    pub width_per_group: usize,
    pub num_classes: usize,
    pub in_channels: usize,
}

/// Errors describing a model that cannot be built or an input it cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown architecture `{0}`; known: {known}, and the CIFAR nets resnet20/32/44/56/110, plain20/32/44/56/110", known = ARCHITECTURES.join(", "))]
    UnknownArchitecture(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("input has shape {found:?}; expected [N, H, W, {channels}] (NHWC) with H, W >= {min_side}")]
    BadInput { found: Vec<usize>, channels: usize, min_side: usize },
}

/// Depths of the paper's CIFAR networks (`6n + 2`).
pub const CIFAR_DEPTHS: [usize; 5] = [20, 32, 44, 56, 110];

/// The torchvision architectures `ResNetConfig::from_name` knows (it also knows the CIFAR
/// nets `resnet20/32/44/56/110` and `plain20/...`).
pub const ARCHITECTURES: &[&str] = &[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
];

impl ResNetConfig {
    /// An NHWC input this network can take: 4 dimensions, its channel count, non-empty sides.
    pub fn check_input(&self, x: &crate::tensor::Tensor) -> Result<(), ModelError> {
        let ok = x.shape.len() == 4 && x.shape[3] == self.in_channels && x.shape[1] >= 1 && x.shape[2] >= 1;
        if ok {
            Ok(())
        } else {
            Err(ModelError::BadInput { found: x.shape.clone(), channels: self.in_channels, min_side: 1 })
        }
    }

    /// torchvision's configuration for `name` with a 1000-class head; `-` and `_` are
    /// interchangeable (`resnext50-32x4d`).
    pub fn from_name(name: &str) -> Result<ResNetConfig, ModelError> {
        use BlockKind::*;
        let normalized = name.trim().to_ascii_lowercase().replace('-', "_");
        if let Some(config) = ResNetConfig::cifar_from_name(&normalized) {
            return Ok(config);
        }
        let (block, layers, groups, width_per_group) = match normalized.as_str() {
            "resnet18" => (Basic, [2, 2, 2, 2], 1, 64),
            "resnet34" => (Basic, [3, 4, 6, 3], 1, 64),
            "resnet50" => (Bottleneck, [3, 4, 6, 3], 1, 64),
            "resnet101" => (Bottleneck, [3, 4, 23, 3], 1, 64),
            "resnet152" => (Bottleneck, [3, 8, 36, 3], 1, 64),
            "wide_resnet50_2" => (Bottleneck, [3, 4, 6, 3], 1, 128),
            "wide_resnet101_2" => (Bottleneck, [3, 4, 23, 3], 1, 128),
            "resnext50_32x4d" => (Bottleneck, [3, 4, 6, 3], 32, 4),
            "resnext101_32x8d" => (Bottleneck, [3, 4, 23, 3], 32, 8),
            "resnext101_64x4d" => (Bottleneck, [3, 4, 23, 3], 64, 4),
            _ => return Err(ModelError::UnknownArchitecture(name.to_string())),
        };
        Ok(ResNetConfig {
            block,
            layers: layers.to_vec(),
            base_planes: 64,
            stem: Stem::ImageNet,
            shortcut: Shortcut::Projection,
            groups,
            width_per_group,
            num_classes: 1000,
            in_channels: 3,
        })
    }

    /// The paper's CIFAR nets: `resnet20/32/44/56/110` (option A shortcuts) and their
    /// `plain20/...` twins; 3 stages of `(depth - 2) / 6` basic blocks, widths 16/32/64,
    /// 10 classes and 3 input channels until changed.
    fn cifar_from_name(name: &str) -> Option<ResNetConfig> {
        let (shortcut, depth) = if let Some(d) = name.strip_prefix("plain") {
            (Shortcut::None, d)
        } else {
            (Shortcut::ZeroPad, name.strip_prefix("resnet")?)
        };
        let depth: usize = depth.parse().ok()?;
        if !CIFAR_DEPTHS.contains(&depth) {
            return None;
        }
        let n = (depth - 2) / 6;
        Some(ResNetConfig {
            block: BlockKind::Basic,
            layers: vec![n, n, n],
            base_planes: 16,
            stem: Stem::Cifar,
            shortcut,
            groups: 1,
            width_per_group: 64,
            num_classes: 10,
            in_channels: 3,
        })
    }

    pub fn with_in_channels(mut self, in_channels: usize) -> ResNetConfig {
        self.in_channels = in_channels;
        self
    }

    /// Projection (option B) shortcuts instead of zero-padding (option A).
    pub fn with_shortcut(mut self, shortcut: Shortcut) -> ResNetConfig {
        self.shortcut = shortcut;
        self
    }

    pub fn with_num_classes(mut self, num_classes: usize) -> ResNetConfig {
        self.num_classes = num_classes;
        self
    }

    /// Checks what torchvision would refuse (BasicBlock only supports groups=1, width 64).
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.block == BlockKind::Basic && (self.groups != 1 || self.width_per_group != 64) {
            return Err(ModelError::InvalidConfig("basic blocks only support groups=1 and width_per_group=64".into()));
        }
        if self.layers.is_empty() || self.layers.contains(&0) || self.base_planes == 0 {
            return Err(ModelError::InvalidConfig("every stage needs at least one block".into()));
        }
        if self.shortcut == Shortcut::ZeroPad && self.block != BlockKind::Basic {
            return Err(ModelError::InvalidConfig("zero-padding shortcuts are defined for basic blocks only".into()));
        }
        if self.groups == 0 || self.width_per_group == 0 || self.num_classes == 0 || self.in_channels == 0 {
            return Err(ModelError::InvalidConfig(
                "groups, width_per_group, num_classes and in_channels must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Channels at the end of the last stage (the pooled feature size: 512 or 2048; 64 for
    /// the CIFAR nets).
    pub fn feature_dim(&self) -> usize {
        (self.base_planes << (self.layers.len() - 1)) * self.block.expansion()
    }
}

impl ResNetConfig {
    /// torchvision's name for this configuration, whatever its head size and input
    /// channels (`None` for the CIFAR nets and custom configurations).
    pub fn torchvision_name(&self) -> Option<&'static str> {
        ARCHITECTURES.iter().copied().find(|n| {
            ResNetConfig::from_name(n)
                .is_ok_and(|c| c.with_num_classes(self.num_classes).with_in_channels(self.in_channels) == *self)
        })
    }

    /// Guesses which family member a torchvision state_dict belongs to, from its keys and
    /// shapes: `(architecture name, num_classes)`, or `None` when it is none of them.
    /// Used to turn "missing key" into "this file is resnet18 weights".
    pub fn infer_from_state_dict(sd: &crate::weights::StateDict) -> Option<(String, usize)> {
        let mut layers = [0usize; 4];
        for key in sd.keys() {
            let Some(rest) = key.strip_prefix("layer") else { continue };
            let mut parts = rest.splitn(3, '.');
            let stage: usize = parts.next()?.parse().ok()?;
            let block: usize = parts.next()?.parse().ok()?;
            if (1..=4).contains(&stage) {
                layers[stage - 1] = layers[stage - 1].max(block + 1);
            }
        }
        let block = if sd.contains("layer1.0.conv3.weight") { BlockKind::Bottleneck } else { BlockKind::Basic };
        let conv2 = sd.get("layer1.0.conv2.weight")?;
        let (width, per_group) = (*conv2.shape.first()?, *conv2.shape.get(1)?);
        let groups = width.checked_div(per_group)?;
        let width_per_group = if block == BlockKind::Basic { 64 } else { width / groups.max(1) };
        let num_classes = *sd.get("fc.weight")?.shape.first()?;
        let in_channels = *sd.get("conv1.weight")?.shape.get(1)?;
        let config = ResNetConfig {
            block,
            layers: layers.to_vec(),
            base_planes: 64,
            stem: Stem::ImageNet,
            shortcut: Shortcut::Projection,
            groups,
            width_per_group,
            num_classes,
            in_channels,
        };
        config.torchvision_name().map(|n| (n.to_string(), num_classes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResNet;

    #[test]
    fn infers_every_architecture_from_its_state_dict() {
        for name in ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "resnet101"] {
            let sd = ResNet::from_name(name, 10).unwrap().state_dict();
            assert_eq!(ResNetConfig::infer_from_state_dict(&sd), Some((name.to_string(), 10)));
        }
    }
}
