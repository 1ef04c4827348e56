//! The machine's arithmetic limit: how many floating-point operations per second this CPU's
//! vector units can retire when nothing else gets in the way.
//!
//! Each worker runs [`CHAINS`] independent chains of fused multiply-adds on registers only
//! (no memory traffic), enough chains to hide the FMA latency on every current x86 core
//! (latency 4-5 cycles × up to 2 FMA ports). All threads of the current rayon pool run at
//! once, so the figure is the whole machine's, as the convolutions use it. A kernel's share
//! of this peak tells how much room is left; nothing real reaches 100%.
//!
//! Paths, picked at run time: AVX-512F (16 lanes), AVX2+FMA (8 lanes), and a portable
//! multiply-add over plain arrays that the compiler vectorises as far as the target allows.
//! bf16: AVX512-BF16's `vdpbf16ps` (32 bf16 products summed into 16 f32 lanes).

use std::time::{Duration, Instant};

/// Independent accumulator chains per worker.
pub const CHAINS: usize = 12;

/// Iterations per timed slice of the loop (checked against the clock between slices).
const ITERATIONS_PER_SLICE: u64 = 1 << 16;

/// Which instructions a measurement used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeakIsa {
    Avx512,
    Avx2Fma,
    Portable,
    Avx512Bf16,
}

impl PeakIsa {
    pub fn name(self) -> &'static str {
        match self {
            PeakIsa::Avx512 => "avx512f fma (fp32)",
            PeakIsa::Avx2Fma => "avx2 fma (fp32)",
            PeakIsa::Portable => "portable mul+add (fp32)",
            PeakIsa::Avx512Bf16 => "avx512_bf16 vdpbf16ps (bf16 in, fp32 accumulate)",
        }
    }

    /// FLOPs of one iteration of one chain: lanes × 2 (multiply and add) × products per lane.
    fn flops_per_chain_iteration(self) -> f64 {
        match self {
            PeakIsa::Avx512 => 32.0,
            PeakIsa::Avx2Fma => 16.0,
            PeakIsa::Portable => 2.0 * PORTABLE_LANES as f64,
            PeakIsa::Avx512Bf16 => 64.0,
        }
    }
}

/// One measured peak.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    pub isa: PeakIsa,
    pub threads: usize,
    /// Whole-machine GFLOP/s with `threads` workers.
    pub gflops: f64,
}

/// The best fp32 path this CPU has.
pub fn best_fp32_isa() -> PeakIsa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return PeakIsa::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return PeakIsa::Avx2Fma;
        }
    }
    PeakIsa::Portable
}

/// Whether this CPU has AVX512-BF16 (`vdpbf16ps`).
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Measures `isa`'s peak with every thread of the current rayon pool for about `duration`.
/// Returns `None` when this CPU cannot run `isa`.
pub fn measure_peak(isa: PeakIsa, duration: Duration) -> Option<Peak> {
    let available = match isa {
        PeakIsa::Portable => true,
        PeakIsa::Avx512Bf16 => has_avx512_bf16(),
        PeakIsa::Avx512 => best_fp32_isa() == PeakIsa::Avx512,
        PeakIsa::Avx2Fma => matches!(best_fp32_isa(), PeakIsa::Avx512 | PeakIsa::Avx2Fma),
    };
    if !available {
        return None;
    }
    // Every worker starts together and runs for `duration`; the total work over the
    // slowest worker's time is the machine's rate.
    let per_thread: Vec<(u64, Duration)> = rayon::broadcast(|ctx| {
        let start = Instant::now();
        let mut iterations = 0u64;
        let mut sink = 0.0f32;
        while start.elapsed() < duration {
            sink += run_chains(isa, ITERATIONS_PER_SLICE, 1.0 + ctx.index() as f32 * 1e-3);
            iterations += ITERATIONS_PER_SLICE;
        }
        std::hint::black_box(sink);
        (iterations, start.elapsed())
    });
    let threads = per_thread.len();
    let iterations: u64 = per_thread.iter().map(|(n, _)| n).sum();
    let seconds = per_thread.iter().map(|(_, t)| t.as_secs_f64()).fold(0.0, f64::max);
    let flops = iterations as f64 * CHAINS as f64 * isa.flops_per_chain_iteration();
    Some(Peak { isa, threads, gflops: flops / seconds / 1e9 })
}

/// Runs `iterations` steps of every chain on the given path and returns a value that
/// depends on all of them (so the work cannot be optimised away). The caller checked that
/// the CPU supports `isa`.
fn run_chains(isa: PeakIsa, iterations: u64, start: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `measure_peak` runs this only after `is_x86_feature_detected!` found
        // avx512f, so the CPU executes every instruction of the target-feature function.
        PeakIsa::Avx512 => unsafe { x86::fma_chains_avx512(iterations, start) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only after avx2 and fma were detected at run time (see `measure_peak`).
        PeakIsa::Avx2Fma => unsafe { x86::fma_chains_avx2(iterations, start) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: only after avx512f and avx512bf16 were detected at run time.
        PeakIsa::Avx512Bf16 => unsafe { x86::dot_bf16_chains_avx512(iterations, start) },
        _ => portable_chains(iterations, start),
    }
}

/// Lanes of each portable chain (one AVX-512 register's worth; narrower targets split it).
const PORTABLE_LANES: usize = 16;

/// The constants of every chain: `acc ← acc · MULTIPLIER + ADDEND` stays near 1 for
/// millions of steps (its fixed point is ADDEND / (1 − MULTIPLIER) = 1), so it never
/// overflows or turns subnormal, whose slow paths would understate the peak.
const MULTIPLIER: f32 = 0.999_999;
const ADDEND: f32 = 1.0 - MULTIPLIER;

/// The safe reference path: plain multiply and add on arrays.
fn portable_chains(iterations: u64, start: f32) -> f32 {
    let mut acc = [[start; PORTABLE_LANES]; CHAINS];
    for _ in 0..iterations {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = *v * MULTIPLIER + ADDEND;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{ADDEND, CHAINS, MULTIPLIER};

    /// Sum of 16 lanes.
    #[target_feature(enable = "avx512f")]
    fn sum_lanes_512(v: __m512) -> f32 {
        _mm512_reduce_add_ps(v)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn fma_chains_avx512(iterations: u64, start: f32) -> f32 {
        let (m, a) = (_mm512_set1_ps(MULTIPLIER), _mm512_set1_ps(ADDEND));
        let mut acc = [_mm512_set1_ps(start); CHAINS];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, m, a);
            }
        }
        acc.iter().map(|&v| sum_lanes_512(v)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn fma_chains_avx2(iterations: u64, start: f32) -> f32 {
        let (m, a) = (_mm256_set1_ps(MULTIPLIER), _mm256_set1_ps(ADDEND));
        let mut acc = [_mm256_set1_ps(start); CHAINS];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, m, a);
            }
        }
        let mut total = 0.0;
        for v in acc {
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` is 8 f32 = 32 writable bytes; the unaligned store needs no alignment.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
            total += lanes.iter().sum::<f32>();
        }
        total
    }

    /// `acc ← acc + Σ a·b` over 32 bf16 pairs per 16 f32 lanes, with a = b = 0.5 (exact
    /// in bf16), so each step adds 2 · 0.25 = 0.5 to every lane: exact while the sum stays
    /// below 2^24, and the caller's slices are far shorter.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) fn dot_bf16_chains_avx512(iterations: u64, start: f32) -> f32 {
        let halves = _mm512_set1_ps(0.5);
        let pairs = _mm512_cvtne2ps_pbh(halves, halves);
        let mut acc = [_mm512_set1_ps(start); CHAINS];
        for _ in 0..iterations {
            for r in acc.iter_mut() {
                *r = _mm512_dpbf16_ps(*r, pairs, pairs);
            }
        }
        acc.iter().map(|&v| sum_lanes_512(v)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One chain lane, step by step, as IEEE fused multiply-add: the value every SIMD FMA
    /// lane must hold at the end.
    fn fused_lane(iterations: u64, start: f32) -> f32 {
        let mut v = start;
        for _ in 0..iterations {
            v = v.mul_add(MULTIPLIER, ADDEND);
        }
        v
    }

    /// The kernels return the sum of all their lanes; lanes are identical, so the sum is
    /// lanes × one lane up to the rounding of the summation (tolerance 1e-5 relative).
    #[test]
    fn simd_fma_chains_equal_the_scalar_fused_reference() {
        let lane = fused_lane(1000, 1.25);
        let close = |got: f32, lanes: usize| {
            let expected = lane * lanes as f32;
            assert!((got - expected).abs() <= 1e-5 * expected, "{got} vs {expected}");
        };
        if best_fp32_isa() == PeakIsa::Avx512 {
            close(run_chains(PeakIsa::Avx512, 1000, 1.25), CHAINS * 16);
        }
        if matches!(best_fp32_isa(), PeakIsa::Avx512 | PeakIsa::Avx2Fma) {
            close(run_chains(PeakIsa::Avx2Fma, 1000, 1.25), CHAINS * 8);
        }
        // The portable path rounds twice per step; near 1 that stays within the tolerance.
        close(portable_chains(1000, 1.25), CHAINS * PORTABLE_LANES);
    }

    #[test]
    fn bf16_dot_chain_adds_exact_products() {
        if !has_avx512_bf16() {
            return;
        }
        // Each step adds two products of 0.5 · 0.5 to every lane.
        let got = run_chains(PeakIsa::Avx512Bf16, 100, 1.0);
        let per_lane = 1.0 + 100.0 * 0.5;
        assert_eq!(got, per_lane * (CHAINS * 16) as f32);
    }

    #[test]
    fn measured_peak_is_positive_and_names_its_path() {
        let peak = measure_peak(best_fp32_isa(), Duration::from_millis(20)).expect("the best path is available");
        assert!(peak.gflops > 0.0 && peak.threads >= 1);
        assert!(!peak.isa.name().is_empty());
    }
}
