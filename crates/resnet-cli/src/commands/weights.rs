//! `resnet weights`: the pretrained checkpoints `--weights imagenet|imagenet-v2` can fetch.

use std::fmt::Write;

use crate::pretrained::{all_specs, default_cache_dir, torch_hub_checkpoint_dir, BASE_URL_ENV, DEFAULT_BASE_URL};

/// List the pretrained ImageNet weights and the cache.
///
/// Per architecture: the `--weights` name,
/// the file, the resize it expects, and whether it is already in the cache. Files are
/// fetched from the URL shown (or a mirror set with RESNET_WEIGHTS_BASE_URL) on first use,
/// checked against the SHA-256 prefix in their name, and kept in the cache directory.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    let mut out = String::new();
    let cache = default_cache_dir()?;
    let torch_cache = torch_hub_checkpoint_dir();
    let _ = writeln!(out, "{:<18} {:<12} {:<32} {:>6}  cached", "arch", "--weights", "file", "resize");
    for s in all_specs() {
        let cached =
            cache.join(s.file_name).exists() || torch_cache.as_ref().is_some_and(|d| d.join(s.file_name).exists());
        let _ = writeln!(
            out,
            "{:<18} {:<12} {:<32} {:>6}  {}",
            s.arch,
            s.variant.as_str(),
            s.file_name,
            s.resize,
            if cached { "yes" } else { "no" }
        );
    }
    out.push('\n');
    let _ = writeln!(out, "cache: {}", cache.display());
    let _ = writeln!(out, "source: {DEFAULT_BASE_URL}/<file> (override with {BASE_URL_ENV})");
    crate::output::emit(&out)
}
