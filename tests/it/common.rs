//! Shared helpers: unique names, a config for a test's topics, producing, and reading topics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// The broker the tests use.
pub fn brokers() -> String {
    std::env::var("REFLEX_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The topics and group of one test.
pub struct TestEnv {
    /// The prefix of every topic of the test (`{run}.…`).
    run: String,
    pub _dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub events: String,
    pub audit: String,
    pub dlq: String,
    pub shipments: String,
    pub refunds_approved: String,
    pub policy_events: String,
    pub group: String,
}

impl TestEnv {
    /// A config using the repository's schemas and policies with fresh topics.
    pub fn new(partitions: i32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = unique("it");
        let env = Self {
            config_path: dir.path().join("reflex.toml"),
            events: format!("{run}.events"),
            audit: format!("{run}.audit"),
            dlq: format!("{run}.dlq"),
            shipments: format!("{run}.shipments"),
            refunds_approved: format!("{run}.refunds"),
            policy_events: format!("{run}.policy"),
            group: format!("{run}.group"),
            _dir: dir,
            run,
        };
        let repo = repo();
        let text = format!(
            r#"
[kafka]
brokers = "{brokers}"
[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[topics]
events = ["{events}"]
audit = "{audit}"
dlq = "{dlq}"
retry = "{dlq}.retry"
partitions = {partitions}
[roles.actions]
group_id = "{group}"
max_event_bytes = 65536
shutdown_timeout = "20s"
[telemetry]
listen = ""
[schemas]
dir = "{schemas}"
[policy]
dir = "{policies}"
emit_topic = "{policy_events}"
# Tests share a loaded machine: a slow decision must not become a policy_timeout deny.
timeout = "5s"
# The repository's policies require refunds signed by the desk: Rec::json signs them.
[publishers.support-desk]
algorithm = "ed25519"
public_key = "{desk_public_key}"
[actions.request_shipment]
kind = "emit"
types = ["order.placed"]
topic = "{shipments}"
type = "shipment.requested"
[actions.record_payment]
kind = "log"
types = ["payment.authorized"]
[actions.record_settlement]
kind = "log"
types = ["payment.settled"]
[actions.approve_refund]
kind = "emit"
types = ["refund.requested"]
topic = "{refunds}"
type = "refund.approved"
[actions.analytics_findings]
kind = "log"
types = ["reflex.analytics.refunds_high", "reflex.analytics.payment_not_settled", "reflex.analytics.orders_rate_anomaly"]
"#,
            brokers = brokers(),
            events = env.events,
            audit = env.audit,
            dlq = env.dlq,
            group = env.group,
            schemas = repo.join("schemas").display(),
            policies = repo.join("policies").display(),
            shipments = env.shipments,
            refunds = env.refunds_approved,
            policy_events = env.policy_events,
            desk_public_key = desk_key().public_key().expect("an ed25519 key"),
        );
        std::fs::write(&env.config_path, text).expect("write config");
        env
    }

    /// Points the config at another policy directory, polled for changes every `reload`.
    pub fn use_policies(&self, dir: &Path, reload: Duration) {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        let policies = repo().join("policies");
        let text = text.replace(
            &format!("dir = \"{}\"\n", policies.display()),
            &format!(
                "dir = \"{}\"\nreload_interval = \"{}ms\"\n",
                dir.display(),
                reload.as_millis()
            ),
        );
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// The validated config (no `REFLEX_*` variables applied).
    pub fn config(&self) -> reflex::config::Config {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        reflex::config::Config::from_toml(&text, &self.config_path, Vec::new())
            .expect("test config is valid")
    }

    /// Creates the topics the worker would create.
    pub async fn create_topics(&self) {
        let config = self.config();
        reflex::kafka::ensure_topics(
            &config.kafka,
            &config.topics,
            &[
                self.shipments.clone(),
                self.refunds_approved.clone(),
                self.policy_events.clone(),
            ],
        )
        .await
        .expect("topics created");
    }
}

impl Drop for TestEnv {
    /// Deletes the test's topics, so runs do not pile partitions up on the local broker: every
    /// topic named `{run}.…`, the roles' own (findings, changelog, repartition) included. A
    /// failed test keeps them, to be looked at.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        delete_topics_of(&format!("{}.", self.run));
    }
}

/// Deletes the topics whose names start with `prefix`, waiting for the broker's answer; off any
/// runtime, so it can run in a `Drop`.
pub fn delete_topics_of(prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let prefix = prefix.to_owned();
    let deleting = std::thread::spawn(move || {
        let Ok(consumer) = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create::<BaseConsumer>()
        else {
            return;
        };
        let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_secs(10)) else {
            return;
        };
        let topics: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|name| name.starts_with(&prefix))
            .collect();
        if topics.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let Ok(admin) = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create::<AdminClient<DefaultClientContext>>()
        else {
            return;
        };
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let _ = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(15),
                admin.delete_topics(&names, &options),
            )
            .await
        });
    });
    let _ = deleting.join();
}

/// A record to produce.
pub struct Rec {
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The support desk's signing key in the tests (`[publishers.support-desk]` of [`TestEnv`]).
pub fn desk_key() -> reflex::publisher::SigningKey {
    use base64::Engine as _;
    let seed: &[u8; 32] = b"reflex tests: support desk key!!";
    reflex::publisher::SigningKey::ed25519(&base64::engine::general_purpose::STANDARD.encode(seed))
        .expect("a valid seed")
}

impl Rec {
    /// A structured-mode record; a refund request is signed by the support desk, as the
    /// repository's policies require.
    pub fn json(key: &str, value: &Value) -> Self {
        let rec = Self::unsigned(key, value);
        if value["type"] == "refund.requested" {
            return rec.signed(&desk_key(), "support-desk");
        }
        rec
    }

    /// A structured-mode record without a signature.
    pub fn unsigned(key: &str, value: &Value) -> Self {
        Self {
            key: Some(key.to_owned()),
            value: Some(value.to_string().into_bytes()),
            headers: vec![],
        }
    }

    /// This record with a `publisher-signature` header by `key` under `key_id`.
    pub fn signed(mut self, key: &reflex::publisher::SigningKey, key_id: &str) -> Self {
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let signature = key
            .sign(
                key_id,
                self.key.as_deref().map(str::as_bytes),
                self.value.as_deref(),
                &headers,
            )
            .expect("sign");
        self.headers.push((
            reflex::publisher::HEADER.to_owned(),
            signature.to_string().into_bytes(),
        ));
        self
    }

    /// Raw bytes.
    pub fn raw(key: &str, value: &[u8]) -> Self {
        Self {
            key: Some(key.to_owned()),
            value: Some(value.to_vec()),
            headers: vec![],
        }
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// A producer for a stream of batches: idempotent, so that its retries after a broker failure
/// never write a record twice (the chaos reconciler counts them).
pub fn idempotent_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `records` to `topic`, waiting for every acknowledgement.
pub async fn produce(topic: &str, records: &[Rec]) {
    produce_with(&producer(), topic, records).await;
}

/// Produces `records` to `topic` with `producer`, waiting for every acknowledgement.
pub async fn produce_with(producer: &FutureProducer, topic: &str, records: &[Rec]) {
    let mut deliveries = Vec::new();
    for r in records {
        let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v),
            })
        });
        let mut fr: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = &r.key {
            fr = fr.key(k.as_str());
        }
        if let Some(v) = &r.value {
            fr = fr.payload(v.as_slice());
        }
        deliveries.push(
            producer
                .send_result(fr)
                .map_err(|(e, _)| e)
                .expect("enqueued"),
        );
    }
    for d in deliveries {
        d.await.expect("delivery future").expect("delivered");
    }
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl Read {
    /// The value as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(self.value.as_deref().expect("record has a value"))
            .expect("value is JSON")
    }
}

/// Reads every record currently in `topic` (all partitions, from the beginning to the end).
pub fn read_all(topic: &str) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        // A transactional topic ends in a commit marker that is never delivered: the end of a
        // partition is the end-of-partition event.
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = BTreeMap::new();
    for p in &partitions {
        // Right after brokers come back, leadership may still be moving: ask again a while.
        let asked = std::time::Instant::now();
        let (low, high) = loop {
            match consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)) {
                Ok(marks) => break marks,
                Err(e) if asked.elapsed() < Duration::from_secs(60) => {
                    eprintln!("watermarks of {topic}/{p} not read yet ({e}); asking again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("watermarks of {topic}/{p}: {e}"),
            }
        };
        if high > low {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .expect("add partition");
            remaining.insert(*p, high);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return out;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out reading {topic}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        if let Err(rdkafka::error::KafkaError::PartitionEOF(p)) = message {
            remaining.remove(&p);
            continue;
        }
        let m = message.expect("read");
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Read {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
        if remaining
            .get(&m.partition())
            .is_some_and(|high| m.offset() + 1 >= *high)
        {
            remaining.remove(&m.partition());
        }
    }
    out
}

/// Audit records of `topic` by key (last one wins, as compaction would keep).
pub fn audits_by_key(topic: &str) -> BTreeMap<String, Vec<Value>> {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in read_all(topic) {
        map.entry(r.key.clone().expect("audit records are keyed"))
            .or_default()
            .push(r.json());
    }
    map
}

/// A valid event of a demo type.
pub fn order(id: &str, source: &str, amount: f64) -> Value {
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": source, "type": "order.placed", "subject": id,
        "time": chrono::Utc::now().to_rfc3339(),
        "data": {"order_id": "ord-1", "customer_id": "c-1", "amount": amount, "currency": "EUR",
                 "items": [{"sku": "S-1", "quantity": 1}]}
    })
}

/// A refund request.
pub fn refund(id: &str, amount: f64) -> Value {
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/support/desk", "type": "refund.requested",
        "time": chrono::Utc::now().to_rfc3339(),
        "data": {"refund_id": "ref-1", "order_id": "ord-1", "amount": amount, "currency": "EUR", "reason": "damaged"}
    })
}

/// A copy of the repository's `policies/` in a new temporary directory.
pub fn copy_policies() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read policies") {
            let path = entry.expect("entry").path();
            let target = to.join(path.file_name().expect("file name"));
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).expect("copy policy file");
            }
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    copy(&repo().join("policies"), dir.path());
    dir
}

/// Waits until `topic` holds audit records for at least `n` keys; returns them.
pub async fn wait_for_audits(topic: &str, n: usize) -> BTreeMap<String, Vec<Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let audits = audits_by_key(topic);
        if audits.len() >= n {
            return audits;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} audit records in {topic} after 90 s",
            audits.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The path of the built `reflex` binary.
pub fn reflex_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_reflex"))
}
