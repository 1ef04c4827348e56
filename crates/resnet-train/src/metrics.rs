//! Training metrics as JSON Lines: `RUN_DIR/metrics.jsonl`, one object per line, e.g.
//!
//! ```text
//! {"kind":"step","epoch":0,"step":10,"loss":2.31,"accuracy":0.125,"lr":0.1,"images_per_sec":412.5}
//! {"kind":"epoch","epoch":0,"step":391,"loss":1.87,"accuracy":0.31,"test_loss":1.62,"test_accuracy":0.41,"lr":0.1}
//! ```
//!
//! `epoch` is the 0-based epoch the record belongs to and `step` the number of optimizer steps
//! completed when it was written. `loss`/`accuracy` are training values (the batch's for a step
//! record, the epoch's mean for an epoch record), `test_*` are from evaluation; accuracies are
//! fractions in [0, 1]. Absent values are left out, and non-finite ones (a diverged loss) are
//! written as `null` by JSON's rules. Any other field goes into [`MetricRecord::extra`].

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{write_atomic, TrainError};

/// The metrics file's name inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Step,
    Epoch,
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub kind: RecordKind,
    pub epoch: u64,
    pub step: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_sec: Option<f64>,
    /// Wall-clock seconds since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Fields this struct does not name, kept as they were.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl MetricRecord {
    /// A record with only its kind and position; set the other fields directly.
    pub fn new(kind: RecordKind, epoch: u64, step: u64) -> MetricRecord {
        MetricRecord {
            kind,
            epoch,
            step,
            loss: None,
            accuracy: None,
            test_loss: None,
            test_accuracy: None,
            lr: None,
            images_per_sec: None,
            seconds: None,
            extra: BTreeMap::new(),
        }
    }
}

/// Appends records to `RUN_DIR/metrics.jsonl`, one complete line per `write` call.
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens (creating the run directory and file if needed) for appending. A last line cut
    /// short by a crash is dropped first, so the file stays valid JSON Lines.
    pub fn open(run_dir: &Path) -> Result<MetricsWriter, TrainError> {
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        let path = run_dir.join(METRICS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            file.set_len(complete as u64).map_err(|e| TrainError::io(&path, e))?;
        }
        Ok(MetricsWriter { path, file })
    }

    /// Opens for a resumed run: records with `step > through_step` (written after the checkpoint
    /// being resumed from) are removed, so the file does not count those steps twice.
    pub fn open_resumed(run_dir: &Path, through_step: u64) -> Result<MetricsWriter, TrainError> {
        let path = run_dir.join(METRICS_FILE);
        if path.exists() {
            let kept: Vec<MetricRecord> = read_metrics(&path)?.into_iter().filter(|r| r.step <= through_step).collect();
            let mut text = String::new();
            for record in &kept {
                text.push_str(&to_line(record));
            }
            write_atomic(&path, text.as_bytes())?;
        }
        MetricsWriter::open(run_dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line and flushes it to the file.
    pub fn write(&mut self, record: &MetricRecord) -> Result<(), TrainError> {
        let line = to_line(record);
        self.file.write_all(line.as_bytes()).and_then(|()| self.file.flush()).map_err(|e| TrainError::io(&self.path, e))
    }
}

fn to_line(record: &MetricRecord) -> String {
    // A struct of numbers, strings and JSON values always serialises.
    let mut line = serde_json::to_string(record).unwrap_or_default();
    line.push('\n');
    line
}

/// Reads every record of a metrics file. A last line without its newline (a write cut short)
/// is ignored; any other line that does not parse is an error naming its line number.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    let mut records = Vec::new();
    for (i, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line)
            .map_err(|e| TrainError::corrupt(path, format!("line {}: not a metrics record: {e}", i + 1)))?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("resnet-train-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn sample(kind: RecordKind, epoch: u64, step: u64) -> MetricRecord {
        let mut r = MetricRecord::new(kind, epoch, step);
        r.loss = Some(std::f64::consts::LN_10 / (step as f64 + 1.0));
        r.lr = Some(0.1f64 * 0.1 * 0.1);
        if kind == RecordKind::Epoch {
            r.test_accuracy = Some(1.0 / 3.0);
        } else {
            r.images_per_sec = Some(1234.5678);
        }
        r
    }

    #[test]
    fn round_trip_is_exact() {
        let dir = scratch("metrics-round-trip");
        let mut records =
            vec![sample(RecordKind::Step, 0, 1), sample(RecordKind::Step, 0, 2), sample(RecordKind::Epoch, 0, 2)];
        records[1].extra.insert("grad_norm".into(), serde_json::json!(0.75));
        let mut w = MetricsWriter::open(&dir).unwrap();
        for r in &records {
            w.write(r).unwrap();
        }
        // Each write is a complete line on disk already.
        let text = std::fs::read_to_string(w.path()).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.starts_with(r#"{"kind":"step","epoch":0,"step":1,"loss":"#), "{text}");
        assert!(text.contains(r#""grad_norm":0.75"#));
        assert_eq!(read_metrics(w.path()).unwrap(), records);

        // Reopening appends.
        drop(w);
        MetricsWriter::open(&dir).unwrap().write(&sample(RecordKind::Step, 1, 3)).unwrap();
        assert_eq!(read_metrics(&dir.join(METRICS_FILE)).unwrap().len(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_bad_lines_are_named() {
        let dir = scratch("metrics-torn");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(METRICS_FILE);
        let good = to_line(&sample(RecordKind::Step, 0, 1));
        std::fs::write(&path, format!("{good}{{\"kind\":\"st")).unwrap();
        assert_eq!(read_metrics(&path).unwrap().len(), 1);
        let mut w = MetricsWriter::open(&dir).unwrap();
        w.write(&sample(RecordKind::Step, 0, 2)).unwrap();
        let steps: Vec<u64> = read_metrics(&path).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, [1, 2]);

        std::fs::write(&path, format!("{good}not json\n")).unwrap();
        let msg = read_metrics(&path).unwrap_err().to_string();
        assert!(msg.contains("metrics.jsonl") && msg.contains("line 2"), "{msg}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn resuming_drops_records_after_the_checkpoint() {
        let dir = scratch("metrics-resume");
        let mut w = MetricsWriter::open(&dir).unwrap();
        for step in 1..=6 {
            w.write(&sample(RecordKind::Step, 0, step)).unwrap();
        }
        drop(w);
        let mut w = MetricsWriter::open_resumed(&dir, 4).unwrap();
        w.write(&sample(RecordKind::Step, 0, 5)).unwrap();
        let steps: Vec<u64> = read_metrics(w.path()).unwrap().iter().map(|r| r.step).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn non_finite_values_become_null() {
        let mut r = MetricRecord::new(RecordKind::Step, 0, 1);
        r.loss = Some(f64::NAN);
        let line = to_line(&r);
        assert_eq!(line, "{\"kind\":\"step\",\"epoch\":0,\"step\":1,\"loss\":null}\n");
        assert_eq!(serde_json::from_str::<MetricRecord>(&line).unwrap().loss, None);
    }
}
