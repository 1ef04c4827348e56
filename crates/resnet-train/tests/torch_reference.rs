//! Compares SGD, gradient clipping and the LR schedules with PyTorch 2.15, from the fixtures
//! that tools/reference/gen_optim_fixtures.py wrote into tools/reference/fixtures/optim/.
//! Run with `--nocapture` to see the measured differences.

use std::path::PathBuf;

use resnet_core::weights::safetensors_io::load_safetensors;
use resnet_core::{StateDict, TensorValues};
use resnet_train::*;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/fixtures/optim")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tensor(dict: &StateDict, key: &str) -> Vec<f32> {
    match &dict.get(key).unwrap_or_else(|| panic!("fixture has no `{key}`")).values {
        TensorValues::F32(v) => v.clone(),
        TensorValues::I64(_) => panic!("`{key}` is not f32"),
    }
}

/// Largest differences between `got` and torch's `want`: (absolute, relative, in ulps).
#[derive(Default)]
struct Diff {
    abs: f64,
    rel: f64,
    ulps: u32,
    values: usize,
}

impl Diff {
    fn add(&mut self, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (&g, &w) in got.iter().zip(want) {
            let abs = (g as f64 - w as f64).abs();
            self.abs = self.abs.max(abs);
            if w != 0.0 {
                self.rel = self.rel.max(abs / (w as f64).abs());
            }
            self.ulps = self.ulps.max(ulps(g, w));
            self.values += 1;
        }
    }
}

fn ulps(a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits < 0x8000_0000 {
            bits
        } else {
            0x8000_0000 - bits
        }
    };
    (key(a) - key(b)).unsigned_abs() as u32
}

struct SgdFixture {
    dict: StateDict,
    params: Vec<(String, bool)>,
    lrs: Vec<f64>,
    variants: serde_json::Map<String, Value>,
}

fn sgd_fixture() -> SgdFixture {
    let dict = load_safetensors(&fixtures().join("sgd.safetensors")).unwrap();
    let meta = json("sgd.json");
    let params = meta["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["decay"].as_bool().unwrap()))
        .collect();
    let lrs = meta["lr_bits"].as_array().unwrap().iter().map(|b| f64::from_bits(b.as_u64().unwrap())).collect();
    let variants = meta["variants"].as_object().unwrap().clone();
    SgdFixture { dict, params, lrs, variants }
}

fn sgd_config(hp: &Value) -> SgdConfig {
    SgdConfig {
        momentum: hp["momentum"].as_f64().unwrap(),
        dampening: hp["dampening"].as_f64().unwrap(),
        nesterov: hp["nesterov"].as_bool().unwrap(),
        weight_decay: hp["weight_decay"].as_f64().unwrap(),
    }
}

/// Runs steps `steps` of the fixture's gradient sequence on `values`, comparing after each.
fn run_steps(
    f: &SgdFixture,
    variant: &str,
    sgd: &mut Sgd,
    values: &mut [Vec<f32>],
    steps: std::ops::Range<usize>,
) -> Diff {
    let mut diff = Diff::default();
    for k in steps {
        let grads: Vec<Vec<f32>> = f.params.iter().map(|(n, _)| tensor(&f.dict, &format!("grad.{k}.{n}"))).collect();
        let mut slots: Vec<ParamSlot> = f
            .params
            .iter()
            .zip(values.iter_mut())
            .zip(&grads)
            .map(|(((name, decay), value), grad)| ParamSlot { name, value, grad, decay: *decay })
            .collect();
        sgd.step(f.lrs[k], &mut slots).unwrap();
        for ((name, _), value) in f.params.iter().zip(values.iter()) {
            diff.add(value, &tensor(&f.dict, &format!("{variant}.{k}.param.{name}")));
            let buf_key = format!("{variant}.{k}.buf.{name}");
            if f.dict.contains(&buf_key) {
                diff.add(sgd.momentum_buffer(name).unwrap(), &tensor(&f.dict, &buf_key));
            } else {
                assert!(sgd.momentum_buffer(name).is_none());
            }
        }
    }
    diff
}

#[test]
fn sgd_matches_torch_bit_for_bit() {
    let f = sgd_fixture();
    assert_eq!(f.variants.len(), 4);
    for (variant, hp) in &f.variants {
        let mut sgd = Sgd::new(sgd_config(hp)).unwrap();
        let mut values: Vec<Vec<f32>> = f.params.iter().map(|(n, _)| tensor(&f.dict, &format!("init.{n}"))).collect();
        let d = run_steps(&f, variant, &mut sgd, &mut values, 0..f.lrs.len());
        println!(
            "SGD {variant:9} vs torch: {} values over 5 steps, max abs {:e}, max rel {:e}, max {} ulp",
            d.values, d.abs, d.rel, d.ulps
        );
        assert_eq!(d.ulps, 0, "{variant}: not bit-identical (max abs {:e})", d.abs);
    }
}

#[test]
fn sgd_resumed_from_its_state_dict_continues_identically() {
    let f = sgd_fixture();
    let hp = &f.variants["nesterov"];
    let mut sgd = Sgd::new(sgd_config(hp)).unwrap();
    let mut values: Vec<Vec<f32>> = f.params.iter().map(|(n, _)| tensor(&f.dict, &format!("init.{n}"))).collect();
    run_steps(&f, "nesterov", &mut sgd, &mut values, 0..2);
    let mut resumed = Sgd::new(sgd_config(hp)).unwrap();
    resumed.load_state_dict(&sgd.state_dict()).unwrap();
    let d = run_steps(&f, "nesterov", &mut resumed, &mut values, 2..f.lrs.len());
    assert_eq!(d.ulps, 0);
}

#[test]
fn clip_grad_norm_matches_torch() {
    let dict = load_safetensors(&fixtures().join("clip.safetensors")).unwrap();
    let meta = json("clip.json");
    for (case, spec) in meta["cases"].as_object().unwrap() {
        let count = spec["count"].as_u64().unwrap() as usize;
        let mut grads: Vec<Vec<f32>> = (0..count).map(|i| tensor(&dict, &format!("{case}.in.{i}"))).collect();
        let mut views: Vec<&mut [f32]> = grads.iter_mut().map(Vec::as_mut_slice).collect();
        let total = clip_grad_norm(&mut views, spec["max_norm"].as_f64().unwrap());
        let want_total = tensor(&dict, &format!("{case}.total"))[0];
        let mut d = Diff::default();
        for (i, g) in grads.iter().enumerate() {
            d.add(g, &tensor(&dict, &format!("{case}.out.{i}")));
        }
        println!(
            "clip {case:9}: total {total} (torch {want_total}, {} ulp), {} gradients max {} ulp, max rel {:e}",
            ulps(total, want_total),
            d.values,
            d.ulps,
            d.rel
        );
        assert_eq!(total.to_bits(), want_total.to_bits(), "{case}");
        assert_eq!(d.ulps, 0, "{case}");
    }
}

#[test]
fn l2_norm_matches_torch_for_every_length() {
    let dict = load_safetensors(&fixtures().join("clip.safetensors")).unwrap();
    let meta = json("clip.json");
    let lengths: Vec<u64> = meta["norm_lengths"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
    let mut worst = 0;
    for n in &lengths {
        let got = l2_norm(&tensor(&dict, &format!("norm.in.{n}")));
        let want = tensor(&dict, &format!("norm.out.{n}"))[0];
        worst = worst.max(ulps(got, want));
        assert_eq!(got.to_bits(), want.to_bits(), "length {n}: {got} vs torch {want}");
    }
    println!("l2_norm vs torch.linalg.vector_norm: {} lengths, max {worst} ulp", lengths.len());
}

#[test]
fn schedules_match_torch_lr_schedulers_exactly() {
    let all = json("schedules.json");
    for (name, case) in all.as_object().unwrap() {
        let spec = LrScheduleSpec {
            base_lr: case["base_lr"].as_f64().unwrap(),
            decay: serde_json::from_value(case["decay"].clone()).unwrap(),
            warmup: case.get("warmup").map(|w| serde_json::from_value(w.clone()).unwrap()),
            granularity: Granularity::Step,
        };
        let want: Vec<f64> =
            case["lr_bits"].as_array().unwrap().iter().map(|b| f64::from_bits(b.as_u64().unwrap())).collect();
        // Positions 0, 1, 2, ... unless the fixture lists which ones it kept.
        let positions: Vec<u64> = match case.get("positions") {
            Some(p) => p.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect(),
            None => (0..want.len() as u64).collect(),
        };
        let schedule = LrSchedule::new(spec.clone()).unwrap();
        let mut worst: f64 = 0.0;
        for (&step, &w) in positions.iter().zip(&want) {
            let got = schedule.lr_at(step);
            worst = worst.max((got - w).abs() / w.abs().max(f64::MIN_POSITIVE));
            assert_eq!(got.to_bits(), w.to_bits(), "{name} at step {step}: {got} vs torch {w}");
        }
        // Asked in reverse (as a resumed run might), from a fresh schedule: the same bits.
        let fresh = LrSchedule::new(spec.clone()).unwrap();
        for (&step, &w) in positions.iter().zip(&want).rev() {
            assert_eq!(fresh.lr_at(step).to_bits(), w.to_bits(), "{name} at step {step}, in reverse");
        }
        // Per-epoch granularity: one position per 3 steps.
        let per_epoch =
            LrSchedule::new(LrScheduleSpec { granularity: Granularity::Epoch { steps_per_epoch: 3 }, ..spec }).unwrap();
        for (&position, &w) in positions.iter().zip(&want) {
            for step in position * 3..position * 3 + 3 {
                assert_eq!(per_epoch.lr_at(step).to_bits(), w.to_bits(), "{name} per epoch, step {step}");
            }
        }
        println!("schedule {name:18}: {} positions, max rel diff from torch {worst:e}", want.len());
    }
}
