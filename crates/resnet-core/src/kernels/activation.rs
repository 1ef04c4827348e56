//! ReLU and its backward.
//!
//! `relu(x) = max(x, 0)`, so `∂relu/∂x` is 1 where `x > 0` and 0 elsewhere (PyTorch also
//! takes 0 at `x = 0`). The backward reads the forward's *output*: `output > 0` exactly
//! where `input > 0`, and the output is what the next layer keeps anyway.

use rayon::prelude::*;

use super::buffers::take_buffer;
use crate::tensor::Tensor;

/// `max(x, 0)` elementwise; NaN stays NaN, as in PyTorch.
pub fn relu_forward(x: &Tensor) -> Tensor {
    let mut y = x.clone();
    relu_in_place(&mut y);
    y
}

/// `max(x, 0)` elementwise, overwriting `x`; NaN stays NaN.
pub fn relu_in_place(x: &mut Tensor) {
    x.data.par_iter_mut().for_each(|v| {
        if *v < 0.0 {
            *v = 0.0
        }
    });
}

/// `∂L/∂x = ∂L/∂y · [y > 0]` from the gradient of the output and the output itself.
/// Panics when the shapes differ (a caller bug).
pub fn relu_backward(grad_output: &Tensor, output: &Tensor) -> Tensor {
    assert_eq!(grad_output.shape, output.shape, "ReLU gradient must have the output's shape");
    // Written in full below.
    let mut grad_input =
        Tensor::from_vec(&output.shape, take_buffer(output.data.len())).unwrap_or_else(|| Tensor::zeros(&output.shape));
    grad_input.data.par_iter_mut().zip(&grad_output.data).zip(&output.data).for_each(|((d, &g), &y)| {
        *d = if y > 0.0 { g } else { 0.0 };
    });
    grad_input
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::{check_gradient, dot, random_values};
    use crate::prng::SplitMix64;

    #[test]
    fn forward_clamps_negatives_and_keeps_nan() {
        let y = relu_forward(&Tensor::from_vec(&[4], vec![-1.0, 0.0, 2.5, f32::NAN]).unwrap());
        assert_eq!(&y.data[..3], &[0.0, 0.0, 2.5]);
        assert!(y.data[3].is_nan());
    }

    #[test]
    fn backward_passes_gradient_where_output_is_positive() {
        let out = Tensor::from_vec(&[4], vec![0.0, 3.0, 0.0, 1.0]).unwrap();
        let grad = Tensor::from_vec(&[4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(relu_backward(&grad, &out).data, vec![0.0, 2.0, 0.0, 4.0]);
    }

    /// Piecewise linear: with every |x| ≥ 0.05 and step 0.01 no difference crosses the
    /// kink, so central differences are exact up to f32 rounding. Tolerance 1e-5.
    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = SplitMix64::new(31);
        let mut x = random_values(&mut rng, 60, -1.0, 1.0);
        x.iter_mut().for_each(|v| *v += 0.05f32.copysign(*v));
        let r = random_values(&mut rng, 60, -1.0, 1.0);
        let t = |v: &[f32]| Tensor::from_vec(&[3, 4, 5, 1], v.to_vec()).unwrap();
        let analytic = relu_backward(&t(&r), &relu_forward(&t(&x)));
        check_gradient("relu", &x, &analytic.data, 0.01, 1e-5, |v| dot(&r, &relu_forward(&t(v)).data));
    }
}
