//! Backward passes of [`conv2d_nhwc`](super::conv::conv2d_nhwc), as GEMMs over the same
//! im2col patches as the forward.
//!
//! The forward is, per group `g`, `out_g[M, C_out/G] = patches_g[M, K] · W_gᵀ` with
//! `M = N·OH·OW` output pixels and `K = KH·KW·C_in/G` patch values (OHWI weights: one
//! filter is one row of `K`). Differentiating that product gives the two backwards:
//!
//! * input:  `grad_patches_g[M, K] = grad_out_g[M, C_out/G] · W_g`, then every patch value
//!   is added back onto the input pixel it was read from (col2im);
//! * weight: `grad_W_g[C_out/G, K] = grad_out_gᵀ · patches_g`, summed over all `M` rows.
//!
//! A 1x1 stride-1 convolution needs no patches: the NHWC input already is `[M, C_in]`.

use rayon::prelude::*;

use super::buffers::take_buffer;
use super::conv::{im2col_nhwc, im2col_rows, valid_taps, Conv2dGeometry};
use super::conv_implicit;
use super::conv_packed::{conv2d_nhwc_packed, PackedRhs};
use super::matmul::{matmul, MatMul};
use super::packed_gemm::{
    packed_matmul, packed_matmul_serial, packed_matmul_strided, Lhs, PackedEpilogue, PackedMatrix,
};
use super::winograd::{self, WinogradConv};
use crate::tensor::Tensor;

/// Upper bound on the floats of one patch buffer (as in the forward): a large batch runs in
/// chunks of rows and accumulates, instead of materialising gigabytes of patches.
const MAX_PATCH_FLOATS: usize = 32 << 20;

thread_local! {
    /// Patch buffer kept between calls (as the forward does): fresh buffers of ~100 MB
    /// cost page faults on every layer of every step.
    static PATCH_BUFFER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's reusable patch buffer.
fn with_patch_buffer<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    let mut buffer = PATCH_BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let result = f(&mut buffer);
    PATCH_BUFFER.with(|b| *b.borrow_mut() = buffer);
    result
}

/// `∂L/∂input` (`[N, H, W, C_in]`) from `grad_out` (`[N, OH, OW, C_out]`) and the OHWI
/// `weight`, for an input of `input_hw = (H, W)`.
/// Panics when the shapes disagree with `geom` (a caller bug: layers check shapes first).
pub fn conv2d_nhwc_backward_input(
    grad_out: &Tensor,
    weight: &[f32],
    geom: &Conv2dGeometry,
    input_hw: (usize, usize),
) -> Tensor {
    if is_same_size_stride1(geom) && grad_out.shape.len() == 4 && (grad_out.shape[1], grad_out.shape[2]) == input_hw {
        return backward_input_as_convolution(grad_out, weight, geom);
    }
    backward_input_chunked(grad_out, weight, geom, input_hw, MAX_PATCH_FLOATS)
}

/// A stride-1, ungrouped, square convolution whose padding keeps the size (3x3 pad 1):
/// its input gradient is itself such a convolution (see [`backward_input_as_convolution`]).
fn is_same_size_stride1(geom: &Conv2dGeometry) -> bool {
    geom.stride == 1
        && geom.groups == 1
        && geom.kernel_h == geom.kernel_w
        && geom.kernel_h > 1
        && 2 * geom.padding + 1 == geom.kernel_h
}

/// `∂L/∂x = conv(∂L/∂y, W')` with the filters rotated by 180° and input and output channels
/// swapped, `W'[c_in][ky][kx][c_out] = W[c_out][k−1−ky][k−1−kx][c_in]`, same padding: each
/// input pixel gathers what it contributed to, so the forward kernel (patches built per
/// tile in cache, every output written once) replaces the patch-gradient matrix and the
/// col2im scatter, which wrote and re-read 9 values per input value.
fn backward_input_as_convolution(grad_out: &Tensor, weight: &[f32], geom: &Conv2dGeometry) -> Tensor {
    let (k, c_in, c_out) = (geom.kernel_h, geom.in_channels, geom.out_channels);
    assert_eq!(weight.len(), geom.weight_len());
    let transposed = Conv2dGeometry { in_channels: c_out, out_channels: c_in, ..*geom };
    let (n, h, w) = (grad_out.shape[0], grad_out.shape[1], grad_out.shape[2]);
    if winograd::pays_off(&transposed, n, h, w) {
        return WinogradConv::input_gradient_of(weight, c_in, c_out).forward(grad_out, None, false);
    }
    let mut rotated = vec![0.0f32; weight.len()];
    for ci in 0..c_in {
        for ky in 0..k {
            for kx in 0..k {
                for co in 0..c_out {
                    rotated[((ci * k + ky) * k + kx) * c_out + co] =
                        weight[((co * k + (k - 1 - ky)) * k + (k - 1 - kx)) * c_in + ci];
                }
            }
        }
    }
    let packed = PackedMatrix::from_rows(&rotated, c_in, transposed.filter_len(), None);
    conv2d_nhwc_packed(grad_out, &transposed, PackedRhs::F32(&packed), None, None, false)
}

/// `∂L/∂weight` (OHWI, `geom.weight_len()` values) from the forward's `input`
/// (`[N, H, W, C_in]`) and `grad_out` (`[N, OH, OW, C_out]`).
/// Panics when the shapes disagree with `geom` (a caller bug).
/// Layers where its Winograd form pays off ([`winograd::weight_gradient_pays_off`]: 3x3
/// stride 1 with at least 128 channels and 128 tiles, or from 16 channels where it goes in
/// blocks of tiles) use [`winograd::weight_gradient`].
pub fn conv2d_nhwc_backward_weight(input: &Tensor, grad_out: &Tensor, geom: &Conv2dGeometry) -> Vec<f32> {
    let same_size = input.shape.len() == 4 && grad_out.shape.len() == 4 && input.shape[..3] == grad_out.shape[..3];
    if same_size
        && grad_out.shape[3] == geom.out_channels
        && input.shape[3] == geom.in_channels
        && winograd::weight_gradient_pays_off(geom, input.shape[0], input.shape[1], input.shape[2])
    {
        return winograd::weight_gradient(input, grad_out);
    }
    conv2d_nhwc_backward_weight_im2col(input, grad_out, geom)
}

/// [`conv2d_nhwc_backward_weight`] without Winograd: patches (im2col, or read in place by
/// the implicit kernel) times the output gradient.
pub(crate) fn conv2d_nhwc_backward_weight_im2col(input: &Tensor, grad_out: &Tensor, geom: &Conv2dGeometry) -> Vec<f32> {
    backward_weight_chunked(input, grad_out, geom, MAX_PATCH_FLOATS, SPLIT_PIXELS_MAX_WEIGHTS)
}

/// Checks `grad_out` against `geom` and an input of `h × w`; returns `(N, OH, OW)`.
fn check_shapes(grad_out: &Tensor, geom: &Conv2dGeometry, (h, w): (usize, usize)) -> (usize, usize, usize) {
    assert_eq!(grad_out.shape.len(), 4, "conv2d backward expects an NHWC gradient");
    assert!(
        geom.groups > 0
            && geom.in_channels.is_multiple_of(geom.groups)
            && geom.out_channels.is_multiple_of(geom.groups)
    );
    let (n, oh, ow, c_out) = (grad_out.shape[0], grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]);
    assert_eq!(c_out, geom.out_channels, "gradient channels differ from the convolution's");
    assert_eq!((oh, ow), geom.output_hw(h, w), "gradient size differs from the convolution's output");
    (n, oh, ow)
}

fn is_pointwise_stride1(geom: &Conv2dGeometry) -> bool {
    geom.kernel_h == 1 && geom.kernel_w == 1 && geom.padding == 0 && geom.groups == 1 && geom.stride == 1
}

fn backward_input_chunked(
    grad_out: &Tensor,
    weight: &[f32],
    geom: &Conv2dGeometry,
    (h, w): (usize, usize),
    max_patch_floats: usize,
) -> Tensor {
    let (n, oh, ow) = check_shapes(grad_out, geom, (h, w));
    assert_eq!(weight.len(), geom.weight_len());
    let (c_in, c_out) = (geom.in_channels, geom.out_channels);
    let shape = [n, h, w, c_in];
    if shape.iter().product::<usize>() == 0 || grad_out.is_empty() {
        return Tensor::zeros(&shape);
    }
    if is_pointwise_stride1(geom) {
        // grad_input[M, C_in] = grad_out[M, C_out] · W[C_out, C_in]: no patches at all. The
        // product overwrites every value, so a reused buffer needs no clearing.
        let mut grad_input =
            Tensor::from_vec(&shape, take_buffer(n * h * w * c_in)).unwrap_or_else(|| Tensor::zeros(&shape));
        let packed = PackedMatrix::from_kn(weight, c_out, c_in);
        packed_matmul(&grad_out.data, n * h * w, c_out, &packed, &mut grad_input.data, &PackedEpilogue::default());
        return grad_input;
    }
    // Chunks hold whole images, so col2im finds every patch that read a pixel in the chunk.
    let patch_floats_per_image = oh * ow * geom.kernel_h * geom.kernel_w * c_in;
    if geom.groups == 1 {
        // W read as [C_out, K] is the right operand of every chunk's product. Each chunk of
        // images runs on one thread, product then col2im, so its patch gradients are read
        // back from cache: made for the whole batch first, they went through memory twice
        // (a CIFAR stride-2 layer at batch 128: 19 MB).
        let k = geom.filter_len();
        let packed = PackedMatrix::from_kn(weight, c_out, k);
        let budget = max_patch_floats.min(CACHED_PATCH_FLOATS);
        let images_per_chunk = (budget / patch_floats_per_image.max(1)).max(1);
        // Each chunk clears its own part before col2im adds into it.
        let mut grad_input =
            Tensor::from_vec(&shape, take_buffer(n * h * w * c_in)).unwrap_or_else(|| Tensor::zeros(&shape));
        grad_input.data.par_chunks_mut(images_per_chunk * h * w * c_in).enumerate().for_each(
            |(chunk, grad_in_chunk)| {
                let rows = grad_in_chunk.len() / (h * w * c_in) * oh * ow;
                let first_row = chunk * images_per_chunk * oh * ow;
                let grad_out_rows = &grad_out.data[first_row * c_out..(first_row + rows) * c_out];
                with_patch_buffer(|grad_patches| {
                    // Every value is overwritten by the product; resize only sets the length.
                    grad_patches.resize(rows * k, 0.0);
                    let e = PackedEpilogue::default();
                    packed_matmul_serial(Lhs::rows(grad_out_rows, c_out), rows, &packed, grad_patches, &e);
                    grad_in_chunk.fill(0.0);
                    col2im_nhwc(grad_patches, geom, (h, w), (oh, ow), grad_in_chunk);
                });
            },
        );
        return grad_input;
    }
    // Grouped (ResNeXt): col2im adds into it, so zeros.
    let mut grad_input = Tensor::zeros(&shape);
    let images_per_chunk = (max_patch_floats / patch_floats_per_image.max(1)).max(1);
    with_patch_buffer(|grad_patches| {
        for (chunk, grad_in_chunk) in grad_input.data.chunks_mut(images_per_chunk * h * w * c_in).enumerate() {
            let images = grad_in_chunk.len() / (h * w * c_in);
            let rows = images * oh * ow;
            let first_row = chunk * images_per_chunk * oh * ow;
            let grad_out_rows = &grad_out.data[first_row * c_out..(first_row + rows) * c_out];
            // Every value is overwritten by the GEMM; resize only sets the length.
            grad_patches.resize(rows * geom.groups * geom.filter_len(), 0.0);
            patch_gradients(grad_out_rows, weight, geom, grad_patches);
            col2im_nhwc(grad_patches, geom, (h, w), (oh, ow), grad_in_chunk);
        }
    });
    grad_input
}

/// `grad_patches_g = grad_out_g · W_g` for every group, stored group-major:
/// `grad_patches[g][row][k]`, each group a contiguous `[rows, K]` block.
fn patch_gradients(grad_out_rows: &[f32], weight: &[f32], geom: &Conv2dGeometry, grad_patches: &mut [f32]) {
    let c_out = geom.out_channels;
    let rows = grad_out_rows.len() / c_out;
    let out_per_group = c_out / geom.groups;
    let k_group = geom.filter_len();
    let one_group = |g: usize, dst: &mut [f32], threads: usize| {
        let spec = MatMul {
            m: rows,
            n: k_group,
            k: out_per_group,
            lhs: &grad_out_rows[g * out_per_group..],
            lhs_row_stride: c_out,
            lhs_col_stride: 1,
            rhs: &weight[g * out_per_group * k_group..(g + 1) * out_per_group * k_group],
            rhs_row_stride: k_group,
            rhs_col_stride: 1,
            accumulate: false,
            threads,
        };
        matmul(&spec, dst, k_group);
    };
    if geom.groups == 1 {
        one_group(0, grad_patches, super::current_threads());
    } else {
        grad_patches.par_chunks_mut(rows * k_group).enumerate().for_each(|(g, dst)| one_group(g, dst, 1));
    }
}

/// col2im: every patch gradient is added back onto the input pixel it was read from.
/// `grad_patches` is group-major (see [`patch_gradients`]) for the whole images of
/// `grad_input`. One task per image scatters that image's patch rows in order, so the
/// patches stream through once, the sums land in a small image that stays in cache, no
/// locks are needed and the order of the sums is fixed whatever the thread count.
fn col2im_nhwc(
    grad_patches: &[f32],
    geom: &Conv2dGeometry,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    grad_input: &mut [f32],
) {
    let c_in = geom.in_channels;
    let cg = c_in / geom.groups;
    let k_group = geom.filter_len();
    if c_in == 0 || k_group == 0 {
        return;
    }
    let rows = grad_patches.len() / (geom.groups * k_group);
    grad_input.par_chunks_mut(h * w * c_in).enumerate().for_each(|(b, image)| {
        for g in 0..geom.groups {
            let image_patches = &grad_patches[(g * rows + b * oh * ow) * k_group..][..oh * ow * k_group];
            for (out_pixel, patch) in image_patches.chunks(k_group).enumerate() {
                let (oy, ox) = (out_pixel / ow, out_pixel % ow);
                let taps_x = valid_taps(ox, geom, w);
                if taps_x.is_empty() {
                    continue;
                }
                let first_ix = ox * geom.stride + taps_x.start - geom.padding;
                for ky in 0..geom.kernel_h {
                    let iy = (oy * geom.stride + ky) as isize - geom.padding as isize;
                    if iy < 0 || iy as usize >= h {
                        continue;
                    }
                    let pixel = iy as usize * w + first_ix;
                    let taps = &patch[(ky * geom.kernel_w + taps_x.start) * cg..(ky * geom.kernel_w + taps_x.end) * cg];
                    if geom.groups == 1 {
                        // Neighbouring taps wrote neighbouring pixels: one contiguous add.
                        let dst = &mut image[pixel * c_in..][..taps.len()];
                        dst.iter_mut().zip(taps).for_each(|(d, s)| *d += s);
                    } else {
                        for (t, tap) in taps.chunks(cg).enumerate() {
                            let dst = &mut image[(pixel + t) * c_in + g * cg..][..cg];
                            dst.iter_mut().zip(tap).for_each(|(d, s)| *d += s);
                        }
                    }
                }
            }
        }
    });
}

fn backward_weight_chunked(
    input: &Tensor,
    grad_out: &Tensor,
    geom: &Conv2dGeometry,
    max_patch_floats: usize,
    split_max_weights: usize,
) -> Vec<f32> {
    assert_eq!(input.shape.len(), 4, "conv2d backward expects an NHWC input");
    let (h, w, c_in) = (input.shape[1], input.shape[2], input.shape[3]);
    assert_eq!(c_in, geom.in_channels, "input channels differ from the convolution's");
    let (n, oh, ow) = check_shapes(grad_out, geom, (h, w));
    assert_eq!(input.shape[0], n, "input and gradient batch sizes differ");
    let c_out = geom.out_channels;
    let mut grad_weight = vec![0.0; geom.weight_len()];
    let rows = n * oh * ow;
    if rows == 0 || grad_weight.is_empty() {
        return grad_weight;
    }
    let out_per_group = c_out / geom.groups;
    let k_group = geom.filter_len();
    // grad_W_g[C_out/G, K] += grad_out_gᵀ · patches_g: the lhs is grad_out read column-wise.
    let accumulate_group = |g: usize, first_row: usize, patches: &[f32], dst: &mut [f32], threads: usize| {
        let chunk_rows = patches.len() / k_group;
        let spec = MatMul {
            m: out_per_group,
            n: k_group,
            k: chunk_rows,
            lhs: &grad_out.data[first_row * c_out + g * out_per_group..],
            lhs_row_stride: 1,
            lhs_col_stride: c_out,
            rhs: patches,
            rhs_row_stride: k_group,
            rhs_col_stride: 1,
            accumulate: true,
            threads,
        };
        matmul(&spec, dst, k_group);
    };
    if geom.groups == 1 && k_group * c_out <= split_max_weights {
        return weight_gradient_split_over_pixels(input, grad_out, geom, (oh, ow));
    }
    if is_pointwise_stride1(geom) {
        // grad_W[C_out, C_in] = grad_outᵀ · input: the input is the patch matrix.
        weight_gradient_outer(&grad_out.data, c_out, &input.data, c_in, false, &mut grad_weight);
        return grad_weight;
    }
    let chunk_rows = (max_patch_floats / (geom.groups * k_group).max(1)).max(1);
    with_patch_buffer(|patches| {
        let mut first_row = 0;
        while first_row < rows {
            let chunk = chunk_rows.min(rows - first_row);
            // Every value is overwritten by im2col; resize only sets the length.
            patches.resize(geom.groups * chunk * k_group, 0.0);
            if geom.groups == 1 {
                im2col_nhwc(input, geom, (oh, ow), 0, first_row, patches);
                // grad_W[C_out, K] += grad_outᵀ · patches.
                let grad_rows = &grad_out.data[first_row * c_out..(first_row + chunk) * c_out];
                weight_gradient_outer(grad_rows, c_out, patches, k_group, first_row > 0, &mut grad_weight);
            } else {
                // Groups own disjoint filter rows (OHWI keeps a group's filters contiguous).
                grad_weight
                    .par_chunks_mut(out_per_group * k_group)
                    .zip(patches.par_chunks_mut(chunk * k_group))
                    .enumerate()
                    .for_each(|(g, (dst, group_patches))| {
                        im2col_nhwc(input, geom, (oh, ow), g, first_row, group_patches);
                        accumulate_group(g, first_row, group_patches, dst, 1);
                    });
            }
            first_row += chunk;
        }
    });
    grad_weight
}

/// Patch-gradient values per chunk of images in [`backward_input_chunked`]: 1 MiB, the size
/// of this CPU's per-core L2 (a chunk holds at least one image).
const CACHED_PATCH_FLOATS: usize = 1 << 18;

/// Largest `K · C_out` (filter values) whose weight gradient is split over pixels: 2^18
/// floats, a 1 MiB partial sum per thread that stays in its L2.
const SPLIT_PIXELS_MAX_WEIGHTS: usize = 1 << 18;

/// Patch values (pixels x K) built per step of [`weight_gradient_split_over_pixels`]: 1 MiB.
const SPLIT_PIXELS_PATCH_FLOATS: usize = 1 << 18;

/// The weight gradient of an ungrouped convolution with few weights and many pixels
/// (ResNet-50's first stages, the CIFAR nets): each thread takes a contiguous range of
/// pixels and, a cache-sized step at a time, builds their patches (im2col; the input itself
/// for 1x1 stride 1) and adds `patchesᵀ · grad_out` into its own `[K, C_out]` partial sum;
/// the partial sums are added at the end. Every input and gradient value is read once,
/// where splitting the few weight rows across threads (the general path) makes every
/// thread stream the whole gradient.
fn weight_gradient_split_over_pixels(
    input: &Tensor,
    grad_out: &Tensor,
    geom: &Conv2dGeometry,
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let (k, c_in, c_out) = (geom.filter_len(), geom.in_channels, geom.out_channels);
    let rows = grad_out.data.len() / c_out;
    let threads = super::current_threads().max(1);
    let per_thread = rows.div_ceil(threads);
    let step = (SPLIT_PIXELS_PATCH_FLOATS / k.max(1)).clamp(16, 1024);
    let pointwise = is_pointwise_stride1(geom);
    // Patches read in place from the input's padded rows where the implicit kernel applies.
    let implicit = conv_implicit::suits(geom);
    let partials: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let (first, last) = ((t * per_thread).min(rows), ((t + 1) * per_thread).min(rows));
            let mut sum = vec![0.0f32; k * c_out]; // [K, C_out]
            let mut patches = Vec::new();
            for start in (first..last).step_by(step) {
                let len = step.min(last - start);
                let grad_rows = &grad_out.data[start * c_out..(start + len) * c_out];
                let packed = PackedMatrix::from_kn(grad_rows, len, c_out);
                if implicit {
                    conv_implicit::weight_gradient_implicit(input, geom, start, len, &packed, start > first, &mut sum);
                    continue;
                }
                let lhs = if pointwise {
                    Lhs { data: &input.data[start * c_in..(start + len) * c_in], row_stride: 1, col_stride: c_in }
                } else {
                    patches.resize(len * k, 0.0);
                    im2col_rows(input, geom, (oh, ow), 0, start, &mut patches[..len * k]);
                    Lhs { data: &patches[..len * k], row_stride: 1, col_stride: k }
                };
                let e = PackedEpilogue { accumulate: start > first, ..PackedEpilogue::default() };
                packed_matmul_serial(lhs, k, &packed, &mut sum, &e);
            }
            sum
        })
        .collect();
    // Add the partial sums and transpose [K, C_out] into OHWI [C_out, K].
    let mut grad_weight = vec![0.0f32; k * c_out];
    for (o, dst) in grad_weight.chunks_mut(k.max(1)).enumerate() {
        for (kk, d) in dst.iter_mut().enumerate() {
            *d = partials.iter().map(|p| p[kk * c_out + o]).sum();
        }
    }
    grad_weight
}

/// `grad_weight[C_out, K] (+)= grad_rowsᵀ[C_out, rows] · patches[rows, K]`, the OHWI layout
/// directly. The gradient is the left operand, read transposed in place (a row of the
/// micro-tile is one output channel, consecutive in memory for each pixel); the patches
/// are packed into panels of K, streamed once per tile of output channels.
fn weight_gradient_outer(
    grad_rows: &[f32],
    c_out: usize,
    patches: &[f32],
    k: usize,
    accumulate: bool,
    grad_weight: &mut [f32],
) {
    let rows = grad_rows.len() / c_out.max(1);
    let packed = PackedMatrix::from_kn(&patches[..rows * k], rows, k);
    let lhs = Lhs { data: grad_rows, row_stride: 1, col_stride: c_out };
    let e = PackedEpilogue { accumulate, ..PackedEpilogue::default() };
    packed_matmul_strided(lhs, c_out, &packed, grad_weight, &e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{conv2d_nhwc, Epilogue};
    use crate::kernels::gradcheck::{check_gradient, dot, random_values};
    use crate::prng::SplitMix64;

    fn geometry(c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize, groups: usize) -> Conv2dGeometry {
        Conv2dGeometry { in_channels: c_in, out_channels: c_out, kernel_h: k, kernel_w: k, stride, padding, groups }
    }

    /// (geometry, H, W) covering every family shape on tiny inputs: the 7x7/2 stem, 3x3
    /// stride 1 and 2 (odd sizes, so the last window overhangs), 1x1 stride 1 (the no-patch
    /// path) and stride 2 (downsample), grouped 3x3 (ResNeXt) with uneven group widths.
    fn cases() -> Vec<(Conv2dGeometry, usize, usize)> {
        vec![
            (geometry(3, 4, 7, 2, 3, 1), 9, 8),
            (geometry(4, 5, 3, 1, 1, 1), 5, 6),
            (geometry(4, 6, 3, 2, 1, 1), 7, 6),
            (geometry(6, 5, 1, 1, 0, 1), 4, 3),
            (geometry(4, 9, 1, 1, 0, 1), 5, 4),
            (geometry(4, 6, 1, 2, 0, 1), 5, 5),
            (geometry(8, 8, 3, 2, 1, 4), 5, 6),
            (geometry(4, 6, 3, 1, 1, 2), 4, 4),
            (geometry(3, 2, 2, 3, 0, 1), 8, 7),
        ]
    }

    fn forward(x: &[f32], shape: &[usize], weight: &[f32], geom: &Conv2dGeometry) -> Tensor {
        let input = Tensor::from_vec(shape, x.to_vec()).unwrap();
        conv2d_nhwc(&input, weight, geom, &Epilogue::default())
    }

    /// The convolution is linear in each argument, so central differences are exact up to
    /// the forward's f32 rounding whatever the step; a large step (0.5) keeps that rounding
    /// near f32's epsilon: observed ≤ 4e-7 of the largest gradient, tolerance 1e-5.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = SplitMix64::new(11);
        for (geom, h, w) in cases() {
            let shape = [2, h, w, geom.in_channels];
            let x = random_values(&mut rng, shape.iter().product(), -1.0, 1.0);
            let weight = random_values(&mut rng, geom.weight_len(), -1.0, 1.0);
            let out_shape = forward(&x, &shape, &weight, &geom).shape;
            let r =
                Tensor::from_vec(&out_shape, random_values(&mut rng, out_shape.iter().product(), -1.0, 1.0)).unwrap();

            let grad_x = conv2d_nhwc_backward_input(&r, &weight, &geom, (h, w));
            assert_eq!(grad_x.shape, shape);
            let case = format!("{geom:?} on {h}x{w}");
            check_gradient(&format!("{case}: grad input"), &x, &grad_x.data, 0.5, 1e-5, |x| {
                dot(&r.data, &forward(x, &shape, &weight, &geom).data)
            });
            let input = Tensor::from_vec(&shape, x.clone()).unwrap();
            let grad_w = conv2d_nhwc_backward_weight(&input, &r, &geom);
            check_gradient(&format!("{case}: grad weight"), &weight, &grad_w, 0.5, 1e-5, |wt| {
                dot(&r.data, &forward(&x, &shape, wt, &geom).data)
            });
        }
    }

    /// Chunking (whole images for the input gradient, row ranges for the weight gradient)
    /// and the two ways of splitting the weight gradient (over pixels, over weight rows)
    /// must not change the result beyond summation order.
    #[test]
    fn chunked_equals_unchunked() {
        let mut rng = SplitMix64::new(12);
        for (geom, h, w) in cases() {
            let n = 5;
            let input = Tensor::from_vec(
                &[n, h, w, geom.in_channels],
                random_values(&mut rng, n * h * w * geom.in_channels, -1.0, 1.0),
            )
            .unwrap();
            let weight = random_values(&mut rng, geom.weight_len(), -1.0, 1.0);
            let (oh, ow) = geom.output_hw(h, w);
            let grad_out = Tensor::from_vec(
                &[n, oh, ow, geom.out_channels],
                random_values(&mut rng, n * oh * ow * geom.out_channels, -1.0, 1.0),
            )
            .unwrap();
            // The public entry (a convolution with rotated filters for 3x3 stride 1) against
            // the patch-gradient + col2im path.
            let whole_x = conv2d_nhwc_backward_input(&grad_out, &weight, &geom, (h, w));
            let whole_w = conv2d_nhwc_backward_weight(&input, &grad_out, &geom);
            // Budgets of one patch row and of about two images.
            for budget in [1, 2 * oh * ow * geom.kernel_h * geom.kernel_w * geom.in_channels] {
                let part_x = backward_input_chunked(&grad_out, &weight, &geom, (h, w), budget);
                // Split over pixels (the default for these small filters) vs over weight rows.
                let part_w = backward_weight_chunked(&input, &grad_out, &geom, budget, 0);
                for (a, b) in part_x.data.iter().zip(&whole_x.data).chain(part_w.iter().zip(&whole_w)) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{geom:?} budget {budget}: {a} vs {b}");
                }
            }
        }
    }

    /// Layers big enough for Winograd ([`winograd::pays_off`]): the forward and the input
    /// gradient (a convolution with rotated filters) against direct convolution and the
    /// patch-gradient path, and the weight gradient the im2col one. Winograd's rounding:
    /// within 1e-5 of the largest value (observed ~3e-6, see `winograd::tests`).
    #[test]
    fn winograd_forward_and_gradients_equal_direct() {
        let mut rng = SplitMix64::new(13);
        let (n, h, w) = (2, 9, 11);
        for (c_in, c_out) in [(128, 128), (128, 144)] {
            let geom = geometry(c_in, c_out, 3, 1, 1, 1);
            assert!(winograd::pays_off(&geom, n, h, w));
            let input =
                Tensor::from_vec(&[n, h, w, c_in], random_values(&mut rng, n * h * w * c_in, -1.0, 1.0)).unwrap();
            let weight = random_values(&mut rng, geom.weight_len(), -0.1, 0.1);
            let grad_out =
                Tensor::from_vec(&[n, h, w, c_out], random_values(&mut rng, n * h * w * c_out, -1.0, 1.0)).unwrap();
            let pairs = [
                (conv2d_nhwc(&input, &weight, &geom, &Epilogue::default()), {
                    crate::kernels::conv::conv2d_nhwc_direct(&input, &weight, &geom, &Epilogue::default())
                }),
                (
                    conv2d_nhwc_backward_input(&grad_out, &weight, &geom, (h, w)),
                    backward_input_chunked(&grad_out, &weight, &geom, (h, w), MAX_PATCH_FLOATS),
                ),
            ];
            let weights = (
                conv2d_nhwc_backward_weight(&input, &grad_out, &geom),
                conv2d_nhwc_backward_weight_im2col(&input, &grad_out, &geom),
            );
            let weight_shape = vec![geom.weight_len()];
            let weight_pair = (
                Tensor::from_vec(&weight_shape, weights.0).unwrap(),
                Tensor::from_vec(&weight_shape, weights.1).unwrap(),
            );
            for (got, expected) in pairs.into_iter().chain([weight_pair]) {
                assert_eq!(got.shape, expected.shape);
                let peak = expected.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let err = got.data.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(err <= 1e-5 * peak, "{c_in}->{c_out}: error {err} of {peak}");
            }
        }
    }

    #[test]
    fn empty_batch_gives_empty_and_zero_gradients() {
        let geom = geometry(4, 6, 3, 2, 1, 2);
        let grad_out = Tensor::zeros(&[0, 3, 3, 6]);
        let input = Tensor::zeros(&[0, 5, 5, 4]);
        assert!(conv2d_nhwc_backward_input(&grad_out, &vec![1.0; geom.weight_len()], &geom, (5, 5)).is_empty());
        assert!(conv2d_nhwc_backward_weight(&input, &grad_out, &geom).iter().all(|&v| v == 0.0));
    }
}
