//! A small seeded PRNG (SplitMix64) for shuffling and augmentation.
//!
//! Streams are derived from tuples of words (seed, epoch, sample index, ...) so that every
//! random decision depends only on what it is about, never on thread scheduling.

/// SplitMix64 (Steele, Lea & Flood 2014): 64-bit state, passes BigCrush, trivially seedable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function, a bijection on u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// A generator whose stream depends on every word of `key` and their order.
    pub fn derive(key: &[u64]) -> Self {
        let mut h = 0x6A09_E667_F3BC_C909u64;
        for &word in key {
            h = mix(h.wrapping_add(GOLDEN) ^ word).wrapping_add(word.rotate_left(32));
        }
        Rng { state: mix(h) }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Uniform integer in `0..n` without modulo bias; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            return 0;
        }
        // Rejection: accept only draws from the largest multiple of n.
        let zone = u64::MAX - (u64::MAX % n + 1) % n;
        loop {
            let v = self.next_u64();
            if v <= zone {
                return v % n;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(7);
        let mut seen = [0usize; 9];
        for _ in 0..9000 {
            seen[rng.below(9) as usize] += 1;
        }
        assert!(seen.iter().all(|&k| k > 800), "{seen:?}");
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn derived_streams_differ_by_key() {
        let a = Rng::derive(&[1, 2, 3]).next_u64();
        assert_eq!(a, Rng::derive(&[1, 2, 3]).next_u64());
        assert_ne!(a, Rng::derive(&[1, 3, 2]).next_u64());
        assert_ne!(a, Rng::derive(&[1, 2, 4]).next_u64());
        assert_ne!(Rng::derive(&[0]).next_u64(), Rng::derive(&[0, 0]).next_u64());
    }

    #[test]
    fn floats_are_in_the_unit_interval() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
