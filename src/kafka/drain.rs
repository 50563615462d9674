//! Whether a consumer group has consumed its topics to their end: `reflex run --drain` stops
//! then.

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::Offset;

/// Whether the group has consumed every partition of `topics` to its end: assigned partitions by
/// this worker's position, the others by the group's committed offsets. A partition still held by
/// a member that died keeps this false until the group hands it over and it is consumed.
pub fn caught_up<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    probe: &super::Probe,
    topics: &[String],
) -> bool {
    let timeout = Duration::from_secs(5);
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    if assignment.count() == 0 {
        return false;
    }
    let mut all = rdkafka::TopicPartitionList::new();
    for topic in topics {
        let Ok(metadata) = probe.fetch_metadata(Some(topic), timeout) else {
            return false;
        };
        for t in metadata.topics() {
            for p in t.partitions() {
                all.add_partition(topic, p.id());
            }
        }
    }
    let positions = consumer.position().ok();
    let Ok(committed) = probe.committed_offsets(all.clone(), timeout) else {
        return false;
    };
    let offset_in = |list: &rdkafka::TopicPartitionList, topic: &str, partition: i32| {
        list.find_partition(topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
    };
    for elem in all.elements() {
        let (topic, partition) = (elem.topic(), elem.partition());
        let Ok((low, high)) = probe.fetch_watermarks(topic, partition, timeout) else {
            return false;
        };
        let assigned = assignment.find_partition(topic, partition).is_some();
        let at = assigned
            .then(|| {
                positions
                    .as_ref()
                    .and_then(|p| offset_in(p, topic, partition))
            })
            .flatten()
            .or_else(|| offset_in(&committed, topic, partition))
            .unwrap_or(low);
        tracing::debug!(topic, partition, assigned, at, high, "drain check");
        if at < high {
            return false;
        }
    }
    true
}
