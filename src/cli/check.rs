//! `reflex check`: what the validated configuration holds (schemas, policies, the action of each
//! event type and its lookups), without a broker.

use std::fmt;

use serde::Serialize;

use super::{human, Report};
use crate::config::Config;

/// What `reflex check` found: the configuration loaded, and what it holds.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The configuration file.
    pub config: String,
    /// Problems that do not stop reflex.
    pub warnings: Vec<String>,
    /// The schema directory and its event types.
    pub schemas: SchemaSummary,
    /// The policy directory, its modules and revision.
    pub policies: PolicySummary,
    /// With `--connect`: each configured endpoint and whether it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<crate::connectivity::Endpoint>>,
    /// The action of each event type, sorted by type.
    pub actions: Vec<TypeAction>,
    /// The publisher keys that verify record signatures: `<key id> (<algorithm>)`.
    pub publishers: Vec<String>,
    /// The analyses in the analytics directory: `<name>: <types> -> <emitted type>`.
    pub analyses: Vec<String>,
}

/// The schemas of a [`CheckReport`].
#[derive(Debug, Clone, Serialize)]
pub struct SchemaSummary {
    /// The schema directory.
    pub dir: String,
    /// The event types that have a schema.
    pub types: Vec<String>,
}

/// The policies of a [`CheckReport`].
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    /// The policy directory.
    pub dir: String,
    /// How many Rego modules it holds.
    pub modules: usize,
    /// Its revision (content hash).
    pub revision: String,
    /// The redaction rule and the event fields it reads, or `off`.
    pub redaction: String,
}

/// One event type's action, and its enrichment lookups.
#[derive(Debug, Clone, Serialize)]
pub struct TypeAction {
    /// The event type.
    pub event_type: String,
    /// The action's name.
    pub action: String,
    /// `emit`, `log` or `http`.
    pub kind: &'static str,
    /// The request of an `http` action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSummary>,
    /// The type's lookups.
    pub enrichment: Vec<LookupSummary>,
}

/// The request an `http` action makes.
#[derive(Debug, Clone, Serialize)]
pub struct HttpSummary {
    /// The method.
    pub method: String,
    /// The URL template.
    pub url: String,
    /// Attempts in all.
    pub max_attempts: u32,
}

/// One enrichment lookup.
#[derive(Debug, Clone, Serialize)]
pub struct LookupSummary {
    /// Its name (the key in `input.enrichment`).
    pub name: String,
    /// The URL template of the GET.
    pub url: String,
    /// The request's time limit, e.g. `1s`.
    pub timeout: String,
    /// How long an answer is reused, e.g. `1m`.
    pub ttl: String,
    /// `deny`, `continue` or `retry`.
    pub on_error: &'static str,
}

/// The report of `reflex check` on a configuration that loaded.
pub fn report(config: &Config) -> CheckReport {
    let actions = config
        .actions
        .iter()
        .map(|(ty, action)| TypeAction {
            event_type: ty.to_owned(),
            action: action.name.clone(),
            kind: action.kind.name(),
            http: action.http().map(|http| HttpSummary {
                method: http.method.to_string(),
                url: http.url.as_str().to_owned(),
                max_attempts: http.retry.max_attempts,
            }),
            enrichment: config
                .enrichment
                .get(ty)
                .iter()
                .map(|lookup| LookupSummary {
                    name: lookup.name.clone(),
                    url: lookup.url.as_str().to_owned(),
                    timeout: human(lookup.timeout),
                    ttl: human(lookup.ttl),
                    on_error: lookup.on_error.name(),
                })
                .collect(),
        })
        .collect();
    CheckReport {
        config: config.path.display().to_string(),
        warnings: config.warnings.clone(),
        schemas: SchemaSummary {
            dir: config.schema_dir.display().to_string(),
            types: config.schemas.types().map(str::to_owned).collect(),
        },
        policies: PolicySummary {
            dir: config.policy_dir.display().to_string(),
            modules: config.policy.modules().len(),
            revision: config.policy.revision().to_owned(),
            redaction: config.policy.redaction().map_or_else(
                || "off".to_owned(),
                |r| format!("{} (reads {})", r.entry, r.reads),
            ),
        },
        actions,
        publishers: config
            .publishers
            .keys()
            .map(|(id, algorithm)| format!("{id} ({})", algorithm.name()))
            .collect(),
        endpoints: None,
        analyses: config
            .analytics
            .analyses
            .iter()
            .map(|a| format!("{}: {} -> {}", a.name, a.types.join(", "), a.emit))
            .collect(),
    }
}

impl Report for CheckReport {
    fn success(&self) -> bool {
        self.endpoints
            .as_ref()
            .is_none_or(|e| e.iter().all(crate::connectivity::Endpoint::ok))
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ok", self.config)?;
        for warning in &self.warnings {
            write!(f, "\n  warning: {warning}")?;
        }
        write!(
            f,
            "\n  schemas   {} ({} types)",
            self.schemas.dir,
            self.schemas.types.len()
        )?;
        write!(
            f,
            "\n  policies  {} ({} modules, revision {})",
            self.policies.dir, self.policies.modules, self.policies.revision
        )?;
        write!(f, "\n  redaction {}", self.policies.redaction)?;
        for a in &self.actions {
            match &a.http {
                Some(http) => write!(
                    f,
                    "\n  {} -> {} (http {} {}, {} attempts)",
                    a.event_type, a.action, http.method, http.url, http.max_attempts
                )?,
                None => write!(f, "\n  {} -> {} ({})", a.event_type, a.action, a.kind)?,
            }
            for l in &a.enrichment {
                write!(
                    f,
                    "\n    enrichment {}: GET {} (timeout {}, cached {}, on_error = {})",
                    l.name, l.url, l.timeout, l.ttl, l.on_error
                )?;
            }
        }
        if !self.publishers.is_empty() {
            write!(f, "\n  publishers {}", self.publishers.join(", "))?;
        }
        for analysis in &self.analyses {
            write!(f, "\n  analysis {analysis}")?;
        }
        if let Some(endpoints) = &self.endpoints {
            write!(f, "\n  endpoints")?;
            for endpoint in endpoints {
                write!(f, "\n{endpoint}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with an `emit` action and an `http` action with one lookup.
    fn config(dir: &std::path::Path) -> Config {
        for sub in ["schemas", "policies"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        for ty in ["order.placed", "refund.requested"] {
            std::fs::write(dir.join(format!("schemas/{ty}.json")), "{}").expect("write");
        }
        std::fs::write(
            dir.join("policies/p.rego"),
            "package reflex\nredact := []\ndecision := {\"allow\": true, \"reasons\": [], \"obligations\": {}}\n",
        )
        .expect("write");
        let text = r#"
[topics]
events = ["e"]
[actions.ship]
kind = "emit"
types = ["order.placed"]
topic = "shipments"
type = "shipment.requested"
[actions.refund]
kind = "http"
types = ["refund.requested"]
url = "http://127.0.0.1:8090/refunds/{id}"
max_attempts = 3
[[enrichment."refund.requested".lookups]]
name = "customer"
url = "http://127.0.0.1:8091/customers/{subject}"
ttl = "5m"
"#;
        let vars = [("REFLEX_NO_SUCH_KEY".to_owned(), "x".to_owned())];
        Config::from_toml(text, &dir.join("reflex.toml"), vars).expect("valid")
    }

    #[test]
    fn text_and_json_name_each_type_its_action_and_lookups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let report = report(&config);
        let d = dir.path().display();
        let revision = config.policy.revision();
        assert_eq!(
            report.to_string(),
            format!(
                "{d}/reflex.toml: ok\n\
                 \x20 warning: environment variable REFLEX_NO_SUCH_KEY names no configuration key; it is ignored\n\
                 \x20 schemas   {d}/schemas (2 types)\n\
                 \x20 policies  {d}/policies (1 modules, revision {revision})\n\
                 \x20 redaction data.reflex.redact (reads nothing of the event)\n\
                 \x20 order.placed -> ship (emit)\n\
                 \x20 refund.requested -> refund (http POST http://127.0.0.1:8090/refunds/{{id}}, 3 attempts)\n\
                 \x20   enrichment customer: GET http://127.0.0.1:8091/customers/{{subject}} (timeout 1s, cached 5m, on_error = deny)"
            )
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["actions"][1]["http"]["max_attempts"], 3);
        assert_eq!(json["actions"][1]["enrichment"][0]["ttl"], "5m");
        assert_eq!(json["actions"][0]["http"], serde_json::Value::Null);
        assert_eq!(json["schemas"]["types"][0], "order.placed");
        assert!(report.success());
    }
}
