//! Matrix multiply through the `gemm` crate, behind a safe, bounds-checked call.
//!
//! Matrices are described by a base slice plus row and column strides (in elements), so a
//! weight stored `[C_out, K]` can be read as its transpose `[K, C_out]` without a copy.

use gemm::Parallelism;

/// `dst[m×n] = (accumulate ? dst : 0) + lhs[m×k] · rhs[k×n]`.
pub struct MatMul<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lhs: &'a [f32],
    pub lhs_row_stride: usize,
    pub lhs_col_stride: usize,
    pub rhs: &'a [f32],
    pub rhs_row_stride: usize,
    pub rhs_col_stride: usize,
    pub accumulate: bool,
    /// Threads to split this one product over (1: run on the calling thread).
    pub threads: usize,
}

/// Largest index touched by a strided `rows × cols` matrix, plus one.
fn extent(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// Runs `spec` into `dst`, an `m × n` matrix with row stride `dst_row_stride` and
/// column stride 1. Panics if a slice is too short for the shape and strides it is given:
/// that is a bug in the caller, never a consequence of user input.
pub fn matmul(spec: &MatMul<'_>, dst: &mut [f32], dst_row_stride: usize) {
    let MatMul { m, n, k, .. } = *spec;
    assert!(spec.lhs.len() >= extent(m, k, spec.lhs_row_stride, spec.lhs_col_stride));
    assert!(spec.rhs.len() >= extent(k, n, spec.rhs_row_stride, spec.rhs_col_stride));
    assert!(dst.len() >= extent(m, n, dst_row_stride, 1));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !spec.accumulate {
            for r in 0..m {
                dst[r * dst_row_stride..r * dst_row_stride + n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if spec.threads > 1 { Parallelism::Rayon(spec.threads) } else { Parallelism::None };
    // SAFETY: the asserts above prove every element the strided views address lies inside
    // its slice; `dst` is borrowed mutably so it cannot alias `lhs` or `rhs`; the strides
    // are small positive numbers that fit in isize (they index existing slices).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            spec.accumulate,
            spec.lhs.as_ptr(),
            spec.lhs_col_stride as isize,
            spec.lhs_row_stride as isize,
            spec.rhs.as_ptr(),
            spec.rhs_col_stride as isize,
            spec.rhs_row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::SplitMix64;

    /// Plain triple loop, accumulated in f64: the reference the fast path must equal.
    fn matmul_reference(spec: &MatMul<'_>) -> Vec<f32> {
        let mut out = vec![0.0f32; spec.m * spec.n];
        for i in 0..spec.m {
            for j in 0..spec.n {
                let mut acc = 0.0f64;
                for p in 0..spec.k {
                    let a = spec.lhs[i * spec.lhs_row_stride + p * spec.lhs_col_stride];
                    let b = spec.rhs[p * spec.rhs_row_stride + j * spec.rhs_col_stride];
                    acc += a as f64 * b as f64;
                }
                out[i * spec.n + j] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn matches_reference_with_transposed_rhs_and_threads() {
        let mut rng = SplitMix64::new(7);
        for &(m, n, k, threads) in &[(1, 1, 1, 1), (37, 19, 53, 1), (200, 64, 147, 2), (5, 300, 8, 2)] {
            let lhs: Vec<f32> = (0..m * k).map(|_| rng.uniform_f32(-1.0, 1.0)).collect();
            // rhs stored as [n, k] and read transposed, as conv weights are.
            let rhs: Vec<f32> = (0..n * k).map(|_| rng.uniform_f32(-1.0, 1.0)).collect();
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
            let mut dst = vec![f32::NAN; m * n];
            matmul(&spec, &mut dst, n);
            let want = matmul_reference(&spec);
            for (a, b) in dst.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b} for {m}x{n}x{k}");
            }
        }
    }
}
