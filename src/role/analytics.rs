//! The analytics role: a consumer-group worker that runs the analyses of
//! [`crate::analytics`] over the event topics and publishes their findings.
//!
//! State is kept per task: the partition number shared by the topics read (partition `p` of
//! every input and repartition topic goes to one worker, a range assignor). An analysis not
//! keyed by its group runs from its repartition topic ([`repartition`]). Each analysis's state
//! in a task is checkpointed as one record of the compacted changelog topic, keyed
//! `<analysis>/<p>`, holding the state and the offsets it reflects. When a worker is given a
//! partition it restores the task's checkpoints and reads on from the committed offsets, which
//! are never past any checkpoint (they are committed after it), skipping for each analysis what
//! its state already holds. So after a crash the input since the last checkpoint is read again
//! and the findings of that stretch are emitted again, with the same ids and values.
//!
//! A checkpoint waits for every finding and forwarded record published before it, writes the
//! states, waits for them, then commits the offsets read (synchronously). Revoked partitions
//! drop their tasks; the next owner restores them as soon as they are assigned. An input
//! partition without a record for `idle_timeout` in this worker stops holding its task's
//! watermark back.

mod checkpoint;
pub mod repartition;
mod worker;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::Admitter;
use crate::kafka::read::ReadError;
use crate::kafka::{self, KafkaSetupError};
use crate::telemetry::{self as metrics, Metrics};

pub use checkpoint::{changelog_key, ensure_changelog};
use worker::Worker;

/// Records handled one after another without looking at the timer or the stop signal (those
/// already received, never waiting for more).
const BURST: usize = 64;

/// Why the analytics role stopped.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// Kafka clients could not be set up or the brokers not reached.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// The telemetry listener could not start.
    #[error(transparent)]
    Listen(#[from] metrics::ListenError),
    /// The changelog topic could not be read.
    #[error("cannot restore analytics state from {topic}: {source}")]
    Restore {
        /// The changelog topic.
        topic: String,
        /// The read error.
        source: ReadError,
    },
    /// The subscription failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// The client's error.
        source: KafkaError,
    },
    /// The changelog topic cannot be created.
    #[error("cannot create the changelog topic {topic}: {message}")]
    Changelog {
        /// The topic.
        topic: String,
        /// The broker's answer.
        message: String,
    },
    /// A repartition topic cannot be created or used.
    #[error("repartition topic {topic}: {message}")]
    Repartition {
        /// The topic (or the input topic it depends on).
        topic: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A finding or a checkpoint could not be published (permanently).
    #[error("cannot publish to {topic}: {source}")]
    Publish {
        /// The topic.
        topic: String,
        /// The producer's error.
        source: KafkaError,
    },
    /// The group cannot go on.
    #[error(transparent)]
    ConsumerFatal(#[from] kafka::ConsumerFatal),
    /// The analyses have nothing to run.
    #[error("no analyses in {dir}: declare some in *.toml files there ([analytics] dir)", dir = dir.display())]
    NoAnalyses {
        /// The directory.
        dir: std::path::PathBuf,
    },
}

/// How to run the analytics role.
#[derive(Debug, Clone)]
pub struct AnalyticsRunOptions {
    /// Stop once every assigned partition is consumed to its end (and checkpointed).
    pub drain: bool,
    /// Worker id named in dead letters.
    pub worker_id: String,
}

/// What the analytics role did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AnalyticsSummary {
    /// Records consumed.
    pub records: u64,
    /// Findings published.
    pub findings: u64,
    /// Late events (summed over analyses).
    pub late: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Records forwarded to repartition topics.
    pub repartitioned: u64,
    /// Milliseconds of work: from the first record received to the last, plus closing the
    /// windows and the last checkpoint at the stop (time spent idle before a drained worker
    /// stops is left out).
    pub busy_ms: u64,
    /// CPU time the process had used when its first record arrived: start-up, not work.
    #[serde(skip)]
    pub startup_cpu: Option<Duration>,
}

impl std::fmt::Display for AnalyticsSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "analytics: {} records, {} findings, {} late events, {} checkpoints, {} records repartitioned",
            self.records, self.findings, self.late, self.checkpoints, self.repartitioned
        )?;
        if self.busy_ms > 0 {
            let secs = self.busy_ms as f64 / 1000.0;
            let rate = self.records as f64 / secs;
            write!(f, "\n{} records in {secs:.2}s from the first received to the last done ({rate:.0} records/s)", self.records)?;
        }
        Ok(())
    }
}

/// Rebalances seen by the consumer, for the loop to act on between two records.
struct AnalyticsContext {
    revoked: Mutex<Vec<i32>>,
    metrics: Arc<Metrics>,
    outage: Arc<kafka::Outage>,
}

impl ClientContext for AnalyticsContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.outage.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.outage.error(&error, reason);
    }
}

impl ConsumerContext for AnalyticsContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let lost: Vec<(String, i32)> = partitions
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            tracing::info!(
                partitions = lost.len(),
                "partitions revoked; their state is restored by the next owner from its checkpoint"
            );
            metrics::PartitionsRevoked { partitions: &lost }.emit(&self.metrics);
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(lost.iter().map(|(_, p)| *p));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned: Vec<(String, i32)> = partitions
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            metrics::PartitionsAssigned {
                partitions: &assigned,
            }
            .emit(&self.metrics);
        }
    }
}

/// Runs the analytics role until `shutdown` is cancelled (or, with `drain`, until caught up).
pub async fn run(
    config: &Config,
    options: AnalyticsRunOptions,
    shutdown: CancellationToken,
) -> Result<AnalyticsSummary, AnalyticsError> {
    let settings = &config.analytics;
    if settings.analyses.is_empty() {
        return Err(AnalyticsError::NoAnalyses {
            dir: settings.dir.clone(),
        });
    }
    kafka::connect(&config.kafka, kafka::CONNECT_TIMEOUT)
        .await
        .map_err(KafkaSetupError::from)?;
    let metrics = Arc::new(Metrics::new(
        "analytics",
        &settings.group_id,
        config.schemas.types(),
        config.telemetry.stall_timeout,
    ));
    metrics.progress();
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
        kafka::ensure_topics(&config.kafka, &config.topics, &config.written_topics()).await?;
        ensure_changelog(config).await?;
    }
    let mut inputs: Vec<String> = config
        .topics
        .events
        .iter()
        .filter(|t| **t != settings.topic)
        .cloned()
        .collect();
    // An analysis of outcomes (types = ["reflex.audit"]) reads the audit topic too.
    if settings
        .analyses
        .iter()
        .any(|a| a.types.iter().any(|t| t == crate::analytics::AUDIT_TYPE))
    {
        inputs.push(config.topics.audit.clone());
    }
    let outage = kafka::Outage::new();
    metrics.watch_kafka(Arc::clone(&outage));
    let producer = kafka::producer(&config.kafka, Arc::clone(&outage))?;
    let mut client = kafka::consumer_config(
        &config.kafka,
        &settings.group_id,
        kafka::Assignment::CoPartitioned,
    );
    client.set("enable.auto.commit", "false");
    let consumer: StreamConsumer<AnalyticsContext> = client
        .create_with_context(AnalyticsContext {
            revoked: Mutex::default(),
            metrics: Arc::clone(&metrics),
            outage: Arc::clone(&outage),
        })
        .map_err(|source| KafkaSetupError::Client {
            what: "consumer",
            brokers: config.kafka.brokers.clone(),
            source,
        })?;
    // Analyses not keyed by their group run from their repartition topics, read in the same
    // group: partition p of each goes with partition p of the inputs.
    let routes = repartition::ensure(config, &inputs).await?;
    let purger = repartition::Purger::new(config, &routes)?;
    let subscribed: Vec<String> = inputs
        .iter()
        .map(String::as_str)
        .chain(routes.repartition_topics())
        .map(str::to_owned)
        .collect();
    let names: Vec<&str> = subscribed.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| AnalyticsError::Subscribe {
            topics: subscribed.clone(),
            source,
        })?;
    let probe = if options.drain {
        Some(kafka::probe(
            &config.kafka,
            &settings.group_id,
            Arc::clone(&outage),
        )?)
    } else {
        None
    };
    if config.telemetry.listen.is_some() {
        metrics::lag::spawn(
            &config.kafka,
            &settings.group_id,
            Arc::clone(&metrics),
            config.telemetry.lag_interval,
            telemetry_stop.clone(),
        )?;
        metrics::producer::spawn(
            producer.clone(),
            settings.topic.clone(),
            Arc::clone(&metrics),
            config.telemetry.lag_interval,
            telemetry_stop.clone(),
        );
    }
    // Policies are not consulted here, but readiness asks for a policy set: name the one the
    // actions role decides the findings with.
    metrics::PolicyActive {
        revision: config.policy.revision(),
        engine: config.policy.engine(),
    }
    .emit(&metrics);
    tracing::info!(group = %settings.group_id, topics = ?subscribed, analyses = settings.analyses.len(), "analytics worker started");

    let mut worker = Worker {
        config,
        inputs,
        producer,
        metrics: Arc::clone(&metrics),
        admitter: Admitter::new(config).untimed(),
        tasks: BTreeMap::new(),
        summary: AnalyticsSummary::default(),
        worker_id: options.worker_id,
        findings: Vec::new(),
        routes,
        now: Instant::now(),
        purger,
    };
    let mut timer = tokio::time::interval(Duration::from_millis(250));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut idle_since = Instant::now();
    // Records handled as of the last tick: the clock is read per tick, not per record.
    let mut records_at_tick = 0;
    // When the first and the latest record arrived, and when stopping began (the summary's
    // busy time): one clock read per record.
    let mut received: Option<(Instant, Instant)> = None;
    let mut stopping: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = timer.tick() => {
                worker.now = Instant::now();
                if worker.summary.records != records_at_tick {
                    records_at_tick = worker.summary.records;
                    idle_since = worker.now;
                }
                metrics.progress();
                worker.forget_revoked(&consumer);
                worker.report_groups();
                worker.adopt_assigned(&consumer).await?;
                worker.release_idle().await?;
                if last_checkpoint.elapsed() >= settings.checkpoint_interval {
                    worker.checkpoint(&consumer).await?;
                    last_checkpoint = Instant::now();
                }
                if idle_since.elapsed() > Duration::from_millis(500)
                    && probe.as_ref().is_some_and(|p| kafka::caught_up(&consumer, p, &subscribed))
                {
                    if worker.settle().await? > 0 {
                        // Records just forwarded to a repartition topic are still to be read.
                        idle_since = Instant::now();
                        continue;
                    }
                    tracing::info!("all partitions consumed to their end");
                    stopping = Some(Instant::now());
                    // The input ends here: every partition is as idle as it will get.
                    worker.release_all().await?;
                    break;
                }
            }
            message = consumer.recv() => {
                // The first record, and those already waiting behind it, up to a burst: the
                // other branches are polled once per burst, not once per record.
                let mut next = Some(message);
                let mut taken = 0;
                let mut stop = false;
                while let Some(message) = next.take() {
                    taken += 1;
                    worker.forget_revoked(&consumer);
                    match message {
                        Err(e) => {
                            if let Some(fatal) = kafka::consumer_fatal(&e, &settings.group_id) {
                                return Err(AnalyticsError::ConsumerFatal(fatal));
                            }
                            if !outage.absorbs(&e) {
                                tracing::warn!(error = %e, "consumer error");
                            }
                        }
                        Ok(message) => {
                            outage.flowing();
                            let now = Instant::now();
                            if received.is_none() {
                                worker.summary.startup_cpu = crate::summary::process_cpu();
                            }
                            received = Some((received.map_or(now, |(first, _)| first), now));
                            metrics::RecordConsumed {
                                topic: message.topic(),
                                partition: message.partition(),
                                offset: message.offset(),
                                timestamp_ms: message.timestamp().to_millis(),
                            }
                            .emit_at(&metrics, now);
                            if !worker.admitter.prepare(message.payload(), &shutdown).await {
                                stop = true;
                                break;
                            }
                            worker.handle(&message).await?;
                        }
                    }
                    if taken < BURST {
                        next = consumer.recv().now_or_never();
                    }
                }
                if stop {
                    break;
                }
            }
        }
    }
    worker.forget_revoked(&consumer);
    let stopping = stopping.unwrap_or_else(Instant::now);
    worker.checkpoint(&consumer).await?;
    if let Some((first, last)) = received {
        let busy = last.duration_since(first) + stopping.elapsed();
        worker.summary.busy_ms = u64::try_from(busy.as_millis()).unwrap_or(u64::MAX);
    }
    consumer.unsubscribe();
    tracing::info!(
        findings = worker.summary.findings,
        late = worker.summary.late,
        "analytics worker stopped"
    );
    Ok(worker.summary)
}
