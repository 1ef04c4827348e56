//! PyTorch zip checkpoints (`torch.save`, PyTorch >= 1.6): `<archive>/data.pkl` is a pickle
//! of the state_dict whose tensors point at little-endian storages `<archive>/data/<key>`.
//! The pickle goes through the restricted unpickler in [`super::pickle`]; each tensor is then
//! gathered from its storage by offset, size and stride.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};

use zip::ZipArchive;

use super::pickle::{self, Pickle, PickleError, StorageRef, TensorRef, Value};
use super::*;

/// Largest `data.pkl` read: a ResNet-152 state_dict pickles to ~150 KB, so this is generous,
/// while bounding what a hostile pickle can make the unpickler allocate.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Elements materialised per byte of file, on top of [`BASE_ELEMENTS`]: bounds the memory a
/// hostile file can demand through many or broadcast (stride-0) views of small storages.
/// An honest state_dict needs at most one element per byte (int8 storages); the slack
/// covers tensors that share storage (tied weights, views of a flat buffer).
const ELEMENTS_PER_FILE_BYTE: u64 = 4;
const BASE_ELEMENTS: u64 = 1 << 24;

/// Wrapper keys under which training checkpoints keep their state_dict.
const CHECKPOINT_KEYS: [&str; 3] = ["state_dict", "model", "model_state_dict"];

/// Loads a `.pth` state_dict (or a checkpoint dict holding one under `state_dict`/`model`).
pub fn load_pth(path: &Path) -> Result<StateDict, WeightsError> {
    let mut file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| WeightsError::io(path, e))?.len();
    let mut head = [0u8; 16];
    let got = read_up_to(&mut file, &mut head).map_err(|e| WeightsError::io(path, e))?;
    if got == 0 {
        return Err(WeightsError::format(path, "the file is empty"));
    }
    if looks_like_legacy_torch(&head[..got]) {
        return Err(WeightsError::LegacyPth { path: path.to_path_buf() });
    }
    let mut zip = ZipArchive::new(BufReader::new(file)).map_err(|e| {
        WeightsError::format(
            path,
            format!("cannot read it as a PyTorch zip checkpoint ({e}); is it truncated or corrupt?"),
        )
    })?;
    let prefix = archive_prefix(&zip, path)?;
    check_byte_order(&mut zip, &prefix, path)?;
    let pkl = read_entry(&mut zip, &format!("{prefix}data.pkl"), MAX_PICKLE_BYTES, path)?;
    let pickle = pickle::unpickle(&pkl).map_err(|e| match e {
        PickleError::Refused { global } => refusal(path, global),
        malformed => WeightsError::format(path, format!("data.pkl: {malformed}")),
    })?;
    let tensors = state_dict_entries(&pickle, path)?;

    // Storages are read once each: several tensors may view one storage.
    let mut storages: HashMap<&str, (&StorageRef, TensorValues)> = HashMap::new();
    let budget = file_len.saturating_mul(ELEMENTS_PER_FILE_BYTE).saturating_add(BASE_ELEMENTS);
    let mut budget = usize::try_from(budget).unwrap_or(usize::MAX);
    let mut dict = StateDict::new();
    for (name, tensor) in tensors {
        let key = tensor.storage.key.as_str();
        if !storages.contains_key(key) {
            let values = read_storage(&mut zip, &prefix, tensor, name, path)?;
            storages.insert(key, (&tensor.storage, values));
        }
        match storages.get(key) {
            Some((storage, values)) if **storage == tensor.storage => {
                dict.insert(name, materialise(name, tensor, values, &mut budget, path)?);
            }
            _ => {
                return Err(WeightsError::format(
                    path,
                    format!("tensor `{name}`: storage `{key}` is declared twice, differently"),
                ))
            }
        }
    }
    Ok(dict)
}

/// Whether `head` starts like a pre-1.6 `torch.save` file: a bare pickle beginning with
/// torch's magic number (LONG1 0x1950a86a20f9469cfc6c), rather than a zip.
pub fn looks_like_legacy_torch(head: &[u8]) -> bool {
    const MAGIC: [u8; 12] = [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    head.len() >= 14 && head[0] == 0x80 && head[2..14] == MAGIC
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A refused global: a whole pickled module gets advice, anything else is called suspect.
fn refusal(path: &Path, global: String) -> WeightsError {
    let module_like = ["torchvision.", "torch.nn.", "__torch__."];
    if module_like.iter().any(|m| global.starts_with(m)) {
        WeightsError::PickledModule { path: path.to_path_buf(), global }
    } else {
        WeightsError::UnsafePickle { path: path.to_path_buf(), global }
    }
}

/// The archive's top-level folder (with its trailing `/`), found from `<folder>/data.pkl`.
fn archive_prefix<R: Read + std::io::Seek>(zip: &ZipArchive<R>, path: &Path) -> Result<String, WeightsError> {
    let mut found: Vec<&str> = zip
        .file_names()
        .filter_map(|n| n.strip_suffix("data.pkl"))
        .filter(|p| p.ends_with('/') && p.matches('/').count() == 1)
        .collect();
    found.sort_unstable();
    let is_torchscript = |prefix: &str| {
        zip.file_names().any(|n| n.strip_prefix(prefix).is_some_and(|r| r.starts_with("code/") || r == "constants.pkl"))
    };
    match found.as_slice() {
        [prefix] if is_torchscript(prefix) => Err(WeightsError::format(
            path,
            "this is a TorchScript archive (torch.jit.save), not a state_dict; \
             save `model.state_dict()` with torch.save instead",
        )),
        [prefix] => Ok(prefix.to_string()),
        [] => Err(WeightsError::format(path, "a zip file without `<archive>/data.pkl`, so not a PyTorch checkpoint")),
        _ => Err(WeightsError::format(path, "the zip holds several `data.pkl` archives")),
    }
}

fn check_byte_order<R: Read + std::io::Seek>(
    zip: &mut ZipArchive<R>,
    prefix: &str,
    path: &Path,
) -> Result<(), WeightsError> {
    let name = format!("{prefix}byteorder");
    if zip.index_for_name(&name).is_none() {
        return Ok(()); // older writers omit it; they were little-endian
    }
    let order = read_entry(zip, &name, 16, path)?;
    match order.as_slice() {
        b"little" => Ok(()),
        other => Err(WeightsError::format(
            path,
            format!(
                "storages are stored `{}`-endian; only little-endian checkpoints are supported",
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

/// Reads a whole zip entry, refusing entries longer than `limit` bytes.
fn read_entry<R: Read + std::io::Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    limit: u64,
    path: &Path,
) -> Result<Vec<u8>, WeightsError> {
    let bad = |what: String| WeightsError::format(path, format!("entry `{name}`: {what}"));
    let entry = zip.by_name(name).map_err(|e| bad(format!("{e}")))?;
    let capacity = entry.size().min(limit).min(64 << 20); // a hint; hostile sizes are capped
    let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    entry
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("{e} (the file is truncated or corrupt)")))?;
    if bytes.len() as u64 > limit {
        return Err(bad(format!("longer than the {limit} bytes expected")));
    }
    Ok(bytes)
}

/// The `(name, tensor)` pairs of the state_dict at the pickle's root, unwrapping a
/// training checkpoint (`{"epoch": .., "state_dict": {..}}`) if that is what the root is.
fn state_dict_entries<'p>(pickle: &'p Pickle, path: &Path) -> Result<Vec<(&'p str, &'p TensorRef)>, WeightsError> {
    let root = pickle.root();
    let Some(mut dict) = pickle.as_dict(root) else {
        return Err(WeightsError::format(
            path,
            format!("the pickle holds a {}, not a state_dict", pickle.type_name(root)),
        ));
    };
    let wrapped = CHECKPOINT_KEYS.iter().find_map(|k| dict.get_str(k).and_then(|v| pickle.as_dict(v)));
    if let Some(inner) = wrapped {
        dict = inner;
    }
    let mut entries = Vec::with_capacity(dict.entries().len());
    for (key, value) in dict.entries() {
        let Value::Str(name) = key else {
            return Err(WeightsError::format(
                path,
                format!("a state_dict key is a {}, not a string", pickle.type_name(key)),
            ));
        };
        let Some(tensor) = pickle.as_tensor(value) else {
            return Err(WeightsError::format(
                path,
                format!(
                    "entry `{name}` is a {}, not a tensor; expected a state_dict, or a \
                     checkpoint with a `state_dict` or `model` entry",
                    pickle.type_name(value)
                ),
            ));
        };
        entries.push((&**name, tensor));
    }
    Ok(entries)
}

/// Reads and decodes the storage behind `tensor`, checking it holds what the pickle declares.
fn read_storage<R: Read + std::io::Seek>(
    zip: &mut ZipArchive<R>,
    prefix: &str,
    tensor: &TensorRef,
    name: &str,
    path: &Path,
) -> Result<TensorValues, WeightsError> {
    let storage = &tensor.storage;
    let declared = storage
        .numel
        .checked_mul(storage.dtype.size())
        .ok_or_else(|| WeightsError::format(path, format!("tensor `{name}`: storage size overflows")))?;
    let entry = format!("{prefix}data/{}", storage.key);
    let bytes = read_entry(zip, &entry, declared as u64, path)?;
    if bytes.len() != declared {
        return Err(WeightsError::format(
            path,
            format!(
                "tensor `{name}`: storage `data/{}` holds {} bytes but the pickle declares {declared}; \
                 the file is truncated or was tampered with",
                storage.key,
                bytes.len()
            ),
        ));
    }
    Ok(storage.dtype.decode_le(&bytes))
}

/// Gathers a tensor's elements (row-major) from its storage by offset, size and stride,
/// spending `budget` (elements left to materialise for this file).
fn materialise(
    name: &str,
    tensor: &TensorRef,
    storage: &TensorValues,
    budget: &mut usize,
    path: &Path,
) -> Result<StoredTensor, WeightsError> {
    let bad = |what: &str| WeightsError::format(path, format!("tensor `{name}`: {what}"));
    let numel = tensor.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let Some(left) = numel.and_then(|n| budget.checked_sub(n)) else {
        return Err(bad(&format!(
            "size {:?} is far more elements than the file could hold; it is corrupt or hostile",
            tensor.shape
        )));
    };
    *budget = left;
    let numel = tensor.shape.iter().product();
    if numel > 0 {
        // The furthest element the view touches must lie inside the storage.
        let mut last = Some(tensor.offset);
        for (&size, &stride) in tensor.shape.iter().zip(&tensor.stride) {
            last = last.and_then(|l| l.checked_add((size - 1).checked_mul(stride)?));
        }
        let storage_len = match storage {
            TensorValues::F32(v) => v.len(),
            TensorValues::I64(v) => v.len(),
        };
        let inside = matches!(last, Some(l) if l < storage_len);
        if !inside {
            return Err(bad(&format!(
                "its view (offset {}, size {:?}, stride {:?}) reaches past the end of its \
                 {storage_len}-element storage; the file is corrupt or was tampered with",
                tensor.offset, tensor.shape, tensor.stride
            )));
        }
    }
    let indices = StridedIndices::new(tensor, numel);
    let values = match storage {
        TensorValues::F32(v) => indices.map(|i| v.get(i).copied()).collect::<Option<_>>().map(TensorValues::F32),
        TensorValues::I64(v) => indices.map(|i| v.get(i).copied()).collect::<Option<_>>().map(TensorValues::I64),
    };
    let values = values.ok_or_else(|| bad("an element lies outside its storage"))?;
    Ok(StoredTensor { shape: tensor.shape.clone(), values })
}

/// Storage indices of a strided view, in row-major order of the view.
struct StridedIndices<'t> {
    shape: &'t [usize],
    stride: &'t [usize],
    index: Vec<usize>,
    next: usize,
    remaining: usize,
}

impl<'t> StridedIndices<'t> {
    fn new(tensor: &'t TensorRef, numel: usize) -> Self {
        StridedIndices {
            shape: &tensor.shape,
            stride: &tensor.stride,
            index: vec![0; tensor.shape.len()],
            next: tensor.offset,
            remaining: numel,
        }
    }
}

impl Iterator for StridedIndices<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let current = self.next;
        // Advance the odometer: bump the last axis, carrying into earlier ones. Bounds were
        // checked before iterating, so the wrapping arithmetic never actually wraps.
        for axis in (0..self.index.len()).rev() {
            self.index[axis] += 1;
            self.next = self.next.wrapping_add(self.stride[axis]);
            if self.index[axis] < self.shape[axis] {
                break;
            }
            self.next = self.next.wrapping_sub(self.stride[axis].wrapping_mul(self.shape[axis]));
            self.index[axis] = 0;
        }
        Some(current)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/weights").join(name)
    }

    /// A fresh scratch directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("resnet-weights-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn message(result: Result<StateDict, WeightsError>) -> String {
        result.expect_err("loading should fail").to_string()
    }

    /// Parses tiny.expected.txt: `name f32|i64 [shape] values...` per line.
    fn expected_tiny() -> Vec<(String, StoredTensor)> {
        let text = std::fs::read_to_string(fixture("tiny.expected.txt")).unwrap();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut words = line.split(' ');
            let name = words.next().unwrap().to_string();
            let kind = words.next().unwrap();
            let shape = words.next().unwrap().trim_matches(['[', ']']);
            let shape: Vec<usize> = shape.split(',').filter(|s| !s.is_empty()).map(|d| d.parse().unwrap()).collect();
            let values = match kind {
                "f32" => TensorValues::F32(words.map(|w| w.parse().unwrap()).collect()),
                "i64" => TensorValues::I64(words.map(|w| w.parse().unwrap()).collect()),
                other => panic!("unknown kind {other}"),
            };
            out.push((name, StoredTensor { shape, values }));
        }
        out
    }

    /// Exact comparison (bit patterns for floats, so -0.0 and 0.0 differ), in key order.
    fn assert_matches_expected(dict: &StateDict) {
        let expected = expected_tiny();
        let keys: Vec<&str> = dict.keys().collect();
        let want: Vec<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, want);
        for (name, want) in &expected {
            let got = dict.get(name).unwrap();
            assert_eq!(got.shape, want.shape, "{name}");
            match (&got.values, &want.values) {
                (TensorValues::F32(g), TensorValues::F32(w)) => {
                    let g: Vec<u32> = g.iter().map(|x| x.to_bits()).collect();
                    let w: Vec<u32> = w.iter().map(|x| x.to_bits()).collect();
                    assert_eq!(g, w, "{name}");
                }
                (g, w) => assert_eq!(g, w, "{name}"),
            }
        }
    }

    #[test]
    fn tiny_pth_matches_torch_values_exactly() {
        assert_matches_expected(&load_pth(&fixture("tiny.pth")).unwrap());
    }

    #[test]
    fn tiny_pth_with_pickle_protocol_4_matches_torch_values() {
        assert_matches_expected(&load_state_dict(&fixture("tiny_proto4.pth")).unwrap());
    }

    #[test]
    fn checkpoint_dict_is_unwrapped_to_its_state_dict() {
        let dict = load_pth(&fixture("checkpoint_wrapped.pth")).unwrap();
        assert_eq!(dict.keys().collect::<Vec<_>>(), ["fc.weight", "fc.bias"]);
        let weight = dict.get("fc.weight").unwrap();
        assert_eq!(weight.shape, [2, 3]);
        assert_eq!(weight.values, TensorValues::F32(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    }

    #[test]
    fn pickle_calling_os_system_is_refused_with_a_clear_message() {
        let path = fixture("malicious_os_system.pth");
        let err = load_state_dict(&path).unwrap_err();
        assert!(matches!(&err, WeightsError::UnsafePickle { global, .. } if global == "os system"));
        let want = format!(
            "{}: refusing to load: the pickle calls `os system`, which a state_dict never needs; \
             this file may be malicious",
            path.display()
        );
        assert_eq!(err.to_string(), want);
    }

    #[test]
    fn truncated_pth_is_an_error_naming_the_file() {
        let bytes = std::fs::read(fixture("tiny.pth")).unwrap();
        let dir = scratch("truncated-pth");
        let path = dir.join("model.pth");
        let cuts: Vec<usize> = (1..bytes.len()).step_by(61).chain([bytes.len() - 1]).collect();
        for cut in cuts {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let msg = message(load_state_dict(&path));
            assert!(msg.contains("model.pth"), "cut at {cut}: {msg}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn storage_shorter_than_declared_is_an_error() {
        let msg = message(load_pth(&fixture("tampered_short_storage.pth")));
        assert!(msg.contains("tampered_short_storage.pth"), "{msg}");
        assert!(msg.contains("data/0") && msg.contains("tampered with"), "{msg}");
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = scratch("empty");
        let path = dir.join("empty.pth");
        std::fs::write(&path, b"").unwrap();
        for msg in [message(load_pth(&path)), message(load_state_dict(&path))] {
            assert!(msg.contains("empty.pth") && msg.contains("empty"), "{msg}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn random_bytes_are_an_error() {
        let dir = scratch("random");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for (i, len) in [3usize, 8, 64, 4096, 100_000].into_iter().enumerate() {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let path = dir.join(format!("random{i}.bin"));
            std::fs::write(&path, &bytes).unwrap();
            for msg in [message(load_pth(&path)), message(load_state_dict(&path))] {
                assert!(msg.contains(&format!("random{i}.bin")), "{msg}");
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn legacy_pth_asks_to_resave_with_current_torch() {
        let path = fixture("legacy.pth");
        for err in [load_pth(&path).unwrap_err(), load_state_dict(&path).unwrap_err()] {
            assert!(matches!(err, WeightsError::LegacyPth { .. }), "{err}");
            assert!(err.to_string().contains("re-save it"), "{err}");
        }
    }

    #[test]
    fn torchscript_archive_is_explained() {
        let msg = message(load_state_dict(&fixture("torchscript.pt")));
        assert!(msg.contains("TorchScript") && msg.contains("state_dict"), "{msg}");
    }

    #[test]
    fn mutated_torch_pickles_never_panic() {
        let file = File::open(fixture("tiny.pth")).unwrap();
        let mut zip = ZipArchive::new(file).unwrap();
        let pkl = read_entry(&mut zip, "tiny/data.pkl", MAX_PICKLE_BYTES, Path::new("t")).unwrap();
        for cut in 0..pkl.len() {
            let _ = pickle::unpickle(&pkl[..cut]);
        }
        let mut mutated = pkl.clone();
        for i in 0..pkl.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xff, pkl[i] ^ 0x20] {
                mutated[i] = b;
                if let Ok(p) = pickle::unpickle(&mutated) {
                    let _ = state_dict_entries(&p, Path::new("t"));
                }
            }
            mutated[i] = pkl[i];
        }
    }

    fn view(offset: usize, shape: &[usize], stride: &[usize], numel: usize) -> TensorRef {
        TensorRef {
            storage: pickle::StorageRef { key: "0".into(), dtype: pickle::ElementType::F32, numel },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        let storage = TensorValues::F32((0..24).map(|x| x as f32).collect());
        let gather = |offset, shape: &[usize], stride: &[usize]| {
            let t = view(offset, shape, stride, 24);
            materialise("t", &t, &storage, &mut 1000, Path::new("m.pth")).map(|t| t.values).map_err(|e| e.to_string())
        };
        let f = |v: &[f32]| Ok(TensorValues::F32(v.to_vec()));
        assert_eq!(gather(0, &[2, 3], &[1, 2]), f(&[0., 2., 4., 1., 3., 5.]));
        let want = f(&[4., 10., 5., 11., 16., 22., 17., 23.]);
        assert_eq!(gather(4, &[2, 2, 2], &[12, 1, 6]), want);
        assert_eq!(gather(7, &[2, 3], &[1, 0]), f(&[7., 7., 7., 8., 8., 8.]));
        assert_eq!(gather(23, &[], &[]), f(&[23.]));
        assert_eq!(gather(99, &[0, 5], &[5, 1]), f(&[]));
        let msg = gather(5, &[2, 2, 2], &[12, 1, 6]).unwrap_err();
        assert!(msg.contains("m.pth") && msg.contains("reaches past the end"), "{msg}");
        assert!(gather(0, &[1 << 40, 1 << 40], &[0, 0]).is_err());
        let msg = gather(0, &[1001], &[0]).unwrap_err();
        assert!(msg.contains("far more elements"), "{msg}");
    }

    /// Manual check driven by `gen_weights_fixtures.py --check-resnet18`, which saves a random
    /// torchvision resnet18 with torch.save and with safetensors into $RESNET_WEIGHTS_R18_DIR.
    #[test]
    #[ignore = "needs files from tools/reference/gen_weights_fixtures.py --check-resnet18"]
    fn torchvision_resnet18_loads_and_round_trips() {
        let dir = PathBuf::from(std::env::var("RESNET_WEIGHTS_R18_DIR").unwrap());
        let from_pth = load_state_dict(&dir.join("resnet18.pth")).unwrap();
        let from_st = load_state_dict(&dir.join("resnet18.safetensors")).unwrap();
        let keys = std::fs::read_to_string(dir.join("resnet18.keys")).unwrap();
        let want: Vec<&str> = keys.lines().collect();
        assert_eq!(from_pth.len(), 122);
        assert_eq!(from_pth.keys().collect::<Vec<_>>(), want);
        for (name, tensor) in from_pth.iter() {
            assert_eq!(from_st.get(name), Some(tensor), "{name}");
        }
        let ours = dir.join("resnet18.ours.safetensors");
        safetensors_io::save_safetensors(&ours, &from_pth).unwrap();
        let back = load_state_dict(&ours).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), want);
        assert!(from_pth.iter().all(|(k, t)| back.get(k) == Some(t)));
        println!("resnet18: {} keys load from .pth and safetensors identically", from_pth.len());
    }
}
