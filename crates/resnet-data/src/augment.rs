//! Seeded training augmentation and the final `ToTensor` + `Normalize`, producing
//! channels-last (HWC) `f32` samples.
//!
//! The transforms follow torchvision's definitions (parameter sampling, rounding, padding,
//! Pillow-equal antialiased bilinear resizing); only the random numbers come from this crate's
//! [`Rng`] instead of torch's generator, so a given seed gives different crops than PyTorch
//! does, but the distribution and the pixel arithmetic are the same.

use crate::dataset::{DatasetError, DatasetKind, Normalization, Pixels, Sample};
use crate::resample::resize_bilinear_window;
use crate::rng::Rng;
use crate::{preprocess, Preprocess, RgbImage8};

/// What to do to each sample before it is batched.
#[derive(Clone, Debug, PartialEq)]
pub enum Augment {
    /// Nothing (`--no-augment`): samples keep their size and are only scaled and normalised.
    None,
    /// `RandomCrop(sample size, padding=padding)` with zero padding, then
    /// `RandomHorizontalFlip()` when `flip` (CIFAR style).
    RandomCrop { padding: usize, flip: bool },
    /// `RandomResizedCrop(size, scale, ratio)` (bilinear, antialiased), then
    /// `RandomHorizontalFlip()` when `flip` (ImageNet style). 8-bit samples only.
    RandomResizedCrop { size: u32, scale: (f64, f64), ratio: (f64, f64), flip: bool },
    /// Evaluation `Resize(resize)` + `CenterCrop(crop)` through [`preprocess`]. 8-bit only.
    ResizeCenterCrop { resize: u32, crop: u32 },
}

impl Augment {
    /// CIFAR training: random crop with 4 pixels of zero padding, horizontal flip.
    pub fn cifar() -> Self {
        Augment::RandomCrop { padding: 4, flip: true }
    }

    /// ImageNet training: `RandomResizedCrop(224)` with the default scale (0.08, 1) and ratio
    /// (3/4, 4/3), horizontal flip.
    pub fn imagenet_train() -> Self {
        Augment::RandomResizedCrop { size: 224, scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), flip: true }
    }

    /// ImageNet evaluation: resize to 256, centre crop 224.
    pub fn imagenet_eval() -> Self {
        Augment::ResizeCenterCrop { resize: 256, crop: 224 }
    }

    /// Fashion-MNIST training: random crop with 2 pixels of zero padding (28x28 images, the
    /// same 1/14 of a side that CIFAR's 4 pixels are of 32), horizontal flip (clothes are
    /// left-right symmetric; digits are not, so MNIST gets no flip).
    pub fn fashion_mnist() -> Self {
        Augment::RandomCrop { padding: 2, flip: true }
    }

    /// The usual training transform of a data set: CIFAR crop/flip for CIFAR, pad-2
    /// crop/flip for Fashion-MNIST, ImageNet random-resized-crop for image folders, none for
    /// MNIST and `.npz` data. With
    /// `augment == false` (`--no-augment`) nothing random is applied; image folders still get
    /// the evaluation resize/centre crop, since their images differ in size.
    pub fn for_training(kind: DatasetKind, augment: bool) -> Self {
        match (kind, augment) {
            (DatasetKind::ImageFolder, true) => Self::imagenet_train(),
            (DatasetKind::ImageFolder, false) => Self::imagenet_eval(),
            (DatasetKind::Cifar10 | DatasetKind::Cifar100, true) => Self::cifar(),
            (DatasetKind::FashionMnist, true) => Self::fashion_mnist(),
            _ => Augment::None,
        }
    }

    /// The evaluation transform of a data set: resize/centre crop for image folders, none
    /// otherwise.
    pub fn for_evaluation(kind: DatasetKind) -> Self {
        Self::for_training(kind, false)
    }

    /// Refuses parameters torchvision would refuse or that cannot produce an image.
    pub fn validate(&self) -> Result<(), DatasetError> {
        let bad = |what: String| Err(DatasetError::Config(what));
        match *self {
            Augment::RandomResizedCrop { size, scale, ratio, .. } => {
                if size == 0 {
                    return bad("RandomResizedCrop size must be positive".into());
                }
                if !(scale.0 > 0.0 && scale.0 <= scale.1 && scale.1.is_finite()) {
                    return bad(format!("RandomResizedCrop scale {scale:?} must satisfy 0 < min <= max"));
                }
                if !(ratio.0 > 0.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                    return bad(format!("RandomResizedCrop ratio {ratio:?} must satisfy 0 < min <= max"));
                }
                Ok(())
            }
            Augment::ResizeCenterCrop { resize, crop } if resize == 0 || crop == 0 => {
                bad(format!("resize {resize} and crop {crop} must be positive"))
            }
            _ => Ok(()),
        }
    }
}

/// A transformed sample: normalised values, channels-last.
#[derive(Clone, Debug, PartialEq)]
pub struct Augmented {
    /// `height * width * channels` values, element `(y * width + x) * channels + c`.
    pub values: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

/// Applies `augment` to `sample`, drawing random numbers from `rng`, then scales 8-bit pixels
/// to 0..1 and normalises them with `normalization` (float samples are already normalised).
pub fn apply(
    sample: &Sample,
    augment: &Augment,
    normalization: &Normalization,
    rng: &mut Rng,
) -> Result<Augmented, DatasetError> {
    let (h, w, c) = (sample.height, sample.width, sample.channels);
    let expected = h * w * c;
    let found = match &sample.pixels {
        Pixels::U8(p) => p.len(),
        Pixels::F32(v) => v.len(),
    };
    if found != expected || h == 0 || w == 0 || c == 0 {
        return Err(DatasetError::Batch(format!("sample of {h}x{w}x{c} holds {found} values")));
    }
    if normalization.mean.len() != c || normalization.std.len() != c {
        return Err(DatasetError::Config(format!(
            "normalisation has {} channels, sample {c}",
            normalization.mean.len()
        )));
    }
    let out = |values, height, width| Augmented { values, height, width, channels: c };
    match (augment, &sample.pixels) {
        (Augment::None, Pixels::U8(p)) => Ok(out(normalize_u8(p, normalization), h, w)),
        (Augment::None, Pixels::F32(v)) => Ok(out(chw_to_hwc(v, h, w, c), h, w)),
        (&Augment::RandomCrop { padding, flip }, pixels) => {
            let top = rng.below(2 * padding as u64 + 1) as usize;
            let left = rng.below(2 * padding as u64 + 1) as usize;
            let flip = flip && rng.next_f64() < 0.5;
            let window = Window { h, w, c, top, left, padding, flip };
            let values = match pixels {
                Pixels::U8(p) => {
                    let fill: Vec<f32> = (0..c).map(|k| -normalization.mean[k] / normalization.std[k]).collect();
                    let normalized = normalize_u8(p, normalization);
                    window.crop(&normalized, &fill)
                }
                Pixels::F32(v) => window.crop(&chw_to_hwc(v, h, w, c), &vec![0.0; c]),
            };
            Ok(out(values, h, w))
        }
        (&Augment::RandomResizedCrop { size, scale, ratio, flip }, Pixels::U8(p)) => {
            let (top, left, ch, cw) = resized_crop_params(h, w, scale, ratio, rng);
            let size = size as usize;
            let mut resized = map_rgb_groups(p, c, |rgb| {
                let crop = crop_rgb(rgb, w, top, left, ch, cw);
                resize_bilinear_window(&crop, size as u32, size as u32, 0..size, 0..size).pixels
            });
            if flip && rng.next_f64() < 0.5 {
                flip_hwc(&mut resized, size, size, c);
            }
            Ok(out(normalize_u8(&resized, normalization), size, size))
        }
        (&Augment::ResizeCenterCrop { resize, crop }, Pixels::U8(p)) => {
            let crop = crop as usize;
            let mut values = vec![0f32; crop * crop * c];
            for group in 0..c.div_ceil(3) {
                let channels: Vec<usize> = (group * 3..group * 3 + 3).map(|k| k.min(c - 1)).collect();
                let rgb = gather_rgb(p, c, &channels);
                let params = Preprocess {
                    resize,
                    crop: crop as u32,
                    mean: [0, 1, 2].map(|k| normalization.mean[channels[k]]),
                    std: [0, 1, 2].map(|k| normalization.std[channels[k]]),
                };
                let image = RgbImage8 { width: w as u32, height: h as u32, pixels: rgb };
                let done = preprocess(&image, &params);
                for (k, &channel) in channels.iter().enumerate().take(c - group * 3) {
                    for (dst, src) in values.chunks_exact_mut(c).zip(done.chunks_exact(3)) {
                        dst[channel] = src[k];
                    }
                }
            }
            Ok(out(values, crop, crop))
        }
        (_, Pixels::F32(_)) => Err(DatasetError::Config(
            "resizing augmentations need 8-bit images; float .npz input can only be cropped/flipped or used as is"
                .into(),
        )),
    }
}

/// `ToTensor` + `Normalize` on channels-last bytes, in f32 in torchvision's order.
fn normalize_u8(pixels: &[u8], normalization: &Normalization) -> Vec<f32> {
    let c = normalization.mean.len();
    pixels
        .iter()
        .enumerate()
        .map(|(i, &v)| (f32::from(v) / 255.0 - normalization.mean[i % c]) / normalization.std[i % c])
        .collect()
}

fn chw_to_hwc(values: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for k in 0..c {
        for (p, &v) in values[k * h * w..(k + 1) * h * w].iter().enumerate() {
            out[p * c + k] = v;
        }
    }
    out
}

/// A `RandomCrop` window on the zero-padded image, optionally mirrored afterwards.
struct Window {
    h: usize,
    w: usize,
    c: usize,
    top: usize,
    left: usize,
    padding: usize,
    flip: bool,
}

impl Window {
    /// `out[y][x] = padded[y + top][x' + left]`, `x' = w - 1 - x` when flipped; outside the
    /// image the padded value is `fill` (a zero pixel after normalisation).
    fn crop(&self, image: &[f32], fill: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(image.len());
        for y in 0..self.h {
            let sy = (y + self.top).checked_sub(self.padding).filter(|&v| v < self.h);
            for x in 0..self.w {
                let x = if self.flip { self.w - 1 - x } else { x };
                let sx = (x + self.left).checked_sub(self.padding).filter(|&v| v < self.w);
                match (sy, sx) {
                    (Some(sy), Some(sx)) => {
                        let at = (sy * self.w + sx) * self.c;
                        out.extend_from_slice(&image[at..at + self.c]);
                    }
                    _ => out.extend_from_slice(fill),
                }
            }
        }
        out
    }
}

/// torchvision's `RandomResizedCrop.get_params`: returns (top, left, height, width).
fn resized_crop_params(
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    // torch samples in float32 tensors and hands the values to Python floats.
    let log_ratio = ((ratio.0 as f32).ln(), (ratio.1 as f32).ln());
    for _ in 0..10 {
        let target_area = area * f64::from(rng.uniform(scale.0, scale.1) as f32);
        let log = rng.uniform(f64::from(log_ratio.0), f64::from(log_ratio.1)) as f32;
        let aspect_ratio = f64::from(log.exp());
        let w = (target_area * aspect_ratio).sqrt().round_ties_even() as usize;
        let h = (target_area / aspect_ratio).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return (top, left, h, w);
        }
    }
    // Fallback to a centre crop of the whole image clamped to the ratio range.
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < ratio.0 {
        (((width as f64 / ratio.0).round_ties_even() as usize).max(1), width)
    } else if in_ratio > ratio.1 {
        (height, ((height as f64 * ratio.1).round_ties_even() as usize).max(1))
    } else {
        (height, width)
    };
    ((height - h.min(height)) / 2, (width - w.min(width)) / 2, h.min(height), w.min(width))
}

/// Bytes of `channels` (three indices) of a channels-last image, as interleaved RGB.
fn gather_rgb(pixels: &[u8], c: usize, channels: &[usize]) -> Vec<u8> {
    pixels.chunks_exact(c).flat_map(|px| [px[channels[0]], px[channels[1]], px[channels[2]]]).collect()
}

/// Runs an RGB operation on every group of three channels (the last group repeating its final
/// channel), which is exact for per-channel operations such as Pillow's resampling, and
/// reassembles the `c`-channel result.
fn map_rgb_groups(pixels: &[u8], c: usize, op: impl Fn(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut result: Vec<u8> = Vec::new();
    for group in 0..c.div_ceil(3) {
        let channels: Vec<usize> = (group * 3..group * 3 + 3).map(|k| k.min(c - 1)).collect();
        let done = op(gather_rgb(pixels, c, &channels));
        if result.is_empty() {
            result = vec![0; done.len() / 3 * c];
        }
        for (k, &channel) in channels.iter().enumerate().take(c - group * 3) {
            for (dst, src) in result.chunks_exact_mut(c).zip(done.chunks_exact(3)) {
                dst[channel] = src[k];
            }
        }
    }
    result
}

/// Pillow's `Image.crop((left, top, left + cw, top + ch))` of an RGB image `w` pixels wide.
fn crop_rgb(rgb: Vec<u8>, w: usize, top: usize, left: usize, ch: usize, cw: usize) -> RgbImage8 {
    let pixels = (top..top + ch).flat_map(|y| rgb[(y * w + left) * 3..(y * w + left + cw) * 3].to_vec()).collect();
    RgbImage8 { width: cw as u32, height: ch as u32, pixels }
}

/// Mirrors a channels-last image left to right in place.
fn flip_hwc(pixels: &mut [u8], h: usize, w: usize, c: usize) {
    for row in pixels.chunks_exact_mut(w * c).take(h) {
        for x in 0..w / 2 {
            for k in 0..c {
                row.swap(x * c + k, (w - 1 - x) * c + k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_crop_params_fit_the_image() {
        let mut rng = Rng::new(3);
        for (h, w) in [(10, 10), (300, 20), (20, 300), (1, 1), (224, 500)] {
            for _ in 0..200 {
                let (top, left, ch, cw) = resized_crop_params(h, w, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
                assert!(ch > 0 && cw > 0 && top + ch <= h && left + cw <= w, "{h}x{w}: {top} {left} {ch} {cw}");
            }
        }
    }

    #[test]
    fn fallback_is_a_centre_crop_in_the_ratio_range() {
        // scale > 1 never fits, so get_params falls back.
        let mut rng = Rng::new(0);
        assert_eq!(resized_crop_params(10, 100, (2.0, 3.0), (0.75, 4.0 / 3.0), &mut rng), (0, 43, 10, 13));
        assert_eq!(resized_crop_params(100, 10, (2.0, 3.0), (0.75, 4.0 / 3.0), &mut rng), (43, 0, 13, 10));
        assert_eq!(resized_crop_params(30, 32, (2.0, 3.0), (0.75, 4.0 / 3.0), &mut rng), (0, 0, 30, 32));
    }
}
