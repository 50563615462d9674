//! `reflex produce`: publishes CloudEvents from JSON lines, validated against the schemas first.
//!
//! Each line is a structured CloudEvent. With validation (the default) a line that is not a
//! CloudEvent, has an unknown type or violates its schema is reported with its line number and
//! not sent. `--no-validate` sends every non-empty line as it is (used to publish bad input on
//! purpose). `--binary` sends decodable events in binary content mode (`ce_*` headers).

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::config::Config;
use crate::event::CloudEvent;
use crate::ingest::OutRecord;
use crate::kafka::{self, KafkaSetupError};

/// How to produce.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Destination topic.
    pub topic: String,
    /// Validate each event against its schema before sending.
    pub validate: bool,
    /// Send in binary content mode.
    pub binary: bool,
}

/// Why producing stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The producer could not be created.
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    /// The input could not be read.
    #[error("cannot read input: {0}")]
    Read(#[from] std::io::Error),
    /// The destination topic does not exist; reflex's producers never create one.
    #[error("topic \"{0}\" does not exist: create it first (`reflex topics` creates the configured ones)")]
    MissingTopic(String),
}

/// What was produced.
#[derive(Debug, Default)]
pub struct ProduceReport {
    /// Records acknowledged by the broker.
    pub produced: u64,
    /// Lines rejected by validation: (line number, reason).
    pub rejected: Vec<(usize, String)>,
    /// Records the broker did not acknowledge: (line number, error).
    pub failed: Vec<(usize, String)>,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for ProduceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "produced {} events, rejected {}, failed {} in {:.2}s ({:.0} events/s)",
            self.produced,
            self.rejected.len(),
            self.failed.len(),
            secs,
            self.produced as f64 / secs
        )
    }
}

/// Why a line is rejected before sending.
fn check(config: &Config, event: &CloudEvent) -> Result<(), String> {
    let data = event.data.clone().unwrap_or(serde_json::Value::Null);
    match config.schemas.validate(&event.ty, &data) {
        None => Err(format!(
            "unknown event type \"{}\": no schema in {}",
            event.ty,
            config.schema_dir.display()
        )),
        Some(v) if !v.is_empty() => Err(format!(
            "event {} of type \"{}\" violates its schema: {}",
            event.id,
            event.ty,
            crate::schema::summarize(&v)
        )),
        Some(_) => Ok(()),
    }
}

/// Turns one input line into a record, or the reason it is rejected.
fn to_record(config: &Config, options: &ProduceOptions, line: &str) -> Result<OutRecord, String> {
    let decoded = CloudEvent::decode(Some(line.as_bytes()), &[]);
    let event = match decoded {
        Ok((event, _)) => event,
        Err(e) if options.validate => return Err(format!("not a CloudEvent: {e}")),
        Err(_) => {
            return Ok(OutRecord {
                partition: None,
                topic: options.topic.clone(),
                key: None,
                value: Some(line.as_bytes().to_vec()),
                headers: vec![],
            })
        }
    };
    if options.validate {
        check(config, &event)?;
    }
    let key = event
        .extensions
        .get("partitionkey")
        .and_then(|v| v.as_str())
        .or(event.subject.as_deref())
        .unwrap_or(&event.id)
        .as_bytes()
        .to_vec();
    if options.binary {
        let (headers, value) = event.to_binary();
        Ok(OutRecord {
            partition: None,
            topic: options.topic.clone(),
            key: Some(key),
            value,
            headers,
        })
    } else {
        Ok(OutRecord {
            partition: None,
            topic: options.topic.clone(),
            key: Some(key),
            value: Some(line.trim().as_bytes().to_vec()),
            headers: vec![(
                "content-type".into(),
                b"application/cloudevents+json".to_vec(),
            )],
        })
    }
}

/// Whether the brokers answer that `topic` does not exist. Any other answer, or none, leaves
/// the records to report their own errors.
async fn topic_missing(producer: &kafka::Producer, topic: &str) -> bool {
    use rdkafka::producer::Producer as _;
    use rdkafka::types::RDKafkaRespErr;
    let (producer, topic) = (producer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), kafka::CONNECT_TIMEOUT)
            .is_ok_and(|m| {
                m.topics().iter().any(|t| {
                    t.name() == topic
                        && t.error()
                            == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                })
            })
    })
    .await
    .unwrap_or(false)
}

/// Reads JSON lines from `input` and publishes them.
pub async fn produce(
    config: &Config,
    options: &ProduceOptions,
    input: impl BufRead,
) -> Result<ProduceReport, ProduceError> {
    let producer = kafka::producer(&config.kafka, kafka::Outage::new())?;
    if topic_missing(&producer, &options.topic).await {
        return Err(ProduceError::MissingTopic(options.topic.clone()));
    }
    let started = Instant::now();
    let mut report = ProduceReport::default();
    let mut in_flight = FuturesUnordered::new();
    let tty = std::io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut sent = 0u64;
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let record = match to_record(config, options, &line) {
            Ok(r) => r,
            Err(reason) => {
                report.rejected.push((number, reason));
                continue;
            }
        };
        match kafka::send(&producer, &record).await {
            Ok(delivery) => {
                sent += 1;
                in_flight.push(async move { (number, kafka::delivered(delivery).await) });
            }
            Err(e) => report.failed.push((number, e.to_string())),
        }
        while in_flight.len() >= 10_000 {
            if let Some(done) = in_flight.next().await {
                tally(&mut report, done);
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(tty, sent, started.elapsed());
        }
    }
    while let Some(done) = in_flight.next().await {
        tally(&mut report, done);
    }
    if tty && sent > 0 {
        eprint!("\r\x1b[K");
    }
    report.elapsed = started.elapsed();
    report.failed.sort();
    Ok(report)
}

fn tally(
    report: &mut ProduceReport,
    (number, result): (usize, Result<(), rdkafka::error::KafkaError>),
) {
    match result {
        Ok(()) => report.produced += 1,
        Err(e) => report.failed.push((number, e.to_string())),
    }
}

fn progress(tty: bool, sent: u64, elapsed: Duration) {
    let rate = sent as f64 / elapsed.as_secs_f64().max(1e-9);
    if tty {
        eprint!("\r\x1b[Ksent {sent} events ({rate:.0}/s)");
        // Progress is cosmetic, and a standard error that cannot be flushed has nowhere to
        // report that to; the summary is printed (and checked) at the end.
        let _ = std::io::stderr().flush();
    } else {
        eprintln!("sent {sent} events ({rate:.0}/s)");
    }
}
