//! CIFAR-10 and CIFAR-100 in their binary distributions (`cifar-10-batches-bin`,
//! `cifar-100-binary`).
//!
//! Each record is the label byte(s) followed by a 32x32 image as three 1024-byte planes (red,
//! green, blue), rows top to bottom. CIFAR-10 records have one label byte; CIFAR-100 records
//! have the coarse then the fine label, and the fine label is used (as torchvision does).

use std::path::{Path, PathBuf};

use super::{check_labels, ArrayDataset, DatasetError, Normalization};

/// CIFAR-10 class names in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
/// CIFAR-100 training-set channel means (the values commonly used for CIFAR-100 training).
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// CIFAR-100 training-set channel standard deviations.
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;

/// Reads CIFAR-10 batch files (e.g. `data_batch_1.bin` ..= `data_batch_5.bin`, or
/// `test_batch.bin`) in the given order.
pub fn read_cifar10(files: &[PathBuf]) -> Result<ArrayDataset, DatasetError> {
    let names = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    Ok(read_cifar(files, 1, 10, Normalization::cifar10())?.with_class_names(names))
}

/// Reads CIFAR-100 files (`train.bin` or `test.bin`) with their fine labels. When the
/// directory of the first file holds `fine_label_names.txt`, its lines become the class names.
pub fn read_cifar100(files: &[PathBuf]) -> Result<ArrayDataset, DatasetError> {
    let dataset = read_cifar(files, 2, 100, Normalization::cifar100())?;
    let names_file = files.first().and_then(|f| f.parent()).map(|d| d.join("fine_label_names.txt"));
    match names_file.and_then(|f| std::fs::read_to_string(f).ok()) {
        Some(text) => {
            let names = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            Ok(dataset.with_class_names(names))
        }
        None => Ok(dataset),
    }
}

fn read_cifar(
    files: &[PathBuf],
    label_bytes: usize,
    num_classes: usize,
    normalization: Normalization,
) -> Result<ArrayDataset, DatasetError> {
    let record = label_bytes + 3 * PLANE;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| DatasetError::read(path, e))?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            let detail = format!(
                "{} bytes is not a whole number of {record}-byte CIFAR records; the file is truncated \
                 or not a CIFAR-{num_classes} binary batch",
                bytes.len()
            );
            return Err(DatasetError::invalid(path, detail));
        }
        let first = labels.len();
        pixels.reserve(bytes.len() / record * 3 * PLANE);
        for rec in bytes.chunks_exact(record) {
            labels.push(usize::from(rec[label_bytes - 1]));
            let planes = &rec[label_bytes..];
            for i in 0..PLANE {
                pixels.extend_from_slice(&[planes[i], planes[PLANE + i], planes[2 * PLANE + i]]);
            }
        }
        check_file_labels(path, &labels[first..], num_classes)?;
    }
    let n = labels.len();
    ArrayDataset::from_u8_hwc(pixels, [n, SIDE, SIDE, 3], labels, num_classes, normalization)
}

fn check_file_labels(path: &Path, labels: &[usize], num_classes: usize) -> Result<(), DatasetError> {
    check_labels(path, labels, num_classes).map_err(|e| match e {
        DatasetError::Invalid { path, detail } => {
            DatasetError::Invalid { path, detail: format!("{detail} (is this a CIFAR-{num_classes} file?)") }
        }
        other => other,
    })
}
