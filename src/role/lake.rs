//! The lake role: a consumer-group worker that turns records into Parquet files.
//!
//! Each record's row is appended to the Arrow builders of its file ([`crate::lake::rows`]).
//! When a segment rotates, its files are encoded and uploaded by a task off the consumer loop,
//! which goes on reading meanwhile; at most `lake.max_segments_writing` segments are written at
//! once, one per partition, and buffered plus writing rows stay within
//! `lake.max_buffered_bytes`: at either bound the loop waits for a write to finish.
//!
//! Offsets are committed by hand, synchronously, by the loop once a segment's files are
//! written, at exactly the offset after the segment (unless a file found already written
//! reaches past it: then after a later segment, see [`crate::lake::segment`]); automatic
//! commits are off. A partition revoked while its segment is written keeps its buffered rows
//! no longer (they are dropped) and commits nothing when the write ends: its new owner reads
//! from the committed offset and meets the same file names (see [`crate::lake::segment`] for
//! why that neither repeats nor loses rows). A quiet partition is written by a timer once its
//! segment reaches `lake.max_file_age`; above `lake.max_buffered_bytes` the largest segment is
//! written early. On shutdown every segment is written and committed. With tracing on, each
//! segment written is a span with a child per file ([`crate::otel::Tracer::lake_segment`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use chrono::Utc;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::CloudEvent;
use crate::ingest::Admitter;
use crate::kafka::{self, KafkaSetupError};
use crate::lake::encode::EncodeSettings;
use crate::lake::outage::{self, StoreOutage};
use crate::lake::rows::Rows;
use crate::lake::segment::{Row, Segment, Segments, TopicPartition};
use crate::lake::store::LakeStore;
use crate::lake::table::{Coordinates, Hour};
use crate::lake::write::{write_segment, Written};
use crate::lake::{check_evolution, LakeError, Tables};
use crate::telemetry::{self as metrics, Metrics};

/// How to run the lake role.
#[derive(Debug, Clone)]
pub struct LakeRunOptions {
    /// Stop once every partition is consumed to its end and written.
    pub drain: bool,
}

/// What the lake role did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LakeSummary {
    /// Records consumed.
    pub records: u64,
    /// Rows written.
    pub rows: u64,
    /// Records that are not lake rows (invalid events, unreadable audit records).
    pub skipped: u64,
    /// Files written.
    pub files: u64,
    /// Bytes of Parquet written.
    pub bytes: u64,
    /// Files found already written with the same records (a replay), kept as they were.
    pub present: u64,
    /// Milliseconds of work: from the first record received to the last, plus the final
    /// writes at the stop (time spent idle before a drained worker stops is left out).
    pub busy_ms: u64,
    /// CPU time the process had used when its first record arrived: start-up, not work.
    #[serde(skip)]
    pub startup_cpu: Option<std::time::Duration>,
}

impl std::fmt::Display for LakeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lake: {} records, {} rows in {} files ({} bytes of Parquet), {} records not lake rows",
            self.records, self.rows, self.files, self.bytes, self.skipped
        )?;
        if self.present > 0 {
            write!(f, ", {} files found already written", self.present)?;
        }
        Ok(())
    }
}

/// Notes partitions taken away in a rebalance, for the loop to drop their segments, and tells
/// the telemetry the assignment.
struct LakeContext {
    revoked: Mutex<Vec<TopicPartition>>,
    metrics: Arc<Metrics>,
    outage: Arc<kafka::Outage>,
}

impl ClientContext for LakeContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.outage.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.outage.error(&error, reason);
    }
}

impl ConsumerContext for LakeContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; their unwritten rows will be read again by the next owner"
            );
            let lost: Vec<TopicPartition> = partitions
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            metrics::PartitionsRevoked { partitions: &lost }.emit(&self.metrics);
            // A panic while the list was held leaves nothing half-made: use it as it is.
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(lost);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned: Vec<TopicPartition> = partitions
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

/// The worker's state besides the consumer.
struct Lake<'a> {
    config: &'a Config,
    tables: Arc<Tables>,
    store: LakeStore,
    segments: Segments,
    settings: EncodeSettings,
    summary: LakeSummary,
    /// Segments being written, by partition (one per partition at a time).
    writing: HashMap<TopicPartition, Writing>,
    /// The tasks writing them.
    tasks: JoinSet<Done>,
    /// `lake.max_segments_writing`.
    max_writing: usize,
    /// Admits event records as every role does.
    admitter: Admitter,
    /// Decides which fields of each event are redacted, as the actions role does.
    evaluator: crate::policy::Evaluator,
    /// The worker's metrics.
    metrics: Arc<Metrics>,
    /// Whether the store answers.
    store_outage: Arc<StoreOutage>,
    /// Stops a write that waits for the store.
    shutdown: CancellationToken,
    /// Exports a span per segment written, when tracing is on.
    tracer: Option<crate::otel::Tracer>,
}

/// Runs the lake role until `shutdown` is cancelled (or, with `drain`, until caught up).
pub async fn run(
    config: &Config,
    options: LakeRunOptions,
    shutdown: CancellationToken,
) -> Result<LakeSummary, LakeError> {
    kafka::connect(&config.kafka, kafka::CONNECT_TIMEOUT)
        .await
        .map_err(KafkaSetupError::from)?;
    let metrics = Arc::new(Metrics::new(
        "lake",
        &config.lake.group_id,
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
        kafka::ensure_topics(&config.kafka, &config.topics, &[]).await?;
    }
    let tables = Tables::new(&config.schemas);
    let store = LakeStore::open(&config.lake)?;
    check_evolution(&store, &tables).await?;
    let lake_cfg = &config.lake;
    let outage = kafka::Outage::new();
    metrics.watch_kafka(Arc::clone(&outage));
    let mut client =
        kafka::consumer_config(&config.kafka, &lake_cfg.group_id, kafka::Assignment::Any);
    client.set("enable.auto.commit", "false");
    let consumer: StreamConsumer<LakeContext> = client
        .create_with_context(LakeContext {
            revoked: Mutex::default(),
            metrics: Arc::clone(&metrics),
            outage: Arc::clone(&outage),
        })
        .map_err(|source| KafkaSetupError::Client {
            what: "consumer",
            brokers: config.kafka.brokers.clone(),
            source,
        })?;
    let mut topics = config.topics.events.clone();
    topics.push(config.topics.audit.clone());
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|source| LakeError::Subscribe {
            topics: topics.clone(),
            source,
        })?;
    let probe: Option<kafka::Probe> = if options.drain {
        Some(kafka::probe(
            &config.kafka,
            &lake_cfg.group_id,
            Arc::clone(&outage),
        )?)
    } else {
        None
    };
    if config.telemetry.listen.is_some() {
        metrics::lag::spawn(
            &config.kafka,
            &lake_cfg.group_id,
            Arc::clone(&metrics),
            config.telemetry.lag_interval,
            telemetry_stop.clone(),
        )?;
    }
    let tracer = match &config.telemetry.otlp_endpoint {
        Some(endpoint) => {
            let tracer = crate::otel::Tracer::start(endpoint, "lake", &lake_cfg.group_id)?;
            tracing::info!(endpoint = %tracer.endpoint(), "exporting traces");
            metrics.watch_spans(tracer.shared_stats());
            Some(tracer)
        }
        None => None,
    };
    tracing::info!(group = %lake_cfg.group_id, topics = ?topics, store = %store.location(), "lake worker started");

    // Hot reload, as in the actions role, so both hide the same fields after a policy change.
    let watch_stop = shutdown.child_token();
    let _watch_guard = watch_stop.clone().drop_guard();
    let mut policy = crate::policy::reload::PolicyWatch::spawn(
        config.policy.clone(),
        config.policy_reload_interval,
        watch_stop,
    );
    let set = policy.current();
    metrics::PolicyActive {
        revision: set.revision(),
        engine: set.engine(),
    }
    .emit(&metrics);
    let mut lake = Lake {
        config,
        tables: Arc::new(tables),
        store,
        segments: Segments::new(lake_cfg.limits),
        settings: EncodeSettings {
            row_group_rows: lake_cfg.row_group_rows,
            zstd_level: lake_cfg.zstd_level,
        },
        summary: LakeSummary::default(),
        writing: HashMap::new(),
        tasks: JoinSet::new(),
        max_writing: lake_cfg.max_segments_writing,
        admitter: Admitter::new(config).untimed(),
        evaluator: policy.evaluator(),
        metrics: Arc::clone(&metrics),
        store_outage: StoreOutage::new(),
        shutdown: shutdown.clone(),
        tracer,
    };
    metrics.watch_store(Arc::clone(&lake.store_outage));
    let tick =
        (lake_cfg.limits.max_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since = Instant::now();
    let mut received: Option<(Instant, Instant)> = None;
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            // The timer first: under a steady stream it must still write quiet partitions.
            _ = timer.tick() => {
                metrics.progress();
                outage.tick();
                lake.forget_revoked(&consumer);
                for tp in lake.segments.expired(Instant::now()) {
                    // One being written already is written on a later tick.
                    if !lake.writing.contains_key(&tp) {
                        lake.write(&consumer, &tp).await?;
                    }
                }
                if idle_since.elapsed() > Duration::from_millis(500)
                    && probe.as_ref().is_some_and(|p| kafka::caught_up(&consumer, p, &topics))
                {
                    tracing::info!("all partitions consumed to their end");
                    break;
                }
            }
            Some(done) = lake.tasks.join_next(), if !lake.tasks.is_empty() => {
                lake.forget_revoked(&consumer);
                lake.finished(&consumer, done)?;
            }
            message = consumer.recv() => {
                lake.forget_revoked(&consumer);
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        // Its buffered rows are uncommitted: the partitions' next owner reads them again.
                        if let Some(fatal) = kafka::consumer_fatal(&e, &lake_cfg.group_id) {
                            return Err(LakeError::ConsumerFatal(fatal));
                        }
                        if !outage.absorbs(&e) {
                            tracing::warn!(error = %e, "consumer error");
                        }
                        continue;
                    }
                };
                outage.flowing();
                idle_since = Instant::now();
                if received.is_none() {
                    lake.summary.startup_cpu = crate::summary::process_cpu();
                }
                received = Some((received.map_or(idle_since, |(first, _)| first), idle_since));
                metrics::RecordConsumed {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis(),
                }
                .emit(&metrics);
                if let Some(evaluator) = policy.changed() {
                    lake.evaluator = evaluator;
                    let set = policy.current();
                    metrics::PolicyActive {
                        revision: set.revision(),
                        engine: set.engine(),
                    }
                    .emit(&metrics);
                }
                // Wire-format data needs its schema: wait for the registry as the actions role does.
                if !lake.admitter.prepare(message.payload(), &shutdown).await {
                    break;
                }
                let tp = (message.topic().to_owned(), message.partition());
                if lake.add(&message) {
                    lake.write(&consumer, &tp).await?;
                }
                lake.bound_memory(&consumer, lake_cfg.max_buffered_bytes).await?;
                metrics.set_lake_buffered(lake.held());
            }
        }
    }
    lake.forget_revoked(&consumer);
    let stopping = Instant::now();
    for tp in lake.segments.partitions() {
        lake.write(&consumer, &tp).await?;
    }
    lake.finish_all(&consumer).await?;
    if let Some((first, last)) = received {
        let busy = last.duration_since(first) + stopping.elapsed();
        lake.summary.busy_ms = u64::try_from(busy.as_millis()).unwrap_or(u64::MAX);
    }
    consumer.unsubscribe();
    if let Some(tracer) = lake.tracer.take() {
        let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
    }
    tracing::info!(
        rows = lake.summary.rows,
        files = lake.summary.files,
        "lake worker stopped"
    );
    Ok(lake.summary)
}

impl Lake<'_> {
    /// Drops the segments of partitions revoked since the last call; a write of one that is in
    /// flight finishes (its files are named by their offsets, so the partition's next owner
    /// finds them) but commits nothing.
    fn forget_revoked(&mut self, consumer: &StreamConsumer<LakeContext>) {
        let revoked = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for tp in &revoked {
            self.segments.drop_partition(tp);
            if let Some(writing) = self.writing.get_mut(tp) {
                writing.revoked = true;
            }
        }
    }

    /// Bytes held: buffered rows and the segments being written.
    fn held(&self) -> usize {
        self.segments.bytes() + self.writing.values().map(|w| w.bytes).sum::<usize>()
    }

    /// Buffers a record; says whether its segment is full.
    fn add(&mut self, message: &BorrowedMessage<'_>) -> bool {
        self.summary.records += 1;
        let at = Coordinates {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
        };
        let tp = (at.topic.to_owned(), at.partition);
        let now = Utc::now();
        let tables = Arc::clone(&self.tables);
        if at.topic == self.config.topics.audit {
            let index = tables.audit_index();
            let row = tables
                .get(index)
                .zip(message.payload())
                .and_then(|(t, value)| t.audit_record(value, at, now));
            let hour = row.as_ref().map(|r| (index, r.hour()));
            let append = |rows: &mut Rows| row.as_ref().map_or(0, |r| r.append(rows));
            return self.push(&tp, at.offset, hour, &append);
        }
        let Some((index, event)) = self.admitted_event(message, at) else {
            return self.push(&tp, at.offset, None, &|_: &mut Rows| 0);
        };
        let row = tables.get(index).map(|t| t.event(&event, at, now));
        let append = |rows: &mut Rows| row.as_ref().map_or(0, |r| r.append(rows));
        self.push(&tp, at.offset, row.map(|r| (index, r.hour())), &append)
    }

    /// Adds a record (and its row, if it is one) to its partition's segment.
    fn push(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        row: Option<(usize, Hour)>,
        append: &dyn Fn(&mut Rows) -> usize,
    ) -> bool {
        if row.is_none() {
            self.summary.skipped += 1;
        }
        let row = row.map(|(table, hour)| Row {
            table,
            hour,
            append,
        });
        self.segments.push(tp, offset, row, Instant::now())
    }

    /// The table and the (redacted) event of a valid event record; `None` for what the actions
    /// role dead-letters (its audit record, which says why, is a row of the audit table).
    fn admitted_event(
        &mut self,
        message: &BorrowedMessage<'_>,
        at: Coordinates<'_>,
    ) -> Option<(usize, CloudEvent)> {
        let headers = kafka::headers_of(message);
        let input = kafka::input_of(message, &headers);
        let admitted = match self.admitter.admit(&input) {
            Ok(admitted) => admitted,
            Err(rejection) => {
                tracing::debug!(
                    topic = at.topic,
                    partition = at.partition,
                    offset = at.offset,
                    reason = rejection.reason.code(),
                    "not a lake row"
                );
                return None;
            }
        };
        let table = self.tables.index_of(&admitted.event.ty)?;
        // The same redaction as the actions role's, from the event alone. When it cannot be
        // decided, nothing of `data` is written: a row without data rather than unredacted data.
        let paths = crate::ingest::redaction(&mut self.evaluator, &admitted.event)
            .unwrap_or_else(|_| Arc::from(vec!["data".to_owned()]));
        let mut event = admitted.event;
        redact_in_place(&mut event, &paths);
        Some((table, event))
    }

    /// Starts writing a partition's segment off the loop. Waits first for the partition's
    /// previous write (its files and commit come first) and, when `max_segments_writing`
    /// writes are in flight, for one of them.
    async fn write(
        &mut self,
        consumer: &StreamConsumer<LakeContext>,
        tp: &TopicPartition,
    ) -> Result<(), LakeError> {
        if !self.segments.contains(tp) {
            return Ok(());
        }
        while self.writing.contains_key(tp) || self.writing.len() >= self.max_writing {
            self.finish_one(consumer).await?;
        }
        // Revoked while the loop waited: nothing to write.
        self.forget_revoked(consumer);
        let Some(mut segment) = self.segments.take(tp) else {
            return Ok(());
        };
        // Rows that a file found by the previous write already holds.
        self.segments.trim_covered(tp, &mut segment);
        self.writing.insert(
            tp.clone(),
            Writing {
                bytes: segment.bytes,
                revoked: false,
            },
        );
        let task = WriteTask {
            store: self.store.clone(),
            tables: Arc::clone(&self.tables),
            settings: self.settings,
            tp: tp.clone(),
            store_outage: Arc::clone(&self.store_outage),
            metrics: Arc::clone(&self.metrics),
            shutdown: self.shutdown.clone(),
        };
        self.tasks.spawn(task.run(segment));
        self.metrics.set_lake_buffered(self.held());
        Ok(())
    }

    /// Writes the largest segments early until buffered and writing rows fit
    /// `lake.max_buffered_bytes`, waiting for writes to finish when as many as allowed are in
    /// flight.
    async fn bound_memory(
        &mut self,
        consumer: &StreamConsumer<LakeContext>,
        max_buffered_bytes: usize,
    ) -> Result<(), LakeError> {
        while self.held() > max_buffered_bytes {
            let idle = self
                .segments
                .largest_where(|tp| !self.writing.contains_key(tp));
            match idle {
                Some(largest) if self.writing.len() < self.max_writing => {
                    tracing::debug!(
                        buffered = self.held(),
                        "memory bound reached; writing the largest segment early"
                    );
                    self.write(consumer, &largest).await?;
                }
                _ if !self.writing.is_empty() => self.finish_one(consumer).await?,
                _ => break,
            }
        }
        Ok(())
    }

    /// Waits for the next write to finish and commits after it.
    async fn finish_one(
        &mut self,
        consumer: &StreamConsumer<LakeContext>,
    ) -> Result<(), LakeError> {
        match self.tasks.join_next().await {
            Some(done) => self.finished(consumer, done),
            None => {
                self.writing.clear();
                Ok(())
            }
        }
    }

    /// Waits for every write in flight.
    async fn finish_all(
        &mut self,
        consumer: &StreamConsumer<LakeContext>,
    ) -> Result<(), LakeError> {
        while !self.tasks.is_empty() {
            self.finish_one(consumer).await?;
        }
        Ok(())
    }

    /// Takes a finished write into account: counts its files and commits the offset after its
    /// segment, unless a file found reaches past it or the partition was revoked meanwhile.
    fn finished(
        &mut self,
        consumer: &StreamConsumer<LakeContext>,
        done: Result<Done, tokio::task::JoinError>,
    ) -> Result<(), LakeError> {
        let done = done.map_err(|e| LakeError::Task {
            table: "(a segment's files)".to_owned(),
            message: e.to_string(),
        })?;
        let Done {
            tp,
            first,
            next,
            span,
            written,
        } = done;
        let writing = self.writing.remove(&tp);
        self.metrics.set_lake_buffered(self.held());
        // Given up at shutdown while the store did not answer: read again by the next owner.
        let Some(written) = written? else {
            return Ok(());
        };
        if let Some(tracer) = &self.tracer {
            let files: Vec<crate::otel::LakeFile<'_>> = written
                .created
                .iter()
                .map(|f| crate::otel::LakeFile {
                    table: &f.table,
                    key: &f.key,
                    rows: f.rows,
                    bytes: f.bytes,
                    span: f.span,
                })
                .collect();
            let segment = crate::otel::LakeSegment {
                topic: &tp.0,
                partition: tp.1,
                first_offset: first,
                next_offset: next,
                files_present: written.present,
            };
            tracer.lake_segment(segment, span, &files);
        }
        self.summary.files += written.files;
        self.summary.rows += written.rows;
        self.summary.bytes += written.bytes;
        for t in &written.tables {
            metrics::LakeFilesWritten {
                table: &t.table,
                files: t.files,
                rows: t.rows,
                bytes: t.bytes,
            }
            .emit(&self.metrics);
        }
        self.summary.present += written.present;
        if written.present > 0 {
            metrics::LakeFilesPresent {
                files: written.present,
            }
            .emit(&self.metrics);
        }
        if writing.is_none_or(|w| w.revoked) {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset = next, "partition revoked while its segment was written; its next owner commits");
            return Ok(());
        }
        for (table, hour, last) in written.reaching_past {
            self.segments.cover(&tp, table, hour, last);
        }
        if !self.segments.may_commit(&tp, next) {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset = next, "a lake file reaches past the segment; committing after a later one");
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        let committed = offsets
            .add_partition_offset(&tp.0, tp.1, Offset::Offset(next))
            .and_then(|()| consumer.commit(&offsets, CommitMode::Sync));
        if committed.is_ok() {
            consumer.context().outage.answered();
        }
        if let Err(e) = committed {
            // The files are written; reading the segment again rewrites the same files.
            tracing::warn!(error = %e, topic = %tp.0, partition = tp.1, offset = first, "commit failed; reading the partition again from the segment's start");
            if let Err(e) =
                consumer.seek(&tp.0, tp.1, Offset::Offset(first), Duration::from_secs(5))
            {
                tracing::debug!(error = %e, "seek after failed commit (partition revoked?)");
            }
        }
        Ok(())
    }
}

/// Removes the fields `paths` name from an admitted event, as
/// [`crate::policy::redact::redacted`] removes them from a copy: the lake owns the event, so it
/// needs no copy.
fn redact_in_place(event: &mut CloudEvent, paths: &[String]) {
    for path in paths {
        let (first, rest) = match path.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (path.as_str(), None),
        };
        if first != "data" && first != "*" {
            continue;
        }
        match rest {
            None => event.data = None,
            Some(rest) => {
                if let Some(data) = event.data.as_mut() {
                    crate::policy::redact::redact(data, &[rest]);
                }
            }
        }
    }
}

/// A segment being written.
#[derive(Debug, Clone, Copy)]
struct Writing {
    /// Its buffered bytes.
    bytes: usize,
    /// Its partition was revoked since: commit nothing for it.
    revoked: bool,
}

/// What a write task reports.
struct Done {
    tp: TopicPartition,
    first: i64,
    next: i64,
    /// When writing began and ended.
    span: (SystemTime, SystemTime),
    /// The files, or `None` when the store did not answer before shutdown.
    written: Result<Option<Written>, LakeError>,
}

/// Writes one segment's files off the consumer loop.
struct WriteTask {
    store: LakeStore,
    tables: Arc<Tables>,
    settings: EncodeSettings,
    tp: TopicPartition,
    store_outage: Arc<StoreOutage>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl WriteTask {
    /// Writes the segment's files. While the store does not answer, the write is tried again
    /// with backoff (the loop reads on until `lake.max_buffered_bytes` holds it, so memory stays
    /// bounded); at shutdown it is given up, uncommitted, for the partition's next reader.
    async fn run(self, segment: Segment) -> Done {
        let started = SystemTime::now();
        let mut attempt = 0;
        let written = loop {
            match write_segment(&self.store, &self.tables, self.settings, &self.tp, &segment).await
            {
                Ok(written) => {
                    self.store_outage.answered();
                    break Ok(Some(written));
                }
                Err(e) if outage::is_transient(&e) => {
                    self.store_outage.failed(&e, segment.bytes);
                    if self.shutdown.is_cancelled() {
                        tracing::warn!(topic = %self.tp.0, partition = self.tp.1, offset = segment.first_offset, "lake store unreachable at shutdown; these rows were not written or committed and will be read again");
                        break Ok(None);
                    }
                    attempt += 1;
                    // Waiting for the store is not a stalled loop.
                    self.metrics.progress();
                    tokio::select! {
                        () = self.shutdown.cancelled() => {}
                        () = tokio::time::sleep(outage::retry_delay(attempt)) => {}
                    }
                }
                Err(e) => break Err(e),
            }
        };
        Done {
            tp: self.tp,
            first: segment.first_offset,
            next: segment.next_offset,
            span: (started, SystemTime::now()),
            written,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lake's redaction in place leaves what the shared redaction leaves in a copy.
    #[test]
    fn redaction_in_place_equals_the_redacted_copy() {
        let event: CloudEvent = serde_json::from_value(serde_json::json!({
            "specversion": "1.0", "id": "e-1", "source": "/s", "type": "order.placed",
            "subject": "c-1", "data": {"customer_id": "c-1", "card_last4": "4242",
                "items": [{"sku": "a", "price": 1}, {"sku": "b", "price": 2}],
                "address": {"street": "x", "city": "y"}}}))
        .expect("event");
        // The paths, and whether they remove anything.
        let cases: [(&[&str], bool); 9] = [
            (&[], false),
            (&["data.card_last4"], true),
            (&["data.customer_id", "data.items.*.price"], true),
            (&["*.card_last4", "subject", "id"], true),
            (&["data.address.*", "data.items.1"], true),
            (&["data"], true),
            (&["*"], true),
            (
                &["data.", "data..x", "data.missing.deeper", "subject"],
                false,
            ),
            (
                &["data.items.*", "data.address.street", "data.card_last4"],
                true,
            ),
        ];
        for (paths, removes) in cases {
            let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
            let mut in_place = event.clone();
            redact_in_place(&mut in_place, &paths);
            let copy = crate::policy::redact::redacted(&event, &paths);
            assert_eq!(in_place, copy, "{paths:?}");
            assert_eq!(in_place != event, removes, "{paths:?}");
        }
    }
}
