//! `reflex policy replay`: shadow evaluation of a candidate policy set against the audit trail.
//!
//! Reads the recorded events from the event topics (from the beginning, or from a given offset
//! in every partition, up to the end as it was when the replay started) and the audit topic,
//! pairs each event with its audit record by `topic/partition/offset`, decides it again with the
//! candidate set, and feeds both decisions to a [`ShadowReport`]. Each decision is replayed with
//! the input the worker built: same event, same Kafka coordinates, and `context.now` = the audit
//! record's `processed_at` (the instant of the original decision), so time-dependent rules (the
//! SLA) reproduce. Events without a decision (dead letters, no audit record) are counted, not
//! compared. Reading the lake instead of the topics is future work.
//!
//! [`status`] reads the same audit trail for `reflex policy status`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::config::{Config, KafkaConfig};
use crate::event::CloudEvent;
use crate::kafka::{self, KafkaSetupError};
use crate::pipeline::policy_input;
use crate::policy::shadow::ShadowReport;
use crate::policy::{Decision, PolicyError};

pub mod status;

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A Kafka client could not be created.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// Reading a topic failed.
    #[error("cannot read topic \"{topic}\": {source}")]
    Read {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// Reading a topic did not reach its end in time.
    #[error("reading topic \"{topic}\" did not reach its end within {seconds} s")]
    Stalled {
        /// The topic.
        topic: String,
        /// The limit.
        seconds: u64,
    },
    /// The candidate policy set does not load.
    #[error("candidate policy set is not usable: {0}")]
    Candidate(#[from] PolicyError),
    /// The policy directory cannot be read.
    #[error("cannot read the policy directory: {0}")]
    Directory(PolicyError),
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The candidate policy directory.
    pub candidate: PathBuf,
    /// Event topics (default: the configured ones).
    pub topics: Vec<String>,
    /// First offset to replay in every partition (default: the beginning).
    pub from_offset: Option<i64>,
    /// Stop after this many events.
    pub max_events: Option<usize>,
}

/// How long reading one topic to its end may take.
const READ_LIMIT: Duration = Duration::from_secs(300);

type Coordinates = (String, i32, i64);

/// Runs the replay and returns the comparison.
pub fn replay(config: &Config, options: &ReplayOptions) -> Result<ShadowReport, ReplayError> {
    let candidate = config.policy.reload_from(&options.candidate)?;
    let mut evaluator = candidate.evaluator();
    let consumer = reader(&config.kafka)?;

    let mut audits: HashMap<Coordinates, Value> = HashMap::new();
    scan(
        &consumer,
        &config.topics.audit,
        Start::Beginning,
        None,
        |m| {
            let Some(audit) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok())
            else {
                return;
            };
            let coordinates = (
                audit["topic"].as_str().unwrap_or_default().to_owned(),
                audit["partition"]
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .unwrap_or(-1),
                audit["offset"].as_i64().unwrap_or(-1),
            );
            audits.insert(coordinates, audit);
        },
    )?;

    let mut report = ShadowReport::new(candidate.revision());
    let topics = if options.topics.is_empty() {
        &config.topics.events
    } else {
        &options.topics
    };
    for topic in topics {
        scan(
            &consumer,
            topic,
            options.from_offset.map_or(Start::Beginning, Start::Offset),
            options.max_events,
            |m| {
                let coordinates = (m.topic().to_owned(), m.partition(), m.offset());
                let at = format!("{}/{}/{}", coordinates.0, coordinates.1, coordinates.2);
                let Some(audit) = audits.get(&coordinates) else {
                    report.skip("no audit record");
                    return;
                };
                let Some(recorded) = audit.get("decision").map(Decision::from_document) else {
                    report.skip("no recorded decision (dead-lettered)");
                    return;
                };
                let Some(now) = audit["processed_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&chrono::Utc))
                else {
                    report.skip("audit record without processed_at");
                    return;
                };
                let headers = crate::kafka::headers_of(m);
                let input = crate::kafka::input_of(m, &headers);
                let Ok((event, mode)) = CloudEvent::decode(input.value, input.headers) else {
                    report.skip("undecodable");
                    return;
                };
                let candidate = evaluator.decide(policy_input(
                    &event,
                    mode,
                    &input,
                    &now,
                    &serde_json::Map::new(),
                ));
                report.record(
                    &event.ty,
                    &event.id,
                    &at,
                    audit["policy_revision"].as_str().unwrap_or("unknown"),
                    &recorded,
                    &candidate,
                );
            },
        )?;
    }
    Ok(report)
}

pub(crate) fn reader(config: &KafkaConfig) -> Result<BaseConsumer, ReplayError> {
    let mut settings = kafka::base_config(config);
    settings
        .set(
            "group.id",
            format!("reflex-replay-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set(
            "fetch.message.max.bytes",
            kafka::MAX_MESSAGE_BYTES.to_string(),
        );
    kafka::with_properties(settings, config)
        .create()
        .map_err(|source| {
            ReplayError::Setup(KafkaSetupError::Client {
                what: "replay consumer",
                brokers: config.brokers.clone(),
                source,
            })
        })
}

/// Where a scan starts in every partition.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// The oldest record kept.
    Beginning,
    /// This offset (or the oldest kept, if later).
    Offset(i64),
    /// This many records before the end.
    Tail(i64),
}

/// Calls `f` for every record of `topic` from `start` to the end as it is now.
pub(crate) fn scan(
    consumer: &BaseConsumer,
    topic: &str,
    from: Start,
    max: Option<usize>,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ReplayError> {
    let timeout = Duration::from_secs(10);
    let read_err = |source| ReplayError::Read {
        topic: topic.to_owned(),
        source,
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(read_err)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .map_err(read_err)?;
        let start = match from {
            Start::Beginning => low,
            Start::Offset(o) => o.max(low),
            Start::Tail(n) => (high - n).max(low),
        };
        if start < high {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Offset(start))
                .map_err(read_err)?;
            ends.insert(p.id(), high);
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment).map_err(read_err)?;
    let started = Instant::now();
    let mut seen = 0usize;
    while !ends.is_empty() && max.is_none_or(|m| seen < m) {
        if started.elapsed() > READ_LIMIT {
            return Err(ReplayError::Stalled {
                topic: topic.to_owned(),
                seconds: READ_LIMIT.as_secs(),
            });
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(read_err)?;
        let (partition, offset) = (message.partition(), message.offset());
        if ends.get(&partition).is_some_and(|end| offset < *end) {
            f(&message);
            seen += 1;
        }
        if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&partition);
        }
    }
    consumer.unassign().map_err(read_err)?;
    Ok(())
}
