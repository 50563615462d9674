//! The actions role: a consumer-group worker that runs the pipeline for every record.
//!
//! At-least-once: offsets are stored (and auto-committed) only after every record produced for
//! an input record, and for all earlier input records, is acknowledged (`acks=all`). Work in
//! flight is bounded by `roles.actions.max_in_flight`. On partition revoke and on shutdown the
//! stored offsets are committed synchronously.

// rdkafka's `KafkaError` is large; a worker error is rare and ends the worker, so it is not boxed.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::{ClientContext, Offset};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::{self, KafkaSetupError};
use crate::pipeline::{Processor, ProcessorSettings};
use crate::policy::reload::PolicyWatch;
use crate::policy::telemetry;
use crate::registry::{HttpRegistry, Lookup, RegistryError};
use crate::schema::wire;
use crate::summary::Summary;

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Setting up a client or topics failed.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
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

/// Commits stored offsets synchronously before partitions are taken away.
struct RebalanceContext;

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; committing stored offsets"
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

type Completion =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Done, WorkerError>> + Send>>;

/// An input record whose every effect is acknowledged.
struct Done {
    topic: String,
    partition: i32,
    offset: i64,
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
            .create_with_context(RebalanceContext)
            .map_err(|source| KafkaSetupError::Client {
                what: "consumer",
                brokers: config.kafka.brokers.clone(),
                source,
            })?;
    let topics: Vec<&str> = config.topics.events.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| WorkerError::Subscribe {
            topics: config.topics.events.clone(),
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
    let mut processor = Processor::new(
        config.schemas.clone(),
        config.actions.clone(),
        policy.evaluator(),
        ProcessorSettings {
            audit_topic: config.topics.audit.clone(),
            dlq_topic: config.topics.dlq.clone(),
            max_event_bytes: role.max_event_bytes,
            worker: options.worker_id.clone(),
            registry: config.registry.clone(),
            type_header: config.type_header.clone(),
            policy_emit_topic: config.policy_emit_topic.clone(),
            policy_emit_topics: config.policy_emit_topics.clone(),
        },
    );
    tracing::info!(
        group = %role.group_id,
        topics = ?config.topics.events,
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
    let mut summary = Summary::default();
    let mut first_received: Option<Instant> = None;
    let mut pending: FuturesOrdered<Completion> = FuturesOrdered::new();
    let mut idle_since = Instant::now();
    let mut result = Ok(());
    let mut drain_check = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = pending.next(), if !pending.is_empty() => {
                if let Some(first) = first_received {
                    summary.busy_ms = u64::try_from(first.elapsed().as_millis()).unwrap_or(u64::MAX);
                }
                if let Err(e) = store(&consumer, done) {
                    result = Err(e);
                    break;
                }
            }
            message = consumer.recv(), if pending.len() < role.max_in_flight => {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                idle_since = Instant::now();
                if let (Some(registry), Some(value)) = (config.registry.as_deref(), message.payload()) {
                    if !await_schema(registry, value, &shutdown).await {
                        break;
                    }
                }
                let headers = kafka::headers_of(&message);
                let input = kafka::input_of(&message, &headers);
                if let Some(evaluator) = policy.changed() {
                    processor.set_evaluator(evaluator);
                }
                let processed = processor.process(&input);
                summary.record(&processed.audit);
                first_received.get_or_insert_with(Instant::now);
                let coordinates = format!("{}/{}/{}", input.topic, input.partition, input.offset);
                let mut deliveries = VecDeque::with_capacity(processed.records.len());
                for record in &processed.records {
                    match kafka::send(&producer, record).await {
                        Ok(d) => deliveries.push_back((record.topic.clone(), d)),
                        Err(source) => {
                            result = Err(WorkerError::Delivery { topic: record.topic.clone(), input: coordinates.clone(), source });
                            break;
                        }
                    }
                }
                if result.is_err() {
                    break;
                }
                let done = Done { topic: input.topic.to_owned(), partition: input.partition, offset: input.offset };
                pending.push_back(Box::pin(async move {
                    for (topic, delivery) in deliveries {
                        kafka::delivered(delivery)
                            .await
                            .map_err(|source| WorkerError::Delivery { topic, input: coordinates.clone(), source })?;
                    }
                    Ok(done)
                }));
            }
            _ = drain_check.tick(), if options.drain && pending.is_empty() => {
                if idle_since.elapsed() > Duration::from_millis(500) && probe.as_ref().is_some_and(|p| caught_up(&consumer, p, &config.topics.events)) {
                    tracing::info!("all assigned partitions consumed to their end");
                    break;
                }
            }
        }
    }

    // Drain what is in flight, within the deadline, storing offsets as acknowledgements arrive.
    let deadline = tokio::time::sleep(role.shutdown_timeout);
    tokio::pin!(deadline);
    while !pending.is_empty() {
        tokio::select! {
            () = &mut deadline => {
                tracing::warn!(in_flight = pending.len(), "shutdown deadline reached; unacknowledged records will be re-processed");
                break;
            }
            Some(done) = pending.next() => {
                if let Some(first) = first_received {
                    summary.busy_ms = u64::try_from(first.elapsed().as_millis()).unwrap_or(u64::MAX);
                }
                if let Err(e) = store(&consumer, done) {
                    if result.is_ok() {
                        result = Err(e);
                    }
                    break;
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
    let mut backoff = Duration::from_millis(100);
    for attempt in 1.. {
        match registry.resolve(id).await {
            Ok(_) | Err(RegistryError::NotFound(_) | RegistryError::Compile { .. }) => return true,
            Err(e) => {
                tracing::warn!(error = %e, schema_id = id, attempt, retry_in = ?backoff, "schema registry unavailable; the event waits for its schema");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
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

fn store(
    consumer: &StreamConsumer<RebalanceContext>,
    done: Result<Done, WorkerError>,
) -> Result<(), WorkerError> {
    let done = done.inspect_err(|e| tracing::error!(error = %e, "record not delivered"))?;
    if let Err(e) = consumer.store_offset(&done.topic, done.partition, done.offset) {
        // The partition was revoked meanwhile; its new owner re-processes the record.
        tracing::debug!(error = %e, topic = %done.topic, partition = done.partition, "offset not stored");
    }
    Ok(())
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
