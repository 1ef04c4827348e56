//! End-to-end: `resnet train` on a tiny CIFAR-10-format data set the test writes, then
//! `resnet eval --json` on the weights it saved, and `--resume` of the finished run.

mod common;
use common::{resnet, scratch, write_cifar10};

#[test]
fn train_then_eval_on_cifar_format_data() {
    let data = scratch("train-cli", "data");
    write_cifar10(&data, 8, 1);
    let run = scratch("train-cli", "run");
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
    let empty = scratch("train-cli", "empty");
    let o = resnet(&["train", "--dataset", "cifar10", "--data", empty.to_str().unwrap(), "--epochs", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains(empty.to_str().unwrap()) || err.contains("cifar"), "{err}");
}

#[test]
fn train_samples_trains_on_a_subset_and_refuses_too_many() {
    let data = scratch("train-cli", "subset-data");
    write_cifar10(&data, 8, 1);
    let run = scratch("train-cli", "subset-run");
    let args = |samples: &str| {
        let mut a = vec!["train", "--arch", "resnet20", "--dataset", "cifar10", "--data", data.to_str().unwrap()];
        a.extend(["--epochs", "1", "--batch", "2", "--log-every", "1", "--out", run.to_str().unwrap()]);
        a.extend(["--train-samples", samples]);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let o = resnet(&args("4").iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("(4 train / 8 test samples)"), "{err}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last_step = metrics.lines().rfind(|l| l.contains("\"kind\":\"epoch\"")).unwrap();
    assert!(last_step.contains("\"step\":2"), "{last_step}");

    // Five training files of 8 samples: 40 to choose from.
    let o = resnet(&args("41").iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("--train-samples") && err.contains("choose 1 to 40"), "{err}");
}
