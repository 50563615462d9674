//! The honest ceiling for an audited pipeline: a bare rdkafka program that consumes each event
//! and produces one audit-sized record for it, with the actions worker's consumer and producer
//! settings (reflex's `consumer_config` and `producer_config`: acks=all, idempotent, the same
//! compression), storing each input offset only once every record before it is acknowledged,
//! with as many records in flight as the actions role allows by default.
//!
//! usage: mirror BROKERS TOPIC OUT_TOPIC EXPECTED_RECORDS VALUE_BYTES SUMMARY_JSON
//! Writes {"records", "busy_seconds", "startup_cpu_seconds", "events_per_second"} to
//! SUMMARY_JSON, busy from the first record received to the last one acknowledged, and the CPU
//! the process used before the first record.

use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The actions role's default `roles.actions.max_in_flight`.
const MAX_IN_FLIGHT: usize = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, out_topic, expected, value_bytes, summary] = args.as_slice() else {
        anyhow::bail!(
            "usage: mirror BROKERS TOPIC OUT_TOPIC EXPECTED_RECORDS VALUE_BYTES SUMMARY_JSON"
        );
    };
    let expected: u64 = expected.parse()?;
    let value = vec![b'a'; value_bytes.parse()?];
    let kafka = reflex::config::KafkaConfig {
        brokers: brokers.clone(),
        client_id: "reflex-bench-mirror".into(),
        properties: Default::default(),
        consumer: Default::default(),
        producer: Default::default(),
        security: Default::default(),
        group: Default::default(),
        guarantee: Default::default(),
        transactions: Default::default(),
    };
    let group = format!("bench-mirror-{}", std::process::id());
    let consumer: StreamConsumer =
        reflex::kafka::consumer_config(&kafka, &group, reflex::kafka::Assignment::CoPartitioned)
            .create()?;
    let producer: FutureProducer = reflex::kafka::producer_config(&kafka).create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let mut partitions: reflex::ordering::Partitions<i32> = reflex::ordering::Partitions::new();
    let mut acks = FuturesUnordered::new();
    let (mut received, mut acknowledged) = (0u64, 0u64);
    let mut started = None;
    let mut startup_cpu = None;
    while acknowledged < expected {
        tokio::select! {
            Some(done) = acks.next(), if !acks.is_empty() => {
                let (partition, generation, offset, delivery): (i32, u64, i64, _) = done;
                match delivery {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => anyhow::bail!("record not acknowledged: {e}"),
                    Err(_) => anyhow::bail!("delivery cancelled"),
                }
                acknowledged += 1;
                if let Some(upto) = partitions.complete(&partition, generation, offset) {
                    consumer.store_offset(topic, partition, upto)?;
                }
            }
            message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()),
                if received < expected && acks.len() < MAX_IN_FLIGHT =>
            {
                let message = message??;
                if started.is_none() {
                    started = Some(Instant::now());
                    startup_cpu = reflex::summary::process_cpu();
                }
                received += 1;
                let (partition, offset) = (message.partition(), message.offset());
                let generation = partitions.start(partition, offset);
                let key = message.key().map(<[u8]>::to_vec);
                let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(out_topic).payload(&value);
                if let Some(key) = &key {
                    record = record.key(key);
                }
                let delivery = producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("record not handed to the producer: {e}"))?;
                acks.push(async move { (partition, generation, offset, delivery.await) });
            }
        }
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    consumer.commit_consumer_state(CommitMode::Sync)?;
    let report = serde_json::json!({
        "records": acknowledged,
        "busy_seconds": seconds,
        "startup_cpu_seconds": startup_cpu.map(|d: Duration| d.as_secs_f64()),
        "events_per_second": acknowledged as f64 / seconds.max(1e-9),
    });
    std::fs::write(summary, report.to_string())?;
    println!("{report}");
    Ok(())
}
