//! The ResNet family as small readable descriptions (config + blocks); the kernels that run
//! them live in `crate::kernels`.

mod compiled;
mod config;
pub mod layers;
pub mod params;
mod resnet;
pub mod seeded;
pub mod summary;
pub mod train;

pub use crate::kernels::conv_packed::{CompileOptions, Precision};
pub use compiled::CompiledResNet;
pub use config::{BlockKind, ModelError, ResNetConfig, Shortcut, Stem, ARCHITECTURES, CIFAR_DEPTHS};
pub use layers::{BatchNorm2d, Conv2d, Linear};
pub use params::{Param, ParamKind};
pub use resnet::{Block, FeatureLayer, Features, ResNet};
