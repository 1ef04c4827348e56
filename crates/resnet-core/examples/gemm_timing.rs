//! Times the inference GEMM (f32 and bf16) on one shape, with the epilogue a residual
//! bottleneck's last 1x1 convolution uses (bias, residual, ReLU), in GFLOP/s.
//!   cargo run --release -p resnet-core --example gemm_timing -- M K N [THREADS]

use resnet_core::kernels::packed_gemm::{packed_matmul, PackedEpilogue, PackedMatrix};
use resnet_core::kernels::packed_gemm_bf16::{packed_matmul_bf16, PackedMatrixBf16};
use resnet_core::model::seeded::seeded_values;
use resnet_core::timing::median_ms;

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    let [m, k, n, threads] = [0, 1, 2, 3].map(|i| a.get(i).copied().unwrap_or([3136, 64, 256, 2][i]));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
    let lhs = seeded_values(1, m * k, -1.0, 1.0);
    let weights = seeded_values(2, n * k, -0.1, 0.1);
    let bias = seeded_values(3, n, -0.1, 0.1);
    let residual = seeded_values(4, m * n, -1.0, 1.0);
    let e = PackedEpilogue { bias: Some(&bias), residual: Some(&residual), relu: true, accumulate: false };
    let packed = PackedMatrix::from_rows(&weights, n, k, None);
    let packed_bf16 = PackedMatrixBf16::from_rows(&weights, n, k, None);
    let mut out = vec![0.0f32; m * n];
    let gflop = 2.0 * (m * k * n) as f64 / 1e9;
    let reps = (2.0 / gflop).ceil().max(1.0) as usize;
    pool.install(|| {
        let f32_ms =
            median_ms(7, || (0..reps).for_each(|_| packed_matmul(&lhs, m, k, &packed, &mut out, &e))) / reps as f64;
        let bf16_ms =
            median_ms(7, || (0..reps).for_each(|_| packed_matmul_bf16(&lhs, m, k, &packed_bf16, &mut out, &e)))
                / reps as f64;
        println!("M {m} K {k} N {n}, {threads} threads");
        println!("f32   {f32_ms:8.3} ms {:7.1} GFLOP/s", gflop / f32_ms * 1e3);
        println!("bf16  {bf16_ms:8.3} ms {:7.1} GFLOP/s", gflop / bf16_ms * 1e3);
    });
}
