//! How `classify` and `embed` turn an image into model input: ImageNet's transform for the
//! torchvision nets, or, with `--dataset`, the transform of the small data set a net was
//! trained on (Fashion-MNIST/MNIST: 28x28 grey; CIFAR-10/100: 32x32 RGB) with its class names.

use resnet_data::{preprocess, DatasetKind, Normalization, Preprocess, RgbImage8};

/// The data sets whose preprocessing `--dataset` selects.
pub const DATASET_NAMES: &str = "fashion-mnist, mnist, cifar10, cifar100";

/// What a net trained by `resnet train --dataset NAME` was fed: image side, channels,
/// normalisation, and the class names in label order (`None` where the data set ships them
/// only in its files: CIFAR-100).
#[derive(Clone, Debug)]
pub struct DatasetPreset {
    pub kind: DatasetKind,
    pub side: u32,
    pub channels: usize,
    pub normalization: Normalization,
    pub num_classes: usize,
    pub class_names: Option<Vec<String>>,
}

impl DatasetPreset {
    /// The preset for `--dataset NAME`.
    pub fn parse(name: &str) -> anyhow::Result<DatasetPreset> {
        let kind: DatasetKind = name
            .parse()
            .map_err(|_| anyhow::anyhow!("--dataset {name}: unknown data set; choose one of {DATASET_NAMES}"))?;
        let names = |n: &[&str]| -> Option<Vec<String>> { Some(n.iter().map(|s| s.to_string()).collect()) };
        let (side, channels, normalization, num_classes, class_names) = match kind {
            DatasetKind::FashionMnist => {
                (28, 1, Normalization::fashion_mnist(), 10, names(&resnet_data::dataset::FASHION_MNIST_CLASSES))
            }
            DatasetKind::Mnist => (28, 1, Normalization::mnist(), 10, Some((0..10).map(|d| d.to_string()).collect())),
            DatasetKind::Cifar10 => {
                (32, 3, Normalization::cifar10(), 10, names(&resnet_data::dataset::CIFAR10_CLASSES))
            }
            DatasetKind::Cifar100 => (32, 3, Normalization::cifar100(), 100, None),
            DatasetKind::ImageFolder | DatasetKind::Npz => anyhow::bail!(
                "--dataset {name}: has no fixed image size or normalisation; choose one of {DATASET_NAMES}, or drop \
                 --dataset for ImageNet preprocessing (what `resnet train` uses for image folders)"
            ),
        };
        Ok(DatasetPreset { kind, side, channels, normalization, num_classes, class_names })
    }
}

/// The transform from a decoded image to normalised channels-last values: resize the shorter
/// side to `resize` (Pillow's antialiased bilinear; skipped when it already has that size),
/// centre crop `crop` x `crop`, scale to 0..1, normalise. With one channel the image is first
/// converted to grey as Pillow's `convert("L")` does.
#[derive(Clone, Debug, PartialEq)]
pub struct InputPrep {
    pub resize: u32,
    pub crop: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    pub normalization: Normalization,
}

impl InputPrep {
    /// torchvision's ImageNet evaluation transform with the given resize (crop 224).
    pub fn imagenet(resize: u32) -> InputPrep {
        let p = Preprocess::imagenet_with_resize(resize);
        InputPrep { resize: p.resize, crop: p.crop, channels: 3, normalization: Normalization::imagenet() }
    }

    /// The data set's own size: a 28x28 Fashion-MNIST image passes unresized, a photo has
    /// its shorter side resized to 28 and the middle 28x28 kept.
    pub fn for_dataset(preset: &DatasetPreset) -> InputPrep {
        InputPrep {
            resize: preset.side,
            crop: preset.side,
            channels: preset.channels,
            normalization: preset.normalization.clone(),
        }
    }

    /// `crop * crop * channels` values, channels-last.
    pub fn apply(&self, image: &RgbImage8) -> Vec<f32> {
        let m = &self.normalization;
        if self.channels == 1 {
            // Grey replicated into R, G and B resizes exactly like a one-channel image.
            let grey = to_grey(image);
            let pre = Preprocess { resize: self.resize, crop: self.crop, mean: [m.mean[0]; 3], std: [m.std[0]; 3] };
            preprocess(&grey, &pre).into_iter().step_by(3).collect()
        } else {
            let pre = Preprocess {
                resize: self.resize,
                crop: self.crop,
                mean: [m.mean[0], m.mean[1], m.mean[2]],
                std: [m.std[0], m.std[1], m.std[2]],
            };
            preprocess(image, &pre)
        }
    }
}

/// Pillow's `convert("L")` of an RGB image: ITU-R 601-2 luma, L = R*299/1000 + G*587/1000 +
/// B*114/1000, computed as Pillow does in 16-bit fixed point with rounding
/// (`(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`). Returned with L in all three channels.
pub fn to_grey(image: &RgbImage8) -> RgbImage8 {
    let mut pixels = Vec::with_capacity(image.pixels.len());
    for p in image.pixels.chunks_exact(3) {
        let (r, g, b) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]));
        let l = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8;
        pixels.extend_from_slice(&[l, l, l]);
    }
    RgbImage8 { width: image.width, height: image.height, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_equals_pillow_convert_l() {
        // Pillow 13: Image.new("RGB", ...).putdata(px).convert("L").
        let px: [[u8; 3]; 10] = [
            [0, 0, 0],
            [255, 255, 255],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [10, 200, 33],
            [128, 64, 250],
            [1, 2, 3],
            [77, 77, 77],
            [254, 1, 128],
        ];
        let expected = [0u8, 255, 76, 150, 29, 124, 104, 2, 77, 91];
        let image = RgbImage8 { width: 10, height: 1, pixels: px.concat() };
        let grey = to_grey(&image);
        let l: Vec<u8> = grey.pixels.chunks_exact(3).map(|p| p[0]).collect();
        assert_eq!(l, expected);
        assert!(grey.pixels.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }

    #[test]
    fn fashion_mnist_sized_grey_image_is_only_scaled_and_normalised() {
        let pixels: Vec<u8> = (0..28 * 28).flat_map(|i| [(i % 256) as u8; 3]).collect();
        let image = RgbImage8 { width: 28, height: 28, pixels };
        let prep = InputPrep::for_dataset(&DatasetPreset::parse("fashion-mnist").unwrap());
        let x = prep.apply(&image);
        assert_eq!(x.len(), 28 * 28);
        for (i, v) in x.iter().enumerate() {
            let expected = ((i % 256) as f32 / 255.0 - 0.2860) / 0.3530;
            assert_eq!(*v, expected, "pixel {i}");
        }
    }

    #[test]
    fn larger_images_become_the_data_set_size() {
        let image = RgbImage8 { width: 64, height: 48, pixels: vec![200; 64 * 48 * 3] };
        let cifar = InputPrep::for_dataset(&DatasetPreset::parse("cifar10").unwrap());
        assert_eq!(cifar.apply(&image).len(), 32 * 32 * 3);
        let mnist = InputPrep::for_dataset(&DatasetPreset::parse("MNIST").unwrap());
        let x = mnist.apply(&image);
        assert_eq!(x.len(), 28 * 28);
        let expected = (200.0 / 255.0 - 0.1307f32) / 0.3081;
        assert!(x.iter().all(|v| (v - expected).abs() < 1e-6));
    }

    #[test]
    fn presets_have_their_data_sets_shape_and_names() {
        let f = DatasetPreset::parse("fashion-mnist").unwrap();
        assert_eq!((f.side, f.channels, f.num_classes), (28, 1, 10));
        assert_eq!(f.class_names.as_ref().unwrap()[6], "Shirt");
        let c = DatasetPreset::parse("cifar10").unwrap();
        assert_eq!((c.side, c.channels), (32, 3));
        assert_eq!(c.class_names.as_ref().unwrap()[0], "airplane");
        assert!(DatasetPreset::parse("cifar100").unwrap().class_names.is_none());
        let err = DatasetPreset::parse("svhn").unwrap_err().to_string();
        assert!(err.contains("--dataset svhn") && err.contains("fashion-mnist"), "{err}");
        assert!(DatasetPreset::parse("npz").is_err());
    }
}
