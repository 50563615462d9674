//! The actions role's scheduler: key-ordered records in flight, offset tracking per partition,
//! keys parked in the retry topic. Records of one slot (key, or partition) run one at a time in
//! offset order; the offset stored is the highest one below which every record is done.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt as _;
use opentelemetry::context::FutureExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::Offset;
use tokio_util::sync::CancellationToken;

use super::delivery::{hand_over, Handed};
use super::pipeline::{Admitted, Processor};
use super::rebalance::RebalanceContext;
use super::traced::RecordSpan;
use super::WorkerError;
use crate::audit::AuditRecord;
use crate::ingest::{headers, OutRecord};
use crate::kafka::{self, Transaction, TransactionError};
use crate::ordering::{KeyQueue, Ordering, Parking, Partitions, Verdict};
use crate::telemetry::{EventReadAgain, Metrics, OutputsDelivered};

/// A topic partition.
pub(super) type Tp = (String, i32);

/// What the records of one ordering slot share: records of the same slot run one at a time.
pub(super) type Slot = (String, i32, Vec<u8>);

/// A key whose events may be parked in the retry topic: the event topic and partition it came
/// from, and the record key.
pub(super) type ParkKey = (String, i32, Vec<u8>);

/// A consumed record waiting for its turn.
pub(super) struct Waiting {
    message: OwnedMessage,
    generation: u64,
}

/// What became of one record.
pub(super) struct Finished {
    tp: Tp,
    offset: i64,
    generation: u64,
    slot: Option<Slot>,
    /// The record's park key and event id, with whether it went to the retry topic.
    parked: Option<(ParkKey, String, bool)>,
    /// The audit record; none when the record was abandoned at shutdown.
    pub(super) audit: Option<AuditRecord>,
    /// In the exactly-once mode, the output records, sent into the transaction when every
    /// earlier record of the partition is done; empty otherwise (they were handed over).
    outputs: Vec<OutRecord>,
    /// At least once: the output records handed to the producer, whose acknowledgements the
    /// record's offset still waits for.
    pending: Option<Pending>,
    /// Read again after its copy from the retry topic ran ([`Verdict::AlreadyRan`]): no audit
    /// record or outputs of its own, but done with, so its offset is stored.
    ran_already: bool,
}

impl Finished {
    /// The record's audit record once it is final: its outputs acknowledged (at least once) or
    /// ready for the transaction (exactly once); none before, and for a record abandoned at
    /// shutdown.
    pub(super) fn outcome(&self) -> Option<&AuditRecord> {
        self.audit.as_ref().filter(|_| self.pending.is_none())
    }

    /// Whether the record was read again after its retry copy ran ([`Verdict::AlreadyRan`]).
    pub(super) fn ran_already(&self) -> bool {
        self.ran_already
    }
}

/// At least once: a record whose outputs are in the producer's hands.
pub(super) struct Pending {
    handed: Handed,
    span: Option<RecordSpan>,
    sent: Instant,
}

/// Waits for the acknowledgements of a record's outputs; the record is then booked again, to
/// store its offset.
async fn acknowledged(
    done: Finished,
    pending: Pending,
    metrics: Arc<Metrics>,
) -> Result<Finished, WorkerError> {
    let Pending { handed, span, sent } = pending;
    let records = handed.len();
    let acknowledged = match &span {
        Some(span) => span.deliver(records, handed.acknowledged()).await,
        None => handed.acknowledged().await,
    };
    if let Err(e) = acknowledged {
        if let Some(span) = &span {
            span.undelivered();
        }
        return Err(e);
    }
    if let (Some(span), Some(audit)) = (&span, &done.audit) {
        span.finish(audit);
    }
    OutputsDelivered {
        elapsed: sent.elapsed(),
    }
    .emit(&metrics);
    Ok(done)
}

/// How a record's output records reach Kafka.
pub(super) enum Outputs {
    /// Each record's outputs are handed to the producer before the next record of its key
    /// starts, and acknowledged before its offset is stored (at least once).
    Acknowledged(crate::kafka::Producer),
    /// Outputs and offsets are committed in transactions (exactly once).
    Transactional(Arc<Transaction>),
}

pub(super) type Running = Pin<Box<dyn Future<Output = Result<Finished, WorkerError>> + Send>>;

/// Records handed to a task of their own at once when several evaluators decide: one task per
/// batch rather than per record, so a second evaluator adds throughput without adding the
/// hand-offs of a task per record.
pub(super) const EVALUATOR_BATCH: usize = 32;

/// The actions role's scheduler: key-ordered records in flight, offset tracking per partition,
/// keys parked in the retry topic.
pub(super) struct Scheduler<'a> {
    processor: Arc<Processor>,
    outputs: Outputs,
    ordering: Ordering,
    /// Whether records run in tasks of their own (several evaluators), [`EVALUATOR_BATCH`]
    /// records to a task.
    spawn: bool,
    /// Several evaluators: records started but not yet handed to a task ([`Scheduler::flush`]).
    batch: Vec<Running>,
    /// Several evaluators: records handed to tasks whose outcome has not been taken yet.
    pub(super) spawned: usize,
    /// Several evaluators: the tasks' outcomes, one per record, as each is done.
    done_tx: tokio::sync::mpsc::UnboundedSender<Result<Finished, WorkerError>>,
    pub(super) done_rx: tokio::sync::mpsc::UnboundedReceiver<Result<Finished, WorkerError>>,
    retry_topic: &'a str,
    partitions: Partitions<Tp>,
    queue: KeyQueue<Slot, Waiting>,
    pub(super) parking: Parking<ParkKey>,
    /// Retry-topic records (partition, offset) superseded by a later copy of their event.
    superseded: std::collections::HashSet<(i32, i64)>,
    pub(super) running: FuturesUnordered<Running>,
    /// Cancelled at shutdown: records waiting for their retry time give up at once.
    pub(super) sleep_cancel: CancellationToken,
    /// Cancelled when the shutdown deadline passes: calls in progress give up.
    pub(super) work_cancel: CancellationToken,
    /// The worker's metrics.
    metrics: Arc<Metrics>,
    /// Exactly-once: outputs of records done while an earlier record of their partition is
    /// not, by partition and offset. They join the transaction in offset order, with the
    /// offset that covers them, so a transaction never holds a record's outputs without its
    /// offset.
    held: HashMap<Tp, BTreeMap<i64, Vec<OutRecord>>>,
    /// Exactly-once: the commit running in the background, if one is.
    pub(super) committing: Option<tokio::task::JoinHandle<Result<usize, TransactionError>>>,
    /// Exactly-once: outputs (with the offset they let their partition commit up to) that
    /// became ready while a commit ran; they join the next transaction.
    deferred: Vec<(Tp, i64, BTreeMap<i64, Vec<OutRecord>>)>,
}

impl<'a> Scheduler<'a> {
    /// A scheduler with nothing in flight. Records run as tasks of their own when `spawn`
    /// (several evaluators), else in the worker's task; `shutdown` stops records waiting for
    /// their retry time.
    pub(super) fn new(
        processor: Arc<Processor>,
        outputs: Outputs,
        ordering: Ordering,
        spawn: bool,
        retry_topic: &'a str,
        shutdown: &CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            processor,
            outputs,
            ordering,
            spawn,
            batch: Vec::new(),
            spawned: 0,
            done_tx,
            done_rx,
            retry_topic,
            partitions: Partitions::new(),
            queue: KeyQueue::new(),
            parking: Parking::new(),
            superseded: Default::default(),
            running: FuturesUnordered::new(),
            sleep_cancel: shutdown.child_token(),
            work_cancel: CancellationToken::new(),
            metrics,
            held: HashMap::new(),
            committing: None,
            deferred: Vec::new(),
        }
    }
}

impl Scheduler<'_> {
    /// Records running or waiting behind their key.
    pub(super) fn in_flight(&self) -> usize {
        self.running.len() + self.queue.queued() + self.batch.len() + self.spawned
    }

    /// Whether a record is running (in this task or in a task of its batch).
    pub(super) fn busy(&self) -> bool {
        !self.running.is_empty() || !self.batch.is_empty() || self.spawned > 0
    }

    /// Several evaluators: hands the records started since the last call to one task, which
    /// runs them concurrently and reports each outcome as it is done.
    pub(super) fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.spawned += batch.len();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let mut running: FuturesUnordered<Running> = batch.into_iter().collect();
            while let Some(finished) = running.next().await {
                // The worker keeps the receiver until every record it handed over is back.
                let _ = done.send(finished);
            }
        });
    }

    /// Takes a consumed record: tracks its offset and starts it, or queues it behind its slot.
    pub(super) fn accept(&mut self, message: OwnedMessage) {
        let tp = (message.topic().to_owned(), message.partition());
        let generation = self.partitions.start(tp, message.offset());
        let waiting = Waiting {
            generation,
            message,
        };
        match self.slot_of(&waiting.message) {
            Some(slot) => {
                if let Some(ready) = self.queue.offer(slot, waiting) {
                    self.start(ready);
                }
            }
            None => self.start(waiting),
        }
    }

    fn slot_of(&self, message: &OwnedMessage) -> Option<Slot> {
        let tp = |key: Vec<u8>| (message.topic().to_owned(), message.partition(), key);
        match self.ordering {
            Ordering::Partition => Some(tp(Vec::new())),
            Ordering::Key => message.key().map(|k| tp(k.to_vec())),
        }
    }

    /// Admits the record, asks the parking whether it must wait behind its key, and runs the
    /// rest of its stages and its deliveries as one future.
    fn start(&mut self, waiting: Waiting) {
        let Waiting {
            message,
            generation,
        } = waiting;
        let slot = self.slot_of(&message);
        let from_retry = message.topic() == self.retry_topic;
        let headers = kafka::headers_of(&message);
        let input = kafka::input_of(&message, &headers);
        let started = self.processor.tracer().map(|_| SystemTime::now());
        let mut admitted = self.processor.admit(&input);
        let span = self
            .processor
            .tracer()
            .zip(started)
            .map(|(tracer, started)| RecordSpan::begin(tracer, &input, started, &mut admitted));
        let due = if from_retry {
            headers::retry_due(&input)
        } else {
            None
        };
        let park_key = match (&admitted, message.key()) {
            (Admitted::Event(_), Some(key)) => Some(park_key(&input, key)),
            _ => None,
        };
        let superseded = from_retry
            && self
                .superseded
                .remove(&(message.partition(), message.offset()));
        let verdict = match (&admitted, &park_key) {
            (Admitted::Event(_), Some(_)) if superseded => Verdict::AlreadyWaiting,
            (Admitted::Event(a), Some(k)) if from_retry => {
                self.parking.verdict(k, a.event_id(), true)
            }
            (Admitted::Event(a), Some(k)) => self.parking.verdict_on_event(k, a.event_id()),
            _ => Verdict::Run,
        };
        if verdict == Verdict::AlreadyRan {
            if let Admitted::Event(a) = &admitted {
                tracing::info!(
                    id = a.event_id(),
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "event read again after its copy from the retry topic ran; not run a second time"
                );
            }
            EventReadAgain.emit(&self.metrics);
        }
        drop(headers);
        let processor = Arc::clone(&self.processor);
        let producer = match &self.outputs {
            Outputs::Acknowledged(producer) => Some(producer.clone()),
            Outputs::Transactional(_) => None,
        };
        let sleep_cancel = self.sleep_cancel.clone();
        let work_cancel = self.work_cancel.clone();
        let input_at = self.spawn.then(|| {
            (
                message.topic().to_owned(),
                message.partition(),
                message.offset(),
            )
        });
        let work = async move {
            let tp = (message.topic().to_owned(), message.partition());
            let offset = message.offset();
            let abandoned = |slot| Finished {
                tp: tp.clone(),
                offset,
                generation,
                slot,
                parked: None,
                audit: None,
                outputs: Vec::new(),
                pending: None,
                ran_already: false,
            };
            if verdict == Verdict::AlreadyRan {
                // Its audit record and outputs are its retry copy's; only its offset is stored.
                return Ok(Finished {
                    ran_already: true,
                    ..abandoned(slot)
                });
            }
            if let Some(due) = due {
                let wait = due.saturating_sub(chrono::Utc::now().timestamp_millis());
                if wait > 0 {
                    let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
                    tokio::select! {
                        () = sleep_cancel.cancelled() => return Ok(abandoned(slot)),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
            let headers = kafka::headers_of(&message);
            let input = kafka::input_of(&message, &headers);
            let processed = match (admitted, verdict) {
                (Admitted::Finished(p), _) => *p,
                (Admitted::Event(a), Verdict::WaitBehind(first)) => {
                    processor.wait_behind(&input, *a, &first)
                }
                (Admitted::Event(a), Verdict::AlreadyWaiting | Verdict::AlreadyRan) => {
                    processor.already_waiting(*a)
                }
                (Admitted::Event(a), Verdict::Run) => {
                    let stages = processor.complete(&input, *a, &work_cancel);
                    match &span {
                        Some(span) => stages.with_context(span.context()).await,
                        None => stages.await,
                    }
                }
            };
            if work_cancel.is_cancelled() {
                return Ok(abandoned(slot));
            }
            let parked = park_key
                .zip(processed.audit.event_id.clone())
                .map(|(k, id)| {
                    let retrying = processed.audit.outcome == crate::audit::Outcome::Retrying;
                    (k, id, retrying)
                });
            let Some(producer) = producer else {
                // The outputs join the transaction when the worker books the record.
                if let Some(span) = &span {
                    span.finish(&processed.audit);
                }
                return Ok(Finished {
                    tp,
                    offset,
                    generation,
                    slot,
                    parked,
                    audit: Some(processed.audit),
                    outputs: processed.records,
                    pending: None,
                    ran_already: false,
                });
            };
            let sent = Instant::now();
            let handed = match hand_over(&producer, &input, &processed.records).await {
                Ok(handed) => handed,
                Err(e) => {
                    if let Some(span) = &span {
                        span.undelivered();
                    }
                    return Err(e);
                }
            };
            Ok(Finished {
                tp,
                offset,
                generation,
                slot,
                parked,
                audit: Some(processed.audit),
                outputs: Vec::new(),
                pending: Some(Pending { handed, span, sent }),
                ran_already: false,
            })
        };
        match input_at {
            // With several evaluators, records run in tasks of a batch each so decisions use
            // every core of the runtime; with one, in this task, without the hand-offs between
            // threads. A record that panics ends as an error naming it; the rest of its batch
            // runs on.
            Some((topic, partition, offset)) => {
                self.batch.push(Box::pin(
                    std::panic::AssertUnwindSafe(work)
                        .catch_unwind()
                        .map(move |result| {
                            result.unwrap_or_else(|panic| {
                                let why = panic
                                    .downcast_ref::<&str>()
                                    .map(|s| (*s).to_owned())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_else(|| "it panicked".to_owned());
                                Err(WorkerError::Task {
                                    input: format!("{topic}/{partition}/{offset}"),
                                    why,
                                })
                            })
                        }),
                ));
                if self.batch.len() >= EVALUATOR_BATCH {
                    self.flush();
                }
            }
            None => self.running.push(Box::pin(work)),
        }
    }

    /// Books a finished record: parking, the offset to store (in the exactly-once mode, its
    /// outputs and offset into the transaction), and the next record of its slot. Partitions
    /// revoked meanwhile are forgotten first, so nothing of theirs joins a transaction.
    pub(super) fn finish(
        &mut self,
        consumer: &StreamConsumer<RebalanceContext>,
        mut done: Finished,
    ) -> Result<(), WorkerError> {
        self.revoke(consumer.context().take_revoked());
        if let Some((key, id, retrying)) = done.parked.take() {
            if retrying {
                self.parking.park(key, &id);
            } else {
                self.parking.resolve(&key, &id);
            }
        }
        if let Some(pending) = done.pending.take() {
            // The outputs are in the producer's hands, which keeps their order within each
            // partition: the key's next record may start. The offset waits for the brokers'
            // acknowledgements, and the record is booked again when they arrive.
            let slot = done.slot.take();
            let metrics = Arc::clone(&self.metrics);
            self.running
                .push(Box::pin(acknowledged(done, pending, metrics)));
            if let Some(next) = slot.and_then(|slot| self.queue.finish(&slot)) {
                self.start(next);
            }
            return Ok(());
        }
        if done.audit.is_some() || done.ran_already {
            match self.transaction() {
                None => {
                    if let Some(upto) =
                        self.partitions
                            .complete(&done.tp, done.generation, done.offset)
                    {
                        if let Err(e) = consumer.store_offset(&done.tp.0, done.tp.1, upto) {
                            // The partition was revoked meanwhile; its new owner re-processes.
                            tracing::debug!(error = %e, topic = %done.tp.0, partition = done.tp.1, "offset not stored");
                        }
                    }
                }
                Some(transaction) if self.partitions.is_current(&done.tp, done.generation) => {
                    let transaction = Arc::clone(transaction);
                    let held = self.held.entry(done.tp.clone()).or_default();
                    held.insert(done.offset, done.outputs);
                    if let Some(upto) =
                        self.partitions
                            .complete(&done.tp, done.generation, done.offset)
                    {
                        let later = held.split_off(&(upto + 1));
                        let ready = std::mem::replace(held, later);
                        if self.committing.is_some() {
                            // No record joins a transaction while it commits: these join the
                            // next one.
                            self.deferred.push((done.tp.clone(), upto, ready));
                        } else {
                            send_ready(&transaction, &done.tp, upto, ready)?;
                        }
                    }
                }
                // Done after its partition was revoked: the next owner answers it.
                Some(_) => {}
            }
        }
        if let Some(slot) = done.slot {
            if done.audit.is_none() && !done.ran_already {
                // Abandoned at shutdown: the records behind it must not overtake it; they are
                // re-delivered after it.
                while self.queue.finish(&slot).is_some() {}
            } else if let Some(next) = self.queue.finish(&slot) {
                self.start(next);
            }
        }
        Ok(())
    }

    /// The exactly-once mode's transaction.
    fn transaction(&self) -> Option<&Arc<Transaction>> {
        match &self.outputs {
            Outputs::Acknowledged(_) => None,
            Outputs::Transactional(transaction) => Some(transaction),
        }
    }

    /// Whether the worker runs in the exactly-once mode.
    pub(super) fn transactional(&self) -> bool {
        self.transaction().is_some()
    }

    /// Whether the open transaction is due for its commit.
    pub(super) fn commit_due(&self) -> bool {
        self.transaction().is_some_and(|t| t.due())
    }

    /// Starts committing the open transaction in the background (exactly-once mode), unless a
    /// commit is in progress; records keep running meanwhile, and their outputs wait for the
    /// next transaction. The worker hands the result to [`Scheduler::committed`].
    pub(super) fn start_commit(&mut self, consumer: &StreamConsumer<RebalanceContext>) {
        if self.committing.is_some() {
            return;
        }
        let Some(transaction) = self.transaction().cloned() else {
            return;
        };
        self.revoke(consumer.context().take_revoked());
        let group = consumer.group_metadata();
        self.committing = Some(tokio::task::spawn_blocking(move || {
            transaction.commit_as(group)
        }));
    }

    /// Books the end of the background commit: the outputs that waited for it join the next
    /// transaction; an aborted one is processed again (every assigned partition goes back to
    /// its committed offset).
    pub(super) fn committed(
        &mut self,
        consumer: &StreamConsumer<RebalanceContext>,
        result: Result<Result<usize, TransactionError>, tokio::task::JoinError>,
    ) -> Result<(), WorkerError> {
        self.committing = None;
        let Some(transaction) = self.transaction().cloned() else {
            return Ok(());
        };
        self.revoke(consumer.context().take_revoked());
        let result = result.map_err(|e| WorkerError::Task {
            input: "the transaction commit".into(),
            why: e.to_string(),
        })?;
        match result {
            Ok(_) => {
                // The brokers answered: a Kafka outage, if one was open, is over.
                self.metrics.outage().answered();
                for (tp, upto, ready) in std::mem::take(&mut self.deferred) {
                    send_ready(&transaction, &tp, upto, ready)?;
                }
                Ok(())
            }
            Err(TransactionError::Aborted { cause }) => {
                tracing::warn!(error = %cause, "transaction aborted; processing its records again from the committed offsets");
                self.rewind(consumer)
            }
            Err(fatal) => Err(WorkerError::Transaction(fatal)),
        }
    }

    /// Commits the open transaction and waits for it (exactly-once mode; at shutdown), after a
    /// commit in progress ends.
    pub(super) async fn commit(
        &mut self,
        consumer: &StreamConsumer<RebalanceContext>,
    ) -> Result<(), WorkerError> {
        if let Some(commit) = self.committing.take() {
            let result = commit.await;
            self.committed(consumer, result)?;
        }
        self.start_commit(consumer);
        if let Some(commit) = self.committing.take() {
            let result = commit.await;
            self.committed(consumer, result)?;
        }
        Ok(())
    }

    /// After an aborted transaction: forgets every assigned partition's records in progress
    /// and consumes each again from the group's committed offset. A partition that cannot be
    /// sought stops the worker (its records would otherwise be skipped).
    pub(super) fn rewind(
        &mut self,
        consumer: &StreamConsumer<RebalanceContext>,
    ) -> Result<(), WorkerError> {
        let timeout = Duration::from_secs(10);
        let failed = |source| WorkerError::Rewind { source };
        // What the open transaction holds answers records about to be processed again.
        if let Some(transaction) = self.transaction().cloned() {
            tokio::task::block_in_place(|| transaction.abort())
                .map_err(WorkerError::Transaction)?;
        }
        self.deferred.clear();
        let assigned = consumer.assignment().map_err(failed)?;
        let partitions: Vec<Tp> = assigned
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        self.revoke(partitions.clone());
        let committed =
            tokio::task::block_in_place(|| consumer.committed_offsets(assigned, timeout))
                .map_err(failed)?;
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            tokio::task::block_in_place(|| {
                consumer.seek(element.topic(), element.partition(), offset, timeout)
            })
            .map_err(failed)?;
        }
        // The keys waiting in the retry partitions are read again, as after an assignment.
        consumer.context().reassigned(partitions);
        Ok(())
    }

    /// Forgets revoked partitions: their waiting records are dropped (the new owner consumes
    /// them from the committed offset) and late completions of their running records are
    /// ignored.
    pub(super) fn revoke(&mut self, revoked: Vec<Tp>) {
        if revoked.is_empty() {
            return;
        }
        for tp in &revoked {
            self.partitions.revoke(tp);
            self.held.remove(tp);
        }
        self.deferred.retain(|(tp, _, _)| !revoked.contains(tp));
        if let Some(transaction) = self.transaction() {
            transaction.forget(&revoked);
        }
        let dropped = self
            .queue
            .discard(|slot, _| revoked.iter().any(|(t, p)| *t == slot.0 && *p == slot.1));
        if dropped > 0 {
            tracing::info!(
                dropped,
                "records waiting behind their key dropped with their revoked partitions"
            );
        }
        self.superseded
            .retain(|(partition, _)| !revoked.iter().any(|(_, p)| p == partition));
        // The keys of a lost partition are its next owner's: it reads them from the retry
        // partition when it is assigned (see `learn`).
        let forgotten = self
            .parking
            .forget(|(_, partition, _)| revoked.iter().any(|(_, p)| p == partition));
        if forgotten > 0 {
            tracing::debug!(
                forgotten,
                "parked keys handed over with their revoked partitions"
            );
        }
    }

    /// Parks the keys waiting in retry partitions just assigned, each behind the records of its
    /// key in offset order, before any record of their partitions is taken. Of an event's
    /// copies there, only the last runs: the earlier ones were run already by a worker that
    /// wrote the next before it died.
    pub(super) fn learn(&mut self, waiting: Vec<super::waiting::Waiting>) {
        let copies: Vec<(&str, (i32, i64))> = waiting
            .iter()
            .map(|w| (w.id.as_str(), (w.partition, w.offset)))
            .collect();
        let superseded = crate::ordering::superseded(&copies);
        if !superseded.is_empty() {
            tracing::info!(
                copies = superseded.len(),
                "earlier copies of events in the retry topic will be booked, not run: a later copy of each waits"
            );
        }
        self.superseded.extend(superseded);
        for w in waiting {
            self.parking.hand_over(w.key, &w.id);
        }
    }
}

/// Sends the outputs of a partition's records up to `upto` into the open transaction, and
/// lets the partition commit up to there.
fn send_ready(
    transaction: &Transaction,
    tp: &Tp,
    upto: i64,
    ready: BTreeMap<i64, Vec<OutRecord>>,
) -> Result<(), WorkerError> {
    for (offset, outputs) in ready {
        tokio::task::block_in_place(|| transaction.send(&outputs)).map_err(|source| {
            WorkerError::Delivery {
                topic: outputs.first().map(|r| r.topic.clone()).unwrap_or_default(),
                input: format!("{}/{}/{offset}", tp.0, tp.1),
                source,
            }
        })?;
    }
    transaction.ready(&tp.0, tp.1, upto + 1);
    Ok(())
}

/// The key a record is parked under: the event topic and partition it first came from (for a
/// record from the retry topic, as its headers say), and its key.
pub(super) fn park_key(input: &crate::ingest::Input<'_>, key: &[u8]) -> ParkKey {
    match headers::origin(input) {
        Some(origin) => (origin.topic, origin.partition, key.to_vec()),
        None => (
            headers::origin_topic(input)
                .unwrap_or(input.topic)
                .to_owned(),
            input.partition,
            key.to_vec(),
        ),
    }
}
