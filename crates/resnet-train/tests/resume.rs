//! An interrupted run, resumed, ends with exactly the parameters of an uninterrupted one:
//! model, BatchNorm statistics and momentum buffers, bit for bit, with worker threads on.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use resnet_core::model::seeded::seed_parameters;
use resnet_core::prng::SplitMix64;
use resnet_core::weights::{load_state_dict, StateDict};
use resnet_core::{ResNet, ResNetConfig};
use resnet_data::{ArrayDataset, Augment, Dataset, Normalization};
use resnet_train::{
    load_checkpoint, train, Decay, Granularity, LrSchedule, LrScheduleSpec, SgdConfig, TrainOptions, Warmup,
};

fn tiny_dataset(n: usize, seed: u64) -> Arc<dyn Dataset> {
    let mut rng = SplitMix64::new(seed);
    let pixels: Vec<u8> = (0..n * 8 * 8).map(|_| (rng.next_u64() % 256) as u8).collect();
    let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let ds = ArrayDataset::from_u8_hwc(pixels, [n, 8, 8, 1], labels, 3, Normalization::new(&[0.5], &[0.25]))
        .expect("valid tiny data set");
    Arc::new(ds)
}

fn model() -> ResNet {
    let config = ResNetConfig::from_name("resnet20").unwrap().with_in_channels(1).with_num_classes(3);
    let mut m = ResNet::new(config).unwrap();
    seed_parameters(&mut m, 3);
    m
}

fn options(run_dir: &Path, max_steps: Option<u64>) -> TrainOptions {
    let spec = LrScheduleSpec {
        base_lr: 0.05,
        decay: Decay::Cosine { t_max: 15, eta_min: 0.0 },
        warmup: Some(Warmup { length: 2, start_factor: 0.1 }),
        granularity: Granularity::Step,
    };
    TrainOptions {
        epochs: 3,
        max_steps,
        batch_size: 4,
        sgd: SgdConfig { momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 5e-4 },
        schedule: LrSchedule::new(spec).unwrap(),
        no_decay_bn_bias: true,
        label_smoothing: 0.1,
        clip_grad_norm: Some(5.0),
        freeze_backbone: false,
        seed: 9,
        shuffle: true,
        augment: Augment::RandomCrop { padding: 2, flip: true },
        eval_augment: Augment::None,
        workers: 2,
        log_every: 1,
        run_dir: run_dir.to_path_buf(),
        progress: false,
    }
}

/// A fresh, empty directory for one test, removed with everything in it when dropped.
fn scratch(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(&format!("resnet-train-resume-{name}-")).tempdir();
    dir.expect("a scratch directory in the temp directory")
}

fn assert_same(a: &StateDict, b: &StateDict, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: different key sets");
    for (k, t) in a.iter() {
        assert_eq!(Some(t), b.get(k), "{what}: `{k}` differs");
    }
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted_run() {
    let (train_set, test_set) = (tiny_dataset(20, 1), tiny_dataset(8, 2));
    let never = AtomicBool::new(false);

    let whole_dir = scratch("whole");
    let whole = whole_dir.path();
    let mut m = model();
    let s = train(&mut m, train_set.clone(), Some(test_set.clone()), &options(whole, None), false, &never).unwrap();
    assert_eq!(s.steps, 15, "3 epochs of 5 batches");

    // Stop mid-epoch (step 7 of 15, inside epoch 2) as --max-steps does, then resume.
    let parts_dir = scratch("parts");
    let parts = parts_dir.path();
    let mut m1 = model();
    train(&mut m1, train_set.clone(), Some(test_set.clone()), &options(parts, Some(7)), false, &never).unwrap();
    // The interrupt path (Ctrl-C): stops after the next step and checkpoints.
    let stop_now = AtomicBool::new(true);
    let mut m2 = model();
    let s2 = train(&mut m2, train_set.clone(), Some(test_set.clone()), &options(parts, None), true, &stop_now).unwrap();
    assert!(s2.interrupted && s2.steps == 8, "interrupt after one more step: {s2:?}");
    let mut m3 = model();
    let s3 = train(&mut m3, train_set, Some(test_set), &options(parts, None), true, &never).unwrap();
    assert_eq!(s3.steps, 15);

    let read = |dir: &Path| load_state_dict(&dir.join("last.safetensors")).unwrap();
    assert_same(&read(whole), &read(parts), "last.safetensors");
    let (cw, cp) = (load_checkpoint(whole).unwrap(), load_checkpoint(parts).unwrap());
    assert_same(&cw.optimizer.state_dict(), &cp.optimizer.state_dict(), "momentum buffers");
    assert_eq!(cw.train_state, cp.train_state);
}
