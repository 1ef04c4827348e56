//! Pooling on NHWC tensors: max-pool (the stem's 3x3/2 pad 1) and global average pool.

use rayon::prelude::*;

use super::buffers::take_buffer;
use super::vectorised_fn;
use crate::tensor::Tensor;

/// Max-pool with a square `kernel`, `stride` and `padding`; padded cells never win (as in
/// PyTorch, which pads with -inf).
pub fn max_pool2d_nhwc(input: &Tensor, kernel: usize, stride: usize, padding: usize) -> Tensor {
    assert_eq!(input.shape.len(), 4, "max_pool2d_nhwc expects an NHWC tensor");
    let (n, h, w, c) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3]);
    let oh = (h + 2 * padding).saturating_sub(kernel) / stride + 1;
    let ow = (w + 2 * padding).saturating_sub(kernel) / stride + 1;
    let shape = [n, oh, ow, c];
    if shape.iter().product::<usize>() == 0 {
        return Tensor::zeros(&shape);
    }
    // Every value is written below (filled, then maxed), so a reused buffer needs no clearing.
    let mut out = Tensor::from_vec(&shape, take_buffer(n * oh * ow * c)).unwrap_or_else(|| Tensor::zeros(&shape));
    let x = &input.data;
    // One task per output row: a pixel (64 channels) is far too little work for a task.
    out.data.par_chunks_mut(ow * c).enumerate().for_each(|(row, dst_row)| {
        let (b, oy) = (row / oh, row % oh);
        for (ox, dst) in dst_row.chunks_mut(c).enumerate() {
            dst.fill(f32::NEG_INFINITY);
            for ky in 0..kernel {
                let iy = (oy * stride + ky) as isize - padding as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                for kx in 0..kernel {
                    let ix = (ox * stride + kx) as isize - padding as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    max_into(dst, &x[((b * h + iy as usize) * w + ix as usize) * c..][..c]);
                }
            }
        }
    });
    out
}

vectorised_fn! {
    /// `dst = max(dst, src)` per value. `max` ignores NaN on one side; PyTorch propagates
    /// NaN. Matches it, as a select (compare and blend), 16 values at a time.
    fn max_into(dst: &mut [f32], src: &[f32]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = if s > *d || s.is_nan() { s } else { *d });
    }
}

/// Mean over H and W: `[N, H, W, C]` -> `[N, C]`.
pub fn global_avg_pool_nhwc(input: &Tensor) -> Tensor {
    assert_eq!(input.shape.len(), 4, "global_avg_pool_nhwc expects an NHWC tensor");
    let (n, h, w, c) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3]);
    let mut out = Tensor::zeros(&[n, c]);
    let plane = h * w;
    if plane == 0 || c == 0 {
        return out;
    }
    out.data.par_chunks_mut(c).enumerate().for_each(|(b, dst)| {
        let mut acc = vec![0.0f64; c];
        for p in 0..plane {
            let src = &input.data[(b * plane + p) * c..][..c];
            acc.iter_mut().zip(src).for_each(|(a, &s)| *a += s as f64);
        }
        dst.iter_mut().zip(&acc).for_each(|(d, a)| *d = (*a / plane as f64) as f32);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_matches_hand_computed_values_with_padding() {
        // One channel, 4x4 ramp 0..16; 3x3 stride 2 pad 1 -> 2x2.
        let input = Tensor::from_vec(&[1, 4, 4, 1], (0..16).map(|v| v as f32).collect()).unwrap();
        let out = max_pool2d_nhwc(&input, 3, 2, 1);
        assert_eq!(out.shape, vec![1, 2, 2, 1]);
        assert_eq!(out.data, vec![5.0, 7.0, 13.0, 15.0]);
    }

    #[test]
    fn max_pool_keeps_channels_apart_and_negative_values() {
        let input = Tensor::from_vec(&[1, 2, 2, 2], vec![-1.0, 4.0, -3.0, 2.0, -2.0, 1.0, -5.0, 0.0]).unwrap();
        let out = max_pool2d_nhwc(&input, 3, 2, 1);
        assert_eq!(out.data, vec![-1.0, 4.0]);
    }

    #[test]
    fn max_pool_propagates_nan_and_covers_every_pixel_of_a_batch() {
        let mut values: Vec<f32> = (0..2 * 5 * 5 * 3).map(|v| (v % 11) as f32 - 5.0).collect();
        values[7] = f32::NAN;
        let input = Tensor::from_vec(&[2, 5, 5, 3], values.clone()).unwrap();
        let out = max_pool2d_nhwc(&input, 3, 2, 1);
        assert_eq!(out.shape, vec![2, 3, 3, 3]);
        for b in 0..2 {
            for oy in 0..3usize {
                for ox in 0..3usize {
                    for ch in 0..3 {
                        let mut want = f32::NEG_INFINITY;
                        for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(5) {
                            for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(5) {
                                let v = values[((b * 5 + iy) * 5 + ix) * 3 + ch];
                                if v > want || v.is_nan() {
                                    want = v;
                                }
                            }
                        }
                        let got = out.data[((b * 3 + oy) * 3 + ox) * 3 + ch];
                        assert!(got == want || (got.is_nan() && want.is_nan()), "{b} {oy} {ox} {ch}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn global_average_pool_means_each_channel() {
        let input = Tensor::from_vec(&[1, 2, 1, 2], vec![1.0, 10.0, 3.0, 30.0]).unwrap();
        assert_eq!(global_avg_pool_nhwc(&input).data, vec![2.0, 20.0]);
    }
}
