//! The ResNet family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind { Basic, Bottleneck }
#[derive(Clone, Debug)]
pub struct ResNetConfig { pub block: BlockKind }
pub struct ResNet { pub config: ResNetConfig }
