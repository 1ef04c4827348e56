//! safetensors files: read by memory-mapping (any float dtype becomes f32, integers i64),
//! written atomically in the dict's own key order with F32 and I64 tensors.
//!
//! Writing is done by hand rather than through `safetensors::serialize`, which reorders
//! tensors by dtype and name; the format is just an 8-byte little-endian header length,
//! a JSON header and the concatenated little-endian tensor bytes.

use std::fs::File;
use std::io::{BufWriter, Write};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError};
use safetensors::SafeTensors;

use super::dtype::ElementType;
use super::*;

/// Loads every tensor of a safetensors file, in the order of their data in the file.
pub fn load_safetensors(path: &Path) -> Result<StateDict, WeightsError> {
    let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
    let len = file.metadata().map_err(|e| WeightsError::io(path, e))?.len();
    if len == 0 {
        return Err(WeightsError::format(path, "the file is empty"));
    }
    if len < 8 {
        return Err(WeightsError::format(
            path,
            format!("{len} bytes is too short for a safetensors file or a PyTorch checkpoint"),
        ));
    }
    // SAFETY: the map is read-only and lives only for this call; every tensor is copied out
    // before it is dropped. Another process truncating or rewriting the file meanwhile could
    // change the bytes under us (or fault on truncation) — the usual caveat of mmap, accepted
    // as for every safetensors reader; no reference into the map outlives this function.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))?;
    if pth::looks_like_legacy_torch(&map) {
        return Err(WeightsError::LegacyPth { path: path.to_path_buf() });
    }
    let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| header_error(path, len, e))?;
    let data = map.get(8 + header_len..).unwrap_or(&[]);
    let mut dict = StateDict::new();
    for name in metadata.offset_keys() {
        let Some(info) = metadata.info(&name) else {
            continue;
        };
        let bad = |what: String| WeightsError::format(path, format!("tensor `{name}`: {what}"));
        let dtype = element_type(info.dtype).ok_or_else(|| bad(format!("unsupported dtype {:?}", info.dtype)))?;
        let (start, end) = info.data_offsets;
        let bytes = data.get(start..end).ok_or_else(|| bad("data lies outside the file".into()))?;
        let values = dtype.decode_le(bytes);
        let numel: usize = info.shape.iter().product();
        let decoded = match &values {
            TensorValues::F32(v) => v.len(),
            TensorValues::I64(v) => v.len(),
        };
        if decoded != numel {
            return Err(bad(format!("shape {:?} does not match its {} bytes", info.shape, end - start)));
        }
        dict.insert(name.clone(), StoredTensor { shape: info.shape.clone(), values });
    }
    Ok(dict)
}

/// The element types we read; 8-bit and smaller float formats are not supported.
fn element_type(dtype: Dtype) -> Option<ElementType> {
    Some(match dtype {
        Dtype::F32 => ElementType::F32,
        Dtype::F16 => ElementType::F16,
        Dtype::BF16 => ElementType::BF16,
        Dtype::F64 => ElementType::F64,
        Dtype::I64 => ElementType::I64,
        Dtype::I32 => ElementType::I32,
        Dtype::I16 => ElementType::I16,
        Dtype::I8 => ElementType::I8,
        Dtype::U8 => ElementType::U8,
        Dtype::BOOL => ElementType::Bool,
        _ => return None,
    })
}

/// Explains a header the safetensors crate rejected. Since any file that is not a zip lands
/// here, header-level failures say the file is neither format.
fn header_error(path: &Path, len: u64, e: SafeTensorError) -> WeightsError {
    let reason = match e {
        SafeTensorError::HeaderTooLarge
        | SafeTensorError::InvalidHeaderLength
        | SafeTensorError::InvalidHeader(_)
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization(_) => format!(
            "neither a PyTorch zip checkpoint nor a safetensors file ({e}; the file has {len} bytes); \
             if it is safetensors, it is truncated or corrupt"
        ),
        SafeTensorError::MetadataIncompleteBuffer => {
            format!("safetensors header and file size disagree ({len} bytes); the file is truncated or corrupt")
        }
        other => format!("inconsistent safetensors header ({other}); the file is corrupt"),
    };
    WeightsError::format(path, reason)
}

/// Saves `dict` as safetensors (F32 and I64 tensors, in the dict's order).
pub fn save_safetensors(path: &Path, dict: &StateDict) -> Result<(), WeightsError> {
    save_safetensors_with_metadata(path, dict, &[])
}

/// Like [`save_safetensors`], with string pairs in the header's `__metadata__`.
///
/// The file is written to a temporary file in the same directory, flushed to disk and renamed
/// over `path`, so readers see either the old file or the complete new one.
pub fn save_safetensors_with_metadata(
    path: &Path,
    dict: &StateDict,
    metadata: &[(&str, &str)],
) -> Result<(), WeightsError> {
    let header = header_json(path, dict, metadata)?;
    let file_name =
        path.file_name().ok_or_else(|| WeightsError::format(path, "the output path does not name a file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);

    let written = write_file(&tmp, &header, dict).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(WeightsError::io(path, e));
    }
    // Make the rename itself durable; not every platform lets a directory be synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn write_file(tmp: &Path, header: &[u8], dict: &StateDict) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(tmp)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header)?;
    for (_, tensor) in dict.iter() {
        match &tensor.values {
            TensorValues::F32(v) => v.iter().try_for_each(|x| out.write_all(&x.to_le_bytes()))?,
            TensorValues::I64(v) => v.iter().try_for_each(|x| out.write_all(&x.to_le_bytes()))?,
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// The JSON header, padded with spaces to a multiple of 8 bytes as the reference writer does.
fn header_json(path: &Path, dict: &StateDict, metadata: &[(&str, &str)]) -> Result<Vec<u8>, WeightsError> {
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!("{}:{}", json_string(k), json_string(v)));
        }
        json.push('}');
    }
    let mut offset = 0usize;
    for (name, tensor) in dict.iter() {
        let bad = |what: String| WeightsError::format(path, format!("tensor `{name}`: {what}"));
        if name == "__metadata__" {
            return Err(bad("`__metadata__` is reserved by safetensors".into()));
        }
        let (dtype, len, elem_size) = match &tensor.values {
            TensorValues::F32(v) => ("F32", v.len(), 4),
            TensorValues::I64(v) => ("I64", v.len(), 8),
        };
        if len != tensor.numel() {
            return Err(bad(format!("shape {:?} but {len} values", tensor.shape)));
        }
        let end = offset + len * elem_size;
        let shape: Vec<String> = tensor.shape.iter().map(|d| d.to_string()).collect();
        if json.len() > 1 {
            json.push(',');
        }
        json.push_str(&format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json_string(name),
            shape.join(",")
        ));
        offset = end;
    }
    json.push('}');
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    Ok(json.into_bytes())
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use std::path::PathBuf;

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("resnet-st-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> StateDict {
        let mut dict = StateDict::new();
        dict.insert(
            "layer1.0.conv1.weight",
            StoredTensor::f32(vec![2, 1, 1, 3], vec![1.5, -0.0, 3e-39, f32::MAX, -7.25, 1e-7]),
        );
        dict.insert(
            "bn1.num_batches_tracked",
            StoredTensor { shape: vec![], values: TensorValues::I64(vec![i64::MIN + 1]) },
        );
        dict.insert("a \"quoted\" \\ name\t✓", StoredTensor::f32(vec![3], vec![1.0, 2.0, 3.0]));
        dict.insert("empty", StoredTensor::f32(vec![0, 4], vec![]));
        dict.insert("counts", StoredTensor { shape: vec![2], values: TensorValues::I64(vec![-1, 1 << 40]) });
        dict
    }

    fn message(result: Result<StateDict, WeightsError>) -> String {
        result.expect_err("loading should fail").to_string()
    }

    #[test]
    fn round_trip_keeps_order_shapes_and_exact_values() {
        let dir = scratch("round-trip");
        let path = dir.join("w.safetensors");
        let dict = sample();
        save_safetensors(&path, &dict).unwrap();
        let back = load_safetensors(&path).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), dict.keys().collect::<Vec<_>>());
        for (name, tensor) in dict.iter() {
            let got = back.get(name).unwrap();
            assert_eq!(got.shape, tensor.shape, "{name}");
            match (&got.values, &tensor.values) {
                (TensorValues::F32(g), TensorValues::F32(w)) => {
                    assert!(g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()) && g.len() == w.len(), "{name}")
                }
                (g, w) => assert_eq!(g, w, "{name}"),
            }
        }
        // Our file is valid for the reference reader too.
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("counts").unwrap().dtype(), Dtype::I64);
        assert_eq!(st.tensor("layer1.0.conv1.weight").unwrap().dtype(), Dtype::F32);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn save_replaces_atomically_and_leaves_no_temp_file() {
        let dir = scratch("atomic");
        let path = dir.join("w.safetensors");
        std::fs::write(&path, b"old contents").unwrap();
        save_safetensors(&path, &sample()).unwrap();
        assert_eq!(load_safetensors(&path).unwrap().len(), 5);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["w.safetensors"]);
        // A failing save (values disagree with the shape) leaves the old file untouched.
        let mut bad = StateDict::new();
        bad.insert("x", StoredTensor::f32(vec![2, 2], vec![1.0]));
        let msg = save_safetensors(&path, &bad).unwrap_err().to_string();
        assert!(msg.contains("`x`") && msg.contains("[2, 2]"), "{msg}");
        assert_eq!(load_safetensors(&path).unwrap().len(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn metadata_is_written_to_the_header() {
        let dir = scratch("metadata");
        let path = dir.join("w.safetensors");
        save_safetensors_with_metadata(&path, &sample(), &[("format", "pt"), ("arch", "resnet18")]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
        assert_eq!(meta.get("arch").map(String::as_str), Some("resnet18"));
        assert_eq!(load_safetensors(&path).unwrap().len(), 5);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_f16_bf16_f64_and_i32_as_f32_and_i64() {
        let dir = scratch("dtypes");
        let path = dir.join("mixed.safetensors");
        let f16 = [0x00, 0x3c, 0x00, 0xc0]; // 1.0, -2.0
        let bf16 = [0x80, 0x3f, 0xa0, 0xc0]; // 1.0, -5.0
        let f64 = (0.1f64).to_le_bytes();
        let i32 = (-7i32).to_le_bytes();
        let views = vec![
            ("h", TensorView::new(Dtype::F16, vec![2], &f16).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![2], &bf16).unwrap()),
            ("d", TensorView::new(Dtype::F64, vec![1], &f64).unwrap()),
            ("i", TensorView::new(Dtype::I32, vec![1, 1], &i32).unwrap()),
        ];
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let dict = load_safetensors(&path).unwrap();
        assert_eq!(dict.get("h").unwrap().values, TensorValues::F32(vec![1.0, -2.0]));
        assert_eq!(dict.get("b").unwrap().values, TensorValues::F32(vec![1.0, -5.0]));
        assert_eq!(dict.get("d").unwrap().values, TensorValues::F32(vec![0.1f32]));
        assert_eq!(dict.get("i").unwrap().values, TensorValues::I64(vec![-7]));
        assert_eq!(dict.get("i").unwrap().shape, [1, 1]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn truncated_safetensors_is_an_error_naming_the_file() {
        let dir = scratch("truncated");
        let full = dir.join("full.safetensors");
        save_safetensors(&full, &sample()).unwrap();
        let bytes = std::fs::read(&full).unwrap();
        let path = dir.join("cut.safetensors");
        for cut in (0..bytes.len()).step_by(7) {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let msg = message(super::super::load_state_dict(&path));
            assert!(msg.contains("cut.safetensors"), "cut at {cut}: {msg}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn header_lying_about_offsets_is_an_error() {
        let dir = scratch("lying");
        let path = dir.join("lying.safetensors");
        let write = |header: &str, data_len: usize| {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend(header.as_bytes());
            bytes.extend(vec![0u8; data_len]);
            std::fs::write(&path, bytes).unwrap();
        };
        let cases = [
            // Claims more data than the file holds.
            (r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,1000]}}"#, 8),
            // Offsets disagree with the shape.
            (r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#, 8),
            // Two tensors overlapping.
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
            // Shape whose element count overflows.
            (r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#, 8),
        ];
        for (header, data_len) in cases {
            write(header, data_len);
            let msg = message(load_safetensors(&path));
            assert!(msg.contains("lying.safetensors"), "{header}: {msg}");
        }
        // A header length pointing far past the end of the file.
        let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
        bytes.extend(b"{}");
        std::fs::write(&path, bytes).unwrap();
        let msg = message(load_safetensors(&path));
        assert!(msg.contains("neither a PyTorch zip checkpoint nor a safetensors file"), "{msg}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_and_tiny_files_are_errors() {
        let dir = scratch("tiny-files");
        for (name, bytes) in [("e.safetensors", &b""[..]), ("t.safetensors", &b"\x02\0\0"[..])] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            let msg = message(load_safetensors(&path));
            assert!(msg.contains(name), "{msg}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
