//! Backward passes of the pools: max-pool (through the argmax each output recorded) and
//! global average pool.
//!
//! Max-pool's output is one input value per window, so its gradient goes to that value
//! only: `∂L/∂x[argmax] += ∂L/∂y` (windows overlap for 3x3/2, so one input can collect
//! several). Global average pool spreads each channel's gradient evenly over the plane.

use rayon::prelude::*;

use super::vectorised_fn;
use crate::tensor::Tensor;

/// Max-pool forward that also returns, for every output value, the position of the input
/// value it took within its image plane (`iy·W + ix`, PyTorch's index convention).
///
/// Ties go to the first maximum in scan order (rows, then columns) and a NaN wins over
/// everything (the last NaN scanned), exactly as PyTorch's CPU kernel. Padded cells never
/// win. The values equal [`max_pool2d_nhwc`](super::pool::max_pool2d_nhwc)'s. Panics if
/// `padding > kernel / 2` (PyTorch rejects it too: a window could be all padding), or if
/// an image plane has more than `u32::MAX` pixels (indices are 32-bit: half the memory of
/// `usize`, and 16 lanes per vector instead of 8 in the selecting loop below).
pub fn max_pool2d_nhwc_with_indices(
    input: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (Tensor, Vec<u32>) {
    assert_eq!(input.shape.len(), 4, "max_pool2d_nhwc_with_indices expects an NHWC tensor");
    assert!(kernel > 0 && stride > 0 && padding <= kernel / 2, "invalid max-pool kernel/stride/padding");
    let (n, h, w, c) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3]);
    let oh = (h + 2 * padding).saturating_sub(kernel) / stride + 1;
    let ow = (w + 2 * padding).saturating_sub(kernel) / stride + 1;
    assert!(u32::try_from(h * w).is_ok(), "max-pool indices are 32-bit: an image plane of {h}x{w} is too large");
    let mut out = Tensor::zeros(&[n, oh, ow, c]);
    let mut indices = vec![0u32; out.len()];
    if out.is_empty() || h == 0 || w == 0 {
        return (out, indices);
    }
    let x = &input.data;
    // One task per output row rather than per pixel (50k tasks at batch 16).
    let row_len = ow * c;
    out.data.par_chunks_mut(row_len).zip(indices.par_chunks_mut(row_len)).enumerate().for_each(
        |(row, (dst_row, arg_row))| {
            let (b, oy) = (row / oh, row % oh);
            // The window clipped to the image (never empty, since padding ≤ kernel / 2).
            let y0 = (oy * stride).saturating_sub(padding);
            let y1 = (oy * stride + kernel - padding).min(h);
            let image = &x[b * h * w * c..(b + 1) * h * w * c];
            for (ox, (dst, arg)) in dst_row.chunks_mut(c).zip(arg_row.chunks_mut(c)).enumerate() {
                let x0 = (ox * stride).saturating_sub(padding);
                let x1 = (ox * stride + kernel - padding).min(w);
                max_with_index(image, (w, c), (y0, y1), (x0, x1), dst, arg);
            }
        },
    );
    (out, indices)
}

vectorised_fn! {
    /// The maximum of each channel over the window `rows × cols` of one `[H, W = w, C = c]`
    /// image into `dst`, and its position `iy·W + ix` into `arg`: the first maximum in scan
    /// order, or the last NaN. Selects, not branches, so that 16 channels go at a time.
    fn max_with_index(
        image: &[f32],
        width_channels: (usize, usize),
        rows: (usize, usize),
        cols: (usize, usize),
        dst: &mut [f32],
        arg: &mut [u32],
    ) {
        let (w, c) = width_channels;
        dst.fill(f32::NEG_INFINITY);
        arg.fill((rows.0 * w + cols.0) as u32);
        for iy in rows.0..rows.1 {
            for ix in cols.0..cols.1 {
                let src = &image[(iy * w + ix) * c..][..c];
                let pos = (iy * w + ix) as u32;
                for ((d, a), &s) in dst.iter_mut().zip(arg.iter_mut()).zip(src) {
                    let take = s > *d || s.is_nan();
                    *a = if take { pos } else { *a };
                    *d = if take { s } else { *d };
                }
            }
        }
    }
}

/// `∂L/∂input` (`[N, H, W, C]`, `input_hw = (H, W)`) of a max-pool from `grad_out`
/// (`[N, OH, OW, C]`) and the `indices` its forward recorded. Images are independent, so
/// they run in parallel; within one the scatter-add is sequential (overlapping windows).
/// Panics when `indices` does not fit the shapes (a caller bug).
pub fn max_pool2d_nhwc_backward(grad_out: &Tensor, indices: &[u32], input_hw: (usize, usize)) -> Tensor {
    assert_eq!(grad_out.shape.len(), 4, "max-pool backward expects an NHWC gradient");
    assert_eq!(indices.len(), grad_out.len(), "one index per pooled value");
    let (n, c) = (grad_out.shape[0], grad_out.shape[3]);
    let (h, w) = input_hw;
    let mut grad_input = Tensor::zeros(&[n, h, w, c]);
    let out_plane = grad_out.shape[1] * grad_out.shape[2] * c;
    if grad_input.is_empty() || out_plane == 0 {
        return grad_input;
    }
    grad_input
        .data
        .par_chunks_mut(h * w * c)
        .zip(grad_out.data.par_chunks(out_plane))
        .zip(indices.par_chunks(out_plane))
        .for_each(|((dst, grads), idx)| {
            // Pixel by pixel, so the channel is the position in the pixel (no `% c` per value).
            for (pixel_grads, pixel_idx) in grads.chunks(c).zip(idx.chunks(c)) {
                for (ch, (&g, &pos)) in pixel_grads.iter().zip(pixel_idx).enumerate() {
                    dst[pos as usize * c + ch] += g;
                }
            }
        });
    grad_input
}

/// `∂L/∂input` (`[N, H, W, C]`) of a global average pool from `grad_out` (`[N, C]`): every
/// position of channel `c` gets `grad_out[n, c] / (H·W)`.
pub fn global_avg_pool_nhwc_backward(grad_out: &Tensor, input_hw: (usize, usize)) -> Tensor {
    assert_eq!(grad_out.shape.len(), 2, "global average pool backward expects an [N, C] gradient");
    let (n, c) = (grad_out.shape[0], grad_out.shape[1]);
    let (h, w) = input_hw;
    let mut grad_input = Tensor::zeros(&[n, h, w, c]);
    if grad_input.is_empty() {
        return grad_input;
    }
    let inv_plane = 1.0 / (h * w) as f64;
    grad_input.data.par_chunks_mut(h * w * c).zip(grad_out.data.par_chunks(c)).for_each(|(dst, g)| {
        let share: Vec<f32> = g.iter().map(|&v| (v as f64 * inv_plane) as f32).collect();
        dst.chunks_mut(c).for_each(|pixel| pixel.copy_from_slice(&share));
    });
    grad_input
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check_gradient, dot, random_values};
    use crate::kernels::pool::{global_avg_pool_nhwc, max_pool2d_nhwc};
    use crate::prng::SplitMix64;

    /// A shuffled ramp with steps of 0.1: no ties, and a step of 0.01 never reorders values.
    fn distinct_values(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..len).map(|i| i as f32 * 0.1 - len as f32 * 0.05).collect();
        for i in (1..len).rev() {
            v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        v
    }

    #[test]
    fn values_equal_the_plain_max_pool_and_ties_pick_the_first() {
        let mut rng = SplitMix64::new(41);
        // Values from {-1, 0, 1}: plenty of ties.
        let x: Vec<f32> = (0..2 * 7 * 6 * 3).map(|_| (rng.next_u64() % 3) as f32 - 1.0).collect();
        let input = Tensor::from_vec(&[2, 7, 6, 3], x).unwrap();
        for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0)] {
            let (out, idx) = max_pool2d_nhwc_with_indices(&input, k, s, p);
            assert_eq!(out, max_pool2d_nhwc(&input, k, s, p));
            let (oh, ow) = (out.shape[1], out.shape[2]);
            for (i, (&v, pos)) in out.data.iter().zip(idx.iter().map(|&p| p as usize)).enumerate() {
                let (b, ch) = (i / (oh * ow * 3), i % 3);
                let (oy, ox) = ((i / 3) % (oh * ow) / ow, (i / 3) % ow);
                assert_eq!(input.data[(b * 42 + pos) * 3 + ch], v);
                // No earlier cell of the window (in scan order) holds the maximum.
                for iy in (oy * s).saturating_sub(p)..(oy * s + k - p).min(7) {
                    for ix in (ox * s).saturating_sub(p)..(ox * s + k - p).min(6) {
                        if iy * 6 + ix < pos {
                            assert!(input.data[(b * 42 + iy * 6 + ix) * 3 + ch] < v);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn nan_wins_the_window() {
        let input = Tensor::from_vec(&[1, 2, 2, 1], vec![1.0, f32::NAN, 5.0, 2.0]).unwrap();
        let (out, idx) = max_pool2d_nhwc_with_indices(&input, 2, 2, 0);
        assert!(out.data[0].is_nan());
        assert_eq!(idx, vec![1]);
    }

    /// Piecewise linear and no ties within 0.1: a step of 0.01 never changes the argmax,
    /// so central differences are exact up to f32 rounding (observed ≤ 1e-7). Tolerance 1e-5.
    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(42);
        for (shape, k, s, p) in [([2, 7, 6, 3], 3, 2, 1), ([1, 5, 5, 2], 3, 1, 1), ([2, 4, 6, 2], 2, 2, 0)] {
            let x = distinct_values(&mut rng, shape.iter().product());
            let t = |v: &[f32]| Tensor::from_vec(&shape, v.to_vec()).unwrap();
            let (out, idx) = max_pool2d_nhwc_with_indices(&t(&x), k, s, p);
            let r = Tensor::from_vec(&out.shape, random_values(&mut rng, out.len(), -1.0, 1.0)).unwrap();
            let grad = max_pool2d_nhwc_backward(&r, &idx, (shape[1], shape[2]));
            check_gradient("max pool", &x, &grad.data, 0.01, 1e-5, |v| {
                dot(&r.data, &max_pool2d_nhwc(&t(v), k, s, p).data)
            });
        }
    }

    /// Linear, so any step is exact up to rounding; 0.5 keeps rounding negligible (observed
    /// ≤ 2e-7). Tolerance 1e-5.
    #[test]
    fn global_avg_pool_gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(43);
        let shape = [2, 3, 5, 4];
        let x = random_values(&mut rng, shape.iter().product(), -1.0, 1.0);
        let r = Tensor::from_vec(&[2, 4], random_values(&mut rng, 8, -1.0, 1.0)).unwrap();
        let grad = global_avg_pool_nhwc_backward(&r, (3, 5));
        assert_eq!(grad.shape, shape);
        check_gradient("global average pool", &x, &grad.data, 0.5, 1e-5, |v| {
            dot(&r.data, &global_avg_pool_nhwc(&Tensor::from_vec(&shape, v.to_vec()).unwrap()).data)
        });
    }
}
