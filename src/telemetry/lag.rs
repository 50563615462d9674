//! The lag probe: a task that asks the brokers for the watermarks of the assigned partitions
//! (and the group's committed offsets of those not consumed from yet) every interval, on a
//! client of its own that never joins the group, so a worker held up by slow records still
//! reports its lag growing.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{Metrics, TopicPartition};
use crate::config::KafkaConfig;
use crate::kafka::{self, KafkaSetupError};

/// Longest one broker query of the probe may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the probe for `group`'s partitions assigned to this worker; it stops with `stop`.
pub fn spawn(
    kafka_config: &KafkaConfig,
    group: &str,
    metrics: Arc<Metrics>,
    interval: Duration,
    stop: CancellationToken,
) -> Result<(), KafkaSetupError> {
    let probe = Arc::new(kafka::probe(kafka_config, group, metrics.outage())?);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let assigned = metrics.assigned();
            if assigned.is_empty() {
                continue;
            }
            let need_committed: Vec<TopicPartition> = {
                let mut v = Vec::new();
                metrics.update_partitions(|tp, s| {
                    if s.position.is_none() {
                        v.push(tp.clone());
                    }
                });
                v
            };
            let probe = Arc::clone(&probe);
            let answer =
                tokio::task::spawn_blocking(move || query(&probe, &assigned, &need_committed))
                    .await;
            let Ok((watermarks, committed)) = answer else {
                continue;
            };
            if !watermarks.is_empty() {
                // The brokers answered: an outage is over even while no record flows.
                metrics.outage().answered();
            }
            let now_ms = chrono::Utc::now().timestamp_millis();
            metrics.update_partitions(|tp, state| {
                if let Some((_, w)) = watermarks.iter().find(|(t, _)| t == tp) {
                    state.watermarks = Some(*w);
                }
                if let Some((_, c)) = committed.iter().find(|(t, _)| t == tp) {
                    state.committed = Some(*c);
                }
                match state.lag_records() {
                    Some(0) | None => state.behind_since_ms = None,
                    Some(_) => {
                        state.behind_since_ms.get_or_insert(now_ms);
                    }
                }
            });
        }
    });
    Ok(())
}

type Answers = (
    Vec<(TopicPartition, (i64, i64))>,
    Vec<(TopicPartition, i64)>,
);

/// Watermarks of `assigned`, committed offsets of `need_committed`; a partition whose query
/// fails keeps its last values.
fn query(
    probe: &kafka::Probe,
    assigned: &[TopicPartition],
    need_committed: &[TopicPartition],
) -> Answers {
    let mut watermarks = Vec::with_capacity(assigned.len());
    for (topic, partition) in assigned {
        match probe.fetch_watermarks(topic, *partition, QUERY_TIMEOUT) {
            Ok(w) => watermarks.push(((topic.clone(), *partition), w)),
            Err(e) => tracing::debug!(topic, partition, error = %e, "watermarks for the lag"),
        }
    }
    let mut committed = Vec::new();
    if !need_committed.is_empty() {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in need_committed {
            list.add_partition(topic, *partition);
        }
        match probe.committed_offsets(list, QUERY_TIMEOUT) {
            Ok(list) => {
                for e in list.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        committed.push(((e.topic().to_owned(), e.partition()), o));
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "committed offsets for the lag"),
        }
    }
    (watermarks, committed)
}
