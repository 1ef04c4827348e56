//! Training data sets: a [`Dataset`] trait giving raw samples plus readers for MNIST /
//! Fashion-MNIST (IDX), CIFAR-10/100 (binary batches), ImageFolder trees and Keras-style
//! `.npz` archives, and a seeded held-out split for data sets without a test set.
//!
//! Samples are raw: 8-bit pixels (channels-last) that the [`augment`](crate::augment) step
//! crops, flips, scales to 0..1 and normalises with the data set's [`Normalization`], or, for
//! float `.npz` input, values that are already normalised (channels-first).

mod cifar;
mod error;
mod idx;
mod image_folder;
mod npz;
mod open;
mod split;

pub use cifar::{read_cifar10, read_cifar100, CIFAR100_MEAN, CIFAR100_STD, CIFAR10_CLASSES};
pub use error::DatasetError;
pub use idx::{read_idx_pair, read_idx_u8, FASHION_MNIST_CLASSES};
pub use image_folder::ImageFolder;
pub use npz::{read_npz, NpzSplits};
pub use open::{open_dataset, DatasetKind, DatasetSplits, FASHION_MNIST_DIR, MNIST_DIR};
pub use split::{random_subset, split_holdout, Holdout, Subset};

use std::path::Path;

/// Per-channel mean and standard deviation subtracted from / divided into pixels scaled to
/// 0..1, as torchvision's `Normalize(mean, std)` after `ToTensor()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    pub fn new(mean: &[f32], std: &[f32]) -> Self {
        Normalization { mean: mean.to_vec(), std: std.to_vec() }
    }
    /// MNIST: mean 0.1307, std 0.3081.
    pub fn mnist() -> Self {
        Self::new(&[0.1307], &[0.3081])
    }
    /// Fashion-MNIST: mean 0.2860, std 0.3530.
    pub fn fashion_mnist() -> Self {
        Self::new(&[0.2860], &[0.3530])
    }
    /// CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).
    pub fn cifar10() -> Self {
        Self::new(&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616])
    }
    /// CIFAR-100: the commonly used training-set statistics.
    pub fn cifar100() -> Self {
        Self::new(&CIFAR100_MEAN, &CIFAR100_STD)
    }
    /// ImageNet ([`IMAGENET_MEAN`](crate::IMAGENET_MEAN), [`IMAGENET_STD`](crate::IMAGENET_STD)).
    pub fn imagenet() -> Self {
        Self::new(&crate::IMAGENET_MEAN, &crate::IMAGENET_STD)
    }
    /// Mean 0, std 1 for every channel (scaling to 0..1 only).
    pub fn identity(channels: usize) -> Self {
        Normalization { mean: vec![0.0; channels], std: vec![1.0; channels] }
    }
}

/// The pixels of one sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// 8-bit values, channels-last: element `(y * width + x) * channels + c`.
    U8(Vec<u8>),
    /// Already normalised floats, channels-first: element `(c * height + y) * width + x`
    /// (float `.npz` input, used as is).
    F32(Vec<f32>),
}

/// One raw sample and its class.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub pixels: Pixels,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub label: usize,
}

/// A random-access, thread-safe collection of labelled samples.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True if there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes; every label is below it.
    fn num_classes(&self) -> usize;
    /// Channels of every sample (1 for grey, 3 for RGB).
    fn channels(&self) -> usize;
    /// Mean/std applied to 8-bit samples after scaling to 0..1.
    fn normalization(&self) -> &Normalization;
    /// Sample `index` (`0..len()`).
    fn get(&self, index: usize) -> Result<Sample, DatasetError>;
    /// Human-readable class names, index = label, when the data set has them.
    fn class_names(&self) -> Option<&[String]> {
        None
    }
}

pub(crate) fn index_error(index: usize, len: usize) -> DatasetError {
    DatasetError::Config(format!("sample index {index} is out of range for a data set of {len} samples"))
}

/// Refuses labels at or above `num_classes`, naming the file and the first offending sample.
pub(crate) fn check_labels(path: &Path, labels: &[usize], num_classes: usize) -> Result<(), DatasetError> {
    match labels.iter().position(|&l| l >= num_classes) {
        Some(i) => Err(DatasetError::invalid(
            path,
            format!("label {} of sample {i} is out of range; expected 0..{num_classes}", labels[i]),
        )),
        None => Ok(()),
    }
}

#[derive(Clone, Debug)]
enum Storage {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// Fixed-size samples held in memory (MNIST, CIFAR, `.npz`).
#[derive(Clone, Debug)]
pub struct ArrayDataset {
    storage: Storage,
    /// `[n, height, width, channels]`.
    dims: [usize; 4],
    labels: Vec<usize>,
    num_classes: usize,
    class_names: Option<Vec<String>>,
    normalization: Normalization,
}

impl ArrayDataset {
    /// 8-bit samples stored channels-last, `dims = [n, height, width, channels]`.
    pub fn from_u8_hwc(
        pixels: Vec<u8>,
        dims: [usize; 4],
        labels: Vec<usize>,
        num_classes: usize,
        normalization: Normalization,
    ) -> Result<Self, DatasetError> {
        Self::new(pixels.len(), Storage::U8(pixels), dims, labels, num_classes, normalization)
    }

    /// Normalised float samples stored channels-first, `dims = [n, height, width, channels]`
    /// (the storage order is `[n, channels, height, width]`).
    pub fn from_f32_chw(
        values: Vec<f32>,
        dims: [usize; 4],
        labels: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self, DatasetError> {
        let normalization = Normalization::identity(dims[3]);
        Self::new(values.len(), Storage::F32(values), dims, labels, num_classes, normalization)
    }

    fn new(
        values: usize,
        storage: Storage,
        dims: [usize; 4],
        labels: Vec<usize>,
        num_classes: usize,
        normalization: Normalization,
    ) -> Result<Self, DatasetError> {
        let [n, h, w, c] = dims;
        let expected = n.checked_mul(h).and_then(|v| v.checked_mul(w)).and_then(|v| v.checked_mul(c));
        if expected != Some(values) {
            return Err(DatasetError::Config(format!("{values} pixel values do not fill {n} samples of {h}x{w}x{c}")));
        }
        if labels.len() != n {
            return Err(DatasetError::Config(format!("{} labels for {n} samples", labels.len())));
        }
        if let Some(i) = labels.iter().position(|&l| l >= num_classes) {
            let label = labels[i];
            return Err(DatasetError::Config(format!("label {label} of sample {i} is not below {num_classes}")));
        }
        if normalization.mean.len() != c || normalization.std.len() != c {
            return Err(DatasetError::Config(format!("normalisation does not have {c} channels")));
        }
        Ok(ArrayDataset { storage, dims, labels, num_classes, class_names: None, normalization })
    }

    /// Attaches class names (one per class).
    pub fn with_class_names(mut self, names: Vec<String>) -> Self {
        if names.len() == self.num_classes {
            self.class_names = Some(names);
        }
        self
    }

    /// Replaces the normalisation (one value per channel).
    pub fn with_normalization(mut self, normalization: Normalization) -> Result<Self, DatasetError> {
        let c = self.dims[3];
        if normalization.mean.len() != c || normalization.std.len() != c {
            return Err(DatasetError::Config(format!("normalisation does not have {c} channels")));
        }
        self.normalization = normalization;
        Ok(self)
    }

    /// `[n, height, width, channels]`.
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// All labels, in sample order.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }
}

impl Dataset for ArrayDataset {
    fn len(&self) -> usize {
        self.dims[0]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn channels(&self) -> usize {
        self.dims[3]
    }
    fn normalization(&self) -> &Normalization {
        &self.normalization
    }
    fn get(&self, index: usize) -> Result<Sample, DatasetError> {
        let [n, height, width, channels] = self.dims;
        if index >= n {
            return Err(index_error(index, n));
        }
        let size = height * width * channels;
        let range = index * size..(index + 1) * size;
        let pixels = match &self.storage {
            Storage::U8(v) => Pixels::U8(v[range].to_vec()),
            Storage::F32(v) => Pixels::F32(v[range].to_vec()),
        };
        Ok(Sample { pixels, height, width, channels, label: self.labels[index] })
    }
    fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }
}
