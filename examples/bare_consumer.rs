//! The ceiling for the benchmarks: a bare consumer with the actions worker's consumer settings
//! (reflex's `consumer_config`) that reads a topic to its end and discards the payloads.
//!
//! usage: bare_consumer BROKERS TOPIC EXPECTED_RECORDS
//! Prints one JSON line: {"records": N, "bytes": B, "seconds": S, "startup_cpu_seconds": C,
//! "events_per_second": R}, S from the first record received, C the CPU used before it.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(brokers), Some(topic), Some(expected)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: bare_consumer BROKERS TOPIC EXPECTED_RECORDS");
    };
    let expected: u64 = expected.parse()?;
    let kafka = reflex::config::KafkaConfig {
        brokers,
        client_id: "reflex-bench".into(),
        properties: Default::default(),
        consumer: Default::default(),
        producer: Default::default(),
        security: Default::default(),
        group: Default::default(),
        guarantee: Default::default(),
        transactions: Default::default(),
    };
    let group = format!("bench-bare-{}", std::process::id());
    let consumer: StreamConsumer =
        reflex::kafka::consumer_config(&kafka, &group, reflex::kafka::Assignment::CoPartitioned)
            .create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut started = None;
    let mut startup_cpu = None;
    while count < expected {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        if started.is_none() {
            started = Some(Instant::now());
            startup_cpu = reflex::summary::process_cpu();
        }
        bytes += message.payload().map_or(0, |p| p.len() as u64);
        count += 1;
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "records": count,
            "bytes": bytes,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "startup_cpu_seconds": startup_cpu.map(|d: Duration| d.as_secs_f64()),
            "events_per_second": (count as f64 / seconds.max(1e-9)).round(),
        })
    );
    Ok(())
}
