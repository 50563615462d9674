//! The analytics role's checkpoints: each analysis's state per task in the compacted changelog
//! topic, with the input offsets it reflects, written before the input offsets are committed and
//! restored when a task starts.
//!
//! A state is one record keyed `<analysis>/<p>` while it fits in [`PART_BYTES`]. A larger one
//! (a million open groups is over 100 MB of JSON) is written in parts keyed
//! `<analysis>/<p>/<generation>/<n>`, a fresh generation each time, and the record at
//! `<analysis>/<p>` is written only once every part is acknowledged: it names the generation and
//! the number of parts. A worker stopped half-way leaves the previous head, whose parts are
//! untouched, so a restore never sees half a state. Parts a newer checkpoint replaced are
//! deleted (tombstones) at the next checkpoint, so compaction removes them.

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

/// The largest changelog record value written; a larger state is written in parts. Half the
/// producer's default `message.max.bytes`, so a changelog topic made by hand with the broker's
/// default record size limit takes it too.
pub(super) const PART_BYTES: usize = 512 * 1024;

/// A changelog record: the state of one analysis in one task, with a fingerprint of the
/// analysis's declaration (a changed declaration starts from an empty state).
#[derive(serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    spec: String,
    state: Box<serde_json::value::RawValue>,
}

/// The record at `<analysis>/<p>` when the state is written in parts: the [`Checkpoint`]'s
/// JSON, cut into `parts` records keyed `<analysis>/<p>/<generation>/<n>`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    generation: String,
    parts: usize,
}

/// The key of part `n` of a state written in generation `generation`.
fn part_key(head_key: &str, generation: &str, n: usize) -> String {
    format!("{head_key}/{generation}/{n}")
}

/// The records a state of `value` bytes is written as: `(key, value)`, the head last.
fn records_for(head_key: &str, value: Vec<u8>, generation: &str) -> Vec<(String, Vec<u8>)> {
    if value.len() <= PART_BYTES {
        return vec![(head_key.to_owned(), value)];
    }
    let mut out: Vec<(String, Vec<u8>)> = value
        .chunks(PART_BYTES)
        .enumerate()
        .map(|(n, chunk)| (part_key(head_key, generation, n), chunk.to_vec()))
        .collect();
    let head = Head {
        generation: generation.to_owned(),
        parts: out.len(),
    };
    out.push((
        head_key.to_owned(),
        serde_json::to_vec(&head).unwrap_or_default(),
    ));
    out
}

/// The state stored under `head_key` in `found` (the changelog's latest value per key), put
/// back together from its parts when it was written in parts; the error says what is missing.
/// Also returns the keys of parts that are not the head's (replaced, to be deleted).
fn assemble(
    head_key: &str,
    found: &BTreeMap<String, Vec<u8>>,
) -> (Option<Result<Vec<u8>, String>>, Vec<String>) {
    let prefix = format!("{head_key}/");
    let mut stale: Vec<String> = found
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    let Some(value) = found.get(head_key) else {
        return (None, stale);
    };
    let Ok(head) = serde_json::from_slice::<Head>(value) else {
        return (Some(Ok(value.clone())), stale);
    };
    let keys: Vec<String> = (0..head.parts)
        .map(|n| part_key(head_key, &head.generation, n))
        .collect();
    stale.retain(|k| !keys.contains(k));
    let mut whole = Vec::new();
    for key in &keys {
        match found.get(key) {
            Some(part) => whole.extend_from_slice(part),
            None => {
                return (
                    Some(Err(format!(
                        "part {key} of {} is missing from the changelog",
                        head.parts
                    ))),
                    stale,
                )
            }
        }
    }
    (Some(Ok(whole)), stale)
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

/// Creates the changelog topic, compacted, if it does not exist; `true` when it created it.
pub async fn ensure_changelog(config: &Config) -> Result<bool, AnalyticsError> {
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
    let mut created = false;
    for result in results {
        match result {
            Ok(_) => created = true,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(AnalyticsError::Changelog {
                    topic: topic.clone(),
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(created)
}

impl Worker<'_> {
    /// The tasks of partitions `ps`, each restored from its latest checkpoint: one read of the
    /// changelog for them all.
    pub(super) async fn restore(&self, ps: &[i32]) -> Result<Vec<(i32, Task)>, AnalyticsError> {
        let settings = &self.config.analytics;
        let wanted: BTreeSet<String> = ps
            .iter()
            .flat_map(|&p| {
                settings
                    .analyses
                    .iter()
                    .map(move |a| changelog_key(&a.name, p))
            })
            .collect();
        let kafka = self.config.kafka.clone();
        let topic = settings.changelog_topic.clone();
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
        Ok(ps.iter().map(|&p| (p, self.restored(p, &found))).collect())
    }

    /// The task of partition `p` from `found`, the changelog's latest records of its keys.
    fn restored(&self, p: i32, found: &BTreeMap<String, Vec<u8>>) -> Task {
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
        let mut stale = BTreeSet::new();
        let mut parts = vec![Vec::new(); settings.analyses.len()];
        for (key, &i) in &keys {
            let (state, replaced) = assemble(key, found);
            stale.extend(replaced);
            let Some(bytes) = state else { continue };
            if let Ok(head) = serde_json::from_slice::<Head>(&found[key]) {
                parts[i] = (0..head.parts)
                    .map(|n| part_key(key, &head.generation, n))
                    .collect();
            }
            let analysis = &settings.analyses[i];
            let restored = bytes
                .and_then(|bytes| {
                    serde_json::from_slice::<Checkpoint>(&bytes).map_err(|e| e.to_string())
                })
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
        Task {
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
            stale,
            parts,
        }
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
            // Parts replaced before this checkpoint; this one's replaced parts wait for the next,
            // once the heads that replace them are acknowledged.
            let stale = std::mem::take(&mut task.stale);
            for (i, analysis) in settings.analyses.iter().enumerate() {
                let state = match task.engine.snapshot(i) {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::error!(analysis = %analysis.name, partition = p, error = %e, "state cannot be serialised; not checkpointed");
                        continue;
                    }
                };
                // {"spec": <fingerprint>, "state": <state>}, the state's JSON copied as it is.
                let spec = serde_json::Value::String(fingerprint(analysis)).to_string();
                let mut value = Vec::with_capacity(state.len() + spec.len() + 20);
                value.extend_from_slice(b"{\"spec\":");
                value.extend_from_slice(spec.as_bytes());
                value.extend_from_slice(b",\"state\":");
                value.extend_from_slice(&state);
                value.push(b'}');
                if self.routes.topics.get(i).is_some_and(Option::is_none) {
                    for (topic, offset) in task.engine.state(i).offsets() {
                        let entry = next.entry(topic.to_owned()).or_insert(offset);
                        *entry = (*entry).min(offset);
                    }
                }
                bytes += value.len() as u64;
                let head_key = changelog_key(&analysis.name, *p);
                let generation = uuid::Uuid::new_v4().simple().to_string();
                let mut written = records_for(&head_key, value, &generation);
                let head = written.pop();
                // The parts first, acknowledged, then the head that names them.
                let mut part_deliveries = Vec::new();
                for (key, value) in written.iter().cloned() {
                    part_deliveries.push(
                        send_changelog(&self.producer, &settings.changelog_topic, key, Some(value))
                            .await?,
                    );
                }
                for delivery in part_deliveries {
                    kafka::delivered(delivery)
                        .await
                        .map_err(|source| AnalyticsError::Publish {
                            topic: settings.changelog_topic.clone(),
                            source,
                        })?;
                }
                records += written.len() as u64 + 1;
                if let Some((key, value)) = head {
                    deliveries.push(
                        send_changelog(&self.producer, &settings.changelog_topic, key, Some(value))
                            .await?,
                    );
                }
                let replaced = std::mem::replace(
                    &mut task.parts[i],
                    written.into_iter().map(|(key, _)| key).collect(),
                );
                task.stale.extend(replaced);
            }
            // Parts replaced by an earlier checkpoint, whose heads are acknowledged by now.
            for key in stale {
                deliveries.push(
                    send_changelog(&self.producer, &settings.changelog_topic, key, None).await?,
                );
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
            match consumer.commit(&offsets, CommitMode::Sync) {
                Ok(()) => {
                    if let Some(purger) = &mut self.purger {
                        purger.purge(&offsets).await;
                    }
                }
                // The states are written: a later commit, or the replay, covers it.
                Err(e) => {
                    tracing::warn!(error = %e, "commit after checkpoint failed; the input since the previous commit will be read again")
                }
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

/// Sends one changelog record (`None`: a tombstone).
async fn send_changelog(
    producer: &kafka::Producer,
    topic: &str,
    key: String,
    value: Option<Vec<u8>>,
) -> Result<rdkafka::producer::DeliveryFuture, AnalyticsError> {
    let record = OutRecord {
        topic: topic.to_owned(),
        partition: None,
        key: Some(key.into_bytes()),
        value,
        headers: Vec::new(),
    };
    kafka::send(producer, &record)
        .await
        .map_err(|source| AnalyticsError::Publish {
            topic: record.topic.clone(),
            source,
        })
}

/// The latest value of each of `keys` in the changelog topic, and of every part written under
/// them (`<key>/...`).
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
        let wanted = keys.contains(key)
            || key
                .rsplitn(3, '/')
                .nth(2)
                .is_some_and(|head| keys.contains(head));
        if wanted {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(records: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
        records.iter().cloned().collect()
    }

    #[test]
    fn a_small_state_is_one_record() {
        let records = records_for("a/0", b"{}".to_vec(), "g1");
        assert_eq!(records, vec![("a/0".to_owned(), b"{}".to_vec())]);
        let (state, stale) = assemble("a/0", &stored(&records));
        assert_eq!(state, Some(Ok(b"{}".to_vec())));
        assert!(stale.is_empty());
    }

    #[test]
    fn a_large_state_is_written_in_parts_with_the_head_last_and_reassembled() {
        let value: Vec<u8> = (0..PART_BYTES * 2 + 10).map(|n| (n % 251) as u8).collect();
        let records = records_for("a/3", value.clone(), "g1");
        assert_eq!(records.len(), 4, "three parts and the head");
        assert_eq!(records.last().map(|r| r.0.as_str()), Some("a/3"));
        assert!(records[..3].iter().all(|(_, v)| v.len() <= PART_BYTES));
        let (state, stale) = assemble("a/3", &stored(&records));
        assert_eq!(state, Some(Ok(value)));
        assert!(stale.is_empty());
    }

    #[test]
    fn parts_of_a_replaced_generation_are_stale_and_a_missing_part_is_an_error() {
        let old = records_for("a/0", vec![1; PART_BYTES * 3], "old");
        let new = records_for("a/0", vec![2; PART_BYTES + 1], "new");
        // The changelog after the new checkpoint: old parts still there, the head replaced.
        let mut found = stored(&old);
        found.extend(stored(&new));
        let (state, stale) = assemble("a/0", &found);
        assert_eq!(state, Some(Ok(vec![2; PART_BYTES + 1])));
        assert_eq!(
            stale,
            vec![
                "a/0/old/0".to_owned(),
                "a/0/old/1".to_owned(),
                "a/0/old/2".to_owned()
            ]
        );
        // A worker stopped before the new head was written: the old head and its parts hold.
        let mut half = stored(&old);
        half.insert(new[0].0.clone(), new[0].1.clone());
        let (state, stale) = assemble("a/0", &half);
        assert_eq!(state, Some(Ok(vec![1; PART_BYTES * 3])));
        assert_eq!(stale, vec![new[0].0.clone()]);
        // A part missing under its head is an error naming it.
        let mut broken = stored(&new);
        broken.remove("a/0/new/1");
        let (state, _) = assemble("a/0", &broken);
        assert!(matches!(state, Some(Err(why)) if why.contains("a/0/new/1")));
    }
}
