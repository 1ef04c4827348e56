//! Minimal NumPy `.npy` reading and writing for float tensors.
//!
//! Format (numpy.lib.format): the magic `\x93NUMPY`, a major/minor version, a little-endian
//! header length (u16 in version 1, u32 in versions 2 and 3), a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 224, 224), }`, then the raw data.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::DataError;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a C-ordered little-endian float32 (`<f4`) or float64 (`<f8`, converted to f32) array.
///
/// Returns the shape and the values in row-major order. Other dtypes, big-endian data,
/// Fortran order and files whose data is shorter or longer than the shape says are refused
/// with an error naming the file.
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), DataError> {
    let bytes = fs::read(path).map_err(|source| DataError::Read { path: path.to_path_buf(), source })?;
    let invalid = |detail: String| DataError::InvalidNpy { path: path.to_path_buf(), detail };

    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err(invalid("missing the \\x93NUMPY magic; is this a .npy file?".into()));
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (len as usize, 12)
        }
        major => return Err(invalid(format!("unsupported format version {major}"))),
    };
    let header = bytes
        .get(header_start..header_start + header_len)
        .ok_or_else(|| invalid("file ends inside the header (truncated)".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| invalid("header is not text".into()))?;
    let data = &bytes[header_start + header_len..];

    let descr = header_value(header, "descr")
        .and_then(|v| v.strip_prefix('\'')?.split('\'').next())
        .ok_or_else(|| invalid(format!("no 'descr' in header {header:?}")))?;
    let item_size = match descr {
        "<f4" => 4usize,
        "<f8" => 8,
        other => {
            return Err(invalid(format!(
                "dtype {other:?} is not supported; save the array as little-endian float32 \
                 (numpy: arr.astype('<f4'))"
            )))
        }
    };
    match header_value(header, "fortran_order") {
        Some(v) if v.starts_with("False") => {}
        Some(v) if v.starts_with("True") => {
            return Err(invalid("array is in Fortran order; save it C-ordered (numpy: np.ascontiguousarray)".into()))
        }
        _ => return Err(invalid(format!("no 'fortran_order' in header {header:?}"))),
    }
    let shape = header_value(header, "shape")
        .and_then(parse_shape)
        .ok_or_else(|| invalid(format!("no valid 'shape' in header {header:?}")))?;

    let expected_len = shape
        .iter()
        .try_fold(item_size, |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| invalid(format!("shape {shape:?} is too large")))?;
    if data.len() != expected_len {
        let what = if data.len() < expected_len { "truncated" } else { "has trailing bytes" };
        return Err(invalid(format!(
            "{what}: shape {shape:?} needs {expected_len} data bytes but the file has {}",
            data.len()
        )));
    }

    let values = if item_size == 4 {
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    } else {
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect()
    };
    Ok((shape, values))
}

/// Writes `data` as a C-ordered little-endian float32 `.npy` file of the given `shape`.
///
/// The file is written atomically: to a temporary file in the same directory, flushed to disk,
/// then renamed over `path`, so readers never see a half-written file.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), DataError> {
    let count = shape.iter().try_fold(1usize, |acc, &dim| acc.checked_mul(dim));
    if count != Some(data.len()) {
        return Err(DataError::InvalidNpy {
            path: path.to_path_buf(),
            detail: format!("shape {shape:?} does not match {} values to write", data.len()),
        });
    }

    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]), // a one-element tuple needs its trailing comma
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // numpy pads the header with spaces and a newline so the data starts 64-byte aligned.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| DataError::InvalidNpy {
        path: path.to_path_buf(),
        detail: format!("shape {shape:?} has too many dimensions"),
    })?;

    let mut contents = Vec::with_capacity(10 + header.len() + data.len() * 4);
    contents.extend_from_slice(MAGIC);
    contents.extend_from_slice(&[1, 0]);
    contents.extend_from_slice(&header_len.to_le_bytes());
    contents.extend_from_slice(header.as_bytes());
    for value in data {
        contents.extend_from_slice(&value.to_le_bytes());
    }
    write_atomically(path, &contents)
}

/// Text following `'key':` in a header dict, with leading spaces removed.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let after_key = header.split_once(&format!("'{key}'"))?.1;
    Some(after_key.trim_start().strip_prefix(':')?.trim_start())
}

/// Parses the tuple at the start of `text`: `()`, `(5,)` or `(3, 224, 224)`.
fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.strip_prefix('(')?.split(')').next()?;
    inner.split(',').map(str::trim).filter(|dim| !dim.is_empty()).map(|dim| dim.parse().ok()).collect()
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), DataError> {
    let write_error = |source| DataError::Write { path: path.to_path_buf(), source };
    let file_name = path
        .file_name()
        .ok_or_else(|| write_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp_path: PathBuf = path.with_file_name(temp_name);

    let result = (|| {
        let mut file = File::create(&temp_path)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp_path, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&temp_path); // best effort; the original error matters more
        return Err(write_error(source));
    }
    // Persist the rename itself; not possible (nor needed) on every platform, so best effort.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse() {
        assert_eq!(parse_shape("(3, 224, 224), }"), Some(vec![3, 224, 224]));
        assert_eq!(parse_shape("(5,), }"), Some(vec![5]));
        assert_eq!(parse_shape("(), }"), Some(vec![]));
        assert_eq!(parse_shape("(2, x)"), None);
    }
}
