//! IDX files (MNIST, Fashion-MNIST), plain or gzipped.
//!
//! Format: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then
//! each dimension as a big-endian u32, then the data in row-major order. Images are
//! `[n, rows, cols]`, labels `[n]`.

use std::io::Read;
use std::path::Path;

use super::{check_labels, ArrayDataset, DatasetError, Normalization};

/// Fashion-MNIST class names (label order), as torchvision's `FashionMNIST.classes`.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Reads a whole file, gunzipping it when it starts with the gzip magic (whatever its name).
pub(crate) fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let bytes = std::fs::read(path).map_err(|e| DatasetError::read(path, e))?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .read_to_end(&mut out)
        .map_err(|e| DatasetError::invalid(path, format!("corrupt gzip data ({e}); download the file again")))?;
    Ok(out)
}

/// Reads an IDX file of unsigned bytes and returns its dimensions and data.
///
/// Other element types, and files whose data is shorter or longer than the dimensions say,
/// are refused with an error naming the file.
pub fn read_idx_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DatasetError> {
    let mut bytes = read_maybe_gzipped(path)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(DatasetError::invalid(path, "not an IDX file (it must start with two zero bytes)"));
    }
    if bytes[2] != 0x08 {
        let kind = bytes[2];
        return Err(DatasetError::invalid(path, format!("IDX element type 0x{kind:02x} is not unsigned byte (0x08)")));
    }
    let ndim = usize::from(bytes[3]);
    let header_len = 4 + 4 * ndim;
    let header = bytes
        .get(4..header_len)
        .ok_or_else(|| DatasetError::invalid(path, "file ends inside the IDX header (truncated)"))?;
    let dims: Vec<usize> =
        header.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let data_len = bytes.len() - header_len;
    if count != Some(data_len) {
        let needed = count.map_or_else(|| "more than 2^64".to_string(), |c| c.to_string());
        let detail = format!("the header says {dims:?} ({needed} bytes) but {data_len} bytes of data follow");
        return Err(DatasetError::invalid(path, format!("{detail}; the file is truncated or not IDX")));
    }
    bytes.drain(..header_len);
    Ok((dims, bytes))
}

/// Reads an images file `[n, rows, cols]` and a labels file `[n]` into a one-channel data
/// set whose labels must be below `num_classes`.
pub fn read_idx_pair(
    images: &Path,
    labels: &Path,
    num_classes: usize,
    normalization: Normalization,
) -> Result<ArrayDataset, DatasetError> {
    let (image_dims, pixels) = read_idx_u8(images)?;
    let [n, rows, cols] = image_dims[..] else {
        return Err(DatasetError::invalid(
            images,
            format!("expected 3 dimensions [n, rows, cols], found {image_dims:?}"),
        ));
    };
    let (label_dims, label_bytes) = read_idx_u8(labels)?;
    if label_dims.len() != 1 {
        return Err(DatasetError::invalid(labels, format!("expected 1 dimension [n], found {label_dims:?}")));
    }
    if label_bytes.len() != n {
        let detail = format!("{} labels but {} holds {n} images", label_bytes.len(), images.display());
        return Err(DatasetError::invalid(labels, detail));
    }
    let labels_vec: Vec<usize> = label_bytes.iter().map(|&l| usize::from(l)).collect();
    check_labels(labels, &labels_vec, num_classes)?;
    ArrayDataset::from_u8_hwc(pixels, [n, rows, cols, 1], labels_vec, num_classes, normalization)
}
