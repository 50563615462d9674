//! Exponential backoff: how long to wait after the n-th failed attempt, optionally with full
//! jitter, and a bounded sequence of such waits.
//!
//! One small pure type serves every retry loop in reflex: HTTP action retries (full jitter),
//! waiting for the schema registry, and waiting for room in the producer's queue. The curve is
//! `min(max, initial × 2^(attempt-1))`; with full jitter each wait is drawn uniformly from
//! `[0, that ceiling]`, so many callers failing together do not retry together.

use std::time::Duration;

/// An exponential backoff curve: `initial` doubled after each failed attempt, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait (or its ceiling, with jitter) after the first failed attempt.
    pub initial: Duration,
    /// The longest wait (or ceiling).
    pub max: Duration,
    /// Whether each wait is drawn uniformly from `[0, ceiling]` ("full jitter").
    pub jitter: bool,
}

impl Backoff {
    /// A curve without jitter: `initial`, `2 × initial`, … up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            jitter: false,
        }
    }

    /// The same curve with full jitter.
    pub const fn with_full_jitter(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The ceiling of the wait after failed attempt `attempt` (1-based; 0 counts as 1):
    /// `min(max, initial × 2^(attempt-1))`, without overflow however large `attempt` is.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The wait after failed attempt `attempt`, given `unit`, a sample in `[0, 1)`: the ceiling
    /// itself, or with jitter `unit × ceiling`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        if self.jitter {
            ceiling.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            ceiling
        }
    }

    /// The wait after failed attempt `attempt`, jitter drawn from a thread-local generator.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, if self.jitter { fastrand::f64() } else { 1.0 })
    }

    /// The waits after attempts 1, 2, 3, …; endless unless bounded with [`Delays::within`] or
    /// [`Iterator::take`].
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: *self,
            attempt: 0,
            budget: None,
            spent: Duration::ZERO,
        }
    }
}

/// The successive waits of a [`Backoff`], from [`Backoff::delays`].
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    attempt: u32,
    budget: Option<Duration>,
    spent: Duration,
}

impl Delays {
    /// Ends the sequence once the waits add up to `total`; the last wait is cut so the sum is
    /// exactly `total`.
    pub fn within(self, total: Duration) -> Self {
        Self {
            budget: Some(total),
            ..self
        }
    }

    /// The sum of the waits handed out so far.
    pub fn spent(&self) -> Duration {
        self.spent
    }

    /// Failed attempts so far: the number of waits handed out.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let mut delay = self.backoff.next_delay(self.attempt.saturating_add(1));
        if let Some(budget) = self.budget {
            let left = budget.saturating_sub(self.spent);
            if left.is_zero() {
                return None;
            }
            delay = delay.min(left);
        }
        self.attempt = self.attempt.saturating_add(1);
        self.spent = self.spent.saturating_add(delay);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_initial_up_to_the_cap() {
        let b = Backoff::new(100 * MS, Duration::from_secs(1));
        let waits: Vec<u128> = (1..=6).map(|a| b.next_delay(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(0), 100 * MS, "attempt 0 counts as the first");
    }

    #[test]
    fn large_attempts_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(3600), Duration::MAX);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(3600) * (1 << 31));
        let capped = Backoff::new(MS, Duration::from_secs(10));
        assert_eq!(capped.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_stays_between_zero_and_the_ceiling() {
        let b = Backoff::new(100 * MS, Duration::from_secs(1)).with_full_jitter();
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, 0.5), 200 * MS);
        assert!(b.delay(3, 0.999_999) < 400 * MS);
        assert_eq!(b.delay(3, 7.0), 400 * MS, "samples are clamped to [0, 1]");
        for attempt in 1..=20 {
            let wait = b.next_delay(attempt);
            assert!(wait <= b.ceiling(attempt), "{attempt}: {wait:?}");
        }
        let without = Backoff::new(100 * MS, Duration::from_secs(1));
        assert_eq!(
            without.delay(3, 0.0),
            400 * MS,
            "no jitter ignores the sample"
        );
    }

    #[test]
    fn delays_follow_the_curve_and_count_attempts() {
        let b = Backoff::new(MS, 4 * MS);
        let mut delays = b.delays();
        let first: Vec<Duration> = delays.by_ref().take(5).collect();
        assert_eq!(first, [MS, 2 * MS, 4 * MS, 4 * MS, 4 * MS]);
        assert_eq!(delays.attempts(), 5);
        assert_eq!(delays.spent(), 15 * MS);
    }

    #[test]
    fn a_budget_ends_the_sequence_at_exactly_the_total() {
        let b = Backoff::new(MS, 100 * MS);
        let delays: Vec<Duration> = b.delays().within(250 * MS).collect();
        // 1 + 2 + 4 + … + 64 = 127, then 100, then the 23 left.
        assert_eq!(delays.len(), 9);
        assert_eq!(delays.last(), Some(&(23 * MS)));
        assert_eq!(delays.iter().sum::<Duration>(), 250 * MS);
        assert_eq!(b.delays().within(Duration::ZERO).next(), None);
        let jittered = b.with_full_jitter().delays().within(250 * MS);
        assert!(jittered.take(10_000).sum::<Duration>() <= 250 * MS);
    }
}
