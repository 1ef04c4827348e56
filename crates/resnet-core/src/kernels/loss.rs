//! Softmax cross-entropy (PyTorch's `F.cross_entropy`, mean reduction, optional label
//! smoothing) with its gradient, and top-k accuracy counts.
//!
//! For one row of logits `z` over `C` classes with label `t` and smoothing `s`, the target
//! distribution is `q = (1 − s)·onehot(t) + s/C` and, with `log p = log_softmax(z)`,
//!
//! ```text
//! loss = −Σ_c q_c · log p_c = (1 − s)·(−log p_t) + (s/C)·Σ_c (−log p_c)
//! ∂loss/∂z = p − q
//! ```
//!
//! The batch loss is the mean over rows, so each row's gradient is divided by `N`.
//! Everything is computed in f64 from the f32 logits (max subtracted, so large logits are
//! safe) and rounded once.

use crate::tensor::Tensor;

/// Ways labels and logits can disagree; every one is the caller's data, never a panic.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LossError {
    #[error("logits must be a non-empty [N, C] matrix with C ≥ 1, got shape {0:?}")]
    BadLogitsShape(Vec<usize>),
    #[error("{labels} labels for {rows} rows of logits; give one label per image")]
    LabelCountMismatch { labels: usize, rows: usize },
    #[error("label {label} of image {index} is out of range: the model has {classes} classes (0..{classes})")]
    LabelOutOfRange { index: usize, label: usize, classes: usize },
    #[error("label smoothing must be in [0, 1], got {0}")]
    BadLabelSmoothing(f32),
}

/// `(rows, classes)` of the logits after checking them and the labels against each other.
fn check(logits: &Tensor, labels: &[usize]) -> Result<(usize, usize), LossError> {
    let (n, c) = match logits.shape[..] {
        [n, c] if n > 0 && c > 0 => (n, c),
        _ => return Err(LossError::BadLogitsShape(logits.shape.clone())),
    };
    if labels.len() != n {
        return Err(LossError::LabelCountMismatch { labels: labels.len(), rows: n });
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= c) {
        return Err(LossError::LabelOutOfRange { index, label, classes: c });
    }
    Ok((n, c))
}

/// Mean softmax cross-entropy of `logits` (`[N, C]`) against class indices `labels`, with
/// `label_smoothing` in `[0, 1]`, and its gradient `∂loss/∂logits` (`[N, C]`). Equal to
/// `torch.nn.functional.cross_entropy(logits, labels, label_smoothing=s)`.
pub fn softmax_cross_entropy(
    logits: &Tensor,
    labels: &[usize],
    label_smoothing: f32,
) -> Result<(f32, Tensor), LossError> {
    let (n, c) = check(logits, labels)?;
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(LossError::BadLabelSmoothing(label_smoothing));
    }
    let s = label_smoothing as f64;
    let mut grad = Tensor::zeros(&logits.shape);
    let mut total = 0.0f64;
    for ((row, grad_row), &label) in logits.data.chunks(c).zip(grad.data.chunks_mut(c)).zip(labels) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let log_sum_exp = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        // −log p_c = logsumexp − z_c
        let nll_label = log_sum_exp - row[label] as f64;
        let nll_mean = log_sum_exp - row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        total += (1.0 - s) * nll_label + s * nll_mean;
        for (class, (g, &z)) in grad_row.iter_mut().zip(row).enumerate() {
            let target = s / c as f64 + if class == label { 1.0 - s } else { 0.0 };
            *g = (((z as f64 - log_sum_exp).exp() - target) / n as f64) as f32;
        }
    }
    Ok(((total / n as f64) as f32, grad))
}

/// How many rows have their label among the `k` highest logits. Ties rank the lower class
/// index first (as [`top_k`](super::elementwise::top_k)), so a row of equal logits counts
/// as correct only for labels `< k`.
pub fn top_k_correct(logits: &Tensor, labels: &[usize], k: usize) -> Result<usize, LossError> {
    let (_, c) = check(logits, labels)?;
    let correct = logits
        .data
        .chunks(c)
        .zip(labels)
        .filter(|(row, &label)| {
            let target = row[label];
            let ahead = row
                .iter()
                .enumerate()
                .filter(|&(j, v)| match v.total_cmp(&target) {
                    std::cmp::Ordering::Greater => true,
                    std::cmp::Ordering::Equal => j < label,
                    std::cmp::Ordering::Less => false,
                })
                .count();
            ahead < k
        })
        .count();
    Ok(correct)
}

/// How many rows have their label as the highest logit (top-1).
pub fn top1_correct(logits: &Tensor, labels: &[usize]) -> Result<usize, LossError> {
    top_k_correct(logits, labels, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::elementwise::top_k;
    use crate::kernels::gradcheck::{check_gradient, random_values};
    use crate::prng::SplitMix64;

    #[test]
    fn uniform_logits_cost_log_classes() {
        let logits = Tensor::zeros(&[2, 4]);
        let (loss, grad) = softmax_cross_entropy(&logits, &[1, 3], 0.0).unwrap();
        assert!((loss - 4f32.ln()).abs() < 1e-6);
        assert!((grad.data[1] - (0.25 - 1.0) / 2.0).abs() < 1e-7 && (grad.data[0] - 0.125).abs() < 1e-7);
    }

    #[test]
    fn huge_logits_stay_finite() {
        let logits = Tensor::from_vec(&[1, 3], vec![1000.0, 0.0, -1000.0]).unwrap();
        let (loss, grad) = softmax_cross_entropy(&logits, &[1], 0.1).unwrap();
        assert!(loss.is_finite() && grad.data.iter().all(|g| g.is_finite()));
        // (1 − 0.1)·1000 + 0.1·(1000 − 0) = 1000
        assert!((loss - 1000.0).abs() < 1e-3);
    }

    /// Smooth, with curvature ≤ 1/4 per logit: step 2⁻⁷ gives truncation ≈ 1e-6, but the
    /// loss is an f32 scalar, so its rounding (≈ 1e-7·|L|/h ≈ 1e-5 absolute) dominates
    /// against gradients of ≈ 0.2: observed ≤ 8e-5 of the largest gradient. Tolerance 1e-3.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(61);
        for smoothing in [0.0, 0.1, 1.0] {
            let (n, c) = (4, 6);
            let z = random_values(&mut rng, n * c, -3.0, 3.0);
            let labels = [0, 5, 2, 2];
            let t = |v: &[f32]| Tensor::from_vec(&[n, c], v.to_vec()).unwrap();
            let (_, grad) = softmax_cross_entropy(&t(&z), &labels, smoothing).unwrap();
            check_gradient("cross entropy", &z, &grad.data, 1.0 / 128.0, 1e-3, |v| {
                softmax_cross_entropy(&t(v), &labels, smoothing).map(|(l, _)| l as f64).unwrap_or(f64::NAN)
            });
        }
    }

    #[test]
    fn bad_labels_and_shapes_are_errors() {
        let logits = Tensor::zeros(&[2, 3]);
        assert_eq!(
            softmax_cross_entropy(&logits, &[0, 3], 0.0).unwrap_err(),
            LossError::LabelOutOfRange { index: 1, label: 3, classes: 3 }
        );
        assert_eq!(
            softmax_cross_entropy(&logits, &[0], 0.0).unwrap_err(),
            LossError::LabelCountMismatch { labels: 1, rows: 2 }
        );
        assert_eq!(softmax_cross_entropy(&logits, &[0, 1], 1.5).unwrap_err(), LossError::BadLabelSmoothing(1.5));
        assert!(matches!(softmax_cross_entropy(&Tensor::zeros(&[0, 3]), &[], 0.0), Err(LossError::BadLogitsShape(_))));
        assert!(matches!(top1_correct(&logits, &[7, 0]), Err(LossError::LabelOutOfRange { .. })));
    }

    #[test]
    fn top_k_counts_agree_with_sorting() {
        let mut rng = SplitMix64::new(62);
        let (n, c) = (40, 7);
        // Coarse values: many ties.
        let z: Vec<f32> = (0..n * c).map(|_| (rng.next_u64() % 4) as f32).collect();
        let labels: Vec<usize> = (0..n).map(|_| (rng.next_u64() % c as u64) as usize).collect();
        let logits = Tensor::from_vec(&[n, c], z.clone()).unwrap();
        for k in [1, 2, 5, 7] {
            let want = z.chunks(c).zip(&labels).filter(|(row, l)| top_k(row, k).contains(l)).count();
            assert_eq!(top_k_correct(&logits, &labels, k).unwrap(), want, "k = {k}");
        }
        assert_eq!(top1_correct(&logits, &labels).unwrap(), top_k_correct(&logits, &labels, 1).unwrap());
    }
}
