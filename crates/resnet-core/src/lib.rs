//! resnet-core: NHWC f32 tensors, CPU kernels, the ResNet family and weights I/O.
//!
//! The flow for inference: build a [`ResNet`] from a [`ResNetConfig`] (or an architecture
//! name), load a torchvision state_dict into it, and call [`ResNet::forward`] on an NHWC
//! batch. See the crate README or `resnet --help` for the command-line side.
//!
//! ```
//! use resnet_core::model::{seeded::seed_parameters, FeatureLayer};
//! use resnet_core::{ResNet, ResNetConfig, Tensor};
//!
//! // Any family member by torchvision's name (or build a ResNetConfig yourself).
//! let config = ResNetConfig::from_name("resnet18")?.with_num_classes(10);
//! let mut model = ResNet::new(config)?;
//! // Real use: model.load_state_dict(&resnet_core::weights::load_state_dict(path)?, true)?;
//! seed_parameters(&mut model, 42);
//!
//! // One 64x64 RGB image, NHWC, already normalised.
//! let x = Tensor::zeros(&[1, 64, 64, 3]);
//! let logits = model.forward(&x)?;
//! assert_eq!(logits.shape, vec![1, 10]);
//!
//! // Features: the 512-d pooled embedding and every stage's map on the way.
//! let f = model.forward_features(&x, FeatureLayer::Pool)?;
//! assert_eq!(f.pool.unwrap().shape, vec![1, 512]);
//! assert_eq!(f.layers[3].shape, vec![1, 2, 2, 512]); // layer4, NHWC
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod kernels;
pub mod model;
pub mod prng;
pub mod tensor;
pub mod timing;
pub mod weights;

pub use model::{BlockKind, ResNet, ResNetConfig};
pub use tensor::Tensor;
pub use weights::{StateDict, StoredTensor, TensorValues, WeightsError};
