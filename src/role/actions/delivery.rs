//! Delivery of a record's output records: all are sent, then every acknowledgement is awaited.

use super::WorkerError;
use crate::ingest::{Input, OutRecord};
use crate::kafka;

/// Publishes a record's output records and waits until every one is acknowledged.
pub(super) async fn deliver(
    producer: &crate::kafka::Producer,
    input: &Input<'_>,
    records: &[OutRecord],
) -> Result<(), WorkerError> {
    let coordinates = || format!("{}/{}/{}", input.topic, input.partition, input.offset);
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        let delivery =
            kafka::send(producer, record)
                .await
                .map_err(|source| WorkerError::Delivery {
                    topic: record.topic.clone(),
                    input: coordinates(),
                    source,
                })?;
        deliveries.push((&record.topic, delivery));
    }
    for (topic, delivery) in deliveries {
        kafka::delivered(delivery)
            .await
            .map_err(|source| WorkerError::Delivery {
                topic: topic.clone(),
                input: coordinates(),
                source,
            })?;
    }
    Ok(())
}
