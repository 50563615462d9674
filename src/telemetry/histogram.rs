//! A Prometheus histogram of durations with fixed buckets, updated with atomics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in seconds: 10 µs to 10 s, for stages from a schema check to a
/// slow HTTP action.
pub const BUCKETS: [f64; 18] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Counts of observations per bucket (not cumulative; the `+Inf` bucket last), their sum in
/// nanoseconds and their count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one duration in seconds.
    pub fn observe(&self, seconds: f64) {
        let i = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Durations are far below the 584 years a u64 of nanoseconds holds.
        let ns = (seconds.max(0.0) * 1e9) as u64;
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The cumulative buckets, sum and count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let buckets = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_every_observation() {
        let h = Histogram::default();
        for s in [0.000_005, 0.000_01, 0.003, 60.0] {
            h.observe(s);
        }
        let snap = h.snapshot();
        assert_eq!(snap.count, 4);
        assert_eq!(snap.buckets[0], (0.000_01, 2), "a bound is inclusive");
        let at = |bound: f64| snap.buckets.iter().find(|(b, _)| *b == bound).map(|b| b.1);
        assert_eq!(at(0.002_5), Some(2));
        assert_eq!(at(0.005), Some(3));
        assert_eq!(at(10.0), Some(3));
        assert_eq!(snap.buckets.last(), Some(&(f64::INFINITY, 4)));
        assert!((snap.sum - 60.003_015).abs() < 1e-6, "{}", snap.sum);
    }
}
