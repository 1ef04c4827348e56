//! Implicit-GEMM convolution: the micro-kernel reads each patch straight from a zero-padded
//! copy of the NHWC input instead of from an im2col matrix.
//!
//! For a run of output pixels along one output row, the input pixels under filter tap
//! `(ky, kx)` are equally spaced in the padded input (`stride · C` apart), and each one's
//! `C` channels are contiguous. So the `[run, K = KH·KW·C]` patch matrix of the run is, tap
//! by tap, a strided view of the padded input: the micro-kernel walks the taps as
//! *segments* of `C` values, each at its own offset, with the same row stride. What im2col
//! wrote and read back (9 values per input value for a 3x3 filter, 19% of a CIFAR
//! ResNet-20 training step) becomes a copy of the padded input rows each tile reads,
//! made in cache just before the tile is computed (`window`).
//!
//! The price: a micro-tile may not cross the end of an output row, so each row is cut into
//! runs of near-equal length of at most [`MR`] pixels (a 32-wide row: 10 + 11 + 11; 14:
//! 7 + 7), shorter than the 12 rows the im2col path always gets. Used where that costs
//! nothing (`suits`: stride 1 or ImageNet's 7x7 stride-2 stem, small filters, at least
//! [`MIN_CHANNELS`] values per filter row, AVX-512); the 3x3 stride-2 layers keep im2col.
//!
//! The weight gradient (`weight_gradient_implicit`) runs the same kernel transposed: a
//! micro-tile row is one value of a filter row (a channel under one tap), and the
//! product's `K` is the pixels.

use super::conv::Conv2dGeometry;
use super::packed_gemm::{
    avx512_available, best_path, for_each_row_tile, k_block_len, GemmPath, PackedEpilogue, PackedMatrix, KC, MR,
};
use crate::tensor::Tensor;
use window::{with_window, RunGeometry};

mod window;

/// Fewest values per filter row (`KW · C_in`, one segment of the kernel's loop, see
/// `filter_rows`) for the implicit path: shorter segments spend more on loop overhead than
/// im2col's copies cost. The CIFAR stem's 3x3 filters over 3 channels make 9 (forward
/// 2.05 -> 1.06 ms, weight gradient 2.2 -> 1.1-1.3 ms against im2col at batch 128); a
/// 1-channel input's 3 stay on im2col.
pub const MIN_CHANNELS: usize = 8;

/// Largest filter (`K · C_out · 4` bytes) computed by the implicit path: where the
/// weights stay in L2, its shorter runs cost nothing; ResNet-50's 512-channel layers at 7x7
/// (runs of 7 instead of micro-tiles of 12) streamed their 9.4 MB of weights 1.7x as often
/// and ran up to 1.8x slower.
pub const MAX_FILTER_BYTES: usize = 1 << 20;

/// Whether [`conv2d_implicit`] computes `g` on this CPU: ungrouped, stride 1 or a filter
/// wider than twice its stride (a 3x3 stride-2 window leaves every other pixel's cache lines
/// unread and ran 10-25% slower than im2col on the CIFAR nets' downsampling layers; the
/// windows of ImageNet's 7x7 stride-2 stem overlap, and it ran ~10% faster than im2col at
/// batch 16, forward and weight gradient), not 1x1 (which needs no patches at all), at least
/// [`MIN_CHANNELS`] values per filter row, at most [`MAX_FILTER_BYTES`] of weights, and the
/// AVX-512 path (the portable path keeps im2col).
pub(crate) fn suits(g: &Conv2dGeometry) -> bool {
    g.groups == 1
        && (g.stride == 1 || g.kernel_w > 2 * g.stride)
        && !g.is_pointwise()
        && g.kernel_w * g.in_channels >= MIN_CHANNELS
        && 4 * g.weight_len() <= MAX_FILTER_BYTES
        && best_path() == GemmPath::Avx512
        && avx512_available()
}

/// One micro-tile: `len` output pixels of one output row, starting at row `first` of the
/// tile, whose tap `(0, 0)` window starts at `a_base` in the padded input.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run {
    pub(super) first: usize,
    pub(super) len: usize,
    pub(super) a_base: usize,
}

/// A block of `K` (at most `KC` values): segments `(offset from a run's a_base, length)`.
pub(super) type KBlock = Vec<(usize, usize)>;

/// `out[N·OH·OW, C_out] = epilogue(conv(x, packed))` for NHWC `x` and weights packed as
/// `[K = KH·KW·C_in, C_out]` (OHWI order of `K`). Panics when [`suits`] is false or the
/// shapes disagree (caller bugs).
pub(crate) fn conv2d_implicit(
    x: &Tensor,
    g: &Conv2dGeometry,
    packed: &PackedMatrix,
    out: &mut [f32],
    e: &PackedEpilogue<'_>,
) {
    assert!(suits(g), "conv2d_implicit needs an ungrouped convolution on the AVX-512 path");
    let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    assert_eq!(c, g.in_channels);
    assert_eq!((packed.k(), packed.n()), (g.filter_len(), g.out_channels));
    let (oh, ow) = g.output_hw(h, w);
    let rows = n * oh * ow;
    assert_eq!(out.len(), rows * g.out_channels);
    if rows == 0 || g.out_channels == 0 {
        return;
    }
    let blocks = k_blocks(&filter_rows(g, w + 2 * g.padding));
    let row_stride = g.stride * c;
    for_each_row_tile(rows, g.out_channels, out, e, |row0, tile_rows, out_tile, tile_e| {
        with_window(x, g, row0, tile_rows, |a, geometry| {
            let runs = runs_of(geometry, row0, tile_rows);
            #[cfg(target_arch = "x86_64")]
            avx512::tile(a, (row_stride, 1), &blocks, &runs, packed, out_tile, tile_e);
        });
    });
}

/// The filter's rows as segments of `K` `(offset from a window's first value in an input
/// padded to `wp` pixels per row, length)`, in OHWI order: row `ky`'s `KW` taps read `KW`
/// neighbouring pixels, so their `KW · C` values are contiguous in the padded row (stride
/// 1) and form one segment; the kernel's loop over segments runs `KH` times, not `KH · KW`.
fn filter_rows(g: &Conv2dGeometry, wp: usize) -> Vec<(usize, usize)> {
    let c = g.in_channels;
    (0..g.kernel_h).map(|ky| (ky * wp * c, g.kernel_w * c)).collect()
}

/// The weight gradient's share of output pixels `first..first + len` of a convolution that
/// [`suits`] this path: `sum[K, C_out] = Σ_pixels patch(pixel)ᵀ · grad(pixel)` (`+=` with
/// `accumulate`), with the patches read from NHWC `x` (its padded rows copied into a
/// window first) and `grad` the pixels' output gradients packed as `[len, C_out]`.
///
/// The transpose of the forward's product: a row of a micro-tile is one value of K (a
/// channel under one tap), so a micro-tile is up to [`MR`] consecutive channels of one tap,
/// consecutive in memory for each pixel; `K` of the product is the pixels, walked in
/// segments that stop at output-row ends (`stride · C` apart within one).
pub(crate) fn weight_gradient_implicit(
    x: &Tensor,
    g: &Conv2dGeometry,
    first: usize,
    len: usize,
    grad: &PackedMatrix,
    accumulate: bool,
    sum: &mut [f32],
) {
    assert!(suits(g), "weight_gradient_implicit needs a convolution that suits the implicit path");
    let c = g.in_channels;
    assert_eq!((grad.k(), grad.n()), (len, g.out_channels));
    assert_eq!(sum.len(), g.filter_len() * g.out_channels);
    if len == 0 {
        if !accumulate {
            sum.fill(0.0);
        }
        return;
    }
    // Micro-tiles of rows: each filter row's `KW · C` values (consecutive in memory, see
    // `filter_rows`) cut into near-equal pieces of at most MR.
    let row_len = g.kernel_w * c;
    let pieces = row_len.div_ceil(MR);
    let row_tiles: Vec<Run> = filter_rows(g, x.shape[2] + 2 * g.padding)
        .into_iter()
        .enumerate()
        .flat_map(|(ky, (offset, len))| {
            (0..pieces).map(move |j| {
                let (c0, c1) = (j * len / pieces, (j + 1) * len / pieces);
                Run { first: ky * row_len + c0, len: c1 - c0, a_base: offset + c0 }
            })
        })
        .filter(|run| run.len > 0)
        .collect();
    with_window(x, g, first, len, |window, geometry| {
        let blocks = pixel_blocks(geometry, first, len);
        #[cfg(target_arch = "x86_64")]
        avx512::weight_gradient_tile(window, g.stride * c, &blocks, &row_tiles, grad, accumulate, sum);
    });
}

/// Output pixels `first..first + len` as segments `(offset of the pixel's window in the
/// padded input, pixels)` that stop at output-row ends, in blocks of at most `KC` pixels.
fn pixel_blocks(g: &RunGeometry, first: usize, len: usize) -> Vec<KBlock> {
    let mut blocks = KBlocks::of_at_most(KC);
    let mut pixel = first;
    while pixel < first + len {
        let (ox, offset) = g.place(pixel);
        let run = (g.ow - ox).min(first + len - pixel);
        blocks.push(offset, run, g.stride * g.c);
        pixel += run;
    }
    blocks.finish()
}

/// `K` in blocks of [`k_block_len`] values, in OHWI order: a filter row's segment split
/// where a block ends. `rows` are the segments of [`filter_rows`].
fn k_blocks(rows: &[(usize, usize)]) -> Vec<KBlock> {
    let mut blocks = KBlocks::of_at_most(k_block_len(rows.iter().map(|r| r.1).sum()));
    for &(offset, len) in rows {
        blocks.push(offset, len, 1);
    }
    blocks.finish()
}

/// Collects segments, in `K` order, into blocks of at most `limit` values, splitting a
/// segment that crosses a block's end (shared by the taps of the forward and the pixels of
/// the weight gradient).
struct KBlocks {
    blocks: Vec<KBlock>,
    current: KBlock,
    len: usize,
    limit: usize,
}

impl KBlocks {
    fn of_at_most(limit: usize) -> KBlocks {
        KBlocks { blocks: Vec::new(), current: Vec::new(), len: 0, limit: limit.max(1) }
    }

    /// Adds `len` values starting at `offset`, consecutive values `step` apart.
    fn push(&mut self, mut offset: usize, mut len: usize, step: usize) {
        while len > 0 {
            let take = len.min(self.limit - self.len);
            self.current.push((offset, take));
            (offset, len, self.len) = (offset + take * step, len - take, self.len + take);
            if self.len == self.limit {
                self.blocks.push(std::mem::take(&mut self.current));
                self.len = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<KBlock> {
        if !self.current.is_empty() {
            self.blocks.push(self.current);
        }
        self.blocks
    }
}

/// The runs of output rows `row0..row0 + rows`: each output row cut at the same
/// `ceil(OW / MR)` near-equal points, and at the tile's ends.
fn runs_of(g: &RunGeometry, row0: usize, rows: usize) -> Vec<Run> {
    let pieces = g.ow.div_ceil(MR);
    let cut = |j: usize| j * g.ow / pieces; // start of piece j of a row
    let mut runs = Vec::with_capacity(rows.div_ceil(MR) + 2);
    let mut pixel = row0;
    while pixel < row0 + rows {
        let (ox, a_base) = g.place(pixel);
        // The piece holding `ox`: the estimate is off by at most one where cuts round down.
        let mut piece = ox * pieces / g.ow;
        while cut(piece + 1) <= ox {
            piece += 1;
        }
        while cut(piece) > ox {
            piece -= 1;
        }
        let len = (cut(piece + 1) - ox).min(row0 + rows - pixel);
        runs.push(Run { first: pixel - row0, len, a_base });
        pixel += len;
    }
    runs
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::packed_gemm::avx512::{initial_sums, prefetch_destination_row, store_sums, Destination};
    use super::super::packed_gemm::{micro_kernel_for, PackedEpilogue, PackedMatrix, NR};
    use super::{KBlock, Run};

    /// One tile of output rows: for each block of `K`, each panel of `NR` columns, each run;
    /// `strides` are `a`'s (row, column) strides within a segment.
    pub(super) fn tile(
        a: &[f32],
        strides: (usize, usize),
        blocks: &[KBlock],
        runs: &[Run],
        b: &PackedMatrix,
        out: &mut [f32],
        e: &PackedEpilogue<'_>,
    ) {
        let n = b.n();
        let mut k0 = 0;
        for (index, segments) in blocks.iter().enumerate() {
            let kc: usize = segments.iter().map(|s| s.1).sum();
            let (first, last) = (index == 0 && !e.accumulate, index + 1 == blocks.len());
            for p in 0..n.div_ceil(NR) {
                let panel = &b.panel(p)[k0 * NR..(k0 + kc) * NR];
                for run in runs {
                    let mut block = SegmentBlock {
                        a: &a[run.a_base..],
                        strides,
                        segments,
                        panel,
                        dest: Destination::new(out, n, run.first, p, first, last, e),
                    };
                    block.check(run.len);
                    // SAFETY: `suits` checked AVX-512F at run time before this path was
                    // taken, and `check` proved every pointer the kernel forms lies inside
                    // its slice.
                    unsafe { dispatch(run.len, &mut block) };
                }
            }
            k0 += kc;
        }
    }

    /// The weight gradient's product `sum[K, C_out] (+)= Aᵀ-style rows × grad`: for each
    /// block of pixels, each panel of output channels, each micro-tile of K rows (one
    /// tap's channels); within a segment, rows are consecutive channels (stride 1) and
    /// pixels `col_stride` apart.
    pub(super) fn weight_gradient_tile(
        a: &[f32],
        col_stride: usize,
        blocks: &[KBlock],
        row_tiles: &[Run],
        grad: &PackedMatrix,
        accumulate: bool,
        sum: &mut [f32],
    ) {
        let e = PackedEpilogue { accumulate, ..PackedEpilogue::default() };
        tile(a, (1, col_stride), blocks, row_tiles, grad, sum, &e);
    }

    /// One micro-tile's operands: `mr` rows whose values for segment `(offset, len)` are
    /// `a[offset + r·row_stride + i·col_stride]` for `i < len`, and the matching `K` block
    /// of a panel (`Σ len × NR` values).
    struct SegmentBlock<'a> {
        a: &'a [f32],
        /// (row stride, column stride).
        strides: (usize, usize),
        segments: &'a [(usize, usize)],
        panel: &'a [f32],
        dest: Destination<'a>,
    }

    impl SegmentBlock<'_> {
        /// Every index the kernel touches for `mr` rows is in bounds (panics otherwise).
        fn check(&self, mr: usize) {
            self.dest.check(mr);
            let mut kc = 0;
            let (rs, cs) = self.strides;
            for &(offset, len) in self.segments {
                if len > 0 {
                    assert!(self.a.len() > offset + (mr - 1) * rs + (len - 1) * cs);
                }
                kc += len;
            }
            assert!(self.panel.len() >= kc * NR);
        }
    }

    /// # Safety
    /// The CPU supports AVX-512F and `block.check(mr)` passed.
    unsafe fn dispatch(mr: usize, block: &mut SegmentBlock<'_>) {
        // SAFETY (each arm): forwarded from this function's contract; `REGS = 1` only when
        // the panel has at most 16 columns, which is all that kernel reads and writes.
        unsafe { micro_kernel_for!(segment_kernel, mr, block.dest.cols > 16, block) }
    }

    /// The micro-kernel: `ROWS × 16·REGS` sums in registers across the segments.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, `block.check(ROWS)` passed, and `REGS` is 1 or 2 with
    /// `REGS = 1` only when `block.dest.cols ≤ 16`.
    #[target_feature(enable = "avx512f")]
    unsafe fn segment_kernel<const ROWS: usize, const REGS: usize>(block: &mut SegmentBlock<'_>) {
        let a = block.a.as_ptr();
        let mut b = block.panel.as_ptr();
        let (rs, cs) = block.strides;
        // SAFETY: `check(ROWS)` bounds every offset below: element c < len of segment
        // (offset, len) for row r < ROWS at offset + r·rs + c·cs; one panel row of NR values
        // per value of K (REGS·16 ≤ NR); the destination as `initial_sums` and `store_sums`
        // require.
        unsafe {
            let mut acc = initial_sums::<ROWS, REGS>(&block.dest);
            let mut step = 0;
            for &(offset, len) in block.segments {
                let a_segment = a.add(offset);
                for c in 0..len {
                    if step < ROWS {
                        prefetch_destination_row::<REGS>(&block.dest, step);
                        step += 1;
                    }
                    let mut bv = [_mm512_setzero_ps(); REGS];
                    for (j, v) in bv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(b.add(16 * j));
                    }
                    let a_c = a_segment.add(c * cs);
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_ps(*a_c.add(r * rs));
                        for (v, bj) in acc_r.iter_mut().zip(&bv) {
                            *v = _mm512_fmadd_ps(av, *bj, *v);
                        }
                    }
                    b = b.add(NR);
                }
            }
            store_sums::<ROWS, REGS>(acc, &mut block.dest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::im2col_rows;
    use crate::kernels::packed_gemm::{packed_matmul, NR};
    use crate::prng::SplitMix64;

    fn geometry(c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize) -> Conv2dGeometry {
        Conv2dGeometry { in_channels: c_in, out_channels: c_out, kernel_h: k, kernel_w: k, stride, padding, groups: 1 }
    }

    /// Runs cover every pixel once, in order, never cross an output row or exceed MR.
    #[test]
    fn runs_tile_the_rows() {
        for (oh, ow) in [(3, 32), (2, 14), (4, 7), (1, 1), (2, 25), (3, 13)] {
            let g = RunGeometry::whole(32, (oh, ow), (oh + 2, ow + 2), 1);
            for (row0, rows) in [(0, 2 * oh * ow), (5, 17), (ow - 1, 3)] {
                let runs = runs_of(&g, row0, rows);
                let mut next = 0;
                for r in &runs {
                    assert_eq!(r.first, next);
                    assert!(r.len >= 1 && r.len <= MR);
                    let start = (row0 + r.first) % ow;
                    assert!(start + r.len <= ow, "{oh}x{ow}: run crosses a row");
                    next += r.len;
                }
                assert_eq!(next, rows);
            }
        }
    }

    /// The weight gradient against `patchesᵀ · grad` from im2col, over pixel ranges that
    /// start and end mid-row and span images, with and without accumulation.
    #[test]
    fn implicit_weight_gradient_equals_im2col() {
        if !suits(&geometry(16, 16, 3, 1, 1)) {
            return;
        }
        let mut rng = SplitMix64::new(6);
        let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform_f32(-1.0, 1.0)).collect() };
        for (g, n, h, w) in [
            (geometry(16, 16, 3, 1, 1), 2, 9, 13),
            (geometry(20, 40, 3, 1, 1), 2, 7, 5),
            (geometry(8, 8, 5, 1, 2), 1, 6, 6),
            (geometry(3, 16, 3, 1, 1), 2, 9, 13),
            (geometry(3, 40, 7, 2, 3), 2, 11, 12),
        ] {
            assert!(suits(&g), "{g:?}");
            let x = Tensor::from_vec(&[n, h, w, g.in_channels], random(n * h * w * g.in_channels)).unwrap();
            let (oh, ow) = g.output_hw(h, w);
            let rows = n * oh * ow;
            let grad = random(rows * g.out_channels);
            let k = g.filter_len();
            let mut patches = vec![0.0; rows * k];
            im2col_rows(&x, &g, (oh, ow), 0, 0, &mut patches);
            for (first, len) in [(0, rows), (3, rows - 7), (ow + 2, 2 * ow + 1)] {
                let grad_rows = &grad[first * g.out_channels..(first + len) * g.out_channels];
                let packed = PackedMatrix::from_kn(grad_rows, len, g.out_channels);
                let initial = random(k * g.out_channels);
                for accumulate in [false, true] {
                    let mut expected = initial.clone();
                    for kk in 0..k {
                        for o in 0..g.out_channels {
                            let dot: f32 = (0..len)
                                .map(|i| patches[(first + i) * k + kk] * grad_rows[i * g.out_channels + o])
                                .sum();
                            let e = &mut expected[kk * g.out_channels + o];
                            *e = if accumulate { *e + dot } else { dot };
                        }
                    }
                    let mut got = initial.clone();
                    weight_gradient_implicit(&x, &g, first, len, &packed, accumulate, &mut got);
                    for (a, b) in got.iter().zip(&expected) {
                        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{g:?} rows {first}+{len}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// Against im2col + the same packed GEMM, on stride-1 shapes and the 7x7 stride-2 stem (3x3 and 5x5, odd sizes,
    /// rows shorter and longer than a micro-tile, channel counts not a multiple of 16,
    /// several K blocks, a tap split across blocks) with bias, residual and ReLU: the same products summed in the same order,
    /// so equal to rounding (1e-5 relative).
    #[test]
    fn implicit_equals_im2col() {
        if !suits(&geometry(16, 16, 3, 1, 1)) {
            eprintln!("no AVX-512 here: the implicit path is not used");
            return;
        }
        let mut rng = SplitMix64::new(5);
        let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform_f32(-1.0, 1.0)).collect() };
        for (g, n, h, w) in [
            (geometry(16, 16, 3, 1, 1), 2, 9, 32),
            (geometry(24, 40, 3, 1, 1), 2, 15, 14),
            (geometry(64, 20, 3, 1, 1), 1, 7, 7),
            (geometry(300, 33, 3, 1, 1), 1, 5, 6),
            (geometry(8, NR + 3, 3, 1, 1), 3, 5, 13),
            (geometry(16, 8, 5, 1, 2), 2, 6, 9),
            // The CIFAR stem: 3 channels, one segment of 9 values per filter row.
            (geometry(3, 16, 3, 1, 1), 2, 9, 13),
            // ImageNet's stem: 7x7 stride 2 over 3 channels, 21 values per filter row.
            (geometry(3, 64, 7, 2, 3), 2, 19, 22),
        ] {
            assert!(suits(&g), "{g:?}");
            let x = Tensor::from_vec(&[n, h, w, g.in_channels], random(n * h * w * g.in_channels)).unwrap();
            let weight = random(g.weight_len());
            let packed = PackedMatrix::from_rows(&weight, g.out_channels, g.filter_len(), None);
            let (oh, ow) = g.output_hw(h, w);
            let rows = n * oh * ow;
            let bias = random(g.out_channels);
            let residual = random(rows * g.out_channels);
            let e = PackedEpilogue { bias: Some(&bias), residual: Some(&residual), relu: true, accumulate: false };
            let mut patches = vec![0.0; rows * g.filter_len()];
            im2col_rows(&x, &g, (oh, ow), 0, 0, &mut patches);
            let mut expected = vec![0.0; rows * g.out_channels];
            packed_matmul(&patches, rows, g.filter_len(), &packed, &mut expected, &e);
            let mut got = vec![f32::NAN; rows * g.out_channels];
            conv2d_implicit(&x, &g, &packed, &mut got, &e);
            for (a, b) in got.iter().zip(&expected) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{g:?} {n}x{h}x{w}: {a} vs {b}");
            }
        }
    }
}
