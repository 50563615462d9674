//! The lake role: a consumer-group worker that turns records into Parquet files.
//!
//! Offsets are committed by hand, synchronously, right after a segment's files are written, at
//! exactly the offset after the segment; automatic commits are off. Writes happen in the
//! consumer loop, never while a poll could rebalance, so a revoked partition has nothing in
//! flight: its buffered rows are dropped and its new owner reads them again from the committed
//! offset. A quiet partition is written by a timer once its segment reaches `lake.max_file_age`;
//! above `lake.max_buffered_bytes` the largest segment is written early. On shutdown every
//! segment is written and committed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::encode::EncodeSettings;
use super::segment::{Row, Segment, Segments, TopicPartition};
use super::store::LakeStore;
use super::table::Coordinates;
use super::write::write_segment;
use super::{check_evolution, LakeError, Tables};
use crate::config::Config;
use crate::event::CloudEvent;
use crate::kafka::{self, KafkaSetupError};

/// How to run the lake role.
#[derive(Debug, Clone)]
pub struct LakeRunOptions {
    /// Stop once every partition is consumed to its end and written.
    pub drain: bool,
}

/// What the lake role did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

impl std::fmt::Display for LakeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lake: {} records, {} rows in {} files ({} bytes of Parquet), {} records not lake rows",
            self.records, self.rows, self.files, self.bytes, self.skipped
        )
    }
}

/// Notes partitions taken away in a rebalance, for the loop to drop their segments.
#[derive(Default)]
struct LakeContext {
    revoked: Mutex<Vec<TopicPartition>>,
}

impl ClientContext for LakeContext {}

impl ConsumerContext for LakeContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(
                partitions = partitions.count(),
                "partitions revoked; their unwritten rows will be read again by the next owner"
            );
            if let Ok(mut revoked) = self.revoked.lock() {
                revoked.extend(
                    partitions
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition())),
                );
            }
        }
    }
}

/// The worker's state besides the consumer.
struct Lake<'a> {
    config: &'a Config,
    tables: Tables,
    store: LakeStore,
    segments: Segments,
    settings: EncodeSettings,
    summary: LakeSummary,
    row: Vec<u8>,
    /// Decides the `redact` obligation of each row (audit rules), as the actions role does.
    evaluator: crate::policy::Evaluator,
}

/// Runs the lake role until `shutdown` is cancelled (or, with `drain`, until caught up).
pub async fn run(
    config: &Config,
    options: LakeRunOptions,
    shutdown: CancellationToken,
) -> Result<LakeSummary, LakeError> {
    if config.topics.create_missing {
        kafka::ensure_topics(&config.kafka, &config.topics, &[]).await?;
    }
    let tables = Tables::new(&config.schemas);
    let store = LakeStore::open(&config.lake)?;
    check_evolution(&store, &tables).await?;
    let lake_cfg = &config.lake;
    let mut client = kafka::consumer_config(&config.kafka, &lake_cfg.group_id);
    client.set("enable.auto.commit", "false");
    let consumer: StreamConsumer<LakeContext> = client
        .create_with_context(LakeContext::default())
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
    let probe: Option<BaseConsumer> = if options.drain {
        Some(kafka::probe(&config.kafka, &lake_cfg.group_id)?)
    } else {
        None
    };
    tracing::info!(group = %lake_cfg.group_id, topics = ?topics, store = %store.location(), "lake worker started");

    let mut lake = Lake {
        config,
        tables,
        store,
        segments: Segments::new(lake_cfg.limits),
        settings: EncodeSettings {
            row_group_rows: lake_cfg.row_group_rows,
            zstd_level: lake_cfg.zstd_level,
        },
        summary: LakeSummary::default(),
        row: Vec::with_capacity(4096),
        evaluator: config.policy.evaluator(),
    };
    let tick =
        (lake_cfg.limits.max_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_since = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            // The timer first: under a steady stream it must still write quiet partitions.
            _ = timer.tick() => {
                lake.forget_revoked(&consumer);
                for tp in lake.segments.expired(Instant::now()) {
                    lake.write(&consumer, &tp).await?;
                }
                if idle_since.elapsed() > Duration::from_millis(500)
                    && probe.as_ref().is_some_and(|p| crate::worker::caught_up(&consumer, p, &topics))
                {
                    tracing::info!("all partitions consumed to their end");
                    break;
                }
            }
            message = consumer.recv() => {
                lake.forget_revoked(&consumer);
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        continue;
                    }
                };
                idle_since = Instant::now();
                // Wire-format data needs its schema: wait for the registry as the actions role does.
                if let (Some(registry), Some(value)) = (config.registry.as_deref(), message.payload()) {
                    if !crate::worker::await_schema(registry, value, &shutdown).await {
                        break;
                    }
                }
                let tp = (message.topic().to_owned(), message.partition());
                if lake.add(&message) {
                    lake.write(&consumer, &tp).await?;
                }
                while lake.segments.bytes() > lake_cfg.max_buffered_bytes {
                    let Some(largest) = lake.segments.largest() else { break };
                    tracing::debug!(buffered = lake.segments.bytes(), "memory bound reached; writing the largest segment early");
                    lake.write(&consumer, &largest).await?;
                }
            }
        }
    }
    lake.forget_revoked(&consumer);
    for tp in lake.segments.partitions() {
        lake.write(&consumer, &tp).await?;
    }
    consumer.unsubscribe();
    tracing::info!(
        rows = lake.summary.rows,
        files = lake.summary.files,
        "lake worker stopped"
    );
    Ok(lake.summary)
}

impl Lake<'_> {
    /// Drops the segments of partitions revoked since the last call.
    fn forget_revoked(&mut self, consumer: &StreamConsumer<LakeContext>) {
        let revoked = match consumer.context().revoked.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => return,
        };
        for tp in &revoked {
            self.segments.drop_partition(tp);
        }
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
        self.row.clear();
        let row = if at.topic == self.config.topics.audit {
            let table = self.tables.audit_index();
            self.tables.get(table).and_then(|t| {
                let value = message.payload()?;
                let hour = t.audit_row(value, at, Utc::now(), &mut self.row)?;
                Some((table, hour))
            })
        } else {
            self.event_row(message, at)
        };
        if row.is_none() {
            self.summary.skipped += 1;
        }
        let tp = (at.topic.to_owned(), at.partition);
        let row = row.map(|(table, hour)| Row {
            table,
            hour,
            json: &self.row,
        });
        self.segments.push(&tp, at.offset, row, Instant::now())
    }

    /// The row of a valid event; `None` for what the actions role dead-letters.
    fn event_row(
        &mut self,
        message: &BorrowedMessage<'_>,
        at: Coordinates<'_>,
    ) -> Option<(usize, super::table::Hour)> {
        let headers = crate::kafka::headers_of(message);
        let input = crate::kafka::input_of(message, &headers);
        if input.size() > self.config.actions_role.max_event_bytes {
            return None;
        }
        let is_wire = input
            .value
            .is_some_and(crate::schema::wire::looks_like_wire);
        let (event, mode) = if is_wire {
            // Decoded and validated against the registered schema, as in the actions role.
            crate::pipeline::wire::decode(
                self.config.registry.as_deref(),
                &self.config.type_header,
                &input,
            )
            .ok()?
        } else {
            CloudEvent::decode(message.payload(), &headers).ok()?
        };
        let table = self.tables.index_of(&event.ty)?;
        static NO_DATA: serde_json::Value = serde_json::Value::Null;
        let data = event.data.as_ref().unwrap_or(&NO_DATA);
        if !is_wire {
            let violations = self.config.schemas.validate(&event.ty, data)?;
            if !violations.is_empty() {
                return None;
            }
        }
        // The audit rules' `redact` obligation applies to lake rows too. When the policy cannot
        // decide, nothing of `data` is written: a row without data rather than unredacted data.
        let now = Utc::now();
        let decision = self.evaluator.decide(crate::pipeline::policy_input(
            &event,
            mode,
            &input,
            &now,
            &serde_json::Map::new(),
        ));
        let paths = if decision.failure.is_some() {
            vec!["data"]
        } else {
            decision.redact_paths()
        };
        let event = if paths.is_empty() {
            event
        } else {
            crate::pipeline::obligations::redacted(&event, &paths)
        };
        let t = self.tables.get(table)?;
        Some((table, t.event_row(&event, at, now, &mut self.row)))
    }

    /// Writes a partition's segment and commits the offset after it.
    async fn write(
        &mut self,
        consumer: &StreamConsumer<LakeContext>,
        tp: &TopicPartition,
    ) -> Result<(), LakeError> {
        let Some(segment) = self.segments.take(tp) else {
            return Ok(());
        };
        let (first, next) = (segment.first_offset, segment.next_offset);
        self.write_files(tp, segment).await?;
        let mut offsets = TopicPartitionList::new();
        if offsets
            .add_partition_offset(&tp.0, tp.1, Offset::Offset(next))
            .is_ok()
        {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                // The files are written; reading the segment again rewrites the same files.
                tracing::warn!(error = %e, topic = %tp.0, partition = tp.1, offset = first, "commit failed; reading the partition again from the segment's start");
                if let Err(e) =
                    consumer.seek(&tp.0, tp.1, Offset::Offset(first), Duration::from_secs(5))
                {
                    tracing::debug!(error = %e, "seek after failed commit (partition revoked?)");
                }
            }
        }
        Ok(())
    }

    async fn write_files(
        &mut self,
        tp: &TopicPartition,
        segment: Segment,
    ) -> Result<(), LakeError> {
        let written = write_segment(&self.store, &self.tables, self.settings, tp, segment).await?;
        self.summary.files += written.files;
        self.summary.rows += written.rows;
        self.summary.bytes += written.bytes;
        Ok(())
    }
}
