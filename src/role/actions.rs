//! The actions role: a consumer-group worker that runs the pipeline for every record.
//!
//! Records of a partition run concurrently unless they share a key (`roles.actions.ordering`):
//! records with the same key run one at a time in offset order. At-least-once: an offset is
//! stored (and auto-committed) only when every record produced for it, and for every earlier
//! record of its partition, is acknowledged (`acks=all`);
//! [`OffsetTracker`](crate::ordering::OffsetTracker) keeps that offset.
//! Records in flight, running or waiting behind their key, are bounded by
//! `roles.actions.max_in_flight`. On partition revoke and on shutdown the stored offsets are
//! committed synchronously.

// rdkafka's `KafkaError` is large; a worker error is rare and ends the worker, so it is not boxed.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::OptionFuture;
use futures_util::stream::StreamExt;
use futures_util::FutureExt as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::enrich::Enricher;
use crate::kafka::{self, KafkaSetupError};
use crate::policy::reload::PolicyWatch;
use crate::policy::telemetry;
use crate::service::Services;
use crate::summary::Summary;
use crate::telemetry::{self as metrics, Metrics};
use pipeline::{Processor, ProcessorSettings};
use rebalance::RebalanceContext;
use scheduler::{Finished, Outputs, Scheduler};

mod delivery;
pub mod pipeline;
mod rebalance;
mod scheduler;
mod traced;
mod waiting;
mod warm;

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
    /// The telemetry listener could not start.
    #[error(transparent)]
    Telemetry(#[from] metrics::ListenError),
    /// The trace exporter could not start.
    #[error(transparent)]
    Tracing(#[from] crate::otel::TraceError),
    /// The consumer hit an error it cannot recover from.
    #[error(transparent)]
    ConsumerFatal(kafka::ConsumerFatal),
    /// The retry topic could not be read.
    #[error(transparent)]
    Retry(kafka::ReadError),
    /// The retry topic has fewer partitions than an event topic, so some retries could not
    /// stay with the partition they came from.
    #[error("retry topic \"{retry}\" has {has} partitions but event topic \"{topic}\" has {needed}; a key's retries must stay on the partition number its events have. Add partitions: kafka-topics.sh --alter --topic {retry} --partitions {needed}")]
    RetryPartitions {
        /// The retry topic.
        retry: String,
        /// Its partitions.
        has: usize,
        /// The event topic with more.
        topic: String,
        /// Its partitions.
        needed: usize,
    },
    /// Subscribing failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The exactly-once mode's producer cannot go on.
    #[error(transparent)]
    Transaction(kafka::TransactionError),
    /// After an aborted transaction, the assigned partitions could not be consumed again from
    /// their committed offsets.
    #[error("cannot go back to the committed offsets after an aborted transaction: {source}; stopping so the records are processed again after restart")]
    Rewind {
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

/// Fails when an event topic has more partitions than the retry topic. A topic the brokers do
/// not know yet (created later by a publisher) is left out.
fn check_retry_partitions(producer: &kafka::Producer, config: &Config) -> Result<(), WorkerError> {
    let metadata = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|source| {
            WorkerError::Retry(kafka::ReadError::Read {
                topic: config.topics.retry.clone(),
                source,
            })
        })?;
    let count = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|&n| n > 0)
    };
    let Some(has) = count(&config.topics.retry) else {
        return Ok(());
    };
    for topic in &config.topics.events {
        if let Some(needed) = count(topic).filter(|&n| n > has) {
            return Err(WorkerError::RetryPartitions {
                retry: config.topics.retry.clone(),
                has,
                topic: topic.clone(),
                needed,
            });
        }
    }
    Ok(())
}

/// How to run the worker.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// This worker's id in audit and dead-letter records.
    pub worker_id: String,
    /// Stop once every assigned partition is consumed to its end and all work is acknowledged.
    pub drain: bool,
}

/// Runs the actions role until `shutdown` is cancelled (or, with `drain`, until caught up).
pub async fn run(
    config: &Config,
    options: RunOptions,
    shutdown: CancellationToken,
) -> Result<Summary, WorkerError> {
    let role = &config.actions_role;
    kafka::connect(&config.kafka, kafka::CONNECT_TIMEOUT)
        .await
        .map_err(KafkaSetupError::from)?;
    let metrics = Arc::new(Metrics::new(
        "actions",
        &role.group_id,
        config.schemas.types(),
        config.telemetry.stall_timeout,
    ));
    metrics.progress();
    // The listener and the lag probe stop with the worker.
    let telemetry_stop = shutdown.child_token();
    let _telemetry_guard = telemetry_stop.clone().drop_guard();
    if let Some(addr) = config.telemetry.listen {
        metrics::serve(
            addr,
            Arc::clone(&metrics),
            config.telemetry.token.as_ref(),
            telemetry_stop.clone(),
        )
        .await?;
    }
    if config.topics.create_missing {
        let extra = config.written_topics();
        let created = kafka::ensure_topics(&config.kafka, &config.topics, &extra).await?;
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created topics");
        }
    }
    let outage = kafka::Outage::new();
    metrics.watch_kafka(Arc::clone(&outage));
    let exactly_once = config.kafka.guarantee == kafka::Guarantee::ExactlyOnce;
    let mut consumer_config = kafka::consumer_config(
        &config.kafka,
        &role.group_id,
        kafka::Assignment::CoPartitioned,
    );
    if exactly_once {
        // Offsets are committed with the transactions; retry records and emitted events of
        // aborted transactions are never read.
        consumer_config
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
    }
    let consumer: StreamConsumer<RebalanceContext> = consumer_config
        .create_with_context(RebalanceContext::new(
            Arc::clone(&metrics),
            Arc::clone(&outage),
            // Under exactly-once, a crashed owner's open transaction holds its offsets
            // unstable until it is fenced or times out: librdkafka waits for them itself.
            if exactly_once {
                None
            } else {
                rebalance::reset_offset(consumer_config.get("auto.offset.reset"))
            },
        ))
        .map_err(|source| KafkaSetupError::Client {
            what: "consumer",
            brokers: config.kafka.brokers.clone(),
            source,
        })?;
    let producer = kafka::producer(&config.kafka, Arc::clone(&outage))?;
    check_retry_partitions(&producer, config)?;
    let transaction = if exactly_once {
        let id = kafka::transaction::transactional_id(
            &role.group_id,
            config.kafka.group.instance_id.as_deref(),
            &options.worker_id,
        );
        let transaction = tokio::task::block_in_place(|| {
            kafka::Transaction::start(
                &config.kafka,
                &config.kafka.transactions,
                &id,
                Arc::clone(&outage),
            )
        })?;
        let transaction = Arc::new(transaction);
        consumer
            .context()
            .commit_on_revoke(Arc::clone(&transaction));
        metrics.watch_transactions(transaction.stats());
        tracing::info!(transactional_id = %id, "exactly-once: outputs and offsets are committed in transactions");
        Some(transaction)
    } else {
        None
    };
    // The producer that writes the outputs: the transactional one in exactly-once mode.
    let writing = transaction
        .as_ref()
        .map_or_else(|| producer.clone(), |t| t.producer().clone());
    let mut written = vec![
        config.topics.audit.clone(),
        config.topics.dlq.clone(),
        config.topics.retry.clone(),
    ];
    written.extend(config.emit_topics());
    let warmed =
        tokio::task::block_in_place(|| warm::producer(&writing, &written, kafka::CONNECT_TIMEOUT));
    tracing::info!(
        topics = ?warmed.known,
        unknown = ?warmed.unknown,
        elapsed = ?warmed.elapsed,
        "producer warmed: metadata of the topics written fetched before the first record"
    );
    if !warmed.unknown.is_empty() {
        tracing::warn!(
            topics = ?warmed.unknown,
            "topics this worker writes do not exist (or this principal may not describe them): records to them fail, and the worker stops, until they exist; create them with `reflex topics` or set topics.create_missing = true"
        );
    }
    if config.telemetry.listen.is_some() {
        metrics::lag::spawn(
            &config.kafka,
            &role.group_id,
            Arc::clone(&metrics),
            config.telemetry.lag_interval,
            telemetry_stop.clone(),
        )?;
        metrics::producer::spawn(
            writing.clone(),
            config.topics.audit.clone(),
            Arc::clone(&metrics),
            config.telemetry.lag_interval,
            telemetry_stop.clone(),
        );
    }
    // Hot reload: the watcher stops with the worker.
    let watch_stop = shutdown.child_token();
    let _watch_guard = watch_stop.clone().drop_guard();
    let mut policy = PolicyWatch::spawn(
        config.policy.clone(),
        config.policy_reload_interval,
        watch_stop,
    );
    let services = Services::new(config.services.clone())?;
    metrics.watch_breakers(&services);
    services.observe_attempts(metrics::ActionAttempted::observer(Arc::clone(&metrics)));
    let tracer = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            let tracer = crate::otel::Tracer::start(endpoint, "actions", &role.group_id)?;
            tracing::info!(endpoint = %tracer.endpoint(), "exporting traces");
            metrics.watch_spans(tracer.shared_stats());
            Some(tracer)
        }
        None => None,
    };
    let mut evaluators = vec![policy.evaluator()];
    let set = policy.current();
    evaluators.extend((1..role.deciders).map(|_| set.evaluator()));
    let types: Arc<[String]> = config.actions.iter().map(|(t, _)| t.to_owned()).collect();
    let warm_topic = config.topics.events.first().cloned().unwrap_or_default();
    let warmed = tokio::task::block_in_place(|| {
        warm::policy(
            &mut evaluators,
            types.iter().map(String::as_str),
            &warm_topic,
        )
    });
    metrics::PolicyWarmed {
        revision: set.revision(),
        types: warmed.types,
        evaluators: warmed.evaluators,
        elapsed: warmed.elapsed,
    }
    .emit(&metrics);
    metrics::PolicyActive {
        revision: set.revision(),
        engine: set.engine(),
    }
    .emit(&metrics);
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
            tracer: tracer.clone(),
            publishers: config.publishers.clone(),
        },
    ));
    // Subscribed last: the first record finds the engines and the producer warm.
    let mut subscribed = config.topics.events.clone();
    subscribed.push(config.topics.retry.clone());
    let topics: Vec<&str> = subscribed.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| WorkerError::Subscribe {
            topics: subscribed.clone(),
            source,
        })?;
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
    let probe: Option<kafka::Probe> = if options.drain {
        Some(kafka::probe(
            &config.kafka,
            &role.group_id,
            Arc::clone(&outage),
        )?)
    } else {
        None
    };
    let mut scheduler = Scheduler::new(
        Arc::clone(&processor),
        match &transaction {
            Some(transaction) => Outputs::Transactional(Arc::clone(transaction)),
            None => Outputs::Acknowledged(producer.clone()),
        },
        role.ordering,
        role.deciders > 1,
        &config.topics.retry,
        &shutdown,
        Arc::clone(&metrics),
    );
    let mut summary = Summary::default();
    let mut warming: Option<tokio::task::JoinHandle<warm::Reloaded>> = None;
    let mut first_received: Option<Instant> = None;
    let mut idle_since = Instant::now();
    let mut result = Ok(());
    let mut drain_check = tokio::time::interval(Duration::from_millis(500));
    // The loop beats even when no record arrives; a loop stuck in an await stops beating.
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    // Exactly-once: the open transaction is looked at this often, and committed when due.
    let mut commit_check = tokio::time::interval(
        (config.kafka.transactions.commit_interval / 4).max(Duration::from_millis(5)),
    );
    commit_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let book = |summary: &mut Summary,
                scheduler: &mut Scheduler<'_>,
                first: Option<Instant>,
                done: Finished|
     -> Result<(), WorkerError> {
        if done.ran_already() {
            summary.read_again += 1;
        }
        if let Some(audit) = done.outcome() {
            summary.record(audit);
            metrics::EventProcessed { audit }.emit(&metrics);
            if !scheduler.transactional() {
                // Its outputs were acknowledged: the brokers answer.
                outage.answered();
            }
        }
        if let Some(first) = first {
            summary.busy_ms = u64::try_from(first.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        scheduler.finish(&consumer, done)?;
        if scheduler.commit_due() {
            scheduler.start_commit(&consumer);
        }
        Ok(())
    };
    // Partitions lost are forgotten, and the keys waiting in the retry partitions gained are
    // learnt, before the next record is taken. A transaction aborted in the rebalance sends
    // every assigned partition back to its committed offset first.
    let rebalanced = |scheduler: &mut Scheduler<'_>| -> Result<(), WorkerError> {
        match consumer.context().take_failed() {
            None => {}
            Some(kafka::TransactionError::Aborted { cause }) => {
                tracing::warn!(error = %cause, "transaction aborted in a rebalance; processing its records again from the committed offsets");
                scheduler.rewind(&consumer)?;
            }
            Some(fatal) => return Err(WorkerError::Transaction(fatal)),
        }
        scheduler.revoke(consumer.context().take_revoked());
        let retry: Vec<i32> = consumer
            .context()
            .take_assigned()
            .into_iter()
            .filter(|(topic, _)| *topic == config.topics.retry)
            .map(|(_, p)| p)
            .collect();
        if retry.is_empty() {
            return Ok(());
        }
        // A reader of its own for the rebalance: an idle client would queue librdkafka's
        // connection errors during an outage and report them all at the next rebalance.
        let read = tokio::task::block_in_place(|| {
            waiting::waiting_in_retry(
                &consumer,
                || kafka::reader(&config.kafka),
                &config.topics.retry,
                &retry,
                &processor,
            )
        });
        match read {
            Ok(waiting) => scheduler.learn(waiting),
            Err(e) => tracing::warn!(
                error = %e,
                partitions = ?retry,
                "cannot read the keys waiting in the retry partitions assigned; until their records have run, later records of those keys may overtake them"
            ),
        }
        Ok(())
    };
    // With several evaluators, the records ready at once are taken together and handed to
    // tasks in batches.
    let burst = if role.deciders > 1 {
        scheduler::EVALUATOR_BATCH * role.deciders
    } else {
        1
    };
    loop {
        // Records started by the last turn go to their evaluators' tasks.
        scheduler.flush();
        if let Err(e) = rebalanced(&mut scheduler) {
            tracing::error!(error = %e, "stopping the worker");
            result = Err(e);
            break;
        }
        metrics.set_in_flight(scheduler.in_flight());
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = heartbeat.tick() => {
                metrics.progress();
                outage.tick();
            }
            Some(committed) = OptionFuture::from(scheduler.committing.as_mut()), if scheduler.committing.is_some() => {
                if let Err(e) = scheduler.committed(&consumer, committed) {
                    tracing::error!(error = %e, "stopping the worker");
                    result = Err(e);
                    break;
                }
            }
            Some(done) = scheduler.running.next(), if !scheduler.running.is_empty() => {
                if let Err(e) = done.and_then(|done| book(&mut summary, &mut scheduler, first_received, done)) {
                    tracing::error!(error = %e, "record not delivered");
                    result = Err(e);
                    break;
                }
            }
            Some(done) = scheduler.done_rx.recv(), if scheduler.spawned > 0 => {
                scheduler.spawned -= 1;
                if let Err(e) = done.and_then(|done| book(&mut summary, &mut scheduler, first_received, done)) {
                    tracing::error!(error = %e, "record not delivered");
                    result = Err(e);
                    break;
                }
            }
            // A reloaded set is warmed on a blocking thread while the running one decides; it
            // decides from the first record taken after it is warm.
            () = policy.updated(), if warming.is_none() => {
                let (set, types, topic) = (policy.current(), Arc::clone(&types), warm_topic.clone());
                let deciders = role.deciders;
                warming = Some(tokio::task::spawn_blocking(move || warm::reloaded(set, deciders, &types, &topic)));
            }
            Some(reloaded) = OptionFuture::from(warming.as_mut()), if warming.is_some() => {
                warming = None;
                let warm::Reloaded { set, evaluators, warmed } = reloaded.unwrap_or_else(|e| {
                    // The warm-up panicked: the set decides unwarmed rather than not at all.
                    tracing::warn!(error = %e, "policy warm-up stopped unexpectedly; the reloaded set decides without it");
                    warm::Reloaded { set: policy.current(), evaluators: Vec::new(), warmed: warm::PolicyWarmed::default() }
                });
                let mut evaluators = evaluators.into_iter();
                processor.set_evaluators(|| evaluators.next().unwrap_or_else(|| set.evaluator()));
                if warmed.evaluators > 0 {
                    metrics::PolicyWarmed {
                        revision: set.revision(),
                        types: warmed.types,
                        evaluators: warmed.evaluators,
                        elapsed: warmed.elapsed,
                    }
                    .emit(&metrics);
                }
                metrics::PolicyActive {
                    revision: set.revision(),
                    engine: set.engine(),
                }
                .emit(&metrics);
            }
            _ = commit_check.tick(), if scheduler.transactional() => {
                if scheduler.commit_due() {
                    scheduler.start_commit(&consumer);
                }
            }
            message = consumer.recv(), if scheduler.in_flight() < role.max_in_flight => {
                // The first record, and (several evaluators) those ready behind it.
                let mut next = Some(message);
                let mut taken = 0;
                let mut stop = false;
                while let Some(message) = next.take() {
                    taken += 1;
                    if taken < burst && scheduler.in_flight() + 1 < role.max_in_flight {
                        next = consumer.recv().now_or_never();
                    }
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => {
                            if let Some(fatal) = kafka::consumer_fatal(&e, &role.group_id) {
                                tracing::error!(error = %fatal, "stopping the worker");
                                result = Err(WorkerError::ConsumerFatal(fatal));
                                stop = true;
                                break;
                            }
                            if !outage.absorbs(&e) {
                                tracing::warn!(error = %e, "consumer error");
                            }
                            continue;
                        }
                    };
                    outage.flowing();
                    idle_since = Instant::now();
                    if first_received.is_none() {
                        first_received = Some(Instant::now());
                        summary.startup_cpu = crate::summary::process_cpu();
                    }
                    metrics::RecordConsumed {
                        topic: message.topic(),
                        partition: message.partition(),
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis(),
                    }
                    .emit(&metrics);
                    if let (Some(registry), Some(value)) = (config.registry.as_deref(), message.payload()) {
                        if !registry.await_schema(value, &shutdown).await {
                            stop = true;
                            break;
                        }
                    }
                    let message = message.detach();
                    if let Err(e) = rebalanced(&mut scheduler) {
                        tracing::error!(error = %e, "stopping the worker");
                        result = Err(e);
                        stop = true;
                        break;
                    }
                    scheduler.accept(message);
                }
                if stop {
                    break;
                }
            }
            _ = drain_check.tick(), if options.drain && scheduler.in_flight() == 0 => {
                if idle_since.elapsed() > Duration::from_millis(500) && probe.as_ref().is_some_and(|p| kafka::caught_up(&consumer, p, &subscribed)) {
                    tracing::info!("all assigned partitions consumed to their end");
                    break;
                }
            }
        }
    }

    consumer.context().stopping();
    // Let the records in progress, and those waiting behind their key, finish within the
    // deadline, storing offsets as they do. Records waiting for their retry time are left for
    // the next owner, with the records of their key behind them.
    scheduler.sleep_cancel.cancel();
    let deadline = tokio::time::sleep(role.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        scheduler.flush();
        if !scheduler.busy() {
            break;
        }
        scheduler.revoke(consumer.context().take_revoked());
        tokio::select! {
            () = &mut deadline, if !scheduler.work_cancel.is_cancelled() => {
                tracing::warn!(in_flight = scheduler.running.len() + scheduler.spawned, "shutdown deadline reached; unfinished records will be re-processed");
                scheduler.work_cancel.cancel();
            }
            // Records waiting behind a finished one start in turn, so a clean stop leaves
            // nothing done past the committed offset.
            Some(done) = scheduler.running.next(), if !scheduler.running.is_empty() => {
                if let Err(e) = done.and_then(|done| book(&mut summary, &mut scheduler, first_received, done)) {
                    tracing::error!(error = %e, "record not delivered");
                    if result.is_ok() {
                        result = Err(e);
                    }
                    break;
                }
            }
            Some(done) = scheduler.done_rx.recv(), if scheduler.spawned > 0 => {
                scheduler.spawned -= 1;
                if let Err(e) = done.and_then(|done| book(&mut summary, &mut scheduler, first_received, done)) {
                    tracing::error!(error = %e, "record not delivered");
                    if result.is_ok() {
                        result = Err(e);
                    }
                    break;
                }
            }
        }
    }
    if scheduler.transactional() {
        if result.is_ok() {
            if let Err(e) = scheduler.commit(&consumer).await {
                tracing::warn!(error = %e, "final transaction not committed; its records will be processed again");
            }
        }
    } else {
        if let Err(e) = producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(5))) {
            tracing::warn!(error = %e, "producer flush at shutdown");
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; uncommitted records will be re-delivered")
            }
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
    if let Some(tracer) = tracer {
        // Exporting the last spans blocks for at most a few seconds.
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
    }
    result.map(|()| summary)
}
