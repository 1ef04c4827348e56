//! The data set readers on tiny files written here: IDX (plain and gzipped), CIFAR binary
//! batches, ImageFolder trees of PNGs and `.npz` archives (stored and deflated); bad layouts
//! and labels give one-line errors naming the file.

mod common;

use std::io::Write;
use std::path::Path;

use common::scratch_dir;
use resnet_data::dataset::{read_cifar10, read_npz, FASHION_MNIST_CLASSES};
use resnet_data::{open_dataset, Dataset, DatasetError, DatasetKind, ImageFolder, Normalization, Pixels};

fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A one-line error that mentions every fragment.
fn assert_error<T>(result: Result<T, DatasetError>, fragments: &[&str]) -> DatasetError {
    let Err(error) = result else { panic!("expected an error mentioning {fragments:?}") };
    let message = error.to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    for fragment in fragments {
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
    error
}

fn u8_pixels(dataset: &dyn Dataset, index: usize) -> Vec<u8> {
    match dataset.get(index).unwrap().pixels {
        Pixels::U8(p) => p,
        Pixels::F32(_) => panic!("expected 8-bit pixels"),
    }
}

fn write_idx_set(dir: &Path, gz_images: bool) {
    let images: Vec<u8> = (0..3 * 2 * 3).map(|v| v as u8 * 10).collect();
    let train_images = idx(&[3, 2, 3], &images);
    let (name, bytes) = if gz_images {
        ("train-images-idx3-ubyte.gz", gzip(&train_images))
    } else {
        ("train-images-idx3-ubyte", train_images)
    };
    write(&dir.join(name), &bytes);
    write(&dir.join("train-labels-idx1-ubyte"), &idx(&[3], &[9, 0, 4]));
    write(&dir.join("t10k-images-idx3-ubyte.gz"), &gzip(&idx(&[2, 2, 3], &[7; 12])));
    write(&dir.join("t10k-labels-idx1-ubyte.gz"), &gzip(&idx(&[2], &[1, 2])));
}

#[test]
fn idx_files_plain_and_gzipped() {
    for gz in [false, true] {
        let dir = scratch_dir(&format!("idx_ok_{gz}"));
        write_idx_set(&dir, gz);
        let splits = open_dataset(DatasetKind::FashionMnist, Some(&dir)).unwrap();
        let train = splits.train;
        assert_eq!((train.len(), train.num_classes(), train.channels()), (3, 10, 1));
        let sample = train.get(1).unwrap();
        assert_eq!((sample.height, sample.width, sample.channels, sample.label), (2, 3, 1, 0));
        assert_eq!(sample.pixels, Pixels::U8((6..12).map(|v| v * 10).collect()));
        assert_eq!(train.normalization(), &Normalization::fashion_mnist());
        assert_eq!(train.class_names().unwrap()[9], FASHION_MNIST_CLASSES[9]);
        let test = splits.test.unwrap();
        assert_eq!((test.len(), test.get(1).unwrap().label), (2, 2));
        assert_error(train.get(3), &["index 3", "3 samples"]);
    }
    // torchvision's download layout, and MNIST's normalisation.
    let dir = scratch_dir("idx_torchvision_layout");
    write_idx_set(&dir.join("MNIST/raw"), true);
    let train = open_dataset(DatasetKind::Mnist, Some(&dir)).unwrap().train;
    assert_eq!((train.len(), train.normalization()), (3, &Normalization::mnist()));
}

#[test]
fn idx_errors_name_the_file() {
    let dir = scratch_dir("idx_bad");
    write_idx_set(&dir, false);
    let labels = dir.join("train-labels-idx1-ubyte");
    write(&labels, &idx(&[3], &[9, 10, 4]));
    assert_error(open_dataset(DatasetKind::Mnist, Some(&dir)), &["train-labels-idx1-ubyte", "label 10", "0..10"]);
    write(&labels, &idx(&[2], &[9, 1]));
    assert_error(open_dataset(DatasetKind::Mnist, Some(&dir)), &["train-labels-idx1-ubyte", "2 labels", "3 images"]);
    write(&labels, &idx(&[3], &[9, 1, 2]));
    let images = dir.join("train-images-idx3-ubyte");
    write(&images, &idx(&[3, 2, 3], &[0; 17]));
    assert_error(open_dataset(DatasetKind::Mnist, Some(&dir)), &["train-images-idx3-ubyte", "truncated"]);
    write(&images, b"\x1f\x8b\x08\x00garbage");
    assert_error(open_dataset(DatasetKind::Mnist, Some(&dir)), &["train-images-idx3-ubyte", "gzip"]);
    write(&images, &[1, 2, 3, 4, 5]);
    assert_error(open_dataset(DatasetKind::Mnist, Some(&dir)), &["train-images-idx3-ubyte", "not an IDX file"]);
    write(&images, &idx(&[6, 3], &[0; 18]));
    assert_error(open_dataset(DatasetKind::Mnist, Some(&dir)), &["train-images-idx3-ubyte", "3 dimensions"]);
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    write(&images, &idx(&[3, 2, 3], &[0; 18]));
    assert_error(open_dataset(DatasetKind::Mnist, Some(&dir)), &["t10k-labels-idx1-ubyte", "missing"]);

    let empty = scratch_dir("idx_missing");
    let error = assert_error(open_dataset(DatasetKind::FashionMnist, Some(&empty)), &["Fashion-MNIST not found"]);
    assert!(matches!(error, DatasetError::NotFound(_)));
    assert!(error.to_string().contains(&empty.display().to_string()));
}

/// CIFAR records: label byte(s), then red, green and blue planes of 32x32.
fn cifar_record(labels: &[u8], seed: u8) -> Vec<u8> {
    let mut out = labels.to_vec();
    out.extend((0..3 * 1024).map(|i| (i as u32 * 7 + u32::from(seed)) as u8));
    out
}

#[test]
fn cifar10_and_cifar100_binary_batches() {
    let dir = scratch_dir("cifar10_ok").join("cifar-10-batches-bin");
    for b in 1..=5u8 {
        let bytes = [cifar_record(&[b], b), cifar_record(&[9], 100 + b)].concat();
        write(&dir.join(format!("data_batch_{b}.bin")), &bytes);
    }
    write(&dir.join("test_batch.bin"), &cifar_record(&[3], 42));
    let splits = open_dataset(DatasetKind::Cifar10, dir.parent()).unwrap();
    let train = splits.train;
    assert_eq!((train.len(), train.num_classes(), train.channels()), (10, 10, 3));
    let labels: Vec<usize> = (0..10).map(|i| train.get(i).unwrap().label).collect();
    assert_eq!(labels, [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
    // Planar to channels-last: pixel (y, x) channel c is plane byte c * 1024 + y * 32 + x.
    let pixels = u8_pixels(train.as_ref(), 2);
    for (y, x, c) in [(0, 0, 0), (0, 1, 2), (5, 7, 1), (31, 31, 2)] {
        let plane_index = c * 1024 + y * 32 + x;
        assert_eq!(pixels[(y * 32 + x) * 3 + c], (plane_index as u32 * 7 + 2) as u8, "({y}, {x}, {c})");
    }
    assert_eq!(train.class_names().unwrap()[0], "airplane");
    assert_eq!(train.normalization(), &Normalization::cifar10());
    assert_eq!(splits.test.unwrap().get(0).unwrap().label, 3);

    let dir100 = scratch_dir("cifar100_ok");
    write(&dir100.join("train.bin"), &[cifar_record(&[3, 77], 1), cifar_record(&[19, 99], 2)].concat());
    write(&dir100.join("test.bin"), &cifar_record(&[0, 5], 3));
    let splits = open_dataset(DatasetKind::Cifar100, Some(&dir100)).unwrap();
    assert_eq!((splits.train.len(), splits.train.num_classes()), (2, 100));
    assert_eq!((splits.train.get(0).unwrap().label, splits.train.get(1).unwrap().label), (77, 99));
    assert_eq!(splits.test.unwrap().get(0).unwrap().label, 5);
}

#[test]
fn cifar_errors_name_the_file() {
    let dir = scratch_dir("cifar_bad");
    let file = dir.join("data_batch_1.bin");
    write(&file, &[cifar_record(&[1], 0), vec![0; 10]].concat());
    assert_error(read_cifar10(std::slice::from_ref(&file)), &["data_batch_1.bin", "3073-byte"]);
    write(&file, &cifar_record(&[10], 0));
    assert_error(read_cifar10(std::slice::from_ref(&file)), &["data_batch_1.bin", "label 10", "CIFAR-10"]);
    write(&file, &cifar_record(&[1], 0));
    for b in [2, 4, 5] {
        write(&dir.join(format!("data_batch_{b}.bin")), &cifar_record(&[1], 0));
    }
    assert_error(open_dataset(DatasetKind::Cifar10, Some(&dir)), &["data_batch_3.bin", "missing"]);
    let dir100 = scratch_dir("cifar100_bad");
    write(&dir100.join("train.bin"), &cifar_record(&[1, 100], 0));
    assert_error(open_dataset(DatasetKind::Cifar100, Some(&dir100)), &["train.bin", "label 100"]);
    assert_error(open_dataset(DatasetKind::Cifar10, None), &["--data"]);
    assert_error(open_dataset(DatasetKind::Cifar10, Some(&scratch_dir("cifar_none"))), &["data_batch_1.bin"]);
}

fn write_png(path: &Path, width: u32, height: u32, seed: u8) -> Vec<u8> {
    let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_raw(width, height, pixels.clone()).unwrap().save(path).unwrap();
    pixels
}

#[test]
fn image_folder_sorts_classes_and_walks_like_torchvision() {
    let root = scratch_dir("image_folder_ok");
    let dog = write_png(&root.join("dog/b.png"), 4, 3, 1);
    let cat_z = write_png(&root.join("cat/z.png"), 2, 2, 2);
    let cat_sub = write_png(&root.join("cat/a_sub/y.png"), 5, 1, 3);
    let cat_a = write_png(&root.join("cat/A.PNG"), 1, 1, 4);
    write(&root.join("cat/notes.txt"), b"not an image");
    let folder = ImageFolder::open(&root).unwrap();
    assert_eq!(folder.class_names().unwrap(), ["cat", "dog"]);
    // Folder "cat" first (files sorted by name, upper case first), then "cat/a_sub", then "dog".
    let order: Vec<_> = folder.samples().iter().map(|(p, l)| (p.strip_prefix(&root).unwrap().to_owned(), *l)).collect();
    let expected = [("cat/A.PNG", 0), ("cat/z.png", 0), ("cat/a_sub/y.png", 0), ("dog/b.png", 1)];
    assert_eq!(order, expected.map(|(p, l)| (Path::new(p).to_owned(), l)));
    for (i, pixels) in [cat_a, cat_z, cat_sub, dog].iter().enumerate() {
        assert_eq!(&u8_pixels(&folder, i), pixels, "sample {i}");
    }
    let sample = folder.get(3).unwrap();
    assert_eq!((sample.width, sample.height, sample.channels, sample.label), (4, 3, 3, 1));
    assert_eq!(folder.normalization(), &Normalization::imagenet());

    // train/ and val/ under --data.
    let data = scratch_dir("image_folder_splits");
    write_png(&data.join("train/a/1.png"), 2, 2, 0);
    write_png(&data.join("train/b/1.png"), 2, 2, 0);
    write_png(&data.join("val/a/1.png"), 2, 2, 0);
    let splits = open_dataset(DatasetKind::ImageFolder, Some(&data)).unwrap();
    assert_eq!((splits.train.len(), splits.test.map(|t| t.len())), (2, Some(1)));
}

#[test]
fn image_folder_errors_name_the_path() {
    let root = scratch_dir("image_folder_bad");
    write_png(&root.join("cat/1.png"), 2, 2, 0);
    std::fs::create_dir_all(root.join("dog/sub")).unwrap();
    write(&root.join("dog/readme.txt"), b"x");
    let dog = root.join("dog").display().to_string();
    assert_error(ImageFolder::open(&root), &[&dog, "no images"]);

    let flat = scratch_dir("image_folder_flat");
    write_png(&flat.join("1.png"), 2, 2, 0);
    write_png(&flat.join("2.png"), 2, 2, 0);
    assert_error(ImageFolder::open(&flat), &[&flat.display().to_string(), "no class folders", "found 2 images"]);
    let empty = scratch_dir("image_folder_empty");
    assert_error(ImageFolder::open(&empty), &[&empty.display().to_string(), "no class folders"]);
    let missing = empty.join("nope");
    assert_error(ImageFolder::open(&missing), &[&missing.display().to_string(), "cannot read"]);

    let broken = scratch_dir("image_folder_broken");
    write(&broken.join("cat/1.png"), b"not really a png");
    let folder = ImageFolder::open(&broken).unwrap();
    assert_error(folder.get(0), &["1.png"]);
}

fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn write_npz(path: &Path, deflate: bool, members: &[(&str, Vec<u8>)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn npz_in_keras_layout_stored_and_deflated() {
    let dir = scratch_dir("npz_ok");
    let x_train: Vec<u8> = (0..4 * 2 * 2).map(|i| if i % 2 == 0 { 0 } else { 255 }).collect();
    for deflate in [false, true] {
        let path = dir.join(format!("mnist_{deflate}.npz"));
        let members = [
            ("x_train", npy("|u1", &[4, 2, 2], &x_train)),
            ("y_train", npy("<i8", &[4], &i64_bytes(&[0, 3, 1, 3]))),
            ("x_test", npy("|u1", &[1, 2, 2], &[1, 2, 3, 4])),
            ("y_test", npy("<i8", &[1], &i64_bytes(&[5]))),
        ];
        write_npz(&path, deflate, &members);
        let splits = open_dataset(DatasetKind::Npz, Some(&path)).unwrap();
        let train = splits.train;
        assert_eq!((train.len(), train.channels(), train.num_classes()), (4, 1, 6));
        assert_eq!(train.get(1).unwrap().label, 3);
        assert_eq!(u8_pixels(train.as_ref(), 0), [0, 255, 0, 255]);
        // Half the pixels are 0 and half 1: mean 0.5, population std 0.5.
        assert_eq!(train.normalization(), &Normalization::new(&[0.5], &[0.5]));
        let test = splits.test.unwrap();
        assert_eq!((test.len(), test.get(0).unwrap().label), (1, 5));
        assert_eq!(test.normalization(), train.normalization());
    }

    // Channels-last uint8 with uint8 labels [N, 1], no test split.
    let path = dir.join("hwc.npz");
    let x: Vec<u8> = (0..12).map(|i| i as u8).collect();
    write_npz(&path, true, &[("x_train", npy("|u1", &[2, 2, 1, 3], &x)), ("y_train", npy("|u1", &[2, 1], &[1, 0]))]);
    let splits = read_npz(&path).unwrap();
    assert!(splits.test.is_none());
    assert_eq!(splits.train.dims(), [2, 2, 1, 3]);
    assert_eq!(u8_pixels(&splits.train, 1), [6, 7, 8, 9, 10, 11]);

    // Float32 [N, C, H, W] is used as is; int32 labels.
    let path = dir.join("float.npz");
    let values: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels: Vec<u8> = [2i32, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npz(&path, false, &[("x_train", npy("<f4", &[2, 2, 1, 2], &bytes)), ("y_train", npy("<i4", &[2], &labels))]);
    let train = read_npz(&path).unwrap().train;
    let sample = train.get(1).unwrap();
    assert_eq!((sample.channels, sample.height, sample.width, sample.label), (2, 1, 2, 0));
    assert_eq!(sample.pixels, Pixels::F32(values[4..].to_vec()));
    assert_eq!(train.num_classes(), 3);
}

#[test]
fn npz_errors_name_the_file_and_member() {
    let dir = scratch_dir("npz_bad");
    let path = dir.join("bad.npz");
    let x = || ("x_train", npy("|u1", &[2, 1, 1], &[1, 2]));
    let check = |members: &[(&str, Vec<u8>)], fragments: &[&str]| {
        write_npz(&path, true, members);
        let mut all = vec!["bad.npz"];
        all.extend_from_slice(fragments);
        assert_error(read_npz(&path), &all);
    };
    check(&[x()], &["no y_train"]);
    check(&[x(), ("y_train", npy("<i8", &[3], &i64_bytes(&[0, 1, 2])))], &["y_train has 3 labels", "x_train has 2"]);
    check(&[x(), ("y_train", npy("<i8", &[2], &i64_bytes(&[0, -1])))], &["label 1 of y_train", "negative"]);
    check(&[x(), ("y_train", npy("<f4", &[2], &[0; 8]))], &["y_train", "integers"]);
    check(
        &[("x_train", npy("<i2", &[2, 1, 1], &[0; 4])), ("y_train", npy("|u1", &[2], &[0, 1]))],
        &["x_train is int16"],
    );
    check(&[("x_train", npy("<f4", &[2, 1, 1], &[0; 8])), ("y_train", npy("|u1", &[2], &[0, 1]))], &["[N, C, H, W]"]);
    check(&[x(), ("y_train", npy("|u1", &[2], &[0, 1])), ("x_test", npy("|u1", &[1, 1, 1], &[0]))], &["no y_test"]);
    check(&[("x_train", npy("|u1", &[2, 1, 1], &[1])), ("y_train", npy("|u1", &[2], &[0, 1]))], &["x_train", "needs"]);
    let wrong_test = ("x_test", npy("|u1", &[1, 2, 1], &[0, 0]));
    check(
        &[x(), ("y_train", npy("|u1", &[2], &[0, 1])), wrong_test, ("y_test", npy("|u1", &[1], &[0]))],
        &["x_test is"],
    );
    write(&path, b"PK but not really");
    assert_error(read_npz(&path), &["bad.npz", "zip"]);
    assert_error(open_dataset(DatasetKind::Npz, None), &["--data"]);
}

#[test]
fn data_set_names_parse() {
    for (name, kind) in [
        ("fashion-mnist", DatasetKind::FashionMnist),
        ("Fashion_MNIST", DatasetKind::FashionMnist),
        ("mnist", DatasetKind::Mnist),
        ("cifar-10", DatasetKind::Cifar10),
        ("cifar100", DatasetKind::Cifar100),
        ("imagefolder", DatasetKind::ImageFolder),
        ("npz", DatasetKind::Npz),
    ] {
        assert_eq!(name.parse::<DatasetKind>().unwrap(), kind, "{name}");
        assert_eq!(kind.name().parse::<DatasetKind>().unwrap(), kind);
    }
    assert_error("imagenet".parse::<DatasetKind>(), &["imagenet", "fashion-mnist"]);
}
