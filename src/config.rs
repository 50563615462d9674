//! Configuration: the file as written ([`RawConfig`]), environment overrides, and the validated
//! [`Config`] that has compiled the schemas, loaded the policies and checked cross-field rules.

mod analytics;
mod env;
mod lake;
mod publishers;
mod raw;
mod security;
mod services;
mod telemetry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use analytics::{AnalyticsConfig, RawAnalytics};
pub use lake::{LakeConfig, RawLake, RawLakeRole, RawLakeS3, StoreLocation};
pub use publishers::RawPublisherKey;
pub use raw::{
    RawAction, RawActionsRole, RawConfig, RawEmitAction, RawHttpAction, RawKafka, RawLogAction,
    RawPolicy, RawPolicyBundle, RawRegistry, RawRoles, RawSchemas, RawTopics,
};
pub use security::{
    KafkaSecurity, RawHttpTls, RawKafkaSecurity, SaslAuth, SaslMechanism, SecurityProtocol,
};
pub use services::{RawEnrichment, RawLookup, RawServices};
pub use telemetry::{RawTelemetry, TelemetryConfig};

use crate::action::{Action, ActionKind, ActionTable};
use crate::enrich::EnrichmentTable;
use crate::policy::{PolicyError, PolicySet};
use crate::registry::{HttpRegistry, RegistryError};
use crate::schema::{SchemaError, SchemaRegistry};
use crate::service::ServicesConfig;

/// Why the configuration is unusable. Each message names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file named by a key (a certificate, a key, a CA bundle) cannot be read.
    #[error("{key} = \"{path}\": cannot read the file: {source}", path = path.display())]
    File {
        /// The key.
        key: &'static str,
        /// The file, resolved against the config file's directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `[policy.bundle] verification_key` is not a key for its algorithm.
    #[error("policy.bundle.verification_key: {0}")]
    PolicyBundleKey(String),
    /// A secret could not be read from its reference.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    /// The file is not valid TOML or has unknown keys or wrong types.
    #[error("config {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the key and line.
        message: String,
    },
    /// A `REFLEX_*` variable has a value of the wrong type.
    #[error("environment variable {name}=\"{value}\" must be {expected}")]
    BadEnv {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A key has a value outside its range.
    #[error("config key {key} = {value} is invalid: {why}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// One event type is claimed by two actions.
    #[error("event type \"{ty}\" has two actions: \"{first}\" and \"{second}\"; keep exactly one")]
    TwoActions {
        /// The type.
        ty: String,
        /// One action.
        first: String,
        /// The other.
        second: String,
    },
    /// An event type with a schema has no action.
    #[error("event type \"{ty}\" (schema {schema}) has no action: add it to the `types` of one [actions.<name>]")]
    NoAction {
        /// The type.
        ty: String,
        /// Its schema file.
        schema: PathBuf,
    },
    /// An action names a type that has no schema.
    #[error("event type \"{ty}\" of action \"{action}\" has no schema: add {dir}/{ty}.json")]
    NoSchema {
        /// The type.
        ty: String,
        /// The action naming it.
        action: String,
        /// The schema directory.
        dir: PathBuf,
    },
    /// An action is not well-formed.
    #[error("action \"{action}\": {why}")]
    Action {
        /// The action.
        action: String,
        /// What is wrong.
        why: String,
    },
    /// An `[actions.<name>]` table does not fit its kind: the kind is unknown or missing, a
    /// key is missing, or a key belongs to another kind.
    #[error("action \"{action}\" (kind {kind}): {message}")]
    ActionKeys {
        /// The action.
        action: String,
        /// Its `kind` as written, or `missing`.
        kind: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// `[enrichment."<type>"]` names a type that has no schema.
    #[error("[enrichment.\"{ty}\"]: event type \"{ty}\" has no schema in {dir}")]
    EnrichmentType {
        /// The type.
        ty: String,
        /// The schema directory.
        dir: PathBuf,
    },
    /// A lookup is not well-formed.
    #[error("lookup \"{lookup}\" of [enrichment.\"{ty}\"]: {why}")]
    Lookup {
        /// The event type.
        ty: String,
        /// The lookup's name.
        lookup: String,
        /// What is wrong.
        why: String,
    },
    /// A schema failed to load.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The registry client could not be set up.
    #[error("[registry] url = \"{url}\": {source}")]
    Registry {
        /// The URL.
        url: String,
        /// What failed.
        source: RegistryError,
    },
    /// The policies failed to load.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A `[services.service_tls."<service>"]` table is not usable.
    #[error("[services.service_tls.\"{service}\"]: {why}")]
    ServiceTls {
        /// The service name.
        service: String,
        /// What is wrong.
        why: String,
    },
    /// An analysis in `analytics/` is not usable.
    #[error(transparent)]
    Analytics(#[from] crate::analytics::SpecError),
    /// A `[publishers.<id>]` key is not usable.
    #[error("[publishers.{id}]: {why}")]
    Publisher {
        /// The key id.
        id: String,
        /// What is wrong (never the key material).
        why: String,
    },
}

/// Kafka connection settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Client id.
    pub client_id: String,
    /// Extra librdkafka properties for every client.
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers.
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for producers.
    pub producer: BTreeMap<String, String>,
    /// TLS and SASL, validated, secrets read.
    pub security: KafkaSecurity,
    /// Consumer group membership.
    pub group: crate::kafka::GroupSettings,
    /// What the actions role guarantees for its Kafka outputs.
    pub guarantee: crate::kafka::Guarantee,
    /// The exactly-once mode's transactions.
    pub transactions: crate::kafka::TransactionSettings,
}

/// Topic names and creation settings.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Event topics.
    pub events: Vec<String>,
    /// Audit topic.
    pub audit: String,
    /// Dead-letter topic.
    pub dlq: String,
    /// Retry topic.
    pub retry: String,
    /// Create missing topics at start-up.
    pub create_missing: bool,
    /// Partitions of created topics.
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
}

/// Settings of the actions role.
#[derive(Debug, Clone)]
pub struct ActionsRole {
    /// Consumer group id.
    pub group_id: String,
    /// Largest event processed.
    pub max_event_bytes: usize,
    /// Most messages awaiting acknowledgement.
    pub max_in_flight: usize,
    /// Drain deadline at shutdown.
    pub shutdown_timeout: Duration,
    /// How records of one partition may overlap.
    pub ordering: crate::ordering::Ordering,
    /// Wait in the retry topic before the next round.
    pub retry_delay: Duration,
    /// Rounds through the retry topic before the dead-letter topic.
    pub retry_rounds: u32,
    /// Policy evaluators deciding in parallel (at least 1).
    pub deciders: usize,
}

/// A validated configuration, with schemas compiled and policies loaded.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Kafka settings.
    pub kafka: KafkaConfig,
    /// Topics.
    pub topics: Topics,
    /// The actions role.
    pub actions_role: ActionsRole,
    /// Compiled schemas.
    pub schemas: Arc<SchemaRegistry>,
    /// Loaded policies.
    pub policy: PolicySet,
    /// The one action of each event type.
    pub actions: Arc<ActionTable>,
    /// The schema directory, resolved.
    pub schema_dir: PathBuf,
    /// The policy directory, resolved.
    pub policy_dir: PathBuf,
    /// The HTTP schema registry, when `[registry] url` is set.
    pub registry: Option<Arc<HttpRegistry>>,
    /// Header naming the type of plain wire-format records.
    pub type_header: String,
    /// Problems that do not stop reflex, such as a `REFLEX_*` variable that names no key.
    pub warnings: Vec<String>,
    /// How often workers look for a changed policy set (zero: never).
    pub policy_reload_interval: Duration,
    /// Topic of events emitted by `emit` obligations that name none.
    pub policy_emit_topic: String,
    /// Further topics `emit` obligations may name.
    pub policy_emit_topics: Vec<String>,
    /// The lake role and its store.
    pub lake: LakeConfig,
    /// Settings shared by the HTTP services (circuit breakers).
    pub services: ServicesConfig,
    /// The lookups of each event type.
    pub enrichment: Arc<EnrichmentTable>,
    /// The telemetry listener.
    pub telemetry: TelemetryConfig,
    /// The publishers' keys, which verify record signatures at admission.
    pub publishers: Arc<crate::publisher::Keyring>,
    /// The analytics role and its analyses.
    pub analytics: AnalyticsConfig,
}

impl Config {
    /// Every topic reflex emits events to: the `emit` actions' topics and the policy's emit
    /// topics, sorted, without repeats.
    pub fn emit_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .actions
            .iter()
            .filter_map(|(_, a)| match &a.kind {
                ActionKind::Emit { topic, .. } => Some(topic.clone()),
                ActionKind::Log { .. } | ActionKind::Http(_) => None,
            })
            .collect();
        topics.push(self.policy_emit_topic.clone());
        topics.extend(self.policy_emit_topics.iter().cloned());
        topics.sort();
        topics.dedup();
        topics
    }

    /// The topics reflex writes that `topics` does not name: the topics of emit actions and
    /// `emit` obligations, and the analyses' findings topic when analyses are declared. Created
    /// with the configured ones (`reflex topics`, `topics.create_missing`), since no reflex
    /// producer creates a topic.
    pub fn written_topics(&self) -> Vec<String> {
        let mut topics = self.emit_topics();
        if !self.analytics.analyses.is_empty() {
            topics.push(self.analytics.topic.clone());
        }
        topics.retain(|t| !self.topics.events.contains(t));
        topics.sort();
        topics.dedup();
        topics
    }

    /// Reads `path`, applies the process's `REFLEX_*` variables, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path, std::env::vars())
    }

    /// Parses `text` (as if read from `path`), applies `vars`, and validates.
    pub fn from_toml<I>(text: &str, path: &Path, vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let (raw, unknown) = raw_from_toml(text, path, vars.clone())?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let mut config = Self::validate(raw, path, &base, &vars)?;
        config.warnings.extend(unknown.into_iter().map(|name| {
            format!("environment variable {name} names no configuration key; it is ignored")
        }));
        Ok(config)
    }

    fn validate(
        raw: RawConfig,
        path: &Path,
        base: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        if raw.topics.events.is_empty() {
            return Err(ConfigError::Invalid {
                key: "topics.events",
                value: "[]".into(),
                why: "name at least one event topic",
            });
        }
        if raw.topics.partitions < 1 {
            return Err(ConfigError::Invalid {
                key: "topics.partitions",
                value: raw.topics.partitions.to_string(),
                why: "must be at least 1",
            });
        }
        if raw.roles.actions.max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                key: "roles.actions.max_in_flight",
                value: "0".into(),
                why: "must be at least 1",
            });
        }
        if raw.kafka.brokers.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "kafka.brokers",
                value: "\"\"".into(),
                why: "name at least one broker",
            });
        }
        let schema_dir = base.join(&raw.schemas.dir);
        let policy_dir = base.join(&raw.policy.dir);
        let schemas = SchemaRegistry::load(&schema_dir)?;
        let policy = match policy_bundle(&raw.policy.bundle, &raw.lake.s3, base)? {
            Some(spec) => PolicySet::load_bundle(spec, &raw.policy.entry, raw.policy.timeout)?,
            None => PolicySet::load(&policy_dir, &raw.policy.entry, raw.policy.timeout)?,
        }
        .with_redaction(&raw.policy.redact)?
        .with_input_facts(input_facts(&schemas, &raw.registry.url))
        .with_cross_check(raw.policy.cross_check_every)
        .with_engine(raw.policy.engine);
        let actions = build_actions(&raw.actions, &schemas, &schema_dir, env)?;
        let services = services::services_config(&raw.services, base)?;
        let enrichment = services::enrichment_table(&raw.enrichment, &schemas, &schema_dir)?;
        services::check_service_tls(&services, &actions, &enrichment)?;
        let registry = match raw.registry.url.trim() {
            "" => None,
            url => {
                let tls = security::http_tls(&raw.registry.tls, "registry.tls", base)?;
                let auth = registry_auth(&raw.registry, base)?;
                Some(Arc::new(
                    HttpRegistry::with_tls(url, raw.registry.timeout, &tls, auth).map_err(
                        |source| ConfigError::Registry {
                            url: url.to_owned(),
                            source,
                        },
                    )?,
                ))
            }
        };
        let lake = LakeConfig::new(raw.lake, raw.roles.lake, base)?;
        let telemetry = TelemetryConfig::new(raw.telemetry, base)?;
        let publishers = publishers::keyring(&raw.publishers, base)?;
        let analytics = AnalyticsConfig::new(
            raw.analytics,
            base,
            &schemas,
            &schema_dir,
            &raw.topics.events,
        )?;
        Ok(Self {
            path: path.to_owned(),
            kafka: kafka_config(raw.kafka, base)?,
            topics: Topics {
                events: raw.topics.events,
                audit: raw.topics.audit,
                dlq: raw.topics.dlq,
                retry: raw.topics.retry,
                create_missing: raw.topics.create_missing,
                partitions: raw.topics.partitions,
                replication_factor: raw.topics.replication_factor,
            },
            actions_role: ActionsRole {
                group_id: raw.roles.actions.group_id,
                max_event_bytes: raw.roles.actions.max_event_bytes,
                max_in_flight: raw.roles.actions.max_in_flight,
                shutdown_timeout: raw.roles.actions.shutdown_timeout,
                ordering: raw.roles.actions.ordering,
                retry_delay: raw.roles.actions.retry_delay,
                retry_rounds: raw.roles.actions.retry_rounds,
                deciders: match raw.roles.actions.deciders {
                    0 => std::thread::available_parallelism().map_or(1, usize::from),
                    n => n,
                },
            },
            schemas: Arc::new(schemas),
            policy,
            actions: Arc::new(actions),
            schema_dir,
            policy_dir,
            registry,
            type_header: raw.registry.type_header,
            warnings: analytics.warnings.clone(),
            policy_reload_interval: raw.policy.reload_interval,
            policy_emit_topic: raw.policy.emit_topic,
            policy_emit_topics: raw.policy.emit_topics,
            lake,
            services,
            enrichment: Arc::new(enrichment),
            telemetry,
            publishers: Arc::new(publishers),
            analytics,
        })
    }
}

/// Parses `text` (as if read from `path`) over the defaults and applies `vars`, unvalidated;
/// also returns the `REFLEX_*` variables that name no key.
fn raw_from_toml<I>(
    text: &str,
    path: &Path,
    vars: I,
) -> Result<(RawConfig, Vec<String>), ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    // Parse once strictly so unknown keys are reported against the file, then merge the
    // file over the defaults so every key exists for the environment overrides.
    let file: toml::Value = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    check_actions(&file)?;
    let _: RawConfig = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
    let mut tree =
        toml::Value::try_from(RawConfig::default()).map_err(|e| parse_err(e.to_string()))?;
    merge(&mut tree, file);
    let unknown = env::apply(&mut tree, vars)?;
    check_actions(&tree)?;
    let raw = tree
        .try_into()
        .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
    Ok((raw, unknown))
}

/// Reads each `[actions.<name>]` table of `tree` as a [`RawAction`] on its own, so that an
/// unknown kind, a missing key or a key of another kind is reported with the action's name.
fn check_actions(tree: &toml::Value) -> Result<(), ConfigError> {
    let Some(actions) = tree.get("actions").and_then(toml::Value::as_table) else {
        return Ok(());
    };
    for (name, table) in actions {
        if let Err(e) = RawAction::deserialize(table.clone()) {
            return Err(ConfigError::ActionKeys {
                action: name.clone(),
                kind: table
                    .get("kind")
                    .map_or_else(|| "missing".to_owned(), toml::Value::to_string),
                message: e.message().to_owned(),
            });
        }
    }
    Ok(())
}

/// `[policy.bundle]` resolved: `None` when no bundle URL is set. S3 bundles use the endpoint,
/// region and path style of `[lake.s3]`.
fn policy_bundle(
    raw: &raw::RawPolicyBundle,
    s3: &lake::RawLakeS3,
    base: &Path,
) -> Result<Option<crate::policy::bundle::fetch::BundleSpec>, ConfigError> {
    use crate::policy::bundle::sign::{Algorithm, VerificationKey};
    let url = raw.url.trim();
    if url.is_empty() {
        return Ok(None);
    }
    let url = match url.strip_prefix("file://") {
        // A relative file URL is relative to the configuration file, like `dir`.
        Some(path) if !path.starts_with('/') => format!("file://{}", base.join(path).display()),
        _ => url.to_owned(),
    };
    let key = match &raw.verification_key {
        None => None,
        Some(reference) => {
            let algorithm: Algorithm = raw.algorithm.parse().map_err(|_| ConfigError::Invalid {
                key: "policy.bundle.algorithm",
                value: format!("\"{}\"", raw.algorithm),
                why: "use HS256, RS256 or ES256",
            })?;
            let secret = reference.resolve("policy.bundle.verification_key", base)?;
            Some(
                VerificationKey::new(algorithm, &secret, &raw.key_id)
                    .map_err(|e| ConfigError::PolicyBundleKey(e.to_string()))?,
            )
        }
    };
    let tls = security::http_tls(&raw.tls, "policy.bundle.tls", base)?;
    Ok(Some(crate::policy::bundle::fetch::BundleSpec {
        url,
        key,
        tls,
        timeout: raw.timeout,
        s3_endpoint: s3.endpoint.clone(),
        s3_region: s3.region.clone(),
        s3_path_style: s3.path_style,
    }))
}

/// Where the policies are and how they are evaluated: the `[policy]` table, resolved.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// The policy directory.
    pub dir: PathBuf,
    /// The entry rule.
    pub entry: String,
    /// The redaction rule (`""`: no redaction); see [`PolicySet::with_redaction`].
    pub redact: String,
    /// The evaluation time limit.
    pub timeout: Duration,
    /// Kafka settings, to read the audit topic.
    pub kafka: KafkaConfig,
    /// The audit topic.
    pub audit_topic: String,
    /// The bundle workers decide with instead of `dir`, when `[policy.bundle] url` is set.
    pub bundle: Option<crate::policy::bundle::fetch::BundleSpec>,
    /// `[policy] engine`.
    pub engine: crate::policy::PolicyEngine,
    /// The schema directory (what admission validates the data against).
    pub schema_dir: PathBuf,
    /// `[registry] url` (`""`: none).
    pub registry_url: String,
}

impl PolicySettings {
    /// What admission guarantees about the policy input with these settings (the envelope
    /// alone when the schema directory does not load).
    pub fn input_facts(&self) -> crate::policy::InputFacts {
        match SchemaRegistry::load(&self.schema_dir) {
            Ok(schemas) => input_facts(&schemas, &self.registry_url),
            Err(_) => crate::policy::InputFacts::envelope(),
        }
    }

    /// Reads only the `[policy]` table of `path` (with `REFLEX_*` overrides), without loading
    /// the policies, so `reflex policy` commands work on a set that does not compile.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (raw, _) = raw_from_toml(&text, path, std::env::vars())?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let bundle = policy_bundle(&raw.policy.bundle, &raw.lake.s3, &base)?;
        Ok(Self {
            bundle,
            dir: base.join(&raw.policy.dir),
            entry: raw.policy.entry,
            redact: raw.policy.redact,
            timeout: raw.policy.timeout,
            kafka: kafka_config(raw.kafka, &base)?,
            audit_topic: raw.topics.audit,
            engine: raw.policy.engine,
            schema_dir: base.join(&raw.schemas.dir),
            registry_url: raw.registry.url,
        })
    }
}

/// What admission guarantees about the policy input: the envelope, and each event type's data
/// schema, against which records' data is validated. With a registry, wire-format data is
/// validated against the schema the registry holds for its id instead, which may differ from
/// the file, so for those records the data's shape is not known.
fn input_facts(schemas: &SchemaRegistry, registry_url: &str) -> crate::policy::InputFacts {
    let facts = crate::policy::InputFacts::validated(
        schemas
            .types()
            .filter_map(|ty| schemas.schema(ty).map(|schema| (ty, schema))),
    );
    if registry_url.trim().is_empty() {
        facts
    } else {
        facts.with_registry()
    }
}

/// librdkafka properties that hold secrets: never inline in `[kafka.properties]` and friends.
const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.truststore.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.pem",
];

fn kafka_config(raw: RawKafka, base: &Path) -> Result<KafkaConfig, ConfigError> {
    for (table, properties) in [
        ("kafka.properties", &raw.properties),
        ("kafka.consumer", &raw.consumer),
        ("kafka.producer", &raw.producer),
    ] {
        if let Some(key) = properties
            .keys()
            .find(|k| SECRET_PROPERTIES.contains(&k.as_str()))
        {
            return Err(ConfigError::Invalid {
                key: "kafka.properties",
                value: format!("[{table}] \"{key}\""),
                why: "secrets are not accepted inline: use [kafka.security] with an env: or file: reference",
            });
        }
    }
    let group = group_settings(&raw.group)?;
    let transactions = transaction_settings(&raw.transactions)?;
    Ok(KafkaConfig {
        group,
        guarantee: raw.guarantee,
        transactions,
        security: security::kafka_security(&raw.security, base)?,
        brokers: raw.brokers,
        client_id: raw.client_id,
        properties: raw.properties,
        consumer: raw.consumer,
        producer: raw.producer,
    })
}

/// `[kafka.group]`, checked against the brokers' limits (the classic protocol's session
/// timeout must lie within `group.min.session.timeout.ms` and `group.max.session.timeout.ms`,
/// 6 s and 30 min by default).
fn group_settings(raw: &raw::RawGroup) -> Result<crate::kafka::GroupSettings, ConfigError> {
    let session = raw.session_timeout;
    if session < Duration::from_secs(1) || session > Duration::from_secs(1800) {
        return Err(ConfigError::Invalid {
            key: "kafka.group.session_timeout",
            value: humantime::format_duration(session).to_string(),
            why: "must be between 1s and 30m (brokers accept 6s to 30m by default)",
        });
    }
    if raw.heartbeat_interval.is_zero() || raw.heartbeat_interval * 3 > session {
        return Err(ConfigError::Invalid {
            key: "kafka.group.heartbeat_interval",
            value: humantime::format_duration(raw.heartbeat_interval).to_string(),
            why: "must be above zero and at most a third of kafka.group.session_timeout",
        });
    }
    Ok(crate::kafka::GroupSettings {
        protocol: raw.protocol,
        session_timeout: session,
        heartbeat_interval: raw.heartbeat_interval,
        instance_id: None,
    })
}

/// `[kafka.transactions]`, checked against the brokers' limits (`transaction.max.timeout.ms`,
/// 15 min by default).
fn transaction_settings(
    raw: &raw::RawTransactions,
) -> Result<crate::kafka::TransactionSettings, ConfigError> {
    let duration = |d: Duration| humantime::format_duration(d).to_string();
    if raw.timeout < Duration::from_secs(1) || raw.timeout > Duration::from_secs(900) {
        return Err(ConfigError::Invalid {
            key: "kafka.transactions.timeout",
            value: duration(raw.timeout),
            why: "must be between 1s and 15m (the brokers' transaction.max.timeout.ms)",
        });
    }
    if raw.commit_interval.is_zero() || raw.commit_interval * 2 > raw.timeout {
        return Err(ConfigError::Invalid {
            key: "kafka.transactions.commit_interval",
            value: duration(raw.commit_interval),
            why: "must be above zero and at most half of kafka.transactions.timeout",
        });
    }
    if raw.max_records == 0 {
        return Err(ConfigError::Invalid {
            key: "kafka.transactions.max_records",
            value: "0".into(),
            why: "must be at least 1",
        });
    }
    Ok(crate::kafka::TransactionSettings {
        commit_interval: raw.commit_interval,
        max_records: raw.max_records,
        timeout: raw.timeout,
    })
}

/// `[registry]` credentials: basic authentication or a bearer token, not both.
fn registry_auth(raw: &RawRegistry, base: &Path) -> Result<crate::http::HttpAuth, ConfigError> {
    use crate::http::HttpAuth;
    match (&raw.username, &raw.password, &raw.token) {
        (None, None, None) => Ok(HttpAuth::None),
        (Some(username), Some(password), None) => Ok(HttpAuth::Basic {
            username: username.clone(),
            password: password.resolve("registry.password", base)?,
        }),
        (None, None, Some(token)) => Ok(HttpAuth::Bearer(token.resolve("registry.token", base)?)),
        _ => Err(ConfigError::Invalid {
            key: "registry.username",
            value: raw.username.clone().unwrap_or_default(),
            why: "set username and password (basic authentication) or token (bearer), not a mix",
        }),
    }
}

/// Recursively overlays `overlay` on `base`.
fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Builds the type → action table and checks the one-action-per-type rule.
fn build_actions(
    raw: &BTreeMap<String, RawAction>,
    schemas: &SchemaRegistry,
    schema_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<ActionTable, ConfigError> {
    let mut by_type: BTreeMap<String, Arc<Action>> = BTreeMap::new();
    for (name, spec) in raw {
        let bad = |why: String| ConfigError::Action {
            action: name.clone(),
            why,
        };
        let kind = match spec {
            RawAction::Emit(emit) => ActionKind::Emit {
                topic: emit.topic.clone(),
                event_type: emit.event_type.clone(),
                source: emit
                    .source
                    .clone()
                    .unwrap_or_else(|| format!("/reflex/actions/{name}")),
            },
            RawAction::Log(log) => ActionKind::Log {
                message: log
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("action {name}")),
            },
            RawAction::Http(http) => {
                ActionKind::Http(services::http_action(http, env).map_err(bad)?)
            }
        };
        if spec.types().is_empty() {
            return Err(bad("handles no event type: list them in `types`".into()));
        }
        let action = Arc::new(Action {
            name: name.clone(),
            kind,
        });
        for ty in spec.types() {
            if !schemas.contains(ty) {
                return Err(ConfigError::NoSchema {
                    ty: ty.clone(),
                    action: name.clone(),
                    dir: schema_dir.to_owned(),
                });
            }
            if let Some(first) = by_type.insert(ty.clone(), action.clone()) {
                return Err(ConfigError::TwoActions {
                    ty: ty.clone(),
                    first: first.name.clone(),
                    second: name.clone(),
                });
            }
        }
    }
    for ty in schemas.types() {
        if !by_type.contains_key(ty) {
            let schema = schemas.path(ty).map(Path::to_owned).unwrap_or_default();
            return Err(ConfigError::NoAction {
                ty: ty.to_owned(),
                schema,
            });
        }
    }
    Ok(ActionTable::new(by_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("schemas")).expect("mkdir");
            std::fs::create_dir_all(dir.path().join("policies")).expect("mkdir");
            let schema = r#"{"type":"object"}"#;
            std::fs::write(dir.path().join("schemas/order.placed.json"), schema).expect("write");
            std::fs::write(dir.path().join("schemas/refund.requested.json"), schema)
                .expect("write");
            std::fs::write(
                dir.path().join("policies/p.rego"),
                "package reflex\ndecision := {\"allow\": true, \"reasons\": [], \"obligations\": {}}\nredact := []\n",
            )
            .expect("write");
            Self { dir }
        }

        fn load(&self, body: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
            let text = format!("[topics]\nevents = [\"events.orders\"]\n{body}");
            let vars = vars.iter().map(|(a, b)| (a.to_string(), b.to_string()));
            Config::from_toml(&text, &self.dir.path().join("reflex.toml"), vars)
        }
    }

    const BOTH: &str = r#"
[actions.ship]
kind = "emit"
types = ["order.placed"]
topic = "events.shipments"
type = "shipment.requested"
[actions.note]
kind = "log"
types = ["refund.requested"]
"#;

    #[test]
    fn the_policy_engine_is_auto_by_default_and_the_schemas_feed_its_proof() {
        let f = Fixture::new();
        let cfg = f.load(BOTH, &[]).expect("valid");
        // The fixture's policy raises nothing: proved, so compiled.
        use crate::policy::PolicyEngine;
        assert_eq!(cfg.policy.configured_engine(), PolicyEngine::Auto);
        assert_eq!(cfg.policy.engine(), PolicyEngine::Compiled);
        let cfg = f
            .load(
                &format!("{BOTH}\n[policy]\nengine = \"interpreter\"\ncross_check_every = 0\n"),
                &[],
            )
            .expect("valid");
        assert_eq!(cfg.policy.engine(), PolicyEngine::Interpreter);
        let cfg = f
            .load(BOTH, &[("REFLEX_POLICY_ENGINE", "compiled")])
            .expect("valid");
        assert_eq!(cfg.policy.configured_engine(), PolicyEngine::Compiled);
        let err = f
            .load(&format!("{BOTH}\n[policy]\nengine = \"vm\"\n"), &[])
            .expect_err("unknown engine");
        assert!(err.to_string().contains("vm"), "{err}");
        // With a registry, the data schemas hold for records that are not in wire format.
        let schemas = SchemaRegistry::load(&f.dir.path().join("schemas")).expect("schemas");
        assert!(!input_facts(&schemas, "").registry());
        assert!(input_facts(&schemas, "http://registry:8081").registry());
    }

    #[test]
    fn valid_config_with_defaults_and_env() {
        let f = Fixture::new();
        let cfg = f
            .load(
                BOTH,
                &[
                    ("REFLEX_KAFKA_BROKERS", "k:1"),
                    ("REFLEX_ROLES_ACTIONS_MAX_IN_FLIGHT", "7"),
                ],
            )
            .expect("valid");
        assert_eq!(cfg.kafka.brokers, "k:1");
        assert_eq!(cfg.actions_role.max_in_flight, 7);
        assert_eq!(cfg.topics.audit, "reflex.audit");
        assert_eq!(cfg.actions_role.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(
            cfg.actions.get("order.placed").map(|a| a.name.as_str()),
            Some("ship")
        );
    }

    #[test]
    fn the_guarantee_and_transaction_settings_are_read_and_checked() {
        let f = Fixture::new();
        let cfg = f.load(BOTH, &[]).expect("valid");
        assert_eq!(cfg.kafka.guarantee, crate::kafka::Guarantee::AtLeastOnce);
        assert_eq!(
            cfg.kafka.transactions,
            crate::kafka::TransactionSettings::default()
        );
        let body = format!(
            "[kafka]\nguarantee = \"exactly_once\"\n[kafka.transactions]\ncommit_interval = \"250ms\"\nmax_records = 50\ntimeout = \"30s\"\n{BOTH}"
        );
        let cfg = f.load(&body, &[]).expect("valid");
        assert_eq!(cfg.kafka.guarantee, crate::kafka::Guarantee::ExactlyOnce);
        assert_eq!(
            cfg.kafka.transactions,
            crate::kafka::TransactionSettings {
                commit_interval: Duration::from_millis(250),
                max_records: 50,
                timeout: Duration::from_secs(30),
            }
        );
        let refused = |body: &str| {
            f.load(&format!("{body}{BOTH}"), &[])
                .expect_err("refused")
                .to_string()
        };
        let e = refused("[kafka.transactions]\ncommit_interval = \"6s\"\n");
        assert!(
            e.contains("kafka.transactions.commit_interval") && e.contains("6s"),
            "{e}"
        );
        let e = refused("[kafka.transactions]\ntimeout = \"1h\"\n");
        assert!(e.contains("kafka.transactions.timeout"), "{e}");
        let e = refused("[kafka.transactions]\nmax_records = 0\n");
        assert!(e.contains("kafka.transactions.max_records"), "{e}");
        let e = refused("[kafka]\nguarantee = \"exactly-once\"\n");
        assert!(e.contains("exactly-once"), "{e}");
    }

    #[test]
    fn a_policy_bundle_replaces_the_directory_and_must_verify() {
        use crate::policy::bundle::{self, sign, Manifest};
        let f = Fixture::new();
        let policies = f.dir.path().join("policies");
        let set = PolicySet::load(&policies, "data.reflex.decision", Duration::from_secs(1))
            .expect("loads");
        std::fs::write(f.dir.path().join("key"), "bundle-config-test-key\n").expect("key");
        let secret = crate::secret::SecretRef::File("key".into())
            .resolve("k", f.dir.path())
            .expect("secret");
        let signer = sign::SigningKey::new(sign::Algorithm::HS256, &secret, "").expect("key");
        let manifest = Manifest {
            revision: "b-1".into(),
            ..Manifest::default()
        };
        let out = f.dir.path().join("b.tar.gz");
        bundle::build(&policies, &set, &manifest, Some(&signer), &out).expect("built");

        let table = |alg: &str, key: &str| {
            format!("{BOTH}\n[policy.bundle]\nurl = \"file://b.tar.gz\"\nverification_key = \"file:{key}\"\nalgorithm = \"{alg}\"\n")
        };
        let cfg = f.load(&table("HS256", "key"), &[]).expect("valid");
        assert_eq!(cfg.policy.revision(), "b-1");
        assert!(cfg.policy.bundle().is_some());

        std::fs::write(f.dir.path().join("other"), "another-key").expect("key");
        // As the chart sets it: the file leaves the key empty, the environment names it.
        let empty = format!("{BOTH}\n[policy.bundle]\nurl = \"file://b.tar.gz\"\nverification_key = \"\"\nalgorithm = \"HS256\"\n");
        let cfg = f
            .load(
                &empty,
                &[("REFLEX_POLICY_BUNDLE_VERIFICATION_KEY", "file:key")],
            )
            .expect("valid");
        assert_eq!(cfg.policy.revision(), "b-1");
        let err = f
            .load(
                &empty,
                &[("REFLEX_POLICY_BUNDLE_VERIFICATION_KEY", "file:other")],
            )
            .expect_err("the variable's key is used");
        assert!(err.to_string().contains("signature"), "{err}");

        let err = f.load(&table("PS512", "key"), &[]).expect_err("algorithm");
        assert!(
            err.to_string()
                .contains("policy.bundle.algorithm = \"PS512\""),
            "{err}"
        );
        std::fs::write(f.dir.path().join("other"), "another-key").expect("key");
        let err = f
            .load(&table("HS256", "other"), &[])
            .expect_err("wrong key");
        assert!(err.to_string().contains("signature"), "{err}");
        assert!(!err.to_string().contains("another-key"), "{err}");
        let no_ca = format!("{BOTH}\n[policy.bundle]\nurl = \"https://bundles.example/b.tar.gz\"\n[policy.bundle.tls]\nca_file = \"missing-ca.pem\"\n");
        let err = f.load(&no_ca, &[]).expect_err("missing CA");
        assert!(
            err.to_string().contains("policy.bundle.tls.ca_file"),
            "{err}"
        );
        let missing = format!("{BOTH}\n[policy.bundle]\nurl = \"file:///nonexistent/b.tar.gz\"\n");
        let err = f.load(&missing, &[]).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/b.tar.gz"), "{err}");
    }

    #[test]
    fn policy_reload_and_emit_settings() {
        let f = Fixture::new();
        let cfg = f.load(BOTH, &[]).expect("valid");
        assert_eq!(cfg.policy_reload_interval, Duration::from_secs(2));
        assert_eq!(cfg.policy_emit_topic, "reflex.policy.events");
        assert!(cfg.policy_emit_topics.is_empty());
        let body =
            format!("{BOTH}\n[policy]\nreload_interval = \"250ms\"\nemit_topics = [\"alerts\"]\n");
        let cfg = f
            .load(&body, &[("REFLEX_POLICY_EMIT_TOPIC", "breaches")])
            .expect("valid");
        assert_eq!(cfg.policy_reload_interval, Duration::from_millis(250));
        assert_eq!(cfg.policy_emit_topic, "breaches");
        assert_eq!(cfg.policy_emit_topics, ["alerts"]);
        // The policy commands read [policy] without compiling the policies.
        let path = f.dir.path().join("reflex.toml");
        std::fs::write(&path, format!("[topics]\nevents = [\"e\"]\n{body}")).expect("write");
        std::fs::write(
            f.dir.path().join("policies/p.rego"),
            "package reflex\nx := {",
        )
        .expect("write");
        let settings = PolicySettings::load(&path).expect("settings without compiling");
        assert_eq!(settings.dir, f.dir.path().join("policies"));
        assert_eq!(settings.audit_topic, "reflex.audit");
        assert_eq!(settings.redact, "data.reflex.redact");
    }

    #[test]
    fn the_redaction_rule_is_configured_checked_and_can_be_turned_off() {
        let f = Fixture::new();
        let cfg = f.load(BOTH, &[]).expect("valid");
        let rule = cfg.policy.redaction().expect("redaction by default");
        assert_eq!(rule.entry, "data.reflex.redact");
        assert_eq!(rule.reads, crate::policy::Reads::Fields(Vec::new()));
        let msg = f
            .load(BOTH, &[("REFLEX_POLICY_REDACT", "data.reflex.hide")])
            .expect_err("undefined rule")
            .to_string();
        assert!(
            msg.contains("redaction rule data.reflex.hide") && msg.contains("not defined"),
            "{msg}"
        );
        let off = format!("{BOTH}\n[policy]\nredact = \"\"\n");
        assert!(f
            .load(&off, &[])
            .expect("valid")
            .policy
            .redaction()
            .is_none());
        std::fs::write(
            f.dir.path().join("policies/hide.rego"),
            "package reflex.privacy\nhide contains \"data.x\" if input.context.now > \"2026\"\n",
        )
        .expect("write");
        let msg = f
            .load(
                BOTH,
                &[("REFLEX_POLICY_REDACT", "data.reflex.privacy.hide")],
            )
            .expect_err("impure")
            .to_string();
        assert!(
            msg.contains("reads input.context.now through data.reflex.privacy.hide")
                && msg.contains("hide.rego:2"),
            "{msg}"
        );
    }

    #[test]
    fn type_with_two_actions_is_named() {
        let f = Fixture::new();
        let body = format!("{BOTH}\n[actions.ship2]\nkind = \"log\"\ntypes = [\"order.placed\"]\n");
        let msg = f.load(&body, &[]).expect_err("two actions").to_string();
        assert_eq!(
            msg,
            "event type \"order.placed\" has two actions: \"ship\" and \"ship2\"; keep exactly one"
        );
    }

    #[test]
    fn type_without_action_or_schema_is_named() {
        let f = Fixture::new();
        let only_ship = "[actions.ship]\nkind = \"log\"\ntypes = [\"order.placed\"]\n";
        let msg = f.load(only_ship, &[]).expect_err("no action").to_string();
        assert!(msg.starts_with("event type \"refund.requested\""), "{msg}");
        assert!(msg.contains("has no action"), "{msg}");
        let ghost = format!("{BOTH}\n[actions.ghost]\nkind = \"log\"\ntypes = [\"ghost.type\"]\n");
        let msg = f.load(&ghost, &[]).expect_err("no schema").to_string();
        assert!(
            msg.contains("\"ghost.type\"") && msg.contains("has no schema"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_key_and_bad_values_are_named() {
        let f = Fixture::new();
        let msg = f
            .load(&format!("{BOTH}\n[kafka]\nbrokerz = \"x\"\n"), &[])
            .expect_err("unknown key")
            .to_string();
        assert!(msg.contains("brokerz"), "{msg}");
        let msg = f
            .load(
                &format!("{BOTH}\n[roles.actions]\nshutdown_timeout = \"soon\"\n"),
                &[],
            )
            .expect_err("bad duration")
            .to_string();
        assert!(
            msg.contains("shutdown_timeout") || msg.contains("soon"),
            "{msg}"
        );
        let msg = f
            .load(&BOTH.replace("kind = \"log\"", "kind = \"mail\""), &[])
            .expect_err("bad kind")
            .to_string();
        assert!(
            msg.contains("\"note\"") && msg.contains("\"mail\""),
            "{msg}"
        );
    }

    #[test]
    fn keys_of_another_kind_and_missing_keys_name_the_action() {
        let f = Fixture::new();
        let body = BOTH.replace(
            "type = \"shipment.requested\"",
            "type = \"shipment.requested\"\nurl = \"http://h/\"",
        );
        let msg = f.load(&body, &[]).expect_err("url on emit").to_string();
        assert!(
            msg.contains("action \"ship\" (kind \"emit\")") && msg.contains("`url`"),
            "{msg}"
        );
        let body = BOTH.replace("topic = \"events.shipments\"\n", "");
        let msg = f
            .load(&body, &[])
            .expect_err("emit without topic")
            .to_string();
        assert!(
            msg.contains("action \"ship\"") && msg.contains("`topic`"),
            "{msg}"
        );
        let body = BOTH.replace("kind = \"log\"\n", "");
        let msg = f.load(&body, &[]).expect_err("no kind").to_string();
        assert!(
            msg.contains("action \"note\"") && msg.contains("`kind`"),
            "{msg}"
        );
        // An override from the environment is checked like the file.
        let msg = f
            .load(BOTH, &[("REFLEX_ACTIONS_NOTE_KIND", "emit")])
            .expect_err("kind from the environment")
            .to_string();
        assert!(
            msg.contains("action \"note\" (kind \"emit\")") && msg.contains("`topic`"),
            "{msg}"
        );
    }

    #[test]
    fn broken_schema_and_rego_are_fatal() {
        let f = Fixture::new();
        std::fs::write(
            f.dir.path().join("policies/broken.rego"),
            "package reflex\nx := {",
        )
        .expect("write");
        let msg = f.load(BOTH, &[]).expect_err("rego").to_string();
        assert!(
            msg.contains("broken.rego") && msg.contains("does not parse"),
            "{msg}"
        );
        let f = Fixture::new();
        std::fs::write(
            f.dir.path().join("schemas/order.placed.json"),
            r#"{"type":"objekt"}"#,
        )
        .expect("write");
        let msg = f.load(BOTH, &[]).expect_err("schema").to_string();
        assert!(
            msg.contains("order.placed") && msg.contains("does not compile"),
            "{msg}"
        );
    }

    #[test]
    fn secrets_are_references_and_never_shown() {
        let f = Fixture::new();
        let msg = f
            .load(
                &format!("{BOTH}\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n"),
                &[],
            )
            .expect_err("inline secret property")
            .to_string();
        assert!(
            msg.contains("sasl.password") && msg.contains("[kafka.security]"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");

        std::fs::write(f.dir.path().join("kafka-password"), "k4fka-s3cret\n").expect("write");
        std::fs::write(f.dir.path().join("registry-token"), "r3gistry-t0ken").expect("write");
        let cfg = f
            .load(
                &format!(
                    "{BOTH}\n[kafka.security]\nprotocol = \"sasl_ssl\"\nmechanism = \"SCRAM-SHA-256\"\nusername = \"reflex\"\npassword = \"file:kafka-password\"\n[registry]\nurl = \"https://registry.example.com\"\ntoken = \"file:registry-token\"\n"
                ),
                &[],
            )
            .expect("valid");
        assert_eq!(cfg.kafka.security.describe(), "SASL_SSL/SCRAM-SHA-256");
        let shown = format!("{:?} {:?}", cfg.kafka, cfg.registry);
        assert!(
            !shown.contains("k4fka-s3cret") && !shown.contains("r3gistry-t0ken"),
            "{shown}"
        );
        assert!(shown.contains("file:kafka-password"), "{shown}");
    }
}
