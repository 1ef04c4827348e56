//! Writes a synthetic `metrics.jsonl` and its curves into a run directory, to look at the plot:
//!
//!     cargo run -p resnet-train --example plot_demo -- /tmp/demo-run
//!
//! then open /tmp/demo-run/curves.png.

use std::path::PathBuf;

use resnet_train::{plot_metrics_file, MetricRecord, MetricsWriter, RecordKind, TrainError};

fn main() -> Result<(), TrainError> {
    let run_dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "demo-run".into()));
    let _ = std::fs::remove_file(run_dir.join(resnet_train::METRICS_FILE));
    let mut metrics = MetricsWriter::open(&run_dir)?;
    let epochs = 40u64;
    for epoch in 0..epochs {
        let t = epoch as f64;
        let lr = 0.05 * (1.0 + (std::f64::consts::PI * t / epochs as f64).cos());
        let mut r = MetricRecord::new(RecordKind::Epoch, epoch, (epoch + 1) * 391);
        r.loss = Some(2.2 * (-t / 8.0).exp() + 0.05 + 0.02 * (t * 1.7).sin());
        r.test_loss = Some(2.0 * (-t / 9.0).exp() + 0.30 + 0.04 * (t * 2.3).sin());
        r.accuracy = Some(0.99 - 0.88 * (-t / 7.0).exp());
        r.test_accuracy = Some(0.93 - 0.80 * (-t / 8.0).exp() + 0.01 * (t * 1.3).sin());
        r.lr = Some(lr);
        metrics.write(&r)?;
    }
    let out = run_dir.join("curves.png");
    plot_metrics_file(metrics.path(), &out)?;
    println!("{}", out.display());
    Ok(())
}
