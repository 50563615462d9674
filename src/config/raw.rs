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
    /// Which regorus evaluator decides: `interpreter` or `compiled`.
    pub engine: crate::policy::PolicyEngine,
}

impl Default for RawPolicy {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
            entry: "data.reflex.decision".into(),
            timeout: Duration::from_millis(100),
            reload_interval: Duration::from_secs(2),
            emit_topic: "reflex.policy.events".into(),
            emit_topics: Vec::new(),
            engine: crate::policy::PolicyEngine::Interpreter,
        }
    }
}

/// `[actions.<name>]`: one action and the event types it handles. The `http` keys are
/// validated in `config/services.rs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    /// `emit`, `log` or `http`.
    pub kind: String,
    /// Event types this action handles.
    #[serde(default)]
    pub types: Vec<String>,
    /// `emit`: topic of the derived event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// `emit`: type of the derived event.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub event_type: Option<String>,
    /// `emit`: source of the derived event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `log`: message logged for each event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `http`: request method (default POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `http`: URL template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `http`: extra headers; a value `env:VAR` is read from the environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `http`: limit of one attempt (default 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// `http`: attempts in all (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `http`: upper bound of the first backoff (default 100ms).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub initial_backoff: Option<Duration>,
    /// `http`: upper bound of any backoff (default 5s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_backoff: Option<Duration>,
    /// `http`: service name selecting the circuit breaker (default: the URL's host:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl RawAction {
    /// The `http`-only keys that are set, for the check that other kinds have none.
    pub fn http_keys(&self) -> Vec<&'static str> {
        [
            ("method", self.method.is_some()),
            ("url", self.url.is_some()),
            ("headers", !self.headers.is_empty()),
            ("timeout", self.timeout.is_some()),
            ("max_attempts", self.max_attempts.is_some()),
            ("initial_backoff", self.initial_backoff.is_some()),
            ("max_backoff", self.max_backoff.is_some()),
            ("service", self.service.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}
