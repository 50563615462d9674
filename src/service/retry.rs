//! When to call again: the retry policy (its backoff curve is a [`Backoff`] with full jitter),
//! `Retry-After`, and which HTTP statuses are worth retrying.

use std::time::{Duration, SystemTime};

use crate::backoff::Backoff;

/// `Retry-After` is honoured up to this many times the policy's `max_backoff`, so a service
/// cannot park a worker for an hour; a longer wish is cut to the cap.
pub const RETRY_AFTER_CAP_FACTOR: u32 = 10;

/// How often and how patiently a call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The backoff curve: exponential from `initial_backoff` up to `max_backoff`, with full
    /// jitter (each wait uniform in `[0, min(max_backoff, initial_backoff × 2^(attempt-1))]`),
    /// so many callers failing together do not retry together.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_backoff, self.max_backoff).with_full_jitter()
    }

    /// The longest `Retry-After` honoured.
    pub fn retry_after_cap(&self) -> Duration {
        self.max_backoff.saturating_mul(RETRY_AFTER_CAP_FACTOR)
    }

    /// The wait before the next attempt: the service's `Retry-After` when it gave one (capped),
    /// otherwise the jittered backoff. `unit` is a sample in `[0, 1)`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        match retry_after {
            Some(wish) => wish.min(self.retry_after_cap()),
            None => self.backoff().delay(attempt, unit),
        }
    }
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date (a date in the past is zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a response status is worth another attempt: 408, 429 and 5xx.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
    };

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_full_jitter() {
        let curve = POLICY.backoff();
        let ceilings: Vec<u128> = (1..=6).map(|a| curve.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert!(curve.jitter);
        assert_eq!(POLICY.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(POLICY.delay(3, None, 0.5), Duration::from_millis(200));
        assert!(POLICY.delay(3, None, 0.999_999) < Duration::from_millis(400));
    }

    #[test]
    fn retry_after_wins_over_backoff_but_is_capped() {
        let wish = Some(Duration::from_secs(2));
        assert_eq!(POLICY.delay(1, wish, 0.0), Duration::from_secs(2));
        let long = Some(Duration::from_secs(3600));
        assert_eq!(POLICY.delay(1, long, 0.0), Duration::from_secs(10));
        assert_eq!(POLICY.delay(2, None, 0.5), Duration::from_millis(100));
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn only_timeouts_throttling_and_server_errors_are_retryable() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(retryable_status(s), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 409, 422] {
            assert!(!retryable_status(s), "{s}");
        }
    }
}
