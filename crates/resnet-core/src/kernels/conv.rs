//! 2-d convolution on NHWC tensors as im2col + GEMM, with a fused per-channel epilogue.
//!
//! Weights are stored OHWI (`[C_out, KH, KW, C_in / groups]`), so one output channel's
//! filter is one contiguous row of `K = KH·KW·C_in/groups` values, laid out in the same
//! order as an NHWC patch. The product is then
//! `out[M = N·OH·OW, C_out] = patches[M, K] · weightᵀ[K, C_out]`, one GEMM per group.
//! A 1x1 stride-1 convolution needs no patches at all: the NHWC input already is
//! `[N·H·W, C_in]`.

use rayon::prelude::*;

use super::conv_packed::{conv2d_nhwc_packed, PackedRhs};
use super::matmul::{matmul, MatMul};
use super::packed_gemm::PackedMatrix;
use super::winograd::{self, WinogradConv};
use crate::tensor::Tensor;

/// Shape parameters of one convolution (square stride and padding, as in the ResNet family).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl Conv2dGeometry {
    /// Output height and width for an input of `h × w` (PyTorch's floor formula).
    pub fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let oh = (h + 2 * self.padding).saturating_sub(self.kernel_h) / self.stride + 1;
        let ow = (w + 2 * self.padding).saturating_sub(self.kernel_w) / self.stride + 1;
        (oh, ow)
    }

    /// Values in one group's filter row: `KH·KW·C_in/groups`.
    pub fn filter_len(&self) -> usize {
        self.kernel_h * self.kernel_w * (self.in_channels / self.groups)
    }

    /// Number of weights: `C_out · KH·KW·C_in/groups`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.filter_len()
    }

    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel_h == 1 && self.kernel_w == 1 && self.padding == 0 && self.groups == 1
    }
}

/// What happens to each output value after the convolution's sum, fused into one pass:
/// `y = relu(acc · scale[c] + shift[c] + residual)`. Eval-mode BatchNorm is the scale and
/// shift; a residual block's shortcut is the residual.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub scale: Option<&'a [f32]>,
    pub shift: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

/// Upper bound on the floats of one im2col buffer; bigger problems run in row chunks so a
/// large batch does not need gigabytes of patches.
pub(crate) const MAX_PATCH_FLOATS: usize = 32 << 20;

thread_local! {
    static PATCH_BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's reusable patch buffer (shared by every forward path).
pub(crate) fn with_patch_buffer<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    let mut buffer = PATCH_BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let result = f(&mut buffer);
    PATCH_BUFFER.with(|b| *b.borrow_mut() = buffer);
    result
}

/// Convolves `input` (`[N, H, W, C_in]`) with OHWI `weight`, then applies `epilogue`: by
/// Winograd F(4x4, 3x3) where that is faster ([`winograd::pays_off`]: 3x3 stride-1 layers of
/// at least 16 channels, 1.1-2.2x faster, rounding errors ~3e-6 of the largest output), else
/// as [`conv2d_nhwc_direct`].
/// Panics when the tensors disagree with `geom` (a caller bug: layers check shapes first).
pub fn conv2d_nhwc(input: &Tensor, weight: &[f32], geom: &Conv2dGeometry, epilogue: &Epilogue<'_>) -> Tensor {
    if input.shape.len() == 4 && winograd::pays_off(geom, input.shape[0], input.shape[1], input.shape[2]) {
        let c_out = geom.out_channels;
        assert_eq!(weight.len(), geom.weight_len());
        let bias = epilogue.shift.map_or_else(|| vec![0.0; c_out], <[f32]>::to_vec);
        let conv = WinogradConv::from_filters(weight, geom.in_channels, c_out, epilogue.scale, bias);
        return conv.forward(input, epilogue.residual, epilogue.relu);
    }
    conv2d_nhwc_direct(input, weight, geom, epilogue)
}

/// [`conv2d_nhwc`] always by im2col + GEMM: the reference the faster paths are tested
/// against.
pub fn conv2d_nhwc_direct(input: &Tensor, weight: &[f32], geom: &Conv2dGeometry, epilogue: &Epilogue<'_>) -> Tensor {
    assert_eq!(input.shape.len(), 4, "conv2d_nhwc expects an NHWC tensor");
    let (n, h, w, c_in) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3]);
    assert_eq!(c_in, geom.in_channels);
    assert_eq!(weight.len(), geom.weight_len());
    assert!(geom.groups > 0 && c_in.is_multiple_of(geom.groups) && geom.out_channels.is_multiple_of(geom.groups));
    let (oh, ow) = geom.output_hw(h, w);
    let c_out = geom.out_channels;
    let rows = n * oh * ow;
    if rows == 0 || c_out == 0 {
        return Tensor::zeros(&[n, oh, ow, c_out]);
    }
    if geom.groups == 1 {
        // Pack the weights once per call (BN's scale folded in when given), and let the
        // micro-kernel apply shift, residual and ReLU as it stores: one pass over the output.
        let packed = PackedMatrix::from_rows(weight, c_out, geom.filter_len(), epilogue.scale);
        return conv2d_nhwc_packed(
            input,
            geom,
            PackedRhs::F32(&packed),
            epilogue.shift,
            epilogue.residual,
            epilogue.relu,
        );
    }
    // Grouped (ResNeXt): one GEMM per group, in row chunks so patches stay bounded.
    let mut out = Tensor::zeros(&[n, oh, ow, c_out]);
    let chunk_rows = (MAX_PATCH_FLOATS / (geom.groups * geom.filter_len()).max(1)).max(1);
    let mut row0 = 0;
    while row0 < rows {
        let chunk = chunk_rows.min(rows - row0);
        let out_chunk = &mut out.data[row0 * c_out..(row0 + chunk) * c_out];
        grouped_gemm(input, weight, geom, (oh, ow), row0, out_chunk);
        row0 += chunk;
    }
    apply_epilogue(&mut out.data, c_out, epilogue);
    out
}

/// `out[rows, c_out] = lhs[rows, k] · weightᵀ` with `weight` stored `[c_out, k]`.
fn pointwise_gemm(lhs: &[f32], k: usize, weight: &[f32], c_out: usize, out: &mut [f32], threads: usize) {
    let rows = out.len() / c_out;
    let spec = MatMul {
        m: rows,
        n: c_out,
        k,
        lhs,
        lhs_row_stride: k,
        lhs_col_stride: 1,
        rhs: weight,
        rhs_row_stride: 1,
        rhs_col_stride: k,
        accumulate: false,
        threads,
    };
    matmul(&spec, out, c_out);
}

/// Grouped convolution (ResNeXt): each group is its own GEMM over its channel slice,
/// groups run in parallel into private buffers, then scatter into the output columns.
fn grouped_gemm(
    input: &Tensor,
    weight: &[f32],
    geom: &Conv2dGeometry,
    out_hw: (usize, usize),
    row0: usize,
    out: &mut [f32],
) {
    let c_out = geom.out_channels;
    let rows = out.len() / c_out;
    let out_per_group = c_out / geom.groups;
    let k_group = geom.filter_len();
    let per_group: Vec<Vec<f32>> = (0..geom.groups)
        .into_par_iter()
        .map(|g| {
            let mut patches = vec![0.0; rows * k_group];
            im2col_nhwc(input, geom, out_hw, g, row0, &mut patches);
            let mut dst = vec![0.0; rows * out_per_group];
            let w = &weight[g * out_per_group * k_group..(g + 1) * out_per_group * k_group];
            pointwise_gemm(&patches, k_group, w, out_per_group, &mut dst, 1);
            dst
        })
        .collect();
    out.par_chunks_mut(c_out).enumerate().for_each(|(r, row)| {
        for (g, block) in per_group.iter().enumerate() {
            row[g * out_per_group..(g + 1) * out_per_group]
                .copy_from_slice(&block[r * out_per_group..(r + 1) * out_per_group]);
        }
    });
}

/// Fills `patches` (`[rows, KH·KW·C_in/groups]`) with the input windows of output rows
/// `row0..row0+rows` for channel group `group`; padding reads as zero.
pub(crate) fn im2col_nhwc(
    input: &Tensor,
    geom: &Conv2dGeometry,
    (oh, ow): (usize, usize),
    group: usize,
    row0: usize,
    patches: &mut [f32],
) {
    let k = geom.filter_len();
    if k == 0 {
        return;
    }
    // Tasks of many rows: one patch row is often only 144 floats (3x3x16), far too little
    // work to be worth a task of its own.
    patches.par_chunks_mut(k * ROWS_PER_TASK).enumerate().for_each(|(task, task_patches)| {
        im2col_rows(input, geom, (oh, ow), group, row0 + task * ROWS_PER_TASK, task_patches);
    });
}

/// [`im2col_nhwc`] on the calling thread: `patches` (a whole number of rows of
/// `filter_len()` values) gets the patches of output rows `row0..`.
pub(crate) fn im2col_rows(
    input: &Tensor,
    geom: &Conv2dGeometry,
    out_hw: (usize, usize),
    group: usize,
    row0: usize,
    patches: &mut [f32],
) {
    let (h, w, c_in) = (input.shape[1], input.shape[2], input.shape[3]);
    im2col_rows_of(&input.data, (h, w, c_in), geom, out_hw, group, row0, patches);
}

/// [`im2col_rows`] over any values: `x` is NHWC with `h × w` pixels of `c` values each
/// (for bf16 pairs, two channels per value), so a patch row is `KH·KW·c / groups` values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_rows_of<T: Copy + Default>(
    x: &[T],
    (h, w, c_in): (usize, usize, usize),
    geom: &Conv2dGeometry,
    (oh, ow): (usize, usize),
    group: usize,
    row0: usize,
    patches: &mut [T],
) {
    let cg = c_in / geom.groups;
    let c0 = group * cg;
    let k = geom.kernel_h * geom.kernel_w * cg;
    if k == 0 {
        return;
    }
    if oh * ow == 0 {
        return;
    }
    // The output position of row `row0`, then stepped row by row (two divisions per row
    // were a visible share of im2col for 16-channel layers).
    let (mut b, rem) = (row0 / (oh * ow), row0 % (oh * ow));
    let (mut oy, mut ox) = (rem / ow, rem % ow);
    for patch in patches.chunks_mut(k) {
        let taps_x = valid_taps(ox, geom, w);
        for ky in 0..geom.kernel_h {
            let patch_row = &mut patch[ky * geom.kernel_w * cg..(ky + 1) * geom.kernel_w * cg];
            let iy = (oy * geom.stride + ky) as isize - geom.padding as isize;
            if iy < 0 || iy as usize >= h || taps_x.is_empty() {
                patch_row.fill(T::default());
                continue;
            }
            patch_row[..taps_x.start * cg].fill(T::default());
            patch_row[taps_x.end * cg..].fill(T::default());
            let first_ix = ox * geom.stride + taps_x.start - geom.padding;
            let pixel = (b * h + iy as usize) * w + first_ix;
            if geom.groups == 1 {
                // Neighbouring taps read neighbouring pixels: one contiguous copy.
                let len = taps_x.len() * c_in;
                patch_row[taps_x.start * cg..taps_x.end * cg].copy_from_slice(&x[pixel * c_in..][..len]);
            } else {
                for (t, kx) in taps_x.clone().enumerate() {
                    let src = (pixel + t) * c_in + c0;
                    patch_row[kx * cg..(kx + 1) * cg].copy_from_slice(&x[src..src + cg]);
                }
            }
        }
        ox += 1;
        if ox == ow {
            ox = 0;
            oy += 1;
            if oy == oh {
                oy = 0;
                b += 1;
            }
        }
    }
}

/// Output rows per parallel task in im2col and the epilogue.
const ROWS_PER_TASK: usize = 64;

/// The kernel columns `kx` whose tap of output column `ox` lands inside an input of width
/// `w` (`0 ≤ ox·stride + kx − padding < w`): always one contiguous range.
pub(crate) fn valid_taps(ox: usize, geom: &Conv2dGeometry, w: usize) -> std::ops::Range<usize> {
    let left = ox * geom.stride;
    let first = geom.padding.saturating_sub(left).min(geom.kernel_w);
    let end = (w + geom.padding).saturating_sub(left).min(geom.kernel_w);
    first..end.max(first)
}

/// `y = relu(y · scale + shift + residual)` per output row of `c_out` channels.
pub fn apply_epilogue(out: &mut [f32], c_out: usize, e: &Epilogue<'_>) {
    if e.scale.is_none() && e.shift.is_none() && e.residual.is_none() && !e.relu {
        return;
    }
    if let Some(res) = e.residual {
        assert_eq!(res.len(), out.len(), "residual must match the convolution's output");
    }
    if c_out == 0 {
        return;
    }
    out.par_chunks_mut(c_out * ROWS_PER_TASK).enumerate().for_each(|(task, rows)| {
        let first = task * ROWS_PER_TASK * c_out;
        for (i, row) in rows.chunks_mut(c_out).enumerate() {
            if let Some(scale) = e.scale {
                row.iter_mut().zip(scale).for_each(|(v, s)| *v *= s);
            }
            if let Some(shift) = e.shift {
                row.iter_mut().zip(shift).for_each(|(v, s)| *v += s);
            }
            if let Some(res) = e.residual {
                let start = first + i * c_out;
                row.iter_mut().zip(&res[start..start + c_out]).for_each(|(v, s)| *v += s);
            }
            if e.relu {
                row.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::SplitMix64;

    /// Direct 7-loop convolution in f64: the definition, with no layout tricks.
    fn conv_reference(input: &Tensor, weight: &[f32], g: &Conv2dGeometry) -> Tensor {
        let (n, h, w, c_in) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3]);
        let (oh, ow) = g.output_hw(h, w);
        let (cg_in, cg_out) = (c_in / g.groups, g.out_channels / g.groups);
        let mut out = Tensor::zeros(&[n, oh, ow, g.out_channels]);
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..g.out_channels {
                        let grp = co / cg_out;
                        let mut acc = 0.0f64;
                        for ky in 0..g.kernel_h {
                            for kx in 0..g.kernel_w {
                                let iy = (oy * g.stride + ky) as isize - g.padding as isize;
                                let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                for ci in 0..cg_in {
                                    let xv =
                                        input.data[((b * h + iy as usize) * w + ix as usize) * c_in + grp * cg_in + ci];
                                    let wv = weight[((co * g.kernel_h + ky) * g.kernel_w + kx) * cg_in + ci];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out.data[((b * oh + oy) * ow + ox) * g.out_channels + co] = acc as f32;
                    }
                }
            }
        }
        out
    }

    fn random(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform_f32(-1.0, 1.0)).collect()
    }

    #[test]
    fn matches_direct_convolution_for_every_family_shape() {
        let mut rng = SplitMix64::new(3);
        // (c_in, c_out, k, stride, pad, groups, h, w): stem, 3x3, strided 3x3, 1x1, strided
        // 1x1 downsample, grouped 3x3 (ResNeXt), odd sizes.
        let cases = [
            (3, 8, 7, 2, 3, 1, 19, 17),
            (8, 8, 3, 1, 1, 1, 9, 9),
            (8, 16, 3, 2, 1, 1, 9, 10),
            (16, 8, 1, 1, 0, 1, 5, 5),
            (8, 16, 1, 2, 0, 1, 7, 7),
            (16, 16, 3, 2, 1, 4, 8, 8),
            (12, 6, 3, 1, 1, 3, 5, 4),
        ];
        for &(c_in, c_out, k, stride, padding, groups, h, w) in &cases {
            let geom = Conv2dGeometry {
                in_channels: c_in,
                out_channels: c_out,
                kernel_h: k,
                kernel_w: k,
                stride,
                padding,
                groups,
            };
            let input = Tensor::from_vec(&[2, h, w, c_in], random(&mut rng, 2 * h * w * c_in)).unwrap();
            let weight = random(&mut rng, geom.weight_len());
            let got = conv2d_nhwc(&input, &weight, &geom, &Epilogue::default());
            let want = conv_reference(&input, &weight, &geom);
            assert_eq!(got.shape, want.shape);
            for (a, b) in got.data.iter().zip(&want.data) {
                assert!((a - b).abs() < 1e-4, "{geom:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn epilogue_scales_shifts_adds_and_rectifies() {
        let mut out = vec![1.0, -2.0, 3.0, -4.0];
        let res = [0.5, 0.5, -10.0, 0.0];
        let e = Epilogue { scale: Some(&[2.0, 3.0]), shift: Some(&[1.0, 1.0]), residual: Some(&res), relu: true };
        apply_epilogue(&mut out, 2, &e);
        assert_eq!(out, vec![3.5, 0.0, 0.0, 0.0]);
    }
}
