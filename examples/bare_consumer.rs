//! The ceiling for the benchmarks: a bare consumer with the actions worker's consumer settings
//! (reflex's `consumer_config`) that reads a topic to its end and discards the payloads.
//!
//! usage: bare_consumer BROKERS TOPIC EXPECTED_RECORDS
//! Prints one JSON line: {"records": N, "seconds": S, "events_per_second": R}.

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
    while count < expected {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        started.get_or_insert_with(Instant::now);
        bytes += message.payload().map_or(0, |p| p.len() as u64);
        count += 1;
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    println!(
        "{{\"records\": {count}, \"bytes\": {bytes}, \"seconds\": {seconds:.3}, \"events_per_second\": {:.0}}}",
        count as f64 / seconds.max(1e-9)
    );
    Ok(())
}
