//! Bilinear resizing that reproduces Pillow's `Image.resize(size, Resampling.BILINEAR)` on
//! 8-bit images bit for bit.
//!
//! Pillow (src/libImaging/Resample.c) does not interpolate between the two nearest pixels the
//! way textbook bilinear does: it convolves with a triangle filter whose width grows with the
//! downscale factor, which antialiases. The resize is separable: a horizontal pass produces an
//! intermediate 8-bit image (rounded and clipped), then a vertical pass produces the output
//! (Pillow 13 swaps the order for some size changes; see `resize_bilinear_window`).
//! Filter weights are computed in `f64`, normalised per output pixel, then turned into 22-bit
//! fixed point; accumulation is integer. Every rounding step below follows Pillow's order so
//! the results are identical, not merely close.

use std::ops::Range;

use crate::RgbImage8;

/// Fractional bits of the fixed-point weights. Pillow keeps 8 bits for the pixel value and two
/// for overflow of filters with negative lobes out of a 32-bit accumulator.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For one axis, the input span and weights contributing to each output position of a
/// contiguous range of output positions (indices below are relative to that range).
struct AxisWeights {
    /// First input index used by each output position.
    first: Vec<usize>,
    /// Number of input positions used by each output position.
    count: Vec<usize>,
    /// Fixed-point weights, `stride` per output position (only `count` of them meaningful).
    weights: Vec<i32>,
    stride: usize,
}

impl AxisWeights {
    fn len(&self) -> usize {
        self.first.len()
    }

    /// Input span (start, exclusive end) read by all the output positions together.
    fn input_span(&self) -> Range<usize> {
        let last = self.len() - 1;
        self.first[0]..self.first[last] + self.count[last]
    }

    fn taps(&self, out_index: usize) -> (usize, &[i32]) {
        let start = out_index * self.stride;
        (self.first[out_index], &self.weights[start..start + self.count[out_index]])
    }
}

/// The triangle ("tent") kernel, support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Weights for resampling an axis of `in_size` pixels to `out_size` pixels over the whole
/// input (Pillow's box `(0, in_size)`), for the output positions in `outputs` only.
fn axis_weights(in_size: usize, out_size: usize, outputs: Range<usize>) -> AxisWeights {
    // Pillow's box coordinates are C floats; converting through f32 keeps that rounding for
    // sizes above 2^24.
    let scale = f64::from(in_size as f32) / out_size as f64;
    // When shrinking, stretch the kernel over `scale` input pixels: this is the antialiasing.
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle's support (1) times the stretch
    let inv_filter_scale = 1.0 / filter_scale;
    let stride = support.ceil() as usize * 2 + 1;

    let mut first = Vec::with_capacity(outputs.len());
    let mut count = Vec::with_capacity(outputs.len());
    let mut weights = vec![0i32; outputs.len() * stride];
    let mut float_weights = Vec::with_capacity(stride);
    for (slot, out_index) in outputs.enumerate() {
        let centre = (out_index as f64 + 0.5) * scale;
        // `as` truncates toward zero like C's (int) cast; negative starts clamp to 0 anyway.
        let start = ((centre - support + 0.5) as i64).max(0) as usize;
        let end = ((centre + support + 0.5) as i64).clamp(0, in_size as i64) as usize;
        let taps = end.saturating_sub(start).min(stride);

        float_weights.clear();
        let mut total = 0.0;
        for tap in 0..taps {
            let w = triangle(((tap + start) as f64 - centre + 0.5) * inv_filter_scale);
            float_weights.push(w);
            total += w;
        }
        let row = &mut weights[slot * stride..][..taps];
        for (fixed, &w) in row.iter_mut().zip(&float_weights) {
            let w = if total != 0.0 { w / total } else { w };
            *fixed = to_fixed_point(w);
        }
        first.push(start);
        count.push(taps);
    }
    AxisWeights { first, count, weights, stride }
}

/// Rounds half away from zero, then truncates, as Pillow's `normalize_coeffs_8bpc` does.
fn to_fixed_point(weight: f64) -> i32 {
    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
    if weight < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Converts an accumulator (which starts at one half) back to a byte, clipping to 0..=255.
fn accumulator_to_u8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const ROUNDING_HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes `image` to `out_width` x `out_height` exactly like Pillow's BILINEAR `resize`, but
/// computes only the window `cols` x `rows` of the result (every output pixel depends only on
/// its own filter window, so the window equals the same region of the full resize).
///
/// Returns the window as an image of `cols.len()` x `rows.len()` pixels. The ranges must be
/// non-empty and inside the output size; the input must be non-empty.
pub(crate) fn resize_bilinear_window(
    image: &RgbImage8,
    out_width: u32,
    out_height: u32,
    cols: Range<usize>,
    rows: Range<usize>,
) -> RgbImage8 {
    let (in_w, in_h) = (image.width as usize, image.height as usize);
    let (out_w, out_h) = (out_width as usize, out_height as usize);
    assert!(!cols.is_empty() && cols.end <= out_w && !rows.is_empty() && rows.end <= out_h);
    // Like Pillow, skip a pass whose axis keeps its size.
    let resize_horizontally = out_w != in_w;
    let resize_vertically = out_h != in_h;
    let in_row_len = in_w * 3;

    // Pillow 13 runs the vertical pass first when the height shrinks by more than twice as
    // many pixels as the width does (a speed choice that changes the intermediate rounding,
    // so we must follow it): rule from ImagingResampleInner in Pillow 13.0.0.
    let height_loss = in_h as i64 - out_h as i64;
    let width_loss = in_w as i64 - out_w as i64;
    let vertical_first = height_loss > 0 && height_loss > 2 * width_loss;

    let pixels = if vertical_first {
        let vertical = axis_weights(in_h, out_h, rows.clone());
        if resize_horizontally {
            let all_cols = vertical_pass(&image.pixels, in_row_len, 0..in_w, 0, &vertical);
            let horizontal = axis_weights(in_w, out_w, cols.clone());
            horizontal_pass(&all_cols, in_w, 0..rows.len(), &horizontal)
        } else {
            vertical_pass(&image.pixels, in_row_len, cols.clone(), 0, &vertical)
        }
    } else if resize_horizontally {
        let horizontal = axis_weights(in_w, out_w, cols.clone());
        if resize_vertically {
            // The horizontal pass only needs the input rows the vertical pass will read.
            let vertical = axis_weights(in_h, out_h, rows.clone());
            let span = vertical.input_span();
            let needed_rows = horizontal_pass(&image.pixels, in_w, span.clone(), &horizontal);
            let row_len = cols.len() * 3;
            vertical_pass(&needed_rows, row_len, 0..cols.len(), span.start, &vertical)
        } else {
            horizontal_pass(&image.pixels, in_w, rows.clone(), &horizontal)
        }
    } else if resize_vertically {
        let vertical = axis_weights(in_h, out_h, rows.clone());
        vertical_pass(&image.pixels, in_row_len, cols.clone(), 0, &vertical)
    } else {
        rows.clone()
            .flat_map(|y| &image.pixels[(y * in_w + cols.start) * 3..(y * in_w + cols.end) * 3])
            .copied()
            .collect()
    };
    RgbImage8 { width: cols.len() as u32, height: rows.len() as u32, pixels }
}

/// Resamples input rows `rows` of an RGB image `in_w` pixels wide to the output columns that
/// `weights` describes.
fn horizontal_pass(pixels: &[u8], in_w: usize, rows: Range<usize>, weights: &AxisWeights) -> Vec<u8> {
    let out_row_len = weights.len() * 3;
    let mut out = vec![0u8; rows.len() * out_row_len];
    for (out_row, y) in out.chunks_exact_mut(out_row_len).zip(rows) {
        let in_row = &pixels[y * in_w * 3..][..in_w * 3];
        for (x, out_pixel) in out_row.chunks_exact_mut(3).enumerate() {
            let (start, taps) = weights.taps(x);
            let mut acc = [ROUNDING_HALF; 3];
            for (&w, pixel) in taps.iter().zip(in_row[start * 3..].chunks_exact(3)) {
                for (a, &v) in acc.iter_mut().zip(pixel) {
                    *a += i32::from(v) * w;
                }
            }
            for (out, &a) in out_pixel.iter_mut().zip(&acc) {
                *out = accumulator_to_u8(a);
            }
        }
    }
    out
}

/// Resamples columns `cols` of an RGB image to the output rows that `weights` describes.
/// `pixels` holds rows of `row_len` bytes, the first being input row `row_offset` (the
/// horizontal pass may have produced only the rows that are needed).
fn vertical_pass(
    pixels: &[u8],
    row_len: usize,
    cols: Range<usize>,
    row_offset: usize,
    weights: &AxisWeights,
) -> Vec<u8> {
    let bytes = cols.start * 3..cols.end * 3;
    let out_row_len = bytes.len();
    let mut out = vec![0u8; weights.len() * out_row_len];
    let mut acc = vec![0i32; out_row_len];
    for (y, out_row) in out.chunks_exact_mut(out_row_len).enumerate() {
        let (start, taps) = weights.taps(y);
        acc.fill(ROUNDING_HALF);
        // Integer accumulation is exact, so summing tap by tap over a whole row gives the
        // same result as Pillow's pixel-by-pixel loop while reading memory sequentially.
        for (tap, &w) in taps.iter().enumerate() {
            let in_row = &pixels[(start + tap - row_offset) * row_len..][bytes.clone()];
            for (a, &v) in acc.iter_mut().zip(in_row) {
                *a += i32::from(v) * w;
            }
        }
        for (out, &a) in out_row.iter_mut().zip(&acc) {
            *out = accumulator_to_u8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (input, output) in [(500, 256), (1000, 341), (20, 256), (3, 7), (7, 3), (1, 5)] {
            let w = axis_weights(input, output, 0..output);
            for i in 0..output {
                let (start, taps) = w.taps(i);
                assert!(start + taps.len() <= input);
                let sum: i32 = taps.iter().sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= taps.len() as i32, "{input}->{output} #{i}");
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let image = RgbImage8 { width: 37, height: 11, pixels: [9u8, 128, 250].repeat(37 * 11) };
        for (w, h) in [(5, 3), (100, 40), (37, 40), (12, 11), (1, 1), (37, 11)] {
            let out = resize_bilinear_window(&image, w, h, 0..w as usize, 0..h as usize);
            assert_eq!(out.pixels, [9u8, 128, 250].repeat((w * h) as usize), "{w}x{h}");
        }
    }

    #[test]
    fn windows_equal_the_same_region_of_the_full_resize() {
        let (width, height) = (23u32, 17u32);
        let pixels = (0..width * height * 3).map(|i| (i * 7919 % 251) as u8).collect();
        let image = RgbImage8 { width, height, pixels };
        // Shrinking, growing, one axis only, and a shape that takes the vertical-first order.
        for (w, h) in [(9, 7), (40, 30), (23, 30), (40, 17), (20, 5)] {
            let full = resize_bilinear_window(&image, w, h, 0..w as usize, 0..h as usize);
            let (cols, rows) = (2..w as usize - 1, 1..h as usize - 2);
            let window = resize_bilinear_window(&image, w, h, cols.clone(), rows.clone());
            let expected: Vec<u8> = rows
                .flat_map(|y| full.pixels[(y * w as usize + cols.start) * 3..(y * w as usize + cols.end) * 3].to_vec())
                .collect();
            assert_eq!(window.pixels, expected, "{w}x{h}");
        }
    }
}
