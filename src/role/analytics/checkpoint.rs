//! The analytics role's checkpoints: each analysis's state per task in the compacted changelog
//! topic, with the input offsets it reflects, written before the input offsets are committed and
//! restored when a task starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::worker::{Task, Worker};
use super::{AnalyticsContext, AnalyticsError};
use crate::analytics::Engine;
use crate::config::Config;
use crate::ingest::OutRecord;
use crate::kafka::read::{reader, ReadError, Start, TopicReader};
use crate::kafka::{self, KafkaSetupError};
use crate::telemetry as metrics;

/// The changelog record key of an analysis's state in a task.
pub fn changelog_key(analysis: &str, partition: i32) -> String {
    format!("{analysis}/{partition}")
}

/// A changelog record: the state of one analysis in one task, with a fingerprint of the
/// analysis's declaration (a changed declaration starts from an empty state).
#[derive(serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    spec: String,
    state: Box<serde_json::value::RawValue>,
}

fn fingerprint(analysis: &crate::analytics::Analysis) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(format!("{:?}", analysis.kind).as_bytes())[..8])
        + &format!(
            "/{}/{:?}/{:?}/{}",
            analysis.types.join(","),
            analysis.group_by,
            analysis.filter,
            analysis.allowed_lateness
        )
        + if analysis.keyed_by_group {
            ""
        } else {
            "/repartitioned"
        }
}

/// Creates the changelog topic, compacted, if it does not exist.
pub(super) async fn ensure_changelog(config: &Config) -> Result<(), AnalyticsError> {
    let topic = &config.analytics.changelog_topic;
    let admin: AdminClient<DefaultClientContext> =
        kafka::with_properties(kafka::base_config(&config.kafka), &config.kafka)
            .create()
            .map_err(|source| KafkaSetupError::Client {
                what: "admin client",
                brokers: config.kafka.brokers.clone(),
                source,
            })?;
    let spec = NewTopic::new(
        topic,
        config.topics.partitions,
        TopicReplication::Fixed(config.topics.replication_factor),
    )
    .set("cleanup.policy", "compact")
    .set("max.message.bytes", "16777216");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin
            .create_topics([&spec], &options)
            .await
            .map_err(|e| AnalyticsError::Changelog {
                topic: topic.clone(),
                message: e.to_string(),
            })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(AnalyticsError::Changelog {
                    topic: topic.clone(),
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

impl Worker<'_> {
    pub(super) async fn restore(&self, p: i32) -> Result<Task, AnalyticsError> {
        let settings = &self.config.analytics;
        let mut engine = Engine::new(Arc::clone(&settings.analyses), settings.max_groups);
        for (i, route) in self.routes.topics.iter().enumerate() {
            let inputs = if route.is_some() {
                &self.routes.sources
            } else {
                &self.inputs
            };
            for input in inputs {
                engine.track_for(i, input);
            }
        }
        let keys: BTreeMap<String, usize> = settings
            .analyses
            .iter()
            .enumerate()
            .map(|(i, a)| (changelog_key(&a.name, p), i))
            .collect();
        let kafka = self.config.kafka.clone();
        let topic = settings.changelog_topic.clone();
        let wanted: BTreeSet<String> = keys.keys().cloned().collect();
        let found = tokio::task::spawn_blocking(move || read_changelog(&kafka, &topic, &wanted))
            .await
            .map_err(|e| AnalyticsError::Changelog {
                topic: settings.changelog_topic.clone(),
                message: e.to_string(),
            })?
            .map_err(|source| AnalyticsError::Restore {
                topic: settings.changelog_topic.clone(),
                source,
            })?;
        for (key, bytes) in found {
            let Some(&i) = keys.get(&key) else { continue };
            let analysis = &settings.analyses[i];
            let restored = serde_json::from_slice::<Checkpoint>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    if c.spec == fingerprint(analysis) {
                        engine
                            .restore(i, c.state.get().as_bytes())
                            .map_err(|e| e.to_string())
                    } else {
                        Err("the analysis's declaration changed since".into())
                    }
                });
            match restored {
                Ok(()) => {
                    tracing::info!(analysis = %analysis.name, partition = p, offsets = ?engine.state(i).offsets().collect::<Vec<_>>(), "state restored")
                }
                Err(why) => {
                    tracing::warn!(analysis = %analysis.name, partition = p, %why, "checkpoint not used; the analysis starts from an empty state")
                }
            }
        }
        // Idleness is this worker's observation: a restored input holds the watermark back
        // again until it has been silent here for idle_timeout (records that were merely not
        // read yet while the task moved must not be late).
        let mut none = Vec::new();
        for (i, route) in self.routes.topics.iter().enumerate() {
            let inputs = if route.is_some() {
                &self.routes.sources
            } else {
                &self.inputs
            };
            for input in inputs {
                engine.set_idle_for(i, input, false, &mut none);
            }
        }
        let now = Instant::now();
        Ok(Task {
            reported: (0..settings.analyses.len())
                .map(|i| (engine.state(i).late, engine.state(i).evicted))
                .collect(),
            engine,
            seen: self
                .inputs
                .iter()
                .map(|t| (t.clone(), (now, false)))
                .collect(),
            seen_sources: self
                .routes
                .topics
                .iter()
                .map(|route| match route {
                    Some(_) => self
                        .routes
                        .sources
                        .iter()
                        .map(|s| (s.clone(), (now, false)))
                        .collect(),
                    None => BTreeMap::new(),
                })
                .collect(),
            consumed: BTreeMap::new(),
            pending: Vec::new(),
            dirty: false,
        })
    }

    /// Checkpoints every task: findings acknowledged, states written and acknowledged, then
    /// the input offsets committed.
    pub(super) async fn checkpoint(
        &mut self,
        consumer: &StreamConsumer<AnalyticsContext>,
    ) -> Result<(), AnalyticsError> {
        if self
            .tasks
            .values()
            .all(|t| !t.dirty && t.pending.is_empty())
        {
            return Ok(());
        }
        let started = Instant::now();
        let settings = &self.config.analytics;
        let mut deliveries = Vec::new();
        let mut offsets = TopicPartitionList::new();
        let (mut records, mut bytes) = (0u64, 0u64);
        for (p, task) in &mut self.tasks {
            if !task.dirty && task.pending.is_empty() {
                continue;
            }
            task.dirty = false;
            for (topic, delivery) in task.pending.drain(..) {
                kafka::delivered(delivery)
                    .await
                    .map_err(|source| AnalyticsError::Publish { topic, source })?;
            }
            // What the task read, but no further than a state on the inputs reflects (the
            // forwarded records of that stretch are acknowledged above).
            let mut next: BTreeMap<String, i64> = task.consumed.clone();
            for (i, analysis) in settings.analyses.iter().enumerate() {
                let state = match task.engine.snapshot(i) {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::error!(analysis = %analysis.name, partition = p, error = %e, "state cannot be serialised; not checkpointed");
                        continue;
                    }
                };
                let value = format!(
                    "{{\"spec\":{},\"state\":{}}}",
                    serde_json::Value::String(fingerprint(analysis)),
                    String::from_utf8_lossy(&state)
                );
                if self.routes.topics.get(i).is_some_and(Option::is_none) {
                    for (topic, offset) in task.engine.state(i).offsets() {
                        let entry = next.entry(topic.to_owned()).or_insert(offset);
                        *entry = (*entry).min(offset);
                    }
                }
                bytes += value.len() as u64;
                records += 1;
                let record = OutRecord {
                    topic: settings.changelog_topic.clone(),
                    partition: None,
                    key: Some(changelog_key(&analysis.name, *p).into_bytes()),
                    value: Some(value.into_bytes()),
                    headers: Vec::new(),
                };
                let delivery = kafka::send(&self.producer, &record)
                    .await
                    .map_err(|source| AnalyticsError::Publish {
                        topic: record.topic.clone(),
                        source,
                    })?;
                deliveries.push(delivery);
            }
            for (topic, offset) in next {
                if offset > 0 {
                    // Only this task's partition, which is assigned while the task exists.
                    let _ = offsets.add_partition_offset(&topic, *p, Offset::Offset(offset));
                }
            }
        }
        for delivery in deliveries {
            kafka::delivered(delivery)
                .await
                .map_err(|source| AnalyticsError::Publish {
                    topic: settings.changelog_topic.clone(),
                    source,
                })?;
        }
        if offsets.count() > 0 {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                // The states are written: a later commit, or the replay, covers it.
                tracing::warn!(error = %e, "commit after checkpoint failed; the input since the previous commit will be read again");
            }
        }
        self.summary.checkpoints += 1;
        metrics::AnalyticsCheckpointed {
            records,
            bytes,
            took: started.elapsed(),
        }
        .emit(&self.metrics);
        Ok(())
    }
}

/// The latest value of each of `keys` in the changelog topic.
fn read_changelog(
    kafka: &crate::config::KafkaConfig,
    topic: &str,
    keys: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<u8>>, ReadError> {
    let consumer = reader(kafka)?;
    let mut found = BTreeMap::new();
    let mut records = TopicReader::open(&consumer, topic, Start::Beginning)?;
    while let Some(message) = records.next_record()? {
        let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        if keys.contains(key) {
            match message.payload() {
                Some(value) => {
                    found.insert(key.to_owned(), value.to_vec());
                }
                None => {
                    found.remove(key);
                }
            }
        }
    }
    Ok(found)
}
