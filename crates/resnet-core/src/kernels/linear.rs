//! Fully connected layer (PyTorch's `nn.Linear`) and its backward, as GEMMs.
//!
//! `y[N, out] = x[N, in] · Wᵀ + b` with `W` stored `[out, in]` (PyTorch's layout). Then
//!
//! ```text
//! ∂L/∂x = ∂L/∂y · W          [N, out]·[out, in]
//! ∂L/∂W = (∂L/∂y)ᵀ · x       [out, N]·[N, in]
//! ∂L/∂b = Σ_rows ∂L/∂y
//! ```

use super::matmul::{matmul, MatMul};
use crate::tensor::Tensor;

/// `(rows, features)` of a `[N, features]` tensor. Panics otherwise (a caller bug).
fn matrix_dims(t: &Tensor, what: &str) -> (usize, usize) {
    assert_eq!(t.shape.len(), 2, "{what} must be a [N, features] matrix, got shape {:?}", t.shape);
    (t.shape[0], t.shape[1])
}

/// `x · weightᵀ + bias` for `x` `[N, in]`, `weight` `[out, in]` (flat) and an optional
/// `bias` of `out` values. Panics when the sizes disagree (a caller bug).
pub fn linear_forward(x: &Tensor, weight: &[f32], bias: Option<&[f32]>, out_features: usize) -> Tensor {
    let (n, in_features) = matrix_dims(x, "linear input");
    assert_eq!(weight.len(), out_features * in_features, "linear weight must be [out, in]");
    let mut y = Tensor::zeros(&[n, out_features]);
    let spec = MatMul {
        m: n,
        n: out_features,
        k: in_features,
        lhs: &x.data,
        lhs_row_stride: in_features,
        lhs_col_stride: 1,
        rhs: weight,
        rhs_row_stride: 1,
        rhs_col_stride: in_features,
        accumulate: false,
        threads: super::current_threads(),
    };
    matmul(&spec, &mut y.data, out_features);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), out_features, "linear bias must have one value per output");
        if out_features > 0 {
            y.data.chunks_mut(out_features).for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        }
    }
    y
}

/// Gradients of a linear layer.
#[derive(Clone, Debug)]
pub struct LinearGrads {
    /// `∂L/∂x`, `[N, in]`.
    pub grad_input: Tensor,
    /// `∂L/∂W`, `[out, in]` flat.
    pub grad_weight: Vec<f32>,
    /// `∂L/∂b`, `out` values (the caller ignores it when the layer has no bias).
    pub grad_bias: Vec<f32>,
}

/// Backward of [`linear_forward`] from its input `x`, `weight` and `grad_out = ∂L/∂y`
/// (`[N, out]`). Panics when the sizes disagree (a caller bug).
pub fn linear_backward(x: &Tensor, weight: &[f32], grad_out: &Tensor) -> LinearGrads {
    let (n, in_features) = matrix_dims(x, "linear input");
    let (grad_rows, out_features) = matrix_dims(grad_out, "linear output gradient");
    assert_eq!(grad_rows, n, "linear input and gradient batch sizes differ");
    assert_eq!(weight.len(), out_features * in_features, "linear weight must be [out, in]");
    let threads = super::current_threads();

    let mut grad_input = Tensor::zeros(&[n, in_features]);
    let input_spec = MatMul {
        m: n,
        n: in_features,
        k: out_features,
        lhs: &grad_out.data,
        lhs_row_stride: out_features,
        lhs_col_stride: 1,
        rhs: weight,
        rhs_row_stride: in_features,
        rhs_col_stride: 1,
        accumulate: false,
        threads,
    };
    matmul(&input_spec, &mut grad_input.data, in_features);

    let mut grad_weight = vec![0.0; out_features * in_features];
    let weight_spec = MatMul {
        m: out_features,
        n: in_features,
        k: n,
        lhs: &grad_out.data,
        lhs_row_stride: 1,
        lhs_col_stride: out_features,
        rhs: &x.data,
        rhs_row_stride: in_features,
        rhs_col_stride: 1,
        accumulate: false,
        threads,
    };
    matmul(&weight_spec, &mut grad_weight, in_features);

    let mut bias_sums = vec![0.0f64; out_features];
    if out_features > 0 {
        for row in grad_out.data.chunks(out_features) {
            bias_sums.iter_mut().zip(row).for_each(|(s, &g)| *s += g as f64);
        }
    }
    LinearGrads { grad_input, grad_weight, grad_bias: bias_sums.iter().map(|&s| s as f32).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check_gradient, dot, random_values};
    use crate::prng::SplitMix64;

    #[test]
    fn forward_matches_hand_computed_values() {
        let x = Tensor::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        // W = [[1, 0], [1, -1], [0, 2]], b = [0.5, 0, -1]
        let y = linear_forward(&x, &[1.0, 0.0, 1.0, -1.0, 0.0, 2.0], Some(&[0.5, 0.0, -1.0]), 3);
        assert_eq!(y.shape, vec![2, 3]);
        assert_eq!(y.data, vec![1.5, -1.0, 3.0, 3.5, -1.0, 7.0]);
    }

    /// Linear in each argument: a step of 0.5 is exact up to f32 rounding (observed ≤ 2e-7
    /// of the largest gradient). Tolerance 1e-5.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = SplitMix64::new(51);
        for &(n, inp, out) in &[(3, 5, 4), (1, 7, 2), (6, 2, 9)] {
            let x = random_values(&mut rng, n * inp, -1.0, 1.0);
            let w = random_values(&mut rng, out * inp, -1.0, 1.0);
            let b = random_values(&mut rng, out, -1.0, 1.0);
            let r = Tensor::from_vec(&[n, out], random_values(&mut rng, n * out, -1.0, 1.0)).unwrap();
            let loss = |x: &[f32], w: &[f32], b: &[f32]| {
                dot(&r.data, &linear_forward(&Tensor::from_vec(&[n, inp], x.to_vec()).unwrap(), w, Some(b), out).data)
            };
            let g = linear_backward(&Tensor::from_vec(&[n, inp], x.clone()).unwrap(), &w, &r);
            check_gradient("linear x", &x, &g.grad_input.data, 0.5, 1e-5, |v| loss(v, &w, &b));
            check_gradient("linear weight", &w, &g.grad_weight, 0.5, 1e-5, |v| loss(&x, v, &b));
            check_gradient("linear bias", &b, &g.grad_bias, 0.5, 1e-5, |v| loss(&x, &w, v));
        }
    }
}
