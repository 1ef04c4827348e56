//! Image decoding and preprocessing that reproduce what a PyTorch/torchvision ImageNet
//! evaluation pipeline feeds to a network:
//!
//! ```text
//! img = PIL.Image.open(path).convert("RGB")
//! x = Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])(img)
//! ```
//!
//! * [`decode_image`] / [`decode_image_bytes`] decode JPEG, PNG, WebP, BMP and GIF (first frame)
//!   into 8-bit RGB exactly as Pillow's `convert("RGB")` does (see [`decode_image_bytes`] for the
//!   per-mode rules), refusing images whose header claims more than a pixel budget.
//! * [`preprocess`] resizes with a port of Pillow's antialiasing bilinear resampler, centre
//!   crops, and normalises, returning channels-last (HWC) `f32` data.
//! * [`read_npy_f32`] / [`write_npy_f32`] exchange tensors with NumPy.
//!
//! This crate deliberately does not depend on the inference crate; it only produces pixels.

pub mod augment;
pub mod dataset;
mod decode;
mod error;
pub mod loader;
mod npy;
mod preprocess;
mod resample;
pub mod rng;

use std::path::Path;

pub use decode::{decode_image, decode_image_bytes};
pub use error::DataError;
pub use npy::{read_npy_f32, write_npy_f32};
pub use preprocess::{preprocess, Preprocess, IMAGENET_MEAN, IMAGENET_STD};

pub use augment::Augment;
pub use dataset::{
    open_dataset, random_subset, split_holdout, ArrayDataset, Dataset, DatasetError, DatasetKind, DatasetSplits,
    ImageFolder, Normalization, Pixels, Sample, Subset,
};
pub use loader::{Batch, Batches, Loader, LoaderConfig};
pub use rng::Rng;

/// Default pixel budget for decoding: Pillow's `Image.MAX_IMAGE_PIXELS` (the size above which
/// it warns about decompression bombs), about 179 megapixels. An RGB image this size needs
/// roughly 540 MB once decoded.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// File extensions (lower case) that [`is_image_path`] accepts.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// An 8-bit RGB image, pixels stored row by row as interleaved `R, G, B` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage8 {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

/// True if the path's extension names a supported image format (case-insensitive).
///
/// Meant for walking directories; decoding itself looks at the file content, not the name.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|known| ext.eq_ignore_ascii_case(known)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_are_recognised_by_extension() {
        for yes in ["a.jpg", "b.JPEG", "dir/c.Png", "d.webp", "e.BMP", "f.gif"] {
            assert!(is_image_path(Path::new(yes)), "{yes}");
        }
        for no in ["a.txt", "b", "c.tiff", ".jpg", "d.jpg.npy", "e.svg"] {
            assert!(!is_image_path(Path::new(no)), "{no}");
        }
    }
}
