//! The paper's option-A shortcut: where a stage halves the size and doubles the channels,
//! take every `stride`-th pixel starting at 0 and zero-pad the new channels, `before` of
//! them ahead of the existing ones and `after` behind. No weights; its backward is the
//! matching gather.

use crate::tensor::Tensor;

/// `[N, H, W, C]` -> `[N, ceil(H/stride), ceil(W/stride), before + C + after]`.
pub fn subsample_zero_pad_nhwc(x: &Tensor, stride: usize, before: usize, after: usize) -> Tensor {
    let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = (h.div_ceil(stride), w.div_ceil(stride));
    let oc = before + c + after;
    let mut out = Tensor::zeros(&[n, oh, ow, oc]);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let src = ((b * h + oy * stride) * w + ox * stride) * c;
                let dst = ((b * oh + oy) * ow + ox) * oc + before;
                out.data[dst..dst + c].copy_from_slice(&x.data[src..src + c]);
            }
        }
    }
    out
}

/// Gradient of [`subsample_zero_pad_nhwc`]: the padded channels' gradient is dropped, the
/// rest lands on the sampled pixels; the other pixels get zero.
pub fn subsample_zero_pad_backward_nhwc(
    grad_out: &Tensor,
    input_shape: &[usize],
    stride: usize,
    before: usize,
) -> Tensor {
    let (n, h, w, c) = (input_shape[0], input_shape[1], input_shape[2], input_shape[3]);
    let (oh, ow, oc) = (grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]);
    let mut grad_in = Tensor::zeros(input_shape);
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let dst = ((b * h + oy * stride) * w + ox * stride) * c;
                let src = ((b * oh + oy) * ow + ox) * oc + before;
                grad_in.data[dst..dst + c].copy_from_slice(&grad_out.data[src..src + c]);
            }
        }
    }
    grad_in
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_even_pixels_and_pads_both_sides() {
        // 1 image, 3x3, 2 channels: value = 10*pixel + channel.
        let data: Vec<f32> = (0..9).flat_map(|p| [10.0 * p as f32, 10.0 * p as f32 + 1.0]).collect();
        let x = Tensor::from_vec(&[1, 3, 3, 2], data).unwrap();
        let y = subsample_zero_pad_nhwc(&x, 2, 1, 1);
        assert_eq!(y.shape, vec![1, 2, 2, 4]);
        // pixel (1,1) of the output is input pixel (2,2) = index 8
        assert_eq!(&y.data[12..16], &[0.0, 80.0, 81.0, 0.0]);
        let g = subsample_zero_pad_backward_nhwc(&y, &x.shape, 2, 1);
        assert_eq!(&g.data[16..18], &[80.0, 81.0]);
        assert_eq!(&g.data[2..4], &[0.0, 0.0]); // pixel (0,1) was not sampled
    }
}
