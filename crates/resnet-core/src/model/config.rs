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

/// Everything that decides a network's shape. Names follow torchvision's constructor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks per stage (torchvision: four stages, planes 64, 128, 256, 512).
    pub layers: [usize; 4],
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
    #[error("unknown architecture `{0}`; known: {known}", known = ARCHITECTURES.join(", "))]
    UnknownArchitecture(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("input has shape {found:?}; expected [N, H, W, {channels}] (NHWC) with H, W >= {min_side}")]
    BadInput { found: Vec<usize>, channels: usize, min_side: usize },
}

/// The architectures `ResNetConfig::from_name` knows, in torchvision's names.
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
    /// torchvision's configuration for `name` with a 1000-class head; `-` and `_` are
    /// interchangeable (`resnext50-32x4d`).
    pub fn from_name(name: &str) -> Result<ResNetConfig, ModelError> {
        use BlockKind::*;
        let normalized = name.trim().to_ascii_lowercase().replace('-', "_");
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
        Ok(ResNetConfig { block, layers, groups, width_per_group, num_classes: 1000, in_channels: 3 })
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
        if self.groups == 0 || self.width_per_group == 0 || self.num_classes == 0 || self.in_channels == 0 {
            return Err(ModelError::InvalidConfig(
                "groups, width_per_group, num_classes and in_channels must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Channels at the end of the last stage (the pooled feature size: 512 or 2048).
    pub fn feature_dim(&self) -> usize {
        512 * self.block.expansion()
    }
}

impl ResNetConfig {
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
        let config = ResNetConfig { block, layers, groups, width_per_group, num_classes, in_channels };
        ARCHITECTURES
            .iter()
            .find(|n| ResNetConfig::from_name(n).is_ok_and(|c| c.with_num_classes(num_classes) == config))
            .map(|n| (n.to_string(), num_classes))
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
