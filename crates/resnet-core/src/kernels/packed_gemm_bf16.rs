//! bf16 inference GEMM: `out[M, N] = epilogue(bf16(a)[M, K] · bf16(B)[K, N])` with every
//! product summed in f32.
//!
//! The weights `B` are rounded to bfloat16 once, when packed; the activations `a` are
//! rounded as each tile of rows is converted for the kernel (or, for 3x3 convolutions, once
//! per layer by `bf16_pairs_of`, their patch rows then copied as pairs through
//! `RowSource::row_pairs`); sums, bias, residual and output stay f32. bf16 keeps f32's exponent and 8 bits of mantissa, so each rounding is at most
//! 2^-9 relative, and the errors of a long sum mostly cancel.
//!
//! Paths:
//! - **Native** (AVX512-BF16): `B` packed as bf16 pairs, `panel[k/2][0..NR]` holding
//!   `(B[k][c], B[k+1][c])` in one 32-bit lane; `vdpbf16ps` adds both products of a pair to an
//!   f32 lane, so one instruction does 32 multiply-adds (twice AVX-512F's `vfmadd` on f32).
//!   The micro-kernel is the f32 one's ([`super::packed_gemm`]) with pairs instead of values:
//!   `MR × NR` sums in registers, one broadcast pair of `a` per row, the same fused epilogue.
//! - **Emulated** (any CPU): `B` rounded to bf16 but stored as f32, `a` rounded per tile, then
//!   the f32 path. Products of two bf16 values are exact in f32, so this computes the same
//!   sums as the native path up to the order of f32 additions; it is for CPUs without
//!   AVX512-BF16 (and for `RESNET_PORTABLE_KERNELS=1`), not for speed.

use std::cell::RefCell;

use rayon::prelude::*;

use super::packed_gemm::{
    avx512_available, best_path, for_each_row_tile, packed_matmul_serial, GemmPath, Lhs, PackedEpilogue, PackedMatrix,
    MAX_TILE_ROWS, NR,
};
use super::peak::has_avx512_bf16;

/// f32 to bfloat16, rounding to nearest with ties to even (as `vcvtneps2bf16`); NaN stays NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    // Adding 0x7FFF plus the lowest kept bit rounds half to even; it cannot overflow for a
    // finite or infinite value (the largest, 0xFF80_0000, stays below 2^32).
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// bfloat16 to f32 (exact).
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `x` rounded to the nearest bf16 value, as f32.
pub fn round_to_bf16(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

/// Which implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    Native,
    Emulated,
}

/// Native when the CPU has AVX512-BF16 and `RESNET_PORTABLE_KERNELS=1` is not set.
pub fn best_bf16_path() -> Bf16Path {
    if best_path() == GemmPath::Avx512 && has_avx512_bf16() && avx512vl_available() {
        Bf16Path::Native
    } else {
        Bf16Path::Emulated
    }
}

fn avx512vl_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `B[K, N]` rounded to bf16 and packed for [`packed_matmul_bf16`].
#[derive(Clone, Debug)]
pub struct PackedMatrixBf16 {
    k: usize,
    n: usize,
    storage: Storage,
}

#[derive(Clone, Debug)]
enum Storage {
    /// `ceil(N / NR)` panels of `ceil(K / 2)` rows of `NR` bf16 pairs (zero past `K`, `N`).
    Pairs(Vec<u32>),
    /// bf16 values held as f32, for the emulated path.
    Rounded(PackedMatrix),
}

impl PackedMatrixBf16 {
    /// As [`PackedMatrix::from_rows`] (`rows` is `[N, K]`, `scale` one per column), rounded
    /// to bf16 after scaling, for the path this CPU runs.
    pub fn from_rows(rows: &[f32], n: usize, k: usize, scale: Option<&[f32]>) -> PackedMatrixBf16 {
        Self::from_rows_for(best_bf16_path(), rows, n, k, scale)
    }

    /// [`Self::from_rows`] for a chosen path.
    pub fn from_rows_for(path: Bf16Path, rows: &[f32], n: usize, k: usize, scale: Option<&[f32]>) -> PackedMatrixBf16 {
        assert_eq!(rows.len(), n * k, "weights must hold N × K values");
        if let Some(s) = scale {
            assert_eq!(s.len(), n, "one scale per output column");
        }
        let value = |j: usize, kk: usize| f32_to_bf16(rows[j * k + kk] * scale.map_or(1.0, |s| s[j]));
        let storage = match path {
            Bf16Path::Native => {
                let pairs = k.div_ceil(2);
                let panel_count = n.div_ceil(NR);
                let mut panels = vec![0u32; panel_count * pairs * NR];
                for (p, panel) in panels.chunks_mut((pairs * NR).max(1)).enumerate().take(panel_count) {
                    for col in 0..NR.min(n - p * NR) {
                        let j = p * NR + col;
                        for kp in 0..pairs {
                            let low = value(j, 2 * kp) as u32;
                            let high = if 2 * kp + 1 < k { value(j, 2 * kp + 1) as u32 } else { 0 };
                            panel[kp * NR + col] = low | (high << 16);
                        }
                    }
                }
                Storage::Pairs(panels)
            }
            Bf16Path::Emulated => {
                let rounded: Vec<f32> = (0..n * k).map(|i| bf16_to_f32(value(i / k, i % k))).collect();
                Storage::Rounded(PackedMatrix::from_rows(&rounded, n, k, None))
            }
        };
        PackedMatrixBf16 { k, n, storage }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes held by the packed weights.
    pub fn bytes(&self) -> usize {
        match &self.storage {
            Storage::Pairs(p) => 4 * p.len(),
            Storage::Rounded(m) => 4 * m.k() * m.n().next_multiple_of(NR),
        }
    }

    fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// Whether the native kernel runs these weights (and so takes bf16 pairs as they are).
    pub(crate) fn takes_pairs(&self) -> bool {
        matches!(self.storage, Storage::Pairs(_))
    }
}

thread_local! {
    /// Buffers of bf16 pairs handed back by [`recycle_pairs`].
    static PAIR_BUFFERS: RefCell<Vec<Vec<u32>>> = const { RefCell::new(Vec::new()) };
}

/// Values converted per parallel task by [`bf16_pairs_of`].
const PAIRS_PER_TASK: usize = 1 << 14;

/// `values` (an even number) as bf16 pairs, converted in parallel into a reused buffer
/// (hand it back with [`recycle_pairs`]); `None` where the native kernel does not run.
/// A layer's input converted once, where building each patch row from f32 converted
/// every input value once per filter tap (9 times for 3x3).
pub(crate) fn bf16_pairs_of(values: &[f32]) -> Option<Vec<u32>> {
    if best_bf16_path() != Bf16Path::Native || !values.len().is_multiple_of(2) {
        return None;
    }
    // Every lane is written below; growing is the only clearing needed.
    let mut pairs = take_pairs(values.len() / 2);
    pairs.par_chunks_mut(PAIRS_PER_TASK).zip(values.par_chunks(2 * PAIRS_PER_TASK)).for_each(|(dst, src)| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the native path runs only where AVX512-BF16 and AVX512VL were detected.
        unsafe {
            avx512_bf16::convert_row(src, dst)
        };
    });
    Some(pairs)
}

/// Gives a buffer from [`bf16_pairs_of`] back (at most four are kept per thread).
pub(crate) fn recycle_pairs(pairs: Vec<u32>) {
    PAIR_BUFFERS.with_borrow_mut(|free| {
        if free.len() < 4 {
            free.push(pairs);
        }
    });
}

/// Per-thread scratch, reused across calls so converting allocates nothing after warm-up.
#[derive(Default)]
struct Scratch {
    /// One tile's rows as bf16 pairs (native path).
    pairs: Vec<u32>,
    /// One tile's rows rounded to bf16 as f32 (emulated path).
    rounded: Vec<f32>,
    /// One row of `a` when the source builds it (im2col).
    row: Vec<f32>,
}

thread_local! {
    static TILE_SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The rows of a left operand `a[M, K]`, read in place or built on demand.
pub(crate) trait RowSource: Sync {
    /// Row `r`'s K values: borrowed from the source, or written into `scratch` (K long).
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [f32]) -> &'s [f32];

    /// Row `r` as bf16 pairs into `dst` (`ceil(K / 2)` lanes), for a source that holds
    /// bf16 values already; `false` (the default) means use [`Self::row`] and convert.
    fn row_pairs(&self, _r: usize, _dst: &mut [u32]) -> bool {
        false
    }
}

/// A row-major matrix with row stride `lda`.
struct DenseRows<'a> {
    a: &'a [f32],
    lda: usize,
    k: usize,
}

impl RowSource for DenseRows<'_> {
    fn row<'s>(&'s self, r: usize, _scratch: &'s mut [f32]) -> &'s [f32] {
        &self.a[r * self.lda..r * self.lda + self.k]
    }
}

/// `out[M, N] = epilogue(a[M, K] · b)` in bf16 with f32 sums, `a` row-major with row stride
/// `lda` (≥ K), `out` dense `[M, N]`. Panics when the slices are too short for the shapes
/// (a caller bug). Uses the current rayon pool.
pub fn packed_matmul_bf16(
    a: &[f32],
    m: usize,
    lda: usize,
    b: &PackedMatrixBf16,
    out: &mut [f32],
    e: &PackedEpilogue<'_>,
) {
    let k = b.k;
    assert!(lda >= k, "row stride of a must be at least K");
    if m > 0 && k > 0 {
        assert!(a.len() >= (m - 1) * lda + k, "a is too short for M × K");
    }
    packed_matmul_bf16_rows(&DenseRows { a, lda, k }, m, b, out, e);
}

/// [`packed_matmul_bf16`] with the rows of `a` from `source`: each tile of rows is built
/// and converted to bf16 while it is in cache (for convolutions, im2col and conversion in
/// one pass per row, with no patch matrix in memory).
pub(crate) fn packed_matmul_bf16_rows(
    source: &impl RowSource,
    m: usize,
    b: &PackedMatrixBf16,
    out: &mut [f32],
    e: &PackedEpilogue<'_>,
) {
    let (k, n) = (b.k, b.n);
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
    match &b.storage {
        Storage::Rounded(packed) => for_each_row_tile(m, n, out, e, |row0, rows, out_tile, tile_e| {
            TILE_SCRATCH.with_borrow_mut(|Scratch { rounded, row, .. }| {
                row.resize(k, 0.0);
                rounded.clear();
                for r in row0..row0 + rows {
                    rounded.extend(source.row(r, row).iter().map(|&v| round_to_bf16(v)));
                }
                // One thread per tile: the tiles already run in parallel.
                packed_matmul_serial(Lhs::rows(rounded, k), rows, packed, out_tile, tile_e);
            })
        }),
        Storage::Pairs(panels) => {
            assert!(
                avx512_available() && has_avx512_bf16() && avx512vl_available(),
                "bf16 pairs are packed only where AVX512-BF16 runs"
            );
            let pairs = b.pairs();
            let stride = converted_row_stride(pairs);
            for_each_row_tile(m, n, out, e, |row0, rows, out_tile, tile_e| {
                TILE_SCRATCH.with_borrow_mut(|Scratch { pairs: converted, row, .. }| {
                    row.resize(k, 0.0);
                    // convert_row writes every lane, so growing is the only clearing needed.
                    if converted.len() < rows * stride {
                        converted.resize(rows * stride, 0);
                    }
                    let converted = &mut converted[..rows * stride];
                    for (r, row_and_padding) in converted.chunks_mut(stride.max(1)).enumerate() {
                        let dst = &mut row_and_padding[..pairs];
                        if source.row_pairs(row0 + r, dst) {
                            continue;
                        }
                        let src = source.row(row0 + r, row);
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: AVX512-BF16 was detected just above.
                        unsafe {
                            avx512_bf16::convert_row(src, dst)
                        };
                    }
                    #[cfg(target_arch = "x86_64")]
                    avx512_bf16::tile((converted, stride), pairs, rows, panels, n, out_tile, tile_e);
                })
            });
        }
    }
}

/// The distance between a tile's converted rows of `pairs` lanes: one cache line more where
/// `pairs` lanes are a multiple of 4 KiB (K = 2048, ResNet-50's layer4 1x1 convolutions),
/// since the micro-kernel's twelve rows would otherwise share one L1 set (`gemm_timing`,
/// M 784 × K 2048 × N 512, one thread: 122 -> 168 GFLOP/s; see `packed_gemm`'s copy of
/// such rows in f32).
fn converted_row_stride(pairs: usize) -> usize {
    const LANES_PER_4_KIB: usize = 4096 / size_of::<u32>();
    if pairs > 0 && pairs.is_multiple_of(LANES_PER_4_KIB) {
        pairs + 16
    } else {
        pairs
    }
}

/// `out[M, N] = a · b` with `a` already in bf16 pairs: row `i` is `b.k() / 2` pairs at
/// `a[i·row_stride..]`. On the calling thread, for callers that run independent products
/// in parallel (Winograd's 16 per convolution); rows in blocks as the parallel version's
/// tiles. Panics unless `b` is packed for the native kernel ([`PackedMatrixBf16::takes_pairs`])
/// with an even `K`, or when the slices are too short (caller bugs).
pub(crate) fn packed_matmul_bf16_pairs_serial(
    a: &[u32],
    m: usize,
    row_stride: usize,
    b: &PackedMatrixBf16,
    out: &mut [f32],
) {
    let (pairs, n) = (b.pairs(), b.n);
    assert!(b.k.is_multiple_of(2), "pairs hold an even K");
    assert!(row_stride >= pairs, "rows of pairs must not overlap");
    assert_eq!(out.len(), m * n, "out must be M × N");
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * row_stride + pairs, "a is too short for M rows");
    let Storage::Pairs(panels) = &b.storage else {
        panic!("bf16 pairs are multiplied only by weights packed for the native kernel");
    };
    assert!(avx512_available() && has_avx512_bf16() && avx512vl_available(), "native bf16 needs AVX512-BF16");
    for (t, out_tile) in out.chunks_mut(MAX_TILE_ROWS * n).enumerate() {
        let row0 = t * MAX_TILE_ROWS;
        let rows = out_tile.len() / n;
        #[cfg(target_arch = "x86_64")]
        avx512_bf16::tile(
            (&a[row0 * row_stride..], row_stride),
            pairs,
            rows,
            panels,
            n,
            out_tile,
            &PackedEpilogue::default(),
        );
    }
}

/// A buffer of at least `len` pairs from those handed back by [`recycle_pairs`] (or a new
/// one), `len` long, its values unspecified: for callers that write every lane.
pub(crate) fn take_pairs(len: usize) -> Vec<u32> {
    let reused = PAIR_BUFFERS.with_borrow_mut(|free| {
        let best = free.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity());
        best.map(|(i, _)| i).map(|i| free.swap_remove(i))
    });
    let mut pairs = reused.unwrap_or_default();
    pairs.resize(len, 0);
    pairs
}

#[cfg(target_arch = "x86_64")]
mod avx512_bf16 {
    use std::arch::x86_64::*;

    use super::super::packed_gemm::avx512::{
        for_each_block_and_panel, initial_sums, prefetch_destination_row, store_sums, Destination,
    };
    use super::super::packed_gemm::{micro_kernel_for, walk_micro_tiles, PackedEpilogue, MR, NR};

    /// Pairs of `K` per block: a block of one panel is `KC_PAIRS × NR × 4` bytes = 32 KiB.
    const KC_PAIRS: usize = 256;

    /// `src` (K values) to bf16 pairs in `dst` (`ceil(K / 2)` lanes, the last one's high
    /// half zero when K is odd), rounding to nearest even as [`super::f32_to_bf16`].
    ///
    /// # Safety
    /// The CPU supports AVX-512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
    pub(super) unsafe fn convert_row(src: &[f32], dst: &mut [u32]) {
        assert_eq!(dst.len(), src.len().div_ceil(2));
        let mut i = 0;
        while i < src.len() {
            let valid = (src.len() - i).min(16);
            let mask = if valid == 16 { 0xFFFF } else { ((1u32 << valid) - 1) as u16 };
            // SAFETY: the masked load reads `valid` values from `src[i..]`, all in bounds;
            // the store writes `valid.div_ceil(2)` lanes of `dst[i/2..]`, in bounds since
            // dst holds ceil(len / 2). Masked-off input lanes load as 0.0 (bf16 zero).
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, src.as_ptr().add(i));
                let bf16: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                let lanes = valid.div_ceil(2);
                let store_mask = ((1u32 << lanes) - 1) as u8;
                _mm256_mask_storeu_epi32(dst.as_mut_ptr().add(i / 2) as *mut i32, store_mask, bf16);
            }
            i += 16;
        }
    }

    /// One tile of `rows` rows: `a` holds them as bf16 pairs (`pairs` per row, rows
    /// `row_stride` apart), `panels` the
    /// packed weights; loops as the f32 tile (blocks of `K`, panels, `MR` rows).
    pub(super) fn tile(
        (a, row_stride): (&[u32], usize),
        pairs: usize,
        rows: usize,
        panels: &[u32],
        n: usize,
        out: &mut [f32],
        e: &PackedEpilogue<'_>,
    ) {
        for_each_block_and_panel(pairs, KC_PAIRS, n, |kp0, kc, p| {
            let mut block = Block {
                a: &a[kp0..],
                row_stride,
                kc,
                panel: &panels[(p * pairs + kp0) * NR..(p * pairs + kp0 + kc) * NR],
                dest: Destination::new(out, n, 0, p, kp0 == 0 && !e.accumulate, kp0 + kc == pairs, e),
            };
            // SAFETY: the caller checked AVX-512F and AVX512-BF16 at run time.
            unsafe { all_rows(&mut block, rows) };
        });
    }

    /// Runs `block` (one block of `K` of one panel, from a tile's first row) over `rows`
    /// rows, micro-tile after micro-tile, inside one function (as the f32 tile's).
    ///
    /// # Safety
    /// The CPU supports AVX-512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn all_rows(block: &mut Block<'_>, rows: usize) {
        // SAFETY: AVX-512F and AVX512-BF16 by this function's contract.
        unsafe { walk_micro_tiles!(block, rows, kernel, dispatch) }
    }

    /// One micro-tile's operands: `mr` rows of bf16 pairs over `kc` pairs and a `kc × NR`
    /// block of a panel.
    struct Block<'a> {
        a: &'a [u32],
        row_stride: usize,
        kc: usize,
        panel: &'a [u32],
        dest: Destination<'a>,
    }

    impl Block<'_> {
        /// Moves down `rows` rows of `a` and of the destination.
        fn advance(&mut self, rows: usize) {
            self.a = &self.a[rows * self.row_stride..];
            self.dest.advance(rows);
        }

        fn check(&self, mr: usize) {
            self.dest.check(mr);
            if self.kc > 0 {
                assert!(self.a.len() >= (mr - 1) * self.row_stride + self.kc);
            }
            assert!(self.panel.len() >= self.kc * NR);
        }
    }

    /// # Safety
    /// The CPU supports AVX-512F and AVX512-BF16, and `block.check(mr)` passed.
    unsafe fn dispatch(mr: usize, block: &mut Block<'_>) {
        // SAFETY (each arm): forwarded from this function's contract; `REGS = 1` only when
        // the panel has at most 16 columns, which is all that kernel reads and writes.
        unsafe { micro_kernel_for!(kernel, mr, block.dest.cols > 16, block) }
    }

    /// `ROWS × 16·REGS` f32 sums in registers; each step broadcasts one bf16 pair of each
    /// row and adds both of its products with one `vdpbf16ps` per register.
    ///
    /// # Safety
    /// The CPU supports AVX-512F and AVX512-BF16, `block.check(ROWS)` passed, and `REGS` is
    /// 1 or 2 with `REGS = 1` only when `block.dest.cols ≤ 16`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn kernel<const ROWS: usize, const REGS: usize>(block: &mut Block<'_>) {
        let a = block.a.as_ptr();
        let b = block.panel.as_ptr();
        let rs = block.row_stride;
        // SAFETY: `check(ROWS)` bounds every offset: pair kp < kc of rows r < ROWS of `a` at
        // r·rs + kp; panel rows kp < kc of NR lanes (REGS·16 ≤ NR); the destination as
        // `initial_sums` and `store_sums` require. The transmutes reinterpret 512 bits of
        // integer lanes as bf16 pairs (same size, every bit pattern valid).
        unsafe {
            let mut acc = initial_sums::<ROWS, REGS>(&block.dest);
            for kp in 0..block.kc {
                if kp < ROWS {
                    prefetch_destination_row::<REGS>(&block.dest, kp);
                }
                let mut bv = [_mm512_setzero_si512(); REGS];
                for (j, v) in bv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(b.add(kp * NR + 16 * j) as *const __m512i);
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let pair = _mm512_set1_epi32(*a.add(r * rs + kp) as i32);
                    for (v, bj) in acc_r.iter_mut().zip(&bv) {
                        *v = _mm512_dpbf16_ps(
                            *v,
                            std::mem::transmute::<__m512i, __m512bh>(pair),
                            std::mem::transmute::<__m512i, __m512bh>(*bj),
                        );
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

    /// The once-per-layer conversion equals the scalar rounding, across its parallel
    /// chunks (a length that leaves a short last chunk), and reuses a handed-back buffer.
    #[test]
    fn pairs_of_a_layer_input_equal_scalar_rounding() {
        let mut rng = SplitMix64::new(31);
        let values: Vec<f32> = (0..2 * (2 * PAIRS_PER_TASK + 3)).map(|_| rng.uniform_f32(-3.0, 3.0)).collect();
        let Some(pairs) = bf16_pairs_of(&values) else {
            assert_ne!(best_bf16_path(), Bf16Path::Native, "the native path converts");
            return;
        };
        let expected: Vec<u32> =
            values.chunks(2).map(|two| f32_to_bf16(two[0]) as u32 | (f32_to_bf16(two[1]) as u32) << 16).collect();
        assert_eq!(pairs, expected);
        let ptr = pairs.as_ptr();
        recycle_pairs(pairs);
        let again = bf16_pairs_of(&values[..10]).unwrap();
        assert_eq!(again.as_ptr(), ptr, "the buffer is reused");
        assert_eq!(again, expected[..5]);
        assert!(bf16_pairs_of(&values[..3]).is_none(), "an odd count has no pairs");
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(f32_to_bf16(1.0 + 1.5 / 256.0), 0x3F81);
        assert_eq!(f32_to_bf16(-2.0), 0xC000);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7F80);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7F80, "rounds up past the largest bf16");
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        let mut rng = SplitMix64::new(1);
        for _ in 0..1000 {
            let x = rng.uniform_f32(-100.0, 100.0);
            assert!((round_to_bf16(x) - x).abs() <= x.abs() / 256.0, "{x}");
        }
    }

    /// Both paths against a plain f64 sum of the bf16-rounded operands, for every remainder:
    /// odd K (a half-empty last pair), K across blocks of 512, rows not a multiple of MR,
    /// panels of 1, 16, 17 and 32 columns, row stride above K, with each epilogue. The
    /// products are exact in f32 on both paths; only the order (and, natively, pairing) of
    /// f32 additions differs: 1e-4 absolute + 1e-5 relative for sums of up to 1100 terms.
    #[test]
    fn both_paths_equal_the_bf16_rounded_definition() {
        let mut rng = SplitMix64::new(11);
        let random =
            |rng: &mut SplitMix64, len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform_f32(-1.0, 1.0)).collect() };
        for &(m, n, k, extra_lda) in
            &[(1, 1, 1, 0), (13, 17, 5, 3), (25, 32, 147, 0), (30, 40, 513, 1), (7, 1000, 64, 0), (29, 16, 1100, 0)]
        {
            let lda = k + extra_lda;
            let a = random(&mut rng, m * lda);
            let rows = random(&mut rng, n * k);
            let scale = random(&mut rng, n);
            let bias = random(&mut rng, n);
            let residual = random(&mut rng, m * n);
            let start = random(&mut rng, m * n);
            for (with_bias, with_residual, relu, accumulate) in
                [(false, false, false, false), (true, true, true, false), (true, false, true, true)]
            {
                let e = PackedEpilogue {
                    bias: with_bias.then_some(bias.as_slice()),
                    residual: with_residual.then_some(residual.as_slice()),
                    relu,
                    accumulate,
                };
                let mut expected = vec![0.0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut s = if accumulate { start[i * n + j] as f64 } else { 0.0 };
                        for kk in 0..k {
                            let w = round_to_bf16(rows[j * k + kk] * scale[j]);
                            s += round_to_bf16(a[i * lda + kk]) as f64 * w as f64;
                        }
                        s += e.bias.map_or(0.0, |b| b[j] as f64) + e.residual.map_or(0.0, |r| r[i * n + j] as f64);
                        expected[i * n + j] = if relu { s.max(0.0) as f32 } else { s as f32 };
                    }
                }
                let mut paths = vec![Bf16Path::Emulated];
                if best_bf16_path() == Bf16Path::Native {
                    paths.push(Bf16Path::Native);
                } else {
                    eprintln!("AVX512-BF16 not available here: only the emulated path is tested");
                }
                for path in paths {
                    let packed = PackedMatrixBf16::from_rows_for(path, &rows, n, k, Some(&scale));
                    let mut out = if accumulate { start.clone() } else { vec![f32::NAN; m * n] };
                    packed_matmul_bf16(&a, m, lda, &packed, &mut out, &e);
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

    /// The vector conversion of a row rounds exactly as [`f32_to_bf16`], odd lengths included.
    #[test]
    fn native_row_conversion_equals_scalar_rounding() {
        if best_bf16_path() != Bf16Path::Native {
            eprintln!("AVX512-BF16 not available here: skipped");
            return;
        }
        let mut rng = SplitMix64::new(12);
        for len in [1usize, 2, 15, 16, 17, 33, 147] {
            let src: Vec<f32> = (0..len).map(|_| rng.uniform_f32(-1e3, 1e3)).collect();
            let mut dst = vec![0u32; len.div_ceil(2)];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX512-BF16 detected above.
            unsafe {
                avx512_bf16::convert_row(&src, &mut dst)
            };
            for (i, &x) in src.iter().enumerate() {
                let lane = dst[i / 2];
                let half = if i % 2 == 0 { lane as u16 } else { (lane >> 16) as u16 };
                assert_eq!(half, f32_to_bf16(x), "len {len} value {i}: {x}");
            }
            if len % 2 == 1 {
                assert_eq!(dst[len / 2] >> 16, 0, "the odd last pair's high half is zero");
            }
        }
    }
}
