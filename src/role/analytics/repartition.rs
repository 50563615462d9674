//! Repartition topics: how an analysis that groups by something other than its input records'
//! key still has each group held by exactly one worker (as Kafka Streams does).
//!
//! An analysis without `keyed_by_group = true` does not run on the input topics. The task of
//! input partition `p` forwards each event the analysis reads to the internal topic
//! `<group_id>-<analysis>-repartition`, keyed by the event's group (the analysis's name without
//! a grouping) and placed on the partition the default partitioner gives that key, as a
//! structured CloudEvent with its event time and original coordinates in headers. The windows
//! run from that topic: partition `p` of it belongs to task `p` like partition `p` of the
//! inputs (the topic has the inputs' partition count and the group uses a range assignor).
//!
//! In the analysis's state each original topic partition is an input of its own, named
//! `<topic>/<partition>`: the watermark is the smallest newest event time over those not idle
//! (a source partition that sends nothing here is released after `idle_timeout`, as an idle
//! input partition is), and its offsets skip a record forwarded twice. The hop is
//! at-least-once: the input offsets are committed only after the forwarded records are
//! acknowledged, so after a crash records are forwarded again; a forwarder writes each input
//! partition's records in order (an idempotent producer), so a copy is recognised by an
//! original offset at or below the newest already counted and never counted twice.
//!
//! After each checkpoint the records below the offsets it committed are deleted
//! (`purge_repartition`, as Kafka Streams purges its repartition topics): the states written
//! reflect them and a restarted worker resumes at the committed offsets, so nothing reads them
//! again and the topics hold only what is still to be analysed.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::AnalyticsError;
use crate::analytics::Analysis;
use crate::config::Config;
use crate::event::CloudEvent;
use crate::ingest::headers::{self, Origin};
use crate::ingest::OutRecord;
use crate::kafka::{self, KafkaSetupError};

/// The repartition topic of `analysis` in consumer group `group_id`.
pub fn repartition_topic(group_id: &str, analysis: &str) -> String {
    format!("{group_id}-{analysis}-repartition")
}

/// The input name, in an analysis's state, of one original topic partition.
pub fn source_input(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Where each analysis reads from.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Per analysis (in declaration order): its repartition topic, or `None` when it runs on
    /// the input topics (`keyed_by_group = true`).
    pub topics: Vec<Option<String>>,
    /// Partitions of every repartition topic: the inputs' partition count.
    pub partitions: usize,
    /// Every input topic partition, as [`source_input`] names them.
    pub sources: Vec<String>,
}

impl Routes {
    /// The analysis whose repartition topic is `topic`.
    pub fn analysis_of(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| t.as_deref() == Some(topic))
    }

    /// The repartition topics.
    pub fn repartition_topics(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().filter_map(Option::as_deref)
    }
}

/// Finds the inputs' partitions and creates the repartition topics that do not exist, with the
/// inputs' partition count; an existing one with another count is an error naming both.
pub async fn ensure(config: &Config, inputs: &[String]) -> Result<Routes, AnalyticsError> {
    let settings = &config.analytics;
    let topics: Vec<Option<String>> = settings
        .analyses
        .iter()
        .map(|a| (!a.keyed_by_group).then(|| repartition_topic(&settings.group_id, &a.name)))
        .collect();
    if topics.iter().all(Option::is_none) {
        return Ok(Routes {
            topics,
            ..Routes::default()
        });
    }
    let wanted: Vec<String> = inputs
        .iter()
        .chain(topics.iter().flatten())
        .cloned()
        .collect();
    let kafka_config = config.kafka.clone();
    let counts = tokio::task::spawn_blocking(move || partition_counts(&kafka_config, &wanted))
        .await
        .map_err(|e| AnalyticsError::Repartition {
            topic: "(metadata)".into(),
            message: e.to_string(),
        })?
        .map_err(|(topic, message)| AnalyticsError::Repartition { topic, message })?;
    let mut sources = Vec::new();
    let mut partitions = 0;
    for (topic, count) in inputs.iter().zip(&counts) {
        let Some(count) = count else {
            return Err(AnalyticsError::Repartition {
                topic: topic.clone(),
                message: "the input topic does not exist: create it (reflex topics) before the analytics role starts".into(),
            });
        };
        partitions = partitions.max(*count);
        sources.extend((0..*count).map(|p| source_input(topic, p)));
    }
    let mut missing = Vec::new();
    for (topic, count) in topics.iter().flatten().zip(&counts[inputs.len()..]) {
        match count {
            None => missing.push(topic.clone()),
            Some(n) if *n != partitions => {
                return Err(AnalyticsError::Repartition {
                    topic: topic.clone(),
                    message: format!(
                        "it has {n} partitions, the inputs {partitions}: delete it (the role fills it again from the inputs) or give the inputs {n}"
                    ),
                })
            }
            Some(_) => {}
        }
    }
    create(config, &missing, partitions).await?;
    Ok(Routes {
        topics,
        partitions: usize::try_from(partitions).unwrap_or(1),
        sources,
    })
}

/// Deletes the repartition topics' records below the offsets a checkpoint committed.
pub struct Purger {
    admin: AdminClient<DefaultClientContext>,
    topics: Vec<String>,
    /// Whether the last purge failed (warned once, until one succeeds).
    failing: bool,
}

impl Purger {
    /// A purger when `purge_repartition` is on and some analysis repartitions.
    pub fn new(config: &Config, routes: &Routes) -> Result<Option<Self>, KafkaSetupError> {
        let topics: Vec<String> = routes.repartition_topics().map(str::to_owned).collect();
        if !config.analytics.purge_repartition || topics.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            admin: admin(config)?,
            topics,
            failing: false,
        }))
    }

    /// Deletes the records below `committed`'s offsets on the repartition topics; a failure
    /// is a warning (the broker's retention then applies), never an error of the worker.
    pub async fn purge(&mut self, committed: &TopicPartitionList) {
        let mut below = TopicPartitionList::new();
        for e in committed.elements() {
            if let (true, Offset::Offset(offset)) =
                (self.topics.iter().any(|t| t == e.topic()), e.offset())
            {
                if offset > 0 {
                    let _ = below.add_partition_offset(
                        e.topic(),
                        e.partition(),
                        Offset::Offset(offset),
                    );
                }
            }
        }
        if below.count() == 0 {
            return;
        }
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let failed = match self.admin.delete_records(&below, &options).await {
            Ok(result) => result.elements().iter().find_map(|e| {
                e.error()
                    .err()
                    .map(|err| format!("{}/{}: {err}", e.topic(), e.partition()))
            }),
            Err(e) => Some(e.to_string()),
        };
        match failed {
            Some(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(%error, "repartition records below the committed offsets not deleted (grant DeleteRecords on the repartition topics, or set analytics.purge_repartition = false); the broker's retention applies");
            }
            Some(error) => tracing::debug!(%error, "repartition purge failed again"),
            None => {
                self.failing = false;
                tracing::debug!(partitions = below.count(), "repartition records purged");
            }
        }
    }
}

/// The partition count of each of `topics` (`None`: it does not exist); an error names the
/// topic asked about.
fn partition_counts(
    kafka_config: &crate::config::KafkaConfig,
    topics: &[String],
) -> Result<Vec<Option<i32>>, (String, String)> {
    let failed = |topic: &str, message: String| (topic.to_owned(), message);
    let client = kafka::reader(kafka_config).map_err(|e| failed("(metadata)", e.to_string()))?;
    let mut counts = Vec::new();
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(|e| failed(topic, e.to_string()))?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX))
            .filter(|n| *n > 0);
        counts.push(count);
    }
    Ok(counts)
}

fn admin(config: &Config) -> Result<AdminClient<DefaultClientContext>, KafkaSetupError> {
    kafka::with_properties(kafka::base_config(&config.kafka), &config.kafka)
        .create()
        .map_err(|source| KafkaSetupError::Client {
            what: "admin client",
            brokers: config.kafka.brokers.clone(),
            source,
        })
}

async fn create(config: &Config, topics: &[String], partitions: i32) -> Result<(), AnalyticsError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin = admin(config)?;
    let specs: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                partitions,
                TopicReplication::Fixed(config.topics.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(specs.iter(), &options)
        .await
        .map_err(|e| AnalyticsError::Repartition {
            topic: topics.join(", "),
            message: e.to_string(),
        })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, partitions, "repartition topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AnalyticsError::Repartition {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The record that forwards `event` (read at `origin`, event time `time_ms`) to `topic`, the
/// repartition topic of `analysis` with `partitions` partitions.
pub fn forward(
    analysis: &Analysis,
    topic: &str,
    partitions: usize,
    event: &CloudEvent,
    time_ms: i64,
    origin: &Origin,
) -> OutRecord {
    let key = analysis.partition_key(event).into_bytes();
    OutRecord {
        topic: topic.to_owned(),
        partition: Some(kafka::default_partition(&key, partitions).unwrap_or(0)),
        key: Some(key),
        value: Some(event.to_structured()),
        headers: vec![
            (
                "content-type".into(),
                b"application/cloudevents+json".to_vec(),
            ),
            (headers::TOPIC.into(), origin.topic.clone().into_bytes()),
            (
                headers::PARTITION.into(),
                origin.partition.to_string().into_bytes(),
            ),
            (
                headers::OFFSET.into(),
                origin.offset.to_string().into_bytes(),
            ),
            (headers::EVENT_TIME.into(), time_ms.to_string().into_bytes()),
        ],
    }
}

/// A forwarded record read back: the event, its event time and where it was first read.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    /// The event.
    pub event: CloudEvent,
    /// Its event time (ms).
    pub time_ms: i64,
    /// The original record's coordinates.
    pub origin: Origin,
}

/// Reads a record of a repartition topic; `None` for a record the role did not write.
pub fn read(value: Option<&[u8]>, record_headers: &[(&str, &[u8])]) -> Option<Forwarded> {
    let header = |name: &str| {
        record_headers
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let origin = Origin {
        topic: header(headers::TOPIC)?.to_owned(),
        partition: header(headers::PARTITION)?.parse().ok()?,
        offset: header(headers::OFFSET)?.parse().ok()?,
    };
    let time_ms = header(headers::EVENT_TIME)?.parse().ok()?;
    let (event, _) = CloudEvent::decode(value, &[]).ok()?;
    Some(Forwarded {
        event,
        time_ms,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::spec::parse_file;

    fn analyses() -> Vec<Analysis> {
        parse_file(
            std::path::Path::new("a.toml"),
            r#"
[per_customer]
types = ["order.placed"]
group_by = ["data.customer_id"]
window = { tumbling = "1h" }
condition = "count >= 1"
emit = "t"

[overall]
types = ["order.placed"]
window = { tumbling = "1h" }
condition = "count >= 1"
emit = "t"
"#,
        )
        .expect("valid")
    }

    fn order(customer: &str) -> CloudEvent {
        serde_json::from_value(serde_json::json!({
            "specversion": "1.0", "id": "o-1", "source": "/shop", "type": "order.placed",
            "data": {"customer_id": customer, "amount": 3}
        }))
        .expect("event")
    }

    #[test]
    fn a_forwarded_record_is_keyed_and_placed_by_its_group_and_reads_back() {
        let analyses = analyses();
        let per_customer = analyses.iter().find(|a| a.name == "per_customer");
        let per_customer = per_customer.expect("declared");
        let origin = Origin {
            topic: "events.orders".into(),
            partition: 3,
            offset: 42,
        };
        let event = order("c-7");
        let record = forward(
            per_customer,
            "g-per_customer-repartition",
            4,
            &event,
            1_000,
            &origin,
        );
        assert_eq!(record.key.as_deref(), Some(&b"c-7"[..]));
        assert_eq!(record.partition, kafka::default_partition(b"c-7", 4));
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let back = read(record.value.as_deref(), &headers).expect("reads back");
        assert_eq!(back.event, event);
        assert_eq!(back.time_ms, 1_000);
        assert_eq!(back.origin, origin);
        // Without the headers it is not a forwarded record.
        assert_eq!(read(record.value.as_deref(), &headers[..1]), None);
    }

    #[test]
    fn an_analysis_without_grouping_sends_every_event_to_one_partition() {
        let analyses = analyses();
        let overall = analyses
            .iter()
            .find(|a| a.name == "overall")
            .expect("declared");
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        let placed: std::collections::BTreeSet<Option<i32>> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|c| forward(overall, "r", 8, &order(c), 0, &origin).partition)
            .collect();
        assert_eq!(placed.len(), 1, "{placed:?}");
        assert_eq!(
            repartition_topic("reflex-analytics", "overall"),
            "reflex-analytics-overall-repartition"
        );
    }
}
