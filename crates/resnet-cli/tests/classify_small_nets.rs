//! End-to-end: `resnet classify --dataset ...` on CIFAR-style nets that `resnet train` wrote:
//! a 3-channel resnet20 trained on a tiny CIFAR-10-format data set, a 1-channel one trained on
//! a tiny Fashion-MNIST-format (IDX) data set; images, `.npy` arrays, and the errors a user
//! can make.

mod common;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{resnet, scratch, write_cifar10};

const CIFAR10: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
const FASHION: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Trains resnet20 for one step on `data` and returns the saved weights.
fn train_one_step(dataset: &str, data: &Path, run: &Path) -> PathBuf {
    let o = resnet(&[
        "train",
        "--arch",
        "resnet20",
        "--dataset",
        dataset,
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch",
        "8",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = run.join("last.safetensors");
    assert!(weights.exists());
    weights
}

/// Writes an 8-bit PNG; `channels` 1 (grey) or 3 (RGB).
fn write_png(path: &Path, width: u32, height: u32, channels: usize, pixels: &[u8]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(if channels == 1 { png::ColorType::Grayscale } else { png::ColorType::Rgb });
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
}

/// Writes a tiny Fashion-MNIST in IDX format (uncompressed): `n` 28x28 training and test
/// images whose brightness depends on the label.
fn write_fashion_mnist(dir: &Path, n: usize) {
    for (images, labels) in
        [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    {
        let mut img = vec![0, 0, 8, 3];
        for d in [n as u32, 28, 28] {
            img.extend(d.to_be_bytes());
        }
        let mut lab = vec![0, 0, 8, 1];
        lab.extend((n as u32).to_be_bytes());
        for i in 0..n {
            let label = (i % 10) as u8;
            lab.push(label);
            img.extend((0..28 * 28).map(|p| ((p * 7 + i * 13) % 40) as u8 + label * 20));
        }
        std::fs::write(dir.join(images), img).unwrap();
        std::fs::write(dir.join(labels), lab).unwrap();
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The failure contract: non-zero exit, no panic, one line on stderr containing `needles`.
fn assert_clean_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "error is not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "error does not mention {n:?}: {err}");
    }
}

fn classify_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["classify", "--json"];
    all.extend_from_slice(args);
    let o = resnet(&all);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("valid JSON")
}

/// Checks one image's predictions: all `names` once, probabilities summing to 1 in
/// descending order; returns (label, probability) by class index.
fn check_predictions(result: &serde_json::Value, names: &[&str]) -> Vec<(String, f64)> {
    let preds = result["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), names.len());
    let mut by_index = vec![(String::new(), -1.0); names.len()];
    for p in preds {
        let i = p["index"].as_u64().unwrap() as usize;
        by_index[i] = (p["label"].as_str().unwrap().to_string(), p["probability"].as_f64().unwrap());
    }
    for (i, (label, _)) in by_index.iter().enumerate() {
        assert_eq!(label, names[i], "class {i}");
    }
    let sum: f64 = by_index.iter().map(|(_, p)| p).sum();
    assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {sum}");
    let probs: Vec<f64> = preds.iter().map(|p| p["probability"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");
    by_index
}

#[test]
fn a_trained_cifar_net_classifies_pngs_and_arrays_with_cifar10_names() {
    let data = scratch("classify-small", "cifar-data");
    write_cifar10(&data, 8, 1);
    let dir = scratch("classify-small", "cifar-run");
    let weights = train_one_step("cifar10", &data, &dir);
    let w = weights.to_str().unwrap();

    // A 32x32 PNG (used as is) and the same pixels as a normalised [1, 3, 32, 32] array.
    let rgb: Vec<u8> = (0..32 * 32 * 3).map(|i| ((i * 37) % 251) as u8).collect();
    let png32 = dir.join("img32.png");
    write_png(&png32, 32, 32, 3, &rgb);
    let (mean, std) = ([0.4914f32, 0.4822, 0.4465], [0.2470f32, 0.2435, 0.2616]);
    let mut chw = vec![0f32; 3 * 32 * 32];
    for (i, &v) in rgb.iter().enumerate() {
        let (pixel, c) = (i / 3, i % 3);
        chw[c * 1024 + pixel] = (f32::from(v) / 255.0 - mean[c]) / std[c];
    }
    let npy = dir.join("img32.npy");
    resnet_data::write_npy_f32(&npy, &[1, 3, 32, 32], &chw).unwrap();
    // A larger, non-square photo-like PNG: resized and centre cropped to 32x32.
    let big = dir.join("big.png");
    write_png(&big, 60, 45, 3, &(0..60 * 45 * 3).map(|i| (i % 256) as u8).collect::<Vec<_>>());

    let v = classify_json(&[
        png32.to_str().unwrap(),
        npy.to_str().unwrap(),
        big.to_str().unwrap(),
        "--arch",
        "resnet20",
        "--weights",
        w,
        "--dataset",
        "cifar10",
        "--top",
        "10",
    ]);
    let results = v.as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[1]["file"].as_str().unwrap().ends_with("img32.npy[0]"));
    let from_png = check_predictions(&results[0], &CIFAR10);
    let from_npy = check_predictions(&results[1], &CIFAR10);
    check_predictions(&results[2], &CIFAR10);
    for (a, b) in from_png.iter().zip(&from_npy) {
        assert!((a.1 - b.1).abs() < 1e-6, "PNG and its normalised array disagree: {from_png:?} vs {from_npy:?}");
    }

    // The plan's options: direct convolution gives the same probabilities as Winograd to
    // f32 rounding; bf16 within a percent or so of each probability's share.
    let with = |extra: &[&str]| {
        let mut args = vec![png32.to_str().unwrap(), "--arch", "resnet20", "--weights", w, "--dataset", "cifar10"];
        args.extend_from_slice(extra);
        check_predictions(&classify_json(&args)[0], &CIFAR10)
    };
    let probability = |preds: &[(String, f64)], label: &str| preds.iter().find(|p| p.0 == label).map(|p| p.1);
    let default = with(&["--top", "10"]);
    let cases: [(&[&str], f64); 2] =
        [(&["--no-winograd", "--top", "10"], 1e-5), (&["--precision", "bf16", "--top", "10"], 2e-2)];
    for (extra, tolerance) in cases {
        let other = with(extra);
        for (label, p) in &default {
            let q = probability(&other, label).unwrap();
            assert!((p - q).abs() <= tolerance, "{extra:?}: {label} {p} vs {q}");
        }
    }

    // Text output names the classes too.
    let o =
        resnet(&["classify", png32.to_str().unwrap(), "--arch", "resnet20", "--weights", w, "--dataset", "cifar10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(CIFAR10.iter().any(|n| text.contains(n)), "{text}");

    // Errors: no --dataset for a CIFAR-style net; --num-classes against the checkpoint; a
    // 1-channel data set for a 3-channel net; an unknown data set; an array of 1 channel.
    let png = png32.to_str().unwrap();
    let o = resnet(&["classify", png, "--arch", "resnet20", "--weights", w]);
    assert_clean_error(&o, &["--arch resnet20", "--dataset"]);
    let o = resnet(&[
        "classify",
        png,
        "--arch",
        "resnet20",
        "--weights",
        w,
        "--dataset",
        "cifar10",
        "--num-classes",
        "100",
    ]);
    assert_clean_error(&o, &["last.safetensors", "--num-classes", "10 classes"]);
    let o = resnet(&["classify", png, "--arch", "resnet20", "--weights", w, "--dataset", "fashion-mnist"]);
    assert_clean_error(&o, &["last.safetensors", "3-channel", "--dataset fashion-mnist"]);
    let o = resnet(&["classify", png, "--arch", "resnet20", "--weights", w, "--dataset", "cifar100"]);
    assert_clean_error(&o, &["last.safetensors", "10 classes", "--dataset cifar100"]);
    let o = resnet(&["classify", png, "--arch", "resnet20", "--weights", w, "--dataset", "svhn"]);
    assert_clean_error(&o, &["--dataset svhn", "fashion-mnist, mnist, cifar10, cifar100"]);
    let grey_npy = dir.join("grey.npy");
    resnet_data::write_npy_f32(&grey_npy, &[1, 1, 32, 32], &[0.0; 1024]).unwrap();
    let o =
        resnet(&["classify", grey_npy.to_str().unwrap(), "--arch", "resnet20", "--weights", w, "--dataset", "cifar10"]);
    assert_clean_error(&o, &["grey.npy", "1 channels", "takes 3"]);
    // The checkpoint is a depth-20 net: another depth says so.
    let o = resnet(&["classify", png, "--arch", "resnet32", "--weights", w, "--dataset", "cifar10"]);
    assert_clean_error(&o, &["last.safetensors", "--arch resnet20"]);
}

#[test]
fn a_one_channel_fashion_mnist_net_classifies_grey_and_colour_images() {
    let data = scratch("classify-small", "fmnist-data");
    write_fashion_mnist(&data, 16);
    let dir = scratch("classify-small", "fmnist-run");
    let weights = train_one_step("fashion-mnist", &data, &dir);
    let w = weights.to_str().unwrap();

    // A 28x28 grey PNG (used as is) and the same pixels normalised as [1, 1, 28, 28].
    let grey: Vec<u8> = (0..28 * 28).map(|i| ((i * 11) % 256) as u8).collect();
    let png28 = dir.join("shirt.png");
    write_png(&png28, 28, 28, 1, &grey);
    let chw: Vec<f32> = grey.iter().map(|&v| (f32::from(v) / 255.0 - 0.2860) / 0.3530).collect();
    let npy = dir.join("shirt.npy");
    resnet_data::write_npy_f32(&npy, &[1, 1, 28, 28], &chw).unwrap();
    // The same grey image as RGB: converted to grey (luma of (L, L, L) is L), same result.
    let rgb_png = dir.join("shirt-rgb.png");
    write_png(&rgb_png, 28, 28, 3, &grey.iter().flat_map(|&v| [v, v, v]).collect::<Vec<_>>());
    // A colour photo of another size: grey, resized, cropped.
    let photo = dir.join("photo.png");
    write_png(&photo, 50, 70, 3, &(0..50 * 70 * 3).map(|i| ((i * 5) % 256) as u8).collect::<Vec<_>>());

    let v = classify_json(&[
        png28.to_str().unwrap(),
        npy.to_str().unwrap(),
        rgb_png.to_str().unwrap(),
        photo.to_str().unwrap(),
        "--arch",
        "resnet20",
        "--weights",
        w,
        "--dataset",
        "fashion-mnist",
        "--top",
        "10",
    ]);
    let results = v.as_array().unwrap();
    assert_eq!(results.len(), 4);
    let from_png = check_predictions(&results[0], &FASHION);
    let from_npy = check_predictions(&results[1], &FASHION);
    let from_rgb = check_predictions(&results[2], &FASHION);
    check_predictions(&results[3], &FASHION);
    for ((a, b), c) in from_png.iter().zip(&from_npy).zip(&from_rgb) {
        assert!((a.1 - b.1).abs() < 1e-6 && a.1 == c.1, "{from_png:?} vs {from_npy:?} vs {from_rgb:?}");
    }

    // A 3-channel data set for this 1-channel net, and an RGB array for it.
    let png = png28.to_str().unwrap();
    let o = resnet(&["classify", png, "--arch", "resnet20", "--weights", w, "--dataset", "cifar10"]);
    assert_clean_error(&o, &["last.safetensors", "1-channel", "--dataset cifar10"]);
    let rgb_npy = dir.join("rgb.npy");
    resnet_data::write_npy_f32(&rgb_npy, &[1, 3, 28, 28], &[0.0; 3 * 784]).unwrap();
    let o = resnet(&[
        "classify",
        rgb_npy.to_str().unwrap(),
        "--arch",
        "resnet20",
        "--weights",
        w,
        "--dataset",
        "fashion-mnist",
    ]);
    assert_clean_error(&o, &["rgb.npy", "3 channels", "takes 1"]);

    // `embed` shares the preprocessing: a 64-d pooled feature per image.
    let out = dir.join("emb.npy");
    let o = resnet(&[
        "embed",
        png,
        "--arch",
        "resnet20",
        "--weights",
        w,
        "--dataset",
        "fashion-mnist",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, _) = resnet_data::read_npy_f32(&out).unwrap();
    assert_eq!(shape, vec![1, 64]);
}
