//! End-to-end: `resnet experiment degradation` on a tiny CIFAR-10-format data set the test
//! writes: both runs, both figures, the JSON files and the summary table; then a second
//! invocation that finds both runs finished and only redraws.

use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-experiment-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// CIFAR-10 binary layout: per record one label byte, then 1024 R, 1024 G, 1024 B bytes.
fn write_cifar10(dir: &Path, per_file: usize) {
    let mut state = 7u32;
    let mut next = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 24) as u8
    };
    let files = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
    for name in files.iter().chain(["test_batch.bin"].iter()) {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = (i % 10) as u8;
            bytes.push(label);
            bytes.extend((0..3072).map(|_| next() / 4 + label * 19));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn resnet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("runs")
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    (info.width, info.height)
}

#[test]
fn degradation_experiment_on_cifar_format_data() {
    let data = scratch("data");
    write_cifar10(&data, 8);
    let out = scratch("out");
    let args = [
        "--threads",
        "1",
        "experiment",
        "degradation",
        "--dataset",
        "cifar10",
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--archs",
        "plain20,resnet20",
        "--batch",
        "8",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = resnet(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    for arch in ["plain20", "resnet20"] {
        for f in ["metrics.jsonl", "checkpoint.json", "last.safetensors"] {
            assert!(out.join(arch).join(f).exists(), "{arch}/{f} missing");
        }
    }
    assert_eq!(png_size(&out.join("degradation.png")), (1200, 640));
    assert_eq!(png_size(&out.join("gradient_norms.png")), (1200, 600));

    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap()
    };
    let norms = read("gradient_norms.json");
    assert_eq!(norms["batch"], 8);
    let nets = norms["nets"].as_array().unwrap();
    assert_eq!(nets.len(), 2);
    for net in nets {
        let layers = net["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 19, "{}", net["label"]);
        assert!(layers.iter().all(|l| l["norm"].as_f64().is_some_and(|n| n.is_finite() && n > 0.0)));
    }
    let summary = read("summary.json");
    assert_eq!(summary["complete"], true);
    let runs = summary["runs"].as_array().unwrap();
    let archs: Vec<&str> = runs.iter().map(|r| r["arch"].as_str().unwrap()).collect();
    assert_eq!(archs, ["plain20", "resnet20"]);
    for r in runs {
        let err = r["final_test_error"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&err) && r["best_test_error"].as_f64().unwrap() <= err);
        assert!((0.0..=100.0).contains(&r["final_train_error"].as_f64().unwrap()));
    }
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("final train error") && table.contains("plain20") && table.contains("resnet20"), "{table}");

    // Again: both runs are finished, so nothing trains; the figures and summary are redrawn.
    let o = resnet(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(stderr.matches("finished earlier, skipped").count(), 2, "{stderr}");
    assert_eq!(read("summary.json")["runs"], summary["runs"]);
    let _ = std::fs::remove_dir_all(out);
    let _ = std::fs::remove_dir_all(data);
}

#[test]
fn unknown_architectures_fail_before_any_work() {
    let out = scratch("bad-arch");
    let o = resnet(&[
        "experiment",
        "degradation",
        "--dataset",
        "cifar10",
        "--data",
        out.to_str().unwrap(),
        "--archs",
        "plain20,plain21",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("plain21"), "{err}");
    assert!(!out.join("experiment.json").exists(), "nothing written before the names are checked");
    let _ = std::fs::remove_dir_all(out);
}
