//! What a worker learns when it is assigned partitions: which keys have a record waiting in the
//! retry topic, so their later records do not overtake it.
//!
//! Partition `p` of the retry topic holds the retries of partition `p` of every event topic,
//! and the range assignors give both to the same member. The records between the group's
//! committed offset and the end of the retry partition are the ones still to run (or to run
//! again); their keys are parked in offset order, as the worker that sent them there had them.
//! An event with several copies there (a worker ran one and wrote the next round, then died
//! before its commit) runs from its last copy only.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::pipeline::{Admitted, Processor};
use super::rebalance::RebalanceContext;
use super::scheduler::{park_key, ParkKey};
use crate::kafka::{self, ReadError, TopicReader};

/// A record waiting in the retry topic: its key, its event id, and where it is.
pub(super) struct Waiting {
    pub key: ParkKey,
    pub id: String,
    pub partition: i32,
    pub offset: i64,
}

/// Keys with a record waiting in `partitions` of the retry topic, with those records' event
/// ids, in offset order.
///
/// The worker's own consumer asks for the committed offsets and the partitions' ends; a reader
/// (made by `reader`) reads the records only when some partition has any past its committed
/// offset. Records of the assigned event partitions wait for this, so the common case (nothing
/// waiting) costs a round trip for the committed offsets and one per partition for its ends,
/// on a connection already open, not a new client.
pub(super) fn waiting_in_retry(
    consumer: &StreamConsumer<RebalanceContext>,
    reader: impl FnOnce() -> Result<crate::kafka::Reader, ReadError>,
    retry_topic: &str,
    partitions: &[i32],
    processor: &Processor,
) -> Result<Vec<Waiting>, ReadError> {
    let started = Instant::now();
    let read_err = |source| ReadError::Read {
        topic: retry_topic.to_owned(),
        source,
    };
    let mut asked = TopicPartitionList::new();
    for &p in partitions {
        asked.add_partition(retry_topic, p);
    }
    let committed = consumer
        .committed_offsets(asked, Duration::from_secs(10))
        .map_err(read_err)?;
    let starts: HashMap<i32, i64> = committed
        .elements()
        .iter()
        .map(|e| {
            let from = match e.offset() {
                Offset::Offset(o) => o,
                // Nothing committed yet: every record kept is still to run.
                _ => -1,
            };
            (e.partition(), from)
        })
        .collect();
    let mut pending = false;
    for (&partition, &from) in &starts {
        let (low, high) = consumer
            .fetch_watermarks(retry_topic, partition, Duration::from_secs(10))
            .map_err(read_err)?;
        pending |= from.max(low) < high;
    }
    let mut waiting = Vec::new();
    let mut records = 0u64;
    if !pending {
        tracing::info!(
            topic = retry_topic,
            partitions = ?partitions,
            records,
            waiting = 0,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "no keys waiting in the retry partitions assigned"
        );
        return Ok(waiting);
    }
    let reader = reader()?;
    let mut reader = TopicReader::open_partitions(&reader, retry_topic, &starts)?;
    while let Some(message) = reader.next_record()? {
        records += 1;
        let headers = kafka::headers_of(&message);
        let input = kafka::input_of(&message, &headers);
        let (Some(key), Admitted::Event(admission)) = (input.key, processor.admit(&input)) else {
            continue;
        };
        waiting.push(Waiting {
            key: park_key(&input, key),
            id: admission.event_id().to_owned(),
            partition: input.partition,
            offset: input.offset,
        });
    }
    tracing::info!(
        topic = retry_topic,
        partitions = ?partitions,
        records,
        waiting = waiting.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "read the keys waiting in the retry partitions assigned"
    );
    Ok(waiting)
}
