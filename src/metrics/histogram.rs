//! The latency histogram and the label constants that the per-loop counters and the per-function
//! figures ([`super::calls`]) share: a leaf of `metrics/`, so neither has to reach into the other.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Kind;

/// Upper bounds of the `/call` latency buckets, in microseconds: 100 µs to 10 s.
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Buckets of the latency histogram: one per bound plus `+Inf`.
pub const LATENCY_SLOTS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Error kinds, one counter each.
pub const KIND_SLOTS: usize = Kind::ALL.len();

/// Adds `n` to a counter that only one thread writes: a plain load and store, no read-modify-write
/// instruction. Readers on other threads may see it a moment late, never torn.
#[inline]
pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// A latency histogram written by one loop.
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_SLOTS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_us: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Records one observation; only the owning loop calls this.
    #[inline]
    pub fn observe(&self, us: u64) {
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        bump(&self.buckets[i], 1);
        bump(&self.sum_us, us);
    }

    /// Adds this histogram into `into`.
    pub fn add_to(&self, into: &mut HistogramSnapshot) {
        for (a, b) in into.counts.iter_mut().zip(&self.buckets) {
            *a += b.load(Ordering::Relaxed);
        }
        into.sum_us += self.sum_us.load(Ordering::Relaxed);
    }
}

/// Histogram counts at one moment (per bucket, not cumulative).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub counts: [u64; LATENCY_SLOTS],
    pub sum_us: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot { counts: [0; LATENCY_SLOTS], sum_us: 0 }
    }
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn minus(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let mut d = HistogramSnapshot::default();
        for i in 0..LATENCY_SLOTS {
            d.counts[i] = self.counts[i].saturating_sub(earlier.counts[i]);
        }
        d.sum_us = self.sum_us.saturating_sub(earlier.sum_us);
        d
    }

    /// The `q` quantile in microseconds, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile` does); `None` without observations. The `+Inf` bucket answers its lower
    /// bound.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if (seen + c) as f64 >= rank {
                let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] } as f64;
                let Some(&upper) = LATENCY_BOUNDS_US.get(i) else { return Some(lower) };
                let within = ((rank - seen as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lower + (upper as f64 - lower) * within);
            }
            seen += c;
        }
        LATENCY_BOUNDS_US.last().map(|&b| b as f64)
    }
}

/// The label value databases beyond the top-N share.
pub const OTHER: &str = "other";
