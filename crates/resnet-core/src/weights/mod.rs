//! Weights I/O: torchvision `.pth` (zip + restricted unpickler) and safetensors, both into
//! one [`StateDict`] keyed by torchvision's state_dict names, in PyTorch's own layouts
//! (conv weights OIHW). The model converts layouts when it takes the weights.

mod dtype;
mod error;
pub mod pickle;
pub mod pth;
pub mod safetensors_io;

pub use error::WeightsError;

use std::collections::HashMap;
use std::path::Path;

/// Values of one stored tensor. Floating tensors of any stored precision (f16, bf16, f64)
/// become f32 on load; integer tensors (BatchNorm's `num_batches_tracked`) stay i64.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One tensor of a state_dict, row-major, in PyTorch's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub values: TensorValues,
}

impl StoredTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> StoredTensor {
        StoredTensor { shape, values: TensorValues::F32(data) }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named tensors in insertion order (torchvision's order when it came from torchvision).
#[derive(Clone, Debug, Default)]
pub struct StateDict {
    entries: Vec<(String, StoredTensor)>,
    index: HashMap<String, usize>,
}

impl StateDict {
    pub fn new() -> StateDict {
        StateDict::default()
    }

    /// Inserts or replaces `name`; a replaced entry keeps its position.
    pub fn insert(&mut self, name: impl Into<String>, tensor: StoredTensor) {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = tensor,
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, tensor));
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<&StoredTensor> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &StoredTensor)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

/// Loads a state_dict from a `.pth` (PyTorch zip checkpoint) or `.safetensors` file,
/// chosen by the file's first bytes, not its name.
pub fn load_state_dict(path: &Path) -> Result<StateDict, WeightsError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
    let got = file.read(&mut magic).map_err(|e| WeightsError::io(path, e))?;
    if got == 4 && &magic == b"PK\x03\x04" {
        pth::load_pth(path)
    } else {
        safetensors_io::load_safetensors(path)
    }
}
