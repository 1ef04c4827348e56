//! Times training-mode BatchNorm forward (+ ReLU) and backward on one activation shape, to
//! see what the element-wise part of a training step costs.
//!   cargo run --release -p resnet-core --example batchnorm_timing -- N H C

use resnet_core::kernels::batchnorm::{
    batch_norm_relu_backward, batch_norm_relu_backward_from_input, batch_norm_train_forward_fused,
};
use resnet_core::model::seeded::seeded_values;
use resnet_core::timing::median_ms;
use resnet_core::Tensor;

fn main() {
    resnet_core::kernels::memory::keep_freed_memory_for_reuse();
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    let [n, h, c] = [0, 1, 2].map(|i| a.get(i).copied().unwrap_or([128, 32, 16][i]));
    let len = n * h * h * c;
    let x = Tensor::from_vec(&[n, h, h, c], seeded_values(1, len, -1.0, 3.0)).expect("shape");
    let residual = seeded_values(2, len, -1.0, 1.0);
    let grad = Tensor::from_vec(&[n, h, h, c], seeded_values(3, len, -1.0, 1.0)).expect("shape");
    let (gamma, beta) = (vec![1.1; c], vec![0.1; c]);
    let forward = |residual: Option<&[f32]>| {
        batch_norm_train_forward_fused(x.clone(), &gamma, &beta, 1e-5, residual, true).expect("batch")
    };
    // The forward keeps its input, so each run gets a copy: timed alone and taken off.
    let copy = median_ms(15, || drop(x.clone()));
    let fwd = median_ms(15, || drop(forward(Some(&residual)))) - copy;
    let (y, saved) = forward(Some(&residual));
    let bwd = median_ms(15, || drop(batch_norm_relu_backward(&grad, &y, &saved, &gamma)));
    // Without a residual the ReLU's mask can come from the saved input instead of the output.
    let (_, saved) = forward(None);
    let bwd_from_input = median_ms(15, || drop(batch_norm_relu_backward_from_input(&grad, &saved, &gamma, &beta)));
    let mb = (len * 4) as f64 / 1e6;
    println!(
        "[{n}, {h}, {h}, {c}] ({mb:.1} MB): forward+residual+relu {fwd:.2} ms, backward {bwd:.2} ms \
         (mask from the input: {bwd_from_input:.2} ms)"
    );
}
