//! Test-only finite-difference checks shared by the backward kernels' tests.
//!
//! Every backward is checked the same way: pick a random "upstream gradient" `r` of the
//! output's shape, so that `L(x) = Σ r·f(x)` (summed in f64) is a scalar whose gradient is
//! exactly what the backward computes from `grad_out = r`; then compare that gradient with
//! central differences `(L(x + h·eᵢ) − L(x − h·eᵢ)) / (x₊ − x₋)` for every input element.
//! The denominator uses the steps actually taken after rounding `x ± h` to f32, so the only
//! errors are the forward's f32 rounding (≈ 1e-7·|L| / h) and, for curved functions, the
//! truncation term (≈ h²·|f'''|/6).

use crate::prng::SplitMix64;

/// `len` values uniform in `[lo, hi)`.
pub(crate) fn random_values(rng: &mut SplitMix64, len: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..len).map(|_| rng.uniform_f32(lo, hi)).collect()
}

/// `Σ r·y` in f64: the random linear functional of an output.
pub(crate) fn dot(r: &[f32], y: &[f32]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Central differences of `loss` at `x`, one per element, with step `h`.
pub(crate) fn numeric_gradient(x: &[f32], h: f32, loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + h;
            let (plus_x, plus) = (probe[i], loss(&probe));
            probe[i] = x[i] - h;
            let (minus_x, minus) = (probe[i], loss(&probe));
            probe[i] = x[i];
            (plus - minus) / (plus_x as f64 - minus_x as f64)
        })
        .collect()
}

/// Largest `|analytic − numeric|` relative to the largest `|analytic|` (floored at 1e-3 so
/// an all-but-zero gradient is compared absolutely). Panics with `what` above `tolerance`.
pub(crate) fn assert_gradient_close(what: &str, analytic: &[f32], numeric: &[f64], tolerance: f64) -> f64 {
    assert_eq!(analytic.len(), numeric.len(), "{what}: gradient lengths differ");
    let scale = analytic.iter().fold(1e-3f64, |m, &v| m.max((v as f64).abs()));
    let mut worst = 0.0f64;
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let err = (a as f64 - n).abs() / scale;
        assert!(err <= tolerance, "{what}: element {i}: analytic {a} vs numeric {n} (relative error {err:.2e})");
        worst = worst.max(err);
    }
    worst
}

/// Numeric gradient of `loss` at `x`, checked against `analytic`; returns the worst error.
pub(crate) fn check_gradient(
    what: &str,
    x: &[f32],
    analytic: &[f32],
    h: f32,
    tolerance: f64,
    loss: impl Fn(&[f32]) -> f64,
) -> f64 {
    let numeric = numeric_gradient(x, h, loss);
    let worst = assert_gradient_close(what, analytic, &numeric, tolerance);
    eprintln!("{what}: worst error {worst:.1e} of the largest gradient (tolerance {tolerance:.0e})");
    worst
}
