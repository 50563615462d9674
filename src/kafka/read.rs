//! Reading a topic from a start to the end it had when the reading began, outside any consumer
//! group's work: for `reflex policy replay`, `policy status`, `dlq` and `trace`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::ClientContext;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{base_config, with_properties, KafkaSetupError, MAX_MESSAGE_BYTES};
use crate::config::KafkaConfig;

/// How long reading one topic to its end may take.
const READ_LIMIT: Duration = Duration::from_secs(300);

/// Why a topic could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The reading client could not be created.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// Reading a topic failed.
    #[error("cannot read topic \"{topic}\": {source}")]
    Read {
        /// The topic.
        topic: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// Reading a topic did not reach its end in time.
    #[error("reading topic \"{topic}\" did not reach its end within {seconds} s")]
    Stalled {
        /// The topic.
        topic: String,
        /// The limit.
        seconds: u64,
    },
}

/// A consumer that reads topics by assignment ([`reader`]).
pub type Reader = BaseConsumer<ReaderContext>;

/// A reader's client context: librdkafka's errors are logged, except the end of a partition,
/// which a reader expects (it may arrive after the partition was released).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !end {
            tracing::error!(error = %error, reason, "Kafka reader error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A consumer for reading topics by assignment: a group of its own that never commits.
pub fn reader(config: &KafkaConfig) -> Result<Reader, ReadError> {
    let mut settings = base_config(config);
    settings
        .set(
            "group.id",
            format!("reflex-reader-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        // A partition written in transactions ends in a commit or abort marker, which is never
        // delivered: the end of a partition is known by the end-of-partition event.
        .set("enable.partition.eof", "true")
        .set("fetch.message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        // A reader drains its queue as fast as it fills: after the queue's thresholds it
        // fetches again at once rather than after librdkafka's default 1 s, which halves the
        // time to read a busy topic to its end.
        .set("fetch.queue.backoff.ms", "1");
    with_properties(settings, config)
        .create_with_context(ReaderContext)
        .map_err(|source| {
            ReadError::Setup(KafkaSetupError::Client {
                what: "topic reader",
                brokers: config.brokers.clone(),
                source,
            })
        })
}

/// Where a read starts in every partition.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// The oldest record kept.
    Beginning,
    /// This offset (or the oldest kept, if later).
    Offset(i64),
    /// This many records before the end.
    Tail(i64),
    /// The first record whose timestamp is at or after this instant (milliseconds since the
    /// epoch), found per partition with offsets-for-times; a partition with none is skipped.
    Since(i64),
}

/// Reads one topic from a start to the end each partition had when it was opened.
pub struct TopicReader<'c> {
    consumer: &'c Reader,
    topic: String,
    ends: HashMap<i32, i64>,
    started: Instant,
}

impl<'c> TopicReader<'c> {
    /// Assigns every partition of `topic` to `consumer` from `from`.
    pub fn open(consumer: &'c Reader, topic: &str, from: Start) -> Result<Self, ReadError> {
        Self::open_for_keys(consumer, topic, from, None)
    }

    /// Assigns the partitions of `topic` that hold records of `keys` (as the default
    /// partitioner places them, see [`default_partition`]), or every partition with `None`,
    /// from `from`.
    pub fn open_for_keys(
        consumer: &'c Reader,
        topic: &str,
        from: Start,
        keys: Option<&[&[u8]]>,
    ) -> Result<Self, ReadError> {
        let chosen = match (keys, from) {
            (None, Start::Beginning | Start::Offset(_) | Start::Tail(_)) => None,
            _ => {
                let partitions = partitions_of(consumer, topic)?;
                let count = partitions.len();
                Some(match keys {
                    Some(keys) => partitions
                        .into_iter()
                        .filter(|p| keys.iter().any(|k| default_partition(k, count) == Some(*p)))
                        .collect(),
                    None => partitions,
                })
            }
        };
        let by_time = match (from, &chosen) {
            (Start::Since(ms), Some(chosen)) => offsets_for_time(consumer, topic, chosen, ms)?,
            _ => HashMap::new(),
        };
        Self::open_with(consumer, topic, |partition, low, high| {
            if chosen.as_ref().is_some_and(|c| !c.contains(&partition)) {
                return None;
            }
            match from {
                Start::Beginning => Some(low),
                Start::Offset(o) => Some(o.max(low)),
                Start::Tail(n) => Some((high - n).max(low)),
                // No record at or after the instant: nothing to read in this partition.
                Start::Since(_) => match by_time.get(&partition) {
                    Some(Offset::Offset(o)) => Some((*o).max(low)),
                    _ => None,
                },
            }
        })
    }

    /// Assigns the partitions of `topic` named in `starts`, each from its offset (or the
    /// oldest kept, if later); a negative offset (none committed) reads from the oldest.
    pub fn open_partitions(
        consumer: &'c Reader,
        topic: &str,
        starts: &HashMap<i32, i64>,
    ) -> Result<Self, ReadError> {
        Self::open_with(consumer, topic, |partition, low, _| {
            starts.get(&partition).map(|&o| o.max(low))
        })
    }

    /// Assigns each partition of `topic` for which `start(partition, low, high)` names an
    /// offset, up to the end it has now.
    fn open_with(
        consumer: &'c Reader,
        topic: &str,
        start: impl Fn(i32, i64, i64) -> Option<i64>,
    ) -> Result<Self, ReadError> {
        let timeout = Duration::from_secs(10);
        let read_err = |source| ReadError::Read {
            topic: topic.to_owned(),
            source,
        };
        let mut assignment = TopicPartitionList::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for p in partitions_of(consumer, topic)? {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(read_err)?;
            let Some(start) = start(p, low, high) else {
                continue;
            };
            if start < high {
                assignment
                    .add_partition_offset(topic, p, Offset::Offset(start))
                    .map_err(read_err)?;
                ends.insert(p, high);
            }
        }
        if !ends.is_empty() {
            consumer.assign(&assignment).map_err(read_err)?;
        }
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            ends,
            started: Instant::now(),
        })
    }

    /// The next record before the end, or `None` once every partition reached it (the
    /// assignment is then released).
    pub fn next_record(&mut self) -> Result<Option<BorrowedMessage<'c>>, ReadError> {
        let read_err = |source| ReadError::Read {
            topic: self.topic.clone(),
            source,
        };
        while !self.ends.is_empty() {
            if self.started.elapsed() > READ_LIMIT {
                return Err(ReadError::Stalled {
                    topic: self.topic.clone(),
                    seconds: READ_LIMIT.as_secs(),
                });
            }
            let Some(message) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = match message {
                Err(KafkaError::PartitionEOF(partition)) => {
                    self.ends.remove(&partition);
                    continue;
                }
                other => other.map_err(read_err)?,
            };
            let (partition, offset) = (message.partition(), message.offset());
            let Some(end) = self.ends.get(&partition).copied() else {
                continue;
            };
            if offset + 1 >= end {
                self.ends.remove(&partition);
            }
            if offset < end {
                return Ok(Some(message));
            }
        }
        self.consumer.unassign().map_err(read_err)?;
        Ok(None)
    }
}

/// The partitions of `topic`, from the cluster's metadata.
pub fn partitions_of(consumer: &Reader, topic: &str) -> Result<Vec<i32>, ReadError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|source| ReadError::Read {
            topic: topic.to_owned(),
            source,
        })?;
    Ok(metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| p.id())
        .collect())
}

/// The offset of the first record at or after `ms` in each of `partitions` (`Offset::End` where
/// there is none), in one offsets-for-times request.
pub fn offsets_for_time(
    consumer: &Reader,
    topic: &str,
    partitions: &[i32],
    ms: i64,
) -> Result<HashMap<i32, Offset>, ReadError> {
    let read_err = |source| ReadError::Read {
        topic: topic.to_owned(),
        source,
    };
    let mut query = TopicPartitionList::new();
    for p in partitions {
        query
            .add_partition_offset(topic, *p, Offset::Offset(ms))
            .map_err(read_err)?;
    }
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    let found = consumer
        .offsets_for_times(query, Duration::from_secs(10))
        .map_err(read_err)?;
    Ok(found
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect())
}

/// Calls `f` for every record of the partitions of `topic` that hold `keys` (see
/// [`TopicReader::open_for_keys`]), from `from` to the end as it is now.
pub fn scan_keys(
    consumer: &Reader,
    topic: &str,
    from: Start,
    keys: Option<&[&[u8]]>,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ReadError> {
    let mut reader = TopicReader::open_for_keys(consumer, topic, from, keys)?;
    while let Some(message) = reader.next_record()? {
        f(&message);
    }
    Ok(())
}

/// The partition librdkafka's default partitioner (`consistent_random`) gives a non-empty
/// `key` among `count` partitions: the key's CRC-32 modulo the count.
pub fn default_partition(key: &[u8], count: usize) -> Option<i32> {
    if key.is_empty() || count == 0 {
        return None;
    }
    let count = u32::try_from(count).ok()?;
    i32::try_from(crc32(key) % count).ok()
}

/// Whether records reflex produces with `config` are placed by the default partitioner: no
/// `partitioner` property is set.
pub fn default_partitioner(config: &KafkaConfig) -> bool {
    !config.properties.contains_key("partitioner") && !config.producer.contains_key("partitioner")
}

/// CRC-32 (IEEE, as zlib and librdkafka compute it).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Calls `f` for every record of `topic` from `from` to the end as it is now, at most `max`.
pub fn scan(
    consumer: &Reader,
    topic: &str,
    from: Start,
    max: Option<usize>,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ReadError> {
    let mut reader = TopicReader::open(consumer, topic, from)?;
    let mut seen = 0usize;
    while max.is_none_or(|m| seen < m) {
        let Some(message) = reader.next_record()? else {
            return Ok(());
        };
        f(&message);
        seen += 1;
    }
    consumer.unassign().map_err(|source| ReadError::Read {
        topic: topic.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_where_librdkafka_puts_them() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the CRC-32 check value");
        assert_eq!(
            default_partition(b"123456789", 7),
            Some((0xCBF4_3926_u32 % 7) as i32)
        );
        assert_eq!(
            default_partition(b"", 3),
            None,
            "an empty key is placed at random"
        );
        assert_eq!(default_partition(b"k", 0), None);
    }
}
