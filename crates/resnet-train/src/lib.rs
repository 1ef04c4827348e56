//! resnet-train: the parts of a training loop that must match PyTorch, and its bookkeeping.
//!
//! - [`Sgd`]: `torch.optim.SGD` (momentum, dampening, Nesterov, weight decay that each
//!   [`ParamSlot`] opts into), bit-identical to torch's f32 arithmetic. It works on named flat
//!   slices, not on a model, so any parameter store can use it.
//! - [`clip_grad_norm`]: `torch.nn.utils.clip_grad_norm_`, with torch's f32 norm.
//! - [`LrSchedule`]: constant, multi-step and cosine schedules with optional linear warmup,
//!   giving torch's learning rates exactly as a pure function of the step.
//! - [`MetricsWriter`] and [`plot_curves`]: `metrics.jsonl` and a PNG of the curves.
//! - [`plot_degradation`] and [`plot_gradient_norms`]: the paper's plain-versus-residual
//!   figures, from [`ErrorCurves`] and the per-layer norms of [`conv_gradient_norms`].
//! - [`save_checkpoint`] / [`load_checkpoint`]: model, optimizer and [`TrainState`], written
//!   atomically with [`write_atomic`].
//!
//! A training step, with `params` the model's trainable tensors:
//!
//! ```no_run
//! # use resnet_train::*;
//! # fn demo(params: &mut [(String, Vec<f32>, Vec<f32>)], step: u64) -> Result<(), TrainError> {
//! let schedule = LrSchedule::new(LrScheduleSpec {
//!     base_lr: 0.1,
//!     decay: Decay::Cosine { t_max: 90, eta_min: 0.0 },
//!     warmup: Some(Warmup { length: 5, start_factor: 0.01 }),
//!     granularity: Granularity::Epoch { steps_per_epoch: 5005 },
//! })?;
//! let mut sgd = Sgd::new(SgdConfig { momentum: 0.9, weight_decay: 1e-4, ..SgdConfig::default() })?;
//! let mut slots: Vec<ParamSlot> = params
//!     .iter_mut()
//!     .map(|(name, value, grad)| ParamSlot {
//!         decay: !name.ends_with(".bias") && !name.starts_with("bn"),
//!         name: name.as_str(),
//!         value: value.as_mut_slice(),
//!         grad: grad.as_slice(),
//!     })
//!     .collect();
//! sgd.step(schedule.lr_at(step), &mut slots)?;
//! # Ok(())
//! # }
//! ```

mod checkpoint;
mod clip;
mod error;
mod figures;
mod gradnorm;
mod metrics;
mod plot;
mod schedule;
mod sgd;
mod trainer;

pub use checkpoint::{
    load_checkpoint, load_train_state, save_checkpoint, write_atomic, Checkpoint, TrainState, CHECKPOINT_FILE,
};
pub use clip::{clip_grad_norm, l2_norm};
pub use error::TrainError;
pub use figures::{plot_degradation, plot_gradient_norms, ErrorCurves, ErrorPoint, GradientNorms};
pub use gradnorm::{conv_gradient_norms, LayerGradient};
pub use metrics::{read_metrics, MetricRecord, MetricsWriter, RecordKind, METRICS_FILE};
pub use plot::{plot_curves, plot_metrics_file};
pub use schedule::{Decay, Granularity, LrSchedule, LrScheduleSpec, Warmup};
pub use sgd::{ParamSlot, Sgd, SgdConfig, MOMENTUM_PREFIX};
pub use trainer::{evaluate, first_batch, sgd_step_model, train, EvalResult, TrainOptions, TrainSummary};
