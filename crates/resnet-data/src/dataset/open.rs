//! Opening a data set by kind (`--dataset`) and location (`--data`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use super::{
    read_cifar10, read_cifar100, read_idx_pair, read_npz, Dataset, DatasetError, ImageFolder, Normalization,
    FASHION_MNIST_CLASSES,
};

/// Where Debian's `dataset-fashion-mnist` package installs the gzipped IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// Where an MNIST package laid out like Debian's Fashion-MNIST one would install its files.
pub const MNIST_DIR: &str = "/usr/share/datasets/mnist";

/// The supported data sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    Mnist,
    FashionMnist,
    Cifar10,
    Cifar100,
    ImageFolder,
    Npz,
}

impl DatasetKind {
    /// Every kind, in the order of [`DatasetKind::name`]s shown to users.
    pub const ALL: [DatasetKind; 6] = [
        DatasetKind::Mnist,
        DatasetKind::FashionMnist,
        DatasetKind::Cifar10,
        DatasetKind::Cifar100,
        DatasetKind::ImageFolder,
        DatasetKind::Npz,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::ImageFolder => "imagefolder",
            DatasetKind::Npz => "npz",
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DatasetError;

    /// Accepts the names of [`DatasetKind::name`], case-insensitively, with or without `-`/`_`.
    fn from_str(s: &str) -> Result<Self, DatasetError> {
        let key: String = s.chars().filter(|c| *c != '-' && *c != '_').collect::<String>().to_ascii_lowercase();
        DatasetKind::ALL.into_iter().find(|k| k.name().replace('-', "") == key).ok_or_else(|| {
            let names: Vec<_> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
            DatasetError::Config(format!("unknown data set {s:?}; expected one of {}", names.join(", ")))
        })
    }
}

/// A data set's training split and, when it has one, its test split (otherwise use
/// [`split_holdout`](super::split_holdout)).
#[derive(Clone)]
pub struct DatasetSplits {
    pub train: Arc<dyn Dataset>,
    pub test: Option<Arc<dyn Dataset>>,
}

/// Opens a data set.
///
/// * `mnist` / `fashion-mnist`: IDX files (`train-images-idx3-ubyte[.gz]`,
///   `train-labels-idx1-ubyte[.gz]`, `t10k-...`) in `data`, `data/raw`,
///   `data/MNIST/raw` or `data/FashionMNIST/raw`; without `data`, in [`MNIST_DIR`] /
///   [`FASHION_MNIST_DIR`].
/// * `cifar10`: `data_batch_1.bin` ..= `data_batch_5.bin` and `test_batch.bin` in `data` or
///   `data/cifar-10-batches-bin`. `cifar100`: `train.bin`, `test.bin` in `data` or
///   `data/cifar-100-binary`.
/// * `imagefolder`: `data/train` and `data/val` (or `data/test`) when `data/train` exists,
///   otherwise `data` itself with no test split.
/// * `npz`: `data` is the archive.
pub fn open_dataset(kind: DatasetKind, data: Option<&Path>) -> Result<DatasetSplits, DatasetError> {
    let require =
        || data.ok_or_else(|| DatasetError::Config(format!("--dataset {kind} needs --data pointing at its files")));
    match kind {
        DatasetKind::Mnist | DatasetKind::FashionMnist => open_idx(kind, data),
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => open_cifar(kind, require()?),
        DatasetKind::ImageFolder => {
            let root = require()?;
            let train_dir = root.join("train");
            if !train_dir.is_dir() {
                return Ok(DatasetSplits { train: Arc::new(ImageFolder::open(root)?), test: None });
            }
            let test_dir = [root.join("val"), root.join("test")].into_iter().find(|d| d.is_dir());
            let test = match test_dir {
                Some(dir) => Some(Arc::new(ImageFolder::open(&dir)?) as Arc<dyn Dataset>),
                None => None,
            };
            Ok(DatasetSplits { train: Arc::new(ImageFolder::open(&train_dir)?), test })
        }
        DatasetKind::Npz => {
            let path = require()?;
            let splits = read_npz(path)?;
            let test = splits.test.map(|t| Arc::new(t) as Arc<dyn Dataset>);
            Ok(DatasetSplits { train: Arc::new(splits.train), test })
        }
    }
}

const IDX_TRAIN: [&str; 2] = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"];
const IDX_TEST: [&str; 2] = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// `stem` in `dir`, gzipped or not, also in the `train-images.idx3-ubyte` spelling.
fn find_idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    [stem.to_string(), format!("{stem}.gz"), dotted.clone(), format!("{dotted}.gz")]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
}

fn open_idx(kind: DatasetKind, data: Option<&Path>) -> Result<DatasetSplits, DatasetError> {
    let (title, default_dir, torchvision_dir, normalization) = match kind {
        DatasetKind::FashionMnist => {
            ("Fashion-MNIST", FASHION_MNIST_DIR, "FashionMNIST", Normalization::fashion_mnist())
        }
        _ => ("MNIST", MNIST_DIR, "MNIST", Normalization::mnist()),
    };
    let base = data.map_or_else(|| PathBuf::from(default_dir), Path::to_path_buf);
    let candidates = [base.clone(), base.join("raw"), base.join(torchvision_dir).join("raw")];
    let Some(dir) = candidates.iter().find(|d| find_idx_file(d, IDX_TRAIN[0]).is_some()) else {
        let looked: Vec<_> = candidates.iter().map(|d| d.display().to_string()).collect();
        let hint = if kind == DatasetKind::FashionMnist && data.is_none() {
            "install them with `apt-get install dataset-fashion-mnist` or pass --data DIR"
        } else {
            "pass --data DIR holding the IDX files (as downloaded, gzipped or not)"
        };
        return Err(DatasetError::NotFound(format!(
            "{title} not found: no {}[.gz] in {}; {hint}",
            IDX_TRAIN[0],
            looked.join(", ")
        )));
    };
    let names: Vec<String> = match kind {
        DatasetKind::FashionMnist => FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect(),
        _ => (0..10).map(|d| d.to_string()).collect(),
    };
    let open_pair = |stems: [&str; 2]| -> Result<Option<Arc<dyn Dataset>>, DatasetError> {
        let images = find_idx_file(dir, stems[0]);
        let labels = find_idx_file(dir, stems[1]);
        match (images, labels) {
            (None, None) => Ok(None),
            (Some(images), Some(labels)) => {
                let set = read_idx_pair(&images, &labels, 10, normalization.clone())?;
                Ok(Some(Arc::new(set.with_class_names(names.clone()))))
            }
            (Some(_), None) => Err(missing_file(dir, stems[1])),
            (None, Some(_)) => Err(missing_file(dir, stems[0])),
        }
    };
    let train = open_pair(IDX_TRAIN)?.ok_or_else(|| missing_file(dir, IDX_TRAIN[1]))?;
    Ok(DatasetSplits { train, test: open_pair(IDX_TEST)? })
}

fn missing_file(dir: &Path, stem: &str) -> DatasetError {
    DatasetError::NotFound(format!("{}: {stem}[.gz] is missing", dir.display()))
}

fn open_cifar(kind: DatasetKind, base: &Path) -> Result<DatasetSplits, DatasetError> {
    let (subdir, train_names, test_name): (&str, Vec<String>, &str) = if kind == DatasetKind::Cifar10 {
        ("cifar-10-batches-bin", (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(), "test_batch.bin")
    } else {
        ("cifar-100-binary", vec!["train.bin".to_string()], "test.bin")
    };
    let candidates = [base.to_path_buf(), base.join(subdir)];
    let Some(dir) = candidates.iter().find(|d| d.join(&train_names[0]).is_file()) else {
        return Err(DatasetError::NotFound(format!(
            "{kind} not found: no {} in {} or {}; pass --data DIR holding the binary version's files",
            train_names[0],
            candidates[0].display(),
            candidates[1].display()
        )));
    };
    let train_files: Vec<PathBuf> = train_names.iter().map(|n| dir.join(n)).collect();
    if let Some(missing) = train_files.iter().find(|f| !f.is_file()) {
        return Err(DatasetError::NotFound(format!("{}: file is missing", missing.display())));
    }
    let test_file = dir.join(test_name);
    let read = |files: &[PathBuf]| -> Result<Arc<dyn Dataset>, DatasetError> {
        Ok(if kind == DatasetKind::Cifar10 { Arc::new(read_cifar10(files)?) } else { Arc::new(read_cifar100(files)?) })
    };
    let test = if test_file.is_file() { Some(read(&[test_file])?) } else { None };
    Ok(DatasetSplits { train: read(&train_files)?, test })
}
