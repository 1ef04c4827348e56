//! Gradient norms per layer: how strongly one batch's loss reaches each conv layer of a
//! network. At initialisation this is the picture behind the paper's argument about plain
//! networks: the gradient either survives the trip back through the depth or it does not.

use resnet_core::kernels::loss::softmax_cross_entropy;
use resnet_core::model::params::Parameterized;
use resnet_core::model::ParamKind;
use resnet_core::{ResNet, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The L2 norm of one conv layer's weight gradient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerGradient {
    /// torchvision's parameter name, e.g. `layer2.0.conv1.weight`.
    pub name: String,
    /// `‖∂L/∂W‖₂` over all of the layer's weights.
    pub norm: f64,
}

/// One train-mode forward and backward of the mean cross-entropy of `(x, labels)` through
/// `model`; returns the L2 norm of every conv weight's gradient in network order (the
/// state_dict's: stem, then each block's convs, a projection shortcut after its block's
/// convs). The model's gradients are cleared before and after; its BatchNorm running
/// statistics take one update, as in any training step.
pub fn conv_gradient_norms(model: &mut ResNet, x: &Tensor, labels: &[usize]) -> Result<Vec<LayerGradient>, TrainError> {
    let config_error = |e: &dyn std::fmt::Display| TrainError::Config(e.to_string());
    model.zero_grad();
    let (logits, cache) = model.forward_train(x).map_err(|e| config_error(&e))?;
    let (_, grad_logits) = softmax_cross_entropy(&logits, labels, 0.0).map_err(|e| config_error(&e))?;
    model.backward(&grad_logits, cache);
    let mut norms = Vec::new();
    model.visit("", &mut |name, p| {
        if p.kind == ParamKind::Trainable && p.torch_shape.len() == 4 {
            let sum_sq: f64 = p.grad.iter().map(|&g| (g as f64).powi(2)).sum();
            norms.push(LayerGradient { name: name.to_string(), norm: sum_sq.sqrt() });
        }
    });
    model.zero_grad();
    Ok(norms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use resnet_core::model::seeded::{seed_parameters, seeded_values};
    use resnet_core::ResNetConfig;

    #[test]
    fn one_finite_positive_norm_per_conv_layer() {
        // 4 images of 8x8x1, 3 classes: tiny, yet every layer of the 20-layer nets is reached.
        let x = Tensor::from_vec(&[4, 8, 8, 1], seeded_values(7, 4 * 8 * 8, -1.0, 1.0)).unwrap();
        let labels = [0, 1, 2, 1];
        for arch in ["plain20", "resnet20"] {
            let config = ResNetConfig::from_name(arch).unwrap().with_in_channels(1).with_num_classes(3);
            let mut model = ResNet::new(config).unwrap();
            seed_parameters(&mut model, 3);
            let norms = conv_gradient_norms(&mut model, &x, &labels).unwrap();
            // Stem + 3 stages x 3 blocks x 2 convs; option-A shortcuts have no weights.
            assert_eq!(norms.len(), 19, "{arch}");
            assert_eq!(norms[0].name, "conv1.weight");
            assert_eq!(norms[1].name, "layer1.0.conv1.weight");
            assert_eq!(norms[18].name, "layer3.2.conv2.weight");
            for layer in &norms {
                assert!(layer.norm.is_finite() && layer.norm > 0.0, "{arch} {}: {}", layer.name, layer.norm);
            }
            // The gradients are cleared afterwards.
            model.visit("", &mut |name, p| assert!(p.grad.is_empty(), "{name}"));
        }
    }

    #[test]
    fn a_bad_batch_is_an_error_not_a_panic() {
        let mut model = ResNet::new(ResNetConfig::from_name("resnet20").unwrap()).unwrap();
        let x = Tensor::zeros(&[2, 8, 8, 3]);
        assert!(conv_gradient_norms(&mut model, &x, &[0]).is_err(), "label count differs from batch");
        assert!(conv_gradient_norms(&mut model, &x, &[0, 10]).is_err(), "label out of range");
    }
}
