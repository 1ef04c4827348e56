//! CPU kernels on NHWC f32 data. Each kernel has a plain safe reference beside it in its
//! tests; the fast paths go through the `gemm` crate.

pub mod activation;
pub mod batchnorm;
pub mod buffers;
pub mod conv;
pub mod conv_backward;
pub mod conv_implicit;
pub mod conv_packed;
pub mod elementwise;
#[cfg(test)]
mod gradcheck;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod memory;
pub mod packed_gemm;
pub mod packed_gemm_bf16;
pub mod peak;
pub mod pool;
pub mod pool_backward;
pub mod shortcut;
pub mod winograd;

pub use conv::{conv2d_nhwc, Conv2dGeometry, Epilogue};
pub use matmul::{matmul, MatMul};
pub use pool::{global_avg_pool_nhwc, max_pool2d_nhwc};

/// The number of threads of the rayon pool we run in (the global pool unless the caller
/// installed another with `--threads`).
pub fn current_threads() -> usize {
    rayon::current_num_threads()
}
