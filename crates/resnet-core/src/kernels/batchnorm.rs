//! BatchNorm2d on NHWC tensors: training-mode forward and backward, the running-statistics
//! update, and the eval-mode forward, all as PyTorch defines them.
//!
//! With `n = N·H·W` values per channel, training mode normalises with the batch statistics
//!
//! ```text
//! mean = Σx / n,   var = Σ(x − mean)² / n   (biased),   x̂ = (x − mean) / √(var + eps)
//! y = γ·x̂ + β
//! ```
//!
//! and the running statistics move towards the batch's, with the *unbiased* variance:
//! `running_var ← (1 − m)·running_var + m·var·n/(n − 1)`. Sums over the batch are taken in
//! f64 (PyTorch's CPU kernels accumulate these statistics in double as well).
//!
//! Backward (`g = ∂L/∂y`), from `y = γ·x̂ + β` and x̂'s dependence on every x of its channel:
//!
//! ```text
//! ∂L/∂β = Σg,   ∂L/∂γ = Σg·x̂,   ∂L/∂x = γ/√(var + eps) · (g − ∂L/∂β / n − x̂ · ∂L/∂γ / n)
//! ```

use rayon::prelude::*;

use super::buffers::take_buffer;
use crate::tensor::Tensor;

/// What the training-mode forward keeps for the backward and for the running statistics.
#[derive(Clone, Debug)]
pub struct BatchNormSaved {
    /// The normalised input x̂, same shape as the input.
    pub x_hat: Tensor,
    /// Per-channel batch mean.
    pub mean: Vec<f32>,
    /// Per-channel `1 / √(var + eps)` with the biased batch variance.
    pub inv_std: Vec<f32>,
    /// Per-channel unbiased batch variance `Σ(x − mean)² / (n − 1)`, for `running_var`.
    pub var_unbiased: Vec<f32>,
}

/// Errors a training-mode BatchNorm can meet on valid-looking input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchNormError {
    /// Training mode needs at least two values per channel (as PyTorch, which raises
    /// "Expected more than 1 value per channel when training").
    #[error(
        "BatchNorm in training mode needs more than 1 value per channel, got {values} (input shape {shape:?}); \
         use a batch of at least 2 or a larger image"
    )]
    TooFewValues { values: usize, shape: Vec<usize> },
}

/// Rows per block of the per-channel reductions: fixed, so sums do not depend on the
/// number of threads.
const ROWS_PER_BLOCK: usize = 512;

/// Column sums in f64 of a `rows × width` accumulation: `add_row(row, acc)` adds row
/// `row`'s terms into `acc` (`width` values). Blocks of rows are summed in parallel and the
/// block sums added in block order, so results are deterministic.
fn sum_over_rows(rows: usize, width: usize, add_row: impl Fn(usize, &mut [f64]) + Sync) -> Vec<f64> {
    let block_sums: Vec<Vec<f64>> = (0..rows.div_ceil(ROWS_PER_BLOCK))
        .into_par_iter()
        .map(|block| {
            let mut acc = vec![0.0f64; width];
            for row in block * ROWS_PER_BLOCK..rows.min((block + 1) * ROWS_PER_BLOCK) {
                add_row(row, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; width];
    for block in block_sums {
        total.iter_mut().zip(block).for_each(|(t, b)| *t += b);
    }
    total
}

/// Channels of an NHWC (or `[N, C]`) tensor and the number of values per channel.
fn rows_and_channels(x: &Tensor) -> (usize, usize) {
    let channels = x.shape.last().copied().unwrap_or(0);
    (x.len().checked_div(channels).unwrap_or(0), channels)
}

/// Training-mode forward: normalises each channel of `x` (`[N, H, W, C]`) with its batch
/// mean and biased variance, then scales by `gamma` and shifts by `beta` (`C` values each).
/// Errors when a channel has fewer than 2 values; panics when `gamma`/`beta` are not `C`
/// long (a caller bug).
pub fn batch_norm_train_forward(
    x: &Tensor,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Result<(Tensor, BatchNormSaved), BatchNormError> {
    let (n, c) = rows_and_channels(x);
    assert_eq!(gamma.len(), c, "BatchNorm weight must have one value per channel");
    assert_eq!(beta.len(), c, "BatchNorm bias must have one value per channel");
    if n < 2 {
        return Err(BatchNormError::TooFewValues { values: n, shape: x.shape.clone() });
    }
    let row = |r: usize| &x.data[r * c..(r + 1) * c];
    let sums = sum_over_rows(n, c, |r, acc| acc.iter_mut().zip(row(r)).for_each(|(a, &v)| *a += v as f64));
    let mean: Vec<f64> = sums.iter().map(|s| s / n as f64).collect();
    // Two passes (mean first): no cancellation when the mean is large against the spread.
    let squared_deviations = sum_over_rows(n, c, |r, acc| {
        acc.iter_mut().zip(row(r)).zip(&mean).for_each(|((a, &v), m)| *a += (v as f64 - m).powi(2))
    });
    let inv_std: Vec<f64> = squared_deviations.iter().map(|s| 1.0 / (s / n as f64 + eps as f64).sqrt()).collect();

    // Both are written in full below, so reused buffers need no clearing.
    let fresh = || Tensor::from_vec(&x.shape, take_buffer(x.data.len())).unwrap_or_else(|| Tensor::zeros(&x.shape));
    let mut x_hat = fresh();
    let mut y = fresh();
    let block = ROWS_PER_BLOCK * c;
    x_hat.data.par_chunks_mut(block).zip(y.data.par_chunks_mut(block)).zip(x.data.par_chunks(block)).for_each(
        |((x_hat_rows, y_rows), x_rows)| {
            for ((x_hat_row, y_row), x_row) in x_hat_rows.chunks_mut(c).zip(y_rows.chunks_mut(c)).zip(x_rows.chunks(c))
            {
                for ch in 0..c {
                    let normalised = ((x_row[ch] as f64 - mean[ch]) * inv_std[ch]) as f32;
                    x_hat_row[ch] = normalised;
                    y_row[ch] = gamma[ch] * normalised + beta[ch];
                }
            }
        },
    );
    let saved = BatchNormSaved {
        x_hat,
        mean: mean.iter().map(|&m| m as f32).collect(),
        inv_std: inv_std.iter().map(|&s| s as f32).collect(),
        var_unbiased: squared_deviations.iter().map(|s| (s / (n - 1) as f64) as f32).collect(),
    };
    Ok((y, saved))
}

/// `running ← (1 − momentum)·running + momentum·batch`, with the batch mean for
/// `running_mean` and the unbiased batch variance for `running_var` (PyTorch's rule;
/// its default momentum is 0.1).
pub fn update_running_stats(running_mean: &mut [f32], running_var: &mut [f32], saved: &BatchNormSaved, momentum: f32) {
    assert_eq!(running_mean.len(), saved.mean.len(), "running_mean must have one value per channel");
    assert_eq!(running_var.len(), saved.var_unbiased.len(), "running_var must have one value per channel");
    let m = momentum as f64;
    let blend = |running: &mut f32, batch: f32| *running = ((1.0 - m) * *running as f64 + m * batch as f64) as f32;
    running_mean.iter_mut().zip(&saved.mean).for_each(|(r, &b)| blend(r, b));
    running_var.iter_mut().zip(&saved.var_unbiased).for_each(|(r, &b)| blend(r, b));
}

/// Gradients of a BatchNorm layer: `∂L/∂x` (shape of the input), `∂L/∂γ` and `∂L/∂β`.
#[derive(Clone, Debug)]
pub struct BatchNormGrads {
    pub grad_input: Tensor,
    pub grad_gamma: Vec<f32>,
    pub grad_beta: Vec<f32>,
}

/// Training-mode backward from `grad_y = ∂L/∂y`. Panics when shapes disagree (a caller bug).
pub fn batch_norm_backward(grad_y: &Tensor, saved: &BatchNormSaved, gamma: &[f32]) -> BatchNormGrads {
    assert_eq!(grad_y.shape, saved.x_hat.shape, "BatchNorm gradient must have the input's shape");
    backward_with(saved, gamma, &grad_y.data, None)
}

/// Backward of `relu(batch_norm(x))` in one pass: `output` is the forward's result after the
/// ReLU, so the gradient reaches the BatchNorm only where `output > 0`.
pub fn batch_norm_relu_backward(
    grad_output: &Tensor,
    output: &Tensor,
    saved: &BatchNormSaved,
    gamma: &[f32],
) -> BatchNormGrads {
    assert_eq!(grad_output.shape, saved.x_hat.shape, "BatchNorm gradient must have the input's shape");
    assert_eq!(output.shape, saved.x_hat.shape, "BatchNorm output must have the input's shape");
    backward_with(saved, gamma, &grad_output.data, Some(&output.data))
}

/// `∂L/∂y` of one row: `grad` itself, or `grad` where `relu_output > 0` and 0 elsewhere.
/// Written as a select over whole rows so that it compiles to vector blends.
fn masked_row<'a>(grad: &'a [f32], relu_output: Option<&[f32]>, scratch: &'a mut [f32]) -> &'a [f32] {
    match relu_output {
        None => grad,
        Some(out) => {
            scratch.iter_mut().zip(grad).zip(out).for_each(|((d, &g), &y)| *d = if y > 0.0 { g } else { 0.0 });
            scratch
        }
    }
}

/// The backward with `∂L/∂y` given by `grad`, masked by `relu_output > 0` when present.
fn backward_with(saved: &BatchNormSaved, gamma: &[f32], grad: &[f32], relu_output: Option<&[f32]>) -> BatchNormGrads {
    let x_hat = &saved.x_hat;
    let (n, c) = rows_and_channels(x_hat);
    assert_eq!(gamma.len(), c, "BatchNorm weight must have one value per channel");
    assert_eq!(saved.inv_std.len(), c, "saved statistics must have one value per channel");
    assert_eq!(grad.len(), x_hat.len());
    let row = |r: usize| r * c..(r + 1) * c;
    // One pass for both sums: [Σg for each channel, then Σg·x̂ for each channel].
    let sums = sum_over_rows(n, 2 * c, |r, acc| {
        let mut scratch = [0.0f32; 64];
        let mut heap_scratch = Vec::new();
        let scratch: &mut [f32] = if c <= scratch.len() {
            &mut scratch[..c]
        } else {
            heap_scratch.resize(c, 0.0);
            &mut heap_scratch
        };
        let g = masked_row(&grad[row(r)], relu_output.map(|o| &o[row(r)]), scratch);
        let (sum_g, sum_g_x_hat) = acc.split_at_mut(c);
        for (((sg, sgx), &g), &xh) in sum_g.iter_mut().zip(sum_g_x_hat.iter_mut()).zip(g).zip(&x_hat.data[row(r)]) {
            *sg += g as f64;
            *sgx += g as f64 * xh as f64;
        }
    });
    let (grad_beta, grad_gamma) = sums.split_at(c);

    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * saved.inv_std[ch]).collect();
    let mean_grad: Vec<f32> = grad_beta.iter().map(|s| (s / n as f64) as f32).collect();
    let mean_grad_x_hat: Vec<f32> = grad_gamma.iter().map(|s| (s / n as f64) as f32).collect();
    // Written in full below (every row, every channel).
    let mut grad_input =
        Tensor::from_vec(&x_hat.shape, take_buffer(x_hat.data.len())).unwrap_or_else(|| Tensor::zeros(&x_hat.shape));
    if c > 0 {
        let block = ROWS_PER_BLOCK * c;
        grad_input.data.par_chunks_mut(block).zip(x_hat.data.par_chunks(block)).enumerate().for_each(
            |(b, (dst_rows, x_hat_rows))| {
                for (i, (dst, x_hat_row)) in dst_rows.chunks_mut(c).zip(x_hat_rows.chunks(c)).enumerate() {
                    let r = b * ROWS_PER_BLOCK + i;
                    // The masked gradient goes straight into `dst`, then is transformed in place.
                    let g_row = &grad[row(r)];
                    match relu_output {
                        Some(out) => dst
                            .iter_mut()
                            .zip(g_row)
                            .zip(&out[row(r)])
                            .for_each(|((d, &g), &y)| *d = if y > 0.0 { g } else { 0.0 }),
                        None => dst.copy_from_slice(g_row),
                    }
                    for ((((d, &xh), &s), &mg), &mgx) in
                        dst.iter_mut().zip(x_hat_row).zip(&scale).zip(&mean_grad).zip(&mean_grad_x_hat)
                    {
                        *d = s * (*d - mg - xh * mgx);
                    }
                }
            },
        );
    }
    BatchNormGrads {
        grad_input,
        grad_gamma: grad_gamma.iter().map(|&v| v as f32).collect(),
        grad_beta: grad_beta.iter().map(|&v| v as f32).collect(),
    }
}

/// Eval-mode forward: `y = γ·(x − running_mean)/√(running_var + eps) + β` per channel.
/// Panics when a parameter is not one value per channel (a caller bug).
pub fn batch_norm_eval_forward(
    x: &Tensor,
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
) -> Tensor {
    let (_, c) = rows_and_channels(x);
    for p in [gamma, beta, running_mean, running_var] {
        assert_eq!(p.len(), c, "BatchNorm parameters must have one value per channel");
    }
    let scale: Vec<f32> =
        (0..c).map(|ch| (gamma[ch] as f64 / (running_var[ch] as f64 + eps as f64).sqrt()) as f32).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - running_mean[ch] * scale[ch]).collect();
    let mut y = x.clone();
    if c > 0 {
        y.data.par_chunks_mut(c).for_each(|row| {
            row.iter_mut().enumerate().for_each(|(ch, v)| *v = *v * scale[ch] + shift[ch]);
        });
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check_gradient, dot, random_values};
    use crate::prng::SplitMix64;

    const EPS: f32 = 1e-5;

    /// Channels with different means and spreads, so each channel's statistics matter.
    fn random_input(rng: &mut SplitMix64, shape: &[usize]) -> Tensor {
        let c = shape[3];
        let mut data = random_values(rng, shape.iter().product(), -1.0, 1.0);
        data.iter_mut().enumerate().for_each(|(i, v)| *v = *v * (1.0 + (i % c) as f32) + (i % c) as f32 - 1.0);
        Tensor::from_vec(shape, data).unwrap()
    }

    #[test]
    fn forward_normalises_each_channel() {
        let mut rng = SplitMix64::new(21);
        let x = random_input(&mut rng, &[3, 4, 5, 3]);
        let (y, saved) = batch_norm_train_forward(&x, &[1.0; 3], &[0.0; 3], EPS).unwrap();
        for ch in 0..3 {
            let column: Vec<f64> = y.data.iter().skip(ch).step_by(3).map(|&v| v as f64).collect();
            let mean = column.iter().sum::<f64>() / 60.0;
            let var = column.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 60.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-3, "channel {ch}: mean {mean} var {var}");
            let xs: Vec<f64> = x.data.iter().skip(ch).step_by(3).map(|&v| v as f64).collect();
            let xm = xs.iter().sum::<f64>() / 60.0;
            let unbiased = xs.iter().map(|v| (v - xm).powi(2)).sum::<f64>() / 59.0;
            assert!((saved.var_unbiased[ch] as f64 - unbiased).abs() < 1e-6 * unbiased);
        }
    }

    /// BatchNorm is curved (x̂ divides by the batch's spread), so the step trades the
    /// truncation error (≈ h²) against f32 rounding of the outputs (≈ 1e-7·|L|/h); h = 2⁻⁸
    /// balances them: observed ≤ 2e-5 of the largest gradient, tolerance 2e-4.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = SplitMix64::new(22);
        for shape in [[2, 3, 2, 3], [4, 1, 1, 2], [1, 2, 3, 4]] {
            let x = random_input(&mut rng, &shape);
            let c = shape[3];
            let gamma = random_values(&mut rng, c, 0.5, 1.5);
            let beta = random_values(&mut rng, c, -0.5, 0.5);
            let r = Tensor::from_vec(&shape, random_values(&mut rng, x.len(), -1.0, 1.0)).unwrap();
            let loss = |x: &[f32], gamma: &[f32], beta: &[f32]| {
                let x = Tensor::from_vec(&shape, x.to_vec()).unwrap();
                dot(&r.data, &batch_norm_train_forward(&x, gamma, beta, EPS).unwrap().0.data)
            };
            let (y, saved) = batch_norm_train_forward(&x, &gamma, &beta, EPS).unwrap();
            let grads = batch_norm_backward(&r, &saved, &gamma);
            let h = 1.0 / 256.0;
            check_gradient(&format!("{shape:?} grad x"), &x.data, &grads.grad_input.data, h, 2e-4, |v| {
                loss(v, &gamma, &beta)
            });
            check_gradient(&format!("{shape:?} grad gamma"), &gamma, &grads.grad_gamma, h, 2e-4, |v| {
                loss(&x.data, v, &beta)
            });
            check_gradient(&format!("{shape:?} grad beta"), &beta, &grads.grad_beta, h, 2e-4, |v| {
                loss(&x.data, &gamma, v)
            });

            // Fused with ReLU: the same as masking the gradient by hand.
            let out = Tensor { shape: y.shape.clone(), data: y.data.iter().map(|v| v.max(0.0)).collect() };
            let masked = Tensor {
                shape: r.shape.clone(),
                data: r.data.iter().zip(&out.data).map(|(g, o)| if *o > 0.0 { *g } else { 0.0 }).collect(),
            };
            let fused = batch_norm_relu_backward(&r, &out, &saved, &gamma);
            let split = batch_norm_backward(&masked, &saved, &gamma);
            assert_eq!(fused.grad_input, split.grad_input);
            assert_eq!((fused.grad_gamma, fused.grad_beta), (split.grad_gamma, split.grad_beta));
        }
    }

    #[test]
    fn running_stats_use_the_unbiased_variance() {
        // One channel, values 1..=4: mean 2.5, biased var 1.25, unbiased var 5/3.
        let x = Tensor::from_vec(&[4, 1, 1, 1], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let (_, saved) = batch_norm_train_forward(&x, &[1.0], &[0.0], 0.0).unwrap();
        assert!((saved.inv_std[0] - 1.25f32.sqrt().recip()).abs() < 1e-7);
        let (mut running_mean, mut running_var) = (vec![0.0], vec![1.0]);
        update_running_stats(&mut running_mean, &mut running_var, &saved, 0.1);
        assert!((running_mean[0] - 0.25).abs() < 1e-7);
        assert!((running_var[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 2e-7); // one ulp at 1.07
    }

    #[test]
    fn one_value_per_channel_is_an_error() {
        let x = Tensor::zeros(&[1, 1, 1, 2]);
        let err = batch_norm_train_forward(&x, &[1.0; 2], &[0.0; 2], EPS).unwrap_err();
        assert_eq!(err, BatchNormError::TooFewValues { values: 1, shape: vec![1, 1, 1, 2] });
    }

    #[test]
    fn eval_forward_uses_running_statistics() {
        let x = Tensor::from_vec(&[1, 1, 2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let y = batch_norm_eval_forward(&x, &[2.0, 1.0], &[0.5, 0.0], &[1.0, 2.0], &[4.0, 1.0], 0.0);
        assert_eq!(y.data, vec![0.5, 0.0, 2.5, 2.0]);
    }
}
