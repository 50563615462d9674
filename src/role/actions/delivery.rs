//! Delivery of a record's output records in two halves: handing them to the producer, which
//! keeps their order within each partition (it is idempotent), and waiting for every
//! acknowledgement. A key's next record starts after the first half; the record's offset is
//! stored after the second.

use rdkafka::producer::DeliveryFuture;

use super::WorkerError;
use crate::ingest::{Input, OutRecord};
use crate::kafka;

/// A record's output records in the producer's hands, waiting for the brokers'
/// acknowledgements.
pub(super) struct Handed {
    /// The input record's topic/partition/offset, for the error that names it.
    input: String,
    deliveries: Vec<(String, DeliveryFuture)>,
}

impl Handed {
    /// How many output records wait for their acknowledgement.
    pub(super) fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// Waits until every output record is acknowledged.
    pub(super) async fn acknowledged(self) -> Result<(), WorkerError> {
        let Handed { input, deliveries } = self;
        for (topic, delivery) in deliveries {
            kafka::delivered(delivery)
                .await
                .map_err(|source| WorkerError::Delivery {
                    topic,
                    input: input.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Hands a record's output records to the producer, in order.
pub(super) async fn hand_over(
    producer: &crate::kafka::Producer,
    input: &Input<'_>,
    records: &[OutRecord],
) -> Result<Handed, WorkerError> {
    let coordinates = format!("{}/{}/{}", input.topic, input.partition, input.offset);
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        match kafka::send(producer, record).await {
            Ok(delivery) => deliveries.push((record.topic.clone(), delivery)),
            Err(source) => {
                return Err(WorkerError::Delivery {
                    topic: record.topic.clone(),
                    input: coordinates,
                    source,
                })
            }
        }
    }
    Ok(Handed {
        input: coordinates,
        deliveries,
    })
}
