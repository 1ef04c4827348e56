//! Learning-rate schedules that give the same f64 learning rates as `torch.optim.lr_scheduler`.
//!
//! | [`Decay`]     | PyTorch scheduler                                   |
//! |---------------|-----------------------------------------------------|
//! | `Constant`    | none (the optimizer's lr)                           |
//! | `MultiStep`   | `MultiStepLR(milestones, gamma)`                    |
//! | `Cosine`      | `CosineAnnealingLR(T_max=t_max, eta_min)`           |
//!
//! A [`Warmup`] of length `W` puts `LinearLR(start_factor, end_factor=1.0, total_iters=W)` in
//! front, chained like torchvision's classification recipe does it: `SequentialLR([warmup,
//! main], milestones=[W])`. The main schedule then starts at position `W` and its milestones
//! and `t_max` count from there (so for cosine to end at `eta_min` on the last position, use
//! `t_max = total - W`).
//!
//! A position is an optimizer step ([`Granularity::Step`], the scheduler stepped after every
//! optimizer step) or an epoch ([`Granularity::Epoch`], stepped after every epoch, as
//! torchvision's `train.py` does). [`LrSchedule::lr_at`] always takes the global optimizer step
//! and maps it to a position, so resuming needs nothing but the step count.
//!
//! torch updates most schedules recursively (`lr = lr * factor`), and the f64 results differ
//! from the closed forms in the last bits. `lr_at` replays torch's recurrences from position 0,
//! so every value is bit-identical to torch's, whatever position it is asked for. It is still a
//! pure function of the position: a cache of the last position only saves replaying the same
//! prefix again (O(1) per call when positions increase, as in training).

use std::f64::consts::PI;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::TrainError;

/// The schedule after the optional warmup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decay {
    Constant,
    /// Multiply by `gamma` at each milestone position (a milestone listed twice, twice).
    MultiStep {
        milestones: Vec<u64>,
        gamma: f64,
    },
    /// Half a cosine from the base lr down to `eta_min` over `t_max` positions. Past `t_max`
    /// torch's recurrence rises again (period `2 * t_max`); this follows it.
    Cosine {
        t_max: u64,
        eta_min: f64,
    },
}

/// Linear warmup from `start_factor * base_lr` to `base_lr` over `length` positions.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Warmup {
    pub length: u64,
    /// In (0, 1], as torch's `LinearLR` requires.
    pub start_factor: f64,
}

/// What one schedule position is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "per", rename_all = "snake_case")]
pub enum Granularity {
    /// One position per optimizer step.
    #[default]
    Step,
    /// One position per epoch of `steps_per_epoch` optimizer steps.
    Epoch { steps_per_epoch: u64 },
}

/// Everything that defines a schedule; serialisable so a run can record it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrScheduleSpec {
    pub base_lr: f64,
    pub decay: Decay,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    #[serde(default)]
    pub granularity: Granularity,
}

/// A learning-rate schedule; see the module documentation.
#[derive(Debug)]
pub struct LrSchedule {
    spec: LrScheduleSpec,
    /// The last (position, lr) computed: replay resumes from here when asked for a later one.
    cursor: Mutex<Option<(u64, f64)>>,
}

impl Clone for LrSchedule {
    fn clone(&self) -> LrSchedule {
        LrSchedule { spec: self.spec.clone(), cursor: Mutex::new(None) }
    }
}

impl LrSchedule {
    pub fn new(spec: LrScheduleSpec) -> Result<LrSchedule, TrainError> {
        let bad = |what: String| Err(TrainError::Config(what));
        if !(spec.base_lr >= 0.0 && spec.base_lr.is_finite()) {
            return bad(format!("base learning rate must be a finite value >= 0, got {}", spec.base_lr));
        }
        match &spec.decay {
            Decay::Constant => {}
            Decay::MultiStep { gamma, .. } if !gamma.is_finite() => {
                return bad(format!("multi-step gamma must be finite, got {gamma}"));
            }
            Decay::MultiStep { .. } => {}
            Decay::Cosine { t_max: 0, .. } => return bad("cosine t_max must be at least 1".into()),
            Decay::Cosine { eta_min, .. } if !eta_min.is_finite() => {
                return bad(format!("cosine eta_min must be finite, got {eta_min}"));
            }
            Decay::Cosine { .. } => {}
        }
        if let Some(w) = spec.warmup {
            if w.length == 0 {
                return bad("warmup length must be at least 1 (or leave warmup out)".into());
            }
            if !(w.start_factor > 0.0 && w.start_factor <= 1.0) {
                return bad(format!("warmup start_factor must be in (0, 1], got {}", w.start_factor));
            }
        }
        if let Granularity::Epoch { steps_per_epoch: 0 } = spec.granularity {
            return bad("steps_per_epoch must be at least 1".into());
        }
        Ok(LrSchedule { spec, cursor: Mutex::new(None) })
    }

    pub fn spec(&self) -> &LrScheduleSpec {
        &self.spec
    }

    /// The schedule position of global optimizer step `step` (0-based).
    pub fn position(&self, step: u64) -> u64 {
        match self.spec.granularity {
            Granularity::Step => step,
            Granularity::Epoch { steps_per_epoch } => step / steps_per_epoch,
        }
    }

    /// The learning rate for global optimizer step `step` (0-based): what torch's
    /// `optimizer.param_groups[0]["lr"]` holds when that `optimizer.step()` runs.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.lr_at_position(self.position(step))
    }

    /// The learning rate at schedule position `position` (see [`Granularity`]).
    pub fn lr_at_position(&self, position: u64) -> f64 {
        let mut cursor = self.cursor.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (mut at, mut lr) = match *cursor {
            Some((at, lr)) if at <= position => (at, lr),
            _ => (0, self.initial()),
        };
        while at < position {
            at += 1;
            lr = self.next(at, lr);
        }
        *cursor = Some((at, lr));
        lr
    }

    /// The lr at position 0, as set by the schedulers' constructors.
    fn initial(&self) -> f64 {
        let base = self.spec.base_lr;
        match (&self.spec.warmup, &self.spec.decay) {
            // LinearLR's first step: group["lr"] * start_factor.
            (Some(w), _) => base * w.start_factor,
            (None, Decay::MultiStep { milestones, gamma }) => match count(milestones, 0) {
                0 => base,
                n => base * gamma.powf(n as f64),
            },
            (None, Decay::Constant | Decay::Cosine { .. }) => base,
        }
    }

    /// The lr at position `at >= 1` from the one at `at - 1`, by torch's `get_lr` recurrences.
    fn next(&self, at: u64, prev: f64) -> f64 {
        match self.spec.warmup {
            Some(w) if at < w.length => {
                // LinearLR.get_lr with end_factor 1.0.
                let (s, span) = (w.start_factor, 1.0 - w.start_factor);
                prev * (1.0 + span / (w.length as f64 * s + (at - 1) as f64 * span))
            }
            // SequentialLR at its milestone: main._update_lr(0), the closed form at 0.
            Some(w) if at == w.length => self.main_closed_form_at_zero(),
            Some(w) => self.main_next(at - w.length, prev),
            None => self.main_next(at, prev),
        }
    }

    fn main_closed_form_at_zero(&self) -> f64 {
        let base = self.spec.base_lr;
        match &self.spec.decay {
            Decay::Constant => base,
            // base_lr * gamma ** bisect_right(milestones, 0)
            Decay::MultiStep { milestones, gamma } => base * gamma.powf(count(milestones, 0) as f64),
            Decay::Cosine { t_max, eta_min } => {
                eta_min + (base - eta_min) * (1.0 + (PI * 0.0 / *t_max as f64).cos()) / 2.0
            }
        }
    }

    fn main_next(&self, at: u64, prev: f64) -> f64 {
        match &self.spec.decay {
            Decay::Constant => prev,
            Decay::MultiStep { milestones, gamma } => match count(milestones, at) {
                0 => prev,
                n => prev * gamma.powf(n as f64),
            },
            Decay::Cosine { t_max, eta_min } => {
                let (t, at_f) = (*t_max as f64, at as f64);
                let period = 2 * *t_max as i128;
                if (at as i128 - 1 - *t_max as i128).rem_euclid(period) == 0 {
                    prev + (self.spec.base_lr - eta_min) * (1.0 - (PI / t).cos()) / 2.0
                } else {
                    (1.0 + (PI * at_f / t).cos()) / (1.0 + (PI * (at_f - 1.0) / t).cos()) * (prev - eta_min) + eta_min
                }
            }
        }
    }
}

/// How many times `position` is listed (torch keeps milestones in a `Counter`).
fn count(milestones: &[u64], position: u64) -> usize {
    milestones.iter().filter(|&&m| m == position).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: Decay, warmup: Option<Warmup>, granularity: Granularity) -> LrSchedule {
        LrSchedule::new(LrScheduleSpec { base_lr: 0.1, decay, warmup, granularity }).unwrap()
    }

    #[test]
    fn multistep_decays_at_each_milestone() {
        let s = schedule(Decay::MultiStep { milestones: vec![2, 4, 4], gamma: 0.5 }, None, Granularity::Step);
        let lrs: Vec<f64> = (0..6).map(|i| s.lr_at(i)).collect();
        assert_eq!(lrs, [0.1, 0.1, 0.05, 0.05, 0.0125, 0.0125]);
    }

    #[test]
    fn epoch_granularity_holds_the_lr_for_a_whole_epoch() {
        let decay = Decay::MultiStep { milestones: vec![1], gamma: 0.1 };
        let s = schedule(decay, None, Granularity::Epoch { steps_per_epoch: 3 });
        assert_eq!([s.lr_at(0), s.lr_at(2)], [0.1, 0.1]);
        assert_eq!([s.position(3), s.position(5)], [1, 1]);
        assert_eq!(s.lr_at(3), 0.1 * 0.1);
    }

    #[test]
    fn warmup_rises_linearly_then_hands_over() {
        let s = schedule(Decay::Constant, Some(Warmup { length: 4, start_factor: 0.25 }), Granularity::Step);
        let lrs: Vec<f64> = (0..6).map(|i| s.lr_at(i)).collect();
        for (got, want) in lrs.iter().zip([0.025, 0.04375, 0.0625, 0.08125, 0.1, 0.1]) {
            assert!((got - want).abs() < 1e-15, "{lrs:?}");
        }
        assert_eq!(lrs[4], 0.1, "the main schedule starts exactly at base_lr");
    }

    #[test]
    fn cosine_reaches_eta_min_at_t_max() {
        let s = schedule(Decay::Cosine { t_max: 10, eta_min: 0.001 }, None, Granularity::Step);
        assert_eq!(s.lr_at(0), 0.1);
        assert!((s.lr_at(5) - (0.001 + 0.099 / 2.0)).abs() < 1e-15);
        assert!((s.lr_at(10) - 0.001).abs() < 1e-15);
    }

    #[test]
    fn lr_at_is_a_pure_function_of_the_step() {
        let decay = Decay::Cosine { t_max: 700, eta_min: 0.0 };
        let s = schedule(decay, Some(Warmup { length: 50, start_factor: 0.1 }), Granularity::Step);
        let forward: Vec<u64> = (0..1000).map(|i| s.lr_at(i).to_bits()).collect();
        // Out of order, and from fresh copies (as after a resume), the values are the same.
        for i in [999, 3, 500, 0, 49, 50, 51, 998] {
            assert_eq!(s.lr_at(i).to_bits(), forward[i as usize], "step {i}");
            assert_eq!(s.clone().lr_at(i).to_bits(), forward[i as usize], "fresh, step {i}");
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let spec = |decay, warmup, granularity| LrScheduleSpec { base_lr: 0.1, decay, warmup, granularity };
        let err = |s: LrScheduleSpec| LrSchedule::new(s).unwrap_err().to_string();
        assert!(err(spec(Decay::Cosine { t_max: 0, eta_min: 0.0 }, None, Granularity::Step)).contains("t_max"));
        let w = Some(Warmup { length: 3, start_factor: 0.0 });
        assert!(err(spec(Decay::Constant, w, Granularity::Step)).contains("start_factor"));
        let g = Granularity::Epoch { steps_per_epoch: 0 };
        assert!(err(spec(Decay::Constant, None, g)).contains("steps_per_epoch"));
        let negative = LrScheduleSpec { base_lr: -1.0, ..spec(Decay::Constant, None, Granularity::Step) };
        assert!(err(negative).contains("base learning rate"));
    }

    #[test]
    fn spec_serialises_readably() {
        let spec = LrScheduleSpec {
            base_lr: 0.1,
            decay: Decay::MultiStep { milestones: vec![30, 60], gamma: 0.1 },
            warmup: Some(Warmup { length: 5, start_factor: 0.01 }),
            granularity: Granularity::Epoch { steps_per_epoch: 100 },
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(
            json,
            r#"{"base_lr":0.1,"decay":{"kind":"multi_step","milestones":[30,60],"gamma":0.1},"warmup":{"length":5,"start_factor":0.01},"granularity":{"per":"epoch","steps_per_epoch":100}}"#
        );
        assert_eq!(serde_json::from_str::<LrScheduleSpec>(&json).unwrap(), spec);
    }
}
