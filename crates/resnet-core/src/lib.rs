//! resnet-core: NHWC f32 tensors, CPU kernels, the ResNet family and weights I/O.
//!
//! The flow for inference: build a [`ResNet`] from a [`ResNetConfig`] (or an architecture
//! name), load a torchvision state_dict into it, and call [`ResNet::forward`] on an NHWC
//! batch. See the crate README or `resnet --help` for the command-line side.

pub mod kernels;
pub mod model;
pub mod prng;
pub mod tensor;
pub mod weights;

pub use model::{BlockKind, ResNet, ResNetConfig};
pub use tensor::Tensor;
pub use weights::{StateDict, StoredTensor, TensorValues, WeightsError};
