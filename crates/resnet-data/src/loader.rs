//! Batches produced ahead of the consumer by worker threads.
//!
//! Everything random is derived from `(seed, epoch, ...)`: the epoch's permutation from
//! `(seed, epoch)`, each sample's augmentation from `(seed, epoch, sample index)`. Workers
//! build whole batches and the consumer receives them in permutation order, so the batches are
//! bit-identical whatever the number of workers, and [`Loader::epoch_from`] reproduces the tail
//! of an epoch exactly (for resuming a run).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::augment::{apply, Augment};
use crate::dataset::{Dataset, DatasetError};
use crate::rng::Rng;

const PERMUTATION_STREAM: u64 = 0x5045_524d_0000_0001;
const AUGMENT_STREAM: u64 = 0x4155_474d_0000_0001;

/// How a [`Loader`] batches, shuffles and augments.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Shuffle with a permutation derived from `(seed, epoch)`; `false` keeps data set order.
    pub shuffle: bool,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    pub seed: u64,
    /// Worker threads; 0 builds each batch on the consumer's thread when it is asked for.
    pub workers: usize,
    /// How many batches may be ready or in progress ahead of the consumer (at least 1).
    pub prefetch: usize,
    pub augment: Augment,
}

impl LoaderConfig {
    /// Shuffled, last batch kept, 2 workers, 4 batches ahead, no augmentation.
    pub fn new(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: false,
            seed,
            workers: 2,
            prefetch: 4,
            augment: Augment::None,
        }
    }
}

/// One batch of normalised images (channels-last) and their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `n * h * w * c` values, element `((i * h + y) * w + x) * c + k`.
    pub images: Vec<f32>,
    /// `[n, h, w, c]`.
    pub shape: [usize; 4],
    pub labels: Vec<usize>,
    /// The data set indices of the samples.
    pub indices: Vec<usize>,
    pub epoch: u64,
    /// Position of the batch within its epoch.
    pub batch_index: usize,
}

/// Produces the batches of a data set, epoch by epoch.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    config: LoaderConfig,
}

impl Loader {
    pub fn new(dataset: Arc<dyn Dataset>, config: LoaderConfig) -> Result<Self, DatasetError> {
        if config.batch_size == 0 {
            return Err(DatasetError::Config("batch size must be at least 1".into()));
        }
        config.augment.validate()?;
        Ok(Loader { dataset, config })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Batches in one epoch (the same for every epoch).
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The order in which epoch `epoch` visits the data set.
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            Rng::derive(&[PERMUTATION_STREAM, self.config.seed, epoch]).shuffle(&mut order);
        }
        order
    }

    /// The batches of epoch `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> Batches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch `first_batch` on: exactly the tail of
    /// [`epoch`](Self::epoch). Past the end, an empty iterator.
    pub fn epoch_from(&self, epoch: u64, first_batch: usize) -> Batches {
        let job = Arc::new(EpochJob {
            dataset: Arc::clone(&self.dataset),
            config: self.config.clone(),
            epoch,
            order: self.permutation(epoch),
        });
        let end = self.batches_per_epoch();
        let start = first_batch.min(end);
        let ahead = self.config.prefetch.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State { next_job: start, consumed: start, stop: false }),
            wake: Condvar::new(),
        });
        let (sender, receiver) = channel();
        let workers = if start < end { self.config.workers } else { 0 };
        let threads = (0..workers)
            .map(|_| {
                let (job, shared, sender) = (Arc::clone(&job), Arc::clone(&shared), sender.clone());
                std::thread::spawn(move || loop {
                    let Some(k) = shared.take_job(end, ahead) else { return };
                    let result = catch_unwind(AssertUnwindSafe(|| job.build(k))).unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(DatasetError::WorkerPanic(message))
                    });
                    if sender.send((k, result)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Batches { job, shared, receiver: Some(receiver), threads, pending: BTreeMap::new(), next: start, end }
    }
}

/// What every worker of one epoch needs.
struct EpochJob {
    dataset: Arc<dyn Dataset>,
    config: LoaderConfig,
    epoch: u64,
    order: Vec<usize>,
}

impl EpochJob {
    fn build(&self, k: usize) -> Result<Batch, DatasetError> {
        let b = self.config.batch_size;
        let indices = self.order[k * b..((k + 1) * b).min(self.order.len())].to_vec();
        let normalization = self.dataset.normalization();
        let mut images = Vec::new();
        let mut labels = Vec::with_capacity(indices.len());
        let mut dims = None;
        for &index in &indices {
            let sample = self.dataset.get(index)?;
            let mut rng = Rng::derive(&[AUGMENT_STREAM, self.config.seed, self.epoch, index as u64]);
            let out = apply(&sample, &self.config.augment, normalization, &mut rng)?;
            let these = [out.height, out.width, out.channels];
            match dims {
                None => {
                    dims = Some(these);
                    images.reserve(out.values.len() * indices.len());
                }
                Some(first) if first != these => {
                    return Err(DatasetError::Batch(format!(
                        "sample {index} is {}x{}x{} after augmentation but the batch's first sample is {}x{}x{}; \
                         use a resizing transform (resize/centre crop) for images of different sizes",
                        these[0], these[1], these[2], first[0], first[1], first[2]
                    )))
                }
                Some(_) => {}
            }
            images.extend_from_slice(&out.values);
            labels.push(sample.label);
        }
        let [h, w, c] = dims.unwrap_or([0, 0, 0]);
        Ok(Batch { images, shape: [indices.len(), h, w, c], labels, indices, epoch: self.epoch, batch_index: k })
    }
}

struct State {
    /// Next batch a worker will start.
    next_job: usize,
    /// Next batch the consumer will take; workers stay within `ahead` batches of it.
    consumed: usize,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding it; the counters
        // are still consistent (they are updated in single statements).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_job(&self, end: usize, ahead: usize) -> Option<usize> {
        let mut state = self.lock();
        loop {
            if state.stop || state.next_job >= end {
                return None;
            }
            if state.next_job < state.consumed + ahead {
                state.next_job += 1;
                return Some(state.next_job - 1);
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The batches of one epoch; an iterator of `Result<Batch, DatasetError>` that stops after the
/// first error. Dropping it stops and joins its workers.
pub struct Batches {
    job: Arc<EpochJob>,
    shared: Arc<Shared>,
    receiver: Option<Receiver<(usize, Result<Batch, DatasetError>)>>,
    threads: Vec<JoinHandle<()>>,
    pending: BTreeMap<usize, Result<Batch, DatasetError>>,
    next: usize,
    end: usize,
}

impl Batches {
    /// Position (within the epoch) of the batch the next call to `next` returns.
    pub fn next_batch_index(&self) -> usize {
        self.next
    }

    fn receive(&mut self, k: usize) -> Result<Batch, DatasetError> {
        if self.threads.is_empty() {
            return self.job.build(k);
        }
        loop {
            if let Some(result) = self.pending.remove(&k) {
                return result;
            }
            match self.receiver.as_ref().map(|r| r.recv()) {
                Some(Ok((j, result))) => {
                    self.pending.insert(j, result);
                }
                _ => return Err(DatasetError::WorkerPanic("all workers exited early".into())),
            }
        }
    }

    fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        self.receiver = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.pending.clear();
    }
}

impl Iterator for Batches {
    type Item = Result<Batch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let k = self.next;
        let result = self.receive(k);
        self.next += 1;
        {
            let mut state = self.shared.lock();
            state.consumed = self.next;
        }
        self.shared.wake.notify_all();
        if result.is_err() {
            self.end = self.next;
            self.stop();
        }
        Some(result)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

impl Drop for Batches {
    fn drop(&mut self) {
        self.stop();
    }
}
