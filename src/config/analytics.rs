//! `[analytics]`: where the analyses are declared and how the analytics role runs them.
//!
//! Every key is documented in `config/reflex.toml`. The analyses themselves are validated here
//! (see [`crate::analytics::spec`]) together with what they need from the rest of the
//! configuration: a schema for each emitted type (the existing rules then demand its one
//! action), and a warning when the findings' topic is not among the event topics (the actions
//! role would not read them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::analytics::spec::{load_dir, Analysis, SpecError};
use crate::schema::SchemaRegistry;

/// `[analytics]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAnalytics {
    /// Directory of `*.toml` analyses (relative to the config file); missing: no analyses.
    pub dir: String,
    /// Consumer group of the analytics role.
    pub group_id: String,
    /// Topic the findings are published to; one of `topics.events`.
    pub topic: String,
    /// Compacted topic of the state checkpoints, keyed by analysis and input partition.
    pub changelog_topic: String,
    /// Most groups one analysis keeps per input partition; the least recently used go first.
    pub max_groups: usize,
    /// An input partition without a record this long stops holding the watermark back.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often state is checkpointed (and the input offsets committed).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Also send late events to the dead-letter topic with reason `late`.
    pub dead_letter_late: bool,
    /// Delete the repartition topics' records below the committed offsets after each
    /// checkpoint.
    pub purge_repartition: bool,
}

impl Default for RawAnalytics {
    fn default() -> Self {
        Self {
            dir: "../analytics".into(),
            group_id: "reflex-analytics".into(),
            topic: "reflex.analytics".into(),
            changelog_topic: "reflex.analytics.changelog".into(),
            max_groups: 100_000,
            idle_timeout: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(5),
            dead_letter_late: false,
            purge_repartition: true,
        }
    }
}

/// Validated analytics settings and the analyses.
#[derive(Debug, Clone)]
pub struct AnalyticsConfig {
    /// The analyses' directory.
    pub dir: PathBuf,
    /// The analyses, sorted by name.
    pub analyses: Arc<[Analysis]>,
    /// Consumer group of the analytics role.
    pub group_id: String,
    /// Topic of the findings.
    pub topic: String,
    /// Topic of the state checkpoints.
    pub changelog_topic: String,
    /// Most groups per analysis and input partition.
    pub max_groups: usize,
    /// When an input partition counts as idle.
    pub idle_timeout: Duration,
    /// How often state is checkpointed.
    pub checkpoint_interval: Duration,
    /// Late events also go to the dead-letter topic.
    pub dead_letter_late: bool,
    /// Repartition records below the committed offsets are deleted after each checkpoint.
    pub purge_repartition: bool,
    /// Problems that do not stop reflex (`reflex check` lists them).
    pub warnings: Vec<String>,
}

impl AnalyticsConfig {
    /// Loads the analyses under `base` and checks them against the schemas and topics.
    pub fn new(
        raw: RawAnalytics,
        base: &Path,
        schemas: &SchemaRegistry,
        schema_dir: &Path,
        events: &[String],
    ) -> Result<Self, ConfigError> {
        let dir = base.join(&raw.dir);
        let analyses = load_dir(&dir)?;
        if raw.max_groups == 0 {
            return Err(ConfigError::Invalid {
                key: "analytics.max_groups",
                value: "0".into(),
                why: "must be at least 1",
            });
        }
        if raw.checkpoint_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "analytics.checkpoint_interval",
                value: "\"0s\"".into(),
                why: "must be longer than 0s",
            });
        }
        for analysis in &analyses {
            if !schemas.types().any(|t| t == analysis.emit) {
                return Err(SpecError::Invalid {
                    path: analysis.file.clone(),
                    analysis: analysis.name.clone(),
                    key: "emit".into(),
                    why: format!(
                        "event type \"{}\" has no schema: add {}/{}.json (and give it an action)",
                        analysis.emit,
                        schema_dir.display(),
                        analysis.emit
                    ),
                }
                .into());
            }
        }
        let mut warnings = Vec::new();
        if !analyses.is_empty() && !events.contains(&raw.topic) {
            warnings.push(format!(
                "analytics.topic = \"{}\" is not among topics.events: the actions role does not act on the analyses' findings; add it there",
                raw.topic
            ));
        }
        Ok(Self {
            dir,
            analyses: analyses.into(),
            group_id: raw.group_id,
            topic: raw.topic,
            changelog_topic: raw.changelog_topic,
            max_groups: raw.max_groups,
            idle_timeout: raw.idle_timeout,
            checkpoint_interval: raw.checkpoint_interval,
            dead_letter_late: raw.dead_letter_late,
            purge_repartition: raw.purge_repartition,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    /// A directory with schemas, a policy and one analysis emitting `emit`.
    fn fixture(emit: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["schemas", "policies", "analyses"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        for ty in ["order.placed", "order.rate"] {
            std::fs::write(dir.path().join(format!("schemas/{ty}.json")), "{}").expect("write");
        }
        std::fs::write(
            dir.path().join("policies/p.rego"),
            "package reflex\nredact := []\ndecision := {\"allow\": true, \"reasons\": [], \"obligations\": {}}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("analyses/a.toml"),
            format!("[rate]\ntypes = [\"order.placed\"]\nwindow = {{ tumbling = \"1m\" }}\ncondition = \"count > 5\"\nemit = \"{emit}\"\n"),
        )
        .expect("write");
        dir
    }

    fn load(dir: &tempfile::TempDir, events: &str, extra: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[topics]\nevents = [{events}]\n[actions.all]\nkind = \"log\"\ntypes = [\"order.placed\", \"order.rate\"]\n[analytics]\ndir = \"analyses\"\n{extra}"
        );
        Config::from_toml(&text, &dir.path().join("reflex.toml"), Vec::new())
    }

    #[test]
    fn analyses_load_with_their_settings() {
        let dir = fixture("order.rate");
        let config = load(
            &dir,
            "\"events.orders\", \"reflex.analytics\"",
            "max_groups = 7\nidle_timeout = \"2s\"\n",
        )
        .expect("valid");
        assert_eq!(config.analytics.analyses.len(), 1);
        assert_eq!(config.analytics.analyses[0].name, "rate");
        assert_eq!(config.analytics.max_groups, 7);
        assert_eq!(
            config.analytics.idle_timeout,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(config.analytics.topic, "reflex.analytics");
    }

    #[test]
    fn an_emitted_type_without_schema_is_refused_and_a_topic_nobody_reads_warned_of() {
        let dir = fixture("order.storm");
        let e = load(&dir, "\"events.orders\", \"reflex.analytics\"", "")
            .expect_err("no schema")
            .to_string();
        assert!(e.contains("a.toml: analysis \"rate\", key emit"), "{e}");
        assert!(e.contains("\"order.storm\" has no schema"), "{e}");

        let dir = fixture("order.rate");
        let config = load(&dir, "\"events.orders\"", "").expect("a warning only");
        let w = config.warnings.join("\n");
        assert!(w.contains("analytics.topic = \"reflex.analytics\""), "{w}");
        assert!(w.contains("topics.events"), "{w}");
    }

    #[test]
    fn the_findings_topic_is_among_the_topics_written_unless_it_is_an_event_topic() {
        let dir = fixture("order.rate");
        let config = load(&dir, "\"events.orders\"", "").expect("valid");
        assert!(
            config
                .written_topics()
                .contains(&"reflex.analytics".to_owned()),
            "{:?}",
            config.written_topics()
        );
        let config = load(&dir, "\"events.orders\", \"reflex.analytics\"", "").expect("valid");
        assert!(
            !config
                .written_topics()
                .contains(&"reflex.analytics".to_owned()),
            "an event topic is created as one: {:?}",
            config.written_topics()
        );
    }
}
