//! End-to-end: `resnet experiment degradation` on a tiny CIFAR-10-format data set the test
//! writes: both runs, both figures, the JSON files and the summary table; then a second
//! invocation that finds both runs finished and only redraws.

mod common;
use common::{resnet, scratch, write_cifar10};

use std::path::Path;

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    (info.width, info.height)
}

#[test]
fn degradation_experiment_on_cifar_format_data() {
    let data = scratch("experiment-cli", "data");
    write_cifar10(&data, 8, 7);
    let out = scratch("experiment-cli", "out");
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
    let out = scratch("experiment-cli", "bad-arch");
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
