//! GEMM crates on ResNet-50's real convolution GEMM shapes (batch 16, 224x224, im2col on
//! NHWC): `out[M, N] = patches[M, K] · weightᵀ[K, N]` with the weight stored `[N, K]`.
//!
//!     cargo bench -p resnet-core --bench gemm_shapes [-- THREADS]
//!
//! Prints GFLOP/s per shape for `gemm`, `matrixmultiply` and our packed-weight kernel
//! (`kernels::packed_gemm`, weights packed once outside the timing as inference does),
//! medians of 5 runs; and the bf16 kernel (`kernels::packed_gemm_bf16`: activations
//! rounded to bf16 per tile, `vdpbf16ps` where the CPU has AVX512-BF16).

use std::time::Instant;

use resnet_core::kernels::packed_gemm::{packed_matmul, PackedEpilogue, PackedMatrix};
use resnet_core::kernels::packed_gemm_bf16::{packed_matmul_bf16, PackedMatrixBf16};
use resnet_core::kernels::{matmul, MatMul};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().ok();
    // (name, M, N, K) for batch 16.
    let shapes = [
        ("stem 7x7/2", 16 * 112 * 112, 64, 147),
        ("layer1 1x1 64->64", 16 * 56 * 56, 64, 64),
        ("layer1 3x3 64", 16 * 56 * 56, 64, 576),
        ("layer1 1x1 64->256", 16 * 56 * 56, 256, 64),
        ("layer2 3x3 128", 16 * 28 * 28, 128, 1152),
        ("layer3 1x1 1024->256", 16 * 14 * 14, 256, 1024),
        ("layer3 3x3 256", 16 * 14 * 14, 256, 2304),
        ("layer4 3x3 512", 16 * 7 * 7, 512, 4608),
        ("layer4 1x1 512->2048", 16 * 7 * 7, 2048, 512),
        ("batch1 layer4 3x3 512", 7 * 7, 512, 4608),
        ("batch1 layer1 3x3 64", 56 * 56, 64, 576),
        ("batch1 layer3 1x1 1024->256", 14 * 14, 256, 1024),
        ("cifar 3x3 16, batch 128", 128 * 32 * 32, 16, 144),
    ];
    println!(
        "{:<24} {:>8} {:>6} {:>6} {:>14} {:>16} {:>15} {:>15}",
        "shape", "M", "N", "K", "gemm GFLOP/s", "matrixmul GFLOP/s", "packed GFLOP/s", "bf16 GFLOP/s"
    );
    for (name, m, n, k) in shapes {
        let lhs: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let rhs: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut dst = vec![0.0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let spec = MatMul {
            m,
            n,
            k,
            lhs: &lhs,
            lhs_row_stride: k,
            lhs_col_stride: 1,
            rhs: &rhs,
            rhs_row_stride: 1,
            rhs_col_stride: k,
            accumulate: false,
            threads,
        };
        let packed = PackedMatrix::from_rows(&rhs, n, k, None);
        let mut t_gemm = Vec::new();
        let mut t_mm = Vec::new();
        let mut t_packed = Vec::new();
        let packed_bf16 = PackedMatrixBf16::from_rows(&rhs, n, k, None);
        let mut t_bf16 = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            packed_matmul(&lhs, m, k, &packed, &mut dst, &PackedEpilogue::default());
            t_packed.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            packed_matmul_bf16(&lhs, m, k, &packed_bf16, &mut dst, &PackedEpilogue::default());
            t_bf16.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            matmul(&spec, &mut dst, n);
            t_gemm.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            // SAFETY: the slices hold exactly m*k, n*k and m*n elements for these strides.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    lhs.as_ptr(),
                    k as isize,
                    1,
                    rhs.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    dst.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            t_mm.push(t.elapsed().as_secs_f64());
        }
        println!(
            "{:<24} {:>8} {:>6} {:>6} {:>14.1} {:>16.1} {:>15.1} {:>15.1}",
            name,
            m,
            n,
            k,
            flops / median(t_gemm) / 1e9,
            flops / median(t_mm) / 1e9,
            flops / median(t_packed) / 1e9,
            flops / median(t_bf16) / 1e9
        );
    }
}
