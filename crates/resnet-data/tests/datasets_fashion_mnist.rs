//! Smoke test on the real Fashion-MNIST as Debian's `dataset-fashion-mnist` package installs it
//! (`apt-get install dataset-fashion-mnist`: gzipped IDX files in /usr/share/datasets/fashion-mnist).
//! Skipped, with a note, when the files are absent.

use std::path::Path;

use resnet_data::dataset::FASHION_MNIST_DIR;
use resnet_data::{open_dataset, Augment, DatasetKind, Loader, LoaderConfig, Pixels};

#[test]
fn reads_debians_fashion_mnist() {
    if !Path::new(FASHION_MNIST_DIR).join("train-images-idx3-ubyte.gz").is_file() {
        eprintln!("note: {FASHION_MNIST_DIR} is absent; skipping (apt-get install dataset-fashion-mnist)");
        return;
    }
    let splits = open_dataset(DatasetKind::FashionMnist, None).unwrap();
    let (train, test) = (splits.train, splits.test.unwrap());
    assert_eq!((train.len(), test.len(), train.num_classes(), train.channels()), (60_000, 10_000, 10, 1));
    // Labels and pixels checked against NumPy reading the same files.
    let first_labels: Vec<usize> = (0..10).map(|i| train.get(i).unwrap().label).collect();
    assert_eq!(first_labels, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    let test_labels: Vec<usize> = (0..10).map(|i| test.get(i).unwrap().label).collect();
    assert_eq!(test_labels, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    let sample = train.get(0).unwrap();
    assert_eq!((sample.height, sample.width, sample.channels), (28, 28, 1));
    let Pixels::U8(pixels) = sample.pixels else { panic!("8-bit pixels expected") };
    assert_eq!(pixels.iter().map(|&v| u64::from(v)).sum::<u64>(), 76_247);
    assert_eq!(pixels[10 * 28 + 10..10 * 28 + 20], [0, 0, 0, 193, 228, 218, 213, 198, 180, 212]);
    let mut counts = [0usize; 10];
    for i in 0..train.len() {
        counts[train.get(i).unwrap().label] += 1;
    }
    assert_eq!(counts, [6000; 10]);

    let config = LoaderConfig {
        workers: 2,
        augment: Augment::RandomCrop { padding: 4, flip: true },
        ..LoaderConfig::new(256, 1)
    };
    let loader = Loader::new(test, config).unwrap();
    assert_eq!(loader.batches_per_epoch(), 40);
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.shape, [256, 28, 28, 1]);
    assert!(batch.images.iter().all(|v| v.is_finite()));
}
