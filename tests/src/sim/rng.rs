//! The simulation's only source of randomness: SplitMix64, seeded once per run.

/// SplitMix64 (Steele, Lea, Flood): tiny, fast, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for a simulation, and no division.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1_000) < per_mille
    }

    /// An index into a slice of length `len` (0 if empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A waiting time with roughly exponential distribution and the given mean (at least
    /// 1 ms). Integer-only, so a seed gives the same run on every machine.
    pub fn exponential_ms(&mut self, mean_ms: u64) -> u64 {
        // Leading zeros of a uniform word are geometric (P(k) = 2^-(k+1)); adding a uniform
        // fraction and scaling by ln 2 gives an exponential-like tail with mean ≈ 1.04.
        let whole = u64::from(self.next_u64().leading_zeros());
        let units = whole * 1_000 + self.below(1_000);
        (mean_ms.saturating_mul(units).saturating_mul(693) / 1_000_000).max(1)
    }

    /// Roughly log-uniform in `lo..=hi` (many short, some very long): for outage durations.
    /// Integer-only: a uniform octave, then uniform within it.
    pub fn log_uniform_ms(&mut self, lo: u64, hi: u64) -> u64 {
        let lo = lo.max(1);
        let hi = hi.max(lo);
        let octaves = u64::from(64 - (hi / lo).leading_zeros());
        let octave = self.below(octaves.max(1));
        let start = lo.saturating_mul(1 << octave);
        let end = start.saturating_mul(2).min(hi);
        self.range(start.min(end), end)
    }

    pub fn bytes10(&mut self) -> [u8; 10] {
        let a = self.next_u64().to_le_bytes();
        let b = self.next_u64().to_le_bytes();
        [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = Rng::new(8);
        assert_ne!(Rng::new(7).next_u64(), c.next_u64());
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            assert!(rng.below(7) < 7);
            assert!((3..=9).contains(&rng.range(3, 9)));
            let d = rng.log_uniform_ms(1_000, 60_000);
            assert!((1_000..=60_000).contains(&d));
            assert!(rng.exponential_ms(100) >= 1);
        }
    }
}
