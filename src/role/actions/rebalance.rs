//! Rebalance handling for the actions role: stored offsets are committed synchronously before
//! partitions are taken away, and the worker learns which partitions it lost and gained.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;

use crate::kafka::{Outage, Transaction, TransactionError};

use crate::telemetry::{Metrics, PartitionsAssigned, PartitionsRevoked};

/// Commits stored offsets synchronously before partitions are taken away, and tells the worker
/// which partitions it lost so it drops their waiting records; the telemetry learns the
/// assignment.
pub(super) struct RebalanceContext {
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: Mutex<Vec<(String, i32)>>,
    metrics: Arc<Metrics>,
    outage: Arc<Outage>,
    /// The exactly-once mode's transaction, committed (instead of the stored offsets) before
    /// partitions are taken away.
    transaction: OnceLock<Arc<Transaction>>,
    /// A transaction that failed in a rebalance, for the worker to act on.
    failed: Mutex<Option<TransactionError>>,
}

impl RebalanceContext {
    pub(super) fn new(metrics: Arc<Metrics>, outage: Arc<Outage>) -> Self {
        Self {
            revoked: Mutex::default(),
            assigned: Mutex::default(),
            metrics,
            outage,
            transaction: OnceLock::new(),
            failed: Mutex::default(),
        }
    }

    /// Commits `transaction` before partitions are taken away from now on.
    pub(super) fn commit_on_revoke(&self, transaction: Arc<Transaction>) {
        let _ = self.transaction.set(transaction);
    }

    /// The transaction that failed in a rebalance since the last call, if one did.
    pub(super) fn take_failed(&self) -> Option<TransactionError> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Partitions to treat as just assigned (after a rewind, their retry keys are read again).
    pub(super) fn reassigned(&self, partitions: Vec<(String, i32)>) {
        self.assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(partitions);
    }

    pub(super) fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Partitions gained since the last call. They are noted before any of their records is
    /// delivered, so the worker sees them before it takes one.
    pub(super) fn take_assigned(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.assigned.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for RebalanceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.outage.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.outage.error(&error, reason);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; committing {}",
                if self.transaction.get().is_some() {
                    "the open transaction"
                } else {
                    "stored offsets"
                }
            );
            let lost: Vec<(String, i32)> = partitions
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            PartitionsRevoked { partitions: &lost }.emit(&self.metrics);
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(lost);
            if let Some(transaction) = self.transaction.get() {
                if let Err(e) = transaction.commit(consumer) {
                    *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                }
                return;
            }
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(())
                | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "commit on revoke failed; uncommitted records will be re-delivered")
                }
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions assigned");
            let assigned: Vec<(String, i32)> = partitions
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            PartitionsAssigned {
                partitions: &assigned,
            }
            .emit(&self.metrics);
            self.assigned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(assigned);
        }
    }
}
