//! The weight gradient of a 3x3, stride-1, padding-1 convolution by Winograd F(4x4, 3x3).
//!
//! The forward is `Y = Aᵀ [ Σ_c U_c ⊙ V_c ] A` per tile with `U = G g Gᵀ` and
//! `V = Bᵀ d B`. Every step is linear, so its transpose gives the gradient of the filters:
//! `∂L/∂U_ξ[c_in, c_out] = Σ_tiles V_ξ[tile, c_in] · (A ∂Y Aᵀ)_ξ[tile, c_out]`, then
//! `∂L/∂g = Gᵀ (∂L/∂U) G`. The middle is 36 products `V_ξᵀ · T_ξ` whose depth is the tiles,
//! 36 multiplies per tile and channel pair where im2col's product has 16 · 9 = 144.
//!
//! Steps, each parallel over independent pieces:
//! 1. `V` as in the forward (the same input transform);
//! 2. `T = A ∂Y Aᵀ` per 4x4 tile of the output gradient (zero past the edges, where the
//!    forward's tiles were cut off), into `T[tile][ξ][C_out]`;
//! 3. the 36 products, one task per point, each `[C_in, C_out]`;
//! 4. `Gᵀ (∂L/∂U) G` per channel pair, written in OHWI order.
//!
//! Accuracy: the gradient transform scales values by up to 8 · 8 before `Gᵀ … G` scales
//! them back down, so rounding errors are larger than im2col's; the tests below measure
//! them against the direct weight gradient.

use rayon::prelude::*;

use super::super::buffers::{recycle, take_buffer};
use super::super::packed_gemm::{packed_matmul_serial, Lhs, PackedEpilogue, PackedMatrix};
use super::super::vectorised_fn;
use super::{
    copy_lanes, in_blocks, input_transform_row, lanes_at, rows_per_block, tile_stride, transform_tiles, Lanes,
    TileGrid, BLOCK_SCRATCH, G, LANES, POINTS, TILE, ZERO_LANES,
};
use crate::tensor::Tensor;

/// `∂L/∂weight` (OHWI, `C_out × 3 × 3 × C_in`) of a 3x3 stride-1 padding-1 convolution from
/// its NHWC `input` and `grad_out` (same height and width). Panics on shapes that disagree
/// (a caller bug).
pub fn weight_gradient(input: &Tensor, grad_out: &Tensor) -> Vec<f32> {
    assert_eq!(input.shape.len(), 4, "conv expects an NHWC input");
    assert_eq!(grad_out.shape.len(), 4, "conv expects an NHWC gradient");
    let (n, h, w, cin) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3]);
    let cout = grad_out.shape[3];
    assert_eq!(&grad_out.shape[..3], &[n, h, w], "a 3x3 stride-1 gradient has the input's size");
    let mut grad_weight = vec![0.0f32; cout * 9 * cin];
    if n * h * w == 0 || cin == 0 || cout == 0 {
        return grad_weight;
    }
    let grid = TileGrid::new(h, w);
    let tiles = n * grid.rows * grid.cols;
    let grad_u = if in_blocks(cin, cout, tiles) {
        grad_u_in_blocks(input, grad_out, &grid)
    } else {
        grad_u_whole(input, grad_out, &grid)
    };

    // 4. ∂L/∂g = Gᵀ (∂L/∂U) G, one task per 16 output channels (16 rows of OHWI).
    grad_weight.par_chunks_mut(LANES * 9 * cin).enumerate().for_each(|(chunk, rows)| {
        let co0 = chunk * LANES;
        filter_gradient_rows(&grad_u, cin, cout, co0, rows);
    });
    recycle(Tensor { shape: vec![grad_u.len()], data: grad_u });
    grad_weight
}

/// Tiles per block of [`grad_u_in_blocks`], about: the depth of each block's 36 products.
const WEIGHT_GRADIENT_BLOCK_TILES: usize = 192;

/// Steps 1-3 of [`weight_gradient`] a block of rows of tiles at a time: each thread
/// transforms a block's input and gradient into its own scratch and adds the block's 36
/// products into its own `∂L/∂U`, so `V` and `T` (2.25x the input and the gradient) stay in
/// cache instead of going through memory. Each thread takes a fixed, contiguous range of
/// blocks, and the partial sums are added in thread order: the result does not depend on
/// scheduling. Returns `[ξ][C_in][C_out]`.
fn grad_u_in_blocks(input: &Tensor, grad_out: &Tensor, grid: &TileGrid) -> Vec<f32> {
    let (n, h, w, cin) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3]);
    let cout = grad_out.shape[3];
    let rows = n * grid.rows;
    let threads = super::super::current_threads().max(1);
    let per_block = rows_per_block(WEIGHT_GRADIENT_BLOCK_TILES, rows, grid.cols, threads);
    let blocks = rows.div_ceil(per_block);
    let partials: Vec<Vec<f32>> = (0..threads.min(blocks))
        .into_par_iter()
        .map(|part| {
            let parts = threads.min(blocks);
            let mut sum = vec![0.0f32; POINTS * cin * cout];
            let (v_len, t_len) = (grid.cols * tile_stride(cin), grid.cols * tile_stride(cout));
            // This thread's scratch: every value read is written first (the transforms write
            // all 36 points of every tile of the block), so it is never cleared.
            let (mut v, mut t) = BLOCK_SCRATCH.with_borrow_mut(std::mem::take);
            if v.len() < per_block * v_len {
                v.resize(per_block * v_len, 0.0);
            }
            if t.len() < per_block * t_len {
                t.resize(per_block * t_len, 0.0);
            }
            for block in part * blocks / parts..(part + 1) * blocks / parts {
                let block_rows = block * per_block..((block + 1) * per_block).min(rows);
                let block_tiles = block_rows.len() * grid.cols;
                for (k, row) in block_rows.enumerate() {
                    let (image, ty) = (row / grid.rows, row % grid.rows);
                    let x = &input.data[image * h * w * cin..(image + 1) * h * w * cin];
                    input_transform_row(x, cin, grid, ty, &mut v[k * v_len..(k + 1) * v_len]);
                    let dy = &grad_out.data[image * h * w * cout..(image + 1) * h * w * cout];
                    gradient_transform_row(dy, cout, grid, ty, &mut t[k * t_len..(k + 1) * t_len]);
                }
                let e = PackedEpilogue { accumulate: true, ..PackedEpilogue::default() };
                for (xi, sum_xi) in sum.chunks_mut(cin * cout).enumerate() {
                    let packed = PackedMatrix::from_kn_strided(&t[xi * cout..], tile_stride(cout), block_tiles, cout);
                    let a = Lhs { data: &v[xi * cin..], row_stride: 1, col_stride: tile_stride(cin) };
                    packed_matmul_serial(a, cin, &packed, sum_xi, &e);
                }
            }
            BLOCK_SCRATCH.set((v, t));
            sum
        })
        .collect();
    let mut grad_u = take_buffer(POINTS * cin * cout);
    grad_u.fill(0.0);
    for partial in &partials {
        grad_u.iter_mut().zip(partial).for_each(|(g, p)| *g += p);
    }
    grad_u
}

/// Steps 1-3 of [`weight_gradient`] over the whole tensors, each step parallel. Returns
/// `[ξ][C_in][C_out]`.
fn grad_u_whole(input: &Tensor, grad_out: &Tensor, grid: &TileGrid) -> Vec<f32> {
    let (cin, cout) = (input.shape[3], grad_out.shape[3]);
    let tiles = input.shape[0] * grid.rows * grid.cols;

    // 1. V[tile][ξ][C_in] and 2. T[tile][ξ][C_out], one task per row of tiles.
    let v = transform_tiles(input, grid, input_transform_row);
    let t = transform_tiles(grad_out, grid, gradient_transform_row);

    // 3. ∂L/∂U_ξ[C_in, C_out] = V_ξᵀ · T_ξ, one task per point: V_ξ read transposed in
    //    place, T_ξ packed from its interleaved rows.
    let mut grad_u = take_buffer(POINTS * cin * cout);
    grad_u.par_chunks_mut(cin * cout).enumerate().for_each(|(xi, grad_u_xi)| {
        let packed = PackedMatrix::from_kn_strided(&t[xi * cout..], tile_stride(cout), tiles, cout);
        let a = Lhs { data: &v[xi * cin..], row_stride: 1, col_stride: tile_stride(cin) };
        packed_matmul_serial(a, cin, &packed, grad_u_xi, &PackedEpilogue::default());
    });
    recycle(Tensor { shape: vec![v.len()], data: v });
    recycle(Tensor { shape: vec![t.len()], data: t });
    grad_u
}

/// `A g` for one column of 4 values (each 16 channels wide): `A` is the 6x4 transpose of
/// the forward's output transform `Aᵀ`.
#[inline(always)]
fn a6(g: [&Lanes; 4]) -> [Lanes; 6] {
    let mut r = [[0.0; LANES]; 6];
    for l in 0..LANES {
        let (g0, g1, g2, g3) = (g[0][l], g[1][l], g[2][l], g[3][l]);
        r[0][l] = g0;
        r[1][l] = g0 + g1 + g2 + g3;
        r[2][l] = g0 - g1 + g2 - g3;
        r[3][l] = g0 + 2.0 * g1 + 4.0 * g2 + 8.0 * g3;
        r[4][l] = g0 - 2.0 * g1 + 4.0 * g2 - 8.0 * g3;
        r[5][l] = g3;
    }
    r
}

vectorised_fn! {
    /// Gradient transform `T = A ∂Y Aᵀ` of row `ty` of tiles of one image's output gradient
    /// (`dy`: `[h, w, cout]`) into `t_row` (`[cols][ξ][cout]`); positions past the edges
    /// are zero.
    fn gradient_transform_row(dy: &[f32], cout: usize, grid: &TileGrid, ty: usize, t_row: &mut [f32]) {
        let valid_rows = TILE.min(grid.h - ty * TILE);
        let mut partial = [[0.0f32; LANES]; TILE * TILE];
        for tx in 0..grid.cols {
            let valid_cols = TILE.min(grid.w - tx * TILE);
            for c0 in (0..cout).step_by(LANES) {
                let lanes = LANES.min(cout - c0);
                // ∂Y's values for this tile, zeros past the edges: read in place where all
                // 16 lanes are there, else copied into `partial`.
                if lanes < LANES {
                    partial = [[0.0f32; LANES]; TILE * TILE];
                    for r in 0..valid_rows {
                        for c in 0..valid_cols {
                            let at = ((ty * TILE + r) * grid.w + tx * TILE + c) * cout + c0;
                            copy_lanes(&mut partial[r * TILE + c], &dy[at..], lanes);
                        }
                    }
                }
                let value = |r: usize, c: usize| -> &Lanes {
                    if lanes < LANES {
                        &partial[r * TILE + c]
                    } else if r < valid_rows && c < valid_cols {
                        lanes_at(dy, ((ty * TILE + r) * grid.w + tx * TILE + c) * cout + c0)
                    } else {
                        &ZERO_LANES
                    }
                };
                // A ∂Y down the columns (4 -> 6 rows), then (A ∂Y) Aᵀ along the rows.
                let mut half = [[0.0f32; LANES]; 6 * TILE];
                for col in 0..TILE {
                    let r = a6([value(0, col), value(1, col), value(2, col), value(3, col)]);
                    for (i, ri) in r.iter().enumerate() {
                        half[i * TILE + col] = *ri;
                    }
                }
                for i in 0..6 {
                    let row = &half[i * TILE..(i + 1) * TILE];
                    let r = a6([&row[0], &row[1], &row[2], &row[3]]);
                    for (j, rj) in r.iter().enumerate() {
                        let at = tx * tile_stride(cout) + (i * 6 + j) * cout + c0;
                        copy_lanes(&mut t_row[at..], rj, lanes);
                    }
                }
            }
        }
    }
}

vectorised_fn! {
    /// Rows `co0..` of the OHWI weight gradient (`rows`: up to 16 output channels of
    /// `9 · cin` values): `∂L/∂g[ky][kx] = Σ_ij G[i][ky] · ∂L/∂U_(6i+j) · G[j][kx]` for
    /// every input channel, 16 output channels at a time from `grad_u` (`[ξ][cin][cout]`).
    fn filter_gradient_rows(grad_u: &[f32], cin: usize, cout: usize, co0: usize, rows: &mut [f32]) {
        let g: [[f32; 3]; 6] = G.map(|row| row.map(|v| v as f32));
        let lanes = LANES.min(cout - co0);
        for ci in 0..cin {
            let mut u = [[0.0f32; LANES]; POINTS];
            for (xi, u_xi) in u.iter_mut().enumerate() {
                copy_lanes(u_xi, &grad_u[(xi * cin + ci) * cout + co0..], lanes);
            }
            // Gᵀ U down the columns (6 -> 3 rows), then (Gᵀ U) G along the rows.
            let mut half = [[0.0f32; LANES]; 3 * 6];
            for ky in 0..3 {
                for j in 0..6 {
                    let h = &mut half[ky * 6 + j];
                    for (i, gi) in g.iter().enumerate() {
                        let (coefficient, x) = (gi[ky], &u[i * 6 + j]);
                        h.iter_mut().zip(x).for_each(|(h, x)| *h += coefficient * x);
                    }
                }
            }
            for ky in 0..3 {
                for kx in 0..3 {
                    let mut tap = [0.0f32; LANES];
                    for (j, gj) in g.iter().enumerate() {
                        let (coefficient, x) = (gj[kx], &half[ky * 6 + j]);
                        tap.iter_mut().zip(x).for_each(|(t, x)| *t += coefficient * x);
                    }
                    for (l, value) in tap.iter().enumerate().take(lanes) {
                        rows[(l * 9 + ky * 3 + kx) * cin + ci] = *value;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::geometry_3x3;
    use super::*;
    use crate::kernels::conv_backward::conv2d_nhwc_backward_weight_im2col;
    use crate::prng::SplitMix64;

    /// Against the im2col weight gradient: edges cut through tiles (7x9), channel counts
    /// that leave partial 16-lane groups (20 -> 24), and a larger layer; errors within
    /// 2e-5 of the largest gradient value (measured: 0.5-4e-6).
    #[test]
    fn equals_the_direct_weight_gradient() {
        // The last has enough tiles for blocks (`super::in_blocks`): 13 images of 5 x 6 tiles, cut
        // at the edges, blocks spanning images.
        let cases = [
            (2, 7, 9, 20, 24),
            (1, 4, 4, 16, 16),
            (2, 2, 5, 16, 32),
            (2, 14, 14, 64, 48),
            (3, 5, 3, 3, 5),
            (13, 18, 23, 24, 20),
        ];
        for (n, h, w, cin, cout) in cases {
            assert_eq!(in_blocks(cin, cout, super::super::tiles(n, h, w)), n == 13);
            let mut rng = SplitMix64::new(7);
            let mut values = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform_f32(-1.0, 1.0)).collect() };
            let input = Tensor::from_vec(&[n, h, w, cin], values(n * h * w * cin)).unwrap();
            let grad_out = Tensor::from_vec(&[n, h, w, cout], values(n * h * w * cout)).unwrap();
            let geom = geometry_3x3(cin, cout);
            let expected = conv2d_nhwc_backward_weight_im2col(&input, &grad_out, &geom);
            let got = weight_gradient(&input, &grad_out);
            let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&expected).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 2e-5 * scale, "{n}x{h}x{w}, {cin} -> {cout}: error {worst} of {scale}");
        }
    }
}
