//! Winograd F(4x4, 3x3) for inference convolutions with 3x3 filters, stride 1, padding 1.
//!
//! Each 4x4 block ("tile") of outputs comes from a 6x6 block of input `d` as
//! `Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A` (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016), with the interpolation points 0, ±1, ±2 and ∞. The
//! middle is 36 products per (tile, input channel, output channel) where direct convolution
//! needs 16 · 9 = 144: four times fewer multiplies. Summed over input channels it is 36
//! independent matrix products `V_ξ[tiles, C_in] · U_ξ[C_in, C_out]`, which run on the
//! packed micro-kernel ([`super::packed_gemm`]), 36 at a time across threads.
//!
//! The three steps, each parallel over independent pieces (or, for layers of up to 256 x 256
//! channels with enough tiles, all three per block of about 48 tiles on one thread, so that
//! `V` and `M`, 2.25x the input and the output, stay in cache: [`WinogradConv::forward`]):
//! 1. input transform `V = Bᵀ d B` per tile, 16 channels at a time, into `V[tile][ξ][C_in]`;
//! 2. the 36 products into `M[ξ][tile][C_out]`;
//! 3. output transform `Y = Aᵀ M A` per tile, plus bias (BatchNorm's shift), residual and
//!    ReLU, written once into the NHWC output; tiles past the edge are cut off.
//!
//! Cost: `U` holds 36 / 9 = 4x the weights (2.4 MB for 128 → 128 channels), so the compiled
//! plan uses it only where that stays small. Accuracy: the transforms scale values by up to
//! 5 (input) and 8 (output) before they cancel, so rounding errors are larger than direct
//! convolution's; measured in the tests below against the direct convolution.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::buffers::{recycle, take_buffer};
#[cfg(doc)]
use super::conv_packed::WINOGRAD_MIN_CHANNELS;
use super::packed_gemm::{packed_matmul_serial, Lhs, PackedEpilogue, PackedMatrix, NR};
use super::vectorised_fn;
use crate::tensor::Tensor;

mod weight_gradient;
pub use weight_gradient::weight_gradient;

/// Outputs per tile side.
const TILE: usize = 4;
/// Transform points per tile: 6 x 6.
const POINTS: usize = 36;
/// Channels transformed together (one AVX-512 register of f32).
pub(super) const LANES: usize = 16;

/// Filter transform `G` (6 x 3).
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Whether `g` is a convolution this module computes: 3x3, stride 1, padding 1, one group.
pub fn fits(g: &super::conv::Conv2dGeometry) -> bool {
    (g.kernel_h, g.kernel_w, g.stride, g.padding, g.groups) == (3, 3, 1, 1, 1)
}

/// Fewest 4x4 output tiles in one call for which the training convolutions use Winograd.
/// Measured (`resnet bench --layers`, 2 threads, ResNet-50's 512-channel layer4 at 7x7): 4
/// tiles (batch 1) ran as fast as direct convolution, 64 (batch 16) 2.2x faster; 14x14
/// layers (16 tiles per image) win from batch 1. Below this the filter transform, done on
/// every call in training, is not worth it.
pub const MIN_TILES: usize = 16;

/// Fewest tiles for the Winograd weight gradient ([`weight_gradient`]), whose 36 products
/// are `[C_in, tiles] · [tiles, C_out]`: with few tiles they are short, and writing and
/// transforming their 36 `C_in × C_out` results costs more than im2col's product. Measured
/// (`examples/conv_layer_timing`, batch 16, 2 threads; im2col -> Winograd): 128 channels at
/// 28x28 (784 tiles) 19.1 -> 10.9 ms, 256 at 14x14 (256 tiles) 25.1 -> 18.2 ms, 512 at
/// 7x7 (64 tiles) 22.1 -> 28.2 ms.
pub const WEIGHT_GRADIENT_MIN_TILES: usize = 128;

/// Fewest channels on each side for the Winograd weight gradient. Its transforms go through
/// memory in full (it is not computed in blocks as the forward is); measured against the
/// implicit kernel at 64 channels and fewer it was no faster.
pub const WEIGHT_GRADIENT_MIN_CHANNELS: usize = 128;

/// Whether [`pays_off`] may choose Winograd; see [`set_enabled_for_training`].
static ENABLED_FOR_TRAINING: AtomicBool = AtomicBool::new(true);

/// Lets (`true`, the default) or stops the uncompiled convolutions (training's forward and
/// its 3x3 input gradients, `conv2d_nhwc`) using Winograd where it pays off. Off, every
/// convolution is direct: rounding errors ~1e-7 of a layer's largest output instead of
/// ~3e-6. The compiled inference plan has its own switch ([`super::conv_packed::CompileOptions`]).
pub fn set_enabled_for_training(enabled: bool) {
    ENABLED_FOR_TRAINING.store(enabled, Ordering::Relaxed);
}

/// Fewest channels on each side for Winograd in training's forward and input gradient.
/// Measured (`examples/conv_layer_timing`, 2 threads, filter transform included, against
/// direct convolution), since the forward runs in blocks that stay in cache
/// ([`WinogradConv::forward`]): 64 channels at 56x56 batch 16 18.1 -> 9.9 ms; the CIFAR
/// nets' layers at batch 128: 64 channels at 8x8 2.90 -> 1.32 ms, 32 at 16x16 3.00 -> 1.77,
/// 16 at 32x32 3.58-4.01 -> 2.83-3.32 (input gradient 3.53-3.58 -> 3.01-3.35, weight
/// gradient 3.53-3.64 -> 3.22-3.56), once the transforms read in place; before that, 16
/// channels were a tie and stayed direct. CIFAR ResNet-20's step: 170.6 -> 163.2 ms.
/// (Inference, whose filters are transformed once, uses [`WINOGRAD_MIN_CHANNELS`].)
pub const TRAINING_MIN_CHANNELS: usize = 16;

/// Whether an uncompiled f32 convolution `g` over `n` images of `h × w` runs faster by
/// Winograd, filter transform included: it fits, has at least [`TRAINING_MIN_CHANNELS`]
/// channels on each side and [`MIN_TILES`] output tiles, and Winograd is enabled
/// ([`set_enabled_for_training`]).
pub fn pays_off(g: &super::conv::Conv2dGeometry, n: usize, h: usize, w: usize) -> bool {
    ENABLED_FOR_TRAINING.load(Ordering::Relaxed)
        && fits(g)
        && g.in_channels.min(g.out_channels) >= TRAINING_MIN_CHANNELS
        && tiles(n, h, w) >= MIN_TILES
}

/// Whether the weight gradient of `g` over `n` images of `h × w` (input and output the same
/// size) runs faster by [`weight_gradient`]: [`pays_off`], at least
/// [`WEIGHT_GRADIENT_MIN_CHANNELS`] channels on each side and [`WEIGHT_GRADIENT_MIN_TILES`]
/// tiles.
pub fn weight_gradient_pays_off(g: &super::conv::Conv2dGeometry, n: usize, h: usize, w: usize) -> bool {
    let tiles = tiles(n, h, w);
    pays_off(g, n, h, w)
        && ((g.in_channels.min(g.out_channels) >= WEIGHT_GRADIENT_MIN_CHANNELS && tiles >= WEIGHT_GRADIENT_MIN_TILES)
            || in_blocks(g.in_channels, g.out_channels, tiles))
}

/// 4x4 output tiles of `n` images of `h × w`.
pub fn tiles(n: usize, h: usize, w: usize) -> usize {
    n * h.div_ceil(TILE) * w.div_ceil(TILE)
}

/// A 3x3, stride-1, padding-1 convolution with BatchNorm folded in, its filters transformed
/// for F(4x4, 3x3).
#[derive(Clone, Debug)]
pub struct WinogradConv {
    in_channels: usize,
    out_channels: usize,
    /// `U_ξ = (G g Gᵀ)_ξ` as `[C_in, C_out]`, one packed matrix per transform point ξ.
    transformed: Vec<PackedMatrix>,
    /// BatchNorm's shift, one per output channel.
    bias: Vec<f32>,
}

impl WinogradConv {
    /// From OHWI 3x3 `weight`, BatchNorm's eval `scale` (folded into the filters) and
    /// `shift` (the bias), one per output channel. The transform runs in f64.
    pub fn new(weight: &[f32], in_channels: usize, out_channels: usize, scale: &[f32], shift: Vec<f32>) -> Self {
        let (cin, cout) = (in_channels, out_channels);
        assert_eq!(weight.len(), cout * 9 * cin, "weights must be OHWI 3x3");
        assert_eq!(scale.len(), cout);
        assert_eq!(shift.len(), cout);
        let transformed = transform_filters(FilterSource::Ohwi(weight), cin, cout, Some(scale));
        WinogradConv { in_channels, out_channels, transformed, bias: shift }
    }

    /// As [`Self::new`] with an optional scale, for training's convolutions (no BatchNorm
    /// folded in), whose filters change every step and are transformed on every call.
    pub fn from_filters(
        weight: &[f32],
        in_channels: usize,
        out_channels: usize,
        scale: Option<&[f32]>,
        bias: Vec<f32>,
    ) -> Self {
        assert_eq!(weight.len(), out_channels * 9 * in_channels, "weights must be OHWI 3x3");
        assert!(scale.is_none_or(|s| s.len() == out_channels));
        assert_eq!(bias.len(), out_channels);
        let transformed = transform_filters(FilterSource::Ohwi(weight), in_channels, out_channels, scale);
        WinogradConv { in_channels, out_channels, transformed, bias }
    }

    /// The convolution whose output is the input gradient of the 3x3 stride-1 convolution
    /// with OHWI `weight` (`out_channels × 3 × 3 × in_channels`): its filters rotated by 180°
    /// with input and output channels swapped, read that way from `weight` as they are
    /// transformed. It maps `[N, H, W, out_channels]` gradients to `[N, H, W, in_channels]`.
    pub fn input_gradient_of(weight: &[f32], in_channels: usize, out_channels: usize) -> Self {
        assert_eq!(weight.len(), out_channels * 9 * in_channels, "weights must be OHWI 3x3");
        let source = FilterSource::RotatedTransposed(weight, in_channels);
        let transformed = transform_filters(source, out_channels, in_channels, None);
        WinogradConv { in_channels: out_channels, out_channels: in_channels, transformed, bias: vec![0.0; in_channels] }
    }

    /// From weights packed for direct convolution (BatchNorm's scale already folded in) and
    /// BatchNorm's shift: for the compiled plan, which keeps large layers direct for one
    /// image and transforms them once it sees batches ([`PackedConv`](super::conv_packed::PackedConv)).
    pub fn from_packed(packed: &PackedMatrix, in_channels: usize, out_channels: usize, bias: Vec<f32>) -> Self {
        assert_eq!((packed.k(), packed.n()), (9 * in_channels, out_channels), "packed weights must be 3x3");
        assert_eq!(bias.len(), out_channels);
        let transformed = transform_filters(FilterSource::Packed(packed), in_channels, out_channels, None);
        WinogradConv { in_channels, out_channels, transformed, bias }
    }

    /// Bytes held by the transformed filters.
    pub fn bytes(&self) -> usize {
        4 * POINTS * self.in_channels * self.out_channels
    }

    /// `relu?(conv(x) + bias + residual?)` on NHWC `x`; the output has `x`'s height and
    /// width. Layers of at most 256 x 256 channels with at least 384 tiles go a block of
    /// tiles at a time (`forward_in_blocks`), the others in three whole passes. Panics on
    /// shapes that disagree (a caller bug).
    pub fn forward(&self, x: &Tensor, residual: Option<&[f32]>, relu: bool) -> Tensor {
        assert_eq!(x.shape.len(), 4, "conv expects an NHWC tensor");
        let (n, h, w, cin) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        assert_eq!(cin, self.in_channels, "input channels differ from the convolution's");
        let cout = self.out_channels;
        if let Some(r) = residual {
            assert_eq!(r.len(), n * h * w * cout, "residual must have the output's shape");
        }
        let shape = [n, h, w, cout];
        if n * h * w == 0 || cout == 0 {
            return Tensor::zeros(&shape);
        }
        let grid = TileGrid::new(h, w);
        let tiles = n * grid.rows * grid.cols;
        if in_blocks(cin, cout, tiles) {
            return self.forward_in_blocks(x, residual, relu, &grid);
        }

        // 1. V[tile][ξ][C_in], one task per row of tiles.
        let v = transform_tiles(x, &grid, input_transform_row);

        // 2. M_ξ = V_ξ · U_ξ, one task per point.
        let mut m = take_buffer(POINTS * tiles * cout);
        m.par_chunks_mut(tiles * cout).enumerate().for_each(|(xi, m_xi)| {
            let a = Lhs { data: &v[xi * cin..], row_stride: tile_stride(cin), col_stride: 1 };
            packed_matmul_serial(a, tiles, &self.transformed[xi], m_xi, &PackedEpilogue::default());
        });
        recycle(Tensor { shape: vec![v.len()], data: v });

        // 3. Y = Aᵀ M A + bias (+ residual), one task per row of tiles.
        let mut out = take_buffer(n * h * w * cout);
        rows_of_tiles(&mut out, (h, w, cout)).into_par_iter().for_each(|(image, ty, out_rows)| {
            let first_tile = (image * grid.rows + ty) * grid.cols;
            let first_pixel = (image * h + ty * TILE) * w;
            let residual_rows = residual.map(|r| &r[first_pixel * cout..first_pixel * cout + out_rows.len()]);
            let target = OutputRows { out: out_rows, residual: residual_rows, bias: &self.bias, relu };
            output_transform_row(&m, tiles, first_tile, cout, &grid, ty, target);
        });
        recycle(Tensor { shape: vec![m.len()], data: m });
        Tensor::from_vec(&shape, out).unwrap_or_else(|| Tensor::zeros(&shape))
    }
}

impl WinogradConv {
    /// [`Self::forward`] a block of rows of tiles at a time, all three steps per block on
    /// one thread: the block's `V` and `M` stay in that thread's cache instead of going
    /// through memory (`V` and `M` are 2.25x the input and the output).
    fn forward_in_blocks(&self, x: &Tensor, residual: Option<&[f32]>, relu: bool, grid: &TileGrid) -> Tensor {
        let (n, h, w, cin) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let cout = self.out_channels;
        let mut out = take_buffer(n * h * w * cout);
        let mut rows = rows_of_tiles(&mut out, (h, w, cout));
        let rows_per_block = rows_per_block(BLOCK_TILES, rows.len(), grid.cols, super::current_threads());
        rows.par_chunks_mut(rows_per_block).for_each(|block| {
            let block_tiles = block.len() * grid.cols;
            BLOCK_SCRATCH.with_borrow_mut(|(v, m)| {
                // Every value read below is written first (V's 16 values of padding per tile
                // are never read), so reused scratch needs no clearing.
                let row_len = grid.cols * tile_stride(cin);
                if v.len() < block.len() * row_len {
                    v.resize(block.len() * row_len, 0.0);
                }
                if m.len() < POINTS * block_tiles * cout {
                    m.resize(POINTS * block_tiles * cout, 0.0);
                }
                for ((image, ty, _), v_row) in block.iter().zip(v.chunks_mut(row_len)) {
                    input_transform_row(&x.data[image * h * w * cin..(image + 1) * h * w * cin], cin, grid, *ty, v_row);
                }
                let m = &mut m[..POINTS * block_tiles * cout];
                for (xi, m_xi) in m.chunks_mut(block_tiles * cout).enumerate() {
                    let a = Lhs { data: &v[xi * cin..], row_stride: tile_stride(cin), col_stride: 1 };
                    packed_matmul_serial(a, block_tiles, &self.transformed[xi], m_xi, &PackedEpilogue::default());
                }
                for (k, (image, ty, out_rows)) in block.iter_mut().enumerate() {
                    let first_pixel = (*image * h + *ty * TILE) * w;
                    let residual_rows = residual.map(|r| &r[first_pixel * cout..first_pixel * cout + out_rows.len()]);
                    let target = OutputRows { out: out_rows, residual: residual_rows, bias: &self.bias, relu };
                    output_transform_row(m, block_tiles, k * grid.cols, cout, grid, *ty, target);
                }
            });
        });
        let shape = [n, h, w, cout];
        Tensor::from_vec(&shape, out).unwrap_or_else(|| Tensor::zeros(&shape))
    }
}

/// Each row of tiles' part of NHWC `out` (images of `h × w × cout`): `(image, row of
/// tiles, its up to 4 image rows)`, for tasks that each write their own.
fn rows_of_tiles(out: &mut [f32], (h, w, cout): (usize, usize, usize)) -> Vec<(usize, usize, &mut [f32])> {
    let mut rows = Vec::new();
    for (image, out_image) in out.chunks_mut((h * w * cout).max(1)).enumerate() {
        for (ty, out_rows) in out_image.chunks_mut((TILE * w * cout).max(1)).enumerate() {
            rows.push((image, ty, out_rows));
        }
    }
    rows
}

thread_local! {
    /// One block's `V` and `M` for [`WinogradConv::forward_in_blocks`] (`V` and `T` for the
    /// weight gradient's blocks), reused.
    pub(super) static BLOCK_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Largest `C_in · C_out` computed in blocks ([`in_blocks`]): each block streams all 36
/// transformed filters (`36 · C_in · C_out · 4` bytes, 9.4 MB at 256 x 256), so wider
/// layers, few tiles per filter read, go faster in three whole passes (512 x 512 at 7x7,
/// batch 16: 15.8 ms that way, 17.1 ms in blocks).
const MAX_CHANNELS_PRODUCT_IN_BLOCKS: usize = 256 * 256;

/// Tiles per block of [`WinogradConv::forward_in_blocks`], about: four micro-tiles of rows
/// for each of the block's 36 products.
const BLOCK_TILES: usize = 48;

/// Fewest tiles computed in blocks ([`in_blocks`]): eight forward blocks, so that both
/// threads stay busy. With fewer (a batch-1 forward: 196 tiles at 56x56, 49 at 28x28) the
/// 36 whole products, split across threads, are faster (ResNet-50 batch 1: 37.8-41.0 ms
/// against 41.5-44.5 in blocks).
const MIN_TILES_IN_BLOCKS: usize = 8 * BLOCK_TILES;

/// Whether a layer of `cin × cout` channels over `tiles` tiles goes a block of tiles at a
/// time, in the forward (`WinogradConv::forward_in_blocks`) and the weight gradient alike.
pub(super) fn in_blocks(cin: usize, cout: usize, tiles: usize) -> bool {
    cin * cout <= MAX_CHANNELS_PRODUCT_IN_BLOCKS && tiles >= MIN_TILES_IN_BLOCKS
}

/// Rows of tiles per block, for `rows` rows of `cols` tiles on `threads` threads: about
/// `block_tiles` tiles, in a number of blocks that is a multiple of the threads.
pub(super) fn rows_per_block(block_tiles: usize, rows: usize, cols: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let blocks = (rows * cols).div_ceil(block_tiles.max(1)).max(1);
    let blocks = if blocks > 1 { blocks.next_multiple_of(threads) } else { blocks };
    rows.div_ceil(blocks).max(1)
}

/// The 9 taps (`ky·3 + kx`) of one input channel's 3x3 filters for a panel's [`NR`]
/// output channels (the columns past the last output channel zero).
type Taps = [[f32; NR]; 9];

/// Where [`transform_filters`] reads filters from: OHWI weights as they are, or read as the
/// filters of the input gradient's convolution (rotated 180°, input and output channels
/// swapped), without building that copy.
#[derive(Clone, Copy)]
enum FilterSource<'a> {
    Ohwi(&'a [f32]),
    /// `W'[c][ky][kx][o] = W[o][2−ky][2−kx][c]` for OHWI `W` with `C_in` = this many.
    RotatedTransposed(&'a [f32], usize),
    /// Weights already packed for direct convolution, `[K = 9·C_in, C_out]`.
    Packed(&'a PackedMatrix),
}

impl FilterSource<'_> {
    /// The taps of input channel `c` for output channels `co0..co0 + cols`; `cin` is the
    /// input channel count of the convolution being transformed.
    #[inline(always)]
    fn taps(self, co0: usize, cols: usize, c: usize, cin: usize) -> Taps {
        let mut t = [[0.0f32; NR]; 9];
        match self {
            FilterSource::Ohwi(w) => {
                // A gather across output channels (9·C_in apart); consecutive `c` reuse the
                // same cache lines, so a panel's 9 · 32 lines stay in L1.
                for (tap, t) in t.iter_mut().enumerate() {
                    for (l, v) in t.iter_mut().enumerate().take(cols) {
                        *v = w[((co0 + l) * 9 + tap) * cin + c];
                    }
                }
            }
            FilterSource::Packed(packed) => {
                // Row `tap·C_in + c` of panel `co0 / NR`: already the NR columns in a row.
                let panel = packed.panel(co0 / NR);
                for (tap, t) in t.iter_mut().enumerate() {
                    let at = (tap * cin + c) * NR;
                    t.copy_from_slice(&panel[at..at + NR]);
                }
            }
            FilterSource::RotatedTransposed(w, original_cin) => {
                // Here the output channels are the original input channels: contiguous.
                for (tap, t) in t.iter_mut().enumerate() {
                    let at = (c * 9 + (8 - tap)) * original_cin + co0;
                    super::copy_lanes::<f32, NR>(t, &w[at..], cols);
                }
            }
        }
        t
    }
}

/// `U_ξ = (G g Gᵀ)_ξ · scale[c_out]` for every point ξ, as 36 packed `[C_in, C_out]`
/// matrices, computed in f64. Training transforms every 3x3 layer's filters on every step
/// (512 x 512 channels: 37 MB out), so this has to be cheap next to the products: tasks in
/// parallel over panels of [`NR`] output channels, vectorised across the panel's columns,
/// so that each input channel's 36 results are 36 whole panel rows, stored as they are
/// computed. (Vectorised across input channels instead, every value went to its own cache
/// line, and the transform of a 512-channel layer cost half as much as its convolution.)
fn transform_filters(source: FilterSource<'_>, cin: usize, cout: usize, scale: Option<&[f32]>) -> Vec<PackedMatrix> {
    let mut matrices: Vec<PackedMatrix> = (0..POINTS).map(|_| PackedMatrix::zeros(cin, cout)).collect();
    let mut by_panel: Vec<Vec<&mut [f32]>> = (0..cout.div_ceil(NR)).map(|_| Vec::with_capacity(POINTS)).collect();
    for matrix in &mut matrices {
        for (p, panel) in matrix.panels_mut().enumerate() {
            by_panel[p].push(panel);
        }
    }
    by_panel.into_par_iter().enumerate().for_each(|(p, mut panels)| {
        let panel = FilterPanel { source, cin, cout, scale, p };
        transform_panel(&panel, &mut panels);
    });
    matrices
}

/// One panel's worth of [`transform_filters`]: output channels `p·NR..` of `cout`.
struct FilterPanel<'a> {
    source: FilterSource<'a>,
    cin: usize,
    cout: usize,
    scale: Option<&'a [f32]>,
    p: usize,
}

vectorised_fn! {
    /// One panel's filters transformed (see [`transform_filters`]).
    fn transform_panel(f: &FilterPanel<'_>, panels: &mut [&mut [f32]]) {
        let co0 = f.p * NR;
        let cols = NR.min(f.cout - co0);
        let mut scale = [0.0f64; NR];
        for (l, s) in scale.iter_mut().enumerate().take(cols) {
            *s = f.scale.map_or(1.0, |s| s[co0 + l] as f64);
        }
        for c in 0..f.cin {
            let taps = f.source.taps(co0, cols, c, f.cin);
            // (G g)[i][kx] across the panel's columns.
            let mut gg = [[[0.0f64; NR]; 3]; 6];
            for (i, gi) in gg.iter_mut().enumerate() {
                for (kx, v) in gi.iter_mut().enumerate() {
                    for (l, v) in v.iter_mut().enumerate() {
                        *v = G[i][0] * taps[kx][l] as f64
                            + G[i][1] * taps[3 + kx][l] as f64
                            + G[i][2] * taps[6 + kx][l] as f64;
                    }
                }
            }
            for (i, gi) in gg.iter().enumerate() {
                for (j, gj) in G.iter().enumerate() {
                    // Row c of point (i, j)'s panel: NR values, as a fixed-size array.
                    let row = &mut panels[i * 6 + j].as_chunks_mut::<NR>().0[c];
                    for (l, v) in row.iter_mut().enumerate() {
                        *v = ((gi[0][l] * gj[0] + gi[1][l] * gj[1] + gi[2][l] * gj[2]) * scale[l]) as f32;
                    }
                }
            }
        }
    }
}

/// The tiling of one image: `rows x cols` tiles (4x4 here, 2x2 in bf16) over `h x w` outputs.
pub(super) struct TileGrid {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

impl TileGrid {
    fn new(h: usize, w: usize) -> TileGrid {
        TileGrid { h, w, rows: h.div_ceil(TILE), cols: w.div_ceil(TILE) }
    }
}

/// Values from one tile's transformed values to the next in `[tile][ξ][C]`: one cache line
/// more than its `36·C`, so that the rows a micro-kernel reads (one tile each) do not all
/// fall in the same L1 set where `36·C·4` bytes are a multiple of 4 KiB (256 and 512
/// channels), which made the products thrash L1.
fn tile_stride(c: usize) -> usize {
    POINTS * c + 16
}

/// A transform of one row of tiles of one image (`[h, w, C]`) into `[cols][ξ][C]`, tiles
/// [`tile_stride`] apart.
type RowTransform = fn(&[f32], usize, &TileGrid, usize, &mut [f32]);

/// `transform_row` over every row of tiles of every image of NHWC `x`, one task per row,
/// into a pooled `[tile][ξ][C]` buffer (hand it back with `recycle`).
fn transform_tiles(x: &Tensor, grid: &TileGrid, transform_row: RowTransform) -> Vec<f32> {
    let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let mut out = take_buffer(n * grid.rows * grid.cols * tile_stride(c));
    out.par_chunks_mut((grid.cols * tile_stride(c)).max(1)).enumerate().for_each(|(row, out_row)| {
        let (image, ty) = (row / grid.rows, row % grid.rows);
        transform_row(&x.data[image * h * w * c..(image + 1) * h * w * c], c, grid, ty, out_row);
    });
    out
}

/// Where one row of tiles' outputs go: `out` and `residual` are its (up to) 4 image rows.
pub(super) struct OutputRows<'a> {
    pub(super) out: &'a mut [f32],
    pub(super) residual: Option<&'a [f32]>,
    pub(super) bias: &'a [f32],
    pub(super) relu: bool,
}

pub(super) type Lanes = [f32; LANES];

/// The values of a position outside the image.
pub(super) const ZERO_LANES: Lanes = [0.0; LANES];

/// `src[..lanes]` into the first lanes of `dst` (see [`super::copy_lanes`]).
#[inline(always)]
fn copy_lanes(dst: &mut [f32], src: &[f32], lanes: usize) {
    super::copy_lanes::<f32, LANES>(dst, src, lanes);
}

/// `Bᵀ d` for one column of 6 values (each 16 channels wide).
#[inline(always)]
fn bt6(d: [&Lanes; 6]) -> [Lanes; 6] {
    let mut r = [[0.0; LANES]; 6];
    for l in 0..LANES {
        let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * d1 - 4.0 * d2 + d3 + d4;
        r[2][l] = 4.0 * d1 - 4.0 * d2 - d3 + d4;
        r[3][l] = -2.0 * d1 - d2 + 2.0 * d3 + d4;
        r[4][l] = 2.0 * d1 - d2 - 2.0 * d3 + d4;
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// `Aᵀ m` for one column of 6 values.
#[inline(always)]
fn at6(m: [&Lanes; 6]) -> [Lanes; 4] {
    let mut r = [[0.0; LANES]; 4];
    for l in 0..LANES {
        let (m0, m1, m2, m3, m4, m5) = (m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]);
        r[0][l] = m0 + m1 + m2 + m3 + m4;
        r[1][l] = m1 - m2 + 2.0 * (m3 - m4);
        r[2][l] = m1 + m2 + 4.0 * (m3 + m4);
        r[3][l] = m1 - m2 + 8.0 * (m3 - m4) + m5;
    }
    r
}

vectorised_fn! {
    /// Input transform of row `ty` of tiles of one image (`x`: `[h, w, cin]`) into `v_row`
    /// (`[cols][ξ][cin]`), 16 channels at a time; positions outside the image are zero.
    fn input_transform_row(x: &[f32], cin: usize, grid: &TileGrid, ty: usize, v_row: &mut [f32]) {
        // The tile's input rows inside the image: ty·TILE − 1 + py for py in `rows`.
        let rows = inside_span::<TILE, 6>(ty, grid.h);
        for tx in 0..grid.cols {
            let cols = inside_span::<TILE, 6>(tx, grid.w);
            // The image's pixel (ty·TILE − 1, tx·TILE − 1), maybe outside it.
            let origin = ((ty * TILE) as isize - 1) * grid.w as isize + (tx * TILE) as isize - 1;
            let v_tile = &mut v_row[tx * tile_stride(cin)..];
            for c0 in (0..cin).step_by(LANES) {
                let lanes = LANES.min(cin - c0);
                let window = TileWindow { x, origin, strides: (grid.w * cin, cin), c0, rows: rows.clone(), cols: cols.clone() };
                if lanes == LANES {
                    transform_tile(|py, px| window.at(py, px), v_tile, (cin, c0, LANES));
                    continue;
                }
                // A last group of fewer than 16 channels: copied, zero-padded, into `d`.
                let mut d = [[0.0f32; LANES]; POINTS];
                for py in window.rows.clone() {
                    for px in window.cols.clone() {
                        copy_lanes(&mut d[py * 6 + px], window.from(py, px), lanes);
                    }
                }
                transform_tile(|py, px| &d[py * 6 + px], v_tile, (cin, c0, lanes));
            }
        }
    }
}

/// The `p` of a tile's `SPAN` input rows (or columns) that lie inside an image of `len`
/// rows (or columns), for tiles of `TILE` outputs a side and padding 1: tile `t` reads
/// `t·TILE − 1 + p` for `p` in `0..SPAN`. Shared with bf16's F(2x2) (`super::winograd_bf16`).
pub(super) fn inside_span<const TILE: usize, const SPAN: usize>(t: usize, len: usize) -> std::ops::Range<usize> {
    let first = usize::from(t == 0);
    let last = (len + 1).saturating_sub(t * TILE).min(SPAN);
    first..last.max(first)
}

/// Where one tile's input window (`SPAN × SPAN` pixels, from pixel `(t_y·TILE − 1,
/// t_x·TILE − 1)`) and 16 channels are in an NHWC image `x`.
pub(super) struct TileWindow<'a> {
    pub(super) x: &'a [f32],
    /// Index (in pixels, `y · w + x`) of the window's top-left pixel, which may lie outside.
    pub(super) origin: isize,
    /// (row, pixel) strides in values.
    pub(super) strides: (usize, usize),
    pub(super) c0: usize,
    /// The window's rows and columns inside the image ([`inside_span`]).
    pub(super) rows: std::ops::Range<usize>,
    pub(super) cols: std::ops::Range<usize>,
}

impl TileWindow<'_> {
    /// The 16 channels at window position `(py, px)`, zeros outside the image.
    #[inline(always)]
    pub(super) fn at(&self, py: usize, px: usize) -> &Lanes {
        if !(self.rows.contains(&py) && self.cols.contains(&px)) {
            return &ZERO_LANES;
        }
        let (row_stride, pixel_stride) = self.strides;
        // Inside the image, so the index is not negative.
        let offset = (py * row_stride + px * pixel_stride + self.c0) as isize;
        let first = (self.origin * pixel_stride as isize + offset) as usize;
        lanes_at(self.x, first)
    }

    /// The image's values from window position `(py, px)` (inside the image) on.
    #[inline(always)]
    pub(super) fn from(&self, py: usize, px: usize) -> &[f32] {
        let (row_stride, pixel_stride) = self.strides;
        let offset = (py * row_stride + px * pixel_stride + self.c0) as isize;
        &self.x[(self.origin * pixel_stride as isize + offset) as usize..]
    }
}

/// The input transform `Bᵀ d B` of one tile, 16 channels (`c0..c0 + 16`, of which the
/// first `lanes` are stored), into the tile's `V` (`v_tile`, `[ξ][cin]`): `Bᵀ d` down the
/// columns of `d(py, px)`, then `(Bᵀ d) B` along the rows, stored straight into `V`. The
/// whole 16-channel groups read `d` in place from the image ([`TileWindow::at`]): copying
/// the 36 input values into an array first had cost as much as the arithmetic.
#[inline(always)]
fn transform_tile<'a>(
    d: impl Fn(usize, usize) -> &'a Lanes,
    v_tile: &mut [f32],
    (cin, c0, lanes): (usize, usize, usize),
) {
    let mut t = [[0.0f32; LANES]; POINTS];
    for px in 0..6 {
        let r = bt6(std::array::from_fn(|py| d(py, px)));
        for (i, ri) in r.iter().enumerate() {
            t[i * 6 + px] = *ri;
        }
    }
    for i in 0..6 {
        let row = &t[i * 6..i * 6 + 6];
        let r = bt6([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
        for (j, rj) in r.iter().enumerate() {
            copy_lanes(&mut v_tile[(i * 6 + j) * cin + c0..], rj, lanes);
        }
    }
}

/// The [`LANES`] values of `x` from `at` on, as an array (panics past the end of `x`, as
/// slicing does).
#[inline(always)]
pub(super) fn lanes_at(x: &[f32], at: usize) -> &Lanes {
    // The slice is LANES long, so the conversion cannot fail.
    <&Lanes>::try_from(&x[at..at + LANES]).unwrap_or(&ZERO_LANES)
}

vectorised_fn! {
    /// Output transform of row `ty` of tiles (the first is tile `first_tile` of the `tiles`
    /// in `m`, `[ξ][tile][cout]`), with bias, residual and ReLU, into `target`.
    fn output_transform_row(
        m: &[f32],
        tiles: usize,
        first_tile: usize,
        cout: usize,
        grid: &TileGrid,
        ty: usize,
        target: OutputRows<'_>,
    ) {
        output_transform_row_of::<TILE, 6, POINTS>(at6, (m, tiles, first_tile, cout), grid, ty, target);
    }
}

/// The output transform of one row of tiles for a Winograd algorithm of `TILE`×`TILE`
/// outputs from `SPAN`×`SPAN = POINTS` points, whose `Aᵀ` `at` applies to one column:
/// shared by F(4x4) here and bf16's F(2x2) (`super::winograd_bf16`), each calling it from
/// its own [`vectorised_fn!`] (inlined there, `at` included). `m` holds `[ξ][tile][cout]`
/// for all `tiles`, the row's first being `first_tile`.
#[inline(always)]
pub(super) fn output_transform_row_of<const TILE: usize, const SPAN: usize, const POINTS: usize>(
    at: fn([&Lanes; SPAN]) -> [Lanes; TILE],
    (m, tiles, first_tile, cout): (&[f32], usize, usize, usize),
    grid: &TileGrid,
    ty: usize,
    target: OutputRows<'_>,
) {
    let OutputRows { out, residual, bias, relu } = target;
    let valid_rows = TILE.min(grid.h - ty * TILE);
    let mut partial = [[0.0f32; LANES]; POINTS];
    for tx in 0..grid.cols {
        let tile = first_tile + tx;
        let valid_cols = TILE.min(grid.w - tx * TILE);
        for c0 in (0..cout).step_by(LANES) {
            let lanes = LANES.min(cout - c0);
            // M's values for this tile: read in place where all 16 lanes are there, else
            // copied (zero-padded) into `partial`.
            if lanes < LANES {
                for (xi, v) in partial.iter_mut().enumerate() {
                    copy_lanes(v, &m[(xi * tiles + tile) * cout + c0..], lanes);
                }
            }
            let point = |xi: usize| -> &Lanes {
                if lanes == LANES {
                    lanes_at(m, (xi * tiles + tile) * cout + c0)
                } else {
                    &partial[xi]
                }
            };
            // Aᵀ M down the columns (SPAN -> TILE rows), then (Aᵀ M) A along the rows.
            let mut t = [[[0.0f32; LANES]; SPAN]; TILE];
            for col in 0..SPAN {
                let r = at(std::array::from_fn(|i| point(i * SPAN + col)));
                for (row, ra) in t.iter_mut().zip(&r) {
                    row[col] = *ra;
                }
            }
            let mut b = [0.0f32; LANES];
            copy_lanes(&mut b, &bias[c0..], lanes);
            for (a, row) in t.iter().enumerate().take(valid_rows) {
                let y = at(std::array::from_fn(|j| &row[j]));
                for (bx, yb) in y.iter().enumerate().take(valid_cols) {
                    let at = (a * grid.w + tx * TILE + bx) * cout + c0;
                    let residual = residual.map(|r| &r[at..]);
                    // At a fixed length when full, as in `copy_lanes`.
                    if lanes == LANES {
                        store_outputs::<LANES>(&mut out[at..], yb, &b, residual, relu);
                    } else {
                        store_outputs_partial(&mut out[at..at + lanes], yb, &b, residual, relu);
                    }
                }
            }
        }
    }
}

/// `out[l] = relu?(y[l] + bias[l] + residual[l])` for the first `L` lanes.
#[inline(always)]
fn store_outputs<const L: usize>(out: &mut [f32], y: &Lanes, bias: &Lanes, residual: Option<&[f32]>, relu: bool) {
    let mut v: [f32; L] = std::array::from_fn(|l| y[l] + bias[l]);
    if let Some(r) = residual {
        v.iter_mut().zip(&r[..L]).for_each(|(v, r)| *v += r);
    }
    if relu {
        v.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    out[..L].copy_from_slice(&v);
}

/// [`store_outputs`] for fewer than [`LANES`] channels (`out.len()` of them).
#[inline(always)]
fn store_outputs_partial(out: &mut [f32], y: &Lanes, bias: &Lanes, residual: Option<&[f32]>, relu: bool) {
    for (l, o) in out.iter_mut().enumerate() {
        let mut v = y[l] + bias[l];
        if let Some(r) = residual {
            v += r[l];
        }
        *o = if relu { v.max(0.0) } else { v };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::conv::{conv2d_nhwc_direct, Conv2dGeometry, Epilogue};
    use crate::prng::SplitMix64;

    /// A convolution this module computes: 3x3, stride 1, padding 1.
    pub(crate) fn geometry_3x3(cin: usize, cout: usize) -> Conv2dGeometry {
        Conv2dGeometry {
            in_channels: cin,
            out_channels: cout,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            padding: 1,
            groups: 1,
        }
    }

    fn random(rng: &mut SplitMix64, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| rng.uniform_f32(-scale as f64, scale as f64)).collect()
    }

    /// The transform matrices compute a 1-D correlation `y[i] = Σ_k g[k] d[i + k]` exactly
    /// (checked in f64 on integers, where every step is exact).
    #[test]
    fn transforms_compute_a_correlation() {
        let d = [3.0, -1.0, 4.0, 1.0, -5.0, 9.0];
        let g = [2.0, -6.0, 5.0];
        let gg: Vec<f64> = G.iter().map(|row| row.iter().zip(&g).map(|(a, b)| a * b).sum()).collect();
        let bt = [
            [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
            [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
            [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
            [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
            [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
            [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
        ];
        let at = [
            [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
            [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
            [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
            [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
        ];
        let bd: Vec<f64> = bt.iter().map(|row| row.iter().zip(&d).map(|(a, b)| a * b).sum()).collect();
        for (i, row) in at.iter().enumerate() {
            let y: f64 = row.iter().enumerate().map(|(k, a)| a * gg[k] * bd[k]).sum();
            let direct: f64 = (0..3).map(|k| g[k] * d[i + k]).sum();
            assert!((y - direct).abs() < 1e-9, "output {i}: {y} vs {direct}");
        }
        // The code's bt6 and at6 are these matrices.
        let lanes = |v: f64| [v as f32; LANES];
        let dl: Vec<Lanes> = d.iter().map(|&v| lanes(v)).collect();
        let r = bt6([&dl[0], &dl[1], &dl[2], &dl[3], &dl[4], &dl[5]]);
        for (ri, bi) in r.iter().zip(&bd) {
            assert_eq!(ri[0] as f64, *bi);
        }
        let ml: Vec<Lanes> = bd.iter().map(|&v| lanes(v)).collect();
        let o = at6([&ml[0], &ml[1], &ml[2], &ml[3], &ml[4], &ml[5]]);
        for (a, row) in at.iter().enumerate() {
            let want: f64 = row.iter().zip(&bd).map(|(x, y)| x * y).sum();
            assert_eq!(o[a][0] as f64, want);
        }
    }

    /// Against the direct convolution (same BN folding, bias, residual, ReLU), on sizes with
    /// partial tiles (7, 9, 13 not multiples of 4), channel counts with a partial block of
    /// 16, and ResNet-like activations (inputs in [0, 1] after a ReLU, weights scaled as
    /// Kaiming). Error bound: 1e-5 of the output's largest value, about 20x direct
    /// convolution's own rounding (the transforms multiply by up to 8 and sum ~C_in · 36
    /// products); the largest observed is printed.
    #[test]
    fn winograd_equals_direct_convolution() {
        let mut rng = SplitMix64::new(21);
        let mut worst = 0.0f32;
        // The last two have enough tiles to go in blocks (MIN_TILES_IN_BLOCKS): 11 images of
        // 6 x 6 tiles, the edge tiles cut off, blocks spanning images; 2 of 14 x 14.
        let cases = [
            // Images smaller than a tile's 6x6 input, whole 16-channel groups.
            (2, 1, 1, 16, 16),
            (1, 2, 5, 32, 16),
            (1, 7, 7, 16, 16),
            (2, 9, 13, 20, 24),
            (1, 8, 8, 64, 40),
            (1, 14, 14, 128, 33),
            (11, 23, 22, 16, 20),
            (2, 56, 55, 24, 17),
        ];
        for (n, h, w, cin, cout) in cases {
            assert_eq!(in_blocks(cin, cout, tiles(n, h, w)), n > 1 && h > 20, "{n}x{h}x{w}");
            let g = geometry_3x3(cin, cout);
            let x = Tensor::from_vec(
                &[n, h, w, cin],
                random(&mut rng, n * h * w * cin, 1.0).iter().map(|v| v.abs()).collect(),
            )
            .unwrap();
            let std = (2.0 / (9 * cin) as f32).sqrt();
            let weight = random(&mut rng, g.weight_len(), std * 1.7);
            let scale: Vec<f32> = random(&mut rng, cout, 1.0).iter().map(|v| 0.5 + v.abs()).collect();
            let shift = random(&mut rng, cout, 0.5);
            let residual = random(&mut rng, n * h * w * cout, 1.0);
            let conv = WinogradConv::new(&weight, cin, cout, &scale, shift.clone());
            for (with_residual, relu) in [(false, false), (true, true)] {
                let r = with_residual.then_some(residual.as_slice());
                let e = Epilogue { scale: Some(&scale), shift: Some(&shift), residual: r, relu };
                let expected = conv2d_nhwc_direct(&x, &weight, &g, &e);
                let got = conv.forward(&x, r, relu);
                assert_eq!(got.shape, expected.shape);
                let peak = expected.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let err = got.data.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                worst = worst.max(err / peak);
                assert!(err <= 1e-5 * peak, "{n}x{h}x{w}x{cin}->{cout}: max error {err} of {peak}");
            }
        }
        eprintln!("winograd F(4x4,3x3): largest error {worst:.2e} of the output's largest value");
    }
}
