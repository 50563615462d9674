//! Reading what the topics hold of one event: records on the emit topics caused by it, its audit
//! records (and its caused events'), and its dead letters; each topic from `--since` on.

use std::collections::HashSet;

use crate::kafka::Reader;
use rdkafka::message::{BorrowedMessage, Message};
use serde_json::Value;

use super::TopicRead;
use crate::config::KafkaConfig;
use crate::event::Identity;
use crate::ingest::headers::DeadLetter;
use crate::kafka::{self, reader, scan, scan_keys, ReadError, Start};

/// The topics a trace reads.
#[derive(Debug, Clone)]
pub(super) struct Topics {
    pub(super) audit: String,
    pub(super) dlq: String,
    pub(super) emit: Vec<String>,
}

/// Dead letters with their record timestamps (milliseconds since the epoch).
pub(super) type Letters = Vec<(Option<i64>, DeadLetter)>;

/// What the topics hold of one event.
#[derive(Debug, Default)]
pub(super) struct KafkaFound {
    pub(super) audits: Vec<AuditRead>,
    pub(super) dead_letters: Letters,
    pub(super) caused: Vec<(Identity, String, Option<i64>)>,
    pub(super) topics: Vec<TopicRead>,
}

/// An audit record read back.
#[derive(Debug)]
pub(super) struct AuditRead {
    pub(super) key: String,
    pub(super) record: String,
    pub(super) timestamp_ms: Option<i64>,
    pub(super) value: Value,
}

/// Whether `needle` occurs in the record's value or is a header value: a cheap test before
/// decoding.
fn mentions(m: &BorrowedMessage<'_>, needle: &[u8]) -> bool {
    let in_value = m
        .payload()
        .is_some_and(|v| memchr::memmem::find(v, needle).is_some());
    in_value || kafka::headers_of(m).iter().any(|(_, v)| *v == needle)
}

/// Reads the emit topics and then the audit topic, and beside them (a reader of its own) the
/// dead-letter topic, each from `since_ms`.
pub(super) fn read_kafka(
    config: &KafkaConfig,
    topics: &Topics,
    id: &str,
    since_ms: i64,
) -> Result<KafkaFound, ReadError> {
    let from = Start::Since(since_ms);
    let dlq_consumer = reader(config)?;
    let consumer = reader(config)?;
    std::thread::scope(|scope| {
        let dead = scope.spawn(|| dead_letters(&dlq_consumer, &topics.dlq, from, id));
        let found = caused_and_audits(config, &consumer, topics, from, id);
        let dead = dead
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let (mut found, (letters, read)) = (found?, dead?);
        found.dead_letters = letters;
        found.topics.push(read);
        Ok(found)
    })
}

/// The events `id` caused, on the emit topics, then the audit records of `id` and of them.
fn caused_and_audits(
    config: &KafkaConfig,
    consumer: &Reader,
    topics: &Topics,
    from: Start,
    id: &str,
) -> Result<KafkaFound, ReadError> {
    let mut found = KafkaFound::default();
    for topic in &topics.emit {
        let mut records = 0;
        scan(consumer, topic, from, None, |m| {
            records += 1;
            if !mentions(m, id.as_bytes()) {
                return;
            }
            let headers = kafka::headers_of(m);
            if let Some(identity) = Identity::of(m.payload(), &headers) {
                if identity.causationid.as_deref() == Some(id) && identity.id != id {
                    let record = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
                    found
                        .caused
                        .push((identity, record, m.timestamp().to_millis()));
                }
            }
        })?;
        found.topics.push(TopicRead {
            topic: topic.clone(),
            records,
        });
    }
    let mut keys: HashSet<&str> = found.caused.iter().map(|c| c.0.id.as_str()).collect();
    keys.insert(id);
    // Audit records are keyed by event id: only the partitions of these keys hold them.
    let partitions_of: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let only = kafka::default_partitioner(config).then_some(partitions_of.as_slice());
    let mut audits = Vec::new();
    let mut records = 0;
    scan_keys(consumer, &topics.audit, from, only, |m| {
        records += 1;
        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        if !keys.contains(key) {
            return;
        }
        let Some(value) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) else {
            return;
        };
        audits.push(AuditRead {
            key: key.to_owned(),
            record: format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
            timestamp_ms: m.timestamp().to_millis(),
            value,
        });
    })?;
    found.audits = audits;
    found.topics.push(TopicRead {
        topic: topics.audit.clone(),
        records,
    });
    Ok(found)
}

/// The dead letters holding `id` (read with [`DeadLetter::of`]) and their record timestamps.
fn dead_letters(
    consumer: &Reader,
    topic: &str,
    from: Start,
    id: &str,
) -> Result<(Letters, TopicRead), ReadError> {
    let mut letters = Vec::new();
    let mut records = 0;
    scan(consumer, topic, from, None, |m| {
        records += 1;
        if !mentions(m, id.as_bytes()) {
            return;
        }
        let headers = kafka::headers_of(m);
        if Identity::of(m.payload(), &headers).is_some_and(|i| i.id == id) {
            let input = kafka::input_of(m, &headers);
            letters.push((input.timestamp_ms, DeadLetter::of(&input)));
        }
    })?;
    let read = TopicRead {
        topic: topic.to_owned(),
        records,
    };
    Ok((letters, read))
}
