//! torchvision's `Resize -> CenterCrop -> ToTensor -> Normalize` on an 8-bit RGB image.

use std::ops::Range;

use crate::resample::resize_bilinear_window;
use crate::RgbImage8;

/// ImageNet per-channel mean (RGB), as used by torchvision's pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Parameters of the evaluation transform
/// `Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// Length the shorter image side is resized to (bilinear, antialiased).
    pub resize: u32,
    /// Side of the square centre crop; the output is `crop x crop x 3`.
    pub crop: u32,
    /// Per-channel mean subtracted after scaling pixels to 0..1.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
}

impl Preprocess {
    /// The classic ImageNet evaluation transform (torchvision `IMAGENET1K_V1` weights):
    /// resize to 256, centre crop 224, ImageNet mean/std.
    pub fn imagenet() -> Self {
        Preprocess { resize: 256, crop: 224, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// The ImageNet transform with a different resize, e.g. 232 for torchvision's
    /// `ResNet50_Weights.IMAGENET1K_V2`.
    pub fn imagenet_with_resize(resize: u32) -> Self {
        Preprocess { resize, ..Self::imagenet() }
    }
}

/// Applies the transform described by `params` and returns the crop as channels-last (HWC)
/// `f32` values, `crop * crop * 3` of them: element `(y * crop + x) * 3 + c`.
///
/// The result equals torchvision's output tensor (CHW) permuted to HWC: the resize is Pillow's
/// antialiased bilinear resize, and the normalisation is computed in `f32` in the same order as
/// `ToTensor` + `Normalize`, so identical pixels give identical floats.
///
/// # Panics
/// If `params.resize` or `params.crop` is 0, if the image has a zero dimension, or if
/// `image.pixels` is not `width * height * 3` bytes long. Images from
/// [`decode_image`](crate::decode_image) always satisfy the last two.
pub fn preprocess(image: &RgbImage8, params: &Preprocess) -> Vec<f32> {
    assert!(params.resize > 0 && params.crop > 0, "resize and crop must be positive");
    assert!(image.width > 0 && image.height > 0, "image has a zero dimension");
    assert_eq!(
        image.pixels.len(),
        image.width as usize * image.height as usize * 3,
        "pixel buffer does not match the image size"
    );

    let (width, height) = resized_size(image.width, image.height, params.resize);
    let cropped = resize_and_crop(image, width, height, params.crop as usize);

    let mut out = Vec::with_capacity(cropped.len());
    for pixel in cropped.chunks_exact(3) {
        for (c, &value) in pixel.iter().enumerate() {
            // ToTensor: byte / 255 in f32; Normalize: (x - mean) / std in f32.
            out.push((f32::from(value) / 255.0 - params.mean[c]) / params.std[c]);
        }
    }
    out
}

/// Output size of torchvision's `Resize(size)` with a single int: the shorter side becomes
/// `size` and the longer side `int(size * long / short)` (computed in f64 and truncated).
fn resized_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    // Python multiplies as integers, then divides as floats.
    let product = u64::from(size) * u64::from(long);
    let new_long = (product as f64 / f64::from(short)) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// `Resize` to `width` x `height` followed by torchvision's `CenterCrop(crop)`, returning the
/// `crop` x `crop` RGB bytes. Only the resized pixels that survive the crop are computed, which
/// gives the same values (see `resize_bilinear_window`) and bounds the work even when a thin
/// image is upscaled to an enormous size. Resizing to the image's own size is a plain copy,
/// matching torchvision, which skips `Resize` then.
fn resize_and_crop(image: &RgbImage8, width: u32, height: u32, crop: usize) -> Vec<u8> {
    let x = AxisCrop::new(width as usize, crop);
    let y = AxisCrop::new(height as usize, crop);
    let window = resize_bilinear_window(image, width, height, x.source.clone(), y.source.clone());

    let mut out = vec![0u8; crop * crop * 3]; // padding is black
    let window_row_len = x.source.len() * 3;
    for (row, window_row) in window.pixels.chunks_exact(window_row_len).enumerate() {
        let start = ((y.dest_start + row) * crop + x.dest_start) * 3;
        out[start..start + window_row_len].copy_from_slice(window_row);
    }
    out
}

/// Where the resized pixels along one axis go in torchvision's `CenterCrop`.
///
/// A side shorter than the crop is padded with black, `d // 2` before and `(d + 1) // 2`
/// after (d = crop - side), and kept whole. A longer side is cut starting at
/// `round((side - crop) / 2)`, with Python's round-half-to-even.
struct AxisCrop {
    /// The resized pixels that land in the crop.
    source: Range<usize>,
    /// Position of the first of them in the crop.
    dest_start: usize,
}

impl AxisCrop {
    fn new(side: usize, crop: usize) -> Self {
        if crop > side {
            AxisCrop { source: 0..side, dest_start: (crop - side) / 2 }
        } else {
            let start = round_half_to_even_half(side - crop);
            AxisCrop { source: start..start + crop, dest_start: 0 }
        }
    }
}

/// `int(round(n / 2.0))` in Python: halves round to the even neighbour.
fn round_half_to_even_half(n: usize) -> usize {
    let half = n / 2;
    if n % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_matches_torchvision() {
        // Values checked against torchvision.transforms.functional._compute_resized_output_size.
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        assert_eq!(resized_size(1000, 20, 256), (12800, 256));
        assert_eq!(resized_size(500, 375, 232), (309, 232));
        assert_eq!(resized_size(333, 500, 256), (256, 384));
        assert_eq!(resized_size(1, 1, 256), (256, 256));
        assert_eq!(resized_size(256, 320, 256), (256, 320));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        let expected = [(0, 0), (1, 0), (2, 1), (3, 2), (5, 2), (7, 4), (33, 16), (35, 18)];
        for (n, offset) in expected {
            assert_eq!(round_half_to_even_half(n), offset, "round({n} / 2)");
        }
    }

    #[test]
    fn crop_pads_small_images_with_black() {
        // A 1x2 image cropped to 4: one black column left, two right; one black row above and
        // below.
        let image = RgbImage8 { width: 1, height: 2, pixels: vec![1, 1, 1, 2, 2, 2] };
        let out = resize_and_crop(&image, 1, 2, 4);
        let grey: Vec<u8> = out.chunks_exact(3).map(|p| p[0]).collect();
        assert_eq!(grey, [0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn thin_images_do_not_materialise_the_whole_upscaled_image() {
        // 1 x 20000 resizes to 256 x 5,120,000 (about 4 GB of RGB); only the crop is computed.
        let image =
            RgbImage8 { width: 1, height: 20_000, pixels: (0..20_000u32).flat_map(|y| [(y % 256) as u8; 3]).collect() };
        let out = preprocess(&image, &Preprocess::imagenet());
        assert_eq!(out.len(), 224 * 224 * 3);
    }
}
