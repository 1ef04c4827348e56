//! Checkpoints that survive a crash at any moment.
//!
//! A checkpoint in `RUN_DIR` is three files:
//!
//! ```text
//! model-0000001234.safetensors       the model's state_dict (torchvision names and layouts)
//! optimizer-0000001234.safetensors   the SGD momentum buffers (`momentum.<name>`, f32)
//! checkpoint.json                    names those two files; holds the SGD settings and TrainState
//! ```
//!
//! (`1234` is the optimizer step.) Every file is written with [`write_atomic`]: to a temporary
//! file in the same directory, synced, renamed over the target, the directory synced. The two
//! tensor files come first and `checkpoint.json` last, so the JSON always names a complete,
//! matching pair: a crash leaves either the previous checkpoint or the new one. Tensor files
//! that the new JSON no longer names are removed afterwards.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use resnet_core::weights::safetensors_io::{load_safetensors, save_safetensors_with_metadata};
use resnet_core::StateDict;
use serde::{Deserialize, Serialize};

use crate::{Sgd, SgdConfig, TrainError};

/// The file that names the current checkpoint of a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
const FORMAT: &str = "resnet-train checkpoint v1";

/// Where training stands, saved with every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed: the 0-based index of the epoch to run next.
    pub epoch: u64,
    /// Optimizer steps completed: the 0-based index of the next step, and what to pass to
    /// [`LrSchedule::lr_at`](crate::LrSchedule::lr_at) for it.
    pub step: u64,
    /// State of the data-order random generator, to continue the same shuffle sequence.
    pub rng_state: u64,
    /// [`LrSchedule::position`](crate::LrSchedule::position) of the next step: for reading and
    /// checking only, `lr_at(step)` needs nothing else.
    pub schedule_position: u64,
    /// Best test accuracy so far (a fraction in [0, 1]), if any evaluation ran.
    pub best_accuracy: Option<f64>,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub model: StateDict,
    pub optimizer: Sgd,
    pub train_state: TrainState,
}

/// The contents of `checkpoint.json`.
#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    model: String,
    optimizer: String,
    optimizer_config: SgdConfig,
    train_state: TrainState,
}

/// Writes `bytes` to `path` so that readers see the old contents or the new, never a part:
/// a temporary file in the same directory, fsync, rename over `path`, fsync of the directory.
/// On failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| TrainError::corrupt(path, "the path does not name a file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let tmp = path.with_file_name(tmp_name);
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(TrainError::io(path, e));
    }
    sync_dir(path);
    Ok(())
}

/// Makes a rename in `path`'s directory durable; not every platform can sync a directory.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Saves the model, the optimizer and `state` as the run's current checkpoint (see the module
/// documentation), creating `run_dir` if needed.
pub fn save_checkpoint(
    run_dir: &Path,
    model: &StateDict,
    optimizer: &Sgd,
    state: &TrainState,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
    let model_name = format!("model-{:010}.safetensors", state.step);
    let optimizer_name = format!("optimizer-{:010}.safetensors", state.step);
    save_safetensors_with_metadata(&run_dir.join(&model_name), model, &[("format", "pt")])?;
    let meta = [("format", "resnet-train sgd state")];
    save_safetensors_with_metadata(&run_dir.join(&optimizer_name), &optimizer.state_dict(), &meta)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        model: model_name.clone(),
        optimizer: optimizer_name.clone(),
        optimizer_config: *optimizer.config(),
        train_state: state.clone(),
    };
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| TrainError::Config(e.to_string()))?;
    write_atomic(&run_dir.join(CHECKPOINT_FILE), format!("{json}\n").as_bytes())?;
    remove_stale(run_dir, &[&model_name, &optimizer_name]);
    Ok(())
}

/// Deletes earlier checkpoints' tensor files; a failure only leaves a file behind.
fn remove_stale(run_dir: &Path, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(run_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = (name.starts_with("model-") || name.starts_with("optimizer-")) && name.ends_with(".safetensors");
        if ours && !keep.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads and checks `run_dir/checkpoint.json`; returns its path and contents.
fn read_manifest(run_dir: &Path) -> Result<(PathBuf, Manifest), TrainError> {
    let path = run_dir.join(CHECKPOINT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TrainError::NoCheckpoint { dir: run_dir.to_path_buf(), file: path });
        }
        Err(e) => return Err(TrainError::io(&path, e)),
    };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
        TrainError::corrupt(
            &path,
            format!("not a checkpoint manifest ({e}); restore it from a backup or start a fresh run"),
        )
    })?;
    if manifest.format != FORMAT {
        let reason = format!("checkpoint format `{}`, this build reads `{FORMAT}`", manifest.format);
        return Err(TrainError::corrupt(&path, reason));
    }
    Ok((path, manifest))
}

/// Where the run in `run_dir` stands, from its `checkpoint.json` alone (the tensor files are
/// not read): to tell a finished run from one to resume.
pub fn load_train_state(run_dir: &Path) -> Result<TrainState, TrainError> {
    Ok(read_manifest(run_dir)?.1.train_state)
}

/// Loads the checkpoint that `run_dir/checkpoint.json` names.
pub fn load_checkpoint(run_dir: &Path) -> Result<Checkpoint, TrainError> {
    let (path, manifest) = read_manifest(run_dir)?;
    let model = load_safetensors(&tensor_path(run_dir, &path, &manifest.model)?)?;
    let optimizer_dict = load_safetensors(&tensor_path(run_dir, &path, &manifest.optimizer)?)?;
    let mut optimizer = Sgd::new(manifest.optimizer_config)?;
    optimizer.load_state_dict(&optimizer_dict)?;
    Ok(Checkpoint { model, optimizer, train_state: manifest.train_state })
}

/// The path of a tensor file named in the manifest, which must be a plain file name.
fn tensor_path(run_dir: &Path, manifest: &Path, name: &str) -> Result<PathBuf, TrainError> {
    let plain = Path::new(name).file_name().is_some_and(|f| f == name);
    if !plain {
        return Err(TrainError::corrupt(manifest, format!("`{name}` is not a file name in the run directory")));
    }
    Ok(run_dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamSlot;
    use resnet_core::{StoredTensor, TensorValues};

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("resnet-train-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    fn model(scale: f32) -> StateDict {
        let mut dict = StateDict::new();
        dict.insert("conv1.weight", StoredTensor::f32(vec![2, 1, 1, 2], vec![0.5 * scale, -1.25, 3e-39, 7.0]));
        dict.insert("bn1.num_batches_tracked", StoredTensor { shape: vec![], values: TensorValues::I64(vec![42]) });
        dict
    }

    fn trained_sgd() -> Sgd {
        let config = SgdConfig { momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 5e-4 };
        let mut sgd = Sgd::new(config).unwrap();
        let mut w = [1.0f32, 2.0];
        let slot = ParamSlot { name: "conv1.weight", value: &mut w, grad: &[0.1, -0.3], decay: true };
        sgd.step(0.1, &mut [slot]).unwrap();
        sgd
    }

    fn state(step: u64) -> TrainState {
        TrainState { epoch: 3, step, rng_state: u64::MAX - 12345, schedule_position: 3, best_accuracy: Some(0.1 + 0.2) }
    }

    #[test]
    fn round_trip_restores_everything_exactly() {
        let dir = scratch("ckpt-round-trip");
        let sgd = trained_sgd();
        save_checkpoint(&dir, &model(1.0), &sgd, &state(1200)).unwrap();
        let back = load_checkpoint(&dir).unwrap();
        assert_eq!(back.train_state, state(1200));
        assert_eq!(load_train_state(&dir).unwrap(), state(1200));
        assert_eq!(back.optimizer.config(), sgd.config());
        assert_eq!(back.optimizer.momentum_buffer("conv1.weight"), sgd.momentum_buffer("conv1.weight"));
        assert_eq!(back.model.keys().collect::<Vec<_>>(), ["conv1.weight", "bn1.num_batches_tracked"]);
        assert_eq!(back.model.get("conv1.weight"), model(1.0).get("conv1.weight"));
        assert_eq!(back.model.get("bn1.num_batches_tracked"), model(1.0).get("bn1.num_batches_tracked"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn saving_again_replaces_the_checkpoint_and_leaves_no_temporary_files() {
        let dir = scratch("ckpt-replace");
        save_checkpoint(&dir, &model(1.0), &trained_sgd(), &state(100)).unwrap();
        save_checkpoint(&dir, &model(2.0), &trained_sgd(), &state(200)).unwrap();
        assert_eq!(
            files(&dir),
            ["checkpoint.json", "model-0000000200.safetensors", "optimizer-0000000200.safetensors"]
        );
        let back = load_checkpoint(&dir).unwrap();
        assert_eq!(back.train_state.step, 200);
        assert_eq!(back.model.get("conv1.weight"), model(2.0).get("conv1.weight"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn write_atomic_replaces_whole_files_only() {
        let dir = scratch("ckpt-atomic");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(files(&dir), ["state.json"]);
        // A write that cannot happen (the target is a directory) leaves nothing behind.
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let msg = write_atomic(&dir.join("sub"), b"x").unwrap_err().to_string();
        assert!(msg.contains("sub"), "{msg}");
        assert_eq!(files(&dir), ["state.json", "sub"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_and_damaged_checkpoints_say_which_file() {
        let dir = scratch("ckpt-damaged");
        let msg = load_checkpoint(&dir).unwrap_err().to_string();
        assert!(msg.contains("checkpoint.json is missing") && msg.contains("fresh run"), "{msg}");

        save_checkpoint(&dir, &model(1.0), &trained_sgd(), &state(7)).unwrap();
        let manifest = dir.join(CHECKPOINT_FILE);
        let good = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, &good[..good.len() / 2]).unwrap();
        let msg = load_checkpoint(&dir).unwrap_err().to_string();
        assert!(msg.contains("checkpoint.json") && msg.contains("not a checkpoint manifest"), "{msg}");

        std::fs::write(&manifest, good.replace("model-0000000007", "../model-0000000007")).unwrap();
        assert!(load_checkpoint(&dir).unwrap_err().to_string().contains("not a file name"));

        std::fs::write(&manifest, &good).unwrap();
        let model_file = dir.join("model-0000000007.safetensors");
        let bytes = std::fs::read(&model_file).unwrap();
        std::fs::write(&model_file, &bytes[..bytes.len() - 3]).unwrap();
        let msg = load_checkpoint(&dir).unwrap_err().to_string();
        assert!(msg.contains("model-0000000007.safetensors"), "{msg}");

        std::fs::remove_file(&model_file).unwrap();
        let msg = load_checkpoint(&dir).unwrap_err().to_string();
        assert!(msg.contains("model-0000000007.safetensors"), "{msg}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
