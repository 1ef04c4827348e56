//! One `K` block of a tile's rows of `a`, copied so that the micro-kernel's reads of it do
//! not fight over L1 sets.
//!
//! The micro-kernel broadcasts one value from each of its [`MR`] rows per step. Read in
//! place, those rows lie `row_stride` apart: for a row-major `a` with 1024 or 2048 columns
//! (ResNet-50's layer3 and layer4 1x1 convolutions, and the input gradients of the layers
//! with 1024 or 2048 outputs) that is a multiple of 4 KiB, so all twelve rows map to one
//! set of the 8-way L1 and evict each other on every step. Copied with one cache line more
//! than a multiple of 16 values between rows, they land in twelve sets. The copy is made
//! once per `K` block of a tile and read by every panel of `B`.
//!
//! `gemm_timing`, one thread, six interleaved pairs, GFLOP/s in place -> copied:
//! M 3136 × K 1024 × N 256: 65-88 -> 80-95; M 784 × K 2048 × N 512: 65-89 -> 85-100;
//! M 196 × K 1024 × N 256 (batch 1): 72-96 -> 99-108.
//! Strides that are not a multiple of 4 KiB stay in place: copying them measured slower
//! (K 512 × N 2048: 87 -> 81; K 64 × N 256: 101 -> 88), as did copying a transposed `a`
//! (the weight gradients, 5-25% slower).

use super::{Lhs, NR};

/// Where the copied block is: row `r` at `r · stride`, its values contiguous.
#[derive(Clone, Copy, Debug)]
pub(super) struct CopiedBlock {
    pub(super) stride: usize,
}

/// Whether [`copy_block`] pays for itself: `a` is row-major with rows a multiple of 4 KiB
/// apart, and read by at least two panels of `B` (`n` columns).
pub(super) fn worth_copying(a: &Lhs<'_>, n: usize) -> bool {
    const VALUES_PER_4_KIB: usize = 4096 / size_of::<f32>();
    a.col_stride == 1 && a.row_stride.is_multiple_of(VALUES_PER_4_KIB) && n.div_ceil(NR) >= 2
}

/// Copies rows `0..rows`, columns `k0..k0 + kc` of a row-major `a` into `buf` (grown as
/// needed), rows one cache line more than a multiple of 16 values apart.
pub(super) fn copy_block(a: &Lhs<'_>, rows: usize, k0: usize, kc: usize, buf: &mut Vec<f32>) -> CopiedBlock {
    debug_assert_eq!(a.col_stride, 1, "worth_copying admits row-major a only");
    let stride = kc.next_multiple_of(16) + 16;
    grow(buf, rows * stride);
    for (r, dst) in buf.chunks_mut(stride).take(rows).enumerate() {
        let start = r * a.row_stride + k0;
        dst[..kc].copy_from_slice(&a.data[start..start + kc]);
    }
    CopiedBlock { stride }
}

/// Makes `buf` at least `len` long; its old values are overwritten before they are read.
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_reads_back_the_block() {
        let (m, k) = (29, 70);
        let values: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
        let a = Lhs::rows(&values, k);
        for (k0, kc) in [(0, 64), (64, 6), (3, 67)] {
            let mut buf = vec![f32::NAN; 7];
            let CopiedBlock { stride } = copy_block(&a, m, k0, kc, &mut buf);
            assert!(!stride.is_multiple_of(64), "rows one line past a multiple of 16 values");
            for r in 0..m {
                assert_eq!(buf[r * stride..r * stride + kc], values[r * k + k0..r * k + k0 + kc]);
            }
        }
    }

    #[test]
    fn copies_rows_4_kib_apart_read_by_several_panels() {
        let data = [0.0; 4];
        assert!(worth_copying(&Lhs::rows(&data, 1024), 64));
        assert!(worth_copying(&Lhs::rows(&data, 2048), 64));
        assert!(!worth_copying(&Lhs::rows(&data, 1024), 32), "one panel");
        assert!(!worth_copying(&Lhs::rows(&data, 512), 64), "2 KiB apart");
        assert!(!worth_copying(&Lhs { data: &data, row_stride: 1, col_stride: 1024 }, 64), "transposed");
    }
}
