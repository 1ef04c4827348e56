//! Named parameters: the bridge between our layers and torchvision's state_dict.
//!
//! Every layer exposes its tensors through [`Parameterized`] under torchvision's exact key
//! names and in torchvision's order, so loading, saving, counting and seeding are written
//! once here, not per layer.

use crate::weights::{StateDict, StoredTensor, TensorValues, WeightsError};

/// What a named tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Learned by gradient descent (conv and fc weights, BN affine).
    Trainable,
    /// Running statistics (BN mean and variance).
    Buffer,
    /// BatchNorm's `num_batches_tracked`, an integer kept in [`Param::count`].
    Counter,
}

/// How `data` is laid out relative to PyTorch's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Same as PyTorch (row-major in `torch_shape`).
    Torch,
    /// Conv weight: PyTorch is OIHW, we store OHWI so a filter row matches an NHWC patch.
    Ohwi,
}

/// One named tensor of a layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub kind: ParamKind,
    /// The shape PyTorch gives this tensor (conv weights: `[O, I, KH, KW]`).
    pub torch_shape: Vec<usize>,
    pub layout: Layout,
    pub data: Vec<f32>,
    /// Only for [`ParamKind::Counter`].
    pub count: i64,
    /// `∂loss/∂data` in the same layout as `data`, summed over backward passes since the
    /// last [`Param::zero_grad`]; empty until a backward pass reaches this parameter.
    pub grad: Vec<f32>,
}

impl Param {
    pub fn new(kind: ParamKind, torch_shape: &[usize], fill: f32) -> Param {
        Param {
            kind,
            torch_shape: torch_shape.to_vec(),
            layout: Layout::Torch,
            data: vec![fill; torch_shape.iter().product()],
            count: 0,
            grad: Vec::new(),
        }
    }

    pub fn conv_weight(out_c: usize, in_c_per_group: usize, kh: usize, kw: usize) -> Param {
        Param { layout: Layout::Ohwi, ..Param::new(ParamKind::Trainable, &[out_c, in_c_per_group, kh, kw], 0.0) }
    }

    pub fn counter() -> Param {
        Param {
            kind: ParamKind::Counter,
            torch_shape: vec![],
            layout: Layout::Torch,
            data: vec![],
            count: 0,
            grad: Vec::new(),
        }
    }

    pub fn numel(&self) -> usize {
        self.torch_shape.iter().product()
    }

    /// Adds `g` (same layout as `data`) to the accumulated gradient.
    pub fn accumulate_grad(&mut self, g: &[f32]) {
        assert_eq!(g.len(), self.data.len(), "gradient size must match the parameter");
        if self.grad.is_empty() {
            self.grad = g.to_vec();
        } else {
            self.grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
    }

    pub fn zero_grad(&mut self) {
        self.grad.clear();
    }

    /// The gradient in PyTorch's memory order (zeros if none was computed).
    pub fn grad_torch_order(&self) -> Vec<f32> {
        if self.grad.is_empty() {
            return vec![0.0; self.numel()];
        }
        let as_data = Param { data: self.grad.clone(), grad: Vec::new(), ..self.clone_shape() };
        as_data.to_torch_order()
    }

    fn clone_shape(&self) -> Param {
        Param {
            kind: self.kind,
            torch_shape: self.torch_shape.clone(),
            layout: self.layout,
            data: Vec::new(),
            count: 0,
            grad: Vec::new(),
        }
    }

    /// Sets the values from PyTorch's memory order. `values.len()` must equal `numel()`.
    pub fn set_from_torch_order(&mut self, values: &[f32]) {
        assert_eq!(values.len(), self.numel());
        match self.layout {
            Layout::Torch => self.data.copy_from_slice(values),
            Layout::Ohwi => {
                let [o, i, kh, kw] = self.dims4();
                for oc in 0..o {
                    for ic in 0..i {
                        for y in 0..kh {
                            for x in 0..kw {
                                self.data[((oc * kh + y) * kw + x) * i + ic] =
                                    values[((oc * i + ic) * kh + y) * kw + x];
                            }
                        }
                    }
                }
            }
        }
    }

    /// The values in PyTorch's memory order.
    pub fn to_torch_order(&self) -> Vec<f32> {
        match self.layout {
            Layout::Torch => self.data.clone(),
            Layout::Ohwi => {
                let [o, i, kh, kw] = self.dims4();
                let mut out = vec![0.0; self.data.len()];
                for oc in 0..o {
                    for ic in 0..i {
                        for y in 0..kh {
                            for x in 0..kw {
                                out[((oc * i + ic) * kh + y) * kw + x] = self.data[((oc * kh + y) * kw + x) * i + ic];
                            }
                        }
                    }
                }
                out
            }
        }
    }

    fn dims4(&self) -> [usize; 4] {
        [self.torch_shape[0], self.torch_shape[1], self.torch_shape[2], self.torch_shape[3]]
    }
}

/// A module whose tensors can be walked by name, in torchvision's state_dict order.
pub trait Parameterized {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param));
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param));
}

/// `prefix.name`, or `name` at the top.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Number of trainable values (what `sum(p.numel() for p in model.parameters())` counts).
pub fn count_trainable(m: &dyn Parameterized) -> usize {
    let mut n = 0;
    m.visit("", &mut |_, p| {
        if p.kind == ParamKind::Trainable {
            n += p.numel()
        }
    });
    n
}

/// The module's state_dict, torchvision's names, order and layouts.
pub fn to_state_dict(m: &dyn Parameterized) -> StateDict {
    let mut sd = StateDict::new();
    m.visit("", &mut |name, p| {
        let values = match p.kind {
            ParamKind::Counter => TensorValues::I64(vec![p.count]),
            _ => TensorValues::F32(p.to_torch_order()),
        };
        sd.insert(name, StoredTensor { shape: p.torch_shape.clone(), values });
    });
    sd
}

/// What a non-strict load skipped.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub unexpected: Vec<String>,
}

/// Copies `sd` into the module. Every float tensor of the module must be present with the
/// same shape; `num_batches_tracked` may be absent (not all exporters keep it). Keys the
/// module does not have are an error when `strict`, else reported.
pub fn load_state_dict(m: &mut dyn Parameterized, sd: &StateDict, strict: bool) -> Result<LoadReport, WeightsError> {
    let mut first_error: Option<WeightsError> = None;
    let mut seen = std::collections::HashSet::new();
    m.visit_mut("", &mut |name, p| {
        if first_error.is_some() {
            return;
        }
        seen.insert(name.to_string());
        let Some(stored) = sd.get(name) else {
            if p.kind != ParamKind::Counter {
                first_error = Some(WeightsError::MissingKey { key: name.to_string(), expected: p.torch_shape.clone() });
            }
            return;
        };
        // A scalar counter may be saved as shape [] or [1].
        let shape_ok = stored.shape == p.torch_shape || (p.kind == ParamKind::Counter && stored.numel() == 1);
        if !shape_ok {
            first_error = Some(WeightsError::ShapeMismatch {
                key: name.to_string(),
                expected: p.torch_shape.clone(),
                found: stored.shape.clone(),
            });
            return;
        }
        match (&stored.values, p.kind) {
            (TensorValues::I64(v), ParamKind::Counter) => p.count = v.first().copied().unwrap_or(0),
            (TensorValues::F32(v), ParamKind::Counter) => p.count = v.first().map_or(0, |&x| x as i64),
            (TensorValues::F32(v), _) if v.len() == p.numel() => p.set_from_torch_order(v),
            (TensorValues::F32(_), _) => {
                first_error = Some(WeightsError::ShapeMismatch {
                    key: name.to_string(),
                    expected: p.torch_shape.clone(),
                    found: stored.shape.clone(),
                })
            }
            (TensorValues::I64(_), _) => first_error = Some(WeightsError::NotFloat { key: name.to_string() }),
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    let unexpected: Vec<String> = sd.keys().filter(|k| !seen.contains(*k)).map(str::to_string).collect();
    if strict {
        if let Some(key) = unexpected.first() {
            let shape = sd.get(key).map(|t| t.shape.clone()).unwrap_or_default();
            return Err(WeightsError::UnexpectedKey { key: key.clone(), shape });
        }
    }
    Ok(LoadReport { unexpected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ohwi_round_trips_torch_order() {
        let mut p = Param::conv_weight(2, 3, 2, 2);
        let torch: Vec<f32> = (0..24).map(|v| v as f32).collect();
        p.set_from_torch_order(&torch);
        // out 0, y 0, x 1, in 2 -> torch index ((0*3+2)*2+0)*2+1 = 9
        // OHWI index of (o 0, y 0, x 1, i 2) = (x 1) * 3 + (i 2)
        assert_eq!(p.data[3 + 2], 9.0);
        assert_eq!(p.to_torch_order(), torch);
    }
}
