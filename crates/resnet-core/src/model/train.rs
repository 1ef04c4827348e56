//! Training mode: forward passes that keep what backward needs, and the backward passes,
//! layer by layer beside each other. BatchNorm normalises with batch statistics and updates
//! its running statistics (momentum 0.1, unbiased variance) exactly as PyTorch does.
//! Gradients accumulate into each [`Param::grad`](super::Param) until `zero_grad`.
//!
//! A residual block's backward splits the incoming gradient into the branch and the
//! shortcut and sums the two at the block's input: the paper's identity path, in code.

use std::sync::Arc;

use rayon::prelude::*;

use super::config::{ModelError, Stem};
use super::layers::{ConvBn, Linear};
use super::params::Parameterized;
use super::resnet::{Block, ShortcutPath};
use super::ResNet;
use crate::kernels::activation::relu_backward;
use crate::kernels::batchnorm::{
    batch_norm_backward, batch_norm_relu_backward_from_input, batch_norm_train_forward_fused, update_running_stats,
    BatchNormError, BatchNormSaved,
};
use crate::kernels::buffers::{keep_buffers_for_training, recycle};
use crate::kernels::conv_backward::{conv2d_nhwc_backward_input, conv2d_nhwc_backward_weight};
use crate::kernels::linear::{linear_backward, linear_forward};
use crate::kernels::pool::global_avg_pool_nhwc;
use crate::kernels::pool_backward::{
    global_avg_pool_nhwc_backward, max_pool2d_nhwc_backward, max_pool2d_nhwc_with_indices,
};
use crate::kernels::shortcut::{subsample_zero_pad_backward_nhwc, subsample_zero_pad_nhwc};
use crate::kernels::{conv2d_nhwc, Epilogue};
use crate::tensor::Tensor;

/// BatchNorm's momentum for running statistics (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

/// What one conv + BN (+ residual) (+ ReLU) keeps for its backward. Activations are
/// shared (`Arc`), not copied: a unit's output is also the next unit's input and, through an
/// identity shortcut, the block's residual.
#[derive(Debug)]
pub struct ConvBnCache {
    input: Arc<Tensor>,
    bn: BatchNormSaved,
    /// The unit's output, whose sign is the ReLU's mask.
    output: Option<Arc<Tensor>>,
    had_residual: bool,
}

impl ConvBn {
    /// `relu?(bn_train(conv(x)) + residual?)`, updating BN's running statistics.
    pub fn forward_train(
        &mut self,
        x: &Arc<Tensor>,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<(Arc<Tensor>, ConvBnCache), BatchNormError> {
        let z = conv2d_nhwc(x, &self.conv.weight.data, &self.conv.geometry, &Epilogue::default());
        let (gamma, beta) = (&self.bn.weight.data, &self.bn.bias.data);
        let residual = residual.map(|r| r.data.as_slice());
        let (y, saved) = batch_norm_train_forward_fused(z, gamma, beta, self.bn.eps, residual, relu)?;
        update_running_stats(&mut self.bn.running_mean.data, &mut self.bn.running_var.data, &saved, BN_MOMENTUM);
        self.bn.num_batches_tracked.count += 1;
        let y = Arc::new(y);
        let cache = ConvBnCache {
            input: Arc::clone(x),
            bn: saved,
            output: relu.then(|| Arc::clone(&y)),
            had_residual: residual.is_some(),
        };
        Ok((y, cache))
    }

    /// Backward of [`ConvBn::forward_train`]: accumulates the conv and BN parameter
    /// gradients, returns `∂L/∂x` and, if a residual was added, `∂L/∂residual` (the
    /// gradient after the ReLU, which the sum passes to both of its terms).
    pub fn backward(&mut self, grad_out: Tensor, cache: ConvBnCache) -> (Tensor, Option<Tensor>) {
        let (grad_x, grad_residual) = self.backward_with(grad_out, cache, true);
        (grad_x.unwrap_or_else(|| Tensor::zeros(&[0])), grad_residual)
    }

    /// [`Self::backward`] for the first layer: parameter gradients only, since nothing
    /// needs the gradient of the input image (it would cost a whole transposed convolution).
    pub fn backward_parameters_only(&mut self, grad_out: Tensor, cache: ConvBnCache) {
        self.backward_with(grad_out, cache, false);
    }

    fn backward_with(
        &mut self,
        grad_out: Tensor,
        cache: ConvBnCache,
        input_gradient: bool,
    ) -> (Option<Tensor>, Option<Tensor>) {
        let gamma = &self.bn.weight.data;
        let (bn, grad_residual) = match (&cache.output, cache.had_residual) {
            // No residual: ReLU and BN backward in one pass, no masked copy.
            // The ReLU's mask is recomputed from BN's saved input (no residual was added), so
            // the output is not read again.
            (Some(_), false) => {
                let bn = batch_norm_relu_backward_from_input(&grad_out, &cache.bn, gamma, &self.bn.bias.data);
                recycle(grad_out);
                (bn, None)
            }
            (Some(out), true) => {
                let grad_y = relu_backward(&grad_out, out);
                recycle(grad_out);
                (batch_norm_backward(&grad_y, &cache.bn, gamma), Some(grad_y))
            }
            (None, had_residual) => {
                let bn = batch_norm_backward(&grad_out, &cache.bn, gamma);
                if had_residual {
                    (bn, Some(grad_out))
                } else {
                    recycle(grad_out);
                    (bn, None)
                }
            }
        };
        self.bn.weight.accumulate_grad(&bn.grad_gamma);
        self.bn.bias.accumulate_grad(&bn.grad_beta);
        let geom = &self.conv.geometry;
        let grad_w = conv2d_nhwc_backward_weight(&cache.input, &bn.grad_input, geom);
        self.conv.weight.accumulate_grad(&grad_w);
        let hw = (cache.input.shape[1], cache.input.shape[2]);
        let grad_x =
            input_gradient.then(|| conv2d_nhwc_backward_input(&bn.grad_input, &self.conv.weight.data, geom, hw));
        // What this unit kept, and its gradients, are done with: their buffers serve the
        // tensors still to come (and the next step's), instead of fresh zeroed memory.
        recycle(bn.grad_input);
        let ConvBnCache { input, bn: saved, output, .. } = cache;
        recycle(saved.input);
        for shared in [Some(input), output].into_iter().flatten() {
            if let Ok(t) = Arc::try_unwrap(shared) {
                recycle(t);
            }
        }
        (grad_x, grad_residual)
    }
}

/// What a residual block keeps for its backward.
#[derive(Debug)]
pub struct BlockCache {
    convs: Vec<ConvBnCache>,
    shortcut: Option<ConvBnCache>,
    input_shape: Vec<usize>,
}

impl Block {
    pub fn forward_train(&mut self, x: &Arc<Tensor>) -> Result<(Arc<Tensor>, BlockCache), BatchNormError> {
        let (shortcut_value, shortcut_cache) = match &mut self.shortcut {
            ShortcutPath::Projection(d) => {
                let (y, c) = d.forward_train(x, None, false)?;
                (Some(y), Some(c))
            }
            ShortcutPath::ZeroPad { stride, before, after } => {
                (Some(Arc::new(subsample_zero_pad_nhwc(x, *stride, *before, *after))), None)
            }
            ShortcutPath::Identity => (Some(Arc::clone(x)), None),
            ShortcutPath::None => (None, None),
        };
        let last = self.convs.len() - 1;
        let mut h = Arc::clone(x);
        let mut caches = Vec::with_capacity(self.convs.len());
        for (i, unit) in self.convs.iter_mut().enumerate() {
            let residual = if i == last { shortcut_value.as_deref() } else { None };
            let (y, cache) = unit.forward_train(&h, residual, true)?;
            caches.push(cache);
            h = y;
        }
        Ok((h, BlockCache { convs: caches, shortcut: shortcut_cache, input_shape: x.shape.clone() }))
    }

    /// `∂L/∂x = ∂L/∂x through F + ∂L/∂x through the shortcut`.
    pub fn backward(&mut self, grad_out: Tensor, cache: BlockCache) -> Tensor {
        let mut grad = grad_out;
        let mut grad_shortcut = None;
        for (unit, unit_cache) in self.convs.iter_mut().zip(cache.convs).rev() {
            let (g, g_res) = unit.backward(grad, unit_cache);
            if g_res.is_some() {
                grad_shortcut = g_res;
            }
            grad = g;
        }
        let through_shortcut = match (&mut self.shortcut, grad_shortcut) {
            (ShortcutPath::Identity, Some(g)) => Some(g),
            (ShortcutPath::Projection(d), Some(g)) => cache.shortcut.map(|c| d.backward(g, c).0),
            (ShortcutPath::ZeroPad { stride, before, .. }, Some(g)) => {
                Some(subsample_zero_pad_backward_nhwc(&g, &cache.input_shape, *stride, *before))
            }
            _ => None,
        };
        if let Some(s) = through_shortcut {
            add_in_place(&mut grad.data, &s.data);
        }
        grad
    }
}

/// `dst += src`, elementwise, in parallel blocks.
fn add_in_place(dst: &mut [f32], src: &[f32]) {
    const BLOCK: usize = 1 << 14;
    dst.par_chunks_mut(BLOCK).zip(src.par_chunks(BLOCK)).for_each(|(d, s)| {
        d.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    });
}

impl Linear {
    pub fn forward_train(&self, x: &Tensor) -> Tensor {
        linear_forward(x, &self.weight.data, Some(&self.bias.data), self.out_features)
    }

    pub fn backward(&mut self, x: &Tensor, grad_out: &Tensor) -> Tensor {
        let g = linear_backward(x, &self.weight.data, grad_out);
        self.weight.accumulate_grad(&g.grad_weight);
        self.bias.accumulate_grad(&g.grad_bias);
        g.grad_input
    }
}

/// Everything a training forward pass of the whole network keeps for its backward.
#[derive(Debug)]
pub struct TrainCache {
    stem: ConvBnCache,
    max_pool: Option<(Vec<u32>, (usize, usize))>,
    blocks: Vec<BlockCache>,
    last_map_hw: (usize, usize),
    pooled: Tensor,
}

/// Bytes of what a training forward keeps for the backward, counting each shared
/// activation once.
#[derive(Debug, Default)]
struct ActivationBytes {
    seen: std::collections::HashSet<*const Tensor>,
    bytes: usize,
}

impl ActivationBytes {
    fn shared(&mut self, t: &Arc<Tensor>) {
        if self.seen.insert(Arc::as_ptr(t)) {
            self.bytes += 4 * t.data.len();
        }
    }

    fn unit(&mut self, c: &ConvBnCache) {
        self.shared(&c.input);
        if let Some(o) = &c.output {
            self.shared(o);
        }
        let bn = &c.bn;
        self.bytes +=
            4 * (bn.input.data.len() + bn.mean.len() + bn.mean_rest.len() + bn.inv_std.len() + bn.var_unbiased.len());
    }
}

impl TrainCache {
    /// Bytes held for the backward pass: every saved activation (shared ones once), each
    /// BatchNorm's normalised input and statistics, the max-pool's argmax indices and the
    /// pooled features. What `resnet bench --train` reports as activation memory.
    pub fn activation_bytes(&self) -> usize {
        let mut count = ActivationBytes::default();
        count.unit(&self.stem);
        for block in &self.blocks {
            block.convs.iter().chain(&block.shortcut).for_each(|c| count.unit(c));
        }
        if let Some((indices, _)) = &self.max_pool {
            count.bytes += std::mem::size_of_val(indices.as_slice());
        }
        count.bytes + 4 * self.pooled.data.len()
    }
}

impl ResNet {
    /// Training-mode forward: logits `[N, classes]` and what [`ResNet::backward`] needs.
    /// Updates BatchNorm running statistics, as one PyTorch `model.train()` forward does.
    pub fn forward_train(&mut self, x: &Tensor) -> Result<(Tensor, TrainCache), ModelError> {
        self.check_input(x)?;
        // The backward hands every buffer back; the next step takes them again.
        keep_buffers_for_training();
        let bn_error = |e: BatchNormError| ModelError::InvalidConfig(e.to_string());
        let (mut h, stem) = self.stem.forward_train(&Arc::new(x.clone()), None, true).map_err(bn_error)?;
        let mut max_pool = None;
        if self.config.stem == Stem::ImageNet {
            let hw = (h.shape[1], h.shape[2]);
            let (pooled, indices) = max_pool2d_nhwc_with_indices(&h, 3, 2, 1);
            max_pool = Some((indices, hw));
            h = Arc::new(pooled);
        }
        let mut blocks = Vec::new();
        for block in self.stages.iter_mut().flatten() {
            let (y, cache) = block.forward_train(&h).map_err(bn_error)?;
            blocks.push(cache);
            h = y;
        }
        let last_map_hw = (h.shape[1], h.shape[2]);
        let pooled = global_avg_pool_nhwc(&h);
        let logits = self.fc.forward_train(&pooled);
        Ok((logits, TrainCache { stem, max_pool, blocks, last_map_hw, pooled }))
    }

    /// Backward from `∂L/∂logits`: accumulates every parameter's gradient.
    pub fn backward(&mut self, grad_logits: &Tensor, cache: TrainCache) {
        let grad_pooled = self.fc.backward(&cache.pooled, grad_logits);
        let mut grad = global_avg_pool_nhwc_backward(&grad_pooled, cache.last_map_hw);
        let blocks: Vec<&mut Block> = self.stages.iter_mut().flatten().collect();
        for (block, block_cache) in blocks.into_iter().zip(cache.blocks).rev() {
            grad = block.backward(grad, block_cache);
        }
        if let Some((indices, hw)) = &cache.max_pool {
            grad = max_pool2d_nhwc_backward(&grad, indices, *hw);
        }
        self.stem.backward_parameters_only(grad, cache.stem);
    }

    /// Clears every accumulated gradient.
    pub fn zero_grad(&mut self) {
        self.visit_mut("", &mut |_, p| p.zero_grad());
    }
}
