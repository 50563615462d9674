//! The producer check of `/readyz`: a task that asks the brokers for one topic's metadata on
//! the worker's own producer every interval, so a producer that cannot reach Kafka, or a topic
//! the worker writes that does not exist (its producers never create one), turns the worker
//! unready (beside the outage the producer's connection failures open, see
//! [`crate::kafka::Outage`]).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::metadata::Metadata;
use rdkafka::producer::Producer as _;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use super::{Metrics, ProducerChecked};
use crate::kafka;

/// Longest one metadata request may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks `producer` every `interval` with a metadata request for `topic` (one the worker
/// writes) until `stop` is cancelled; `/readyz` reports on it from now on.
pub fn spawn(
    producer: kafka::Producer,
    topic: String,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    metrics.watch_producer();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let (producer, topic) = (producer.clone(), topic.clone());
            let answer = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), QUERY_TIMEOUT)
                    .map(|metadata| topic_problem(&metadata, &topic))
            })
            .await;
            let Ok(answer) = answer else {
                continue;
            };
            match answer {
                Ok(problem) => {
                    // The brokers answered: an outage is over even while no record flows.
                    metrics.outage().answered();
                    ProducerChecked {
                        error: problem.as_deref(),
                    }
                    .emit(&metrics);
                }
                Err(e) => ProducerChecked {
                    error: Some(&format!("the brokers did not answer the producer: {e}")),
                }
                .emit(&metrics),
            }
        }
    });
}

/// What is wrong with `topic` in the brokers' answer: missing, or another error of theirs.
fn topic_problem(metadata: &Metadata, topic: &str) -> Option<String> {
    let error = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(Some(RDKafkaErrorCode::UnknownTopicOrPartition), |t| {
            t.error().map(RDKafkaErrorCode::from)
        })?;
    Some(match error {
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => format!(
            "topic \"{topic}\" does not exist: create it (`reflex topics` creates the configured ones)"
        ),
        other => format!("the brokers answered the producer about topic \"{topic}\": {other}"),
    })
}
