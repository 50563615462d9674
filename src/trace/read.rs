//! Reading what the topics hold of one event: records on the emit topics caused by it, its audit
//! records (and its caused events'), and its dead letters; each topic from `--since` on, the
//! audit topic only past the offsets the lake group committed (the lake's `audit` table holds
//! the records before them).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::kafka::Reader;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use super::TopicRead;
use crate::config::KafkaConfig;
use crate::event::Identity;
use crate::ingest::headers::DeadLetter;
use crate::kafka::read::{offsets_for_time, partitions_of};
use crate::kafka::{self, reader, scan, ReadError, Start, TopicReader};

/// The topics a trace reads.
#[derive(Debug, Clone)]
pub(super) struct Topics {
    pub(super) audit: String,
    pub(super) dlq: String,
    pub(super) emit: Vec<String>,
    /// The lake role's consumer group, whose committed offsets bound the audit topic's read.
    pub(super) lake_group: Option<String>,
    /// Whether reflex's producer places records with the default partitioner, so the audit
    /// records of an id are in the partition it hashes to.
    pub(super) default_partitioner: bool,
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
    /// The audit partitions read and the offset each was read from, where the lake group's
    /// committed offset (the lake holds the records before it) was past `--since`.
    pub(super) audit_from_lake: BTreeMap<i32, i64>,
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
/// dead-letter topic, each from `since_ms`; the lake group's committed offsets are asked for
/// beside them too (a client of their own, whose group coordinator lookup then costs nothing).
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
        let committed = scope.spawn(|| match &topics.lake_group {
            Some(group) => lake_committed(config, group, &topics.audit),
            None => HashMap::new(),
        });
        let committed = move || {
            committed
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        };
        let found = caused_and_audits(&consumer, topics, from, id, committed);
        let dead = dead
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let (mut found, (letters, read)) = (found?, dead?);
        found.dead_letters = letters;
        found.topics.push(read);
        Ok(found)
    })
}

/// The events `id` caused, on the emit topics, then the audit records of `id` and of them
/// (past the lake group's offsets, which `committed` gives).
fn caused_and_audits(
    consumer: &Reader,
    topics: &Topics,
    from: Start,
    id: &str,
    committed: impl FnOnce() -> HashMap<i32, i64>,
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
    let partitions_of_keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let only = topics
        .default_partitioner
        .then_some(partitions_of_keys.as_slice());
    let starts = audit_starts(consumer, &topics.audit, from, only, &committed())?;
    found.audit_from_lake = starts.lake;
    let mut audits = Vec::new();
    let mut records = 0;
    let mut reader = TopicReader::open_partitions(consumer, &topics.audit, &starts.kafka)?;
    while let Some(m) = reader.next_record()? {
        records += 1;
        let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        if !keys.contains(key) {
            continue;
        }
        let Some(value) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) else {
            continue;
        };
        audits.push(AuditRead {
            key: key.to_owned(),
            record: format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
            timestamp_ms: m.timestamp().to_millis(),
            value,
        });
    }
    found.audits = audits;
    found.topics.push(TopicRead {
        topic: topics.audit.clone(),
        records,
    });
    Ok(found)
}

/// Where to read each audit partition from.
struct AuditStarts {
    /// The offset each partition is read from.
    kafka: HashMap<i32, i64>,
    /// Those moved past `--since` by the lake group's committed offset.
    lake: BTreeMap<i32, i64>,
}

/// The audit partitions holding `keys` (every partition with `None`), each from the first
/// offset at or after `--since` or, if later, the offset the lake group committed: the lake
/// role commits an offset only once every record before it is in a lake file, so those
/// records are in the `audit` table (searched beside). A partition with no record since
/// `--since` is not read.
fn audit_starts(
    consumer: &Reader,
    topic: &str,
    from: Start,
    keys: Option<&[&[u8]]>,
    committed: &HashMap<i32, i64>,
) -> Result<AuditStarts, ReadError> {
    let all = partitions_of(consumer, topic)?;
    let count = all.len();
    let chosen: Vec<i32> = all
        .into_iter()
        .filter(|p| {
            keys.is_none_or(|keys| {
                keys.iter()
                    .any(|k| kafka::default_partition(k, count) == Some(*p))
            })
        })
        .collect();
    let since = match from {
        Start::Since(ms) => offsets_for_time(consumer, topic, &chosen, ms)?,
        _ => chosen.iter().map(|p| (*p, Offset::Beginning)).collect(),
    };
    let mut starts = AuditStarts {
        kafka: HashMap::new(),
        lake: BTreeMap::new(),
    };
    for p in chosen {
        let since = match since.get(&p) {
            Some(Offset::Offset(o)) => *o,
            Some(Offset::Beginning) => 0,
            // No record at or after the instant.
            _ => continue,
        };
        match committed.get(&p) {
            Some(&c) if c > since => {
                starts.kafka.insert(p, c);
                starts.lake.insert(p, c);
            }
            _ => {
                starts.kafka.insert(p, since);
            }
        }
    }
    Ok(starts)
}

/// The offsets the lake group committed on the partitions of `topic`; none when the group has
/// none or the brokers do not answer (the whole range is then read from Kafka).
fn lake_committed(config: &KafkaConfig, group: &str, topic: &str) -> HashMap<i32, i64> {
    let probe = match kafka::probe(config, group, kafka::Outage::new()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "no client for the lake group's offsets");
            return HashMap::new();
        }
    };
    let partitions: Vec<i32> = match probe.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(metadata) => metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| p.id())
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, topic, "partitions for the lake group's offsets");
            return HashMap::new();
        }
    };
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition(topic, p);
    }
    match probe.committed_offsets(list, Duration::from_secs(10)) {
        Ok(list) => list
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, group, "the lake group's committed offsets");
            HashMap::new()
        }
    }
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
