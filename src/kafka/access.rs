//! What a worker may do on its topics, found without writing to them (`reflex check
//! --connect`): whether each configured topic exists and is visible to this principal, and
//! whether the worker may write to the topics it writes (audit, dead-letter, retry).
//!
//! A write is probed with a record the broker authorizes and then refuses, so nothing is
//! written: a record without key to a compacted topic (the audit topic), or a record whose
//! timestamp lies beyond the topic's `message.timestamp.after.max.ms` (one hour by default since
//! Kafka 4.0). The broker checks the principal's WRITE permission first, so
//! `TOPIC_AUTHORIZATION_FAILED` means the worker may not write, and the refusal means it may.
//! A topic where neither probe is safe (not compacted, and no timestamp bound or log-append
//! time) is reported as not probed rather than written to.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::config::{KafkaConfig, Topics};

/// How long the metadata request, each configuration lookup and each probe may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// One topic and what checking it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicCheck {
    /// The topic.
    pub topic: String,
    /// What the worker does with it: `read`, `write (audit)`, `write (dead letters)`…
    pub role: &'static str,
    /// What was found, or what is wrong and what to do.
    pub result: Result<String, String>,
}

/// How a write to a topic can be probed without writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Compacted: a record without key is refused.
    Keyless,
    /// A record this far in the future (ms since the epoch) is refused.
    Timestamp(i64),
}

/// Chooses the probe from the topic's configuration, or says why none is safe.
fn choose(
    cleanup_policy: Option<&str>,
    timestamp_type: Option<&str>,
    after_max_ms: Option<&str>,
    now_ms: i64,
) -> Result<Probe, &'static str> {
    if cleanup_policy.is_some_and(|p| p.split(',').any(|p| p.trim() == "compact")) {
        return Ok(Probe::Keyless);
    }
    if timestamp_type != Some("CreateTime") {
        return Err("the topic stamps records with the log-append time");
    }
    // Up to ten years ahead is a bound a probe can exceed without overflowing.
    let bound = after_max_ms
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|ms| (0..=10 * 365 * 24 * 3_600_000).contains(ms))
        .ok_or("message.timestamp.after.max.ms puts no bound on future timestamps")?;
    Ok(Probe::Timestamp(now_ms + bound + 24 * 3_600_000))
}

/// Checks every topic of `topics`, and `extra`: other topics reflex uses, each with what it does
/// there (`"write (emitted events)"`; a role containing "write" is probed for writing).
pub async fn check(
    kafka: &KafkaConfig,
    topics: &Topics,
    extra: &[(String, &'static str)],
) -> Vec<TopicCheck> {
    let mut wanted: Vec<(String, &'static str)> =
        topics.events.iter().map(|t| (t.clone(), "read")).collect();
    wanted.push((topics.audit.clone(), "write (audit)"));
    wanted.push((topics.dlq.clone(), "write (dead letters)"));
    wanted.push((topics.retry.clone(), "read, write (retries)"));
    wanted.extend(extra.iter().cloned());

    let visible = match visible_topics(kafka).await {
        Ok(visible) => visible,
        Err(cause) => {
            return wanted
                .into_iter()
                .map(|(topic, role)| TopicCheck {
                    topic,
                    role,
                    result: Err(format!("cannot read the cluster's metadata: {cause}")),
                })
                .collect()
        }
    };
    let mut out = Vec::with_capacity(wanted.len());
    for (topic, role) in wanted {
        let result = match visible.iter().find(|(name, _)| *name == topic) {
            None if topics.create_missing => Ok(
                "does not exist (or this principal may not describe it); workers create it at start-up (topics.create_missing)"
                    .to_owned(),
            ),
            None => Err(
                "does not exist, or this principal may not describe it: create it (`reflex topics`) or grant DESCRIBE"
                    .to_owned(),
            ),
            Some((_, Err(code))) => Err(format!("the brokers report {code} for it")),
            Some((_, Ok(partitions))) => {
                let exists = format!("{partitions} partition(s)");
                if role.contains("write") {
                    match probe_write(kafka, &topic).await {
                        Ok(note) => Ok(format!("{exists}; {note}")),
                        Err(why) => Err(format!("{exists}; {why}")),
                    }
                } else {
                    Ok(exists)
                }
            }
        };
        out.push(TopicCheck {
            topic,
            role,
            result,
        });
    }
    out
}

/// Topic name → partition count, or the error the brokers gave for it.
type Visible = Vec<(String, Result<usize, RDKafkaErrorCode>)>;

async fn visible_topics(kafka: &KafkaConfig) -> Result<Visible, String> {
    let config = super::with_properties(super::base_config(kafka), kafka);
    tokio::task::spawn_blocking(move || {
        let client: BaseProducer = config.create().map_err(|e| e.to_string())?;
        let metadata = client
            .client()
            .fetch_metadata(None, STEP_TIMEOUT)
            .map_err(|e| e.to_string())?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| {
                let state = match t.error() {
                    Some(code) => Err(RDKafkaErrorCode::from(code)),
                    None => Ok(t.partitions().len()),
                };
                (t.name().to_owned(), state)
            })
            .collect())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Whether this principal may write to `topic`, found with a record the broker refuses.
async fn probe_write(kafka: &KafkaConfig, topic: &str) -> Result<String, String> {
    let admin: AdminClient<DefaultClientContext> =
        super::with_properties(super::base_config(kafka), kafka)
            .create()
            .map_err(|e| format!("write not probed: {e}"))?;
    let options = AdminOptions::new().request_timeout(Some(Timeout::After(STEP_TIMEOUT)));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await;
    let resource = match described.as_deref() {
        Ok([Ok(resource)]) => resource,
        Ok([Err(code)]) => {
            return Ok(format!(
                "write not probed: its configuration is not readable ({code}; grant DESCRIBE_CONFIGS to check it)"
            ))
        }
        Ok(_) => return Ok("write not probed: no configuration returned".to_owned()),
        Err(e) => return Ok(format!("write not probed: {e}")),
    };
    let value = |name: &str| resource.get(name).and_then(|e| e.value.as_deref());
    let now_ms = chrono::Utc::now().timestamp_millis();
    let probe = match choose(
        value("cleanup.policy"),
        value("message.timestamp.type"),
        value("message.timestamp.after.max.ms"),
        now_ms,
    ) {
        Ok(probe) => probe,
        Err(why) => return Ok(format!("write not probed: {why}")),
    };
    let mut config = super::with_properties(super::base_config(kafka), kafka);
    config
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("retries", "0")
        .set("message.timeout.ms", "10000");
    let producer: FutureProducer = config
        .create()
        .map_err(|e| format!("write not probed: {e}"))?;
    let empty: &[u8] = &[];
    let record: FutureRecord<'_, [u8], [u8]> = match probe {
        Probe::Keyless => FutureRecord::to(topic).payload(empty),
        Probe::Timestamp(ts) => FutureRecord::to(topic)
            .key(&b"reflex-check-probe"[..])
            .payload(empty)
            .timestamp(ts),
    };
    let outcome = producer.send(record, Timeout::After(STEP_TIMEOUT)).await;
    let how = match probe {
        Probe::Keyless => "a record without key, which the compacted topic refuses",
        Probe::Timestamp(_) => {
            "a record dated beyond message.timestamp.after.max.ms, which the topic refuses"
        }
    };
    match outcome {
        Err((e, _)) => match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidTimestamp,
            ) => Ok(format!("write allowed (probed with {how})")),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Err(
                "this principal may not write to it (TOPIC_AUTHORIZATION_FAILED): grant WRITE on the topic"
                    .to_owned(),
            ),
            _ => Err(format!("a probe write failed: {e}")),
        },
        Ok(_) => Ok(format!(
            "write allowed (the probe, {how}, was accepted and written)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_never_writes_where_it_cannot_be_refused() {
        let now = 1_000_000;
        assert_eq!(
            choose(Some("compact"), Some("CreateTime"), Some("3600000"), now),
            Ok(Probe::Keyless)
        );
        assert_eq!(
            choose(Some("compact,delete"), Some("LogAppendTime"), None, now),
            Ok(Probe::Keyless)
        );
        assert_eq!(
            choose(Some("delete"), Some("CreateTime"), Some("3600000"), now),
            Ok(Probe::Timestamp(now + 3_600_000 + 86_400_000))
        );
        assert!(choose(Some("delete"), Some("LogAppendTime"), Some("3600000"), now).is_err());
        assert!(choose(
            Some("delete"),
            Some("CreateTime"),
            Some("9223372036854775807"),
            now
        )
        .is_err());
        assert!(choose(None, Some("CreateTime"), None, now).is_err());
    }
}
