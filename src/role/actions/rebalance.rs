//! Rebalance handling for the actions role: stored offsets are committed synchronously before
//! partitions are taken away, and the worker learns which partitions it lost and gained.

use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;

use crate::telemetry::{Metrics, PartitionsAssigned, PartitionsRevoked};

/// Commits stored offsets synchronously before partitions are taken away, and tells the worker
/// which partitions it lost so it drops their waiting records; the telemetry learns the
/// assignment.
pub(super) struct RebalanceContext {
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: Mutex<Vec<(String, i32)>>,
    metrics: Arc<Metrics>,
}

impl RebalanceContext {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            revoked: Mutex::default(),
            assigned: Mutex::default(),
            metrics,
        }
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

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; committing stored offsets"
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
