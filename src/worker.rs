//! The actions role: a consumer-group worker that runs the pipeline for every record.
//!
//! Records of a partition run concurrently unless they share a key (`roles.actions.ordering`):
//! records with the same key run one at a time in offset order. At-least-once: an offset is
//! stored (and auto-committed) only when every record produced for it, and for every earlier
//! record of its partition, is acknowledged (`acks=all`); [`OffsetTracker`] keeps that offset.
//! Records in flight, running or waiting behind their key, are bounded by
//! `roles.actions.max_in_flight`. On partition revoke and on shutdown the stored offsets are
//! committed synchronously.

// rdkafka's `KafkaError` is large; a worker error is rare and ends the worker, so it is not boxed.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, Offset};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditRecord;
use crate::config::Config;
use crate::enrich::Enricher;
use crate::kafka::{self, KafkaSetupError};
use crate::ordering::{KeyQueue, Ordering, Parking, Partitions, Verdict};
use crate::pipeline::{Admitted, Input, OutRecord, Processor, ProcessorSettings};
use crate::policy::reload::PolicyWatch;
use crate::policy::telemetry;
use crate::registry::{HttpRegistry, Lookup, RegistryError};
use crate::schema::wire;
use crate::service::Services;
use crate::summary::Summary;

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Setting up a client or topics failed.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The HTTP client for action services and lookups could not be built.
    #[error(transparent)]
    Services(#[from] crate::service::ServiceError),
    /// A record's task ended without an outcome (it panicked); its offset was not stored.
    #[error("processing input {input} stopped unexpectedly: {why}; stopping so it is re-processed after restart")]
    Task {
        /// `topic/partition/offset` of the input record.
        input: String,
        /// What the runtime reported.
        why: String,
    },
    /// Subscribing failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// A record could not be delivered; its input offset was not stored, so it is re-processed
    /// after a restart.
    #[error("delivery to \"{topic}\" for input {input} failed permanently: {source}; stopping so the input is re-processed after restart")]
    Delivery {
        /// Destination topic.
        topic: String,
        /// `topic/partition/offset` of the input record.
        input: String,
        /// librdkafka's error.
        source: KafkaError,
    },
}

/// How to run the worker.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// This worker's id in audit and dead-letter records.
    pub worker_id: String,
    /// Stop once every assigned partition is consumed to its end and all work is acknowledged.
    pub drain: bool,
}

/// Commits stored offsets synchronously before partitions are taken away, and tells the worker
/// which partitions it lost so it drops their waiting records.
#[derive(Default)]
struct RebalanceContext {
    revoked: Mutex<Vec<(String, i32)>>,
}

impl RebalanceContext {
    fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(PoisonError::into_inner))
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
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(
                    partitions
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition())),
                );
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
        }
    }
}

/// A topic partition.
type Tp = (String, i32);

/// What the records of one ordering slot share: records of the same slot run one at a time.
type Slot = (String, i32, Vec<u8>);

/// A key whose events may be parked in the retry topic: the event topic and the record key.
type ParkKey = (String, Vec<u8>);

/// A consumed record waiting for its turn.
struct Waiting {
    message: OwnedMessage,
    generation: u64,
}

/// What became of one record.
struct Finished {
    tp: Tp,
    offset: i64,
    generation: u64,
    slot: Option<Slot>,
    /// The record's park key and event id, with whether it went to the retry topic.
    parked: Option<(ParkKey, String, bool)>,
    /// The audit record; none when the record was abandoned at shutdown.
    audit: Option<AuditRecord>,
}

type Running = Pin<Box<dyn Future<Output = Result<Finished, WorkerError>> + Send>>;

/// The actions role's scheduler: key-ordered records in flight, offset tracking per partition,
/// keys parked in the retry topic.
struct Scheduler<'a> {
    processor: Arc<Processor>,
    producer: FutureProducer,
    ordering: Ordering,
    /// Whether records run as tasks of their own (several evaluators).
    spawn: bool,
    retry_topic: &'a str,
    partitions: Partitions<Tp>,
    queue: KeyQueue<Slot, Waiting>,
    parking: Parking<ParkKey>,
    running: FuturesUnordered<Running>,
    /// Cancelled at shutdown: records waiting for their retry time give up at once.
    sleep_cancel: CancellationToken,
    /// Cancelled when the shutdown deadline passes: calls in progress give up.
    work_cancel: CancellationToken,
}

impl Scheduler<'_> {
    fn in_flight(&self) -> usize {
        self.running.len() + self.queue.queued()
    }

    /// Takes a consumed record: tracks its offset and starts it, or queues it behind its slot.
    fn accept(&mut self, message: OwnedMessage) {
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
        let admitted = self.processor.admit(&input);
        let due = if from_retry {
            crate::pipeline::retry_due(&input)
        } else {
            None
        };
        let park_key = match (&admitted, message.key()) {
            (Admitted::Event(_), Some(key)) => {
                let topic = crate::pipeline::origin_topic(&input).unwrap_or(message.topic());
                Some((topic.to_owned(), key.to_vec()))
            }
            _ => None,
        };
        let verdict = match (&admitted, &park_key) {
            (Admitted::Event(a), Some(k)) => self.parking.verdict(k, a.event_id(), from_retry),
            _ => Verdict::Run,
        };
        drop(headers);
        let processor = Arc::clone(&self.processor);
        let producer = self.producer.clone();
        let sleep_cancel = self.sleep_cancel.clone();
        let work_cancel = self.work_cancel.clone();
        let input_at = self.spawn.then(|| {
            format!(
                "{}/{}/{}",
                message.topic(),
                message.partition(),
                message.offset()
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
            };
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
                (Admitted::Event(a), Verdict::Run) => {
                    processor.complete(&input, *a, &work_cancel).await
                }
            };
            if work_cancel.is_cancelled() {
                return Ok(abandoned(slot));
            }
            deliver(&producer, &input, &processed.records).await?;
            let parked = park_key
                .zip(processed.audit.event_id.clone())
                .map(|(k, id)| {
                    let retrying = processed.audit.outcome == crate::audit::Outcome::Retrying;
                    (k, id, retrying)
                });
            Ok(Finished {
                tp,
                offset,
                generation,
                slot,
                parked,
                audit: Some(processed.audit),
            })
        };
        match input_at {
            // With several evaluators, records run as tasks so decisions use every core of the
            // runtime; with one, in this task, without the hand-offs between threads.
            Some(input) => {
                let task = tokio::spawn(work);
                self.running.push(Box::pin(async move {
                    task.await.unwrap_or_else(|e| {
                        Err(WorkerError::Task {
                            input,
                            why: e.to_string(),
                        })
                    })
                }));
            }
            None => self.running.push(Box::pin(work)),
        }
    }

    /// Books a finished record: parking, the offset to store, and the next record of its slot.
    fn finish(&mut self, consumer: &StreamConsumer<RebalanceContext>, done: Finished) {
        if let Some((key, id, retrying)) = done.parked {
            if retrying {
                self.parking.park(key, &id);
            } else {
                self.parking.resolve(&key, &id);
            }
        }
        if done.audit.is_some() {
            if let Some(upto) = self
                .partitions
                .complete(&done.tp, done.generation, done.offset)
            {
                if let Err(e) = consumer.store_offset(&done.tp.0, done.tp.1, upto) {
                    // The partition was revoked meanwhile; its new owner re-processes.
                    tracing::debug!(error = %e, topic = %done.tp.0, partition = done.tp.1, "offset not stored");
                }
            }
        }
        if let Some(slot) = done.slot {
            if done.audit.is_none() {
                // Abandoned at shutdown: the records behind it must not overtake it; they are
                // re-delivered after it.
                while self.queue.finish(&slot).is_some() {}
            } else if let Some(next) = self.queue.finish(&slot) {
                self.start(next);
            }
        }
    }

    /// Forgets revoked partitions: their waiting records are dropped (the new owner consumes
    /// them from the committed offset) and late completions of their running records are
    /// ignored.
    fn revoke(&mut self, revoked: Vec<Tp>) {
        if revoked.is_empty() {
            return;
        }
        for tp in &revoked {
            self.partitions.revoke(tp);
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
        // Which keys wait in the retry topic is known only to the worker that sent them there;
        // after a rebalance the retry partitions may have another owner, and a key parked here
        // would never be released. The next owner starts without parked keys, and so does this
        // worker.
        if !self.parking.is_empty() {
            tracing::info!(
                parked_keys = self.parking.len(),
                "parked keys forgotten at the rebalance; their order through the retry topic is no longer enforced"
            );
            self.parking = Parking::new();
        }
    }
}

/// Publishes a record's output records and waits until every one is acknowledged.
async fn deliver(
    producer: &FutureProducer,
    input: &Input<'_>,
    records: &[OutRecord],
) -> Result<(), WorkerError> {
    let coordinates = || format!("{}/{}/{}", input.topic, input.partition, input.offset);
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        let delivery =
            kafka::send(producer, record)
                .await
                .map_err(|source| WorkerError::Delivery {
                    topic: record.topic.clone(),
                    input: coordinates(),
                    source,
                })?;
        deliveries.push((&record.topic, delivery));
    }
    for (topic, delivery) in deliveries {
        kafka::delivered(delivery)
            .await
            .map_err(|source| WorkerError::Delivery {
                topic: topic.clone(),
                input: coordinates(),
                source,
            })?;
    }
    Ok(())
}

/// Runs the actions role until `shutdown` is cancelled (or, with `drain`, until caught up).
pub async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<Summary, WorkerError> {
    let role = &config.actions_role;
    if config.topics.create_missing {
        let extra = emitted_topics(config);
        let created = kafka::ensure_topics(&config.kafka, &config.topics, &extra).await?;
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created topics");
        }
    }
    let consumer: StreamConsumer<RebalanceContext> =
        kafka::consumer_config(&config.kafka, &role.group_id)
            .create_with_context(RebalanceContext::default())
            .map_err(|source| KafkaSetupError::Client {
                what: "consumer",
                brokers: config.kafka.brokers.clone(),
                source,
            })?;
    let mut subscribed = config.topics.events.clone();
    subscribed.push(config.topics.retry.clone());
    let topics: Vec<&str> = subscribed.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| WorkerError::Subscribe {
            topics: subscribed.clone(),
            source,
        })?;
    let producer = kafka::producer(&config.kafka)?;
    // Hot reload: the watcher stops with the worker.
    let watch_stop = shutdown.child_token();
    let _watch_guard = watch_stop.clone().drop_guard();
    let mut policy = PolicyWatch::spawn(
        config.policy.clone(),
        config.policy_reload_interval,
        watch_stop,
    );
    let services = Services::new(config.services)?;
    let mut evaluators = vec![policy.evaluator()];
    let set = policy.current();
    evaluators.extend((1..role.deciders).map(|_| set.evaluator()));
    let processor = Arc::new(Processor::new(
        config.schemas.clone(),
        config.actions.clone(),
        evaluators,
        ProcessorSettings {
            audit_topic: config.topics.audit.clone(),
            dlq_topic: config.topics.dlq.clone(),
            retry_topic: config.topics.retry.clone(),
            retry_delay: role.retry_delay,
            retry_rounds: role.retry_rounds,
            max_event_bytes: role.max_event_bytes,
            worker: options.worker_id.clone(),
            registry: config.registry.clone(),
            type_header: config.type_header.clone(),
            policy_emit_topic: config.policy_emit_topic.clone(),
            policy_emit_topics: config.policy_emit_topics.clone(),
            enricher: Enricher::new(services.clone(), &config.enrichment),
            services,
        },
    ));
    tracing::info!(
        group = %role.group_id,
        topics = ?subscribed,
        ordering = role.ordering.name(),
        max_in_flight = role.max_in_flight,
        deciders = role.deciders,
        policy_revision = %config.policy.revision(),
        worker = %options.worker_id,
        "actions worker started"
    );

    // Watermarks and the group's committed offsets are queried on connections of their own (a
    // client that never joins the group), so the queries do not wait behind long-polling fetches.
    let probe: Option<BaseConsumer> = if options.drain {
        Some(kafka::probe(&config.kafka, &role.group_id)?)
    } else {
        None
    };
    let mut scheduler = Scheduler {
        processor: Arc::clone(&processor),
        producer: producer.clone(),
        ordering: role.ordering,
        spawn: role.deciders > 1,
        retry_topic: &config.topics.retry,
        partitions: Partitions::new(),
        queue: KeyQueue::new(),
        parking: Parking::new(),
        running: FuturesUnordered::new(),
        sleep_cancel: shutdown.child_token(),
        work_cancel: CancellationToken::new(),
    };
    let mut summary = Summary::default();
    let mut first_received: Option<Instant> = None;
    let mut idle_since = Instant::now();
    let mut result = Ok(());
    let mut drain_check = tokio::time::interval(Duration::from_millis(500));
    let book = |summary: &mut Summary,
                scheduler: &mut Scheduler<'_>,
                first: Option<Instant>,
                done: Finished| {
        if let Some(audit) = &done.audit {
            summary.record(audit);
        }
        if let Some(first) = first {
            summary.busy_ms = u64::try_from(first.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        scheduler.finish(&consumer, done);
    };
    loop {
        scheduler.revoke(consumer.context().take_revoked());
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = scheduler.running.next(), if !scheduler.running.is_empty() => {
                match done {
                    Ok(done) => book(&mut summary, &mut scheduler, first_received, done),
                    Err(e) => {
                        tracing::error!(error = %e, "record not delivered");
                        result = Err(e);
                        break;
                    }
                }
            }
            message = consumer.recv(), if scheduler.in_flight() < role.max_in_flight => {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                idle_since = Instant::now();
                first_received.get_or_insert_with(Instant::now);
                if let (Some(registry), Some(value)) = (config.registry.as_deref(), message.payload()) {
                    if !await_schema(registry, value, &shutdown).await {
                        break;
                    }
                }
                if policy.changed().is_some() {
                    let set = policy.current();
                    processor.set_evaluators(|| set.evaluator());
                }
                let message = message.detach();
                scheduler.revoke(consumer.context().take_revoked());
                scheduler.accept(message);
            }
            _ = drain_check.tick(), if options.drain && scheduler.in_flight() == 0 => {
                if idle_since.elapsed() > Duration::from_millis(500) && probe.as_ref().is_some_and(|p| caught_up(&consumer, p, &subscribed)) {
                    tracing::info!("all assigned partitions consumed to their end");
                    break;
                }
            }
        }
    }

    // Let the records in progress, and those waiting behind their key, finish within the
    // deadline, storing offsets as they do. Records waiting for their retry time are left for
    // the next owner, with the records of their key behind them.
    scheduler.sleep_cancel.cancel();
    let deadline = tokio::time::sleep(role.shutdown_timeout);
    tokio::pin!(deadline);
    while !scheduler.running.is_empty() {
        scheduler.revoke(consumer.context().take_revoked());
        tokio::select! {
            () = &mut deadline, if !scheduler.work_cancel.is_cancelled() => {
                tracing::warn!(in_flight = scheduler.running.len(), "shutdown deadline reached; unfinished records will be re-processed");
                scheduler.work_cancel.cancel();
            }
            Some(done) = scheduler.running.next() => {
                match done {
                    // Records waiting behind a finished one start in turn, so a clean stop
                    // leaves nothing done past the committed offset.
                    Ok(done) => book(&mut summary, &mut scheduler, first_received, done),
                    Err(e) => {
                        tracing::error!(error = %e, "record not delivered");
                        if result.is_ok() {
                            result = Err(e);
                        }
                        break;
                    }
                }
            }
        }
    }
    if let Err(e) = producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(5))) {
        tracing::warn!(error = %e, "producer flush at shutdown");
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "final commit failed; uncommitted records will be re-delivered")
        }
    }
    consumer.unsubscribe();
    let counters: Vec<String> = telemetry::snapshot()
        .iter()
        .filter(|c| c.value > 0)
        .map(|c| {
            format!(
                "{}{}={}",
                c.name,
                c.kind.map(|k| format!("{{kind={k}}}")).unwrap_or_default(),
                c.value
            )
        })
        .collect();
    tracing::info!(
        events = summary.total(),
        parked_keys = scheduler.parking.len(),
        policy_revision = %processor.policy_revision(),
        policy_counters = %counters.join(" "),
        "actions worker stopped"
    );
    result.map(|()| summary)
}

/// Makes sure the schema of a wire-format `value` is resolved (or known not to exist) before the
/// record is processed. A registry that cannot be reached is not the event's fault: the record
/// waits, with backoff, and the worker logs why. Returns false if shutdown came first.
pub(crate) async fn await_schema(
    registry: &HttpRegistry,
    value: &[u8],
    shutdown: &CancellationToken,
) -> bool {
    let Ok((id, _)) = wire::split(value) else {
        return true;
    };
    if !matches!(registry.lookup(id), Lookup::Unknown) {
        return true;
    }
    let curve = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    for attempt in 1.. {
        match registry.resolve(id).await {
            Ok(_) | Err(RegistryError::NotFound(_) | RegistryError::Compile { .. }) => return true,
            Err(e) => {
                let backoff = curve.next_delay(attempt);
                tracing::warn!(error = %e, schema_id = id, attempt, retry_in = ?backoff, "schema registry unavailable; the event waits for its schema");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    true
}

/// Topics that emit actions write to, created with the others.
fn emitted_topics(config: &Config) -> Vec<String> {
    let mut topics: Vec<String> = config
        .actions
        .iter()
        .filter_map(|(_, a)| match &a.kind {
            crate::action::ActionKind::Emit { topic, .. } => Some(topic.clone()),
            crate::action::ActionKind::Log { .. } => None,
            crate::action::ActionKind::Http(_) => None,
        })
        .collect();
    topics.push(config.policy_emit_topic.clone());
    topics.extend(config.policy_emit_topics.iter().cloned());
    topics.sort();
    topics.dedup();
    topics.retain(|t| !config.topics.events.contains(t));
    topics
}

/// Whether the group has consumed every partition of `topics` to its end: assigned partitions by
/// this worker's position, the others by the group's committed offsets. A partition still held by
/// a member that died keeps this false until the group hands it over and it is consumed.
pub(crate) fn caught_up<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    probe: &BaseConsumer,
    topics: &[String],
) -> bool {
    let timeout = Duration::from_secs(5);
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    if assignment.count() == 0 {
        return false;
    }
    let mut all = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let Ok(metadata) = probe.fetch_metadata(Some(topic), timeout) else {
            return false;
        };
        for t in metadata.topics() {
            for p in t.partitions() {
                all.add_partition(topic, p.id());
            }
        }
    }
    let positions = consumer.position().ok();
    let Ok(committed) = probe.committed_offsets(all.clone(), timeout) else {
        return false;
    };
    let offset_in = |list: &rdkafka::TopicPartitionList, topic: &str, partition: i32| {
        list.find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
    };
    for elem in all.elements() {
        let (topic, partition) = (elem.topic(), elem.partition());
        let Ok((low, high)) = probe.fetch_watermarks(topic, partition, timeout) else {
            return false;
        };
        let assigned = assignment.find_partition(topic, partition).is_some();
        let at = assigned
            .then(|| {
                positions
                    .as_ref()
                    .and_then(|p| offset_in(p, topic, partition))
            })
            .flatten()
            .or_else(|| offset_in(&committed, topic, partition))
            .unwrap_or(low);
        tracing::debug!(topic, partition, assigned, at, high, "drain check");
        if at < high {
            return false;
        }
    }
    true
}
