//! The exactly-once mode's transactions: a worker's output records and the input offsets they
//! answer are committed together, or not at all.
//!
//! One transactional producer per worker (`transactional.id` from the group and the worker's
//! name). Records are sent into the open transaction as they become ready; the offsets of the
//! inputs they answer are noted with [`Transaction::ready`]; [`Transaction::commit`] hands the
//! offsets to the transaction with the consumer's group metadata (KIP-447: a member fenced out
//! of the group cannot commit) and commits, then opens the next. Readers with
//! `isolation.level = read_committed` (librdkafka's default) see the records of a committed
//! transaction only, so a worker killed mid-transaction leaves nothing visible behind: the
//! broker aborts its transaction when the same `transactional.id` starts again, or after
//! `transaction.timeout.ms`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaSetupError, Outage, OutageContext, Producer};
use crate::config::KafkaConfig;
use crate::ingest::OutRecord;

/// What reflex guarantees for its Kafka outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Every input is answered at least once: a worker that dies after its outputs were
    /// acknowledged and before its offset was committed answers it again.
    #[default]
    AtLeastOnce,
    /// Outputs and input offsets are committed in one Kafka transaction: a `read_committed`
    /// reader sees each input answered once. HTTP actions stay at least once.
    ExactlyOnce,
}

impl Guarantee {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::AtLeastOnce => "at_least_once",
            Self::ExactlyOnce => "exactly_once",
        }
    }
}

/// `[kafka.transactions]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSettings {
    /// A transaction is committed this long after its first record at the latest.
    pub commit_interval: Duration,
    /// ...or once it holds this many input records.
    pub max_records: usize,
    /// `transaction.timeout.ms`: the broker aborts a transaction left open this long (by a
    /// worker that died, or stalled), so it cannot hold `read_committed` readers back longer.
    pub timeout: Duration,
}

impl Default for TransactionSettings {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(100),
            max_records: 1000,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A transaction that could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The transaction was aborted: nothing of it is visible, and its inputs must be processed
    /// again from the committed offsets.
    #[error(
        "transaction aborted ({cause}); its inputs are processed again from the committed offsets"
    )]
    Aborted {
        /// librdkafka's error.
        cause: KafkaError,
    },
    /// The producer cannot go on (fenced by a newer worker with the same transactional id, or
    /// another fatal error).
    #[error("the transactional producer \"{id}\" cannot go on: {cause}{hint}")]
    Fatal {
        /// The transactional id.
        id: String,
        /// librdkafka's error.
        cause: KafkaError,
        /// What to do, or empty.
        hint: &'static str,
    },
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TransactionStats {
    committed: AtomicU64,
    aborted: AtomicU64,
    /// Milliseconds since `epoch` when the open transaction got its first record; 0 when empty.
    open_since_ms: AtomicU64,
    epoch: Option<Instant>,
}

impl TransactionStats {
    /// Transactions committed and aborted since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.committed.load(Ordering::Relaxed),
            self.aborted.load(Ordering::Relaxed),
        )
    }

    /// How long the open transaction has held records uncommitted (zero when it holds none).
    pub fn open_for(&self) -> Duration {
        let since = self.open_since_ms.load(Ordering::Relaxed);
        match self.epoch {
            Some(epoch) if since > 0 => epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(since - 1)),
            _ => Duration::ZERO,
        }
    }

    fn opened(&self) {
        if let Some(epoch) = self.epoch {
            let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
            let _ =
                self.open_since_ms
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn closed(&self, committed: bool) {
        self.open_since_ms.store(0, Ordering::Relaxed);
        let counter = if committed {
            &self.committed
        } else {
            &self.aborted
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the open transaction holds.
#[derive(Debug, Default)]
struct Open {
    /// Next offset to commit per input partition.
    offsets: BTreeMap<(String, i32), i64>,
    /// Input records answered.
    inputs: usize,
    /// Records sent.
    records: usize,
    /// When its first record was sent.
    since: Option<Instant>,
}

/// Longest a commit, an abort or the start of the producer may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A commit slower than this is logged: the transaction held `read_committed` readers of the
/// audit topic (the lake role among them) back meanwhile.
const SLOW_COMMIT: Duration = Duration::from_secs(5);

/// A worker's transactional producer and its open transaction.
pub struct Transaction {
    producer: Producer,
    id: String,
    settings: TransactionSettings,
    open: Mutex<Open>,
    /// Held by the commit (or abort) in progress.
    committing: Mutex<()>,
    stats: Arc<TransactionStats>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("id", &self.id)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Transaction {
    /// Creates the transactional producer `id`, fences any earlier producer with the same id
    /// (aborting what it left open) and opens the first transaction. Blocks for a round trip to
    /// the transaction coordinator.
    pub fn start(
        kafka: &KafkaConfig,
        settings: &TransactionSettings,
        id: &str,
        outage: Arc<Outage>,
    ) -> Result<Self, KafkaSetupError> {
        let mut config = super::producer_config(kafka);
        config.set("transactional.id", id).set(
            "transaction.timeout.ms",
            settings.timeout.as_millis().to_string(),
        );
        let setup = |source| KafkaSetupError::Transactions {
            id: id.to_owned(),
            source,
        };
        let producer: Producer = config
            .create_with_context(OutageContext(outage))
            .map_err(setup)?;
        producer.init_transactions(CALL_TIMEOUT).map_err(setup)?;
        producer.begin_transaction().map_err(setup)?;
        Ok(Self {
            producer,
            id: id.to_owned(),
            settings: settings.clone(),
            open: Mutex::default(),
            committing: Mutex::default(),
            stats: Arc::new(TransactionStats {
                epoch: Some(Instant::now()),
                ..TransactionStats::default()
            }),
        })
    }

    /// The producer, for what is not part of a transaction (metadata).
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// The counters.
    pub fn stats(&self) -> Arc<TransactionStats> {
        Arc::clone(&self.stats)
    }

    /// Sends the records answering one input into the open transaction. Waits (blocking) for
    /// room when the local queue is full.
    pub fn send(&self, records: &[OutRecord]) -> Result<(), KafkaError> {
        for record in records {
            let mut patience = super::QUEUE_FULL_PATIENCE;
            loop {
                match self.producer.send_result(super::future_record(record)) {
                    // The delivery report is not awaited: the commit fails if a record did.
                    Ok(_) => break,
                    Err((error, _))
                        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                            && !patience.is_zero() =>
                    {
                        let wait = Duration::from_millis(100);
                        patience = patience.saturating_sub(wait);
                        self.producer.poll(wait);
                    }
                    Err((error, _)) => return Err(error),
                }
            }
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.inputs += 1;
        open.records += records.len();
        if open.since.is_none() {
            open.since = Some(Instant::now());
            self.stats.opened();
        }
        Ok(())
    }

    /// Notes that `partition` may commit up to `next_offset` (its inputs before it are
    /// answered, by records already sent).
    pub fn ready(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.offsets
            .insert((topic.to_owned(), partition), next_offset);
    }

    /// Whether the open transaction should be committed now: it holds `max_records` inputs, or
    /// its first record is `commit_interval` old.
    pub fn due(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.inputs >= self.settings.max_records
            || open
                .since
                .is_some_and(|since| since.elapsed() >= self.settings.commit_interval)
            || (open.since.is_none() && !open.offsets.is_empty())
    }

    /// Commits the open transaction with the offsets noted, and opens the next, as the group
    /// member `consumer` is now. See [`Transaction::commit_as`].
    pub fn commit<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
    ) -> Result<usize, TransactionError> {
        self.commit_as(consumer.group_metadata())
    }

    /// Commits the open transaction with the offsets noted, and opens the next; `group` is the
    /// consumer's group metadata (a member fenced out of the group since cannot commit). Blocks
    /// for the acknowledgements and two round trips to the coordinators; one commit runs at a
    /// time. On an abortable error the transaction is aborted (nothing of it becomes visible)
    /// and [`TransactionError::Aborted`] tells the caller to process its inputs again.
    pub fn commit_as(
        &self,
        group: Option<ConsumerGroupMetadata>,
    ) -> Result<usize, TransactionError> {
        let _one_at_a_time = self
            .committing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
        if open.since.is_none() && open.offsets.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let result = self.commit_open(group, &open);
        match result {
            Ok(()) => {
                self.stats.closed(true);
                let took = started.elapsed();
                if took > SLOW_COMMIT {
                    tracing::warn!(
                        took = ?took,
                        inputs = open.inputs,
                        "a transaction took long to commit; read_committed readers of reflex's topics (the lake role among them) waited meanwhile"
                    );
                }
                self.producer
                    .begin_transaction()
                    .map_err(|cause| self.failed(cause))?;
                Ok(open.inputs)
            }
            Err(cause) => Err(self.failed(cause)),
        }
    }

    /// Aborts the open transaction (its inputs are processed again) and opens the next.
    pub fn abort(&self) -> Result<(), TransactionError> {
        let _one_at_a_time = self
            .committing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
        if open.since.is_none() && open.offsets.is_empty() {
            return Ok(());
        }
        self.stats.closed(false);
        self.producer
            .abort_transaction(CALL_TIMEOUT)
            .and_then(|()| self.producer.begin_transaction())
            .map_err(|cause| TransactionError::Fatal {
                id: self.id.clone(),
                cause,
                hint: ". The worker stops; restarted, it aborts what this one left open and \
                       resumes from the committed offsets",
            })
    }

    fn commit_open(
        &self,
        group: Option<ConsumerGroupMetadata>,
        open: &Open,
    ) -> Result<(), KafkaError> {
        if !open.offsets.is_empty() {
            let mut offsets = TopicPartitionList::with_capacity(open.offsets.len());
            for ((topic, partition), next) in &open.offsets {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            }
            let group = group.ok_or_else(|| {
                KafkaError::Subscription("the consumer is not a member of its group".into())
            })?;
            self.producer
                .send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT)?;
        }
        self.producer.commit_transaction(CALL_TIMEOUT)
    }

    /// Aborts the open transaction after an error that allows it, and opens the next.
    fn failed(&self, cause: KafkaError) -> TransactionError {
        let abortable = match &cause {
            KafkaError::Transaction(e) => !e.is_fatal(),
            _ => true,
        };
        if !abortable {
            self.stats.closed(false);
            let hint = if matches!(
                cause.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
            ) {
                ". A newer producer with the same transactional id took its place: a restarted \
                 incarnation of this worker, or another replica with the same --instance-id or \
                 --worker-id (give each its own)"
            } else {
                ". The worker stops; restarted, it aborts what this one left open and resumes \
                 from the committed offsets"
            };
            return TransactionError::Fatal {
                id: self.id.clone(),
                cause,
                hint,
            };
        }
        self.stats.closed(false);
        let restarted = self
            .producer
            .abort_transaction(CALL_TIMEOUT)
            .and_then(|()| self.producer.begin_transaction());
        match restarted {
            Ok(()) => TransactionError::Aborted { cause },
            Err(e) => TransactionError::Fatal {
                id: self.id.clone(),
                cause: e,
                hint: ". The worker stops; restarted, it aborts what this one left open and \
                       resumes from the committed offsets",
            },
        }
    }

    /// Forgets the offsets noted for `partitions` (revoked; their inputs are processed again by
    /// their next owner).
    pub fn forget(&self, partitions: &[(String, i32)]) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.offsets.retain(|tp, _| !partitions.contains(tp));
    }
}

/// The transactional id of a worker: stable across restarts of the same replica (its
/// `--instance-id`, else its worker name), so a restarted worker fences its predecessor and
/// aborts the transaction that one left open.
pub fn transactional_id(group: &str, instance: Option<&str>, worker: &str) -> String {
    format!("{group}.{}", instance.unwrap_or(worker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transactional_id_follows_the_instance_id_when_there_is_one() {
        assert_eq!(
            transactional_id("reflex-actions", Some("actions-0"), "host-12"),
            "reflex-actions.actions-0"
        );
        assert_eq!(
            transactional_id("reflex-actions", None, "host-12"),
            "reflex-actions.host-12"
        );
    }

    #[test]
    fn stats_report_an_open_transaction_until_it_closes() {
        let stats = TransactionStats {
            epoch: Some(Instant::now()),
            ..TransactionStats::default()
        };
        assert_eq!(stats.open_for(), Duration::ZERO);
        stats.opened();
        std::thread::sleep(Duration::from_millis(20));
        assert!(stats.open_for() >= Duration::from_millis(10));
        stats.closed(true);
        assert_eq!(stats.open_for(), Duration::ZERO);
        assert_eq!(stats.counts(), (1, 0));
    }
}
