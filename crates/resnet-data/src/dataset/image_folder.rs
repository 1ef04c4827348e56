//! torchvision's `ImageFolder`: `root/<class>/<...>/<image>`, one folder per class.
//!
//! Classes are the sub-folders of `root` sorted by name (labels follow that order), and each
//! class folder is walked recursively like `os.walk(followlinks=True)`: folders in sorted path
//! order, files within a folder sorted by name. Files are kept when their extension is one
//! [`is_image_path`](crate::is_image_path) accepts, and decoded with
//! [`decode_image`](crate::decode_image) only when a sample is requested.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{index_error, Dataset, DatasetError, Normalization, Pixels, Sample};
use crate::{decode_image, is_image_path, DEFAULT_MAX_PIXELS};

/// A folder of images, one sub-folder per class. RGB, ImageNet normalisation.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    samples: Vec<(PathBuf, usize)>,
    max_pixels: u64,
    normalization: Normalization,
}

impl ImageFolder {
    /// Lists the classes and images under `root`.
    ///
    /// Fails, naming the path, when `root` cannot be read, has no class folders (for example
    /// when the images sit directly in `root`), or when a class folder holds no image.
    pub fn open(root: &Path) -> Result<Self, DatasetError> {
        let mut class_dirs = Vec::new();
        let mut loose_images = 0usize;
        for (name, path, is_dir) in list_dir(root)? {
            if is_dir {
                class_dirs.push((name, path));
            } else if is_image_path(&path) {
                loose_images += 1;
            }
        }
        if class_dirs.is_empty() {
            let hint = if loose_images > 0 {
                format!("; found {loose_images} images directly in it: move them into one sub-folder per class")
            } else {
                String::new()
            };
            let detail = format!(
                "no class folders; an image folder must look like <root>/<class>/<image>, e.g. root/cat/001.jpg{hint}"
            );
            return Err(DatasetError::invalid(root, detail));
        }
        class_dirs.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));

        let mut classes = Vec::with_capacity(class_dirs.len());
        let mut samples = Vec::new();
        for (label, (name, dir)) in class_dirs.iter().enumerate() {
            let before = samples.len();
            let mut dirs = Vec::new();
            collect_dirs(dir, &mut dirs, 0)?;
            dirs.sort_by(|a, b| a.as_os_str().as_encoded_bytes().cmp(b.as_os_str().as_encoded_bytes()));
            for sub in &dirs {
                let mut files: Vec<(OsString, PathBuf)> = list_dir(sub)?
                    .into_iter()
                    .filter(|(_, path, is_dir)| !is_dir && is_image_path(path))
                    .map(|(name, path, _)| (name, path))
                    .collect();
                files.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
                samples.extend(files.into_iter().map(|(_, path)| (path, label)));
            }
            if samples.len() == before {
                let detail = format!(
                    "class folder {:?} holds no images (extensions jpg, jpeg, png, webp, bmp, gif); \
                     add images or remove the folder",
                    name.to_string_lossy()
                );
                return Err(DatasetError::invalid(dir, detail));
            }
            classes.push(name.to_string_lossy().into_owned());
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            samples,
            max_pixels: DEFAULT_MAX_PIXELS,
            normalization: Normalization::imagenet(),
        })
    }

    /// Changes the decoding pixel budget (default [`DEFAULT_MAX_PIXELS`]).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The folder the data set was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every image path with its label, in sample order.
    pub fn samples(&self) -> &[(PathBuf, usize)] {
        &self.samples
    }
}

/// Nesting deeper than this is taken for a symbolic-link loop.
const MAX_DEPTH: usize = 64;

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), DatasetError> {
    if depth > MAX_DEPTH {
        return Err(DatasetError::invalid(dir, "folders nested too deeply (a symbolic-link loop?)"));
    }
    out.push(dir.to_path_buf());
    for (_, path, is_dir) in list_dir(dir)? {
        if is_dir {
            collect_dirs(&path, out, depth + 1)?;
        }
    }
    Ok(())
}

/// The entries of `dir` as (name, path, is a directory after following links).
fn list_dir(dir: &Path) -> Result<Vec<(OsString, PathBuf, bool)>, DatasetError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DatasetError::read(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DatasetError::read(dir, e))?;
        let path = entry.path();
        // Like os.walk: a broken link counts as a file (and fails when decoded).
        let is_dir = std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        out.push((entry.file_name(), path, is_dir));
    }
    Ok(out)
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    fn channels(&self) -> usize {
        3
    }
    fn normalization(&self) -> &Normalization {
        &self.normalization
    }
    fn get(&self, index: usize) -> Result<Sample, DatasetError> {
        let (path, label) = self.samples.get(index).ok_or_else(|| index_error(index, self.samples.len()))?;
        let image = decode_image(path, self.max_pixels)?;
        Ok(Sample {
            pixels: Pixels::U8(image.pixels),
            height: image.height as usize,
            width: image.width as usize,
            channels: 3,
            label: *label,
        })
    }
    fn class_names(&self) -> Option<&[String]> {
        Some(&self.classes)
    }
}
