//! The analytics role: a consumer-group worker that runs the analyses of
//! [`crate::analytics`] over the event topics and publishes their findings.
//!
//! State is kept per task: the partition number shared by the input topics (partition `p` of
//! every input goes to one worker, a range assignor). Each analysis's state in a task is
//! checkpointed as one record of the compacted changelog topic, keyed `<analysis>/<p>`, holding
//! the state and the input offsets it reflects. When a worker is given a partition it restores
//! the task's checkpoints and reads on from the committed offsets, which are never past any
//! checkpoint (they are committed after it), skipping for each analysis what its state already
//! holds. So after a crash the input since the last checkpoint is read again and the findings
//! of that stretch are emitted again, with the same ids and values.
//!
//! A checkpoint waits for every finding published before it, writes the states, waits for
//! them, then commits the input offsets (synchronously). Revoked partitions drop their tasks;
//! the next owner restores them. An input partition without a record for `idle_timeout` stops
//! holding its task's watermark back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::DeliveryFuture;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::analytics::{Engine, Finding, Observation};
use crate::config::Config;
use crate::ingest::headers::{dead_letter, Letter, Origin};
use crate::ingest::{Admitter, DeadLetterReason, OutRecord};
use crate::kafka::read::{reader, ReadError, Start, TopicReader};
use crate::kafka::{self, KafkaSetupError};
use crate::telemetry::{self as metrics, Metrics};

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
}

impl std::fmt::Display for AnalyticsSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "analytics: {} records, {} findings, {} late events, {} checkpoints",
            self.records, self.findings, self.late, self.checkpoints
        )
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

/// One task: the analyses' states for one partition number.
struct Task {
    engine: Engine,
    /// When each input last had a record, and whether it is marked idle.
    seen: BTreeMap<String, (Instant, bool)>,
    /// Findings (and dead letters) published since the last checkpoint.
    pending: Vec<(String, DeliveryFuture)>,
    /// Counters already reported per analysis: (late, evicted).
    reported: Vec<(u64, u64)>,
    /// Whether the state changed since the last checkpoint.
    dirty: bool,
}

/// The changelog record key of an analysis's state in a task.
pub fn changelog_key(analysis: &str, partition: i32) -> String {
    format!("{analysis}/{partition}")
}

/// A changelog record: the state of one analysis in one task, with a fingerprint of the
/// analysis's declaration (a changed declaration starts from an empty state).
#[derive(serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    spec: String,
    state: Box<serde_json::value::RawValue>,
}

fn fingerprint(analysis: &crate::analytics::Analysis) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(format!("{:?}", analysis.kind).as_bytes())[..8])
        + &format!(
            "/{}/{:?}/{:?}/{}",
            analysis.types.join(","),
            analysis.group_by,
            analysis.filter,
            analysis.allowed_lateness
        )
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
        kafka::ensure_topics(&config.kafka, &config.topics, &[]).await?;
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
    let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| AnalyticsError::Subscribe {
            topics: inputs.clone(),
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
    tracing::info!(group = %settings.group_id, topics = ?inputs, analyses = settings.analyses.len(), "analytics worker started");

    let mut worker = Worker {
        config,
        inputs,
        producer,
        metrics: Arc::clone(&metrics),
        admitter: Admitter::new(config),
        tasks: BTreeMap::new(),
        summary: AnalyticsSummary::default(),
        worker_id: options.worker_id,
        findings: Vec::new(),
    };
    let mut timer = tokio::time::interval(Duration::from_millis(250));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    let mut idle_since = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = timer.tick() => {
                metrics.progress();
                worker.forget_revoked(&consumer);
                worker.release_idle().await?;
                if last_checkpoint.elapsed() >= settings.checkpoint_interval {
                    worker.checkpoint(&consumer).await?;
                    last_checkpoint = Instant::now();
                }
                if idle_since.elapsed() > Duration::from_millis(500)
                    && probe.as_ref().is_some_and(|p| kafka::caught_up(&consumer, p, &worker.inputs))
                {
                    tracing::info!("all partitions consumed to their end");
                    // The input ends here: every partition is as idle as it will get.
                    worker.release_all().await?;
                    break;
                }
            }
            message = consumer.recv() => {
                worker.forget_revoked(&consumer);
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        if let Some(fatal) = kafka::consumer_fatal(&e, &settings.group_id) {
                            return Err(AnalyticsError::ConsumerFatal(fatal));
                        }
                        if !outage.absorbs(&e) {
                            tracing::warn!(error = %e, "consumer error");
                        }
                        continue;
                    }
                };
                outage.flowing();
                idle_since = Instant::now();
                metrics::RecordConsumed {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis(),
                }
                .emit(&metrics);
                if !worker.admitter.prepare(message.payload(), &shutdown).await {
                    break;
                }
                worker.handle(&message).await?;
            }
        }
    }
    worker.forget_revoked(&consumer);
    worker.checkpoint(&consumer).await?;
    consumer.unsubscribe();
    tracing::info!(
        findings = worker.summary.findings,
        late = worker.summary.late,
        "analytics worker stopped"
    );
    Ok(worker.summary)
}

/// Creates the changelog topic, compacted, if it does not exist.
async fn ensure_changelog(config: &Config) -> Result<(), AnalyticsError> {
    let topic = &config.analytics.changelog_topic;
    let admin: AdminClient<DefaultClientContext> =
        kafka::with_properties(kafka::base_config(&config.kafka), &config.kafka)
            .create()
            .map_err(|source| KafkaSetupError::Client {
                what: "admin client",
                brokers: config.kafka.brokers.clone(),
                source,
            })?;
    let spec = NewTopic::new(
        topic,
        config.topics.partitions,
        TopicReplication::Fixed(config.topics.replication_factor),
    )
    .set("cleanup.policy", "compact")
    .set("max.message.bytes", "16777216");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin
            .create_topics([&spec], &options)
            .await
            .map_err(|e| AnalyticsError::Changelog {
                topic: topic.clone(),
                message: e.to_string(),
            })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(AnalyticsError::Changelog {
                    topic: topic.clone(),
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The worker's state besides the consumer.
struct Worker<'a> {
    config: &'a Config,
    inputs: Vec<String>,
    producer: kafka::Producer,
    metrics: Arc<Metrics>,
    admitter: Admitter,
    tasks: BTreeMap<i32, Task>,
    summary: AnalyticsSummary,
    worker_id: String,
    findings: Vec<Finding>,
}

impl Worker<'_> {
    /// Drops the tasks of partitions revoked since the last call.
    fn forget_revoked(&mut self, consumer: &StreamConsumer<AnalyticsContext>) {
        let revoked = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for p in revoked {
            if self.tasks.remove(&p).is_some() {
                tracing::debug!(partition = p, "task dropped");
            }
        }
        self.report_groups();
    }

    /// The task of partition `p`, restored from the changelog the first time.
    async fn task(&mut self, p: i32) -> Result<&mut Task, AnalyticsError> {
        if !self.tasks.contains_key(&p) {
            let task = self.restore(p).await?;
            self.tasks.insert(p, task);
        }
        Ok(self
            .tasks
            .get_mut(&p)
            .unwrap_or_else(|| unreachable!("inserted above")))
    }

    async fn restore(&self, p: i32) -> Result<Task, AnalyticsError> {
        let settings = &self.config.analytics;
        let mut engine = Engine::new(Arc::clone(&settings.analyses), settings.max_groups);
        for topic in &self.inputs {
            engine.track(topic);
        }
        let keys: BTreeMap<String, usize> = settings
            .analyses
            .iter()
            .enumerate()
            .map(|(i, a)| (changelog_key(&a.name, p), i))
            .collect();
        let kafka = self.config.kafka.clone();
        let topic = settings.changelog_topic.clone();
        let wanted: BTreeSet<String> = keys.keys().cloned().collect();
        let found = tokio::task::spawn_blocking(move || read_changelog(&kafka, &topic, &wanted))
            .await
            .map_err(|e| AnalyticsError::Changelog {
                topic: settings.changelog_topic.clone(),
                message: e.to_string(),
            })?
            .map_err(|source| AnalyticsError::Restore {
                topic: settings.changelog_topic.clone(),
                source,
            })?;
        for (key, bytes) in found {
            let Some(&i) = keys.get(&key) else { continue };
            let analysis = &settings.analyses[i];
            let restored = serde_json::from_slice::<Checkpoint>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    if c.spec == fingerprint(analysis) {
                        engine
                            .restore(i, c.state.get().as_bytes())
                            .map_err(|e| e.to_string())
                    } else {
                        Err("the analysis's declaration changed since".into())
                    }
                });
            match restored {
                Ok(()) => {
                    tracing::info!(analysis = %analysis.name, partition = p, offsets = ?engine.state(i).offsets().collect::<Vec<_>>(), "state restored")
                }
                Err(why) => {
                    tracing::warn!(analysis = %analysis.name, partition = p, %why, "checkpoint not used; the analysis starts from an empty state")
                }
            }
        }
        let now = Instant::now();
        Ok(Task {
            reported: (0..settings.analyses.len())
                .map(|i| (engine.state(i).late, engine.state(i).evicted))
                .collect(),
            engine,
            seen: self
                .inputs
                .iter()
                .map(|t| (t.clone(), (now, false)))
                .collect(),
            pending: Vec::new(),
            dirty: false,
        })
    }

    /// Feeds one record to its task and publishes what it finds.
    async fn handle(&mut self, message: &BorrowedMessage<'_>) -> Result<(), AnalyticsError> {
        self.summary.records += 1;
        let p = message.partition();
        let headers = kafka::headers_of(message);
        let input = kafka::input_of(message, &headers);
        let admitted = if message.topic() == self.config.topics.audit {
            match message.payload().and_then(|v| {
                crate::analytics::audit_event(v, message.topic(), p, message.offset())
            }) {
                Some(event) => Ok(event),
                None => return Ok(()),
            }
        } else {
            self.admitter.admit(&input).map(|a| a.event)
        };
        let event = match admitted {
            Ok(event) => event,
            Err(rejection) => {
                tracing::debug!(
                    topic = message.topic(),
                    partition = p,
                    offset = message.offset(),
                    reason = rejection.reason.code(),
                    "not an event for the analyses"
                );
                return Ok(());
            }
        };
        let time_ms = event
            .parsed_time()
            .map(|t| t.timestamp_millis())
            .or(message.timestamp().to_millis())
            .unwrap_or_default();
        let mut findings = std::mem::take(&mut self.findings);
        let observed = {
            let task = self.task(p).await?;
            if let Some(seen) = task.seen.get_mut(message.topic()) {
                *seen = (Instant::now(), false);
            }
            task.dirty = true;
            task.engine.observe(
                Observation {
                    event: &event,
                    time_ms,
                    topic: message.topic(),
                    offset: message.offset(),
                },
                &mut findings,
            )
        };
        if observed.late > 0 && self.config.analytics.dead_letter_late {
            let origin = Origin::of(&input);
            let error = format!(
                "event time {} is behind the watermark of {} analyses: their windows had closed",
                event.time.as_deref().unwrap_or("(record timestamp)"),
                observed.late
            );
            let record = dead_letter(
                &input,
                &self.config.topics.dlq,
                &Letter {
                    reason: DeadLetterReason::Late,
                    error: &error,
                    origin: &origin,
                    worker: &self.worker_id,
                    event_type: Some(&event.ty),
                    retry_round: None,
                    context: None,
                },
            );
            self.publish(p, record).await?;
        }
        self.publish_findings(p, &mut findings).await?;
        self.findings = findings;
        self.report(p);
        Ok(())
    }

    async fn publish_findings(
        &mut self,
        p: i32,
        findings: &mut Vec<Finding>,
    ) -> Result<(), AnalyticsError> {
        for finding in findings.drain(..) {
            self.summary.findings += 1;
            metrics::AnalyticsProgress {
                analysis: &finding.analysis,
                findings: 1,
                late: 0,
                evicted: 0,
                groups: self.groups_of(&finding.analysis),
            }
            .emit(&self.metrics);
            let record = OutRecord {
                topic: self.config.analytics.topic.clone(),
                partition: None,
                key: Some(finding.key.into_bytes()),
                value: Some(finding.event.to_structured()),
                headers: vec![(
                    "content-type".into(),
                    b"application/cloudevents+json".to_vec(),
                )],
            };
            self.publish(p, record).await?;
        }
        Ok(())
    }

    async fn publish(&mut self, p: i32, record: OutRecord) -> Result<(), AnalyticsError> {
        let delivery = kafka::send(&self.producer, &record)
            .await
            .map_err(|source| AnalyticsError::Publish {
                topic: record.topic.clone(),
                source,
            })?;
        if let Some(task) = self.tasks.get_mut(&p) {
            task.pending.push((record.topic, delivery));
        }
        Ok(())
    }

    fn groups_of(&self, analysis: &str) -> u64 {
        let Some(i) = self
            .config
            .analytics
            .analyses
            .iter()
            .position(|a| a.name == analysis)
        else {
            return 0;
        };
        self.tasks
            .values()
            .map(|t| t.engine.state(i).groups() as u64)
            .sum()
    }

    /// Reports the late and evicted counts of partition `p`'s task that moved.
    fn report(&mut self, p: i32) {
        let analyses = Arc::clone(&self.config.analytics.analyses);
        let mut moved = Vec::new();
        if let Some(task) = self.tasks.get_mut(&p) {
            for i in 0..analyses.len() {
                let state = task.engine.state(i);
                let (late, evicted) = task.reported[i];
                if state.late != late || state.evicted != evicted {
                    moved.push((
                        i,
                        state.late.saturating_sub(late),
                        state.evicted.saturating_sub(evicted),
                    ));
                    task.reported[i] = (state.late, state.evicted);
                }
            }
        }
        for (i, late, evicted) in moved {
            self.summary.late += late;
            let name = &analyses[i].name;
            metrics::AnalyticsProgress {
                analysis: name,
                findings: 0,
                late,
                evicted,
                groups: self.groups_of(name),
            }
            .emit(&self.metrics);
        }
    }

    fn report_groups(&self) {
        for analysis in self.config.analytics.analyses.iter() {
            metrics::AnalyticsProgress {
                analysis: &analysis.name,
                findings: 0,
                late: 0,
                evicted: 0,
                groups: self.groups_of(&analysis.name),
            }
            .emit(&self.metrics);
        }
    }

    /// Marks inputs without a record for `idle_timeout` idle, and publishes what that closes.
    async fn release_idle(&mut self) -> Result<(), AnalyticsError> {
        let timeout = self.config.analytics.idle_timeout;
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for p in partitions {
            let mut findings = std::mem::take(&mut self.findings);
            if let Some(task) = self.tasks.get_mut(&p) {
                for (topic, (at, idle)) in &mut task.seen {
                    if !*idle && at.elapsed() >= timeout {
                        *idle = true;
                        task.dirty = true;
                        tracing::debug!(topic = %topic, partition = p, "input idle; it no longer holds the watermark back");
                        task.engine.set_idle(topic, true, &mut findings);
                    }
                }
            }
            self.publish_findings(p, &mut findings).await?;
            self.findings = findings;
        }
        Ok(())
    }

    /// Marks every input of every task idle (the end of a drain), publishing what closes.
    async fn release_all(&mut self) -> Result<(), AnalyticsError> {
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for p in partitions {
            let mut findings = std::mem::take(&mut self.findings);
            if let Some(task) = self.tasks.get_mut(&p) {
                for (topic, (_, idle)) in &mut task.seen {
                    if !*idle {
                        *idle = true;
                        task.dirty = true;
                        task.engine.set_idle(topic, true, &mut findings);
                    }
                }
            }
            self.publish_findings(p, &mut findings).await?;
            self.findings = findings;
        }
        Ok(())
    }

    /// Checkpoints every task: findings acknowledged, states written and acknowledged, then
    /// the input offsets committed.
    async fn checkpoint(
        &mut self,
        consumer: &StreamConsumer<AnalyticsContext>,
    ) -> Result<(), AnalyticsError> {
        if self
            .tasks
            .values()
            .all(|t| !t.dirty && t.pending.is_empty())
        {
            return Ok(());
        }
        let started = Instant::now();
        let settings = &self.config.analytics;
        let mut deliveries = Vec::new();
        let mut offsets = TopicPartitionList::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        for (p, task) in &mut self.tasks {
            if !task.dirty && task.pending.is_empty() {
                continue;
            }
            task.dirty = false;
            for (topic, delivery) in task.pending.drain(..) {
                kafka::delivered(delivery)
                    .await
                    .map_err(|source| AnalyticsError::Publish { topic, source })?;
            }
            let mut next: BTreeMap<String, i64> = BTreeMap::new();
            for (i, analysis) in settings.analyses.iter().enumerate() {
                let state = match task.engine.snapshot(i) {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::error!(analysis = %analysis.name, partition = p, error = %e, "state cannot be serialised; not checkpointed");
                        continue;
                    }
                };
                let value = format!(
                    "{{\"spec\":{},\"state\":{}}}",
                    serde_json::Value::String(fingerprint(analysis)),
                    String::from_utf8_lossy(&state)
                );
                for (topic, offset) in task.engine.state(i).offsets() {
                    let entry = next.entry(topic.to_owned()).or_insert(offset);
                    *entry = (*entry).min(offset);
                }
                bytes += value.len() as u64;
                records += 1;
                let record = OutRecord {
                    topic: settings.changelog_topic.clone(),
                    partition: None,
                    key: Some(changelog_key(&analysis.name, *p).into_bytes()),
                    value: Some(value.into_bytes()),
                    headers: Vec::new(),
                };
                let delivery = kafka::send(&self.producer, &record)
                    .await
                    .map_err(|source| AnalyticsError::Publish {
                        topic: record.topic.clone(),
                        source,
                    })?;
                deliveries.push(delivery);
            }
            for (topic, offset) in next {
                if offset > 0 {
                    // Only this task's partition, which is assigned while the task exists.
                    let _ = offsets.add_partition_offset(&topic, *p, Offset::Offset(offset));
                }
            }
        }
        for delivery in deliveries {
            kafka::delivered(delivery)
                .await
                .map_err(|source| AnalyticsError::Publish {
                    topic: settings.changelog_topic.clone(),
                    source,
                })?;
        }
        if offsets.count() > 0 {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                // The states are written: a later commit, or the replay, covers it.
                tracing::warn!(error = %e, "commit after checkpoint failed; the input since the previous commit will be read again");
            }
        }
        self.summary.checkpoints += 1;
        metrics::AnalyticsCheckpointed {
            records,
            bytes,
            took: started.elapsed(),
        }
        .emit(&self.metrics);
        Ok(())
    }
}

/// The latest value of each of `keys` in the changelog topic.
fn read_changelog(
    kafka: &crate::config::KafkaConfig,
    topic: &str,
    keys: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<u8>>, ReadError> {
    let consumer = reader(kafka)?;
    let mut found = BTreeMap::new();
    let mut records = TopicReader::open(&consumer, topic, Start::Beginning)?;
    while let Some(message) = records.next_record()? {
        let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        if keys.contains(key) {
            match message.payload() {
                Some(value) => {
                    found.insert(key.to_owned(), value.to_vec());
                }
                None => {
                    found.remove(key);
                }
            }
        }
    }
    Ok(found)
}
