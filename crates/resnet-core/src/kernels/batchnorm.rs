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
use super::vectorised_fn;
use crate::tensor::Tensor;

/// What the training-mode forward keeps for the backward and for the running statistics.
#[derive(Clone, Debug)]
pub struct BatchNormSaved {
    /// The input x, from which the backward recomputes the normalised x̂ exactly as the
    /// forward computed it ([`standardised`]). Keeping x rather than x̂ spares the forward a
    /// pass writing x̂ over the whole activation, for the same memory (x is dropped
    /// otherwise).
    pub input: Tensor,
    /// Per-channel batch mean, rounded to f32.
    pub mean: Vec<f32>,
    /// What the f32 mean leaves out of the f64 one: `mean + mean_rest` is the mean to
    /// about 2⁻⁴⁸ of it.
    pub mean_rest: Vec<f32>,
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

/// Values per "wide row": the loops below run over `k` consecutive rows at once (`k · C`
/// values, parameters repeated `k` times), so that few-channel layers still get long,
/// vectorised inner loops: with one 16-channel row at a time, the per-row loop overhead made
/// a CIFAR layer's forward 2.3x slower per value than a 64-channel one's.
fn wide_row_len(c: usize) -> usize {
    const TARGET: usize = 64;
    if c > 0 && c < TARGET && TARGET.is_multiple_of(c) {
        TARGET
    } else {
        c
    }
}

/// `values` (one per channel) repeated to fill a wide row of `wide` values.
fn tiled<T: Copy>(values: &[T], wide: usize) -> Vec<T> {
    values.iter().copied().cycle().take(wide).collect()
}

/// Per-channel sums in f64 over the `rows × c` values of `data` (and `other`, the same
/// shape): `add(offset, values, others, acc)` adds the terms of the block of whole wide rows
/// at `offset` into `acc`, `terms` accumulators of one wide row each (lane `i` of a wide row
/// into `acc[t][i]`). Blocks of [`ROWS_PER_BLOCK`] rows run in parallel and are added in
/// block order, and each block folds its wide-row lanes into channels in lane order, so
/// results do not depend on the number of threads. Returns `terms` vectors of `c` sums.
fn channel_sums(
    data: &[f32],
    other: &[f32],
    c: usize,
    terms: usize,
    add: impl Fn(usize, &[f32], &[f32], &mut [Vec<f64>]) + Sync,
) -> Vec<Vec<f64>> {
    let wide = wide_row_len(c);
    let block = ROWS_PER_BLOCK * c;
    let block_sums: Vec<Vec<Vec<f64>>> = data
        .par_chunks(block.max(1))
        .zip(other.par_chunks(block.max(1)))
        .enumerate()
        .map(|(b, (values, others))| {
            let mut acc = vec![vec![0.0f64; wide]; terms];
            add(b * block, values, others, &mut acc);
            // Fold the wide row's lanes into channels.
            acc.iter()
                .map(|lanes| {
                    let mut sums = vec![0.0f64; c];
                    for chunk in lanes.chunks(c.max(1)) {
                        sums.iter_mut().zip(chunk).for_each(|(s, v)| *s += v);
                    }
                    sums
                })
                .collect()
        })
        .collect();
    let mut total = vec![vec![0.0f64; c]; terms];
    for block in block_sums {
        for (t, b) in total.iter_mut().zip(block) {
            t.iter_mut().zip(b).for_each(|(t, b)| *t += b);
        }
    }
    total
}

vectorised_fn! {
    /// Adds each value's `v − shift` and its square into the lanes of `sum` and `squares`,
    /// wide row by wide row (`shift` is one wide row).
    fn add_shifted_moments(values: &[f32], shift: &[f64], sum: &mut [f64], squares: &mut [f64]) {
        for row in values.chunks(shift.len().max(1)) {
            for (((s, q), &v), m) in sum.iter_mut().zip(squares.iter_mut()).zip(row).zip(shift) {
                let d = v as f64 - m;
                *s += d;
                *q += d * d;
            }
        }
    }
}

/// One wide row each of the per-channel `mean`, `mean_rest` and `inv_std` that standardise
/// x into x̂.
type Standardisation = [Vec<f32>; 3];

/// x̂ from x: `((x − mean) − mean_rest)·inv_std`. The mean is split into an f32 head and the
/// rest so that the pass runs in f32 (in f64 it ran at half the vector width) and still
/// loses nothing to the mean's rounding: `x − mean` is exact where x is close to the mean
/// (Sterbenz), so a mean far from zero against the spread costs no accuracy (the test's
/// offset case: 6e-5 of the output with a plain f32 mean). The forward and both backward
/// passes call this one function, so the backward's x̂ is the forward's, bit for bit.
#[inline(always)]
fn standardised(x: f32, mean: f32, mean_rest: f32, inv_std: f32) -> f32 {
    ((x - mean) - mean_rest) * inv_std
}

vectorised_fn! {
    /// `y = relu?(γ·x̂ + β + residual?)` over whole wide rows.
    fn normalise_rows(
        x: &[f32],
        y: &mut [f32],
        standardisation: &Standardisation,
        affine: &[Vec<f32>; 2],
        residual: Option<&[f32]>,
        relu: bool,
    ) {
        let [mean, mean_rest, inv_std] = standardisation;
        let [gamma, beta] = affine;
        let wide = gamma.len().max(1);
        for (i, (y_w, x_w)) in y.chunks_mut(wide).zip(x.chunks(wide)).enumerate() {
            let params = mean.iter().zip(mean_rest).zip(inv_std).zip(gamma.iter().zip(beta));
            for ((yv, &v), (((&m, &m_rest), &s), (g, be))) in y_w.iter_mut().zip(x_w).zip(params) {
                *yv = g * standardised(v, m, m_rest, s) + be;
            }
            if let Some(r) = residual {
                y_w.iter_mut().zip(&r[i * wide..]).for_each(|(v, r)| *v += r);
            }
            if relu {
                y_w.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
    }
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
    batch_norm_train_forward_fused(x.clone(), gamma, beta, eps, None, false)
}

/// [`batch_norm_train_forward`] followed by `relu?(y + residual?)`, in the same pass over
/// the data (a residual block's end: one pass less over the activation than applying them
/// after). `x` is kept for the backward. Panics when `residual` does not have `x`'s length
/// (a caller bug).
pub fn batch_norm_train_forward_fused(
    x: Tensor,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    residual: Option<&[f32]>,
    relu: bool,
) -> Result<(Tensor, BatchNormSaved), BatchNormError> {
    let (n, c) = rows_and_channels(&x);
    assert_eq!(gamma.len(), c, "BatchNorm weight must have one value per channel");
    assert_eq!(beta.len(), c, "BatchNorm bias must have one value per channel");
    if let Some(r) = residual {
        assert_eq!(r.len(), x.len(), "the residual must have the input's shape");
    }
    if n < 2 {
        return Err(BatchNormError::TooFewValues { values: n, shape: x.shape.clone() });
    }
    // One pass for both moments, in f64 and about a shift (each channel's first value),
    // so that a mean far from zero against the spread does not cancel: the variance is
    // E[(x − s)²] − (E[x − s])², both terms of the order of the spread when s is a sample.
    let shift: Vec<f64> = x.data[..c].iter().map(|&v| v as f64).collect();
    let wide = wide_row_len(c);
    let shift_wide = tiled(&shift, wide);
    let sums = channel_sums(&x.data, &x.data, c, 2, |_, values, _, acc| {
        let [sum, sum_squares] = acc else { unreachable!("two sums") };
        add_shifted_moments(values, &shift_wide, sum, sum_squares);
    });
    let (sum, sum_squares) = (&sums[0], &sums[1]);
    let mean_offset: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
    let mean: Vec<f64> = mean_offset.iter().zip(&shift).map(|(d, s)| s + d).collect();
    // Σ(x − mean)², never negative.
    let squared_deviations: Vec<f64> =
        sum_squares.iter().zip(&mean_offset).map(|(q, d)| (q - n as f64 * d * d).max(0.0)).collect();
    let inv_std: Vec<f64> = squared_deviations.iter().map(|s| 1.0 / (s / n as f64 + eps as f64).sqrt()).collect();

    // Written in full below, so a reused buffer needs no clearing.
    let mut y = Tensor::from_vec(&x.shape, take_buffer(x.data.len())).unwrap_or_else(|| Tensor::zeros(&x.shape));
    let mean_head: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let mean_rest: Vec<f32> = mean.iter().zip(&mean_head).map(|(&m, &h)| (m - h as f64) as f32).collect();
    let inv_std: Vec<f32> = inv_std.iter().map(|&s| s as f32).collect();
    let standardisation = [tiled(&mean_head, wide), tiled(&mean_rest, wide), tiled(&inv_std, wide)];
    let affine = [tiled(gamma, wide), tiled(beta, wide)];
    let block = ROWS_PER_BLOCK * c;
    y.data.par_chunks_mut(block).enumerate().for_each(|(b, y_rows)| {
        let rows = b * block..b * block + y_rows.len();
        let residual_rows = residual.map(|r| &r[rows.clone()]);
        normalise_rows(&x.data[rows], y_rows, &standardisation, &affine, residual_rows, relu);
    });
    let saved = BatchNormSaved {
        input: x,
        mean: mean_head,
        mean_rest,
        inv_std,
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
    assert_eq!(grad_y.shape, saved.input.shape, "BatchNorm gradient must have the input's shape");
    backward_with(saved, gamma, &grad_y.data, ReluMask::All)
}

/// Backward of `relu(batch_norm(x))` in one pass: `output` is the forward's result after the
/// ReLU, so the gradient reaches the BatchNorm only where `output > 0`.
pub fn batch_norm_relu_backward(
    grad_output: &Tensor,
    output: &Tensor,
    saved: &BatchNormSaved,
    gamma: &[f32],
) -> BatchNormGrads {
    assert_eq!(grad_output.shape, saved.input.shape, "BatchNorm gradient must have the input's shape");
    assert_eq!(output.shape, saved.input.shape, "BatchNorm output must have the input's shape");
    backward_with(saved, gamma, &grad_output.data, ReluMask::Output(&output.data))
}

/// [`batch_norm_relu_backward`] for `relu(batch_norm(x))` with no residual added, reading the
/// ReLU's mask from the saved input instead of the output: `γ·x̂ + β > 0`, computed as the
/// forward computed it, so the gradients are bit for bit the same, and both passes read one
/// activation less (the output). Panics when shapes disagree (a caller bug).
pub fn batch_norm_relu_backward_from_input(
    grad_output: &Tensor,
    saved: &BatchNormSaved,
    gamma: &[f32],
    beta: &[f32],
) -> BatchNormGrads {
    assert_eq!(grad_output.shape, saved.input.shape, "BatchNorm gradient must have the input's shape");
    let (_, c) = rows_and_channels(&saved.input);
    assert_eq!(beta.len(), c, "BatchNorm bias must have one value per channel");
    let wide = wide_row_len(c);
    let affine = [tiled(gamma, wide), tiled(beta, wide)];
    backward_with(saved, gamma, &grad_output.data, ReluMask::Affine(&affine))
}

/// Where the gradient of `y` reaches the BatchNorm.
#[derive(Clone, Copy)]
enum ReluMask<'a> {
    /// Everywhere (no ReLU).
    All,
    /// Where the ReLU's output (these values) is positive.
    Output(&'a [f32]),
    /// Where `γ·x̂ + β` (one wide row each of γ and β) is positive: the ReLU's input when no
    /// residual was added.
    Affine(&'a [Vec<f32>; 2]),
}

impl<'a> ReluMask<'a> {
    /// The mask of the values from `at` on.
    fn starting_at(self, at: usize) -> ReluMask<'a> {
        match self {
            ReluMask::Output(out) => ReluMask::Output(&out[at..]),
            other => other,
        }
    }
}

/// The backward with `∂L/∂y` given by `grad`, masked by `mask`.
fn backward_with(saved: &BatchNormSaved, gamma: &[f32], grad: &[f32], mask: ReluMask<'_>) -> BatchNormGrads {
    let x = &saved.input;
    let (n, c) = rows_and_channels(x);
    assert_eq!(gamma.len(), c, "BatchNorm weight must have one value per channel");
    for stat in [&saved.mean, &saved.mean_rest, &saved.inv_std] {
        assert_eq!(stat.len(), c, "saved statistics must have one value per channel");
    }
    assert_eq!(grad.len(), x.len());
    let wide = wide_row_len(c);
    let standardisation = [tiled(&saved.mean, wide), tiled(&saved.mean_rest, wide), tiled(&saved.inv_std, wide)];
    // ∂L/∂y where the ReLU's output is positive (everywhere without a ReLU), read in place
    // by both passes below: no masked copy of the gradient is made.
    // One pass for both sums: Σg and Σg·x̂ for each channel.
    let sums = channel_sums(grad, &x.data, c, 2, |at, g, x_rows, acc| {
        let [sum_g, sum_g_x_hat] = acc else { unreachable!("two sums") };
        add_gradient_sums(g, x_rows, &standardisation, mask.starting_at(at), sum_g, sum_g_x_hat);
    });
    let (grad_beta, grad_gamma) = (&sums[0], &sums[1]);

    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * saved.inv_std[ch]).collect();
    let mean_grad: Vec<f32> = grad_beta.iter().map(|s| (s / n as f64) as f32).collect();
    let mean_grad_x_hat: Vec<f32> = grad_gamma.iter().map(|s| (s / n as f64) as f32).collect();
    let wide_params = [tiled(&scale, wide), tiled(&mean_grad, wide), tiled(&mean_grad_x_hat, wide)];
    // Written in full below (every row, every channel).
    let mut grad_input =
        Tensor::from_vec(&x.shape, take_buffer(x.data.len())).unwrap_or_else(|| Tensor::zeros(&x.shape));
    if c > 0 {
        let block = ROWS_PER_BLOCK * c;
        grad_input.data.par_chunks_mut(block).zip(x.data.par_chunks(block)).enumerate().for_each(
            |(b, (dst_rows, x_rows))| {
                let rows = b * block..b * block + dst_rows.len();
                let mask = mask.starting_at(rows.start);
                input_gradient_rows(dst_rows, x_rows, &grad[rows], &standardisation, mask, &wide_params);
            },
        );
    }
    BatchNormGrads {
        grad_input,
        grad_gamma: grad_gamma.iter().map(|&v| v as f32).collect(),
        grad_beta: grad_beta.iter().map(|&v| v as f32).collect(),
    }
}

/// `g` where the ReLU's output is positive (all of `g` without a ReLU).
#[inline(always)]
fn masked(g: f32, relu_output: f32) -> f32 {
    if relu_output > 0.0 {
        g
    } else {
        0.0
    }
}

vectorised_fn! {
    /// Adds `g` and `g·x̂` (`g` masked by `mask`, x̂ standardised from `x`) into the lanes of
    /// `sum_g` and `sum_g_x_hat`, wide row by wide row.
    fn add_gradient_sums(
        g: &[f32],
        x: &[f32],
        standardisation: &Standardisation,
        mask: ReluMask<'_>,
        sum_g: &mut [f64],
        sum_g_x_hat: &mut [f64],
    ) {
        let [mean, mean_rest, inv_std] = standardisation;
        let wide = sum_g.len().max(1);
        for (i, (g_w, x_w)) in g.chunks(wide).zip(x.chunks(wide)).enumerate() {
            let x_hat_w = x_w.iter().zip(mean.iter().zip(mean_rest).zip(inv_std)).map(|(&v, ((&m, &r), &s))| standardised(v, m, r, s));
            let sums = sum_g.iter_mut().zip(sum_g_x_hat.iter_mut());
            let add = |((sg, sgx), g, xh): ((&mut f64, &mut f64), f32, f32)| {
                *sg += g as f64;
                *sgx += g as f64 * xh as f64;
            };
            let terms = sums.zip(g_w).zip(x_hat_w);
            match mask {
                ReluMask::All => terms.for_each(|((s, &g), xh)| add((s, g, xh))),
                ReluMask::Output(out) => terms
                    .zip(&out[i * wide..])
                    .for_each(|(((s, &g), xh), &y)| add((s, masked(g, y), xh))),
                ReluMask::Affine([gamma, beta]) => terms
                    .zip(gamma.iter().zip(beta))
                    .for_each(|(((s, &g), xh), (&ga, &be))| add((s, masked(g, ga * xh + be), xh))),
            }
        }
    }
}

vectorised_fn! {
    /// `dst = scale·(g − mean_grad − x̂·mean_grad_x_hat)` over whole wide rows, `g` masked by
    /// `mask`, x̂ standardised from `x`; `params` are one wide row each of `scale`,
    /// `mean_grad` and `mean_grad_x_hat`.
    fn input_gradient_rows(
        dst: &mut [f32],
        x: &[f32],
        g: &[f32],
        standardisation: &Standardisation,
        mask: ReluMask<'_>,
        params: &[Vec<f32>; 3],
    ) {
        let [mean, mean_rest, inv_std] = standardisation;
        let [scale, mean_grad, mean_grad_x_hat] = params;
        let wide = scale.len().max(1);
        let input_gradient = |g: f32, xh: f32, ((&s, &mg), &mgx): ((&f32, &f32), &f32)| s * (g - mg - xh * mgx);
        for (i, ((dst_w, x_w), g_w)) in dst.chunks_mut(wide).zip(x.chunks(wide)).zip(g.chunks(wide)).enumerate() {
            let x_hat_w = x_w.iter().zip(mean.iter().zip(mean_rest).zip(inv_std)).map(|(&v, ((&m, &r), &s))| standardised(v, m, r, s));
            let terms = dst_w.iter_mut().zip(x_hat_w).zip(scale.iter().zip(mean_grad).zip(mean_grad_x_hat)).zip(g_w);
            match mask {
                ReluMask::All => terms.for_each(|(((d, xh), p), &g)| *d = input_gradient(g, xh, p)),
                ReluMask::Output(out) => terms
                    .zip(&out[i * wide..])
                    .for_each(|((((d, xh), p), &g), &y)| *d = input_gradient(masked(g, y), xh, p)),
                ReluMask::Affine([gamma, beta]) => terms
                    .zip(gamma.iter().zip(beta))
                    .for_each(|((((d, xh), p), &g), (&ga, &be))| *d = input_gradient(masked(g, ga * xh + be), xh, p)),
            }
        }
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

    /// The ReLU mask recomputed from the saved input is the output's mask, bit for bit, for
    /// few channels (wide rows of several pixels) and many, with negative γ and ties at zero.
    #[test]
    fn relu_mask_from_the_input_equals_the_outputs() {
        let mut rng = SplitMix64::new(11);
        for shape in [[3, 5, 7, 4], [2, 3, 3, 96], [5, 2, 2, 6]] {
            let c = shape[3];
            let x = random_input(&mut rng, &shape);
            let grad = random_input(&mut rng, &shape);
            let gamma: Vec<f32> = (0..c).map(|i| if i % 3 == 0 { -0.7 } else { 1.3 }).collect();
            let beta: Vec<f32> = (0..c).map(|i| [0.0, 0.4, -0.4][i % 3]).collect();
            let (y, saved) = batch_norm_train_forward_fused(x, &gamma, &beta, 1e-5, None, true).unwrap();
            assert!(y.data.contains(&0.0) && y.data.iter().any(|&v| v > 0.0));
            let from_output = batch_norm_relu_backward(&grad, &y, &saved, &gamma);
            let from_input = batch_norm_relu_backward_from_input(&grad, &saved, &gamma, &beta);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&from_input.grad_input.data), bits(&from_output.grad_input.data), "{shape:?}");
            assert_eq!(bits(&from_input.grad_gamma), bits(&from_output.grad_gamma), "{shape:?}");
            assert_eq!(bits(&from_input.grad_beta), bits(&from_output.grad_beta), "{shape:?}");
        }
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

    /// The statistics and the parameter gradients against plain f64 sums, over many rows
    /// (several parallel blocks, added in order), 16 channels (wide rows) and 80, with means
    /// from 0 to 3000 times the spread: every sum within 1e-5 of its scale.
    #[test]
    fn sums_match_f64_over_many_rows() {
        let mut rng = SplitMix64::new(23);
        for c in [16usize, 80] {
            let rows = 3 * ROWS_PER_BLOCK + 17;
            let offsets = [0.0f32, 5.0, -100.0, 3000.0];
            let data: Vec<f32> = random_values(&mut rng, rows * c, -1.0, 1.0)
                .iter()
                .enumerate()
                .map(|(i, v)| v + offsets[(i % c) % 4])
                .collect();
            let x = Tensor::from_vec(&[rows, 1, 1, c], data).unwrap();
            let g = random_values(&mut rng, rows * c, -1.0, 1.0);
            let (_, saved) = batch_norm_train_forward(&x, &vec![1.0; c], &vec![0.0; c], EPS).unwrap();
            let grads = batch_norm_backward(&Tensor::from_vec(&x.shape, g.clone()).unwrap(), &saved, &vec![1.0; c]);
            for ch in 0..c {
                let xs: Vec<f64> = x.data.iter().skip(ch).step_by(c).map(|&v| v as f64).collect();
                let gs: Vec<f64> = g.iter().skip(ch).step_by(c).map(|&v| v as f64).collect();
                let mean = xs.iter().sum::<f64>() / rows as f64;
                let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / rows as f64;
                let got_mean = saved.mean[ch] as f64 + saved.mean_rest[ch] as f64;
                assert!((got_mean - mean).abs() < 1e-5 * var.sqrt(), "c {c} ch {ch}: mean {got_mean} vs {mean}");
                let unbiased = var * rows as f64 / (rows - 1) as f64;
                assert!((saved.var_unbiased[ch] as f64 - unbiased).abs() < 1e-5 * unbiased, "c {c} ch {ch}: variance");
                let sum_g: f64 = gs.iter().sum();
                let scale_g: f64 = gs.iter().map(|v| v.abs()).sum();
                assert!((grads.grad_beta[ch] as f64 - sum_g).abs() < 1e-5 * scale_g, "c {c} ch {ch}: grad β");
                let x_hat = xs.iter().map(|v| (v - mean) / (var + EPS as f64).sqrt());
                let (sum_gx, scale_gx) =
                    gs.iter().zip(x_hat).fold((0.0, 0.0), |(s, a), (g, xh)| (s + g * xh, a + (g * xh).abs()));
                assert!((grads.grad_gamma[ch] as f64 - sum_gx).abs() < 1e-5 * scale_gx, "c {c} ch {ch}: grad γ");
            }
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
