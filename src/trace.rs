//! `reflex trace <event id>`: the whole story of one event in one answer.
//!
//! - Every audit record of the id, in order: outcome, decision and reasons, policy revision,
//!   enrichment sources, action attempts and status, retry round, and the dead letter a
//!   replayed attempt came from.
//! - The dead letters holding the event (read through [`crate::ingest::headers`]) and the
//!   attempts that replayed them.
//! - The events it caused: records on the emit topics whose `causationid` is the id, with
//!   their own last audit outcome.
//! - The lake files holding it, found with the id column's bloom filters ([`crate::lake::find`]).
//!
//! Kafka is read only from `--since` on: each partition from the first offset at or after that
//! instant (offsets-for-times) to the end it had when the reading began; of the audit topic,
//! keyed by event id, only the partitions the ids hash to, and only past the offsets the lake
//! group committed: the records before them are read from the lake's `audit` table, found by
//! the same bloom-filtered search that lists the lake files. The audit topic is compacted, so
//! once compaction has run only an event's last audit record is left there; the lake's `audit`
//! table keeps every one, and they are all steps of the story.

mod read;
mod text;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::Outcome;
use crate::config::Config;
use crate::ingest::headers::ReplayOf;
use crate::kafka::ReadError;
use crate::lake::find::{self, Holding};
use crate::lake::store::{LakeStore, StoreError};
use crate::lake::Tables;

/// How far back `reflex trace` reads Kafka when `--since` is not given.
pub const DEFAULT_SINCE: &str = "24h";

/// Why a trace could not be told.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A topic could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The lake could not be searched.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Kafka reading task failed.
    #[error("reading Kafka for the trace failed: {0}")]
    Task(String),
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// The event id.
    pub id: String,
    /// Read Kafka records from this instant on (milliseconds since the epoch).
    pub since_ms: i64,
    /// Search only lake files in `date=` partitions from this date on (`YYYY-MM-DD`); `None`
    /// searches every file.
    pub lake_from_date: Option<String>,
}

impl TraceOptions {
    /// Options from the command's `--since` (an RFC 3339 instant or a duration before `now`);
    /// without it, Kafka is read from [`DEFAULT_SINCE`] ago and every lake file is searched.
    pub fn new(
        id: String,
        since: Option<&str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Self, String> {
        let since_ms = crate::dlq::parse_since(since.unwrap_or(DEFAULT_SINCE), now)?;
        let lake_from_date = since
            .and_then(|_| chrono::DateTime::from_timestamp_millis(since_ms))
            .map(|t| t.format("%Y-%m-%d").to_string());
        Ok(Self {
            id,
            since_ms,
            lake_from_date,
        })
    }
}

/// One event's story.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The event id.
    pub event_id: String,
    /// Kafka was read from this instant on (RFC 3339).
    pub since: String,
    /// Whether any record of the event was found.
    pub found: bool,
    /// The event's envelope as its first audit record names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Envelope>,
    /// The outcomes in order, with `replayed` before an attempt that replayed a dead letter:
    /// e.g. `["retrying", "dead_lettered", "replayed", "actioned"]`.
    pub path: Vec<String>,
    /// The last audit record's outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Audit records and dead letters, in time order.
    pub steps: Vec<Step>,
    /// Events it caused.
    pub caused: Vec<Caused>,
    /// Lake files holding it, by table and key.
    pub lake: Vec<Holding>,
    /// What was read.
    pub searched: Searched,
}

/// The event's envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `type`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `time`, as the producer wrote it.
    #[serde(
        rename(serialize = "time", deserialize = "event_time"),
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub time: Option<String>,
}

/// One step of the story.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// An audit record: one processing of the event.
    Audit {
        /// When it was written (the Kafka record's timestamp, RFC 3339).
        at: Option<String>,
        /// The audit record's `topic/partition/offset`.
        record: String,
        /// What happened.
        outcome: Outcome,
        /// The processed record's `topic/partition/offset` (a retry or event topic).
        input: String,
        /// The dead letter this attempt replayed.
        #[serde(skip_serializing_if = "Option::is_none")]
        replay_of: Option<ReplayOf>,
        /// The audit record as written (see the README's audit record fields).
        audit: Value,
    },
    /// A dead letter holding the event.
    DeadLetter {
        /// When it was written (RFC 3339).
        at: Option<String>,
        /// The dead letter's `topic/partition/offset`.
        record: String,
        /// The reason code.
        reason: String,
        /// The explanation.
        error: String,
        /// The topic the record came from, where a replay sends it.
        #[serde(skip_serializing_if = "Option::is_none")]
        source_topic: Option<String>,
        /// The processed records (`topic/partition/offset`) of the attempts that replayed it.
        replayed_as: Vec<String>,
    },
}

impl Step {
    fn at(&self) -> Option<&str> {
        match self {
            Self::Audit { at, .. } | Self::DeadLetter { at, .. } => at.as_deref(),
        }
    }
}

/// An event the traced one caused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caused {
    /// Its id.
    pub event_id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its record on the emit topic (`topic/partition/offset`).
    pub record: String,
    /// When it was written (RFC 3339).
    pub at: Option<String>,
    /// Its last audit record's outcome, if it was processed (since `--since`).
    pub outcome: Option<Outcome>,
}

/// What a trace read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Searched {
    /// Records read per topic, since `since`.
    pub topics: Vec<TopicRead>,
    /// The audit partitions read from the lake group's committed offset (`partition →
    /// offset`): their earlier records came from the lake's `audit` table.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub audit_from_lake: std::collections::BTreeMap<i32, i64>,
    /// The lake search.
    pub lake: find::Searched,
    /// The lake's location.
    pub lake_location: String,
}

/// Records read from one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicRead {
    /// The topic.
    pub topic: String,
    /// Records read.
    pub records: u64,
}

impl crate::cli::Report for Trace {
    fn success(&self) -> bool {
        self.found
    }
}

/// Tells the story of `options.id`: Kafka and the lake are searched at the same time.
pub async fn trace(config: &Config, options: &TraceOptions) -> Result<Trace, TraceError> {
    let topics = read::Topics {
        audit: config.topics.audit.clone(),
        dlq: config.topics.dlq.clone(),
        emit: config.emit_topics(),
        lake_group: Some(config.lake.group_id.clone()),
        default_partitioner: crate::kafka::default_partitioner(&config.kafka),
    };
    let (kafka_config, id, since_ms) = (config.kafka.clone(), options.id.clone(), options.since_ms);
    let kafka = tokio::task::spawn_blocking(move || {
        read::read_kafka(&kafka_config, &topics, &id, since_ms)
    });
    let store = LakeStore::open(&config.lake)?;
    let tables = Tables::new(&config.schemas);
    let lake = find::files_holding(
        &store,
        &tables,
        &options.id,
        options.lake_from_date.as_deref(),
    )
    .await;
    let mut read = kafka.await.map_err(|e| TraceError::Task(e.to_string()))??;
    let (holdings, lake_searched) = lake?;
    // The audit records before the lake group's offsets are read from the lake's audit table.
    let lake_audits = holdings.iter().flat_map(|h| h.audits.iter().cloned());
    add_lake_audits(&mut read, &options.id, lake_audits);
    // A caused event without an audit record past those offsets has its own in the lake.
    let unseen: Vec<String> = read
        .caused
        .iter()
        .map(|(identity, _, _)| identity.id.clone())
        .filter(|cid| !read.audits.iter().any(|a| a.key == *cid))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(CAUSED_FROM_LAKE)
        .collect();
    if !read.audit_from_lake.is_empty() {
        for cid in unseen {
            let from = options.lake_from_date.as_deref();
            let audits = find::audit_records(&store, &tables, &cid, from).await?;
            add_lake_audits(&mut read, &cid, audits.into_iter());
        }
    }
    Ok(assemble(
        options,
        read,
        holdings,
        lake_searched,
        store.location(),
    ))
}

/// Caused events whose audit records are looked up in the lake, at most.
const CAUSED_FROM_LAKE: usize = 16;

/// Adds the audit records of `key` read from the lake that Kafka did not give.
fn add_lake_audits(
    read: &mut read::KafkaFound,
    key: &str,
    audits: impl Iterator<Item = find::LakeAudit>,
) {
    for audit in audits {
        if read.audits.iter().any(|a| a.record == audit.record) {
            continue;
        }
        read.audits.push(read::AuditRead {
            key: key.to_owned(),
            record: audit.record,
            timestamp_ms: audit.timestamp_ms,
            value: audit.value,
        });
    }
}

/// The parts of an audit record the story is ordered and linked by.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuditHead {
    outcome: Option<Outcome>,
    topic: String,
    partition: i32,
    offset: i64,
    replay_of: Option<ReplayOf>,
}

fn rfc3339(ms: Option<i64>) -> Option<String> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn assemble(
    options: &TraceOptions,
    read: read::KafkaFound,
    lake: Vec<Holding>,
    lake_searched: find::Searched,
    lake_location: &str,
) -> Trace {
    let id = options.id.as_str();
    let mut own: Vec<(Option<i64>, u8, Step)> = Vec::new();
    let mut event = None;
    let mut replays: Vec<(String, String)> = Vec::new();
    let mut last_of_caused: std::collections::HashMap<&str, (Option<i64>, Outcome)> =
        std::collections::HashMap::new();
    for audit in &read.audits {
        let head: AuditHead = serde_json::from_value(audit.value.clone()).unwrap_or_default();
        let Some(outcome) = head.outcome else {
            continue;
        };
        if audit.key != id {
            let entry = last_of_caused
                .entry(audit.key.as_str())
                .or_insert((audit.timestamp_ms, outcome));
            if audit.timestamp_ms >= entry.0 {
                *entry = (audit.timestamp_ms, outcome);
            }
            continue;
        }
        if event.is_none() {
            event = serde_json::from_value::<Envelope>(audit.value.clone()).ok();
        }
        let input = format!("{}/{}/{}", head.topic, head.partition, head.offset);
        if let Some(replay) = &head.replay_of {
            replays.push((replay.dead_letter.clone(), input.clone()));
        }
        own.push((
            audit.timestamp_ms,
            0,
            Step::Audit {
                at: rfc3339(audit.timestamp_ms),
                record: audit.record.clone(),
                outcome,
                input,
                replay_of: head.replay_of,
                audit: audit.value.clone(),
            },
        ));
    }
    // A dead letter is written just before the audit record that says so: it goes after it.
    let dead_lettered: Vec<Option<i64>> = own
        .iter()
        .filter(|(_, _, s)| {
            matches!(
                s,
                Step::Audit {
                    outcome: Outcome::DeadLettered,
                    ..
                }
            )
        })
        .map(|(ms, _, _)| *ms)
        .collect();
    for (timestamp_ms, dead) in read.dead_letters {
        let order_ms = dead_lettered
            .iter()
            .copied()
            .filter(|ms| *ms >= timestamp_ms)
            .min()
            .unwrap_or(timestamp_ms);
        let replayed_as = replays
            .iter()
            .filter(|(dl, _)| *dl == dead.coordinates)
            .map(|(_, input)| input.clone())
            .collect();
        own.push((
            order_ms,
            1,
            Step::DeadLetter {
                at: rfc3339(timestamp_ms),
                record: dead.coordinates,
                reason: dead.reason,
                error: dead.error,
                source_topic: dead.source_topic,
                replayed_as,
            },
        ));
    }
    // Time order; a dead letter after the processing that wrote it.
    own.sort_by_key(|(ms, rank, _)| (*ms, *rank));
    let steps: Vec<Step> = own.into_iter().map(|(_, _, step)| step).collect();
    let mut path = Vec::new();
    let mut outcome = None;
    for step in &steps {
        if let Step::Audit {
            outcome: o,
            replay_of,
            ..
        } = step
        {
            if replay_of.is_some() {
                path.push("replayed".to_owned());
            }
            path.push(o.as_str().to_owned());
            outcome = Some(*o);
        }
    }
    let mut seen = BTreeSet::new();
    let caused: Vec<Caused> = read
        .caused
        .into_iter()
        .filter(|(identity, _, _)| seen.insert(identity.id.clone()))
        .map(|(identity, record, ms)| Caused {
            outcome: last_of_caused.get(identity.id.as_str()).map(|(_, o)| *o),
            event_id: identity.id,
            ty: identity.ty,
            record,
            at: rfc3339(ms),
        })
        .collect();
    let found = !steps.is_empty() || !caused.is_empty() || !lake.is_empty();
    Trace {
        event_id: id.to_owned(),
        since: rfc3339(Some(options.since_ms)).unwrap_or_default(),
        found,
        event,
        path,
        outcome,
        steps,
        caused,
        lake,
        searched: Searched {
            topics: read.topics,
            audit_from_lake: read.audit_from_lake,
            lake: lake_searched,
            lake_location: lake_location.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::read::{AuditRead, KafkaFound};
    use super::*;
    use crate::event::Identity;
    use crate::ingest::headers::DeadLetter;

    fn audit(key: &str, offset: i64, ms: i64, value: Value) -> AuditRead {
        AuditRead {
            key: key.to_owned(),
            record: format!("audit/0/{offset}"),
            timestamp_ms: Some(ms),
            value,
        }
    }

    fn dead_letter(offset: i64) -> DeadLetter {
        DeadLetter {
            coordinates: format!("dlq/0/{offset}"),
            ty: "order.placed".into(),
            reason: "action_failed".into(),
            error: "503 after 4 attempts".into(),
            source_topic: Some("events".into()),
            timestamp_ms: None,
        }
    }

    #[test]
    fn the_story_orders_links_and_summarises_the_records() {
        let options = TraceOptions::new(
            "e1".into(),
            None,
            chrono::DateTime::from_timestamp_millis(100_000_000).expect("instant"),
        )
        .expect("options");
        assert_eq!(options.lake_from_date, None, "without --since every file");
        let read = KafkaFound {
            audits: vec![
                audit(
                    "e1",
                    0,
                    1_000,
                    json!({"event_id": "e1", "type": "order.placed", "source": "/shop",
                        "event_time": "2026-01-01T00:00:00Z", "topic": "events", "partition": 0,
                        "offset": 4, "outcome": "retrying"}),
                ),
                audit(
                    "e1",
                    1,
                    2_000,
                    json!({"event_id": "e1", "topic": "retry", "partition": 0, "offset": 0,
                        "outcome": "dead_lettered", "retry_round": 1}),
                ),
                audit(
                    "e2",
                    2,
                    2_500,
                    json!({"event_id": "e2", "topic": "events", "partition": 0, "offset": 6,
                        "outcome": "denied"}),
                ),
                audit(
                    "e1",
                    3,
                    3_000,
                    json!({"event_id": "e1", "topic": "events", "partition": 0, "offset": 9,
                        "outcome": "actioned",
                        "replay_of": {"dead_letter": "dlq/0/7", "reason": "action_failed"}}),
                ),
            ],
            // Written just before the audit record that dead-lettered it.
            dead_letters: vec![(Some(1_999), dead_letter(7))],
            caused: vec![(
                Identity {
                    id: "e2".into(),
                    ty: "order.flagged".into(),
                    causationid: Some("e1".into()),
                },
                "flags/0/0".into(),
                Some(2_400),
            )],
            topics: vec![],
            audit_from_lake: Default::default(),
        };
        let trace = assemble(&options, read, vec![], find::Searched::default(), "lake");
        assert!(trace.found);
        assert_eq!(
            trace.path,
            ["retrying", "dead_lettered", "replayed", "actioned"]
        );
        assert_eq!(trace.outcome, Some(Outcome::Actioned));
        assert_eq!(
            trace.event.as_ref().and_then(|e| e.ty.as_deref()),
            Some("order.placed")
        );
        let order: Vec<&str> = trace
            .steps
            .iter()
            .map(|s| match s {
                Step::Audit { record, .. } | Step::DeadLetter { record, .. } => record.as_str(),
            })
            .collect();
        assert_eq!(order, ["audit/0/0", "audit/0/1", "dlq/0/7", "audit/0/3"]);
        let Step::DeadLetter { replayed_as, .. } = &trace.steps[2] else {
            panic!("a dead letter");
        };
        assert_eq!(replayed_as, &["events/0/9"]);
        assert_eq!(trace.caused.len(), 1);
        assert_eq!(trace.caused[0].outcome, Some(Outcome::Denied));
        let json = serde_json::to_value(&trace).expect("JSON");
        assert_eq!(json["event"]["time"], "2026-01-01T00:00:00Z");
        assert_eq!(json["steps"][2]["kind"], "dead_letter");
        assert_eq!(json["steps"][3]["replay_of"]["dead_letter"], "dlq/0/7");
    }

    #[test]
    fn since_bounds_kafka_and_the_lake_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-05T01:00:00Z")
            .expect("instant")
            .with_timezone(&chrono::Utc);
        let options = TraceOptions::new("e".into(), Some("2h"), now).expect("options");
        assert_eq!(options.lake_from_date.as_deref(), Some("2026-03-04"));
        let default = TraceOptions::new("e".into(), None, now).expect("options");
        assert_eq!(default.since_ms, options.since_ms - 22 * 3_600_000);
        let err = TraceOptions::new("e".into(), Some("soon"), now).expect_err("bad");
        assert!(err.contains("\"soon\""), "{err}");
    }
}
