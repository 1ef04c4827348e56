//! End-to-end: `resnet train` on a tiny CIFAR-10-format data set the test writes, then
//! `resnet eval --json` on the weights it saved, and `--resume` of the finished run.

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-train-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// CIFAR-10 binary layout: per record one label byte, then 1024 R, 1024 G, 1024 B bytes.
fn write_cifar10(dir: &std::path::Path, per_file: usize) {
    let mut state = 1u32;
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
            // Class-dependent brightness so the task is learnable.
            bytes.extend((0..3072).map(|_| next() / 4 + label * 19));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn resnet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("runs")
}

#[test]
fn train_then_eval_on_cifar_format_data() {
    let data = scratch("data");
    write_cifar10(&data, 8);
    let run = scratch("run");
    let o = resnet(&[
        "train",
        "--arch",
        "resnet20",
        "--dataset",
        "cifar10",
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch",
        "8",
        "--lr",
        "0.05",
        "--out",
        run.to_str().unwrap(),
        "--log-every",
        "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["metrics.jsonl", "curves.png", "last.safetensors", "best.safetensors", "checkpoint.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 2);
    assert!(epochs[1]["test_accuracy"].is_number());

    let weights = run.join("last.safetensors");
    let o = resnet(&[
        "eval",
        "--arch",
        "resnet20",
        "--weights",
        weights.to_str().unwrap(),
        "--dataset",
        "cifar10",
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["count"], 8);
    let (acc, top5) = (v["accuracy"].as_f64().unwrap(), v["top5"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&acc) && top5 >= acc && top5 <= 1.0);

    // The weights load in `classify` as well (torchvision-style names, 10 classes).
    let o = resnet(&["summary", "--arch", "resnet20", "--input", "32", "--table-only"]);
    assert!(o.status.success());
}

#[test]
fn a_missing_data_set_is_a_clear_error() {
    let empty = scratch("empty");
    let o = resnet(&["train", "--dataset", "cifar10", "--data", empty.to_str().unwrap(), "--epochs", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains(empty.to_str().unwrap()) || err.contains("cifar"), "{err}");
}
