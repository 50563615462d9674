//! `reflex dlq list` and `reflex dlq replay`: the dead-letter topic summarised, and its records
//! sent back through the pipeline once the cause is fixed.
//!
//! A dead letter carries the original key, value and headers, plus `reflex_*` headers: the
//! reason, the explanation, where it came from, the event type and, for a failed action, the
//! action, its last status, the attempts and the start of the last response. A replay sends the
//! original record back to its source topic without the `reflex_*` headers, plus
//! `reflex_replay_of` (the dead letter's coordinates) and `reflex_replay_reason`; the audit
//! record of the new attempt names the dead letter it replays, so the trail shows both.

// rdkafka's `KafkaError` is large; a failed command ends there, so it is not boxed.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde::Serialize;

use crate::config::Config;
use crate::kafka::{self, KafkaSetupError};
use crate::pipeline::{dlq_headers as h, OutRecord};
use crate::replay::{reader, scan, ReplayError, Start};

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Reading the dead-letter topic failed.
    #[error(transparent)]
    Read(#[from] ReplayError),
    /// The producer could not be created.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// A replayed record was not acknowledged.
    #[error("replaying dead letter {dead_letter} to \"{topic}\" failed: {source}; the records before it were replayed, so re-run with --since to continue")]
    Send {
        /// The dead letter's coordinates.
        dead_letter: String,
        /// The destination topic.
        topic: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
}

/// Which dead letters a command takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this event type.
    pub ty: Option<String>,
    /// Only this reason code.
    pub reason: Option<String>,
    /// Only dead letters written at or after this instant (milliseconds since the epoch).
    pub since_ms: Option<i64>,
}

/// One dead letter as its headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `topic/partition/offset` of the dead letter.
    pub coordinates: String,
    /// The event type, or `(unknown)`.
    pub ty: String,
    /// The reason code.
    pub reason: String,
    /// The explanation.
    pub error: String,
    /// The topic the record came from.
    pub source_topic: Option<String>,
    /// When it was dead-lettered (the record's timestamp, milliseconds since the epoch).
    pub timestamp_ms: Option<i64>,
}

const UNKNOWN: &str = "(unknown)";

impl DeadLetter {
    /// Reads a dead-letter record's headers.
    pub fn of<M: Message>(message: &M) -> Self {
        let header = |name: &str| {
            message.headers().and_then(|hs| {
                hs.iter()
                    .filter(|x| x.key == name)
                    .last()
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        Self {
            coordinates: format!(
                "{}/{}/{}",
                message.topic(),
                message.partition(),
                message.offset()
            ),
            ty: header(h::EVENT_TYPE)
                .or_else(|| header("ce_type"))
                .unwrap_or_else(|| UNKNOWN.to_owned()),
            reason: header(h::REASON).unwrap_or_else(|| UNKNOWN.to_owned()),
            error: header(h::ERROR).unwrap_or_default(),
            source_topic: header(h::TOPIC),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }

    /// Whether `filter` takes it.
    pub fn matches(&self, filter: &Filter) -> bool {
        filter.ty.as_ref().is_none_or(|t| *t == self.ty)
            && filter.reason.as_ref().is_none_or(|r| *r == self.reason)
            && filter
                .since_ms
                .is_none_or(|s| self.timestamp_ms.is_some_and(|t| t >= s))
    }
}

/// Dead letters of one type and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    /// How many.
    pub count: u64,
    /// The earliest one's timestamp (RFC 3339).
    pub first: Option<String>,
    /// The latest one's timestamp (RFC 3339).
    pub last: Option<String>,
    /// The latest one's explanation.
    pub example: String,
}

/// Dead letters by event type and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Listing {
    /// The dead-letter topic.
    pub topic: String,
    /// Groups by (event type, reason code).
    pub groups: BTreeMap<String, BTreeMap<String, Group>>,
    /// Dead letters matched.
    pub total: u64,
}

impl Listing {
    /// Counts one dead letter.
    pub fn add(&mut self, dead: &DeadLetter) {
        let group = self
            .groups
            .entry(dead.ty.clone())
            .or_default()
            .entry(dead.reason.clone())
            .or_default();
        group.count += 1;
        let at = dead.timestamp_ms.and_then(rfc3339);
        if group.first.is_none() {
            group.first.clone_from(&at);
        }
        group.last = at;
        group.example.clone_from(&dead.error);
        self.total += 1;
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total == 0 {
            return write!(f, "no dead letters in \"{}\" match", self.topic);
        }
        writeln!(
            f,
            "{:<24} {:<26} {:>7}  {:<20} {:<20} latest error",
            "event type", "reason", "count", "first", "last"
        )?;
        for (ty, reasons) in &self.groups {
            for (reason, g) in reasons {
                let mut example = g.example.clone();
                if example.len() > 100 {
                    let mut cut = 100;
                    while !example.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    example.truncate(cut);
                    example.push('…');
                }
                writeln!(
                    f,
                    "{ty:<24} {reason:<26} {:>7}  {:<20} {:<20} {example}",
                    g.count,
                    g.first.as_deref().unwrap_or("-"),
                    g.last.as_deref().unwrap_or("-"),
                )?;
            }
        }
        write!(
            f,
            "{} dead letters in \"{}\"; `reflex dlq replay --type T --reason R` sends them back once the cause is fixed",
            self.total, self.topic
        )
    }
}

/// Reads the dead-letter topic from its beginning to its current end.
pub fn list(config: &Config, filter: &Filter) -> Result<Listing, DlqError> {
    let consumer = reader(&config.kafka)?;
    let mut listing = Listing {
        topic: config.topics.dlq.clone(),
        ..Listing::default()
    };
    scan(&consumer, &config.topics.dlq, Start::Beginning, None, |m| {
        let dead = DeadLetter::of(m);
        if dead.matches(filter) {
            listing.add(&dead);
        }
    })?;
    Ok(listing)
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replayed {
    /// Records sent back, by (event type, reason).
    pub sent: Listing,
    /// Matching dead letters not sent back, with why.
    pub skipped: BTreeMap<String, u64>,
}

impl fmt::Display for Replayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (why, n) in &self.skipped {
            writeln!(f, "skipped {n}: {why}")?;
        }
        write!(
            f,
            "replayed {} dead letters from \"{}\" to their source topics; their new audit records name the dead letter (replay_of)",
            self.sent.total, self.sent.topic
        )
    }
}

/// The record a dead letter is replayed as, or why it cannot be.
pub fn replay_record<M: Message>(message: &M, dead: &DeadLetter) -> Result<OutRecord, String> {
    let Some(topic) = dead.source_topic.clone() else {
        return Err(format!("no {} header", h::TOPIC));
    };
    let mut headers: Vec<(String, Vec<u8>)> = message
        .headers()
        .map(|hs| {
            hs.iter()
                .filter(|x| !x.key.starts_with(h::PREFIX))
                .map(|x| (x.key.to_owned(), x.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    headers.push((
        h::REPLAY_OF.to_owned(),
        dead.coordinates.clone().into_bytes(),
    ));
    headers.push((
        h::REPLAY_REASON.to_owned(),
        dead.reason.clone().into_bytes(),
    ));
    Ok(OutRecord {
        topic,
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    })
}

/// The dead letters already replayed: those an audit record names in `replay_of`.
fn already_replayed(
    consumer: &rdkafka::consumer::BaseConsumer,
    audit_topic: &str,
) -> Result<std::collections::HashSet<String>, DlqError> {
    #[derive(serde::Deserialize)]
    struct Replay {
        dead_letter: String,
    }
    #[derive(serde::Deserialize)]
    struct Audit {
        replay_of: Option<Replay>,
    }
    let mut replayed = std::collections::HashSet::new();
    scan(consumer, audit_topic, Start::Beginning, None, |m| {
        if let Some(Audit { replay_of: Some(r) }) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Audit>(p).ok())
        {
            replayed.insert(r.dead_letter);
        }
    })?;
    Ok(replayed)
}

/// Sends the matching dead letters back to their source topics (or only counts them, with
/// `dry_run`), printing progress to standard error. A dead letter that an audit record shows
/// was replayed already is skipped unless `again`.
pub async fn replay(
    config: &Config,
    filter: &Filter,
    dry_run: bool,
    again: bool,
) -> Result<Replayed, DlqError> {
    let consumer = reader(&config.kafka)?;
    let done = if again {
        std::collections::HashSet::new()
    } else {
        already_replayed(&consumer, &config.topics.audit)?
    };
    let mut chosen: Vec<(DeadLetter, OutRecord)> = Vec::new();
    let mut replayed = Replayed {
        sent: Listing {
            topic: config.topics.dlq.clone(),
            ..Listing::default()
        },
        ..Replayed::default()
    };
    scan(
        &consumer,
        &config.topics.dlq,
        Start::Beginning,
        None,
        |m: &BorrowedMessage<'_>| {
            let dead = DeadLetter::of(m);
            if !dead.matches(filter) {
                return;
            }
            if done.contains(&dead.coordinates) {
                *replayed
                    .skipped
                    .entry("replayed before (--again sends it anyway)".to_owned())
                    .or_default() += 1;
                return;
            }
            match replay_record(m, &dead) {
                Ok(record) => chosen.push((dead, record)),
                Err(why) => *replayed.skipped.entry(why).or_default() += 1,
            }
        },
    )?;
    if dry_run {
        for (dead, _) in &chosen {
            replayed.sent.add(dead);
        }
        return Ok(replayed);
    }
    let producer = kafka::producer(&config.kafka)?;
    let mut deliveries = Vec::with_capacity(chosen.len());
    for (dead, record) in &chosen {
        let delivery = kafka::send(&producer, record)
            .await
            .map_err(|source| DlqError::Send {
                dead_letter: dead.coordinates.clone(),
                topic: record.topic.clone(),
                source,
            })?;
        deliveries.push(delivery);
    }
    let total = chosen.len();
    for (n, ((dead, record), delivery)) in chosen.iter().zip(deliveries).enumerate() {
        kafka::delivered(delivery)
            .await
            .map_err(|source| DlqError::Send {
                dead_letter: dead.coordinates.clone(),
                topic: record.topic.clone(),
                source,
            })?;
        replayed.sent.add(dead);
        if (n + 1) % 10_000 == 0 {
            eprintln!("replayed {}/{total}", n + 1);
        }
    }
    Ok(replayed)
}

/// Reads `--since`: an RFC 3339 instant, or a duration before now (`90m`, `2h`, `1d`).
pub fn parse_since(text: &str, now: chrono::DateTime<chrono::Utc>) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    match humantime::parse_duration(text) {
        Ok(d) => {
            let d = chrono::Duration::from_std(d).map_err(|e| e.to_string())?;
            Ok((now - d).timestamp_millis())
        }
        Err(_) => Err(format!(
            "--since \"{text}\" is neither an RFC 3339 time (2026-11-26T08:00:00Z) nor a duration (90m, 2h, 1d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn dead_letter(headers: &[(&str, &str)], ts: i64) -> OwnedMessage {
        let mut hs = OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        OwnedMessage::new(
            Some(b"{\"id\":\"e1\"}".to_vec()),
            Some(b"k1".to_vec()),
            "reflex.dlq".into(),
            Timestamp::CreateTime(ts),
            2,
            7,
            Some(hs),
        )
    }

    #[test]
    fn headers_describe_the_dead_letter_and_filters_apply() {
        let m = dead_letter(
            &[
                ("trace", "t1"),
                (h::REASON, "action_failed"),
                (h::ERROR, "503 after 5 attempts"),
                (h::TOPIC, "events.orders"),
                (h::EVENT_TYPE, "order.placed"),
            ],
            1_000,
        );
        let dead = DeadLetter::of(&m);
        assert_eq!(dead.coordinates, "reflex.dlq/2/7");
        assert_eq!(dead.ty, "order.placed");
        assert_eq!(dead.reason, "action_failed");
        assert_eq!(dead.source_topic.as_deref(), Some("events.orders"));
        let all = Filter::default();
        assert!(dead.matches(&all));
        let other_type = Filter {
            ty: Some("refund.requested".into()),
            ..Filter::default()
        };
        assert!(!dead.matches(&other_type));
        let later = Filter {
            since_ms: Some(2_000),
            ..Filter::default()
        };
        assert!(!dead.matches(&later));
        let reason = Filter {
            reason: Some("action_failed".into()),
            since_ms: Some(1_000),
            ..Filter::default()
        };
        assert!(dead.matches(&reason));
    }

    #[test]
    fn a_replayed_record_is_the_original_with_its_origin_named() {
        let m = dead_letter(
            &[
                ("ce_id", "e1"),
                (h::REASON, "action_failed"),
                (h::TOPIC, "events.orders"),
                (h::RETRY_ROUND, "3"),
            ],
            1,
        );
        let dead = DeadLetter::of(&m);
        let record = replay_record(&m, &dead).expect("has a source topic");
        assert_eq!(record.topic, "events.orders");
        assert_eq!(record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"{\"id\":\"e1\"}"[..]));
        let names: Vec<&str> = record.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ce_id", h::REPLAY_OF, h::REPLAY_REASON]);
        assert_eq!(record.headers[1].1, b"reflex.dlq/2/7");
        let orphan = dead_letter(&[(h::REASON, "undecodable")], 1);
        assert!(replay_record(&orphan, &DeadLetter::of(&orphan)).is_err());
    }

    #[test]
    fn since_reads_instants_and_durations() {
        let now = chrono::DateTime::from_timestamp_millis(10_000_000).expect("valid");
        assert_eq!(parse_since("1h", now), Ok(10_000_000 - 3_600_000));
        assert_eq!(
            parse_since("1970-01-01T00:00:01Z", now),
            Ok(1_000),
            "an instant"
        );
        let err = parse_since("yesterday", now).expect_err("bad");
        assert!(err.contains("\"yesterday\""), "{err}");
    }

    #[test]
    fn listing_groups_by_type_and_reason() {
        let mut listing = Listing::default();
        for (ty, reason, ts) in [("a", "x", 1), ("a", "x", 5), ("a", "y", 2), ("b", "x", 3)] {
            listing.add(&DeadLetter {
                coordinates: String::new(),
                ty: ty.into(),
                reason: reason.into(),
                error: format!("e{ts}"),
                source_topic: None,
                timestamp_ms: Some(ts * 1000),
            });
        }
        assert_eq!(listing.total, 4);
        let ax = &listing.groups["a"]["x"];
        assert_eq!(ax.count, 2);
        assert_eq!(ax.first.as_deref(), Some("1970-01-01T00:00:01Z"));
        assert_eq!(ax.last.as_deref(), Some("1970-01-01T00:00:05Z"));
        assert_eq!(ax.example, "e5");
        assert!(listing.to_string().contains("4 dead letters"));
    }
}
