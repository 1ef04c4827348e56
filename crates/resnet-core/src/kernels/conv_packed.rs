//! Inference convolution with BatchNorm folded in and weights packed once
//! ([`PackedMatrix`]): `y = relu?(conv(x, W·scale) + shift + residual?)`, where the bias,
//! residual and ReLU are applied as the GEMM stores its results. Weights are packed in f32
//! or, for [`Precision::Bf16`], in bf16 for the AVX512-BF16 kernel ([`super::packed_gemm_bf16`]).

use std::sync::OnceLock;

use super::buffers::take_buffer;
#[cfg(test)]
use super::conv::conv2d_nhwc_direct;
use super::conv::{conv2d_nhwc, im2col_rows, im2col_rows_of, with_patch_buffer, Conv2dGeometry, Epilogue};
use super::conv_implicit;
use super::packed_gemm::{for_each_row_tile, packed_matmul, packed_matmul_serial, Lhs, PackedEpilogue, PackedMatrix};
use super::packed_gemm_bf16::{
    bf16_pairs_of, bf16_to_f32, packed_matmul_bf16, packed_matmul_bf16_rows, recycle_pairs, PackedMatrixBf16, RowSource,
};
use super::winograd::{self, WinogradConv};
use super::winograd_bf16::{self, WinogradBf16Conv};
use crate::tensor::Tensor;

/// The number format convolutions multiply in. Sums, biases and activations between layers
/// are f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights and inputs: the reference numerics.
    #[default]
    F32,
    /// Weights and each convolution's input rounded to bfloat16, products summed in f32
    /// (AVX512-BF16 `vdpbf16ps` where the CPU has it, an emulation otherwise). About twice
    /// the multiply rate of f32 on such CPUs; logits move by ~1% of their range.
    Bf16,
}

/// How a network's convolutions are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    pub precision: Precision,
    /// Compute f32 3x3 stride-1 convolutions by Winograd F(4x4, 3x3)
    /// ([`super::winograd`]): about 2x faster on ResNet-50's, with rounding errors ~2e-6 of
    /// each layer's largest output instead of ~1e-7. Only where it wins: layers with fewer
    /// than [`WINOGRAD_MIN_CHANNELS`] channels on either side stay direct (the transforms
    /// outweigh the saved multiplies: 16 channels ran 2-3x slower). Layers with more than
    /// [`WINOGRAD_MAX_CHANNELS_PRODUCT`] input x output channels run direct on one image
    /// (no faster by Winograd, and their transformed filters, 4x the weights, would cost
    /// more memory than the time is worth) and switch to Winograd the first time they see a
    /// batch with at least [`winograd::MIN_TILES`] output tiles. In bf16, Winograd
    /// F(2x2, 3x3) where [`winograd_bf16::pays_off`] (128 channels and more).
    pub winograd: bool,
}

/// Largest `C_in · C_out` held transformed for Winograd from compile time (256 x 256: 9.4 MB
/// of transformed filters); wider layers transform when they first see a batch.
pub const WINOGRAD_MAX_CHANNELS_PRODUCT: usize = 256 * 256;

/// Fewest input and output channels computed by Winograd. Measured (`resnet bench --layers`,
/// 2 threads): CIFAR ResNet-20's 16-channel layers at 32x32 took 0.17 ms against 0.05 direct
/// at batch 1 and 4.8 against 2.6 at batch 64; 64 channels win from batch 2 up (ResNet-50's
/// 64-channel layer1: 0.63 against 1.6 ms at batch 1).
pub const WINOGRAD_MIN_CHANNELS: usize = 64;

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions { precision: Precision::F32, winograd: true }
    }
}

impl From<Precision> for CompileOptions {
    fn from(precision: Precision) -> Self {
        CompileOptions { precision, ..CompileOptions::default() }
    }
}

/// Packed weights `[K, N]` in either precision.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PackedRhs<'a> {
    F32(&'a PackedMatrix),
    Bf16(&'a PackedMatrixBf16),
}

impl PackedRhs<'_> {
    fn k(&self) -> usize {
        match self {
            PackedRhs::F32(p) => p.k(),
            PackedRhs::Bf16(p) => p.k(),
        }
    }

    fn n(&self) -> usize {
        match self {
            PackedRhs::F32(p) => p.n(),
            PackedRhs::Bf16(p) => p.n(),
        }
    }

    /// `out = epilogue(a[m, K] · self)`, `a` with row stride `lda`.
    fn matmul(&self, a: &[f32], m: usize, lda: usize, out: &mut [f32], e: &PackedEpilogue<'_>) {
        match self {
            PackedRhs::F32(p) => packed_matmul(a, m, lda, p, out, e),
            PackedRhs::Bf16(p) => packed_matmul_bf16(a, m, lda, p, out, e),
        }
    }
}

/// How the weights are held.
#[derive(Clone, Debug)]
enum Weights {
    /// One group: `[K, C_out]` packed panels with the BN scale folded in.
    Packed(PackedMatrix),
    /// The same, rounded to bf16.
    PackedBf16(PackedMatrixBf16),
    /// 3x3 stride 1, transformed for Winograd F(4x4, 3x3).
    Winograd(WinogradConv),
    /// 3x3 stride 1 with too many channels to hold transformed for one image: direct for
    /// small inputs; transformed from the packed weights the first time a batch has
    /// [`winograd::MIN_TILES`] output tiles, and by Winograd from then on (ResNet-50's
    /// layer4 at 7x7: as fast as direct for one image, 2.2x faster at batch 16; its two
    /// layers' transformed filters add 75 MB only for callers who run batches).
    PackedThenWinograd(PackedMatrix, OnceLock<WinogradConv>),
    /// 3x3 stride 1 in bf16, transformed for Winograd F(2x2, 3x3).
    WinogradBf16(WinogradBf16Conv),
    /// Grouped convolutions (ResNeXt) keep OHWI weights, scale folded in, and run through
    /// [`conv2d_nhwc`]'s grouped path.
    Grouped(Vec<f32>),
}

/// A convolution + eval-mode BatchNorm, compiled for inference.
#[derive(Clone, Debug)]
pub struct PackedConv {
    pub geometry: Conv2dGeometry,
    weights: Weights,
    /// BN's shift, one per output channel.
    bias: Vec<f32>,
}

impl PackedConv {
    /// From OHWI `weight` and BN's eval `scale` and `shift` (one per output channel), in f32
    /// by direct convolution.
    pub fn new(geometry: Conv2dGeometry, weight: &[f32], scale: &[f32], shift: Vec<f32>) -> PackedConv {
        let options = CompileOptions { precision: Precision::F32, winograd: false };
        Self::compile(geometry, weight, scale, shift, options)
    }

    /// As [`Self::new`], multiplying in `precision` (grouped convolutions stay f32), by direct
    /// convolution.
    pub fn with_precision(
        geometry: Conv2dGeometry,
        weight: &[f32],
        scale: &[f32],
        shift: Vec<f32>,
        precision: Precision,
    ) -> PackedConv {
        Self::compile(geometry, weight, scale, shift, CompileOptions { precision, winograd: false })
    }

    /// As [`Self::new`], compiled as `options` say.
    pub fn compile(
        geometry: Conv2dGeometry,
        weight: &[f32],
        scale: &[f32],
        shift: Vec<f32>,
        options: CompileOptions,
    ) -> PackedConv {
        assert_eq!(weight.len(), geometry.weight_len());
        assert_eq!(scale.len(), geometry.out_channels);
        assert_eq!(shift.len(), geometry.out_channels);
        let (n, k) = (geometry.out_channels, geometry.filter_len());
        let (c_in, c_out) = (geometry.in_channels, geometry.out_channels);
        let winograd = options.winograd
            && options.precision == Precision::F32
            && winograd::fits(&geometry)
            && c_in.min(c_out) >= WINOGRAD_MIN_CHANNELS
            && c_in * c_out <= WINOGRAD_MAX_CHANNELS_PRODUCT;
        if winograd {
            // The bias (BN's shift) is applied by the output transform.
            let weights = Weights::Winograd(WinogradConv::new(weight, c_in, c_out, scale, shift));
            return PackedConv { geometry, weights, bias: Vec::new() };
        }
        if options.winograd && options.precision == Precision::Bf16 && winograd_bf16::pays_off(&geometry) {
            // The bias (BN's shift) is applied by the output transform.
            let weights = Weights::WinogradBf16(WinogradBf16Conv::new(weight, c_in, c_out, scale, shift));
            return PackedConv { geometry, weights, bias: Vec::new() };
        }
        let winograd_for_batches = options.winograd
            && options.precision == Precision::F32
            && winograd::fits(&geometry)
            && c_in.min(c_out) >= WINOGRAD_MIN_CHANNELS;
        if winograd_for_batches {
            let packed = PackedMatrix::from_rows(weight, n, k, Some(scale));
            return PackedConv { geometry, weights: Weights::PackedThenWinograd(packed, OnceLock::new()), bias: shift };
        }
        let weights = if geometry.groups == 1 && options.precision == Precision::Bf16 {
            Weights::PackedBf16(PackedMatrixBf16::from_rows(weight, n, k, Some(scale)))
        } else if geometry.groups == 1 {
            Weights::Packed(PackedMatrix::from_rows(weight, n, k, Some(scale)))
        } else {
            Weights::Grouped(
                weight.chunks(k.max(1)).zip(scale).flat_map(|(row, &s)| row.iter().map(move |w| w * s)).collect(),
            )
        };
        PackedConv { geometry, weights, bias: shift }
    }

    /// Bytes held by the compiled weights.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            Weights::Packed(p) => 4 * p.k() * p.n(),
            Weights::PackedBf16(p) => p.bytes(),
            Weights::Winograd(w) => w.bytes(),
            Weights::WinogradBf16(w) => w.bytes(),
            Weights::PackedThenWinograd(p, w) => 4 * p.k() * p.n() + w.get().map_or(0, WinogradConv::bytes),
            Weights::Grouped(w) => 4 * w.len(),
        }
    }

    /// `relu?(conv(x) + bias + residual?)` on NHWC `x`. Panics on shapes that disagree with
    /// the geometry (a caller bug: the model checks its input first).
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>, relu: bool) -> Tensor {
        let g = &self.geometry;
        assert_eq!(x.shape.len(), 4, "conv expects an NHWC tensor");
        let (n, h, w, c_in) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        assert_eq!(c_in, g.in_channels, "input channels differ from the convolution's");
        let (oh, ow) = g.output_hw(h, w);
        let c_out = g.out_channels;
        let residual = residual.map(|r| {
            assert_eq!(r.shape, [n, oh, ow, c_out], "residual must have the output's shape");
            r.data.as_slice()
        });
        match &self.weights {
            Weights::Packed(p) => conv2d_nhwc_packed(x, g, PackedRhs::F32(p), Some(&self.bias), residual, relu),
            Weights::PackedBf16(p) => conv2d_nhwc_packed(x, g, PackedRhs::Bf16(p), Some(&self.bias), residual, relu),
            Weights::Winograd(w) => w.forward(x, residual, relu),
            Weights::WinogradBf16(w) => w.forward(x, residual, relu),
            Weights::PackedThenWinograd(p, transformed) => {
                if winograd::tiles(n, h, w) >= winograd::MIN_TILES {
                    let conv = transformed.get_or_init(|| WinogradConv::from_packed(p, c_in, c_out, self.bias.clone()));
                    conv.forward(x, residual, relu)
                } else {
                    conv2d_nhwc_packed(x, g, PackedRhs::F32(p), Some(&self.bias), residual, relu)
                }
            }
            Weights::Grouped(weight) => {
                let e = Epilogue { scale: None, shift: Some(&self.bias), residual, relu };
                conv2d_nhwc(x, weight, g, &e)
            }
        }
    }
}

/// An ungrouped convolution of NHWC `x` with weights already packed as `[K, C_out]`
/// (`K = KH·KW·C_in`), `relu?(conv + bias? + residual?)` applied as the GEMM stores.
/// Panics when the shapes disagree (a caller bug).
pub(crate) fn conv2d_nhwc_packed(
    x: &Tensor,
    g: &Conv2dGeometry,
    packed: PackedRhs<'_>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
) -> Tensor {
    assert_eq!(x.shape.len(), 4, "conv expects an NHWC tensor");
    let (n, h, w, c_in) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    assert_eq!(c_in, g.in_channels, "input channels differ from the convolution's");
    assert_eq!(g.groups, 1, "packed convolutions are ungrouped");
    let (oh, ow) = g.output_hw(h, w);
    let c_out = g.out_channels;
    assert_eq!((packed.k(), packed.n()), (g.filter_len(), c_out), "packed weights differ from the geometry");
    let rows = n * oh * ow;
    if let Some(r) = residual {
        assert_eq!(r.len(), rows * c_out, "residual must have the output's shape");
    }
    if rows == 0 || c_out == 0 {
        return Tensor::zeros(&[n, oh, ow, c_out]);
    }
    // Every value is written by the GEMM (no accumulation), so a reused buffer needs no clearing.
    let shape = [n, oh, ow, c_out];
    let mut out = Tensor::from_vec(&shape, take_buffer(rows * c_out)).unwrap_or_else(|| Tensor::zeros(&shape));
    let e = PackedEpilogue { bias, residual, relu, accumulate: false };
    let pointwise = g.is_pointwise() && g.stride == 1;
    if pointwise {
        // The NHWC input already is the [rows, C_in] matrix.
        packed.matmul(&x.data, rows, c_in, &mut out.data, &e);
        return out;
    }
    // Each parallel tile of output rows reads its patches straight from the (padded) input
    // where it can; otherwise it builds them (im2col) on its thread, and multiplies them
    // while they are in cache: no patch matrix goes through memory.
    let k = g.filter_len();
    match packed {
        PackedRhs::F32(p) if conv_implicit::suits(g) => conv_implicit::conv2d_implicit(x, g, p, &mut out.data, &e),
        PackedRhs::F32(p) => for_each_row_tile(rows, c_out, &mut out.data, &e, |row0, tile_rows, out_tile, tile_e| {
            with_patch_buffer(|patches| {
                if patches.len() < tile_rows * k {
                    patches.resize(tile_rows * k, 0.0);
                }
                let patches = &mut patches[..tile_rows * k];
                im2col_rows(x, g, (oh, ow), 0, row0, patches);
                packed_matmul_serial(Lhs::rows(patches, k), tile_rows, p, out_tile, tile_e);
            })
        }),
        PackedRhs::Bf16(p) => {
            // With an even channel count, each tap's channels are whole bf16 pairs: where
            // patches read each input value more than once (3x3, not 1x1 stride 2), the
            // input is converted once and the patch rows are copied from it as pairs.
            let reused = g.kernel_h * g.kernel_w > g.stride * g.stride;
            let pairs = if p.takes_pairs() && c_in.is_multiple_of(2) && reused { bf16_pairs_of(&x.data) } else { None };
            match pairs {
                Some(pairs) => {
                    let source = PairPatchRows { pairs: &pairs, hwc: (h, w, c_in / 2), geometry: g, out_hw: (oh, ow) };
                    packed_matmul_bf16_rows(&source, rows, p, &mut out.data, &e);
                    recycle_pairs(pairs);
                }
                None => {
                    let source = PatchRows { x, geometry: g, out_hw: (oh, ow) };
                    packed_matmul_bf16_rows(&source, rows, p, &mut out.data, &e);
                }
            }
        }
    }
    out
}

/// The im2col rows of a convolution from its input already in bf16 pairs (`hwc`: height,
/// width and pairs per pixel), for the native bf16 kernel.
struct PairPatchRows<'a> {
    pairs: &'a [u32],
    hwc: (usize, usize, usize),
    geometry: &'a Conv2dGeometry,
    out_hw: (usize, usize),
}

impl RowSource for PairPatchRows<'_> {
    /// The row widened back to f32 (exact); the kernel takes [`Self::row_pairs`] instead.
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        let mut pairs = vec![0u32; scratch.len() / 2];
        self.row_pairs(r, &mut pairs);
        for (two, pair) in scratch.chunks_mut(2).zip(&pairs) {
            two[0] = bf16_to_f32(*pair as u16);
            two[1] = bf16_to_f32((*pair >> 16) as u16);
        }
        scratch
    }

    fn row_pairs(&self, r: usize, dst: &mut [u32]) -> bool {
        im2col_rows_of(self.pairs, self.hwc, self.geometry, self.out_hw, 0, r, dst);
        true
    }
}

/// The im2col rows of a convolution, built one at a time for the bf16 kernel.
struct PatchRows<'a> {
    x: &'a Tensor,
    geometry: &'a Conv2dGeometry,
    out_hw: (usize, usize),
}

impl RowSource for PatchRows<'_> {
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        im2col_rows(self.x, self.geometry, self.out_hw, 0, r, scratch);
        scratch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::packed_gemm_bf16::f32_to_bf16;
    use crate::kernels::winograd::tests::geometry_3x3;
    use crate::prng::SplitMix64;

    /// Patch rows copied from the input in bf16 pairs are the f32 patch rows converted:
    /// padding, both strides, rows across images.
    #[test]
    fn pair_patch_rows_are_converted_patch_rows() {
        let mut rng = SplitMix64::new(12);
        for (stride, h, w, c) in [(1, 5, 6, 4), (2, 7, 5, 6)] {
            let g = Conv2dGeometry {
                in_channels: c,
                out_channels: 3,
                kernel_h: 3,
                kernel_w: 3,
                stride,
                padding: 1,
                groups: 1,
            };
            let x = Tensor::from_vec(&[2, h, w, c], random(&mut rng, 2 * h * w * c)).unwrap();
            let to_pair = |two: &[f32]| f32_to_bf16(two[0]) as u32 | (f32_to_bf16(two[1]) as u32) << 16;
            let pairs: Vec<u32> = x.data.chunks(2).map(to_pair).collect();
            let out_hw = g.output_hw(h, w);
            let from_f32 = PatchRows { x: &x, geometry: &g, out_hw };
            let from_pairs = PairPatchRows { pairs: &pairs, hwc: (h, w, c / 2), geometry: &g, out_hw };
            let k = g.filter_len();
            for r in 0..2 * out_hw.0 * out_hw.1 {
                let mut row = vec![0.0; k];
                let expected: Vec<u32> = from_f32.row(r, &mut row).chunks(2).map(to_pair).collect();
                let mut got = vec![0; k / 2];
                assert!(from_pairs.row_pairs(r, &mut got));
                assert_eq!(got, expected, "stride {stride}, row {r}");
                let mut widened = vec![0.0; k];
                let rounded: Vec<f32> = row.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect();
                assert_eq!(from_pairs.row(r, &mut widened), &rounded[..]);
            }
        }
    }

    fn random(rng: &mut SplitMix64, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform_f32(-1.0, 1.0)).collect()
    }

    /// In bf16, 3x3 stride-1 layers of 128 channels and more compile to Winograd F(2x2)
    /// where the native kernel runs (and not with `winograd: false`, nor below 128
    /// channels); its result stays within 1% of the largest output of direct f32, as
    /// direct bf16's does.
    #[test]
    fn bf16_winograd_is_chosen_by_width_and_option() {
        let mut rng = SplitMix64::new(14);
        let native = winograd_bf16::suits(&geometry_3x3(128, 128));
        for (c, winograd, expected) in [(128, true, native), (128, false, false), (64, true, false)] {
            let g = geometry_3x3(c, c);
            let weight: Vec<f32> = random(&mut rng, g.weight_len()).iter().map(|w| w * 0.05).collect();
            let (scale, shift) = (vec![1.0; c], random(&mut rng, c));
            let options = CompileOptions { precision: Precision::Bf16, winograd };
            let conv = PackedConv::compile(g, &weight, &scale, shift.clone(), options);
            assert_eq!(matches!(conv.weights, Weights::WinogradBf16(_)), expected, "{c} channels, winograd {winograd}");
            let x: Vec<f32> = random(&mut rng, 2 * 6 * 5 * c).iter().map(|v| v.max(0.0)).collect();
            let x = Tensor::from_vec(&[2, 6, 5, c], x).unwrap();
            let e = Epilogue { scale: None, shift: Some(&shift), residual: None, relu: true };
            let exact = conv2d_nhwc_direct(&x, &weight, &g, &e);
            let got = conv.forward(&x, None, true);
            let peak = exact.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = got.data.iter().zip(&exact.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-2 * peak, "{c} channels, winograd {winograd}: error {err} of {peak}");
        }
    }

    /// A 3x3 layer too wide to hold transformed for one image runs direct on one small
    /// image, and by Winograd (transformed from its packed weights on first use) on a batch:
    /// both equal to direct convolution (Winograd within 1e-5 of the largest output).
    #[test]
    fn wide_layers_switch_to_winograd_for_batches() {
        let mut rng = SplitMix64::new(10);
        let (c_in, c_out) = (257, 256);
        assert!(c_in * c_out > WINOGRAD_MAX_CHANNELS_PRODUCT);
        let g = geometry_3x3(c_in, c_out);
        let weight: Vec<f32> = random(&mut rng, g.weight_len()).iter().map(|w| w * 0.05).collect();
        let scale: Vec<f32> = random(&mut rng, c_out).iter().map(|s| 0.5 + s.abs()).collect();
        let shift = random(&mut rng, c_out);
        let conv = PackedConv::compile(g, &weight, &scale, shift.clone(), CompileOptions::default());
        let direct_bytes = conv.weight_bytes();
        for n in [1, 4] {
            let x = Tensor::from_vec(&[n, 7, 7, c_in], random(&mut rng, n * 49 * c_in)).unwrap();
            let e = Epilogue { scale: Some(&scale), shift: Some(&shift), residual: None, relu: true };
            let expected = conv2d_nhwc_direct(&x, &weight, &g, &e);
            let got = conv.forward(&x, None, true);
            let peak = expected.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = got.data.iter().zip(&expected.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-5 * peak, "batch {n}: error {err} of {peak}");
            let transformed = conv.weight_bytes() > direct_bytes;
            assert_eq!(transformed, n == 4, "batch {n}: transformed filters held: {transformed}");
        }
    }

    /// Equal to the unpacked convolution with the same BN as an epilogue, for every kind of
    /// convolution in the family (stem 7x7/2, 3x3 /1 and /2, 1x1 /1 and /2, grouped), with
    /// and without residual and ReLU. Different summation order: 1e-5 absolute + relative.
    #[test]
    fn packed_equals_unpacked_convolution() {
        let mut rng = SplitMix64::new(9);
        let geometry = |c_in, c_out, k, stride, padding, groups| Conv2dGeometry {
            in_channels: c_in,
            out_channels: c_out,
            kernel_h: k,
            kernel_w: k,
            stride,
            padding,
            groups,
        };
        for (g, hw) in [
            (geometry(3, 16, 7, 2, 3, 1), 15),
            (geometry(8, 40, 3, 1, 1, 1), 9),
            (geometry(8, 16, 3, 2, 1, 1), 9),
            (geometry(24, 33, 1, 1, 0, 1), 5),
            (geometry(16, 32, 1, 2, 0, 1), 7),
            (geometry(8, 8, 3, 1, 1, 4), 6),
        ] {
            let x =
                Tensor::from_vec(&[2, hw, hw, g.in_channels], random(&mut rng, 2 * hw * hw * g.in_channels)).unwrap();
            let weight = random(&mut rng, g.weight_len());
            let scale = random(&mut rng, g.out_channels);
            let shift = random(&mut rng, g.out_channels);
            let (oh, ow) = g.output_hw(hw, hw);
            let residual =
                Tensor::from_vec(&[2, oh, ow, g.out_channels], random(&mut rng, 2 * oh * ow * g.out_channels)).unwrap();
            let packed = PackedConv::new(g, &weight, &scale, shift.clone());
            for (with_residual, relu) in [(false, false), (true, true), (false, true)] {
                let r = with_residual.then_some(&residual);
                let e =
                    Epilogue { scale: Some(&scale), shift: Some(&shift), residual: r.map(|r| r.data.as_slice()), relu };
                let expected = conv2d_nhwc_direct(&x, &weight, &g, &e);
                let got = packed.forward(&x, r, relu);
                assert_eq!(got.shape, expected.shape);
                for (a, b) in got.data.iter().zip(&expected.data) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{g:?}: {a} vs {b}");
                }
            }
        }
    }
}
