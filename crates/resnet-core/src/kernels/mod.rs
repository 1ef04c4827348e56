//! CPU kernels on NHWC f32 data. Each kernel has a plain safe reference beside it in its
//! tests; the fast paths go through the `gemm` crate.

pub mod activation;
pub mod batchnorm;
pub mod buffers;
pub mod conv;
pub mod conv_backward;
pub mod conv_implicit;
pub mod conv_packed;
pub mod elementwise;
#[cfg(test)]
mod gradcheck;
pub mod linear;
pub mod loss;
pub mod matmul;
pub mod memory;
pub mod packed_gemm;
pub mod packed_gemm_bf16;
pub mod peak;
pub mod pool;
pub mod pool_backward;
pub mod shortcut;
pub mod winograd;
pub mod winograd_bf16;

pub use conv::{conv2d_nhwc, Conv2dGeometry, Epilogue};

/// Whether element-wise kernels run compiled for AVX-512 (not with
/// `RESNET_PORTABLE_KERNELS=1`, so that tests cover the portable build of the same code).
pub(crate) fn avx512() -> bool {
    packed_gemm::best_path() == packed_gemm::GemmPath::Avx512
}

/// `fn $name(args) { body }`, with the body compiled for AVX-512 where [`avx512`] says so
/// (so that its 16-lane loops become single instructions) and as it is elsewhere: the body
/// becomes an `#[inline(always)]` inner function, called from a `target_feature` copy or
/// directly. (A closure handed to one `target_feature` function is not inlined into it, so
/// each kernel gets its own copy.) The body must be safe code.
macro_rules! vectorised_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            if $crate::kernels::avx512() {
                #[target_feature(enable = "avx512f")]
                fn on_avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                // SAFETY: AVX-512F was detected at run time; the body is safe code.
                unsafe { on_avx512($($arg),*) };
                return;
            }
            body($($arg),*)
        }
    };
}
pub use matmul::{matmul, MatMul};
pub use pool::{global_avg_pool_nhwc, max_pool2d_nhwc};
pub(crate) use vectorised_fn;

/// `src[..lanes]` into `dst[..lanes]`, where `lanes` is usually `FULL` (one vector
/// register's worth): that case is a copy of fixed length, two vector moves. The rarer
/// shorter copy is a separate, never-inlined function, because inlined, LLVM merges both
/// arms into one `memcpy` of `lanes` elements, a call to memmove for every full register
/// too (in perf, 4-6% of the Winograd transforms).
#[inline(always)]
pub(crate) fn copy_lanes<T: Copy, const FULL: usize>(dst: &mut [T], src: &[T], lanes: usize) {
    if lanes == FULL {
        dst[..FULL].copy_from_slice(&src[..FULL]);
    } else {
        copy_few_lanes(dst, src, lanes);
    }
}

#[inline(never)]
fn copy_few_lanes<T: Copy>(dst: &mut [T], src: &[T], lanes: usize) {
    dst[..lanes].copy_from_slice(&src[..lanes]);
}

/// The number of threads of the rayon pool we run in (the global pool unless the caller
/// installed another with `--threads`).
pub fn current_threads() -> usize {
    rayon::current_num_threads()
}
