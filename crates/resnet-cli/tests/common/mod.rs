//! Helpers shared by the end-to-end tests of the `resnet` binary.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh, empty directory for one test, removed with everything in it when dropped (also
/// when the test fails), so test runs leave nothing behind in the temp directory.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `temp/resnet-{label}-{pid}-{n}`, `n` counting calls in this process, so that tests
/// running in parallel (or one test asking twice) never share a directory.
fn fresh_scratch_dir(label: &str) -> Scratch {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("resnet-{label}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("a scratch directory in the temp directory");
    Scratch(d)
}

/// A fresh, empty directory for one test (`prefix` keeps test files apart), removed when
/// dropped.
pub fn scratch(prefix: &str, name: &str) -> Scratch {
    fresh_scratch_dir(&format!("{prefix}-{name}"))
}

/// Writes a tiny CIFAR-10 data set in the binary layout (per record one label byte, then
/// 1024 R, 1024 G, 1024 B bytes), with class-dependent brightness so it is learnable.
pub fn write_cifar10(dir: &Path, per_file: usize, seed: u32) {
    let mut state = seed;
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

/// Runs the binary with `args`.
pub fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("runs")
}
