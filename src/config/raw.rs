//! The configuration file as written: serde types with documented defaults.
//!
//! Every field here is documented in `config/reflex.toml`. Durations are written in
//! human form (`"30s"`, `"250ms"`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration file, before validation.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// How to reach the Kafka cluster.
    pub kafka: RawKafka,
    /// Names of the topics reflex reads and writes.
    pub topics: RawTopics,
    /// Settings per role.
    pub roles: RawRoles,
    /// Where the event schemas live.
    pub schemas: RawSchemas,
    /// Where the policies live and how they are evaluated.
    pub policy: RawPolicy,
    /// A Confluent-compatible schema registry for wire-format data.
    pub registry: RawRegistry,
    /// Actions by name; each names the event types it handles.
    pub actions: BTreeMap<String, RawAction>,
    /// The data lake.
    pub lake: super::lake::RawLake,
    /// Settings shared by the HTTP services (actions and lookups).
    pub services: super::services::RawServices,
    /// Lookups per event type, whose answers join the policy input.
    pub enrichment: BTreeMap<String, super::services::RawEnrichment>,
    /// The telemetry listener.
    pub telemetry: super::telemetry::RawTelemetry,
    /// Keys publishers sign records with, by key id.
    pub publishers: BTreeMap<String, super::publishers::RawPublisherKey>,
    /// The analytics role and where its analyses are declared.
    pub analytics: super::analytics::RawAnalytics,
}

/// `[kafka]`: connection settings shared by consumers and producers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafka {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// `client.id` sent to the brokers.
    pub client_id: String,
    /// Extra librdkafka properties applied to every client (e.g. security settings).
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only.
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for producers only.
    pub producer: BTreeMap<String, String>,
    /// TLS and SASL: `[kafka.security]`.
    pub security: super::security::RawKafkaSecurity,
    /// Consumer group membership: `[kafka.group]`.
    pub group: RawGroup,
    /// `at_least_once` (default) or `exactly_once` for the actions role's Kafka outputs.
    pub guarantee: crate::kafka::Guarantee,
    /// The exactly-once mode's transactions: `[kafka.transactions]`.
    pub transactions: RawTransactions,
}

/// `[kafka.transactions]`: how the exactly-once mode batches its transactions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTransactions {
    /// Commit a transaction this long after its first record at the latest.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// ...or once it answers this many input records.
    pub max_records: usize,
    /// The broker aborts a transaction left open this long (`transaction.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RawTransactions {
    fn default() -> Self {
        let settings = crate::kafka::TransactionSettings::default();
        Self {
            commit_interval: settings.commit_interval,
            max_records: settings.max_records,
            timeout: settings.timeout,
        }
    }
}

/// `[kafka.group]`: how the roles' consumers take part in their groups.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGroup {
    /// `classic` or `consumer` (KIP-848).
    pub protocol: crate::kafka::GroupProtocol,
    /// Classic protocol: a member that sends no heartbeat for this long is declared dead and
    /// its partitions move to the others.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Classic protocol: how often a member heartbeats (at most a third of the session timeout).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
}

impl Default for RawGroup {
    fn default() -> Self {
        Self {
            protocol: crate::kafka::GroupProtocol::Classic,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(2),
        }
    }
}

impl Default for RawKafka {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "reflex".into(),
            properties: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
            security: super::security::RawKafkaSecurity::default(),
            group: RawGroup::default(),
            guarantee: crate::kafka::Guarantee::default(),
            transactions: RawTransactions::default(),
        }
    }
}

/// `[topics]`: what reflex reads and writes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTopics {
    /// Topics carrying business events.
    pub events: Vec<String>,
    /// The compacted audit topic, one record per event keyed by event id.
    pub audit: String,
    /// The dead-letter topic.
    pub dlq: String,
    /// The retry topic: events whose action kept failing wait there for another round.
    pub retry: String,
    /// Create missing topics at start-up.
    pub create_missing: bool,
    /// Partition count for topics that reflex creates.
    pub partitions: i32,
    /// Replication factor for topics that reflex creates.
    pub replication_factor: i32,
}

impl Default for RawTopics {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            audit: "reflex.audit".into(),
            dlq: "reflex.dlq".into(),
            retry: "reflex.retry".into(),
            create_missing: true,
            partitions: 3,
            replication_factor: 1,
        }
    }
}

/// `[roles]`: settings of each role.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoles {
    /// The actions role.
    pub actions: RawActionsRole,
    /// The lake role.
    pub lake: super::lake::RawLakeRole,
}

/// `[roles.actions]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawActionsRole {
    /// Consumer group id.
    pub group_id: String,
    /// Largest event (key + value + headers) processed; larger ones go to the DLQ.
    pub max_event_bytes: usize,
    /// Most messages whose effects may be awaiting acknowledgement at once.
    pub max_in_flight: usize,
    /// How long shutdown may take to drain in-flight work.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `key` (records with the same key in offset order, other keys concurrently) or
    /// `partition` (one record of a partition at a time).
    pub ordering: crate::ordering::Ordering,
    /// How long an event waits in the retry topic before its next round.
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Rounds through the retry topic before an event is dead-lettered.
    pub retry_rounds: u32,
    /// Policy evaluators deciding in parallel; 0: one per core.
    pub deciders: usize,
}

impl Default for RawActionsRole {
    fn default() -> Self {
        Self {
            group_id: "reflex-actions".into(),
            max_event_bytes: 1024 * 1024,
            max_in_flight: 10_000,
            shutdown_timeout: Duration::from_secs(30),
            ordering: crate::ordering::Ordering::Key,
            retry_delay: Duration::from_secs(30),
            retry_rounds: 3,
            deciders: 1,
        }
    }
}

/// `[schemas]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSchemas {
    /// Directory of `<event type>.json` JSON Schemas; relative to the config file.
    pub dir: PathBuf,
}

impl Default for RawSchemas {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("schemas"),
        }
    }
}

/// `[registry]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRegistry {
    /// Base URL of the Confluent-compatible API; empty for none.
    pub url: String,
    /// Timeout of one registry request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Header naming the event type of plain (non-CloudEvents) wire-format records.
    pub type_header: String,
    /// Basic authentication user (with `password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Basic authentication password: `env:VAR` or `file:PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<crate::secret::SecretRef>,
    /// Bearer token: `env:VAR` or `file:PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<crate::secret::SecretRef>,
    /// Private CA and client certificate: `[registry.tls]`.
    pub tls: super::security::RawHttpTls,
}

impl Default for RawRegistry {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout: Duration::from_secs(5),
            type_header: "event_type".into(),
            username: None,
            password: None,
            token: None,
            tls: super::security::RawHttpTls::default(),
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicy {
    /// Directory of `*.rego` and `*.json` data files; relative to the config file.
    pub dir: PathBuf,
    /// The rule whose value is the decision.
    pub entry: String,
    /// The redaction rule: its value lists the paths removed from every copy of an event reflex
    /// writes; it may read only `input.event`. `""` turns redaction off.
    pub redact: String,
    /// Longest a single evaluation may run before it counts as a deny.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often workers look for a changed policy set; `0s` turns hot reload off.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Topic of events emitted by `emit` obligations that name none.
    pub emit_topic: String,
    /// Further topics `emit` obligations may name (created at start-up).
    pub emit_topics: Vec<String>,
    /// Which regorus evaluator decides: `auto` (the compiled engine when the set is proved
    /// compiled-safe, else the interpreter), `interpreter` or `compiled`.
    pub engine: crate::policy::PolicyEngine,
    /// With the compiled engine, one decision in this many is decided by the interpreter too
    /// (disagreements counted and logged; the interpreter's decision is kept). `0`: never.
    pub cross_check_every: u64,
    /// An OPA-format bundle to decide with instead of `dir`.
    pub bundle: RawPolicyBundle,
}

/// `[policy.bundle]`: where workers fetch an OPA-format policy bundle, and the key it must be
/// signed with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPolicyBundle {
    /// `file:///path`, `http(s)://…` or `s3://bucket/key`; empty: policies come from `dir`.
    pub url: String,
    /// The key bundles must be signed with (`env:VAR` or `file:PATH`): the shared secret for
    /// HS256, a PEM public key for RS256 and ES256. Unset or `""`: signatures are not checked.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_is_none"
    )]
    pub verification_key: Option<crate::secret::SecretRef>,
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// The key id bundles must name, if any.
    pub key_id: String,
    /// Longest one fetch may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// HTTPS to the bundle server: the only CAs trusted and a client certificate.
    pub tls: super::security::RawHttpTls,
}

/// A secret reference where `""` means none (so `REFLEX_*` can set a key the file leaves empty).
fn empty_is_none<'de, D>(deserializer: D) -> Result<Option<crate::secret::SecretRef>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text: Option<String> = Option::deserialize(deserializer)?;
    Ok(text
        .filter(|t| !t.trim().is_empty())
        .map(crate::secret::SecretRef::from))
}

impl Default for RawPolicyBundle {
    fn default() -> Self {
        Self {
            url: String::new(),
            verification_key: None,
            algorithm: "RS256".into(),
            key_id: String::new(),
            timeout: Duration::from_secs(10),
            tls: super::security::RawHttpTls::default(),
        }
    }
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
            entry: "data.reflex.decision".into(),
            redact: crate::policy::redaction::DEFAULT_RULE.into(),
            timeout: Duration::from_millis(100),
            reload_interval: Duration::from_secs(2),
            emit_topic: "reflex.policy.events".into(),
            emit_topics: Vec::new(),
            engine: crate::policy::PolicyEngine::Auto,
            cross_check_every: crate::policy::DEFAULT_CROSS_CHECK_EVERY,
            bundle: RawPolicyBundle::default(),
        }
    }
}

/// `[actions.<name>]`: one action and the event types it handles, chosen by `kind`. Each kind
/// accepts only its own keys; the `http` keys are validated in `config/services.rs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RawAction {
    /// `kind = "emit"`: publish a derived CloudEvent.
    Emit(RawEmitAction),
    /// `kind = "log"`: log the event's envelope.
    Log(RawLogAction),
    /// `kind = "http"`: call an action service.
    Http(RawHttpAction),
}

impl RawAction {
    /// The kind as written in the configuration.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Emit(_) => "emit",
            Self::Log(_) => "log",
            Self::Http(_) => "http",
        }
    }

    /// The event types this action handles.
    pub fn types(&self) -> &[String] {
        match self {
            Self::Emit(a) => &a.types,
            Self::Log(a) => &a.types,
            Self::Http(a) => &a.types,
        }
    }
}

/// The keys of a `kind = "emit"` action.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmitAction {
    /// Event types this action handles.
    #[serde(default)]
    pub types: Vec<String>,
    /// Topic of the derived event.
    pub topic: String,
    /// Type of the derived event.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Source of the derived event (default `/reflex/actions/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The keys of a `kind = "log"` action.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogAction {
    /// Event types this action handles.
    #[serde(default)]
    pub types: Vec<String>,
    /// Message logged for each event (default `action <name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The keys of a `kind = "http"` action.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpAction {
    /// Event types this action handles.
    #[serde(default)]
    pub types: Vec<String>,
    /// Request method (default POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// URL template.
    pub url: String,
    /// Extra headers; a value `env:VAR` is read from the environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Limit of one attempt (default 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Attempts in all (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Upper bound of the first backoff (default 100ms).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub initial_backoff: Option<Duration>,
    /// Upper bound of any backoff (default 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_backoff: Option<Duration>,
    /// Service name selecting the circuit breaker (default: the URL's host:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}
