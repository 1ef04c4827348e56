//! Held-out splits and index subsets.

use std::sync::Arc;

use super::{index_error, Dataset, DatasetError, Normalization, Sample};
use crate::rng::Rng;

/// The two sides of a held-out split: sorted, disjoint index lists covering `0..n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holdout {
    pub train: Vec<usize>,
    pub holdout: Vec<usize>,
}

/// Stream tag so that split seeds never coincide with loader or augmentation streams.
const SPLIT_STREAM: u64 = 0x5350_4c49_5400_0001;

/// Splits `0..n` into a training part and a held-out part of `round(n * fraction)` samples
/// chosen by a seeded shuffle (same `n`, `fraction`, `seed` → same split). Both lists are
/// sorted. `fraction` must lie strictly between 0 and 1, and both parts must be non-empty.
pub fn split_holdout(n: usize, fraction: f64, seed: u64) -> Result<Holdout, DatasetError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(DatasetError::Config(format!("held-out fraction {fraction} must be between 0 and 1 (exclusive)")));
    }
    let held = (n as f64 * fraction).round() as usize;
    if held == 0 || held >= n {
        return Err(DatasetError::Config(format!(
            "holding out {fraction} of {n} samples leaves an empty side; use more samples or another fraction"
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(&[SPLIT_STREAM, seed, n as u64]).shuffle(&mut order);
    let mut holdout = order[..held].to_vec();
    let mut train = order[held..].to_vec();
    holdout.sort_unstable();
    train.sort_unstable();
    Ok(Holdout { train, holdout })
}

/// Stream tag of [`random_subset`], distinct from the held-out split's.
const SUBSET_STREAM: u64 = 0x5350_4c49_5400_0002;

/// `count` of the indices `0..n`, chosen by a seeded shuffle and returned sorted (same `n`,
/// `count`, `seed` → same subset): a smaller training set for quick experiments whose
/// classes keep their proportions on average. `count` must lie in `1..=n`.
pub fn random_subset(n: usize, count: usize, seed: u64) -> Result<Vec<usize>, DatasetError> {
    if count == 0 || count > n {
        return Err(DatasetError::Config(format!("cannot take {count} samples out of {n}; choose 1 to {n}")));
    }
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(&[SUBSET_STREAM, seed, n as u64]).shuffle(&mut order);
    let mut chosen = order[..count].to_vec();
    chosen.sort_unstable();
    Ok(chosen)
}

/// The samples of `inner` at `indices`, in that order.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// Fails if an index is out of range for `inner`.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self, DatasetError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(index_error(bad, inner.len()));
        }
        Ok(Subset { inner, indices })
    }

    /// Indices into the underlying data set.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn normalization(&self) -> &Normalization {
        self.inner.normalization()
    }
    fn get(&self, index: usize) -> Result<Sample, DatasetError> {
        let &inner_index = self.indices.get(index).ok_or_else(|| index_error(index, self.indices.len()))?;
        self.inner.get(inner_index)
    }
    fn class_names(&self) -> Option<&[String]> {
        self.inner.class_names()
    }
}
