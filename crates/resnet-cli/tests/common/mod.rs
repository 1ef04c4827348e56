//! Helpers shared by the end-to-end tests of the `resnet` binary.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// A fresh, empty directory for one test (a `tempfile::TempDir`, so removed with
/// everything in it when dropped, also when the test fails), usable as a `Path`.
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

/// A fresh, empty directory for one test, `resnet-{prefix}-{name}-…` in the temp directory,
/// removed when dropped.
pub fn scratch(prefix: &str, name: &str) -> Scratch {
    let dir = tempfile::Builder::new().prefix(&format!("resnet-{prefix}-{name}-")).tempdir();
    Scratch(dir.expect("a scratch directory in the temp directory"))
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
