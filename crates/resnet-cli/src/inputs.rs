//! Inputs of `classify` and `embed`: image files, directories of images (walked in sorted
//! order), and `.npy` arrays of already-preprocessed `[N, C, H, W]` float32 batches (C = 3,
//! or 1 for nets trained on grey images).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rayon::prelude::*;
use resnet_core::Tensor;
use resnet_data::{decode_image, is_image_path, read_npy_f32};

use crate::preprocessing::InputPrep;

/// One thing to run the model on.
#[derive(Clone, Debug)]
pub enum InputItem {
    Image(PathBuf),
    /// Row `index` of an `[N, C, H, W]` array.
    NpyRow {
        path: PathBuf,
        index: usize,
    },
}

impl InputItem {
    /// How the item is named in outputs: the path, or `path[row]` for an array row.
    pub fn display_name(&self) -> String {
        match self {
            InputItem::Image(p) => p.display().to_string(),
            InputItem::NpyRow { path, index } => format!("{}[{index}]", path.display()),
        }
    }
}

fn is_npy(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// Expands the command line into items: files as given (images or `.npy`), directories
/// walked recursively in sorted order, keeping only image files.
pub fn expand_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<InputItem>> {
    let mut items = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read input", path.display()))?;
        if meta.is_dir() {
            let before = items.len();
            walk_dir(path, &mut items)?;
            if items.len() == before {
                anyhow::bail!("{}: directory holds no images (jpg, jpeg, png, webp, bmp, gif)", path.display());
            }
        } else if is_npy(path) {
            let (shape, _) = read_npy_f32(path)?;
            check_npy_shape(path, &shape, None)?;
            items.extend((0..shape[0]).map(|index| InputItem::NpyRow { path: path.clone(), index }));
        } else {
            items.push(InputItem::Image(path.clone()));
        }
    }
    if items.is_empty() {
        anyhow::bail!("no inputs given: pass image files, directories of images, or .npy arrays");
    }
    Ok(items)
}

fn walk_dir(dir: &Path, items: &mut Vec<InputItem>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk_dir(&p, items)?;
        } else if is_image_path(&p) {
            items.push(InputItem::Image(p));
        }
    }
    Ok(())
}

/// Checks an array's shape: `[N, C, H, W]`, and when `channels` is known, C equal to it.
fn check_npy_shape(path: &Path, shape: &[usize], channels: Option<usize>) -> anyhow::Result<()> {
    if shape.len() != 4 || shape[1] == 0 || shape[2] == 0 || shape[3] == 0 {
        anyhow::bail!(
            "{}: array has shape {shape:?}; expected float32 [N, C, H, W] (C = 3, or 1 for grey-image nets), \
             already preprocessed (normalised) images",
            path.display()
        );
    }
    if let Some(c) = channels.filter(|&c| c != shape[1]) {
        anyhow::bail!(
            "{}: array has {} channels (shape {shape:?}) but the model takes {c}; pass [N, {c}, H, W] arrays \
             or the weights this array was made for",
            path.display(),
            shape[1]
        );
    }
    Ok(())
}

/// Decodes and preprocesses `items` (in parallel) into one NHWC batch of `prep.channels`
/// channels. All items of a batch must produce the same size: images always do (the crop),
/// array rows do within a file.
pub fn load_batch(items: &[InputItem], prep: &InputPrep, max_pixels: u64) -> anyhow::Result<Tensor> {
    let crop = prep.crop as usize;
    let channels = prep.channels;
    let mut npy_cache: Option<(PathBuf, Vec<usize>, Vec<f32>)> = None;
    let mut rows: Vec<Option<(usize, usize, Vec<f32>)>> = vec![None; items.len()];
    // Arrays are read once per file; rows are already NCHW-normalised.
    for (slot, item) in rows.iter_mut().zip(items) {
        if let InputItem::NpyRow { path, index } = item {
            if npy_cache.as_ref().is_none_or(|(p, _, _)| p != path) {
                let (shape, data) = read_npy_f32(path)?;
                check_npy_shape(path, &shape, Some(channels))?;
                npy_cache = Some((path.clone(), shape, data));
            }
            if let Some((_, shape, data)) = &npy_cache {
                let (h, w) = (shape[2], shape[3]);
                let plane = channels * h * w;
                let nchw = &data[index * plane..(index + 1) * plane];
                let t = Tensor::nchw_to_nhwc([1, channels, h, w], nchw);
                *slot = Some((h, w, t.data));
            }
        }
    }
    let decoded: Vec<anyhow::Result<Option<Vec<f32>>>> = items
        .par_iter()
        .map(|item| match item {
            InputItem::Image(path) => {
                let image = decode_image(path, max_pixels)?;
                Ok(Some(prep.apply(&image)))
            }
            InputItem::NpyRow { .. } => Ok(None),
        })
        .collect();
    for (slot, d) in rows.iter_mut().zip(decoded) {
        if let Some(hwc) = d? {
            *slot = Some((crop, crop, hwc));
        }
    }
    let (h, w) = match rows.first() {
        Some(Some((h, w, _))) => (*h, *w),
        _ => anyhow::bail!("empty batch"),
    };
    let mut data = Vec::with_capacity(items.len() * h * w * channels);
    for (item, row) in items.iter().zip(rows) {
        let Some((rh, rw, hwc)) = row else { anyhow::bail!("{}: could not be read", item.display_name()) };
        if (rh, rw) != (h, w) {
            anyhow::bail!(
                "{}: is {rh}x{rw} but the batch is {h}x{w}; run inputs of different sizes separately or use --batch 1",
                item.display_name()
            );
        }
        data.extend_from_slice(&hwc);
    }
    Tensor::from_vec(&[items.len(), h, w, channels], data).context("batch assembly")
}

/// Splits `items` into runs of at most `batch` that can share one tensor: images together,
/// rows of one array together.
pub fn batch_ranges(items: &[InputItem], batch: usize) -> Vec<std::ops::Range<usize>> {
    let key = |i: &InputItem| match i {
        InputItem::Image(_) => None,
        InputItem::NpyRow { path, .. } => Some(path.clone()),
    };
    let mut ranges = Vec::new();
    let mut start = 0;
    for i in 1..=items.len() {
        if i == items.len() || i - start == batch.max(1) || key(&items[i]) != key(&items[start]) {
            ranges.push(start..i);
            start = i;
        }
    }
    ranges
}

/// A progress bar on stderr for long runs (hidden for a handful of inputs, or when stderr is
/// not a terminal).
pub fn progress_bar(total: usize, what: &str) -> indicatif::ProgressBar {
    if total < 8 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}]"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
