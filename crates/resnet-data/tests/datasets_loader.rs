//! The loader and augmentation: batches are bit-identical for any number of workers, resuming
//! from batch k equals the tail of the epoch, shuffling and drop_last behave, augmentations
//! produce the right shapes and pixels, and errors (even panics) surface instead of hanging.

use std::collections::BTreeSet;
use std::sync::Arc;

use resnet_data::augment::apply;
use resnet_data::{
    random_subset, split_holdout, ArrayDataset, Augment, Batch, Dataset, DatasetError, Loader, LoaderConfig,
    Normalization, Pixels, Rng, Sample, Subset,
};

const N: usize = 37;
const H: usize = 6;
const W: usize = 5;
const C: usize = 3;

fn pixel(i: usize, y: usize, x: usize, c: usize) -> u8 {
    ((i * 31 + y * 7 + x * 3 + c * 101) % 256) as u8
}

fn normalization() -> Normalization {
    Normalization::new(&[0.25, 0.5, 0.75], &[0.5, 0.25, 0.125])
}

fn toy() -> Arc<dyn Dataset> {
    let pixels = (0..N)
        .flat_map(|i| (0..H).flat_map(move |y| (0..W).flat_map(move |x| (0..C).map(move |c| pixel(i, y, x, c)))))
        .collect();
    let labels = (0..N).map(|i| i % 5).collect();
    Arc::new(ArrayDataset::from_u8_hwc(pixels, [N, H, W, C], labels, 5, normalization()).unwrap())
}

fn config(workers: usize, augment: Augment) -> LoaderConfig {
    LoaderConfig { batch_size: 8, workers, prefetch: 2, augment, ..LoaderConfig::new(8, 1234) }
}

fn collect(loader: &Loader, epoch: u64, from: usize) -> Vec<Batch> {
    loader.epoch_from(epoch, from).collect::<Result<_, _>>().unwrap()
}

/// A batch's image bits, labels, indices and shape.
type BatchBits = (Vec<u32>, Vec<usize>, Vec<usize>, [usize; 4]);

fn bits(batches: &[Batch]) -> Vec<BatchBits> {
    let b = batches.iter();
    b.map(|b| (b.images.iter().map(|v| v.to_bits()).collect(), b.labels.clone(), b.indices.clone(), b.shape)).collect()
}

#[test]
fn batches_are_identical_for_any_worker_count() {
    for augment in [Augment::cifar(), Augment::None] {
        let reference = collect(&Loader::new(toy(), config(0, augment.clone())).unwrap(), 3, 0);
        assert_eq!(reference.len(), 5);
        for workers in [1, 3, 8] {
            let loader = Loader::new(toy(), config(workers, augment.clone())).unwrap();
            assert_eq!(bits(&collect(&loader, 3, 0)), bits(&reference), "{workers} workers, {augment:?}");
        }
        let loader = Loader::new(toy(), config(3, augment.clone())).unwrap();
        assert_ne!(bits(&collect(&loader, 4, 0)), bits(&reference), "epochs must differ");
        let other_seed = Loader::new(toy(), LoaderConfig { seed: 99, ..config(3, augment) }).unwrap();
        assert_ne!(bits(&collect(&other_seed, 3, 0)), bits(&reference), "seeds must differ");
    }
}

#[test]
fn resuming_from_batch_k_equals_the_tail_of_the_epoch() {
    let loader = Loader::new(toy(), config(3, Augment::cifar())).unwrap();
    let full = collect(&loader, 7, 0);
    for k in 0..=full.len() {
        let tail = collect(&loader, 7, k);
        assert_eq!(bits(&tail), bits(&full[k..]), "from batch {k}");
        assert!(tail.iter().zip(k..).all(|(b, i)| b.batch_index == i && b.epoch == 7));
    }
    assert!(collect(&loader, 7, 100).is_empty());
    assert_eq!(loader.epoch_from(7, 2).len(), 3);
}

#[test]
fn each_epoch_is_a_permutation_and_shuffle_false_keeps_order() {
    let loader = Loader::new(toy(), config(2, Augment::None)).unwrap();
    for epoch in 0..3 {
        let batches = collect(&loader, epoch, 0);
        let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(indices, loader.permutation(epoch));
        assert_eq!(indices.iter().copied().collect::<BTreeSet<_>>().len(), N);
        assert_ne!(indices, (0..N).collect::<Vec<_>>());
        assert_eq!(batches.iter().map(|b| b.shape[0]).collect::<Vec<_>>(), [8, 8, 8, 8, 5]);
        for b in &batches {
            assert_eq!(b.labels, b.indices.iter().map(|i| i % 5).collect::<Vec<_>>());
            assert_eq!(b.images.len(), b.shape.iter().product::<usize>());
        }
    }
    let ordered = Loader::new(toy(), LoaderConfig { shuffle: false, drop_last: true, ..config(3, Augment::None) });
    let ordered = ordered.unwrap();
    assert_eq!(ordered.batches_per_epoch(), 4);
    let indices: Vec<usize> = collect(&ordered, 5, 0).iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..32).collect::<Vec<_>>());
}

#[test]
fn no_augmentation_only_normalises() {
    let loader = Loader::new(toy(), LoaderConfig { shuffle: false, ..config(1, Augment::None) }).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.shape, [8, H, W, C]);
    let norm = normalization();
    for (i, y, x, c) in [(0, 0, 0, 0), (3, 5, 4, 2), (7, 2, 1, 1)] {
        let expected = (f32::from(pixel(i, y, x, c)) / 255.0 - norm.mean[c]) / norm.std[c];
        assert_eq!(batch.images[((i * H + y) * W + x) * C + c].to_bits(), expected.to_bits());
    }
}

fn augment_one(augment: &Augment, index: usize, seed: u64) -> Vec<f32> {
    let sample = toy().get(index).unwrap();
    apply(&sample, augment, &normalization(), &mut Rng::new(seed)).unwrap().values
}

#[test]
fn flips_mirror_rows_exactly_and_happen_about_half_the_time() {
    let plain = augment_one(&Augment::None, 4, 0);
    let flip = Augment::RandomCrop { padding: 0, flip: true };
    let mut flipped_count = 0;
    for seed in 0..200 {
        let out = augment_one(&flip, 4, seed);
        if out == plain {
            continue;
        }
        flipped_count += 1;
        for y in 0..H {
            for x in 0..W {
                let (a, b) = ((y * W + x) * C, (y * W + W - 1 - x) * C);
                assert_eq!(out[a..a + C], plain[b..b + C], "seed {seed} ({y}, {x})");
            }
        }
    }
    assert!((60..140).contains(&flipped_count), "{flipped_count} flips of 200");
}

#[test]
fn random_crop_is_a_shift_with_zero_padding() {
    let plain = augment_one(&Augment::None, 9, 0);
    let norm = normalization();
    let zero: Vec<f32> = (0..C).map(|c| -norm.mean[c] / norm.std[c]).collect();
    let mut shifts = BTreeSet::new();
    for seed in 0..300 {
        let out = augment_one(&Augment::RandomCrop { padding: 2, flip: false }, 9, seed);
        assert_eq!(out.len(), H * W * C);
        let shift = (-2..=2i64).flat_map(|dy| (-2..=2i64).map(move |dx| (dy, dx))).find(|&(dy, dx)| {
            (0..H).all(|y| {
                (0..W).all(|x| {
                    let (sy, sx) = (y as i64 + dy, x as i64 + dx);
                    let at = (y * W + x) * C;
                    let inside = (0..H as i64).contains(&sy) && (0..W as i64).contains(&sx);
                    let expected = if inside { &plain[(sy as usize * W + sx as usize) * C..][..C] } else { &zero[..] };
                    out[at..at + C] == *expected
                })
            })
        });
        shifts.insert(shift.unwrap_or_else(|| panic!("seed {seed}: not a padded shift")));
    }
    assert_eq!(shifts.len(), 25, "every offset in -2..=2 x -2..=2 occurs");
}

/// RGB images of different sizes, like an image folder.
struct Varying;

impl Dataset for Varying {
    fn len(&self) -> usize {
        6
    }
    fn num_classes(&self) -> usize {
        2
    }
    fn channels(&self) -> usize {
        3
    }
    fn normalization(&self) -> &Normalization {
        static NORM: std::sync::OnceLock<Normalization> = std::sync::OnceLock::new();
        NORM.get_or_init(Normalization::imagenet)
    }
    fn get(&self, index: usize) -> Result<Sample, DatasetError> {
        let (height, width) = [(40, 30), (17, 90), (64, 64), (5, 7), (100, 12), (33, 34)][index];
        let pixels = (0..height * width * 3).map(|i| (i * 17 % 251) as u8).collect();
        Ok(Sample { pixels: Pixels::U8(pixels), height, width, channels: 3, label: index % 2 })
    }
}

#[test]
fn resizing_transforms_give_uniform_batches() {
    let dataset: Arc<dyn Dataset> = Arc::new(Varying);
    let train = Augment::RandomResizedCrop { size: 24, scale: (0.08, 1.0), ratio: (0.75, 4.0 / 3.0), flip: true };
    for augment in [train, Augment::ResizeCenterCrop { resize: 28, crop: 24 }] {
        let reference = collect(&Loader::new(dataset.clone(), config(0, augment.clone())).unwrap(), 0, 0);
        assert_eq!(reference[0].shape, [6, 24, 24, 3]);
        let loader = Loader::new(dataset.clone(), config(3, augment)).unwrap();
        assert_eq!(bits(&collect(&loader, 0, 0)), bits(&reference));
    }
    let error = Loader::new(dataset, config(2, Augment::None)).unwrap().epoch(0).next().unwrap().unwrap_err();
    assert!(error.to_string().contains("resizing transform"), "{error}");
}

#[test]
fn resizing_whole_image_matches_eval_preprocess_and_grey_images_work() {
    // scale 1 and the image's own ratio crop the whole image; on a constant image every
    // resize is constant.
    let sample = Sample { pixels: Pixels::U8(vec![200; 12 * 9]), height: 12, width: 9, channels: 1, label: 0 };
    let norm = Normalization::mnist();
    let whole = Augment::RandomResizedCrop { size: 5, scale: (1.0, 1.0), ratio: (0.75, 0.75), flip: true };
    let out = apply(&sample, &whole, &norm, &mut Rng::new(5)).unwrap();
    assert_eq!((out.height, out.width, out.channels), (5, 5, 1));
    let expected = (200.0f32 / 255.0 - 0.1307) / 0.3081;
    assert!(out.values.iter().all(|v| v.to_bits() == expected.to_bits()));
    let eval = apply(&sample, &Augment::ResizeCenterCrop { resize: 8, crop: 6 }, &norm, &mut Rng::new(0)).unwrap();
    assert_eq!((eval.height, eval.width, eval.values.len()), (6, 6, 36));
    assert!(eval.values.iter().all(|v| v.to_bits() == expected.to_bits()));
}

#[test]
fn float_samples_are_transposed_and_refuse_resizing() {
    let values: Vec<f32> = (0..2 * 2 * 3).map(|v| v as f32).collect(); // [C=2, H=2, W=3]
    let dataset = ArrayDataset::from_f32_chw(values, [1, 2, 3, 2], vec![0], 1).unwrap();
    let sample = dataset.get(0).unwrap();
    let out = apply(&sample, &Augment::None, dataset.normalization(), &mut Rng::new(0)).unwrap();
    assert_eq!(out.values, [0.0, 6.0, 1.0, 7.0, 2.0, 8.0, 3.0, 9.0, 4.0, 10.0, 5.0, 11.0]);
    let resized = Augment::imagenet_train();
    assert!(apply(&sample, &resized, dataset.normalization(), &mut Rng::new(0)).is_err());
}

/// Fails (or panics) on one sample.
struct Failing {
    inner: Arc<dyn Dataset>,
    bad: usize,
    panic: bool,
}

impl Dataset for Failing {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn normalization(&self) -> &Normalization {
        self.inner.normalization()
    }
    fn get(&self, index: usize) -> Result<Sample, DatasetError> {
        if index == self.bad {
            assert!(!self.panic, "sample {index} exploded");
            return Err(DatasetError::Config(format!("sample {index} is broken")));
        }
        self.inner.get(index)
    }
}

#[test]
fn errors_and_panics_end_the_epoch_at_the_right_batch() {
    for (panic, workers) in [(false, 0), (false, 3), (true, 1), (true, 3)] {
        let dataset = Arc::new(Failing { inner: toy(), bad: 20, panic });
        let loader = Loader::new(dataset, LoaderConfig { shuffle: false, ..config(workers, Augment::None) }).unwrap();
        let results: Vec<_> = loader.epoch(0).collect();
        assert_eq!(results.len(), 3, "panic {panic}, {workers} workers");
        assert!(results[..2].iter().all(Result::is_ok));
        let message = results[2].as_ref().unwrap_err().to_string();
        assert!(message.contains("sample 20"), "{message}");
    }
    // Dropping an epoch half-way stops its workers.
    let loader = Loader::new(toy(), config(4, Augment::cifar())).unwrap();
    let mut batches = loader.epoch(0);
    assert!(batches.next().unwrap().is_ok());
    drop(batches);
    assert!(Loader::new(toy(), LoaderConfig { batch_size: 0, ..config(1, Augment::None) }).is_err());
}

#[test]
fn random_subset_is_seeded_sorted_and_in_range() {
    let subset = random_subset(100, 30, 7).unwrap();
    assert_eq!(subset.len(), 30);
    assert!(subset.windows(2).all(|w| w[0] < w[1]) && subset.iter().all(|&i| i < 100));
    assert_eq!(random_subset(100, 30, 7).unwrap(), subset);
    assert_ne!(random_subset(100, 30, 8).unwrap(), subset);
    assert_eq!(random_subset(5, 5, 1).unwrap(), vec![0, 1, 2, 3, 4]);
    for bad in [0, 101] {
        let err = random_subset(100, bad, 7).unwrap_err().to_string();
        assert!(err.contains("choose 1 to 100"), "{err}");
    }
}

#[test]
fn holdout_split_is_seeded_disjoint_and_complete() {
    let split = split_holdout(100, 0.2, 7).unwrap();
    assert_eq!((split.train.len(), split.holdout.len()), (80, 20));
    let all: BTreeSet<usize> = split.train.iter().chain(&split.holdout).copied().collect();
    assert_eq!(all.len(), 100);
    assert!(split.holdout.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(split_holdout(100, 0.2, 7).unwrap(), split);
    assert_ne!(split_holdout(100, 0.2, 8).unwrap(), split);
    for bad in [0.0, 1.0, -0.5, f64::NAN] {
        assert!(split_holdout(100, bad, 7).is_err(), "{bad}");
    }
    assert!(split_holdout(3, 0.01, 7).is_err());

    let subset: Arc<dyn Dataset> = Arc::new(Subset::new(toy(), vec![5, 2, 30]).unwrap());
    assert_eq!(subset.get(1).unwrap(), toy().get(2).unwrap());
    let loader = Loader::new(subset, LoaderConfig { shuffle: false, ..config(2, Augment::None) }).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!((batch.indices, batch.labels), (vec![0, 1, 2], vec![0, 2, 0]));
    assert!(Subset::new(toy(), vec![N]).is_err());
}

#[test]
fn float_samples_flip_in_normalised_space() {
    let values: Vec<f32> = (0..2 * 2 * 3).map(|v| v as f32).collect(); // [C=2, H=2, W=3]
    let dataset = ArrayDataset::from_f32_chw(values, [1, 2, 3, 2], vec![0], 1).unwrap();
    let sample = dataset.get(0).unwrap();
    let flip = Augment::RandomCrop { padding: 0, flip: true };
    let outs: BTreeSet<Vec<u32>> = (0..50)
        .map(|seed| apply(&sample, &flip, dataset.normalization(), &mut Rng::new(seed)).unwrap().values)
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect();
    let as_bits = |v: [f32; 12]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let plain = as_bits([0.0, 6.0, 1.0, 7.0, 2.0, 8.0, 3.0, 9.0, 4.0, 10.0, 5.0, 11.0]);
    let mirrored = as_bits([2.0, 8.0, 1.0, 7.0, 0.0, 6.0, 5.0, 11.0, 4.0, 10.0, 3.0, 9.0]);
    assert_eq!(outs, BTreeSet::from([plain, mirrored]));
}
