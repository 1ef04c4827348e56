//! Stochastic gradient descent with exactly `torch.optim.SGD`'s arithmetic.
//!
//! The optimizer knows nothing about models: each step is handed [`ParamSlot`]s (a name, the
//! values, their gradient and whether weight decay applies) and keeps one momentum buffer per
//! name. For every element, in f32, in torch's order (`_single_tensor_sgd`; the foreach path
//! does the same per element):
//!
//! ```text
//! d = g                                   no weight decay, or decay == false
//! d = fma(p, weight_decay, g)             grad.add(param, alpha=weight_decay)
//! b = d                                   first step: the buffer starts as a copy of d
//! b = b * momentum + d                    buf.mul_(momentum).add_(d)        (dampening 0)
//! b = fma(d, 1 - dampening, b * momentum) buf.mul_(momentum).add_(d, alpha=1 - dampening)
//! d = fma(b, momentum, d)  if nesterov,   else d = b
//! p = fma(d, -lr, p)                      param.add_(d, alpha=-lr)
//! ```
//!
//! `fma` is a fused multiply-add, which is what PyTorch's CPU `add(x, alpha=a)` kernel executes
//! on every AVX2 or AVX-512 machine (checked element by element against torch 2.15, including
//! the elements past the last full vector; only torch forced to `ATEN_CPU_CAPABILITY=default`
//! rounds the product separately). Hyper-parameters are f64 like torch's Python floats and are
//! rounded to f32 where torch's kernel rounds its `alpha`/scalar: at the operation.

use std::collections::{BTreeMap, HashSet};

use resnet_core::{StateDict, StoredTensor, TensorValues};
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Prefix of the momentum buffers' names in [`Sgd::state_dict`].
pub const MOMENTUM_PREFIX: &str = "momentum.";

/// SGD hyper-parameters except the learning rate, which each [`Sgd::step`] is given (usually
/// from an [`LrSchedule`](crate::LrSchedule)). Defaults are `torch.optim.SGD`'s: all zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// L2 penalty added to the gradient (`grad + weight_decay * param`) of slots with `decay`.
    pub weight_decay: f64,
}

/// One parameter tensor as the optimizer sees it: flat values, a gradient of the same length,
/// and whether weight decay applies. Callers usually pass `decay: false` for BatchNorm weights
/// and biases and for every bias, the common "no weight decay on norm and bias" recipe (two
/// param groups in PyTorch, one with `weight_decay=0`).
#[derive(Debug)]
pub struct ParamSlot<'a> {
    /// Stable key of the momentum buffer, e.g. the state_dict name `layer1.0.conv1.weight`.
    pub name: &'a str,
    pub value: &'a mut [f32],
    pub grad: &'a [f32],
    pub decay: bool,
}

/// `torch.optim.SGD` with momentum buffers keyed by parameter name.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: SgdConfig,
    buffers: BTreeMap<String, Vec<f32>>,
}

impl Sgd {
    /// Checks the settings as `torch.optim.SGD` does.
    pub fn new(config: SgdConfig) -> Result<Sgd, TrainError> {
        let SgdConfig { momentum, dampening, nesterov, weight_decay } = config;
        let bad = |what: String| Err(TrainError::Config(what));
        if !(momentum >= 0.0 && momentum.is_finite()) {
            return bad(format!("SGD momentum must be a finite value >= 0, got {momentum}"));
        }
        if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
            return bad(format!("SGD weight decay must be a finite value >= 0, got {weight_decay}"));
        }
        if !dampening.is_finite() {
            return bad(format!("SGD dampening must be finite, got {dampening}"));
        }
        if nesterov && (momentum <= 0.0 || dampening != 0.0) {
            return bad("Nesterov momentum requires a momentum and zero dampening".into());
        }
        Ok(Sgd { config, buffers: BTreeMap::new() })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The momentum buffer of `name`, once a step with momentum has created it.
    pub fn momentum_buffer(&self, name: &str) -> Option<&[f32]> {
        self.buffers.get(name).map(Vec::as_slice)
    }

    /// Updates every slot in place with learning rate `lr`.
    ///
    /// All slots are checked first (gradient length, unique names, a loaded buffer's length),
    /// so an error leaves every value and buffer untouched. A parameter without a gradient this
    /// step (torch's `grad is None`) is simply left out of `slots`; its buffer is kept.
    pub fn step(&mut self, lr: f64, slots: &mut [ParamSlot]) -> Result<(), TrainError> {
        if !(lr >= 0.0 && lr.is_finite()) {
            return Err(TrainError::Config(format!("learning rate must be a finite value >= 0, got {lr}")));
        }
        let mut seen = HashSet::with_capacity(slots.len());
        for slot in slots.iter() {
            if slot.value.len() != slot.grad.len() {
                let (v, g) = (slot.value.len(), slot.grad.len());
                return Err(TrainError::slot(slot.name, format!("{v} values but a gradient of {g}")));
            }
            if !seen.insert(slot.name) {
                return Err(TrainError::slot(slot.name, "appears twice in one step"));
            }
            if let Some(buf) = self.buffers.get(slot.name) {
                if buf.len() != slot.value.len() {
                    return Err(TrainError::slot(
                        slot.name,
                        format!(
                            "{} values but its momentum buffer has {}; was the optimizer state saved for another model?",
                            slot.value.len(),
                            buf.len()
                        ),
                    ));
                }
            }
        }
        let c = &self.config;
        let base = Coefs {
            weight_decay: c.weight_decay as f32,
            momentum: c.momentum as f32,
            one_minus_dampening: (1.0 - c.dampening) as f32,
            dampened: 1.0 - c.dampening != 1.0,
            nesterov: c.nesterov,
            neg_lr: (-lr) as f32,
            decay: false,
        };
        for slot in slots.iter_mut() {
            let coefs = Coefs { decay: slot.decay && c.weight_decay != 0.0, ..base };
            let momentum = if c.momentum == 0.0 {
                Momentum::None
            } else if let Some(buf) = self.buffers.get_mut(slot.name) {
                Momentum::Running(buf)
            } else {
                let buf = self.buffers.entry(slot.name.to_string()).or_insert_with(|| vec![0.0; slot.value.len()]);
                Momentum::First(buf)
            };
            update(slot.value, slot.grad, momentum, &coefs);
        }
        Ok(())
    }

    /// The momentum buffers as `momentum.<name>` f32 tensors of shape `[len]`, sorted by name.
    pub fn state_dict(&self) -> StateDict {
        let mut dict = StateDict::new();
        for (name, buf) in &self.buffers {
            dict.insert(format!("{MOMENTUM_PREFIX}{name}"), StoredTensor::f32(vec![buf.len()], buf.clone()));
        }
        dict
    }

    /// Replaces all momentum buffers with those of `dict` (as written by [`Sgd::state_dict`]).
    /// Lengths are checked against the parameters at the next [`Sgd::step`].
    pub fn load_state_dict(&mut self, dict: &StateDict) -> Result<(), TrainError> {
        let mut buffers = BTreeMap::new();
        for (key, tensor) in dict.iter() {
            let Some(name) = key.strip_prefix(MOMENTUM_PREFIX) else {
                return Err(TrainError::slot(
                    key,
                    format!("not an SGD state entry (expected `{MOMENTUM_PREFIX}<name>`)"),
                ));
            };
            let TensorValues::F32(values) = &tensor.values else {
                return Err(TrainError::slot(name, "the momentum buffer holds integers, not f32"));
            };
            buffers.insert(name.to_string(), values.clone());
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// Per-step constants, rounded to f32 as torch's kernels round their scalars.
#[derive(Clone, Copy)]
struct Coefs {
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
    /// `1 - dampening != 1`: torch's `add_(d, alpha=1)` is a plain add, identical to the fma.
    dampened: bool,
    nesterov: bool,
    neg_lr: f32,
    /// Weight decay applies to this slot (and is non-zero).
    decay: bool,
}

enum Momentum<'b> {
    None,
    /// No buffer yet: it becomes a copy of the (decayed) gradient.
    First(&'b mut [f32]),
    Running(&'b mut [f32]),
}

/// Chooses the FMA-enabled build of the update loop when the CPU has it; both builds compute
/// identical values (`f32::mul_add` is always fused), the FMA one only lets the loop vectorise
/// instead of calling `fmaf` per element.
fn update(value: &mut [f32], grad: &[f32], momentum: Momentum, c: &Coefs) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        unsafe { update_fma(value, grad, momentum, c) };
        return;
    }
    update_loop(value, grad, momentum, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn update_fma(value: &mut [f32], grad: &[f32], momentum: Momentum, c: &Coefs) {
    update_loop(value, grad, momentum, c)
}

#[inline(always)]
fn update_loop(value: &mut [f32], grad: &[f32], momentum: Momentum, c: &Coefs) {
    let decayed = |p: f32, g: f32| if c.decay { p.mul_add(c.weight_decay, g) } else { g };
    let nesterov = |b: f32, d: f32| if c.nesterov { b.mul_add(c.momentum, d) } else { b };
    match momentum {
        Momentum::None => {
            for (p, &g) in value.iter_mut().zip(grad) {
                *p = decayed(*p, g).mul_add(c.neg_lr, *p);
            }
        }
        Momentum::First(buf) => {
            for ((p, &g), b) in value.iter_mut().zip(grad).zip(buf.iter_mut()) {
                let d = decayed(*p, g);
                *b = d;
                *p = nesterov(d, d).mul_add(c.neg_lr, *p);
            }
        }
        Momentum::Running(buf) => {
            for ((p, &g), b) in value.iter_mut().zip(grad).zip(buf.iter_mut()) {
                let d = decayed(*p, g);
                let scaled = *b * c.momentum;
                *b = if c.dampened { d.mul_add(c.one_minus_dampening, scaled) } else { scaled + d };
                *p = nesterov(*b, d).mul_add(c.neg_lr, *p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(momentum: f64, weight_decay: f64, nesterov: bool) -> SgdConfig {
        SgdConfig { momentum, dampening: 0.0, nesterov, weight_decay }
    }

    fn step(sgd: &mut Sgd, lr: f64, name: &str, value: &mut [f32], grad: &[f32], decay: bool) {
        sgd.step(lr, &mut [ParamSlot { name, value, grad, decay }]).unwrap();
    }

    #[test]
    fn first_step_starts_the_buffer_at_the_gradient() {
        let mut sgd = Sgd::new(config(0.9, 0.0, false)).unwrap();
        let mut w = [1.0f32, -2.0];
        step(&mut sgd, 0.5, "w", &mut w, &[0.25, 1.0], true);
        assert_eq!(sgd.momentum_buffer("w").unwrap(), [0.25, 1.0]);
        assert_eq!(w, [0.875, -2.5]);
        step(&mut sgd, 0.5, "w", &mut w, &[0.25, 1.0], true);
        // b = 0.9 * b + g, rounded as f32.
        let b = [0.25f32 * 0.9 + 0.25, 1.0f32 * 0.9 + 1.0];
        assert_eq!(sgd.momentum_buffer("w").unwrap(), b);
        assert_eq!(w, [b[0].mul_add(-0.5, 0.875), b[1].mul_add(-0.5, -2.5)]);
    }

    #[test]
    fn weight_decay_only_where_the_slot_asks_for_it() {
        let mut sgd = Sgd::new(config(0.0, 0.1, false)).unwrap();
        let (mut a, mut b) = ([2.0f32], [2.0f32]);
        sgd.step(
            1.0,
            &mut [
                ParamSlot { name: "a", value: &mut a, grad: &[0.0], decay: true },
                ParamSlot { name: "b", value: &mut b, grad: &[0.0], decay: false },
            ],
        )
        .unwrap();
        assert_eq!(a, [2.0 - 0.2]);
        assert_eq!(b, [2.0]);
        assert!(sgd.momentum_buffer("a").is_none(), "no buffers without momentum");
    }

    #[test]
    fn nesterov_looks_ahead_by_momentum_times_the_buffer() {
        let mut sgd = Sgd::new(config(0.5, 0.0, true)).unwrap();
        let mut w = [0.0f32];
        step(&mut sgd, 1.0, "w", &mut w, &[1.0], false);
        assert_eq!(w, [-1.5]); // d = g + 0.5 * b with b = g
        step(&mut sgd, 1.0, "w", &mut w, &[1.0], false);
        assert_eq!(sgd.momentum_buffer("w").unwrap(), [1.5]);
        assert_eq!(w, [-1.5 - 1.75]);
    }

    #[test]
    fn settings_are_checked_like_torch() {
        let err = |c: SgdConfig| Sgd::new(c).unwrap_err().to_string();
        assert!(err(config(0.0, 0.0, true)).contains("Nesterov"));
        assert!(err(SgdConfig { dampening: 0.1, ..config(0.9, 0.0, true) }).contains("Nesterov"));
        assert!(err(config(-0.1, 0.0, false)).contains("momentum"));
        assert!(err(config(0.9, f64::NAN, false)).contains("weight decay"));
        let mut sgd = Sgd::new(config(0.9, 0.0, false)).unwrap();
        let mut w = [0.0f32];
        let e = sgd.step(-1.0, &mut [ParamSlot { name: "w", value: &mut w, grad: &[1.0], decay: true }]);
        assert!(e.unwrap_err().to_string().contains("learning rate"));
    }

    #[test]
    fn bad_slots_are_rejected_before_anything_changes() {
        let mut sgd = Sgd::new(config(0.9, 0.0, false)).unwrap();
        let (mut a, mut b) = ([1.0f32, 2.0], [3.0f32]);
        let msg = sgd
            .step(
                0.1,
                &mut [
                    ParamSlot { name: "a", value: &mut a, grad: &[1.0, 1.0], decay: true },
                    ParamSlot { name: "b", value: &mut b, grad: &[1.0, 1.0], decay: true },
                ],
            )
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`b`") && msg.contains("gradient of 2"), "{msg}");
        assert_eq!((a, b), ([1.0, 2.0], [3.0]));
        assert!(sgd.momentum_buffer("a").is_none());

        let mut a2 = [0.0f32];
        let dup = sgd.step(
            0.1,
            &mut [
                ParamSlot { name: "a", value: &mut a, grad: &[1.0, 1.0], decay: true },
                ParamSlot { name: "a", value: &mut a2, grad: &[1.0], decay: true },
            ],
        );
        assert!(dup.unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn state_dict_round_trip_and_length_check() {
        let mut sgd = Sgd::new(config(0.9, 5e-4, false)).unwrap();
        let mut w = [1.0f32, 2.0, 3.0];
        step(&mut sgd, 0.1, "layer.weight", &mut w, &[0.5, -0.5, 0.25], true);
        let dict = sgd.state_dict();
        assert_eq!(dict.keys().collect::<Vec<_>>(), ["momentum.layer.weight"]);
        let mut fresh = Sgd::new(*sgd.config()).unwrap();
        fresh.load_state_dict(&dict).unwrap();
        assert_eq!(fresh.momentum_buffer("layer.weight"), sgd.momentum_buffer("layer.weight"));

        let mut short = [0.0f32; 2];
        let e =
            fresh.step(0.1, &mut [ParamSlot { name: "layer.weight", value: &mut short, grad: &[0.0; 2], decay: true }]);
        assert!(e.unwrap_err().to_string().contains("another model"));

        let mut bad = StateDict::new();
        bad.insert("velocity.w", StoredTensor::f32(vec![1], vec![0.0]));
        assert!(fresh.load_state_dict(&bad).unwrap_err().to_string().contains("momentum.<name>"));
        bad = StateDict::new();
        bad.insert("momentum.w", StoredTensor { shape: vec![1], values: TensorValues::I64(vec![1]) });
        assert!(fresh.load_state_dict(&bad).unwrap_err().to_string().contains("integers"));
    }
}
