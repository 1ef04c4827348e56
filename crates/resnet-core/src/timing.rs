//! Wall-clock timing for the benchmarks (`resnet bench --layers`, the timing examples).

use std::time::Instant;

/// Median wall time of `runs` calls of `f` in milliseconds, after one untimed call (which
/// warms caches and buffer pools).
pub fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_once_more_than_timed() {
        let mut calls = 0;
        let ms = median_ms(5, || calls += 1);
        assert_eq!(calls, 6);
        assert!(ms >= 0.0);
    }
}
