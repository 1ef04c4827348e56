//! Matrix multiply against weights packed once, for inference.
//!
//! `out[M, N] = relu?(a[M, K] · B[K, N] + bias[N] + residual?[M, N])`, where `B` (a layer's
//! weights, BatchNorm's scale already folded in) is packed ahead of time into panels of
//! [`NR`] columns, each stored k-major (`panel[k][0..NR]`, zero-padded past `N`). The
//! micro-kernel then reads one contiguous `NR`-wide row of `B` per `k`, broadcasts one value
//! of each of [`MR`] rows of `a`, and keeps the `MR × NR` block of sums in registers across
//! a whole block of `K`; bias, residual and ReLU are applied as the block is stored, so the
//! output is written once. `a` is read in place (an NHWC activation for 1x1 convolutions,
//! im2col patches otherwise): no packing per call at all.
//!
//! Paths: AVX-512F (chosen at run time) and a portable one that runs the `gemm` crate on
//! each panel and applies the epilogue afterwards. Both are tested against a plain loop.

use rayon::prelude::*;

use super::matmul::{matmul, MatMul};

mod lhs_block;

/// Columns per packed panel: two AVX-512 registers of f32.
pub const NR: usize = 32;
/// Rows per micro-tile: 12 rows × 2 registers = 24 accumulators, leaving registers for the
/// two `B` vectors and the broadcast.
pub const MR: usize = 12;
/// Depth of one block of `K` (a `KC × NR` block of `B` is 32 KiB, an L1's worth), where
/// the depth is not known (the weight gradient's blocks of pixels).
pub(crate) const KC: usize = 256;

/// Deepest block of a `K` of known depth ([`k_block_len`]).
const MAX_KC: usize = 320;

/// The depth of each block for a product of depth `k`: `k` cut into the fewest blocks of at
/// most [`MAX_KC`], of equal length. Each block reloads and stores the micro-tile's sums, so
/// a short last block costs a whole pass over the output for little work: a 3x3 layer of
/// 32 channels (`K` = 288) went in blocks of 256 + 32, of 64 channels (576) 256 + 256 + 64;
/// now 288 and 288 + 288.
pub(crate) fn k_block_len(k: usize) -> usize {
    k.div_ceil(k.div_ceil(MAX_KC).max(1)).max(1)
}
/// Most rows per parallel task: the task's rows of `a` for one `K` block stay in L2.
pub(crate) const MAX_TILE_ROWS: usize = 16 * MR;

/// `B[K, N]`, packed for [`packed_matmul`].
#[derive(Clone, Debug)]
pub struct PackedMatrix {
    k: usize,
    n: usize,
    /// `ceil(N / NR)` panels of `K × NR` values.
    panels: Vec<f32>,
}

impl PackedMatrix {
    /// Packs `B[k][n] = rows[n][k] · scale[n]`: `rows` is `[N, K]` row-major, the layout of a
    /// convolution's OHWI weights and a linear layer's `[out, in]`; `scale` (one value per
    /// column) folds an eval-mode BatchNorm into the weights.
    pub fn from_rows(rows: &[f32], n: usize, k: usize, scale: Option<&[f32]>) -> PackedMatrix {
        assert_eq!(rows.len(), n * k, "weights must hold N × K values");
        if let Some(s) = scale {
            assert_eq!(s.len(), n, "one scale per output column");
        }
        let panel_count = n.div_ceil(NR);
        let mut panels = vec![0.0f32; panel_count * k * NR];
        for (p, panel) in panels.chunks_mut((k * NR).max(1)).enumerate().take(panel_count) {
            for col in 0..NR.min(n - p * NR) {
                let j = p * NR + col;
                let s = scale.map_or(1.0, |s| s[j]);
                for kk in 0..k {
                    panel[kk * NR + col] = rows[j * k + kk] * s;
                }
            }
        }
        PackedMatrix { k, n, panels }
    }

    /// Packs `B` given row-major as `[K, N]` (e.g. a gradient `[pixels, channels]`, or OHWI
    /// weights read as `[C_out, KH·KW·C_in]` for the input gradient).
    pub fn from_kn(b: &[f32], k: usize, n: usize) -> PackedMatrix {
        assert_eq!(b.len(), k * n, "B must hold K × N values");
        Self::from_kn_strided(b, n, k, n)
    }

    /// [`Self::from_kn`] with row `kk` of `B` at `b[kk·row_stride..]` (`row_stride ≥ N`), so
    /// one of several matrices interleaved by rows is packed in place.
    pub fn from_kn_strided(b: &[f32], row_stride: usize, k: usize, n: usize) -> PackedMatrix {
        assert!(row_stride >= n, "rows of B must be at least N apart");
        if k > 0 {
            assert!(b.len() >= (k - 1) * row_stride + n, "B must hold K rows of N values");
        }
        let panel_count = n.div_ceil(NR);
        let mut panels = vec![0.0f32; panel_count * k * NR];
        if k > 0 {
            // In parallel over panels: the weight gradient packs whole patch matrices (14 MB
            // for ResNet-50's layer4 at batch 16) on every step.
            panels.par_chunks_mut(k * NR).enumerate().for_each(|(p, panel)| {
                let cols = NR.min(n - p * NR);
                for (kk, dst) in panel.chunks_mut(NR).enumerate() {
                    // A full panel row is copied at its fixed length (vector moves).
                    super::copy_lanes::<f32, NR>(dst, &b[kk * row_stride + p * NR..], cols);
                }
            });
        }
        PackedMatrix { k, n, panels }
    }

    /// All zeros, to be filled panel by panel through [`Self::panels_mut`].
    pub(crate) fn zeros(k: usize, n: usize) -> PackedMatrix {
        PackedMatrix { k, n, panels: vec![0.0; n.div_ceil(NR) * k * NR] }
    }

    /// The `ceil(N / NR)` panels, each `K × NR` with column `j` of the panel at `kk·NR + j`.
    pub(crate) fn panels_mut(&mut self) -> impl Iterator<Item = &mut [f32]> {
        self.panels.chunks_mut((self.k * NR).max(1))
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub(super) fn panel(&self, p: usize) -> &[f32] {
        &self.panels[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

/// What happens to each output value as it is stored.
#[derive(Clone, Copy, Debug, Default)]
pub struct PackedEpilogue<'a> {
    /// One value per column.
    pub bias: Option<&'a [f32]>,
    /// `[M, N]`, same layout as the output.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
    /// Add the product to what `out` holds instead of overwriting it.
    pub accumulate: bool,
}

/// The left operand `a[M, K]`: element `(i, k)` at `data[i·row_stride + k·col_stride]`, so a
/// transposed matrix is read in place.
#[derive(Clone, Copy, Debug)]
pub struct Lhs<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Lhs<'a> {
    /// Row-major with row stride `lda`.
    pub fn rows(data: &'a [f32], lda: usize) -> Self {
        Lhs { data, row_stride: lda, col_stride: 1 }
    }

    /// The rows from `row0` on.
    pub(super) fn starting_at_row(&self, row0: usize) -> Lhs<'a> {
        Lhs { data: &self.data[(row0 * self.row_stride).min(self.data.len())..], ..*self }
    }
}

/// Which implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    Avx512,
    Portable,
}

/// The fastest path this CPU supports; `RESNET_PORTABLE_KERNELS=1` forces the portable one
/// (to test it on AVX-512 machines).
pub fn best_path() -> GemmPath {
    static PATH: std::sync::OnceLock<GemmPath> = std::sync::OnceLock::new();
    *PATH.get_or_init(|| {
        let forced = std::env::var("RESNET_PORTABLE_KERNELS").is_ok_and(|v| v == "1");
        if !forced && avx512_available() {
            GemmPath::Avx512
        } else {
            GemmPath::Portable
        }
    })
}

pub(super) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[M, N] = epilogue(a[M, K] · b)`, `a` row-major with row stride `lda` (≥ K), `out`
/// dense `[M, N]`. Uses the current rayon pool. Panics when the slices are too short for
/// the shapes (a caller bug).
pub fn packed_matmul(a: &[f32], m: usize, lda: usize, b: &PackedMatrix, out: &mut [f32], e: &PackedEpilogue<'_>) {
    assert!(lda >= b.k, "row stride of a must be at least K");
    packed_matmul_on(best_path(), Lhs::rows(a, lda), m, b, out, e);
}

/// [`packed_matmul`] with any strides of `a`.
pub fn packed_matmul_strided(a: Lhs<'_>, m: usize, b: &PackedMatrix, out: &mut [f32], e: &PackedEpilogue<'_>) {
    packed_matmul_on(best_path(), a, m, b, out, e);
}

/// [`packed_matmul_strided`] on a chosen path (`Avx512` falls back to `Portable` where the
/// CPU lacks AVX-512).
pub fn packed_matmul_on(
    path: GemmPath,
    a: Lhs<'_>,
    m: usize,
    b: &PackedMatrix,
    out: &mut [f32],
    e: &PackedEpilogue<'_>,
) {
    let (k, n) = (b.k, b.n);
    if m > 0 && k > 0 {
        let last = (m - 1) * a.row_stride + (k - 1) * a.col_stride;
        assert!(a.data.len() > last, "a is too short for M × K with its strides");
    }
    assert_eq!(out.len(), m * n, "out must be M × N");
    if let Some(bias) = e.bias {
        assert_eq!(bias.len(), n, "one bias per column");
    }
    if let Some(r) = e.residual {
        assert_eq!(r.len(), m * n, "residual must be M × N");
    }
    if m == 0 || n == 0 {
        return;
    }
    let use_avx512 = path == GemmPath::Avx512 && avx512_available();
    for_each_row_tile(m, n, out, e, |row0, rows, out_tile, tile_epilogue| {
        let a_tile = a.starting_at_row(row0);
        if use_avx512 {
            #[cfg(target_arch = "x86_64")]
            avx512::tile(a_tile, rows, b, out_tile, tile_epilogue);
        } else {
            portable_tile(a_tile, rows, b, out_tile, tile_epilogue);
        }
    });
}

/// [`packed_matmul_strided`] on the calling thread only, for callers that already run in
/// parallel over independent products (Winograd's 36 per convolution). Rows go through in
/// blocks of `MAX_TILE_ROWS`, as the parallel version's tiles, for the same cache reuse.
pub(crate) fn packed_matmul_serial(a: Lhs<'_>, m: usize, b: &PackedMatrix, out: &mut [f32], e: &PackedEpilogue<'_>) {
    let (k, n) = (b.k, b.n);
    if m > 0 && k > 0 {
        let last = (m - 1) * a.row_stride + (k - 1) * a.col_stride;
        assert!(a.data.len() > last, "a is too short for M × K with its strides");
    }
    assert_eq!(out.len(), m * n, "out must be M × N");
    if m == 0 || n == 0 {
        return;
    }
    let use_avx512 = best_path() == GemmPath::Avx512 && avx512_available();
    for (t, out_tile) in out.chunks_mut(MAX_TILE_ROWS * n).enumerate() {
        let row0 = t * MAX_TILE_ROWS;
        let rows = out_tile.len() / n;
        let residual = e.residual.map(|r| &r[row0 * n..(row0 + rows) * n]);
        let tile_e = PackedEpilogue { residual, ..*e };
        let a_tile = a.starting_at_row(row0);
        if use_avx512 {
            #[cfg(target_arch = "x86_64")]
            avx512::tile(a_tile, rows, b, out_tile, &tile_e);
        } else {
            portable_tile(a_tile, rows, b, out_tile, &tile_e);
        }
    }
}

/// The parallel tiles of `m` rows on `threads` threads, as `(first row, rows)`: whole
/// micro-tiles ([`MR`] rows; the last tile ends at `m`), at most `MAX_TILE_ROWS` rows where
/// `M` allows, and near-equal in size, their number a multiple of the thread count.
///
/// Every tile streams all of `b` once, so a small tile of leftover rows costs nearly as much
/// as a full one. A short `M` gets exactly one tile per thread: the batch-1 layer4 products
/// (49 rows) used to go as 24 + 24 + 1, and the 1-row tile, run after the others, streamed
/// its 4 MB of weights again from L3, so the product took as long on two threads as on one.
/// A long `M` gets at least two tiles per thread, so work stealing evens out uneven
/// progress, and up to 32 tiles, a multiple of the threads in number, so no thread is left
/// with one tile more than the other (3136 rows went as 16 tiles of 192 and one of 64).
fn row_tiles(m: usize, threads: usize) -> Vec<(usize, usize)> {
    /// Tiles of MAX_TILE_ROWS from which on they are all of that size.
    const MANY_TILES: usize = 32;
    let threads = threads.max(1);
    let micro_tiles = m.div_ceil(MR);
    let max_micro_tiles = MAX_TILE_ROWS / MR;
    let tiles = if micro_tiles <= threads * max_micro_tiles {
        threads.min(micro_tiles)
    } else if micro_tiles >= MANY_TILES * max_micro_tiles {
        // So many tiles that the last one's wait is noise: all of MAX_TILE_ROWS, which keeps
        // the implicit convolution's tiles on whole output rows of 8, 16, 32 or 64 pixels
        // (near-equal tiles cut CIFAR rows into extra short runs, ResNet-20 ~3% slower).
        return (0..m.div_ceil(MAX_TILE_ROWS))
            .map(|t| (t * MAX_TILE_ROWS, MAX_TILE_ROWS.min(m - t * MAX_TILE_ROWS)))
            .collect();
    } else {
        micro_tiles.div_ceil(max_micro_tiles).max(2 * threads).next_multiple_of(threads)
    };
    // Tile t holds micro-tiles [t·micro/tiles, (t+1)·micro/tiles): sizes differ by at most one.
    let row = |t: usize| (t * micro_tiles / tiles.max(1) * MR).min(m);
    (0..tiles).map(|t| (row(t), row(t + 1) - row(t))).filter(|&(_, rows)| rows > 0).collect()
}

/// Splits `out[M, N]` into the tiles of [`row_tiles`] and runs `f(first_row, rows,
/// out_tile, epilogue)` on each in parallel; the epilogue's residual is cut to the tile's rows.
pub(crate) fn for_each_row_tile<F>(m: usize, n: usize, out: &mut [f32], e: &PackedEpilogue<'_>, f: F)
where
    F: Fn(usize, usize, &mut [f32], &PackedEpilogue<'_>) + Sync,
{
    let mut rest = out;
    let mut tiles = Vec::new();
    for (row0, rows) in row_tiles(m, super::current_threads()) {
        let (tile, after) = std::mem::take(&mut rest).split_at_mut(rows * n);
        tiles.push((row0, rows, tile));
        rest = after;
    }
    tiles.into_par_iter().for_each(|(row0, rows, out_tile)| {
        let residual = e.residual.map(|r| &r[row0 * n..(row0 + rows) * n]);
        f(row0, rows, out_tile, &PackedEpilogue { residual, ..*e });
    });
}

/// The portable path for one tile of rows: the `gemm` crate per panel, then the epilogue.
pub(super) fn portable_tile(a: Lhs<'_>, rows: usize, b: &PackedMatrix, out: &mut [f32], e: &PackedEpilogue<'_>) {
    let n = b.n;
    for p in 0..n.div_ceil(NR) {
        let cols = NR.min(n - p * NR);
        let spec = MatMul {
            m: rows,
            n: cols,
            k: b.k,
            lhs: a.data,
            lhs_row_stride: a.row_stride,
            lhs_col_stride: a.col_stride,
            rhs: b.panel(p),
            rhs_row_stride: NR,
            rhs_col_stride: 1,
            accumulate: e.accumulate,
            threads: 1,
        };
        matmul(&spec, &mut out[p * NR..], n);
    }
    apply_epilogue_rows(out, n, e);
}

/// `out = relu?(out + bias + residual)` over dense `[rows, n]`.
fn apply_epilogue_rows(out: &mut [f32], n: usize, e: &PackedEpilogue<'_>) {
    for (r, row) in out.chunks_mut(n).enumerate() {
        if let Some(bias) = e.bias {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
        if let Some(res) = e.residual {
            row.iter_mut().zip(&res[r * n..(r + 1) * n]).for_each(|(v, s)| *v += s);
        }
        if e.relu {
            row.iter_mut().for_each(|v| *v = v.max(0.0));
        }
    }
}

/// `$kernel::<ROWS, REGS>($block)` for `ROWS = $rows` (1 to [`MR`]) and `REGS` 2 when
/// `$two_registers`, else 1: the const-generic micro-kernels (f32 and bf16) chosen at run time.
macro_rules! micro_kernel_for {
    ($kernel:ident, $rows:expr, $two_registers:expr, $block:expr) => {
        match ($rows, $two_registers) {
            (12, true) => $kernel::<12, 2>($block),
            (11, true) => $kernel::<11, 2>($block),
            (10, true) => $kernel::<10, 2>($block),
            (9, true) => $kernel::<9, 2>($block),
            (8, true) => $kernel::<8, 2>($block),
            (7, true) => $kernel::<7, 2>($block),
            (6, true) => $kernel::<6, 2>($block),
            (5, true) => $kernel::<5, 2>($block),
            (4, true) => $kernel::<4, 2>($block),
            (3, true) => $kernel::<3, 2>($block),
            (2, true) => $kernel::<2, 2>($block),
            (_, true) => $kernel::<1, 2>($block),
            (12, false) => $kernel::<12, 1>($block),
            (11, false) => $kernel::<11, 1>($block),
            (10, false) => $kernel::<10, 1>($block),
            (9, false) => $kernel::<9, 1>($block),
            (8, false) => $kernel::<8, 1>($block),
            (7, false) => $kernel::<7, 1>($block),
            (6, false) => $kernel::<6, 1>($block),
            (5, false) => $kernel::<5, 1>($block),
            (4, false) => $kernel::<4, 1>($block),
            (3, false) => $kernel::<3, 1>($block),
            (2, false) => $kernel::<2, 1>($block),
            (_, false) => $kernel::<1, 1>($block),
        }
    };
}
pub(crate) use micro_kernel_for;

/// Walks `$rows` rows of `$block` (one block of `K` of one panel) micro-tile by micro-tile:
/// checks each (`$block.check(mr)`), runs `$kernel::<MR, _>` on the full ones and
/// `$dispatch(mr, ..)` on a shorter last one, and moves `$block` down (`$block.advance(mr)`)
/// between them. The body of the f32 and bf16 tiles' `all_rows`; to be expanded inside an
/// `unsafe` block of a function whose CPU features the kernels need.
macro_rules! walk_micro_tiles {
    ($block:expr, $rows:expr, $kernel:ident, $dispatch:ident) => {{
        let two_registers = $block.dest.cols > 16;
        let mut r0 = 0;
        while r0 < $rows {
            let mr = MR.min($rows - r0);
            $block.check(mr);
            // (SAFETY) `check` proved every pointer the kernel forms lies inside its slice;
            // `REGS = 1` only when the panel has at most 16 columns, which is all that
            // kernel reads and writes.
            match (mr, two_registers) {
                (MR, true) => $kernel::<MR, 2>($block),
                (MR, false) => $kernel::<MR, 1>($block),
                _ => $dispatch(mr, $block),
            }
            r0 += mr;
            if r0 < $rows {
                $block.advance(mr);
            }
        }
    }};
}
pub(crate) use walk_micro_tiles;

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::lhs_block::{copy_block, worth_copying, CopiedBlock};
    use super::{k_block_len, Lhs, PackedEpilogue, PackedMatrix, MR, NR};

    /// One tile of rows on AVX-512: for each block of `K` and each panel, every `MR` rows
    /// run through the micro-kernel (a shorter kernel takes the last rows; a panel of at
    /// most 16 columns uses the one-register kernel, so no work is wasted on padding).
    ///
    /// Where [`worth_copying`] says so, each `K` block of the tile's rows is first copied
    /// into a per-thread buffer ([`copy_block`]), so that the kernel's rows do not share L1
    /// sets.
    pub(in super::super) fn tile(a: Lhs<'_>, rows: usize, b: &PackedMatrix, out: &mut [f32], e: &PackedEpilogue<'_>) {
        let (k, n) = (b.k, b.n);
        // Every row of the tile for one block of `K` and one panel; `a_rows` starts at the
        // tile's first row and the block's first column.
        let run = |a_rows: &[f32], row_stride, col_stride, k0, kc, p, in_place: bool, out: &mut [f32]| {
            let mut block = Block {
                a: a_rows,
                row_stride,
                col_stride,
                prefetch_rows: in_place && col_stride == 1 && p == 0,
                kc,
                panel: &b.panel(p)[k0 * NR..(k0 + kc) * NR],
                dest: Destination::new(out, n, 0, p, k0 == 0 && !e.accumulate, k0 + kc == k, e),
            };
            // SAFETY: `tile` is only called after `is_x86_feature_detected!("avx512f")`
            // (see `packed_matmul_on`).
            unsafe { all_rows(&mut block, rows) };
        };
        if !worth_copying(&a, n) {
            for_each_block_and_panel(k, k_block_len(k), n, |k0, kc, p| {
                run(&a.data[k0 * a.col_stride..], a.row_stride, a.col_stride, k0, kc, p, true, out);
            });
            return;
        }
        LHS_COPY.with_borrow_mut(|buf| {
            let mut copied: Option<(usize, CopiedBlock)> = None;
            for_each_block_and_panel(k, k_block_len(k), n, |k0, kc, p| {
                let block = match copied {
                    Some((copied_k0, block)) if copied_k0 == k0 => block,
                    _ => {
                        let block = copy_block(&a, rows, k0, kc, buf);
                        copied = Some((k0, block));
                        block
                    }
                };
                run(buf, block.stride, 1, k0, kc, p, false, out);
            });
        });
    }

    /// Runs `block` (one block of `K` of one panel, from a tile's first row) over `rows`
    /// rows, micro-tile after micro-tile, inside one function: set up per micro-tile
    /// (slicing its operands, choosing its kernel) cost 2-3% of a ResNet-50 training step
    /// when done for each in [`tile`]'s loop.
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn all_rows(block: &mut Block<'_>, rows: usize) {
        // SAFETY: AVX-512F by this function's contract.
        unsafe { walk_micro_tiles!(block, rows, kernel, dispatch) }
    }

    thread_local! {
        /// [`tile`]'s copy of one `K` block of its rows of `a`, kept between calls.
        static LHS_COPY: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Visits a tile's blocks of the `depth` (at most `block` deep, so that a block of a
    /// panel stays in L1) and, within each, its panels of `NR` columns: `f(first, len,
    /// panel)`; the rows are the innermost loop (`all_rows`). The f32 and bf16 tiles share it.
    pub(in super::super) fn for_each_block_and_panel(
        depth: usize,
        block: usize,
        n: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let mut k0 = 0;
        loop {
            let kc = block.min(depth - k0);
            for p in 0..n.div_ceil(NR) {
                f(k0, kc, p);
            }
            k0 += kc;
            if k0 >= depth {
                break;
            }
        }
    }

    /// What is applied to a micro-tile's sums as they are stored.
    pub(in super::super) struct Epilogue<'a> {
        bias: Option<&'a [f32]>,
        residual: Option<&'a [f32]>,
        relu: bool,
    }

    /// Where one micro-tile's sums go: the `mr × cols` block of `out` (row stride `ldc`).
    pub(in super::super) struct Destination<'a> {
        out: &'a mut [f32],
        ldc: usize,
        pub(in super::super) cols: usize,
        /// Start from zero instead of the partial sums already in `out`.
        first: bool,
        /// Present on the last `K` block: applied as the sums are stored.
        epilogue: Option<Epilogue<'a>>,
    }

    impl<'a> Destination<'a> {
        /// The micro-tile at row `r0` of panel `p` in a tile `out` of `n` columns.
        pub(in super::super) fn new(
            out: &'a mut [f32],
            n: usize,
            r0: usize,
            p: usize,
            first: bool,
            last: bool,
            e: &PackedEpilogue<'a>,
        ) -> Destination<'a> {
            let cols = NR.min(n - p * NR);
            Destination {
                out: &mut out[r0 * n + p * NR..],
                ldc: n,
                cols,
                first,
                epilogue: last.then_some(Epilogue {
                    bias: e.bias.map(|b| &b[p * NR..p * NR + cols]),
                    residual: e.residual.map(|r| &r[r0 * n + p * NR..]),
                    relu: e.relu,
                }),
            }
        }

        /// Moves down `rows` rows: to the next micro-tile of the same panel.
        pub(in super::super) fn advance(&mut self, rows: usize) {
            let out = std::mem::take(&mut self.out);
            self.out = &mut out[rows * self.ldc..];
            if let Some(e) = &mut self.epilogue {
                e.residual = e.residual.map(|r| &r[rows * self.ldc..]);
            }
        }

        /// Every index [`initial_sums`] and [`store_sums`] touch for `mr` rows is in
        /// bounds (panics otherwise).
        pub(in super::super) fn check(&self, mr: usize) {
            assert!((1..=MR).contains(&mr) && (1..=NR).contains(&self.cols));
            assert!(self.out.len() >= (mr - 1) * self.ldc + self.cols);
            if let Some(e) = &self.epilogue {
                assert!(e.bias.is_none_or(|b| b.len() >= self.cols));
                assert!(e.residual.is_none_or(|r| r.len() >= (mr - 1) * self.ldc + self.cols));
            }
        }
    }

    /// One micro-tile's operands: `mr` rows of `a` over `kc` values and a `kc × NR` block of
    /// a panel.
    struct Block<'a> {
        a: &'a [f32],
        row_stride: usize,
        col_stride: usize,
        /// `a` is row-major, read in place (not copied into cache by [`tile`]) and this is
        /// the first panel of its `K` block, the pass that reads it from memory: the kernel
        /// prefetches the next micro-tile's rows ([`prefetch_next_rows`]). The later panels
        /// find the block in L2; prefetching it into L1 for them too crowded the panel out
        /// and made the batch-1 forward 4% slower (36.3 -> 37.7 ms, 5 interleaved runs).
        prefetch_rows: bool,
        kc: usize,
        panel: &'a [f32],
        dest: Destination<'a>,
    }

    impl Block<'_> {
        /// Moves down `rows` rows of `a` and of the destination.
        fn advance(&mut self, rows: usize) {
            self.a = &self.a[rows * self.row_stride..];
            self.dest.advance(rows);
        }

        /// Every index the kernel touches for `mr` rows is in bounds (panics otherwise).
        fn check(&self, mr: usize) {
            self.dest.check(mr);
            if self.kc > 0 {
                assert!(self.a.len() > (mr - 1) * self.row_stride + (self.kc - 1) * self.col_stride);
            }
            assert!(self.panel.len() >= self.kc * NR);
        }
    }

    /// Runs the kernel specialised for `mr` rows and one or two registers of columns.
    ///
    /// # Safety
    /// The CPU supports AVX-512F and `block.check(mr)` passed.
    unsafe fn dispatch(mr: usize, block: &mut Block<'_>) {
        // SAFETY (each arm): forwarded from this function's contract; `REGS = 1` only when
        // the panel has at most 16 columns, which is all that kernel reads and writes.
        unsafe { micro_kernel_for!(kernel, mr, block.dest.cols > 16, block) }
    }

    /// Lane masks of the `cols` valid columns, per 16-column register.
    fn column_masks(cols: usize) -> [__mmask16; 2] {
        let mask = |valid: usize| -> __mmask16 {
            if valid >= 16 {
                0xFFFF
            } else {
                ((1u32 << valid) - 1) as u16
            }
        };
        [mask(cols), mask(cols.saturating_sub(16))]
    }

    /// The sums a micro-tile starts from: zero, or the partial sums already in `out`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, `d.check(ROWS)` passed, and `REGS` is 1 or 2 with
    /// `REGS = 1` only when `d.cols ≤ 16`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in super::super) unsafe fn initial_sums<const ROWS: usize, const REGS: usize>(
        d: &Destination<'_>,
    ) -> [[__m512; REGS]; ROWS] {
        let mut acc = [[_mm512_setzero_ps(); REGS]; ROWS];
        if !d.first {
            let masks = column_masks(d.cols);
            let out = d.out.as_ptr();
            for (r, acc_r) in acc.iter_mut().enumerate() {
                for (j, v) in acc_r.iter_mut().enumerate() {
                    // SAFETY: row r < ROWS of `out`, masked to the `cols` valid columns,
                    // which `check(ROWS)` bounds.
                    *v = unsafe { _mm512_maskz_loadu_ps(masks[j], out.add(r * d.ldc + 16 * j)) };
                }
            }
        }
        acc
    }

    /// Applies the epilogue (on the last `K` block) and stores the sums.
    ///
    /// # Safety
    /// As [`initial_sums`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(in super::super) unsafe fn store_sums<const ROWS: usize, const REGS: usize>(
        mut acc: [[__m512; REGS]; ROWS],
        d: &mut Destination<'_>,
    ) {
        let masks = column_masks(d.cols);
        let out = d.out.as_mut_ptr();
        // SAFETY: `check(ROWS)` bounds rows r < ROWS of `out`, the residual and the bias,
        // each accessed with masks to the `cols` valid columns (masked-off lanes are never
        // touched).
        unsafe {
            if let Some(e) = &d.epilogue {
                let mut bias = [_mm512_setzero_ps(); REGS];
                if let Some(values) = e.bias {
                    for (j, v) in bias.iter_mut().enumerate() {
                        *v = _mm512_maskz_loadu_ps(masks[j], values.as_ptr().add(16 * j));
                    }
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    for (j, v) in acc_r.iter_mut().enumerate() {
                        *v = _mm512_add_ps(*v, bias[j]);
                        if let Some(res) = e.residual {
                            let row = res.as_ptr().add(r * d.ldc + 16 * j);
                            *v = _mm512_add_ps(*v, _mm512_maskz_loadu_ps(masks[j], row));
                        }
                        if e.relu {
                            *v = _mm512_max_ps(*v, _mm512_setzero_ps());
                        }
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                for (j, v) in acc_r.iter().enumerate() {
                    _mm512_mask_storeu_ps(out.add(r * d.ldc + 16 * j), masks[j], *v);
                }
            }
        }
    }

    /// Asks for row `r` of the micro-tile's output (on the first `K` block, which writes it
    /// first, and on the last, which stores the result) and of its residual (on the last) to
    /// be brought into L1 while the `K` loop runs, one row per step of it. Otherwise the
    /// stores and the residual's loads at the loop's end wait for memory: with `K` = 64
    /// (ResNet-50's widening 1x1 convolutions), the f32 product ran 20% faster with it.
    ///
    /// # Safety
    /// As [`initial_sums`], with `r < ROWS`.
    #[inline(always)]
    pub(in super::super) unsafe fn prefetch_destination_row<const REGS: usize>(d: &Destination<'_>, r: usize) {
        let residual = d.epilogue.as_ref().and_then(|e| e.residual);
        if !d.first && d.epilogue.is_none() {
            return;
        }
        for j in 0..REGS {
            let offset = r * d.ldc + 16 * j;
            // SAFETY: a prefetch never faults, and the address is within the rows that
            // `check(ROWS)` bounds all the same.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(d.out.as_ptr().add(offset).cast());
                if let Some(res) = residual {
                    _mm_prefetch::<_MM_HINT_T0>(res.as_ptr().add(offset).cast());
                }
            }
        }
    }

    /// At step `kk` of a `kc`-deep block, asks for one cache line of the next micro-tile's
    /// rows of a row-major `a` (row `kk mod ROWS`, line `kk / ROWS`), so that all of its
    /// block's lines are on their way before it starts: 16 values a line, `ROWS` rows, so
    /// the lines run out after `16/ROWS` of the block. Read in place from memory (the 1x1
    /// convolutions' activations, too large for L3 from batch 16 on), the twelve rows are
    /// twelve streams that the hardware prefetchers did not keep up with: `gemm_timing`
    /// 50176 × 256 × 64 (layer1's 256 -> 64 at batch 16) went from 154 to 195 GFLOP/s,
    /// 12544 × 512 × 128 from 192 to 200. Only the first panel's pass does it, and not on a
    /// block copied by [`tile`]: those find it in L2 already (`Block::prefetch_rows`).
    /// Prefetching into L2 only (`_MM_HINT_T1`) was no better.
    ///
    /// # Safety
    /// The CPU supports SSE (every x86_64 does). The address may lie past `a`'s end (after
    /// the last micro-tile): it is formed with `wrapping_add` and only prefetched, which
    /// never faults.
    #[inline(always)]
    unsafe fn prefetch_next_rows<const ROWS: usize>(a: *const f32, row_stride: usize, kk: usize, kc: usize) {
        let (row, line) = (kk % ROWS, kk / ROWS);
        if line * 16 < kc {
            let address = a.wrapping_add((ROWS + row) * row_stride + line * 16);
            // SAFETY: a prefetch reads nothing architecturally and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
        }
    }

    /// The micro-kernel: `ROWS × 16·REGS` sums in `ROWS·REGS` registers across the `K` block.
    ///
    /// # Safety
    /// The CPU supports AVX-512F, `block.check(ROWS)` passed, and `REGS` is 1 or 2 with
    /// `REGS = 1` only when `block.dest.cols ≤ 16`.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const ROWS: usize, const REGS: usize>(block: &mut Block<'_>) {
        let a = block.a.as_ptr();
        let b = block.panel.as_ptr();
        let (rs, cs) = (block.row_stride, block.col_stride);
        // SAFETY: `check(ROWS)` bounds every offset below: element (r, kk) of `a` at
        // r·rs + kk·cs for r < ROWS, kk < kc; panel rows kk < kc of NR values (REGS·16 ≤ NR);
        // the destination as `initial_sums` and `store_sums` require.
        unsafe {
            let mut acc = initial_sums::<ROWS, REGS>(&block.dest);
            for kk in 0..block.kc {
                if kk < ROWS {
                    prefetch_destination_row::<REGS>(&block.dest, kk);
                }
                if block.prefetch_rows {
                    prefetch_next_rows::<ROWS>(a, rs, kk, block.kc);
                }
                let mut bv = [_mm512_setzero_ps(); REGS];
                for (j, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(b.add(kk * NR + 16 * j));
                }
                let a_k = a.add(kk * cs);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a_k.add(r * rs));
                    for (v, bj) in acc_r.iter_mut().zip(&bv) {
                        *v = _mm512_fmadd_ps(av, *bj, *v);
                    }
                }
            }
            store_sums::<ROWS, REGS>(acc, &mut block.dest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::SplitMix64;

    fn random(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform_f32(-1.0, 1.0)).collect()
    }

    /// `a` as `[m, lda]`, and `B` as OHWI-style `rows` `[n, k]` with one `scale` per row.
    struct Problem<'a> {
        a: &'a [f32],
        m: usize,
        lda: usize,
        rows: &'a [f32],
        n: usize,
        k: usize,
        scale: &'a [f32],
    }

    /// The plain definition, in f64.
    fn reference(p: &Problem<'_>, e: &PackedEpilogue<'_>) -> Vec<f32> {
        let Problem { a, m, lda, rows, n, k, scale } = *p;
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for kk in 0..k {
                    s += a[i * lda + kk] as f64 * (rows[j * k + kk] * scale[j]) as f64;
                }
                s += e.bias.map_or(0.0, |b| b[j] as f64);
                s += e.residual.map_or(0.0, |r| r[i * n + j] as f64);
                out[i * n + j] = if e.relu { s.max(0.0) as f32 } else { s as f32 };
            }
        }
        out
    }

    /// Shapes with every remainder: rows not a multiple of MR, columns not a multiple of NR
    /// (a last panel of 1, 8, 16 or 17 columns: the one- and two-register kernels), K below,
    /// at and above one block, and a row stride above K. Sums of up to 600 products of
    /// values in [-1, 1] in f32 against f64: tolerance 1e-4 absolute plus 1e-5 relative.
    #[test]
    fn both_paths_equal_the_plain_definition() {
        let mut rng = SplitMix64::new(5);
        for &(m, n, k, extra_lda) in &[
            (1, 1, 1, 0),
            (13, 17, 5, 3),
            (25, 32, 256, 0),
            (30, 40, 257, 1),
            (7, 1000, 64, 0),
            (200, 64, 600, 0),
            (29, 16, 20, 0),
            (14, 48, 9, 2),
            // Rows 4 KiB apart over two K blocks: the tile copies each block first.
            (41, 70, 300, 724),
        ] {
            let lda = k + extra_lda;
            let a = random(&mut rng, m * lda);
            let rows = random(&mut rng, n * k);
            let scale = random(&mut rng, n);
            let bias = random(&mut rng, n);
            let residual = random(&mut rng, m * n);
            let start = random(&mut rng, m * n);
            let packed = PackedMatrix::from_rows(&rows, n, k, Some(&scale));
            let combos = [(false, false, false, false), (true, true, true, false), (true, false, true, true)];
            for (with_bias, with_residual, relu, accumulate) in combos {
                let e = PackedEpilogue {
                    bias: with_bias.then_some(bias.as_slice()),
                    residual: with_residual.then_some(residual.as_slice()),
                    relu,
                    accumulate,
                };
                let problem = Problem { a: &a, m, lda, rows: &rows, n, k, scale: &scale };
                let mut expected = reference(&problem, &PackedEpilogue { relu: false, ..e });
                if accumulate {
                    expected.iter_mut().zip(&start).for_each(|(v, s)| *v += s);
                }
                if relu {
                    expected.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                for path in [GemmPath::Avx512, GemmPath::Portable] {
                    let mut out = if accumulate { start.clone() } else { vec![f32::NAN; m * n] };
                    packed_matmul_on(path, Lhs::rows(&a, lda), m, &packed, &mut out, &e);
                    for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                        assert!(
                            (got - want).abs() <= 1e-4 + 1e-5 * want.abs(),
                            "{path:?} m{m} n{n} k{k} {e:?}: out[{i}] = {got}, expected {want}"
                        );
                    }
                }
            }
        }
    }

    /// A transposed left operand (column stride > 1) and `B` packed from `[K, N]` give the
    /// same product as the row-major operand and `B` packed from its rows.
    #[test]
    fn transposed_lhs_and_kn_packing_agree() {
        let mut rng = SplitMix64::new(6);
        let (m, n, k) = (37, 21, 300);
        let a = random(&mut rng, m * k);
        let mut a_t = vec![0.0; k * m];
        for i in 0..m {
            for kk in 0..k {
                a_t[kk * m + i] = a[i * k + kk];
            }
        }
        let rows = random(&mut rng, n * k);
        let mut b_kn = vec![0.0; k * n];
        for j in 0..n {
            for kk in 0..k {
                b_kn[kk * n + j] = rows[j * k + kk];
            }
        }
        let by_rows = PackedMatrix::from_rows(&rows, n, k, None);
        let by_kn = PackedMatrix::from_kn(&b_kn, k, n);
        let e = PackedEpilogue::default();
        let mut expected = vec![0.0; m * n];
        packed_matmul_on(GemmPath::Portable, Lhs::rows(&a, k), m, &by_rows, &mut expected, &e);
        for path in [GemmPath::Avx512, GemmPath::Portable] {
            let mut out = vec![0.0; m * n];
            let transposed = Lhs { data: &a_t, row_stride: 1, col_stride: m };
            packed_matmul_on(path, transposed, m, &by_kn, &mut out, &e);
            for (got, want) in out.iter().zip(&expected) {
                assert!((got - want).abs() <= 1e-4 + 1e-5 * want.abs(), "{path:?}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn row_tiles_split_evenly_across_threads() {
        let sizes = |m: usize| row_tiles(m, 2).iter().map(|t| t.1).collect::<Vec<_>>();
        assert_eq!(sizes(196), [96, 100], "one tile per thread, no leftover tile");
        assert_eq!(sizes(49), [24, 25]);
        assert_eq!(sizes(5), [5], "a single micro-tile is one tile");
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(784), [132, 132, 132, 132, 132, 124]);
        assert!(row_tiles(50176, 2).iter().all(|t| t.1 == MAX_TILE_ROWS || t.0 + t.1 == 50176));
        // Mid-length products: an even number of tiles, none over MAX_TILE_ROWS, sizes within MR.
        for m in [385, 3136, 5000] {
            let tiles = row_tiles(m, 2);
            assert!(tiles.len() >= 4 && tiles.len().is_multiple_of(2), "{m}: {} tiles", tiles.len());
            let (small, large) = (tiles.iter().map(|t| t.1).min(), tiles.iter().map(|t| t.1).max());
            assert!(large <= Some(MAX_TILE_ROWS) && large.zip(small).is_some_and(|(l, s)| l - s <= MR), "{m}");
        }
        // The tiles cover 0..m in order, each starting on a micro-tile.
        for (m, threads) in [(1, 2), (13, 2), (196, 3), (3136, 2), (1000, 1), (50176, 4)] {
            let mut next = 0;
            for (row0, rows) in row_tiles(m, threads) {
                assert_eq!(row0, next);
                assert!(row0.is_multiple_of(MR) && rows > 0);
                next += rows;
            }
            assert_eq!(next, m);
        }
    }

    #[test]
    fn empty_shapes_do_nothing() {
        let packed = PackedMatrix::from_rows(&[], 0, 4, None);
        packed_matmul(&[0.0; 8], 2, 4, &packed, &mut [], &PackedEpilogue::default());
        let packed = PackedMatrix::from_rows(&[1.0; 8], 2, 4, None);
        packed_matmul(&[], 0, 4, &packed, &mut [], &PackedEpilogue::default());
    }
}
