//! `.npz` archives in the layout of Keras' `mnist.npz`: members `x_train`, `y_train` and
//! optionally `x_test`, `y_test`, stored or deflated.
//!
//! * `x` as float32 (or float64) `[N, C, H, W]` is taken as already normalised and used as is.
//! * `x` as uint8 `[N, H, W]` (one channel) or `[N, H, W, C]` is scaled to 0..1 and normalised
//!   with the per-channel mean and (population) standard deviation of `x_train`; for the
//!   Keras MNIST file that gives the usual 0.1307 / 0.3081.
//! * `y` is any integer type, `[N]` or `[N, 1]`, with non-negative labels; the number of
//!   classes is one more than the largest label of either split.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{ArrayDataset, DatasetError, Normalization};

/// The splits of an `.npz` archive.
#[derive(Clone, Debug)]
pub struct NpzSplits {
    pub train: ArrayDataset,
    /// Present when the archive has `x_test` and `y_test`.
    pub test: Option<ArrayDataset>,
}

/// Reads an `.npz` archive (see the module documentation for the accepted layouts).
pub fn read_npz(path: &Path) -> Result<NpzSplits, DatasetError> {
    let file = File::open(path).map_err(|e| DatasetError::read(path, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| DatasetError::invalid(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let mut member = |name: &str| read_member(&mut archive, path, name);
    let x_train = member("x_train")?.ok_or_else(|| missing(path, "x_train"))?;
    let y_train = member("y_train")?.ok_or_else(|| missing(path, "y_train"))?;
    let test = match (member("x_test")?, member("y_test")?) {
        (Some(x), Some(y)) => Some((x, y)),
        (None, None) => None,
        (Some(_), None) => return Err(missing(path, "y_test")),
        (None, Some(_)) => return Err(missing(path, "x_test")),
    };

    let train_images = Images::parse(path, "x_train", &x_train)?;
    let train_labels = labels(path, "y_train", &y_train, train_images.n)?;
    let test = match &test {
        Some((x, y)) => {
            let images = Images::parse(path, "x_test", x)?;
            if images.kind() != train_images.kind() {
                let detail = format!("x_test is {} but x_train is {}", images.kind(), train_images.kind());
                return Err(DatasetError::invalid(path, detail));
            }
            let labels = labels(path, "y_test", y, images.n)?;
            Some((images, labels))
        }
        None => None,
    };
    let max_label = train_labels.iter().chain(test.iter().flat_map(|(_, l)| l.iter())).max();
    let num_classes = max_label.map_or(1, |m| m + 1);
    let normalization = train_images.statistics();

    let train = train_images.into_dataset(train_labels, num_classes, &normalization)?;
    let test = match test {
        Some((images, labels)) => Some(images.into_dataset(labels, num_classes, &normalization)?),
        None => None,
    };
    Ok(NpzSplits { train, test })
}

fn missing(path: &Path, name: &str) -> DatasetError {
    DatasetError::invalid(path, format!("no {name} array; expected x_train, y_train and optionally x_test, y_test"))
}

fn read_member(archive: &mut zip::ZipArchive<File>, path: &Path, name: &str) -> Result<Option<Npy>, DatasetError> {
    let file_name = format!("{name}.npy");
    let index = match archive.index_for_name(&file_name).or_else(|| archive.index_for_name(name)) {
        Some(index) => index,
        None => return Ok(None),
    };
    let bad = |e: &dyn std::fmt::Display| DatasetError::invalid(path, format!("cannot read member {file_name}: {e}"));
    let mut entry = archive.by_index(index).map_err(|e| bad(&e))?;
    let mut bytes = Vec::with_capacity(entry.size().min(1 << 32) as usize);
    entry.read_to_end(&mut bytes).map_err(|e| bad(&e))?;
    Npy::parse(&bytes).map(Some).map_err(|detail| DatasetError::invalid(path, format!("{name}: {detail}")))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    Int { bytes: usize, signed: bool },
    Float { bytes: usize },
}

/// A parsed `.npy` member: dtype, shape and the raw little-endian data.
struct Npy {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Npy {
    fn parse(bytes: &[u8]) -> Result<Npy, String> {
        if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
            return Err("not a .npy array (missing the \\x93NUMPY magic)".into());
        }
        let (header_len, start) = match bytes[6] {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
            v => return Err(format!("unsupported .npy format version {v}")),
        };
        let header = bytes.get(start..start + header_len).ok_or("the .npy header is truncated")?;
        let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
        let descr = value_after(header, "descr")
            .and_then(|v| v.strip_prefix('\'')?.split('\'').next())
            .ok_or_else(|| format!("no dtype in header {header:?}"))?;
        if value_after(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into());
        }
        let shape = value_after(header, "shape")
            .and_then(|v| v.strip_prefix('(')?.split(')').next())
            .ok_or_else(|| format!("no shape in header {header:?}"))?;
        let shape = shape
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape entry {s:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let dtype = parse_descr(descr)?;
        let item = match dtype {
            Dtype::Int { bytes, .. } | Dtype::Float { bytes } => bytes,
        };
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).and_then(|c| c.checked_mul(item));
        let data = &bytes[start + header_len..];
        if count != Some(data.len()) {
            let needed = count.map_or_else(|| "more than 2^64".to_string(), |c| c.to_string());
            return Err(format!("shape {shape:?} of {descr} needs {needed} bytes but {} follow", data.len()));
        }
        Ok(Npy { dtype, shape, data: data.to_vec() })
    }

    fn describe(&self) -> String {
        let dtype = match self.dtype {
            Dtype::Int { bytes, signed: true } => format!("int{}", bytes * 8),
            Dtype::Int { bytes, signed: false } => format!("uint{}", bytes * 8),
            Dtype::Float { bytes } => format!("float{}", bytes * 8),
        };
        format!("{dtype} {:?}", self.shape)
    }
}

/// The text after `'key':` in a header dict, trimmed at the start.
fn value_after<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("'{key}':");
    let at = header.find(&pattern)?;
    Some(header[at + pattern.len()..].trim_start())
}

fn parse_descr(descr: &str) -> Result<Dtype, String> {
    let (order, rest) = descr.split_at(descr.len().min(1));
    let (kind, size) = rest.split_at(rest.len().min(1));
    let bytes: usize = size.parse().map_err(|_| format!("unsupported dtype {descr:?}"))?;
    if order == ">" && bytes > 1 {
        return Err(format!("big-endian dtype {descr:?} is not supported; save little-endian data"));
    }
    match (kind, bytes) {
        ("u", 1 | 2 | 4 | 8) => Ok(Dtype::Int { bytes, signed: false }),
        ("i", 1 | 2 | 4 | 8) => Ok(Dtype::Int { bytes, signed: true }),
        ("f", 4 | 8) => Ok(Dtype::Float { bytes }),
        _ => Err(format!("unsupported dtype {descr:?}")),
    }
}

/// Labels `[n]` or `[n, 1]` of any integer type, refused when negative or when their count
/// differs from the number of images.
fn labels(path: &Path, name: &str, y: &Npy, n: usize) -> Result<Vec<usize>, DatasetError> {
    let Dtype::Int { bytes, signed } = y.dtype else {
        let detail = format!("{name} is {}; labels must be integers (int64, int32 or uint8)", y.describe());
        return Err(DatasetError::invalid(path, detail));
    };
    let count = match y.shape[..] {
        [count] | [count, 1] => count,
        _ => return Err(DatasetError::invalid(path, format!("{name} is {}; expected shape [N]", y.describe()))),
    };
    if count != n {
        let x = name.replace('y', "x");
        return Err(DatasetError::invalid(path, format!("{name} has {count} labels but {x} has {n} images")));
    }
    let mut out = Vec::with_capacity(n);
    for (i, raw) in y.data.chunks_exact(bytes).enumerate() {
        let mut word = [0u8; 8];
        word[..bytes].copy_from_slice(raw);
        let unsigned = u64::from_le_bytes(word);
        let negative = signed && raw[bytes - 1] & 0x80 != 0;
        match usize::try_from(unsigned) {
            Ok(label) if !negative && label <= u32::MAX as usize => out.push(label),
            _ => {
                let shown = if negative { "a negative value".to_string() } else { unsigned.to_string() };
                let detail = format!("label {i} of {name} is {shown}; labels must be class indices 0, 1, 2, ...");
                return Err(DatasetError::invalid(path, detail));
            }
        }
    }
    Ok(out)
}

/// Images of one split in a layout the loader accepts.
struct Images {
    n: usize,
    height: usize,
    width: usize,
    channels: usize,
    data: ImageData,
}

enum ImageData {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl Images {
    fn parse(path: &Path, name: &str, x: &Npy) -> Result<Images, DatasetError> {
        let layout_error = || {
            let detail = format!(
                "{name} is {}; expected float32 [N, C, H, W] (already normalised), uint8 [N, H, W] or uint8 [N, H, W, C]",
                x.describe()
            );
            DatasetError::invalid(path, detail)
        };
        match (x.dtype, &x.shape[..]) {
            (Dtype::Int { bytes: 1, signed: false }, &[n, h, w]) => {
                Ok(Images { n, height: h, width: w, channels: 1, data: ImageData::U8(x.data.clone()) })
            }
            (Dtype::Int { bytes: 1, signed: false }, &[n, h, w, c]) => {
                Ok(Images { n, height: h, width: w, channels: c, data: ImageData::U8(x.data.clone()) })
            }
            (Dtype::Float { bytes }, &[n, c, h, w]) => {
                let values = if bytes == 4 {
                    x.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                } else {
                    x.data
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                        .collect()
                };
                Ok(Images { n, height: h, width: w, channels: c, data: ImageData::F32(values) })
            }
            _ => Err(layout_error()),
        }
    }

    fn kind(&self) -> String {
        let dtype = if matches!(self.data, ImageData::U8(_)) { "uint8" } else { "float" };
        format!("{dtype} images of {}x{}x{}", self.height, self.width, self.channels)
    }

    /// Per-channel mean and population standard deviation of the pixels scaled to 0..1
    /// (identity for float input, which is used as is).
    fn statistics(&self) -> Normalization {
        let ImageData::U8(pixels) = &self.data else {
            return Normalization::identity(self.channels);
        };
        let c = self.channels.max(1);
        let mut histograms = vec![[0u64; 256]; c];
        for (i, &v) in pixels.iter().enumerate() {
            histograms[i % c][usize::from(v)] += 1;
        }
        let (mut mean, mut std) = (Vec::with_capacity(c), Vec::with_capacity(c));
        for histogram in &histograms {
            let count: u64 = histogram.iter().sum();
            let (mut sum, mut sum_sq) = (0f64, 0f64);
            for (v, &k) in histogram.iter().enumerate() {
                let x = v as f64 / 255.0;
                sum += x * k as f64;
                sum_sq += x * x * k as f64;
            }
            let m = if count > 0 { sum / count as f64 } else { 0.0 };
            let var = if count > 0 { (sum_sq / count as f64 - m * m).max(0.0) } else { 0.0 };
            let s = var.sqrt();
            mean.push(m as f32);
            // A constant channel would divide by zero; leave it unscaled instead.
            std.push(if s > 0.0 { s as f32 } else { 1.0 });
        }
        Normalization { mean, std }
    }

    fn into_dataset(
        self,
        labels: Vec<usize>,
        num_classes: usize,
        normalization: &Normalization,
    ) -> Result<ArrayDataset, DatasetError> {
        let dims = [self.n, self.height, self.width, self.channels];
        match self.data {
            ImageData::U8(pixels) => {
                ArrayDataset::from_u8_hwc(pixels, dims, labels, num_classes, normalization.clone())
            }
            ImageData::F32(values) => ArrayDataset::from_f32_chw(values, dims, labels, num_classes),
        }
    }
}
