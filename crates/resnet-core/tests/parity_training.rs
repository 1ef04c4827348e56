//! Training-mode parity with PyTorch, from tools/reference/gen_train_fixtures.py: loss,
//! every parameter's gradient, and BatchNorm running statistics after one train-mode
//! forward, for the paper's CIFAR ResNet-20 (4x3x32x32) and torchvision's resnet50
//! (4x3x64x64), seeded weights, input and labels.
//!
//! The weights get +2 on every BN bias so ReLU inputs stay clear of 0 by more than f32
//! rounding (see BN_BIAS_SHIFT), and the generator picks an input with such a margin.
//!
//! Tolerance: each gradient within 1e-4 of its tensor's largest |value| (whole tensors), or
//! for resnet50's big tensors the L2 norm within 1e-4 relative and 32 sampled entries within
//! 1e-4 of the tensor's RMS. f32 sums in different orders (GEMM blocking, BN reductions)
//! over ~50 layers of backward is the only expected difference.

use std::path::PathBuf;

use resnet_core::kernels::loss::softmax_cross_entropy;
use resnet_core::model::params::Parameterized;
use resnet_core::model::seeded::{seed_parameters, seeded_values};
use resnet_core::model::ParamKind;
use resnet_core::prng::SplitMix64;
use resnet_core::{ResNet, Tensor};

const WEIGHT_SEED: u64 = 20161210;
const INPUT_SEED: u64 = 11;
const LABEL_SEED: u64 = 12;
/// Added to every BatchNorm bias after seeding, as gen_train_fixtures.py does, so ReLU
/// inputs keep a margin from 0 larger than f32 rounding (a flipped ReLU mask is a different
/// but equally valid subgradient and would move every gradient upstream of it).
const BN_BIAS_SHIFT: f32 = 2.0;

pub fn seeded_training_weights(model: &mut ResNet) {
    seed_parameters(model, WEIGHT_SEED);
    model.visit_mut("", &mut |name, p| {
        if name.ends_with(".bias") && !name.starts_with("fc.") {
            p.data.iter_mut().for_each(|v| *v += BN_BIAS_SHIFT);
        }
    });
}

pub struct Fixture {
    st: safetensors::tensor::SafeTensors<'static>,
}

impl Fixture {
    pub fn load(arch: &str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tools/reference/fixtures/training")
            .join(format!("{arch}.safetensors"));
        let bytes: &'static [u8] = Box::leak(std::fs::read(path).expect("fixture").into_boxed_slice());
        Fixture { st: safetensors::SafeTensors::deserialize(bytes).expect("fixture parses") }
    }

    pub fn get(&self, name: &str) -> Option<Vec<f32>> {
        let view = self.st.tensor(name).ok()?;
        Some(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

pub fn seeded_batch(batch: usize, size: usize, classes: usize) -> (Tensor, Vec<usize>) {
    let nchw = seeded_values(INPUT_SEED, batch * 3 * size * size, -2.0, 2.0);
    let x = Tensor::nchw_to_nhwc([batch, 3, size, size], &nchw);
    let mut rng = SplitMix64::new(LABEL_SEED);
    let labels = (0..batch).map(|_| (rng.next_u64() % classes as u64) as usize).collect();
    (x, labels)
}

/// Compares `ours` (PyTorch order) with the fixture's `{prefix}.{name}` or its
/// `{prefix}_norm`/`{prefix}_sample` pair; returns the relative error seen.
pub fn compare(fx: &Fixture, prefix: &str, name: &str, ours: &[f32], floor: f64) -> f64 {
    if let Some(reference) = fx.get(&format!("{prefix}.{name}")) {
        assert_eq!(reference.len(), ours.len(), "{name}");
        let scale = reference.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(floor).max(1e-12);
        let diff = ours.iter().zip(&reference).fold(0.0f64, |m, (a, b)| m.max((a - b).abs() as f64));
        return diff / scale;
    }
    let norm_ref =
        fx.get(&format!("{prefix}_norm.{name}")).unwrap_or_else(|| panic!("{prefix} {name} missing"))[0] as f64;
    let samples = fx.get(&format!("{prefix}_sample.{name}")).unwrap();
    let norm: f64 = ours.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
    let rms = (norm_ref / (ours.len() as f64).sqrt()).max(floor);
    let mut worst = (norm - norm_ref).abs() / norm_ref.max(1e-12);
    for (i, &r) in samples.iter().enumerate() {
        let ours_i = ours[i * ours.len() / samples.len()];
        worst = worst.max((ours_i - r).abs() as f64 / rms.max(1e-12));
    }
    worst
}

fn check_gradients(arch: &str, mut model: ResNet, batch: usize, size: usize) {
    let fx = Fixture::load(arch);
    seeded_training_weights(&mut model);
    let classes = model.config.num_classes;
    let (x, labels) = seeded_batch(batch, size, classes);
    let (logits, cache) = model.forward_train(&x).unwrap();
    let (loss, grad_logits) = softmax_cross_entropy(&logits, &labels, 0.0).unwrap();
    let loss_ref = fx.get("loss").unwrap()[0];
    eprintln!("{arch}: loss {loss} vs torch {loss_ref}");
    assert!((loss - loss_ref).abs() <= 1e-5 * loss_ref.abs().max(1.0), "{arch}: loss {loss} vs {loss_ref}");
    model.backward(&grad_logits, cache);

    // Gradients that are zero up to rounding (a BN bias whose every path ends in another BN's
    // mean subtraction, e.g. the stem's bn1.bias in resnet50: true value 0, both sides ~1e-8)
    // are measured against 1e-3 of the largest gradient in the network, not against
    // themselves. Every tensor with a real gradient has max|ref| far above this floor.
    let mut largest = 0.0f64;
    model.visit("", &mut |_, p| largest = p.grad.iter().fold(largest, |m, g| m.max(g.abs() as f64)));
    let floor = 1e-3 * largest;
    let mut worst_grad = (0.0, String::new());
    let mut worst_running = (0.0, String::new());
    model.visit("", &mut |name, p| match p.kind {
        ParamKind::Trainable => {
            let e = compare(&fx, "grad", name, &p.grad_torch_order(), floor);
            if e > worst_grad.0 {
                worst_grad = (e, name.to_string());
            }
        }
        ParamKind::Buffer => {
            let e = compare(&fx, "running", name, &p.to_torch_order(), 0.0);
            if e > worst_running.0 {
                worst_running = (e, name.to_string());
            }
        }
        ParamKind::Counter => assert_eq!(p.count, 1, "{name}"),
    });
    eprintln!(
        "{arch}: worst gradient error {:.2e} ({}), running stats {:.2e} ({})",
        worst_grad.0, worst_grad.1, worst_running.0, worst_running.1
    );
    assert!(worst_grad.0 <= 1e-4, "{arch}: gradient of {} off by {:.2e}", worst_grad.1, worst_grad.0);
    assert!(worst_running.0 <= 1e-5, "{arch}: running stat {} off by {:.2e}", worst_running.1, worst_running.0);
}

#[test]
fn cifar_resnet20_gradients_equal_pytorch() {
    check_gradients("resnet20", ResNet::from_name("resnet20", 10).unwrap(), 4, 32);
}

#[test]
fn resnet50_gradients_equal_pytorch() {
    check_gradients("resnet50", ResNet::from_name("resnet50", 1000).unwrap(), 4, 64);
}
