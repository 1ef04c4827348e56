//! End-to-end tests of the `resnet` binary: the commands users run, and every kind of bad
//! input giving a one-line error that names the file, a non-zero exit and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use resnet_core::model::seeded::seed_parameters;
use resnet_core::weights::safetensors_io::save_safetensors;
use resnet_core::ResNet;

fn resnet(args: &[&str]) -> Output {
    let cache = scratch("cache");
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .env("RESNET_CACHE_DIR", &*cache)
        // Keep the offline test offline even where a real network exists.
        .env("RESNET_WEIGHTS_BASE_URL", "http://127.0.0.1:9")
        .output()
        .expect("the resnet binary runs")
}

/// A fresh directory per test (tests run in parallel in one process), removed when dropped.
fn scratch(name: &str) -> common::Scratch {
    common::scratch("cli-test", name)
}

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn photo() -> PathBuf {
    repo_file("tools/reference/fixtures/preprocess/photo.jpg")
}

/// Seeded resnet18 weights with `classes` outputs, saved as safetensors.
fn resnet18_weights(dir: &Path, classes: usize) -> PathBuf {
    let path = dir.join(format!("resnet18-{classes}.safetensors"));
    if !path.exists() {
        let mut m = ResNet::from_name("resnet18", classes).unwrap();
        seed_parameters(&mut m, 1);
        save_safetensors(&path, &m.state_dict()).unwrap();
    }
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The failure contract: non-zero exit, no panic, one line on stderr naming `file`.
fn assert_clean_error(o: &Output, file: &Path) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "error is not one line: {err}");
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(err.contains(&*name), "error does not name {name}: {err}");
}

#[test]
fn summary_reports_resnet50_totals() {
    let o = resnet(&["summary", "--arch", "resnet50"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("total parameters: 25,557,032"), "{out}");
    assert!(out.contains("(4.09 GMACs)"), "{out}");
    assert!(out.contains("(downsample): Sequential("));
}

#[test]
fn classify_prints_json_with_file_and_predictions() {
    let dir = scratch("classify");
    let weights = resnet18_weights(&dir, 1000);
    let o = resnet(&[
        "classify",
        photo().to_str().unwrap(),
        "--arch",
        "resnet18",
        "--weights",
        weights.to_str().unwrap(),
        "--top",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let first = &v[0];
    assert!(first["file"].as_str().unwrap().ends_with("photo.jpg"));
    let preds = first["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 3);
    let p0 = preds[0]["probability"].as_f64().unwrap();
    assert!(p0 > 0.0 && p0 <= 1.0 && p0 >= preds[1]["probability"].as_f64().unwrap());
    assert!(preds[0]["label"].is_string() && preds[0]["index"].is_u64());
}

#[test]
fn embed_writes_one_row_per_input_in_order() {
    let dir = scratch("embed");
    let weights = resnet18_weights(&dir, 1000);
    let out = dir.join("emb.npy");
    let p = photo();
    let o = resnet(&[
        "embed",
        p.to_str().unwrap(),
        p.to_str().unwrap(),
        "--arch",
        "resnet18",
        "--weights",
        weights.to_str().unwrap(),
        "--layer",
        "pool",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, data) = resnet_data::read_npy_f32(&out).unwrap();
    assert_eq!(shape, vec![2, 512]);
    assert_eq!(data[..512], data[512..], "same image twice gives the same row");

    let maps = dir.join("layer3.safetensors");
    let o = resnet(&[
        "embed",
        p.to_str().unwrap(),
        "--arch",
        "resnet18",
        "--weights",
        weights.to_str().unwrap(),
        "--layer",
        "layer3",
        "--out",
        maps.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sd = resnet_core::weights::load_state_dict(&maps).unwrap();
    assert_eq!(sd.get("features").unwrap().shape, vec![1, 256, 14, 14]);
}

#[test]
fn convert_pth_to_safetensors_keeps_keys() {
    let dir = scratch("convert");
    let input = repo_file("crates/resnet-core/tests/fixtures/weights/tiny.pth");
    let out = dir.join("tiny.safetensors");
    let o = resnet(&["convert", input.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = resnet_core::weights::load_state_dict(&input).unwrap();
    let b = resnet_core::weights::load_state_dict(&out).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in a.iter() {
        assert_eq!(Some(t), b.get(k), "{k}");
    }
}

#[test]
fn bench_json_has_the_documented_fields() {
    let o = resnet(&[
        "bench", "--arch", "resnet18", "--batch", "1", "--input", "64", "--iters", "2", "--warmup", "1", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in ["arch", "batch", "threads", "latency_ms_median", "images_per_sec_median", "peak_rss_mb"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn bench_bf16_reports_its_precision_and_agreement_with_fp32() {
    let o = resnet(&[
        "bench",
        "--arch",
        "resnet18",
        "--batch",
        "1",
        "--input",
        "64",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
        "--precision",
        "bf16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["precision"], "bf16");
    assert!(stderr(&o).contains("top-1 agrees on"), "{}", stderr(&o));
    let o = resnet(&["bench", "--train", "--precision", "bf16"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("compiled inference plan"), "{}", stderr(&o));
}

#[test]
fn bench_train_reports_activation_memory() {
    let o = resnet(&[
        "bench", "--train", "--arch", "resnet20", "--batch", "4", "--input", "32", "--iters", "1", "--warmup", "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // ResNet-20 keeps at least the stem's and 18 convolutions' 32x32 or smaller maps: for 4
    // images well over 1 MB, and far less than the 200 MB a leak or a per-pixel cost would give.
    let mb = v["activation_mb"].as_f64().unwrap();
    assert!(mb > 1.0 && mb < 200.0, "activation_mb {mb}");
}

// ---- bad input: one test per case ----

fn classify_with_random_weights(image: &Path) -> Output {
    resnet(&["classify", image.to_str().unwrap(), "--arch", "resnet18", "--weights", "random"])
}

#[test]
fn corrupt_image_is_a_clean_error() {
    let dir = scratch("corrupt");
    let mut bytes = std::fs::read(photo()).unwrap();
    let mid = bytes.len() / 3;
    for b in &mut bytes[200..mid] {
        *b = 0x5a;
    }
    let bad = dir.join("corrupt.jpg");
    std::fs::write(&bad, &bytes).unwrap();
    let o = classify_with_random_weights(&bad);
    // A corrupted JPEG body may still decode (JPEG is forgiving); a corrupted header must not.
    if !o.status.success() {
        assert_clean_error(&o, &bad);
    }
    let bad_header = dir.join("bad-header.png");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&[0xff; 64]);
    std::fs::write(&bad_header, &png).unwrap();
    assert_clean_error(&classify_with_random_weights(&bad_header), &bad_header);
}

#[test]
fn truncated_image_is_a_clean_error() {
    let dir = scratch("truncated-image");
    let bytes = std::fs::read(photo()).unwrap();
    let bad = dir.join("truncated.jpg");
    std::fs::write(&bad, &bytes[..bytes.len() / 10]).unwrap();
    assert_clean_error(&classify_with_random_weights(&bad), &bad);
}

#[test]
fn non_image_file_is_a_clean_error() {
    let dir = scratch("non-image");
    let bad = dir.join("notes.jpg");
    std::fs::write(&bad, "these are not pixels\n").unwrap();
    assert_clean_error(&classify_with_random_weights(&bad), &bad);
}

#[test]
fn empty_image_file_is_a_clean_error() {
    let dir = scratch("empty-image");
    let bad = dir.join("empty.png");
    std::fs::write(&bad, b"").unwrap();
    assert_clean_error(&classify_with_random_weights(&bad), &bad);
}

#[test]
fn enormous_image_header_is_refused_before_decoding() {
    let dir = scratch("bomb");
    // A PNG whose IHDR claims 100000 x 100000 pixels (10 G): refused from the header alone.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // A few bytes of (deflated) image data follow, as in a real file; the decoder must stop at the header.
    let idat = b"IDAT\x78\x9c\x63\x00\x00\x00\x01\x00\x01".to_vec();
    png.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc32(&idat).to_be_bytes());
    let bad = dir.join("bomb.png");
    std::fs::write(&bad, &png).unwrap();
    let o = classify_with_random_weights(&bad);
    assert_clean_error(&o, &bad);
    assert!(stderr(&o).contains("--max-pixels"), "{}", stderr(&o));
}

#[test]
fn truncated_weights_file_is_a_clean_error() {
    let dir = scratch("truncated-weights");
    let good = resnet18_weights(&dir, 1000);
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.join("truncated.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let o = resnet(&["classify", photo().to_str().unwrap(), "--arch", "resnet18", "--weights", bad.to_str().unwrap()]);
    assert_clean_error(&o, &bad);
}

#[test]
fn tampered_weights_file_is_a_clean_error() {
    let bad = repo_file("crates/resnet-core/tests/fixtures/weights/tampered_short_storage.pth");
    let o = resnet(&["classify", photo().to_str().unwrap(), "--arch", "resnet18", "--weights", bad.to_str().unwrap()]);
    assert_clean_error(&o, &bad);
}

#[test]
fn pickle_calling_a_forbidden_global_is_refused() {
    let bad = repo_file("crates/resnet-core/tests/fixtures/weights/malicious_os_system.pth");
    let o = resnet(&["convert", bad.to_str().unwrap(), scratch("evil").join("out.safetensors").to_str().unwrap()]);
    assert_clean_error(&o, &bad);
    assert!(stderr(&o).contains("os"), "{}", stderr(&o));
}

#[test]
fn weights_for_another_architecture_name_the_right_one() {
    let dir = scratch("other-arch");
    let weights = resnet18_weights(&dir, 1000);
    let o =
        resnet(&["classify", photo().to_str().unwrap(), "--arch", "resnet50", "--weights", weights.to_str().unwrap()]);
    assert_clean_error(&o, &weights);
    assert!(stderr(&o).contains("--arch resnet18"), "{}", stderr(&o));
}

#[test]
fn offline_pretrained_download_explains_how_to_pass_a_file() {
    let o = resnet(&["classify", photo().to_str().unwrap(), "--arch", "resnet18", "--weights", "imagenet"]);
    let err = stderr(&o);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("--weights"), "{err}");
}

/// CRC-32 (IEEE) for hand-made PNG chunks.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
