//! Parity with torchvision: decode + preprocess every fixture image and compare with the tensor
//! torchvision produced for it (tools/reference/gen_preprocess_fixtures.py writes both).
//!
//! Values are compared in pixel levels (units of 1/255) after undoing the normalisation.
//! Bar: at least 99.9% of values within one level for every image. Beyond that, lossless
//! formats (PNG, GIF, BMP) and JPEG (decoded by a port of Pillow's libjpeg-turbo) must match
//! exactly; only WebP, decoded by image-webp rather than libwebp, is held to the bar alone.

use std::path::{Path, PathBuf};

use resnet_data::{decode_image, preprocess, read_npy_f32, Preprocess, DEFAULT_MAX_PIXELS};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/fixtures/preprocess")
}

struct Case {
    image: String,
    resize: u32,
    crop: u32,
    expected: String,
}

fn read_cases() -> Vec<Case> {
    let listing = std::fs::read_to_string(fixture_dir().join("cases.txt")).expect("cases.txt");
    listing
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(fields.len(), 4, "bad line in cases.txt: {line}");
            Case {
                image: fields[0].to_string(),
                resize: fields[1].parse().expect("resize"),
                crop: fields[2].parse().expect("crop"),
                expected: fields[3].to_string(),
            }
        })
        .collect()
}

struct Comparison {
    worst_levels: f32,
    fraction_within_one_level: f64,
    fraction_exact: f64,
}

/// Compares our HWC output with torchvision's CHW tensor, in pixel levels.
fn compare(ours_hwc: &[f32], expected_chw: &[f32], crop: usize, params: &Preprocess) -> Comparison {
    assert_eq!(ours_hwc.len(), expected_chw.len());
    let to_levels = |v: f32, c: usize| (v * params.std[c] + params.mean[c]) * 255.0;
    let (mut worst, mut within, mut exact) = (0f32, 0usize, 0usize);
    for c in 0..3 {
        for y in 0..crop {
            for x in 0..crop {
                let ours = ours_hwc[(y * crop + x) * 3 + c];
                let theirs = expected_chw[(c * crop + y) * crop + x];
                let diff = (to_levels(ours, c) - to_levels(theirs, c)).abs();
                worst = worst.max(diff);
                // Undoing the normalisation costs a few ulps, hence the small tolerances.
                within += usize::from(diff <= 1.0 + 1e-3);
                exact += usize::from(diff <= 1e-3);
            }
        }
    }
    let total = expected_chw.len() as f64;
    Comparison {
        worst_levels: worst,
        fraction_within_one_level: within as f64 / total,
        fraction_exact: exact as f64 / total,
    }
}

#[test]
fn preprocessing_matches_torchvision() {
    let mut failures = Vec::new();
    println!("{:<18} {:>6} {:>4}  {:>11}  {:>10}  {:>8}", "image", "resize", "crop", "worst(lvl)", "within 1", "exact");
    for case in read_cases() {
        let image =
            decode_image(&fixture_dir().join(&case.image), DEFAULT_MAX_PIXELS).unwrap_or_else(|e| panic!("{e}"));
        let params = Preprocess { resize: case.resize, crop: case.crop, ..Preprocess::imagenet() };
        let ours = preprocess(&image, &params);
        let (shape, expected) = read_npy_f32(&fixture_dir().join(&case.expected)).unwrap();
        let crop = case.crop as usize;
        assert_eq!(shape, [3, crop, crop], "{}", case.expected);

        let result = compare(&ours, &expected, crop, &params);
        println!(
            "{:<18} {:>6} {:>4}  {:>11.4}  {:>9.4}%  {:>7.3}%",
            case.image,
            case.resize,
            case.crop,
            result.worst_levels,
            100.0 * result.fraction_within_one_level,
            100.0 * result.fraction_exact
        );
        let must_be_exact = !case.image.ends_with(".webp");
        if result.fraction_within_one_level < 0.999 {
            failures.push(format!("{} (resize {}): under 99.9% within one level", case.image, case.resize));
        }
        if must_be_exact && result.fraction_exact < 1.0 {
            failures.push(format!("{} (resize {}): not exact", case.image, case.resize));
        }
    }
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}
