//! The training loop: batches from the loader, train-mode forward, cross-entropy, backward,
//! SGD with the schedule's learning rate; per-epoch evaluation, metrics, curves, the best
//! and last weights, and a checkpoint each epoch and on interrupt that resumes exactly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use resnet_core::kernels::loss::{softmax_cross_entropy, top1_correct, top_k_correct};
use resnet_core::model::params::Parameterized;
use resnet_core::model::ParamKind;
use resnet_core::weights::safetensors_io::save_safetensors;
use resnet_core::{ResNet, Tensor};
use resnet_data::{Augment, Batch, Dataset, Loader, LoaderConfig};

use crate::checkpoint::{load_checkpoint, save_checkpoint, TrainState};
use crate::metrics::{MetricRecord, MetricsWriter, RecordKind};
use crate::plot::plot_metrics_file;
use crate::{LrSchedule, ParamSlot, Sgd, SgdConfig, TrainError};

/// Everything one run needs besides the model and the data.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub epochs: u64,
    /// Stop after this many optimizer steps in total (the weights are still saved).
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    pub sgd: SgdConfig,
    pub schedule: LrSchedule,
    /// Leave BatchNorm parameters and biases out of weight decay.
    pub no_decay_bn_bias: bool,
    pub label_smoothing: f32,
    pub clip_grad_norm: Option<f64>,
    /// Train only the final `fc` layer.
    pub freeze_backbone: bool,
    pub seed: u64,
    pub shuffle: bool,
    pub augment: Augment,
    pub eval_augment: Augment,
    pub workers: usize,
    /// Write a step record every this many steps.
    pub log_every: u64,
    pub run_dir: PathBuf,
    pub progress: bool,
}

/// Accuracy figures of one pass over a data set.
#[derive(Clone, Debug, Default)]
pub struct EvalResult {
    pub count: usize,
    pub loss: f64,
    pub correct: usize,
    pub top5_correct: usize,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

impl EvalResult {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count.max(1) as f64
    }
    pub fn top5(&self) -> f64 {
        self.top5_correct as f64 / self.count.max(1) as f64
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub epochs_done: u64,
    pub steps: u64,
    pub interrupted: bool,
    pub best_accuracy: Option<f64>,
    pub last_eval: Option<EvalResult>,
    pub seconds: f64,
}

fn model_error(e: impl std::fmt::Display) -> TrainError {
    TrainError::Config(e.to_string())
}

fn batch_tensor(batch: &Batch) -> Result<Tensor, TrainError> {
    Tensor::from_vec(&batch.shape, batch.images.clone()).ok_or_else(|| model_error("batch size mismatch"))
}

/// Eval-mode pass over `data`: loss, top-1, top-5 and the confusion matrix.
pub fn evaluate(
    model: &ResNet,
    data: Arc<dyn Dataset>,
    augment: Augment,
    batch_size: usize,
    workers: usize,
) -> Result<EvalResult, TrainError> {
    let classes = model.config.num_classes;
    let config =
        LoaderConfig { shuffle: false, drop_last: false, workers, augment, ..LoaderConfig::new(batch_size, 0) };
    let loader = Loader::new(data, config).map_err(model_error)?;
    let mut r = EvalResult { confusion: vec![vec![0; classes]; classes], ..EvalResult::default() };
    for batch in loader.epoch(0) {
        let batch = batch.map_err(model_error)?;
        let logits = model.forward(&batch_tensor(&batch)?).map_err(model_error)?;
        let (loss, _) = softmax_cross_entropy(&logits, &batch.labels, 0.0).map_err(model_error)?;
        r.loss += loss as f64 * batch.labels.len() as f64;
        r.correct += top1_correct(&logits, &batch.labels).map_err(model_error)?;
        r.top5_correct += top_k_correct(&logits, &batch.labels, 5.min(classes)).map_err(model_error)?;
        for (row, &label) in logits.data.chunks(classes).zip(&batch.labels) {
            let predicted = resnet_core::kernels::elementwise::top_k(row, 1)[0];
            r.confusion[label][predicted] += 1;
        }
        r.count += batch.labels.len();
    }
    r.loss /= r.count.max(1) as f64;
    Ok(r)
}

fn is_bn_or_bias(name: &str, p: &resnet_core::model::Param) -> bool {
    name.ends_with(".bias") || p.torch_shape.len() == 1
}

/// `torch.nn.utils.clip_grad_norm_`: scales all gradients by `max_norm / (total + 1e-6)`
/// when that is below 1; returns the total L2 norm before clipping.
fn clip_gradients(model: &mut ResNet, max_norm: f64, trainable: &dyn Fn(&str) -> bool) -> f64 {
    let mut sum_sq = 0.0f64;
    model.visit("", &mut |name, p| {
        if p.kind == ParamKind::Trainable && trainable(name) {
            sum_sq += p.grad.iter().map(|&g| (g as f64).powi(2)).sum::<f64>();
        }
    });
    let total = sum_sq.sqrt();
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        model.visit_mut("", &mut |name, p| {
            if p.kind == ParamKind::Trainable && trainable(name) {
                p.grad.iter_mut().for_each(|g| *g *= coef as f32);
            }
        });
    }
    total
}

/// One SGD step on every trainable parameter that has a gradient (only `fc` when `freeze`),
/// consuming the gradients. BN parameters and biases skip weight decay when `no_decay_bn_bias`.
pub fn sgd_step_model(
    model: &mut ResNet,
    sgd: &mut Sgd,
    lr: f64,
    freeze: bool,
    no_decay_bn_bias: bool,
) -> Result<(), TrainError> {
    let mut result = Ok(());
    model.visit_mut("", &mut |name, p| {
        if result.is_err() || p.kind != ParamKind::Trainable || p.grad.is_empty() {
            return;
        }
        if freeze && !name.starts_with("fc.") {
            return;
        }
        let decay = !(no_decay_bn_bias && is_bn_or_bias(name, p));
        let grad = std::mem::take(&mut p.grad);
        let mut slot = [ParamSlot { name, value: &mut p.data, grad: &grad, decay }];
        result = sgd.step(lr, &mut slot);
    });
    result
}

/// The training loader's settings: shuffled by `seed` (unless turned off), whole batches only.
fn train_loader_config(opts: &TrainOptions) -> LoaderConfig {
    LoaderConfig {
        shuffle: opts.shuffle,
        drop_last: true,
        workers: opts.workers,
        augment: opts.augment.clone(),
        ..LoaderConfig::new(opts.batch_size, opts.seed)
    }
}

/// The first batch [`train`] would take from `train_data` with `opts` (epoch 0, batch 0,
/// same order and augmentation): images `[N, H, W, C]` and labels.
pub fn first_batch(train_data: Arc<dyn Dataset>, opts: &TrainOptions) -> Result<(Tensor, Vec<usize>), TrainError> {
    let loader = Loader::new(train_data, train_loader_config(opts)).map_err(model_error)?;
    let batch = loader.epoch(0).next().ok_or_else(|| {
        TrainError::Config(format!(
            "the training set has fewer samples than one batch of {}; lower --batch",
            opts.batch_size
        ))
    })?;
    let batch = batch.map_err(model_error)?;
    Ok((batch_tensor(&batch)?, batch.labels))
}

fn save_weights(model: &ResNet, path: &Path) -> Result<(), TrainError> {
    save_safetensors(path, &model.state_dict()).map_err(TrainError::from)
}

/// Runs (or, with `resume`, continues) training; returns when the epochs or `max_steps` are
/// done or `stop` is raised (Ctrl-C), after saving a checkpoint.
pub fn train(
    model: &mut ResNet,
    train_data: Arc<dyn Dataset>,
    test_data: Option<Arc<dyn Dataset>>,
    opts: &TrainOptions,
    resume: bool,
    stop: &AtomicBool,
) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.run_dir).map_err(|e| TrainError::Io { path: opts.run_dir.clone(), source: e })?;
    let loader = Loader::new(train_data, train_loader_config(opts)).map_err(model_error)?;
    let steps_per_epoch = loader.batches_per_epoch() as u64;
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "the training set has fewer samples than one batch of {}; lower --batch",
            opts.batch_size
        )));
    }
    let (mut sgd, mut state) = if resume {
        let cp = load_checkpoint(&opts.run_dir)?;
        model.load_state_dict(&cp.model, true)?;
        (cp.optimizer, cp.train_state)
    } else {
        let state = TrainState { epoch: 0, step: 0, rng_state: opts.seed, schedule_position: 0, best_accuracy: None };
        (Sgd::new(opts.sgd)?, state)
    };
    let mut metrics = if resume {
        MetricsWriter::open_resumed(&opts.run_dir, state.step)?
    } else {
        MetricsWriter::open(&opts.run_dir)?
    };
    let metrics_path = metrics.path().to_path_buf();
    let mut last_eval = None;
    let mut interrupted = false;
    let total_steps = opts.max_steps.unwrap_or(u64::MAX).min(opts.epochs * steps_per_epoch);
    let bar = if opts.progress { indicatif::ProgressBar::new(total_steps) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(state.step);

    'epochs: while state.epoch < opts.epochs && state.step < total_steps {
        let epoch = state.epoch;
        let first_batch = (state.step - epoch * steps_per_epoch) as usize;
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut window = (Instant::now(), 0usize, 0.0f64, 0usize, 0usize); // start, images, loss sum, correct, batches
        for batch in loader.epoch_from(epoch, first_batch) {
            let batch = batch.map_err(model_error)?;
            let x = batch_tensor(&batch)?;
            let lr = opts.schedule.lr_at(state.step);
            let (logits, cache) = model.forward_train(&x).map_err(model_error)?;
            let (loss, grad_logits) =
                softmax_cross_entropy(&logits, &batch.labels, opts.label_smoothing).map_err(model_error)?;
            if !loss.is_finite() {
                return Err(TrainError::Config(format!(
                    "loss became {loss} at step {}; lower --lr or use --clip-grad-norm",
                    state.step
                )));
            }
            let batch_correct = top1_correct(&logits, &batch.labels).map_err(model_error)?;
            model.backward(&grad_logits, cache);
            if let Some(max_norm) = opts.clip_grad_norm {
                let freeze = opts.freeze_backbone;
                clip_gradients(model, max_norm, &|name| !freeze || name.starts_with("fc."));
            }
            sgd_step_model(model, &mut sgd, lr, opts.freeze_backbone, opts.no_decay_bn_bias)?;
            model.zero_grad();
            state.step += 1;
            let n = batch.labels.len();
            loss_sum += loss as f64 * n as f64;
            correct += batch_correct;
            seen += n;
            window.1 += n;
            window.2 += loss as f64 * n as f64;
            window.3 += batch_correct;
            window.4 += 1;
            let images_per_sec = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(state.step);
            bar.set_message(format!(
                "epoch {} loss {:.4} acc {:.2}% lr {:.4} {:.0} img/s",
                epoch + 1,
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                lr,
                images_per_sec
            ));
            if state.step % opts.log_every.max(1) == 0 {
                let mut r = MetricRecord::new(RecordKind::Step, epoch, state.step);
                r.loss = Some(window.2 / window.1 as f64);
                r.accuracy = Some(window.3 as f64 / window.1 as f64);
                r.lr = Some(lr);
                r.images_per_sec = Some(images_per_sec);
                r.seconds = Some(started.elapsed().as_secs_f64());
                metrics.write(&r)?;
                window = (Instant::now(), 0, 0.0, 0, 0);
            }
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                save_checkpoint(&opts.run_dir, &model.state_dict(), &sgd, &state)?;
                break 'epochs;
            }
            if state.step >= total_steps {
                break;
            }
        }
        let epoch_done = state.step == (epoch + 1) * steps_per_epoch;
        let mut r = MetricRecord::new(RecordKind::Epoch, epoch, state.step);
        r.loss = (seen > 0).then(|| loss_sum / seen as f64);
        r.accuracy = (seen > 0).then(|| correct as f64 / seen as f64);
        r.lr = Some(opts.schedule.lr_at(state.step.saturating_sub(1)));
        r.seconds = Some(started.elapsed().as_secs_f64());
        if let Some(test) = &test_data {
            let e = evaluate(model, test.clone(), opts.eval_augment.clone(), opts.batch_size, opts.workers)?;
            r.test_loss = Some(e.loss);
            r.test_accuracy = Some(e.accuracy());
            r.extra.insert("test_top5".into(), serde_json::json!(e.top5()));
            bar.println(format!(
                "epoch {}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% top-5 {:.2}%",
                epoch + 1,
                r.loss.unwrap_or(f64::NAN),
                100.0 * r.accuracy.unwrap_or(f64::NAN),
                e.loss,
                100.0 * e.accuracy(),
                100.0 * e.top5()
            ));
            if state.best_accuracy.is_none_or(|b| e.accuracy() > b) {
                state.best_accuracy = Some(e.accuracy());
                save_weights(model, &opts.run_dir.join("best.safetensors"))?;
            }
            last_eval = Some(e);
        }
        metrics.write(&r)?;
        plot_metrics_file(&metrics_path, &opts.run_dir.join("curves.png"))?;
        if epoch_done {
            state.epoch += 1;
        }
        state.schedule_position = state.step;
        save_checkpoint(&opts.run_dir, &model.state_dict(), &sgd, &state)?;
    }
    bar.finish_and_clear();
    save_weights(model, &opts.run_dir.join("last.safetensors"))?;
    Ok(TrainSummary {
        epochs_done: state.epoch,
        steps: state.step,
        interrupted,
        best_accuracy: state.best_accuracy,
        last_eval,
        seconds: started.elapsed().as_secs_f64(),
    })
}
