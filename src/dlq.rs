//! `reflex dlq list` and `reflex dlq replay`: the dead-letter topic summarised, and its records
//! sent back through the pipeline once the cause is fixed.
//!
//! A dead letter carries the original record and headers that say why, where it came from, the
//! event type and, for a failed action, its context ([`crate::ingest::headers`] owns that format).
//! A replay sends the original record back to its source topic, naming the dead letter; the
//! audit record of the new attempt names the dead letter it replays, so the trail shows both.

// rdkafka's `KafkaError` is large; a failed command ends there, so it is not boxed.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::message::{BorrowedMessage, Message};
use serde::Serialize;

use crate::config::Config;
pub use crate::ingest::headers::DeadLetter;
use crate::ingest::OutRecord;
use crate::kafka::{self, reader, scan, KafkaSetupError, ReadError, Start};

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Reading the dead-letter topic failed.
    #[error(transparent)]
    Read(#[from] ReadError),
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

/// Whether `filter` takes `dead`.
pub fn matches(dead: &DeadLetter, filter: &Filter) -> bool {
    filter.ty.as_ref().is_none_or(|t| *t == dead.ty)
        && filter.reason.as_ref().is_none_or(|r| *r == dead.reason)
        && filter
            .since_ms
            .is_none_or(|s| dead.timestamp_ms.is_some_and(|t| t >= s))
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
        let headers = kafka::headers_of(m);
        let dead = DeadLetter::of(&kafka::input_of(m, &headers));
        if matches(&dead, filter) {
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
    /// Whether this was a dry run: `sent` then counts what would have been sent.
    pub dry_run: bool,
}

impl fmt::Display for Replayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            for (why, n) in &self.skipped {
                writeln!(f, "would skip {n}: {why}")?;
            }
            writeln!(f, "{}", self.sent)?;
            return write!(f, "dry run: nothing was sent");
        }
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

/// The dead letters already replayed: those an audit record names in `replay_of`.
fn already_replayed(
    consumer: &crate::kafka::Reader,
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
            let headers = kafka::headers_of(m);
            let input = kafka::input_of(m, &headers);
            let dead = DeadLetter::of(&input);
            if !matches(&dead, filter) {
                return;
            }
            if done.contains(&dead.coordinates) {
                *replayed
                    .skipped
                    .entry("replayed before (--again sends it anyway)".to_owned())
                    .or_default() += 1;
                return;
            }
            match dead.replay_record(&input) {
                Ok(record) => chosen.push((dead, record)),
                Err(why) => *replayed.skipped.entry(why).or_default() += 1,
            }
        },
    )?;
    if dry_run {
        replayed.dry_run = true;
        for (dead, _) in &chosen {
            replayed.sent.add(dead);
        }
        return Ok(replayed);
    }
    let producer = kafka::producer(&config.kafka, kafka::Outage::new())?;
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

    #[test]
    fn filters_take_type_reason_and_time() {
        let dead = DeadLetter {
            coordinates: "reflex.dlq/2/7".into(),
            ty: "order.placed".into(),
            reason: "action_failed".into(),
            error: "503 after 5 attempts".into(),
            source_topic: Some("events.orders".into()),
            timestamp_ms: Some(1_000),
        };
        assert!(matches(&dead, &Filter::default()));
        let other_type = Filter {
            ty: Some("refund.requested".into()),
            ..Filter::default()
        };
        assert!(!matches(&dead, &other_type));
        let later = Filter {
            since_ms: Some(2_000),
            ..Filter::default()
        };
        assert!(!matches(&dead, &later));
        let reason = Filter {
            reason: Some("action_failed".into()),
            since_ms: Some(1_000),
            ..Filter::default()
        };
        assert!(matches(&dead, &reason));
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
