//! Load and measurement helpers for `scripts/bench.py` that Python would be too slow for.
//!
//! ```text
//! bench_load paced BROKERS TOPIC PAYLOADS_JSONL RATE SECONDS [LINGER_MS]
//!     Produces the payload lines (JSON CloudEvents) round-robin at RATE events/s for SECONDS,
//!     each with a fresh `id` and `time` = the moment it is handed to the producer (ms). The
//!     producer lingers LINGER_MS (5, librdkafka's default) and knows the topic's metadata
//!     before the first event, so the latency measured is the worker's and a provider's usual
//!     batching, not the load producer's start-up.
//! bench_load topic BROKERS TOPIC PARTITIONS [NAME=VALUE ...]
//!     Creates TOPIC with PARTITIONS partitions and the given topic configs (e.g.
//!     message.timestamp.type=LogAppendTime), unless it exists.
//! bench_load keyed BROKERS TOPIC PAYLOADS_JSONL COUNT KEYS
//!     Produces COUNT records as fast as the broker takes them: the payload lines round-robin,
//!     each with a fresh `id`, keyed by one of KEYS keys (record n has key n mod KEYS, so KEYS = 1
//!     is a topic of one hot key).
//! bench_load settled BROKERS TOPIC AVSC SCHEMA_ID COUNT avro|json
//!     COUNT `payment.settled` events with the same data either as binary-mode CloudEvents whose
//!     value is Avro in the Confluent wire format (schema SCHEMA_ID), or as structured JSON
//!     CloudEvents whose data is what reflex decodes from that Avro.
//! bench_load latency BROKERS AUDIT_TOPIC EXPECTED
//!     Reads the audit topic to its end and reports, per audit record, its Kafka timestamp (the
//!     worker's producer sets CreateTime when it sends the record) minus the event's `time`.
//! bench_load customers BROKERS TOPIC PAYLOADS_JSONL COUNT GROUPS
//!     COUNT copies of the first `order.placed` payload line, record n with a fresh `id`,
//!     `data.customer_id` = `c-{n mod GROUPS}` (also its key) and an event `time` 10 ms after
//!     the previous one's (100 events per second of event time, from one day ago), so the
//!     analytics role's windows close as the stream moves on.
//! bench_load appends BROKERS TOPIC EXPECTED
//!     Reads TOPIC from its start until EXPECTED records (or 20 s without one) and prints one line
//!     per record (tab-separated): partition, offset, Kafka timestamp (ms); then the JSON line
//!     with the count. With `message.timestamp.type=LogAppendTime`, when the broker appended it.
//! bench_load audit BROKERS AUDIT_TOPIC EXPECTED
//!     Reads the audit topic until 3 s without a record once EXPECTED have come (20 s before),
//!     and prints one line per audit record (tab-separated): its Kafka timestamp (ms), the input
//!     partition and offset it reports, the event's `time` (ms, or -), the worker and the audit
//!     record's `processed_at` (ms, or -); then the
//!     JSON line with the count.
//! ```
//! Each prints one JSON line with its figures.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use apache_avro::types::Value as AvroValue;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use reflex::schema::{avro, wire};
use serde_json::{json, Value};

fn producer(
    brokers: &str,
) -> anyhow::Result<ThreadedProducer<rdkafka::producer::DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.size", "262144")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

/// Sends one record, waiting while the local queue is full.
fn send(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> anyhow::Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The payload lines: JSON objects (CloudEvents), or lines sent as they are (the mix has
/// undecodable events on purpose).
fn payload_lines(payloads: &str) -> anyhow::Result<Vec<Result<Value, String>>> {
    let text = std::fs::read_to_string(payloads).with_context(|| payloads.to_owned())?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| l.to_owned())
        })
        .collect())
}

fn keyed(brokers: &str, topic: &str, payloads: &str, count: u64, keys: u64) -> anyhow::Result<()> {
    let events = payload_lines(payloads)?;
    if events.is_empty() || keys == 0 {
        bail!("no payloads, or no keys");
    }
    let producer = producer(brokers)?;
    let started = Instant::now();
    for n in 0..count {
        let value = match &events[(n as usize) % events.len()] {
            Ok(event) => {
                let mut event = event.clone();
                if let Some(obj) = event.as_object_mut() {
                    obj.insert("id".into(), json!(format!("bench-{n}")));
                }
                serde_json::to_vec(&event)?
            }
            Err(raw) => raw.as_bytes().to_vec(),
        };
        let key = format!("key-{}", n % keys);
        send(
            &producer,
            BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(value.as_slice()),
        )?;
    }
    producer.flush(Duration::from_secs(60))?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"records": count, "keys": keys, "seconds": elapsed, "events_per_second": count as f64 / elapsed})
    );
    Ok(())
}

fn paced(
    brokers: &str,
    topic: &str,
    payloads: &str,
    rate: f64,
    seconds: f64,
    linger_ms: u32,
) -> anyhow::Result<()> {
    let events = payload_lines(payloads)?;
    if events.is_empty() || rate <= 0.0 {
        bail!("no payloads, or a rate of zero");
    }
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "1")
        // 5 by default: librdkafka's default (and the Java client's since Kafka 4.0), as an
        // event provider would run it. Without lingering (0), every record went to the broker
        // in a request of its own: at 5 000 events/s that took more than one of this machine's
        // two cores from the broker, and the latency measured was the broker's queue.
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let started = Instant::now();
    let total = (rate * seconds) as u64;
    let mut sent = 0u64;
    while sent < total {
        // Catch up to where the schedule says we should be, then sleep a tick.
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        while sent < due {
            let value = match &events[(sent as usize) % events.len()] {
                Ok(event) => {
                    let mut event = event.clone();
                    if let Some(obj) = event.as_object_mut() {
                        obj.insert("id".into(), json!(format!("paced-{sent}")));
                        obj.insert("time".into(), json!(now_rfc3339()));
                    }
                    serde_json::to_vec(&event)?
                }
                Err(raw) => raw.as_bytes().to_vec(),
            };
            let key = format!("paced-{sent}");
            send(
                &producer,
                BaseRecord::to(topic)
                    .key(key.as_bytes())
                    .payload(value.as_slice()),
            )?;
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = started.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(30))?;
    println!(
        "{}",
        json!({"records": sent, "seconds": elapsed, "events_per_second": sent as f64 / elapsed})
    );
    Ok(())
}

fn settled(
    brokers: &str,
    topic: &str,
    avsc: &str,
    id: u32,
    count: u64,
    format: &str,
) -> anyhow::Result<()> {
    let schema = avro::parse(&std::fs::read_to_string(avsc).with_context(|| avsc.to_owned())?)
        .map_err(|e| anyhow::anyhow!("{avsc}: {e}"))?;
    let producer = producer(brokers)?;
    let time = now_rfc3339();
    let settled_at = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    for n in 0..count {
        let currency = ["EUR", "USD", "GBP"][(n % 3) as usize];
        let datum = avro::encode(
            &schema,
            AvroValue::Record(vec![
                ("payment_id".into(), AvroValue::String(format!("pay-{n}"))),
                ("order_id".into(), AvroValue::String(format!("ord-{n}"))),
                ("amount".into(), AvroValue::Double(5.0 + (n % 400) as f64)),
                (
                    "currency".into(),
                    AvroValue::Enum((n % 3) as u32, currency.into()),
                ),
                ("settled_at".into(), AvroValue::TimestampMillis(settled_at)),
                (
                    "fee".into(),
                    if n % 3 == 0 {
                        AvroValue::Union(1, Box::new(AvroValue::Double(0.35)))
                    } else {
                        AvroValue::Union(0, Box::new(AvroValue::Null))
                    },
                ),
            ]),
        )?;
        let framed = wire::frame(id, &datum);
        let event_id = format!("settled-{n}");
        let key = format!("pay-{n}");
        match format {
            "avro" => {
                let headers = OwnedHeaders::new_with_capacity(6)
                    .insert(Header {
                        key: "ce_specversion",
                        value: Some("1.0"),
                    })
                    .insert(Header {
                        key: "ce_id",
                        value: Some(event_id.as_str()),
                    })
                    .insert(Header {
                        key: "ce_source",
                        value: Some("/payments/ledger"),
                    })
                    .insert(Header {
                        key: "ce_type",
                        value: Some("payment.settled"),
                    })
                    .insert(Header {
                        key: "ce_time",
                        value: Some(time.as_str()),
                    })
                    .insert(Header {
                        key: "content-type",
                        value: Some("application/avro"),
                    });
                send(
                    &producer,
                    BaseRecord::to(topic)
                        .key(key.as_bytes())
                        .payload(framed.as_slice())
                        .headers(headers),
                )?;
            }
            "json" => {
                let data = avro::decode(&schema, id, &datum).map_err(|e| anyhow::anyhow!("{e}"))?;
                let event = json!({"specversion": "1.0", "id": event_id, "source": "/payments/ledger",
                                   "type": "payment.settled", "time": time,
                                   "datacontenttype": "application/json", "data": data});
                let value = serde_json::to_vec(&event)?;
                send(
                    &producer,
                    BaseRecord::to(topic)
                        .key(key.as_bytes())
                        .payload(value.as_slice()),
                )?;
            }
            other => bail!("format {other:?} is neither avro nor json"),
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"records": count, "format": format, "seconds": elapsed})
    );
    Ok(())
}

fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    configs: &[String],
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut spec = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for config in configs {
        let (name, value) = config
            .split_once('=')
            .with_context(|| format!("topic config {config:?} is not NAME=VALUE"))?;
        spec = spec.set(name, value);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(admin.create_topics([&spec], &AdminOptions::new()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    println!(
        "{}",
        json!({"topic": topic, "partitions": partitions, "configs": configs})
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Events created in the first this many milliseconds of a paced run are left out of the
/// steady-state figures.
const WARM_UP_MS: i64 = 2000;

fn latency(brokers: &str, topic: &str, expected: u64) -> anyhow::Result<()> {
    let consumer = from_start(brokers, topic, "latency")?;
    let mut timed: Vec<(i64, f64)> = Vec::with_capacity(expected as usize);
    let (mut records, mut without_time) = (0u64, 0u64);
    let mut idle = Instant::now();
    while records < expected && idle.elapsed() < Duration::from_secs(15) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        idle = Instant::now();
        records += 1;
        let audit: Value = message
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or(Value::Null);
        let event_time = audit["event_time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        match (event_time, message.timestamp().to_millis()) {
            (Some(t), Some(ts)) => {
                timed.push((t.timestamp_millis(), (ts - t.timestamp_millis()) as f64))
            }
            _ => without_time += 1,
        }
    }
    // Steady state: without the events of the first WARM_UP_MS, which include the worker's
    // first fetches and its producer's first requests.
    let first = timed.iter().map(|(t, _)| *t).min().unwrap_or(0);
    let mut steady: Vec<f64> = timed
        .iter()
        .filter(|(t, _)| *t >= first + WARM_UP_MS)
        .map(|(_, l)| *l)
        .collect();
    let mut latencies: Vec<f64> = timed.iter().map(|(_, l)| *l).collect();
    latencies.sort_by(f64::total_cmp);
    steady.sort_by(f64::total_cmp);
    let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
    println!(
        "{}",
        json!({"records": records, "measured": latencies.len(), "without_time": without_time,
               "p50_ms": percentile(&latencies, 50.0), "p90_ms": percentile(&latencies, 90.0),
               "p99_ms": percentile(&latencies, 99.0), "max_ms": latencies.last().copied(),
               "mean_ms": mean, "warm_up_ms": WARM_UP_MS, "steady_measured": steady.len(),
               "steady_p50_ms": percentile(&steady, 50.0), "steady_p90_ms": percentile(&steady, 90.0),
               "steady_p99_ms": percentile(&steady, 99.0), "steady_max_ms": steady.last().copied()})
    );
    Ok(())
}

fn customers(
    brokers: &str,
    topic: &str,
    payloads: &str,
    count: u64,
    groups: u64,
) -> anyhow::Result<()> {
    let Some(order) = payload_lines(payloads)?
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "order.placed")
    else {
        bail!("no order.placed line in {payloads}");
    };
    if groups == 0 {
        bail!("no groups");
    }
    let producer = producer(brokers)?;
    let start = chrono::Utc::now() - chrono::Duration::days(1);
    let started = Instant::now();
    for n in 0..count {
        let customer = format!("c-{}", n % groups);
        let mut event = order.clone();
        event["id"] = json!(format!("customers-{n}"));
        event["time"] = json!((start + chrono::Duration::milliseconds(10 * n as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        event["data"]["customer_id"] = json!(customer);
        let value = serde_json::to_vec(&event)?;
        send(
            &producer,
            BaseRecord::to(topic)
                .key(customer.as_bytes())
                .payload(value.as_slice()),
        )?;
    }
    producer.flush(Duration::from_secs(60))?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"records": count, "groups": groups, "seconds": elapsed, "events_per_second": count as f64 / elapsed})
    );
    Ok(())
}

/// A consumer of `topic` from its start, in a group of its own named after `purpose`.
fn from_start(brokers: &str, topic: &str, purpose: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-{purpose}-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

fn audit(brokers: &str, topic: &str, expected: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let consumer = from_start(brokers, topic, "audit")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut records = 0u64;
    let mut idle = Instant::now();
    // Past EXPECTED, duplicates may still hide records not yet read: keep reading until the
    // topic has been quiet for 3 s.
    let quiet = |records: u64| Duration::from_secs(if records >= expected { 3 } else { 20 });
    while idle.elapsed() < quiet(records) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        idle = Instant::now();
        records += 1;
        let audit: Value = message
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or(Value::Null);
        let event_time = audit["event_time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(|| "-".to_owned(), |t| t.timestamp_millis().to_string());
        let processed_at = audit["processed_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(|| "-".to_owned(), |t| t.timestamp_millis().to_string());
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            message.timestamp().to_millis().unwrap_or(-1),
            audit["partition"].as_i64().unwrap_or(-1),
            audit["offset"].as_i64().unwrap_or(-1),
            event_time,
            audit["worker"].as_str().unwrap_or("-"),
            processed_at,
        )?;
    }
    writeln!(out, "{}", json!({"records": records, "expected": expected}))?;
    Ok(())
}

fn appends(brokers: &str, topic: &str, expected: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let consumer = from_start(brokers, topic, "appends")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut records = 0u64;
    let mut idle = Instant::now();
    while records < expected && idle.elapsed() < Duration::from_secs(20) {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        idle = Instant::now();
        records += 1;
        writeln!(
            out,
            "{}\t{}\t{}",
            message.partition(),
            message.offset(),
            message.timestamp().to_millis().unwrap_or(-1),
        )?;
    }
    writeln!(out, "{}", json!({"records": records, "expected": expected}))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    match arg(0) {
        "paced" if args.len() == 6 || args.len() == 7 => paced(
            arg(1),
            arg(2),
            arg(3),
            arg(4).parse()?,
            arg(5).parse()?,
            args.get(6).map_or(Ok(5), |l| l.parse())?,
        ),
        "settled" if args.len() == 7 => settled(
            arg(1),
            arg(2),
            arg(3),
            arg(4).parse()?,
            arg(5).parse()?,
            arg(6),
        ),
        "keyed" if args.len() == 6 => {
            keyed(arg(1), arg(2), arg(3), arg(4).parse()?, arg(5).parse()?)
        }
        "latency" if args.len() == 4 => latency(arg(1), arg(2), arg(3).parse()?),
        "audit" if args.len() == 4 => audit(arg(1), arg(2), arg(3).parse()?),
        "appends" if args.len() == 4 => appends(arg(1), arg(2), arg(3).parse()?),
        "topic" if args.len() >= 4 => create_topic(arg(1), arg(2), arg(3).parse()?, &args[4..]),
        "customers" if args.len() == 6 => {
            customers(arg(1), arg(2), arg(3), arg(4).parse()?, arg(5).parse()?)
        }
        _ => bail!("usage: see the module documentation of examples/bench_load.rs"),
    }
}
