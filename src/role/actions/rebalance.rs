//! Rebalance handling for the actions role: stored offsets are committed synchronously before
//! partitions are taken away, partitions without a committed offset are assigned where
//! `auto.offset.reset` says they start, and the worker learns which partitions it lost and gained.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

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
    /// Where an assigned partition without a committed offset starts (`auto.offset.reset`),
    /// given to librdkafka with the assignment; `None`: librdkafka looks it up itself.
    uncommitted_start: Option<Offset>,
    /// Set when the worker stops: a partition assigned from then on (a rebalance that was under
    /// way) is revoked at once, so its start is not looked up; the lookup could only hold up
    /// the consumer's close.
    stopping: AtomicBool,
}

/// How long an assignment waits for the group's committed offsets before leaving the lookup to
/// librdkafka.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a partition without a committed offset starts, for a consumer's `auto.offset.reset`
/// (librdkafka's default is `latest`); `None` for `error`, or a value librdkafka would refuse.
pub(super) fn reset_offset(auto_offset_reset: Option<&str>) -> Option<Offset> {
    match auto_offset_reset.unwrap_or("latest") {
        "smallest" | "earliest" | "beginning" => Some(Offset::Beginning),
        "largest" | "latest" | "end" => Some(Offset::End),
        _ => None,
    }
}

/// Gives the partitions of `assigned` that have no committed offset the position `start`
/// resolves to now.
///
/// librdkafka, given such a partition without a position, looks its start up only after a
/// fixed 100 ms wait (its offset query backoff after "no committed offset"), and the first
/// partition whose start it learns is fetched alone: the others join the next fetch, after the
/// broker has held that one for up to `fetch.wait.max.ms`. So a new group's first records
/// waited 100–200 ms at every start. Here the group's committed offsets and the starts of the
/// others are read in two requests, and every partition is assigned with its position, so all
/// are fetched at once. Partitions with a committed offset keep it; a start not read is left to
/// librdkafka (as the logical `start`, without the wait); if the committed offsets cannot be
/// read, the assignment is left as it is and librdkafka reads them itself.
fn start_uncommitted<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    assigned: &TopicPartitionList,
    start: Offset,
) {
    let committed = match consumer.committed_offsets(assigned.clone(), COMMITTED_TIMEOUT) {
        Ok(committed) => committed,
        Err(error) => {
            tracing::debug!(%error, "committed offsets not read at assignment; librdkafka reads them");
            return;
        }
    };
    let mut uncommitted = TopicPartitionList::new();
    for partition in assigned.elements() {
        let none_committed = committed
            .find_partition(partition.topic(), partition.partition())
            .is_some_and(|c| c.offset() == Offset::Invalid);
        if none_committed && partition.offset() == Offset::Invalid {
            // A logical offset always converts.
            let _ =
                uncommitted.add_partition_offset(partition.topic(), partition.partition(), start);
        }
    }
    if uncommitted.count() == 0 {
        return;
    }
    // A ListOffsets "timestamp" of -2 (Beginning) or -1 (End) asks for the earliest or the
    // latest offset: one request for every partition.
    let resolved = consumer
        .offsets_for_times(uncommitted, COMMITTED_TIMEOUT)
        .inspect_err(|error| {
            tracing::debug!(%error, "partition starts not read at assignment; librdkafka reads them")
        })
        .ok();
    for mut partition in assigned.elements() {
        let none_committed = committed
            .find_partition(partition.topic(), partition.partition())
            .is_some_and(|c| c.offset() == Offset::Invalid);
        if !none_committed || partition.offset() != Offset::Invalid {
            continue;
        }
        let position = resolved
            .as_ref()
            .and_then(|r| r.find_partition(partition.topic(), partition.partition()))
            .filter(|r| r.error().is_ok())
            .map(|r| r.offset())
            .filter(|o| matches!(o, Offset::Offset(n) if *n >= 0))
            .unwrap_or(start);
        let _ = partition.set_offset(position);
    }
}

impl RebalanceContext {
    pub(super) fn new(
        metrics: Arc<Metrics>,
        outage: Arc<Outage>,
        uncommitted_start: Option<Offset>,
    ) -> Self {
        Self {
            revoked: Mutex::default(),
            assigned: Mutex::default(),
            metrics,
            outage,
            transaction: OnceLock::new(),
            failed: Mutex::default(),
            uncommitted_start,
            stopping: AtomicBool::new(false),
        }
    }

    /// The worker is stopping: assignments from now on go to librdkafka as they are.
    pub(super) fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
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
        if let (Rebalance::Assign(partitions), Some(start)) = (rebalance, self.uncommitted_start) {
            if !self.stopping.load(Ordering::Relaxed) {
                start_uncommitted(consumer, partitions, start);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_without_a_committed_offset_starts_where_auto_offset_reset_says() {
        for name in ["earliest", "smallest", "beginning"] {
            assert_eq!(reset_offset(Some(name)), Some(Offset::Beginning), "{name}");
        }
        for name in ["latest", "largest", "end"] {
            assert_eq!(reset_offset(Some(name)), Some(Offset::End), "{name}");
        }
        // librdkafka's own default.
        assert_eq!(reset_offset(None), Some(Offset::End));
        // `error` fails the partition in librdkafka: left to it.
        assert_eq!(reset_offset(Some("error")), None);
    }
}
