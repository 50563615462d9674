//! The `reflex_*` headers: the dead-letter and retry format, in one place.
//!
//! reflex writes these headers on records it sends to the dead-letter topic, the retry topic
//! and back to an event topic (`reflex dlq replay`); this module is the only one that names,
//! writes or reads them. A dead letter or retry record carries the original key, value and
//! headers (without earlier `reflex_*` headers), plus:
//! - the reason code and its explanation (`reflex_reason`, `reflex_error`);
//! - where the record first appeared (`reflex_source_topic`, `_partition`, `_offset`), the
//!   worker and the event type when it was read;
//! - for a failed action or lookup, its context ([`Context`]);
//! - in the retry topic, the round and when it is due (`reflex_retry_round`, `reflex_retry_at`).
//!
//! A replayed dead letter carries `reflex_replay_of` and `reflex_replay_reason` instead.

use serde::{Deserialize, Serialize};

use super::{DeadLetterReason, Input, OutRecord};

/// The machine-readable reason code.
pub const REASON: &str = "reflex_reason";
/// A human-readable explanation.
pub const ERROR: &str = "reflex_error";
/// Topic of the original record.
pub const TOPIC: &str = "reflex_source_topic";
/// Partition of the original record.
pub const PARTITION: &str = "reflex_source_partition";
/// Offset of the original record.
pub const OFFSET: &str = "reflex_source_offset";
/// The worker that dead-lettered it.
pub const WORKER: &str = "reflex_worker";
/// The event's type, when it was read.
pub const EVENT_TYPE: &str = "reflex_event_type";
/// The action that failed.
pub const ACTION: &str = "reflex_action";
/// The action service's last HTTP status.
pub const STATUS: &str = "reflex_status";
/// Calls made to the action service, over every round.
pub const ATTEMPTS: &str = "reflex_attempts";
/// The start of the action service's last response body.
pub const RESPONSE: &str = "reflex_response";
/// Rounds through the retry topic so far.
pub const RETRY_ROUND: &str = "reflex_retry_round";
/// When a record in the retry topic is due (milliseconds since the epoch).
pub const RETRY_AT: &str = "reflex_retry_at";
/// The enrichment lookup that failed.
pub const LOOKUP: &str = "reflex_lookup";
/// `topic/partition/offset` of the dead letter a replayed record comes from.
pub const REPLAY_OF: &str = "reflex_replay_of";
/// The reason code of the dead letter a replayed record comes from.
pub const REPLAY_REASON: &str = "reflex_replay_reason";
/// Every header reflex adds starts with this; they are stripped before adding new ones.
/// A record's event time in ms since the epoch (on the analytics role's repartition topics).
pub const EVENT_TIME: &str = "reflex_event_time";
pub const PREFIX: &str = "reflex_";

/// Where a record first appeared (for a record read from the retry topic, the event topic it
/// came from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Topic of the original record.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

impl Origin {
    /// The coordinates of `input` itself.
    pub fn of(input: &Input<'_>) -> Self {
        Self {
            topic: input.topic.to_owned(),
            partition: input.partition,
            offset: input.offset,
        }
    }
}

/// The dead letter a replayed record comes from (`reflex dlq replay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayOf {
    /// `topic/partition/offset` of the dead letter.
    pub dead_letter: String,
    /// Its reason code.
    pub reason: String,
}

/// Rounds through the retry topic this record has been through.
pub fn retry_round(input: &Input<'_>) -> Option<u32> {
    input.header(RETRY_ROUND).and_then(|v| v.parse().ok())
}

/// When a record from the retry topic is due, in milliseconds since the epoch.
pub fn retry_due(input: &Input<'_>) -> Option<i64> {
    input.header(RETRY_AT).and_then(|v| v.parse().ok())
}

/// The event topic a record from the retry topic first came from.
pub fn origin_topic<'a>(input: &Input<'a>) -> Option<&'a str> {
    input.header(RETRY_ROUND)?;
    input.header(TOPIC)
}

/// Calls made to the action service in earlier rounds.
pub fn prior_attempts(input: &Input<'_>) -> u32 {
    input
        .header(RETRY_ROUND)
        .and(input.header(ATTEMPTS))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where a record from the retry topic first came from.
pub fn origin(input: &Input<'_>) -> Option<Origin> {
    input.header(RETRY_ROUND)?;
    Some(Origin {
        topic: input.header(TOPIC)?.to_owned(),
        partition: input.header(PARTITION)?.parse().ok()?,
        offset: input.header(OFFSET)?.parse().ok()?,
    })
}

/// The dead letter a replayed record comes from.
pub fn replay_of(input: &Input<'_>) -> Option<ReplayOf> {
    Some(ReplayOf {
        dead_letter: input.header(REPLAY_OF)?.to_owned(),
        reason: input.header(REPLAY_REASON).unwrap_or_default().to_owned(),
    })
}

/// What a failed action or lookup adds to its dead letter or retry record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Context {
    /// An action that failed.
    Action {
        /// The action's name.
        name: String,
        /// The service's last HTTP status, if it answered.
        status: Option<u16>,
        /// Calls made, over every round.
        attempts: u32,
        /// The start of the last response body.
        response: String,
    },
    /// An enrichment lookup that failed.
    Lookup {
        /// The lookup's name.
        name: String,
    },
}

impl Context {
    fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Action {
                name,
                status,
                attempts,
                response,
            } => {
                let mut out = vec![
                    (ACTION, name.clone()),
                    (ATTEMPTS, attempts.to_string()),
                    (RESPONSE, response.clone()),
                ];
                if let Some(status) = status {
                    out.push((STATUS, status.to_string()));
                }
                out
            }
            Self::Lookup { name } => vec![(LOOKUP, name.clone())],
        }
    }
}

/// Why a record goes to the dead-letter topic, and what its headers say about it.
#[derive(Debug, Clone)]
pub struct Letter<'a> {
    /// The reason.
    pub reason: DeadLetterReason,
    /// Its explanation.
    pub error: &'a str,
    /// Where the record first appeared.
    pub origin: &'a Origin,
    /// The worker dead-lettering it.
    pub worker: &'a str,
    /// The event type, if it was read.
    pub event_type: Option<&'a str>,
    /// Its rounds through the retry topic.
    pub retry_round: Option<u32>,
    /// The failed action or lookup.
    pub context: Option<&'a Context>,
}

/// The record as it came, to the dead-letter topic `topic`, its reason and context in headers.
pub fn dead_letter(input: &Input<'_>, topic: &str, letter: &Letter<'_>) -> OutRecord {
    let mut extra = vec![
        (REASON, letter.reason.code().to_owned()),
        (ERROR, letter.error.to_owned()),
    ];
    extra.extend(source(letter.origin));
    extra.push((WORKER, letter.worker.to_owned()));
    if let Some(ty) = letter.event_type {
        extra.push((EVENT_TYPE, ty.to_owned()));
    }
    if let Some(round) = letter.retry_round {
        extra.push((RETRY_ROUND, round.to_string()));
    }
    if let Some(context) = letter.context {
        extra.extend(context.headers());
    }
    same_record(input, topic.to_owned(), extra)
}

/// A record's next round through the retry topic.
#[derive(Debug, Clone)]
pub struct Retry<'a> {
    /// The round it enters.
    pub round: u32,
    /// When it is due, milliseconds since the epoch.
    pub due_ms: i64,
    /// Why it waits.
    pub why: &'a str,
    /// Where the record first appeared.
    pub origin: &'a Origin,
    /// The failed action or lookup.
    pub context: Option<&'a Context>,
}

/// The record as it came, to the retry topic `topic`, due at `retry.due_ms`.
pub fn retry(input: &Input<'_>, topic: &str, retry: &Retry<'_>) -> OutRecord {
    let mut extra = vec![
        (RETRY_ROUND, retry.round.to_string()),
        (RETRY_AT, retry.due_ms.to_string()),
        (ERROR, retry.why.to_owned()),
    ];
    extra.extend(source(retry.origin));
    if let Some(context) = retry.context {
        extra.extend(context.headers());
    }
    // Partition p of the retry topic holds the retries of partition p of every event topic, so
    // the member that owns the event partition owns its waiting keys (range assignors), whatever
    // partitioner the publisher used.
    OutRecord {
        partition: Some(retry.origin.partition),
        ..same_record(input, topic.to_owned(), extra)
    }
}

/// One dead letter as its headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `topic/partition/offset` of the dead letter.
    pub coordinates: String,
    /// The event type, or `(unknown)`.
    pub ty: String,
    /// The reason code, or `(unknown)`.
    pub reason: String,
    /// The explanation.
    pub error: String,
    /// The topic the record came from.
    pub source_topic: Option<String>,
    /// When it was dead-lettered (the record's timestamp, milliseconds since the epoch).
    pub timestamp_ms: Option<i64>,
}

/// What a dead letter says when a header is missing.
pub const UNKNOWN: &str = "(unknown)";

impl DeadLetter {
    /// Reads a dead-letter record's headers (the last of each name).
    pub fn of(input: &Input<'_>) -> Self {
        Self {
            coordinates: input.coordinates(),
            ty: input
                .last_header_lossy(EVENT_TYPE)
                .or_else(|| input.last_header_lossy("ce_type"))
                .unwrap_or_else(|| UNKNOWN.to_owned()),
            reason: input
                .last_header_lossy(REASON)
                .unwrap_or_else(|| UNKNOWN.to_owned()),
            error: input.last_header_lossy(ERROR).unwrap_or_default(),
            source_topic: input.last_header_lossy(TOPIC),
            timestamp_ms: input.timestamp_ms,
        }
    }

    /// The record this dead letter is replayed as: the original back to its source topic,
    /// naming the dead letter; or why it cannot be replayed.
    pub fn replay_record(&self, input: &Input<'_>) -> Result<OutRecord, String> {
        let Some(topic) = self.source_topic.clone() else {
            return Err(format!("no {TOPIC} header"));
        };
        let extra = vec![
            (REPLAY_OF, self.coordinates.clone()),
            (REPLAY_REASON, self.reason.clone()),
        ];
        Ok(same_record(input, topic, extra))
    }
}

/// `input`'s key, value and headers (without the ones reflex added), plus `extra`, to `topic`.
fn same_record(input: &Input<'_>, topic: String, extra: Vec<(&str, String)>) -> OutRecord {
    let headers = input
        .headers
        .iter()
        .filter(|(n, _)| !n.starts_with(PREFIX))
        .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
        .chain(
            extra
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.into_bytes())),
        )
        .collect();
    OutRecord {
        partition: None,
        topic,
        key: input.key.map(<[u8]>::to_vec),
        value: input.value.map(<[u8]>::to_vec),
        headers,
    }
}

fn source(origin: &Origin) -> [(&'static str, String); 3] {
    [
        (TOPIC, origin.topic.clone()),
        (PARTITION, origin.partition.to_string()),
        (OFFSET, origin.offset.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(headers: &'a [(&'a str, &'a [u8])]) -> Input<'a> {
        Input {
            topic: "events.orders",
            partition: 2,
            offset: 7,
            key: Some(b"k1"),
            value: Some(b"{\"id\":\"e1\"}"),
            headers,
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    fn names(record: &OutRecord) -> Vec<&str> {
        record.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn a_dead_letter_keeps_the_record_and_says_why() {
        let headers: &[(&str, &[u8])] = &[("trace", b"t1"), (REASON, b"old")];
        let input = input(headers);
        let origin = Origin::of(&input);
        let context = Context::Action {
            name: "ledger".into(),
            status: Some(503),
            attempts: 5,
            response: "busy".into(),
        };
        let record = dead_letter(
            &input,
            "reflex.dlq",
            &Letter {
                reason: DeadLetterReason::ActionFailed,
                error: "503 after 5 attempts",
                origin: &origin,
                worker: "w1",
                event_type: Some("order.placed"),
                retry_round: Some(3),
                context: Some(&context),
            },
        );
        assert_eq!(record.topic, "reflex.dlq");
        assert_eq!(record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(
            names(&record),
            [
                "trace",
                REASON,
                ERROR,
                TOPIC,
                PARTITION,
                OFFSET,
                WORKER,
                EVENT_TYPE,
                RETRY_ROUND,
                ACTION,
                ATTEMPTS,
                RESPONSE,
                STATUS
            ]
        );
        // The dead letter reads back as it was written.
        let written: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let back = DeadLetter::of(&Input {
            topic: "reflex.dlq",
            partition: 0,
            offset: 4,
            headers: &written,
            ..input
        });
        assert_eq!(back.coordinates, "reflex.dlq/0/4");
        assert_eq!(back.ty, "order.placed");
        assert_eq!(back.reason, "action_failed");
        assert_eq!(back.error, "503 after 5 attempts");
        assert_eq!(back.source_topic.as_deref(), Some("events.orders"));
    }

    #[test]
    fn a_retry_record_reads_back_its_round_origin_and_attempts() {
        let input = input(&[]);
        let origin = Origin {
            topic: "events.payments".into(),
            partition: 1,
            offset: 40,
        };
        let context = Context::Action {
            name: "ledger".into(),
            status: None,
            attempts: 4,
            response: String::new(),
        };
        let record = retry(
            &input,
            "reflex.retry",
            &Retry {
                round: 2,
                due_ms: 1_700_000_005_000,
                why: "timed out",
                origin: &origin,
                context: Some(&context),
            },
        );
        let written: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let back = Input {
            topic: "reflex.retry",
            headers: &written,
            ..input
        };
        assert_eq!(retry_round(&back), Some(2));
        assert_eq!(retry_due(&back), Some(1_700_000_005_000));
        assert_eq!(origin_topic(&back), Some("events.payments"));
        assert_eq!(super::origin(&back), Some(origin));
        assert_eq!(prior_attempts(&back), 4);
        // Outside the retry topic the same headers mean nothing.
        assert_eq!(prior_attempts(&input), 0);
        assert_eq!(super::origin(&input), None);
    }

    #[test]
    fn a_replayed_record_is_the_original_with_its_dead_letter_named() {
        let headers: &[(&str, &[u8])] = &[
            ("ce_id", b"e1"),
            (REASON, b"action_failed"),
            (TOPIC, b"events.orders"),
            (RETRY_ROUND, b"3"),
        ];
        let dead_input = Input {
            topic: "reflex.dlq",
            ..input(headers)
        };
        let dead = DeadLetter::of(&dead_input);
        let record = dead.replay_record(&dead_input).expect("replayable");
        assert_eq!(record.topic, "events.orders");
        assert_eq!(names(&record), ["ce_id", REPLAY_OF, REPLAY_REASON]);
        let written: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let again = Input {
            headers: &written,
            ..dead_input
        };
        assert_eq!(
            replay_of(&again),
            Some(ReplayOf {
                dead_letter: "reflex.dlq/2/7".into(),
                reason: "action_failed".into()
            })
        );

        let orphan_headers: &[(&str, &[u8])] = &[(REASON, b"undecodable")];
        let orphan = input(orphan_headers);
        let why = DeadLetter::of(&orphan)
            .replay_record(&orphan)
            .expect_err("no source topic");
        assert!(why.contains(TOPIC), "{why}");
    }
}
