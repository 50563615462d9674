//! `reflex policy replay`: shadow evaluation of a candidate policy set against the audit trail.
//!
//! Reads the recorded events from the event topics (from the beginning, or from a given offset
//! in every partition, up to the end as it was when the replay started) and the audit topic,
//! pairs each event with its audit record by `topic/partition/offset`, decides it again with the
//! candidate set, and feeds both decisions to a [`ShadowReport`]. Each event is admitted through
//! [`crate::ingest`] as the workers admit it (wire-format data through the schema registry
//! included) and decided by [`ingest::decide`] with the input the worker built: same event, same
//! Kafka coordinates, the enrichment answers the audit record stored, and `context.now` = the
//! audit record's `processed_at` (the instant of the original decision), so rules on enrichment
//! and time (the SLA) reproduce. Events without a decision (dead letters, no audit record) are
//! counted, not compared. Reading the lake instead of the topics is future work.
//!
//! [`status`] reads the same audit trail for `reflex policy status`.

use std::collections::HashMap;
use std::path::PathBuf;

use rdkafka::message::Message;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ingest::{self, Admitter, DecisionInput, EmitTopics};
use crate::kafka::{self, KafkaSetupError, ReadError, Start, TopicReader};
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
    #[error(transparent)]
    Read(#[from] ReadError),
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

type Coordinates = (String, i32, i64);

/// The audit trail as a replay reads it.
#[derive(Default)]
struct Trail {
    /// Audit records by the coordinates of the record they describe.
    by_input: HashMap<Coordinates, Recorded>,
    /// Audit records that are not JSON objects (not written by reflex).
    unreadable: u64,
}

/// What a replay needs of an audit record.
struct Recorded {
    /// None for a record that was dead-lettered before its decision.
    decision: Option<Decision>,
    now: Option<chrono::DateTime<chrono::Utc>>,
    revision: String,
    /// The enrichment answers the policy saw; `None` for a record that lists lookups but was
    /// written before audit records kept their answers, so its decision cannot be repeated.
    enrichment: Option<Map<String, Value>>,
}

/// The audit records, by the coordinates of the record they describe.
fn read_trail(consumer: &crate::kafka::Reader, audit_topic: &str) -> Result<Trail, ReplayError> {
    let mut trail = Trail::default();
    kafka::scan(consumer, audit_topic, Start::Beginning, None, |m| {
        let audit = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok());
        let Some(mut audit) = audit.filter(Value::is_object) else {
            trail.unreadable += 1;
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
        let decision = audit.get("decision").map(Decision::from_document);
        let looked_up = audit["lookups"].as_array().is_some_and(|l| !l.is_empty());
        let enrichment = match audit.get_mut("enrichment").map(Value::take) {
            Some(Value::Object(map)) => Some(map),
            _ if looked_up => None,
            _ => Some(Map::new()),
        };
        let recorded = Recorded {
            decision,
            now: audit["processed_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
            revision: audit["policy_revision"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            enrichment,
        };
        trail.by_input.insert(coordinates, recorded);
    })?;
    Ok(trail)
}

/// Runs the replay and returns the comparison. Each recorded event is admitted as the workers
/// admit it (wire-format data through the registry included) and decided as they decide it:
/// same input document, the enrichment answers and the decision moment its audit record holds.
pub async fn replay(config: &Config, options: &ReplayOptions) -> Result<ShadowReport, ReplayError> {
    let candidate = config.policy.reload_from(&options.candidate)?;
    let mut evaluator = candidate.evaluator();
    let admitter = Admitter::new(config);
    let emit = EmitTopics::new(config);
    let consumer = kafka::reader(&config.kafka)?;
    let trail = read_trail(&consumer, &config.topics.audit)?;

    let mut report = ShadowReport::new(candidate.revision());
    for _ in 0..trail.unreadable {
        report.skip("unreadable audit record");
    }
    let topics = if options.topics.is_empty() {
        &config.topics.events
    } else {
        &options.topics
    };
    let never = CancellationToken::new();
    for topic in topics {
        let from = options.from_offset.map_or(Start::Beginning, Start::Offset);
        let mut reader = TopicReader::open(&consumer, topic, from)?;
        let mut seen = 0usize;
        while options.max_events.is_none_or(|max| seen < max) {
            let Some(m) = reader.next_record()? else {
                break;
            };
            seen += 1;
            let coordinates = (m.topic().to_owned(), m.partition(), m.offset());
            let Some(recorded) = trail.by_input.get(&coordinates) else {
                report.skip("no audit record");
                continue;
            };
            let Some(recorded_decision) = &recorded.decision else {
                report.skip("no recorded decision (dead-lettered)");
                continue;
            };
            let Some(enrichment) = &recorded.enrichment else {
                report.skip("enriched before audit records kept the enrichment answers");
                continue;
            };
            let Some(now) = recorded.now else {
                report.skip("audit record without processed_at");
                continue;
            };
            admitter.prepare(m.payload(), &never).await;
            let headers = kafka::headers_of(&m);
            let input = kafka::input_of(&m, &headers);
            let admitted = match admitter.admit(&input) {
                Ok(admitted) => admitted,
                Err(_) => {
                    report.skip("not admitted now, but decided then (schema or registry changed)");
                    continue;
                }
            };
            let on = DecisionInput {
                event: &admitted.event,
                mode: admitted.mode,
                input: &input,
                now: &now,
                publisher: &admitted.publisher,
                enrichment,
                wire: admitted.wire,
            };
            let candidate = ingest::decide(&mut evaluator, &on, &emit);
            report.record(
                &admitted.event.ty,
                &admitted.event.id,
                &input.coordinates(),
                &recorded.revision,
                recorded_decision,
                &candidate,
            );
        }
    }
    Ok(report)
}
