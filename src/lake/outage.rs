//! Object store outages as an operator wants to read them: one line when the lake's store stops
//! answering, one when it answers again (with how long it lasted), a gauge meanwhile.
//!
//! While the store is down the lake worker holds the segment it was writing, consumes nothing
//! more (so its memory stays where `lake.max_buffered_bytes` put it) and tries the write again
//! with backoff; its offsets stay where the last written file put them. A failure that retrying
//! cannot heal (credentials refused, a bucket that does not exist) is not an outage: the worker
//! stops with that error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::store::StoreError;
use super::LakeError;

/// First wait between two tries of a write while the store is down.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Longest wait between two tries.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// Whether the lake's store answers, as one worker saw it.
#[derive(Debug, Default)]
pub struct StoreOutage {
    /// When the open outage began, and its first error.
    since: Mutex<Option<(Instant, String)>>,
    /// Outages that ended.
    ended: AtomicU64,
}

impl StoreOutage {
    /// No outage.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A write failed with `error`, which retrying may heal: opens an outage (one WARN line
    /// naming the store and the error) unless one is open.
    pub fn failed(&self, error: &LakeError, buffered_bytes: usize) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if since.is_some() {
            tracing::debug!(error = %error, "lake store still unreachable");
            return;
        }
        tracing::warn!(
            error = %error,
            buffered_bytes,
            "lake store unreachable; the lake worker holds its buffered rows, reads nothing more and retries (one line when it answers again)"
        );
        *since = Some((Instant::now(), error.to_string()));
    }

    /// A write succeeded: closes the outage if one is open.
    pub fn answered(&self) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((first, cause)) = since.take() {
            self.ended.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                after = %humantime::format_duration(Duration::from_millis(
                    u64::try_from(first.elapsed().as_millis()).unwrap_or(u64::MAX)
                )),
                first_cause = %cause,
                "lake store reachable again"
            );
        }
    }

    /// How long the open outage has lasted, if one is open.
    pub fn down_for(&self) -> Option<Duration> {
        self.since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(first, _)| first.elapsed())
    }

    /// Outages that ended since start.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }
}

/// Whether retrying may heal `error`: the store did not answer, timed out or answered with a
/// server error. Refused credentials, a missing bucket, a bad key or a file that holds other
/// records are for an operator.
pub fn is_transient(error: &LakeError) -> bool {
    let LakeError::Store(StoreError::Io { source, .. }) = error else {
        return false;
    };
    let Some(e) = source.downcast_ref::<object_store::Error>() else {
        // Reading a file's footer or rows: Parquet over the store's reads.
        return source
            .downcast_ref::<parquet::errors::ParquetError>()
            .is_some();
    };
    !matches!(
        e,
        object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotFound { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

/// The wait before try number `attempt` (from 1) of a write while the store is down.
pub fn retry_delay(attempt: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(source: object_store::Error) -> LakeError {
        LakeError::Store(StoreError::Io {
            location: "s3://lake".into(),
            what: "write",
            key: "t/x.parquet".into(),
            source: Box::new(source),
        })
    }

    #[test]
    fn an_unanswered_store_is_an_outage_and_refused_credentials_are_not() {
        let down = io(object_store::Error::Generic {
            store: "S3",
            source: "error sending request: connection refused".into(),
        });
        assert!(is_transient(&down));
        let refused = io(object_store::Error::PermissionDenied {
            path: "t/x.parquet".into(),
            source: "403 Forbidden".into(),
        });
        assert!(!is_transient(&refused));
        let missing = io(object_store::Error::NotFound {
            path: "lake".into(),
            source: "NoSuchBucket".into(),
        });
        assert!(!is_transient(&missing));
    }

    #[test]
    fn an_outage_opens_once_and_ends_once() {
        let outage = StoreOutage::new();
        outage.answered();
        assert_eq!(outage.ended(), 0, "no outage to end");
        let down = io(object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into(),
        });
        outage.failed(&down, 10);
        outage.failed(&down, 10);
        assert!(outage.down_for().is_some());
        outage.answered();
        outage.answered();
        assert!(outage.down_for().is_none());
        assert_eq!(outage.ended(), 1, "two failures, one outage");
    }

    #[test]
    fn retries_back_off_to_a_bound() {
        assert_eq!(retry_delay(1), FIRST_RETRY);
        assert_eq!(retry_delay(2), FIRST_RETRY * 2);
        assert_eq!(retry_delay(40), MAX_RETRY);
    }
}
