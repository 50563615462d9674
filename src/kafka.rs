//! The Kafka layer: client settings (TLS and SASL from `[kafka.security]`), the connection
//! check at start-up ([`connect()`]), what the worker may do on its topics ([`access`]), topic
//! creation, delivery of output records, reading topics
//! to their end ([`read`]) and knowing when a group has caught up ([`drain`]).
//!
//! It knows nothing about events, schemas or policies; it moves [`OutRecord`]s and reports what
//! the brokers said, classifying failures as retryable or permanent.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::config::{KafkaConfig, Topics};
use crate::ingest::{Input, OutRecord};

pub mod access;
pub mod connect;
pub mod drain;
pub mod group;
pub mod outage;
pub mod read;
pub mod transaction;

pub use connect::{connect, ConnectError, ConnectFailure, Connected, CONNECT_TIMEOUT};
pub use drain::caught_up;
pub use group::{consumer_fatal, Assignment, ConsumerFatal, GroupProtocol, GroupSettings};
pub use outage::{Outage, OutageContext};
pub use read::{
    default_partition, default_partitioner, reader, scan, scan_keys, ReadError, Reader, Start,
    TopicReader,
};
pub use transaction::{Guarantee, Transaction, TransactionError, TransactionSettings};

/// Longest a consumer's fetch request waits at the broker for records (librdkafka's default is
/// 500); `[kafka.consumer] "fetch.wait.max.ms"` overrides it.
pub const FETCH_WAIT_MAX_MS: &str = "100";

/// Largest record reflex produces (dead letters carry the original record).
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// A Kafka operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// A client could not be created from the settings.
    #[error("cannot create Kafka {what} for brokers {brokers}: {source}")]
    Client {
        /// Consumer, producer or admin client.
        what: &'static str,
        /// The bootstrap servers.
        brokers: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// Topic creation failed.
    #[error("cannot create topic \"{topic}\": {message}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        message: String,
    },
    /// The brokers refused the connection or did not answer at start-up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The transactional producer could not start.
    #[error("cannot start the transactional producer \"{id}\" ({source}); exactly_once needs brokers that allow transactions (transaction.state.log.replication.factor and min.isr no higher than the brokers there are)")]
    Transactions {
        /// The transactional id.
        id: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The brokers did not answer.
    #[error("Kafka at {brokers} did not answer ({source}); is the broker running? (`make up` starts one)")]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// librdkafka's error.
        source: KafkaError,
    },
}

/// Settings shared by every client, `[kafka.security]` included; `[kafka.properties]` are
/// applied last by [`with_properties`].
pub fn base_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", &kafka.client_id);
    for (key, value) in kafka.security.properties() {
        config.set(key, value);
    }
    config
}

/// Applies the user's `[kafka.properties]`, which win over reflex's defaults.
pub fn with_properties(mut config: ClientConfig, kafka: &KafkaConfig) -> ClientConfig {
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Consumer settings for the at-least-once recipe: auto-commit of explicitly stored offsets;
/// group membership from `[kafka.group]` with the assignor `assignment` needs.
pub fn consumer_config(
    kafka: &KafkaConfig,
    group_id: &str,
    assignment: Assignment,
) -> ClientConfig {
    let mut config = base_config(kafka);
    kafka.group.apply(&mut config, assignment);
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        // A fetch request answers as soon as a record arrives, but partitions assigned while
        // one is waiting on the others join only the next one: librdkafka's 500 ms left the
        // first records after start-up and after a rebalance waiting that long. An idle
        // consumer sends a few more empty fetches a second instead.
        .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
    let mut config = with_properties(config, kafka);
    for (key, value) in &kafka.consumer {
        config.set(key, value);
    }
    config
}

/// A client for watermarks and a group's committed offsets that never joins the group, so its
/// queries do not wait behind the long-polling fetches of the group's consumer.
pub fn probe(
    kafka: &KafkaConfig,
    group_id: &str,
    outage: Arc<Outage>,
) -> Result<Probe, KafkaSetupError> {
    let mut config = base_config(kafka);
    config.set("group.id", group_id);
    with_properties(config, kafka)
        .create_with_context(OutageContext(outage))
        .map_err(|source| KafkaSetupError::Client {
            what: "watermark probe",
            brokers: kafka.brokers.clone(),
            source,
        })
}

/// Producer settings: acknowledged by all in-sync replicas, idempotent, batched; never
/// creating a topic.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = base_config(kafka);
    config
        // librdkafka's producers ask the brokers to create a topic they write or describe and
        // that does not exist. On a broker with auto.create.topics.enable, a missing audit topic
        // would come back with the broker's defaults (not compacted, its partition count): only
        // `reflex topics` and topics.create_missing create topics. A record to a missing topic
        // fails instead, naming it.
        .set("allow.auto.create.topics", "false")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string());
    let mut config = with_properties(config, kafka);
    for (key, value) in &kafka.producer {
        config.set(key, value);
    }
    config
}

/// A client for watermarks and committed offsets that reports unreachable brokers to an
/// [`Outage`].
pub type Probe = rdkafka::consumer::BaseConsumer<OutageContext>;

/// reflex's producer: it reports unreachable brokers to an [`Outage`].
pub type Producer = FutureProducer<OutageContext>;

/// Creates a producer reporting to `outage`.
pub fn producer(kafka: &KafkaConfig, outage: Arc<Outage>) -> Result<Producer, KafkaSetupError> {
    producer_config(kafka)
        .create_with_context(OutageContext(outage))
        .map_err(|source| KafkaSetupError::Client {
            what: "producer",
            brokers: kafka.brokers.clone(),
            source,
        })
}

/// Creates every configured topic that does not exist; returns the ones created.
/// The audit topic is compacted; the dead-letter topic accepts records as large as reflex sends.
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &Topics,
    extra: &[String],
) -> Result<Vec<String>, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = with_properties(base_config(kafka), kafka)
        .create()
        .map_err(|source| KafkaSetupError::Client {
            what: "admin client",
            brokers: kafka.brokers.clone(),
            source,
        })?;
    let max_bytes = MAX_MESSAGE_BYTES.to_string();
    let mut specs: Vec<NewTopic<'_>> = Vec::new();
    let replication = || TopicReplication::Fixed(topics.replication_factor);
    for name in topics.events.iter().chain(extra) {
        specs.push(NewTopic::new(name, topics.partitions, replication()));
    }
    specs.push(
        NewTopic::new(&topics.audit, topics.partitions, replication())
            .set("cleanup.policy", "compact"),
    );
    specs.push(
        NewTopic::new(&topics.dlq, topics.partitions, replication())
            .set("max.message.bytes", &max_bytes),
    );
    specs.push(
        NewTopic::new(&topics.retry, topics.partitions, replication())
            .set("max.message.bytes", &max_bytes),
    );
    let options =
        AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(30))));
    let results = admin
        .create_topics(specs.iter(), &options)
        .await
        .map_err(|source| KafkaSetupError::Unreachable {
            brokers: kafka.brokers.clone(),
            source,
        })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaSetupError::CreateTopic {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(created)
}

/// Whether a produce error may succeed if tried again.
pub fn is_retryable(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::RequestTimedOut
        )
    )
}

/// Headers of an [`OutRecord`] as rdkafka headers.
fn owned_headers(record: &OutRecord) -> OwnedHeaders {
    record.headers.iter().fold(
        OwnedHeaders::new_with_capacity(record.headers.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

/// `record` as rdkafka's record.
fn future_record(record: &OutRecord) -> FutureRecord<'_, [u8], [u8]> {
    let mut fr: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(&record.topic).headers(owned_headers(record));
    if let Some(key) = &record.key {
        fr = fr.key(key.as_slice());
    }
    if let Some(partition) = record.partition {
        fr = fr.partition(partition);
    }
    if let Some(value) = &record.value {
        fr = fr.payload(value.as_slice());
    }
    fr
}

/// Longest [`send`] waits for room in the producer's local queue before it gives up on a record.
pub const QUEUE_FULL_PATIENCE: Duration = Duration::from_secs(60);

/// Enqueues `record`, waiting while the local queue is full (1 ms doubling to 100 ms between
/// tries, at most [`QUEUE_FULL_PATIENCE`] in all); fails on permanent errors, and with
/// `QueueFull` once the patience is spent (logged with the topic and the time waited).
pub async fn send(producer: &Producer, record: &OutRecord) -> Result<DeliveryFuture, KafkaError> {
    let mut delays =
        crate::backoff::Backoff::new(Duration::from_millis(1), Duration::from_millis(100))
            .delays()
            .within(QUEUE_FULL_PATIENCE);
    loop {
        match producer.send_result(future_record(record)) {
            Ok(delivery) => return Ok(delivery),
            Err((error, _)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                let Some(delay) = delays.next() else {
                    tracing::error!(
                        topic = %record.topic,
                        waited = ?delays.spent(),
                        tries = delays.attempts() + 1,
                        "the producer's local queue stayed full: the brokers did not acknowledge \
                         earlier records in time; giving up on this record"
                    );
                    return Err(error);
                };
                tokio::time::sleep(delay).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// A consumed record's headers as name/bytes pairs (a header without a value is empty).
pub fn headers_of<M: Message>(message: &M) -> Vec<(&str, &[u8])> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// The pipeline's view of a consumed record; `headers` comes from [`headers_of`].
pub fn input_of<'a, M: Message>(message: &'a M, headers: &'a [(&'a str, &'a [u8])]) -> Input<'a> {
    Input {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        value: message.payload(),
        headers,
        timestamp_ms: message.timestamp().to_millis(),
    }
}

/// Waits for a delivery report.
pub async fn delivered(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        Err(_) => Err(KafkaError::Canceled),
    }
}
