//! The layers a ResNet is made of, each owning its parameters under torchvision's names.
//! Eval-mode forward passes here; training (backward) sits beside them in later work.

use super::params::{join, Param, ParamKind, Parameterized};
use crate::kernels::{conv2d_nhwc, matmul, Conv2dGeometry, Epilogue, MatMul};
use crate::tensor::Tensor;

/// 2-d convolution without bias (every conv in the family is followed by BatchNorm).
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub geometry: Conv2dGeometry,
    /// `[C_out, C_in/groups, KH, KW]` to PyTorch, stored OHWI.
    pub weight: Param,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Conv2d {
        let geometry =
            Conv2dGeometry { in_channels, out_channels, kernel_h: kernel, kernel_w: kernel, stride, padding, groups };
        Conv2d { geometry, weight: Param::conv_weight(out_channels, in_channels / groups, kernel, kernel) }
    }

    /// Convolution followed by `epilogue` (BatchNorm, residual, ReLU) in one pass.
    pub fn forward(&self, x: &Tensor, epilogue: &Epilogue<'_>) -> Tensor {
        conv2d_nhwc(x, &self.weight.data, &self.geometry, epilogue)
    }

    /// Multiply-accumulates for an output of `out_h × out_w` per image.
    pub fn macs(&self, out_h: usize, out_w: usize) -> usize {
        out_h * out_w * self.geometry.weight_len()
    }
}

impl Parameterized for Conv2d {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&join(prefix, "weight"), &self.weight);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
    }
}

/// BatchNorm over channels; eps 1e-5 as torchvision.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    pub eps: f32,
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Param,
    pub running_var: Param,
    pub num_batches_tracked: Param,
}

impl BatchNorm2d {
    pub fn new(channels: usize) -> BatchNorm2d {
        BatchNorm2d {
            eps: 1e-5,
            weight: Param::new(ParamKind::Trainable, &[channels], 1.0),
            bias: Param::new(ParamKind::Trainable, &[channels], 0.0),
            running_mean: Param::new(ParamKind::Buffer, &[channels], 0.0),
            running_var: Param::new(ParamKind::Buffer, &[channels], 1.0),
            num_batches_tracked: Param::counter(),
        }
    }

    /// Eval mode as a per-channel affine map `y = x·scale + shift` with
    /// `scale = γ / sqrt(var + eps)` and `shift = β − mean·scale`, ready for a conv epilogue.
    pub fn eval_scale_shift(&self) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = self
            .weight
            .data
            .iter()
            .zip(&self.running_var.data)
            .map(|(&g, &v)| (g as f64 / (v as f64 + self.eps as f64).sqrt()) as f32)
            .collect();
        let shift = self
            .bias
            .data
            .iter()
            .zip(&self.running_mean.data)
            .zip(&scale)
            .map(|((&b, &m), &s)| (b as f64 - m as f64 * s as f64) as f32)
            .collect();
        (scale, shift)
    }
}

impl Parameterized for BatchNorm2d {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&join(prefix, "weight"), &self.weight);
        f(&join(prefix, "bias"), &self.bias);
        f(&join(prefix, "running_mean"), &self.running_mean);
        f(&join(prefix, "running_var"), &self.running_var);
        f(&join(prefix, "num_batches_tracked"), &self.num_batches_tracked);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
        f(&join(prefix, "running_mean"), &mut self.running_mean);
        f(&join(prefix, "running_var"), &mut self.running_var);
        f(&join(prefix, "num_batches_tracked"), &mut self.num_batches_tracked);
    }
}

/// A convolution and the BatchNorm after it: the unit every ResNet is built from.
#[derive(Clone, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl ConvBn {
    pub fn new(in_c: usize, out_c: usize, kernel: usize, stride: usize, padding: usize, groups: usize) -> ConvBn {
        ConvBn { conv: Conv2d::new(in_c, out_c, kernel, stride, padding, groups), bn: BatchNorm2d::new(out_c) }
    }

    /// `relu?(bn(conv(x)) + residual?)`, eval mode, fused.
    pub fn forward_eval(&self, x: &Tensor, residual: Option<&Tensor>, relu: bool) -> Tensor {
        let (scale, shift) = self.bn.eval_scale_shift();
        let epilogue =
            Epilogue { scale: Some(&scale), shift: Some(&shift), residual: residual.map(|r| r.data.as_slice()), relu };
        self.conv.forward(x, &epilogue)
    }
}

/// Fully connected layer `y = x Wᵀ + b`, W stored `[out, in]` as PyTorch.
#[derive(Clone, Debug)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub weight: Param,
    pub bias: Param,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize) -> Linear {
        Linear {
            in_features,
            out_features,
            weight: Param::new(ParamKind::Trainable, &[out_features, in_features], 0.0),
            bias: Param::new(ParamKind::Trainable, &[out_features], 0.0),
        }
    }

    /// `[N, in]` -> `[N, out]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let n = x.shape[0];
        assert_eq!(x.shape[1], self.in_features);
        let mut out = Tensor::zeros(&[n, self.out_features]);
        for row in out.data.chunks_mut(self.out_features) {
            row.copy_from_slice(&self.bias.data);
        }
        let spec = MatMul {
            m: n,
            n: self.out_features,
            k: self.in_features,
            lhs: &x.data,
            lhs_row_stride: self.in_features,
            lhs_col_stride: 1,
            rhs: &self.weight.data,
            rhs_row_stride: 1,
            rhs_col_stride: self.in_features,
            accumulate: true,
            threads: crate::kernels::current_threads(),
        };
        matmul(&spec, &mut out.data, self.out_features);
        out
    }
}

impl Parameterized for ConvBn {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.conv.visit(&join(prefix, "0"), f);
        self.bn.visit(&join(prefix, "1"), f);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        self.conv.visit_mut(&join(prefix, "0"), f);
        self.bn.visit_mut(&join(prefix, "1"), f);
    }
}

impl Parameterized for Linear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&join(prefix, "weight"), &self.weight);
        f(&join(prefix, "bias"), &self.bias);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&join(prefix, "weight"), &mut self.weight);
        f(&join(prefix, "bias"), &mut self.bias);
    }
}
