//! A lock-free latency histogram for the pager's page-ins: log-linear
//! buckets (8 per power of two, so a percentile is known within 1/8 of its
//! value) from 8 ns to about 2^41 ns.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two.
const SUB: u64 = 8;
const BUCKETS: usize = 41 * SUB as usize;

pub struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The bucket of `ns` (values below 8 ns count as 8 ns).
fn bucket(ns: u64) -> usize {
    let ns = ns.max(SUB);
    let exp = 63 - u64::from(ns.leading_zeros());
    let sub = (ns >> (exp - 3)) & (SUB - 1);
    ((exp * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The smallest value in bucket `b` (b >= 24: 8 ns and up).
fn lower_bound(b: usize) -> u64 {
    let exp = b as u64 / SUB;
    let sub = b as u64 % SUB;
    (SUB + sub) << (exp.max(3) - 3)
}

impl Histogram {
    pub fn record(&self, ns: u64) {
        self.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q`-quantile (0..=1), as the upper edge of its bucket; 0 when
    /// nothing was recorded.
    pub fn percentile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(b + 1).saturating_sub(1).max(1);
            }
        }
        lower_bound(BUCKETS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_an_eighth() {
        let h = Histogram::default();
        assert_eq!(h.percentile(0.5), 0);
        for ns in 1..=1000u64 {
            h.record(ns * 1000);
        }
        for (q, want) in [(0.5, 500_000.0), (0.99, 990_000.0)] {
            let got = h.percentile(q) as f64;
            assert!(got >= want && got <= want * 1.13, "q{q}: {got} for {want}");
        }
        // Every value lands in a bucket whose bounds contain it.
        for ns in [8u64, 9, 15, 16, 1023, 1024, 35_000, 1 << 39] {
            let b = bucket(ns);
            assert!(
                lower_bound(b) <= ns && ns < lower_bound(b + 1),
                "{ns} in {b}"
            );
        }
    }
}
