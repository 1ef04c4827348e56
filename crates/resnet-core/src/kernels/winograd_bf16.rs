//! Winograd F(2x2, 3x3) in bf16, for `--precision bf16` inference of 3x3 stride-1 layers.
//!
//! Each 2x2 block ("tile") of outputs comes from a 4x4 block of input `d` as
//! `Y = Aᵀ [ Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B) ] A` with the interpolation points 0, ±1 and ∞:
//! 16 products per (tile, input channel, output channel) where direct convolution needs
//! 4 · 9 = 36, 2.25x fewer multiplies. As in [`super::winograd`], the sum over input
//! channels is 16 independent matrix products `V_ξ[tiles, C_in] · U_ξ[C_in, C_out]`, here
//! on the bf16 micro-kernel ([`super::packed_gemm_bf16`]).
//!
//! Why F(2x2) and not the F(4x4) the f32 plan uses: rounding to bf16 (8 bits of mantissa)
//! happens on the transformed values, and F(4x4)'s transforms scale values by up to 5 and
//! 8 before they cancel, which turns bf16's 0.4% into errors of ~2-5% of a layer's largest
//! output. F(2x2)'s transforms only add and subtract (and halve, in `G`): measured in the
//! tests below, its errors stay within 2x those of direct bf16 convolution.
//!
//! The steps, each parallel over independent pieces:
//! 1. input transform `V = Bᵀ d B` per tile, 16 channels at a time in f32, rounded to bf16
//!    pairs into `V[tile][ξ][C_in / 2]`;
//! 2. the 16 products into f32 `M[ξ][tile][C_out]`;
//! 3. output transform `Y = Aᵀ M A` per tile, plus bias (BatchNorm's shift), residual and
//!    ReLU, written once into the NHWC output; tiles past the edge are cut off.

use rayon::prelude::*;

use super::buffers::{recycle, take_buffer};
use super::conv::Conv2dGeometry;
use super::packed_gemm_bf16::{
    best_bf16_path, packed_matmul_bf16_pairs_serial, recycle_pairs, take_pairs, Bf16Path, PackedMatrixBf16,
};
use super::winograd::{inside_span, output_transform_row_of, Lanes, OutputRows, TileGrid, TileWindow, LANES};
use super::{copy_lanes, vectorised_fn};
use crate::tensor::Tensor;

/// Outputs per tile side.
const TILE: usize = 2;
/// Inputs per tile side (`TILE + 3 − 1`).
const SPAN: usize = 4;
/// Transform points per tile (`SPAN²`).
const POINTS: usize = SPAN * SPAN;

/// Filter transform `G` (4 x 3).
const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];

/// Whether `g` can run here: 3x3, stride 1, padding 1, one group, an even number of input
/// channels (whole bf16 pairs per tap), on a CPU with the native bf16 kernel.
pub fn suits(g: &Conv2dGeometry) -> bool {
    (g.kernel_h, g.kernel_w, g.stride, g.padding, g.groups) == (3, 3, 1, 1, 1)
        && g.in_channels.is_multiple_of(2)
        && best_bf16_path() == Bf16Path::Native
}

/// Whether the compiled bf16 plan computes `g` by this module: where [`suits`] holds and
/// the layer has 128 channels or more on each side (ResNet-50's layer2 to layer4).
/// Measured (`resnet bench --layers --precision bf16`, ms, direct -> F(2x2); runs of
/// one image on one thread, and of 16 images on 2 threads):
///
/// | layer | 1 image, 1 thread | 16 images, 2 threads |
/// |---|---|---|
/// | 64 -> 64 at 56x56 | 1.69, 1.75, 1.38 -> 2.15, 2.51, 1.54 | 11.3, 11.9 -> 16.5, 19.1 |
/// | 128 -> 128 at 28x28 | 1.53, 1.33, 1.26 -> 1.36, 1.18, 1.09 | 9.4, 9.3 -> 10.0, 9.7 |
/// | 256 -> 256 at 14x14 | 1.45, 1.21, 1.21 -> 0.90, 0.88, 0.84 | 8.8, 9.3 -> 5.7, 5.9 |
/// | 512 -> 512 at 7x7 | 1.22, 1.37, 1.26 -> 1.22, 1.41, 0.86 | 9.1, 8.8 -> 6.5, 6.0 |
///
/// The compiled plan runs ResNet-50's layer2 and layer3 one image at a time and layer4 on
/// the whole batch (see `CompiledResNet`), where each of these wins. The 64-channel
/// layers' products are too short (`K = C_in`) for their transforms' cost, and direct
/// convolution's smaller rounding errors are worth more there.
pub fn pays_off(g: &Conv2dGeometry) -> bool {
    suits(g) && g.in_channels.min(g.out_channels) >= 128
}

/// A 3x3, stride-1, padding-1 convolution with BatchNorm folded in, its filters transformed
/// for F(2x2, 3x3) and rounded to bf16.
#[derive(Clone, Debug)]
pub struct WinogradBf16Conv {
    in_channels: usize,
    out_channels: usize,
    /// `U_ξ = (G g Gᵀ)_ξ` as `[C_in, C_out]`, one packed matrix per transform point ξ.
    transformed: Vec<PackedMatrixBf16>,
    /// BatchNorm's shift, one per output channel.
    bias: Vec<f32>,
}

impl WinogradBf16Conv {
    /// From OHWI 3x3 `weight`, BatchNorm's eval `scale` (folded into the filters) and
    /// `shift` (the bias), one per output channel. The transform runs in f64; its results
    /// are rounded to bf16 once. Panics on an odd number of input channels or weights that
    /// are not `out_channels × 3 × 3 × in_channels` (caller bugs).
    pub fn new(weight: &[f32], in_channels: usize, out_channels: usize, scale: &[f32], shift: Vec<f32>) -> Self {
        let (cin, cout) = (in_channels, out_channels);
        assert_eq!(weight.len(), cout * 9 * cin, "weights must be OHWI 3x3");
        assert_eq!(scale.len(), cout);
        assert_eq!(shift.len(), cout);
        assert!(cin.is_multiple_of(2), "bf16 Winograd needs an even number of input channels");
        // rows[ξ] is U_ξ as [C_out, C_in] (PackedMatrixBf16::from_rows's `[N, K]`).
        let mut rows = vec![vec![0.0f32; cout * cin]; POINTS];
        for o in 0..cout {
            for c in 0..cin {
                let g = |ky: usize, kx: usize| weight[((o * 3 + ky) * 3 + kx) * cin + c] as f64 * scale[o] as f64;
                // G g, then (G g) Gᵀ.
                let mut gg = [[0.0f64; 3]; SPAN];
                for (i, row) in gg.iter_mut().enumerate() {
                    for (kx, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|ky| G[i][ky] * g(ky, kx)).sum();
                    }
                }
                for i in 0..SPAN {
                    for j in 0..SPAN {
                        let u: f64 = (0..3).map(|kx| gg[i][kx] * G[j][kx]).sum();
                        rows[i * SPAN + j][o * cin + c] = u as f32;
                    }
                }
            }
        }
        let transformed = rows.iter().map(|r| PackedMatrixBf16::from_rows(r, cout, cin, None)).collect();
        WinogradBf16Conv { in_channels, out_channels, transformed, bias: shift }
    }

    /// Bytes held by the transformed filters.
    pub fn bytes(&self) -> usize {
        self.transformed.iter().map(PackedMatrixBf16::bytes).sum()
    }

    /// `relu?(conv(x) + bias + residual?)` on NHWC `x`; the output has `x`'s height and
    /// width. Panics on shapes that disagree (a caller bug).
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
        let grid = TileGrid { h, w, rows: h.div_ceil(TILE), cols: w.div_ceil(TILE) };
        let tiles = n * grid.rows * grid.cols;
        let pairs = cin / 2;

        // 1. V[tile][ξ][C_in / 2], one task per row of tiles. A tile's values are
        // `tile_stride` pairs apart: one cache line more than its 16 points, so that the
        // rows a micro-kernel reads (one tile each) do not all fall in the same L1 set
        // when `16 · C_in / 2` pairs are a multiple of 4 KiB (128 channels and up): that
        // aliasing halved the products' speed.
        let tile_stride = POINTS * pairs + 16;
        let mut v = take_pairs(tiles * tile_stride);
        v.par_chunks_mut(grid.cols * tile_stride).enumerate().for_each(|(row, v_row)| {
            let (image, ty) = (row / grid.rows, row % grid.rows);
            let x_image = &x.data[image * h * w * cin..(image + 1) * h * w * cin];
            input_transform_row(x_image, cin, &grid, ty, tile_stride, v_row);
        });

        // 2. M_ξ = V_ξ · U_ξ, one task per point.
        let mut m = take_buffer(POINTS * tiles * cout);
        m.par_chunks_mut(tiles * cout).enumerate().for_each(|(xi, m_xi)| {
            packed_matmul_bf16_pairs_serial(&v[xi * pairs..], tiles, tile_stride, &self.transformed[xi], m_xi);
        });
        recycle_pairs(v);

        // 3. Y = Aᵀ M A + bias (+ residual), one task per row of tiles.
        let mut out = take_buffer(n * h * w * cout);
        // Rows of tiles image by image: an odd height leaves a last row of tiles one image
        // row high.
        let rows: Vec<(usize, usize, &mut [f32])> = out
            .chunks_mut(h * w * cout)
            .enumerate()
            .flat_map(|(image, out_image)| {
                out_image.chunks_mut(TILE * w * cout).enumerate().map(move |(ty, rows)| (image, ty, rows))
            })
            .collect();
        rows.into_par_iter().for_each(|(image, ty, out_rows)| {
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

/// `Bᵀ d` for one column of 4 values (each 16 channels wide).
#[inline(always)]
fn bt4(d: [&Lanes; SPAN]) -> [Lanes; SPAN] {
    let mut r = [[0.0; LANES]; SPAN];
    for l in 0..LANES {
        let (d0, d1, d2, d3) = (d[0][l], d[1][l], d[2][l], d[3][l]);
        r[0][l] = d0 - d2;
        r[1][l] = d1 + d2;
        r[2][l] = d2 - d1;
        r[3][l] = d1 - d3;
    }
    r
}

/// 16 values rounded to bf16 as [`f32_to_bf16`] does, in pairs (low half first), written
/// as selects so that it compiles to a few vector instructions.
#[inline(always)]
fn bf16_pairs(v: &Lanes) -> [u32; LANES / 2] {
    let halves: [u32; LANES] = std::array::from_fn(|l| {
        let bits = v[l].to_bits();
        let rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
        let quiet_nan = (bits >> 16) | 0x0040;
        if v[l].is_nan() {
            quiet_nan
        } else {
            rounded
        }
    });
    std::array::from_fn(|p| halves[2 * p] | halves[2 * p + 1] << 16)
}

/// `Aᵀ m` for one column of 4 values.
#[inline(always)]
fn at4(m: [&Lanes; SPAN]) -> [Lanes; TILE] {
    let mut r = [[0.0; LANES]; TILE];
    for l in 0..LANES {
        let (m0, m1, m2, m3) = (m[0][l], m[1][l], m[2][l], m[3][l]);
        r[0][l] = m0 + m1 + m2;
        r[1][l] = m1 - m2 - m3;
    }
    r
}

vectorised_fn! {
    /// Input transform of row `ty` of tiles of one image (`x`: `[h, w, cin]`) into `v_row`
    /// (`[cols][ξ][cin / 2]` bf16 pairs, tiles `tile_stride` pairs apart), 16 channels at a
    /// time; positions outside the image are zero.
    fn input_transform_row(x: &[f32], cin: usize, grid: &TileGrid, ty: usize, tile_stride: usize, v_row: &mut [u32]) {
        let pairs = cin / 2;
        // The rows of this row of tiles' windows inside the image.
        let rows = inside_span::<TILE, SPAN>(ty, grid.h);
        let mut partial = [[0.0f32; LANES]; POINTS];
        for tx in 0..grid.cols {
            let cols = inside_span::<TILE, SPAN>(tx, grid.w);
            // The window's top-left pixel (maybe outside the image).
            let origin = ((ty * TILE) as isize - 1) * grid.w as isize + (tx * TILE) as isize - 1;
            for c0 in (0..cin).step_by(LANES) {
                let lanes = LANES.min(cin - c0);
                // Whole 16-channel groups are read in place (zeros past the edges); a last,
                // partial group is copied into `partial`, zero-padded.
                let window =
                    TileWindow { x, origin, strides: (grid.w * cin, cin), c0, rows: rows.clone(), cols: cols.clone() };
                if lanes < LANES {
                    partial = [[0.0f32; LANES]; POINTS];
                    for py in window.rows.clone() {
                        for px in window.cols.clone() {
                            copy_lanes::<f32, LANES>(&mut partial[py * SPAN + px], window.from(py, px), lanes);
                        }
                    }
                }
                let d = |py: usize, px: usize| -> &Lanes {
                    if lanes == LANES {
                        window.at(py, px)
                    } else {
                        &partial[py * SPAN + px]
                    }
                };
                // Bᵀ d down the columns, then (Bᵀ d) B along the rows.
                let mut t = [[0.0f32; LANES]; POINTS];
                for col in 0..SPAN {
                    let r = bt4([d(0, col), d(1, col), d(2, col), d(3, col)]);
                    for (i, ri) in r.iter().enumerate() {
                        t[i * SPAN + col] = *ri;
                    }
                }
                for i in 0..SPAN {
                    let row = &t[i * SPAN..i * SPAN + SPAN];
                    let r = bt4([&row[0], &row[1], &row[2], &row[3]]);
                    for (j, rj) in r.iter().enumerate() {
                        let at = tx * tile_stride + (i * SPAN + j) * pairs + c0 / 2;
                        let packed = bf16_pairs(rj);
                        copy_lanes::<u32, { LANES / 2 }>(&mut v_row[at..], &packed, lanes / 2);
                    }
                }
            }
        }
    }
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
        output_transform_row_of::<TILE, SPAN, POINTS>(at4, (m, tiles, first_tile, cout), grid, ty, target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{conv2d_nhwc_direct, Epilogue};
    use crate::kernels::conv_packed::PackedConv;
    use crate::kernels::conv_packed::Precision;
    use crate::kernels::winograd::tests::geometry_3x3;
    use crate::prng::SplitMix64;

    fn random(rng: &mut SplitMix64, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| rng.uniform_f32(-scale as f64, scale as f64)).collect()
    }

    /// Largest |a − b| over the largest |b|.
    fn relative_error(a: &[f32], b: &[f32]) -> f32 {
        let peak = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / peak
    }

    #[test]
    fn pairs_round_as_the_scalar_conversion() {
        use crate::kernels::packed_gemm_bf16::f32_to_bf16;
        let specials = [0.0, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1.0 + 1.0 / 256.0, 3.0e38];
        let mut rng = SplitMix64::new(33);
        let mut v: Lanes = std::array::from_fn(|l| rng.uniform_f32(-10.0, 10.0) * if l % 3 == 0 { 1e-30 } else { 1.0 });
        v[..specials.len()].copy_from_slice(&specials);
        let got = bf16_pairs(&v);
        for (p, pair) in got.iter().enumerate() {
            assert_eq!(*pair & 0xFFFF, f32_to_bf16(v[2 * p]) as u32, "lane {}", 2 * p);
            assert_eq!(*pair >> 16, f32_to_bf16(v[2 * p + 1]) as u32, "lane {}", 2 * p + 1);
        }
    }

    /// Against f32 direct convolution, F(2x2) in bf16 is within 2x the error of direct bf16
    /// convolution (and under 1%), on odd sizes (partial tiles), channel counts that leave
    /// partial 16-lane groups and panels, with bias, residual and ReLU.
    #[test]
    fn winograd_bf16_is_as_accurate_as_direct_bf16() {
        if best_bf16_path() != Bf16Path::Native {
            eprintln!("skipped: no AVX512-BF16 on this CPU (the compiled plan then stays direct)");
            return;
        }
        let mut rng = SplitMix64::new(31);
        for (n, h, w, cin, cout) in [(1, 7, 7, 64, 64), (2, 5, 6, 18, 40), (1, 14, 14, 130, 96)] {
            let g = geometry_3x3(cin, cout);
            let weight = random(&mut rng, g.weight_len(), (2.0 / (9.0 * cin as f32)).sqrt() * 1.7);
            let scale: Vec<f32> = random(&mut rng, cout, 1.0).iter().map(|s| 0.5 + s.abs()).collect();
            let shift = random(&mut rng, cout, 0.5);
            // Non-negative inputs, as after a ReLU.
            let x: Vec<f32> = random(&mut rng, n * h * w * cin, 1.0).iter().map(|v| v.max(0.0)).collect();
            let x = Tensor::from_vec(&[n, h, w, cin], x).unwrap();
            let residual = random(&mut rng, n * h * w * cout, 1.0);
            let e = Epilogue { scale: Some(&scale), shift: Some(&shift), residual: Some(&residual), relu: true };
            let exact = conv2d_nhwc_direct(&x, &weight, &g, &e);
            let winograd = WinogradBf16Conv::new(&weight, cin, cout, &scale, shift.clone());
            let got = winograd.forward(&x, Some(&residual), true);
            let direct = PackedConv::with_precision(g, &weight, &scale, shift.clone(), Precision::Bf16).forward(
                &x,
                Some(&Tensor::from_vec(&[n, h, w, cout], residual.clone()).unwrap()),
                true,
            );
            let (err, direct_err) = (relative_error(&got.data, &exact.data), relative_error(&direct.data, &exact.data));
            assert!(
                err < 1e-2 && err <= 2.0 * direct_err.max(1e-3),
                "{n}x{h}x{w}x{cin}->{cout}: {err} vs direct {direct_err}"
            );
        }
    }

    /// With bf16-exact inputs and filters whose transform is exact in bf16 (small
    /// integers), the only rounding is in f32 sums: the result equals direct convolution
    /// to f32 precision, which checks the transforms and the tile edges exactly.
    #[test]
    fn exact_inputs_give_the_direct_convolution() {
        if best_bf16_path() != Bf16Path::Native {
            return;
        }
        let mut rng = SplitMix64::new(32);
        let (n, h, w, cin, cout) = (2, 5, 7, 34, 33);
        let g = geometry_3x3(cin, cout);
        // Filters of 0 and ±2: G g Gᵀ holds multiples of 0.5 up to 18, exact in bf16.
        let weight: Vec<f32> = (0..g.weight_len()).map(|_| 2.0 * ((rng.next_u64() % 3) as f32 - 1.0)).collect();
        let x: Vec<f32> = (0..n * h * w * cin).map(|_| ((rng.next_u64() % 9) as f32 - 4.0) / 4.0).collect();
        let x = Tensor::from_vec(&[n, h, w, cin], x).unwrap();
        let (scale, shift) = (vec![1.0; cout], vec![0.25; cout]);
        let e = Epilogue { scale: None, shift: Some(&shift), residual: None, relu: false };
        let exact = conv2d_nhwc_direct(&x, &weight, &g, &e);
        let got = WinogradBf16Conv::new(&weight, cin, cout, &scale, shift.clone()).forward(&x, None, false);
        assert_eq!(got.shape, exact.shape);
        let err = relative_error(&got.data, &exact.data);
        assert!(err < 1e-6, "error {err}");
    }
}
