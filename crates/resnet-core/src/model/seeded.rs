//! Seeded weights, identical to tools/reference/prng.py's `seeded_state_dict`, so parity
//! tests need no committed weight files: both sides draw the same values from splitmix64.
//!
//! Walking the state_dict in torchvision's order, every float tensor takes the next
//! `numel` draws, in PyTorch's memory order, from the range below. BatchNorm is randomised
//! (γ in [0.5, 1), β and running mean in [-0.2, 0.2), running var in [0.5, 1.5)) so that
//! eval-mode BN is no identity yet deep nets keep activations of order one.

use super::params::{ParamKind, Parameterized};
use crate::prng::SplitMix64;

/// The `[lo, hi)` range a tensor named `name` with PyTorch shape `shape` is drawn from.
pub fn value_range(name: &str, shape: &[usize]) -> (f64, f64) {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if shape.len() == 4 {
        // Conv weight (OIHW): the Kaiming-uniform bound for ReLU networks.
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        let b = (6.0 / fan_in).sqrt();
        return (-b, b);
    }
    if name.starts_with("fc.") {
        let fan_in = if leaf == "weight" { shape[1] } else { shape[0] } as f64;
        let b = 1.0 / fan_in.sqrt();
        return (-b, b);
    }
    match leaf {
        "weight" => (0.5, 1.0),
        "running_var" => (0.5, 1.5),
        _ => (-0.2, 0.2), // bias, running_mean
    }
}

/// Overwrites every float tensor of `model` with seeded values.
pub fn seed_parameters(model: &mut dyn Parameterized, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    model.visit_mut("", &mut |name, p| {
        if p.kind == ParamKind::Counter {
            return;
        }
        let (lo, hi) = value_range(name, &p.torch_shape);
        let values: Vec<f32> = (0..p.numel()).map(|_| rng.uniform_f32(lo, hi)).collect();
        p.set_from_torch_order(&values);
    });
}

/// `count` seeded values in `[lo, hi)` (fixture inputs).
pub fn seeded_values(seed: u64, count: usize, lo: f64, hi: f64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..count).map(|_| rng.uniform_f32(lo, hi)).collect()
}
