//! Rego policies evaluated in process with regorus.
//!
//! `policies/` holds `*.rego` modules and `*.json` data files (each file's object is merged into
//! `data`). They are loaded once into a template [`regorus::Engine`]; each worker clones it into
//! an [`Evaluator`] and evaluates one entry rule (by default `data.reflex.decision`) per event.
//! The decision contract is an object `{allow: bool, reasons: [string], obligations: object}`.
//! Anything else fails closed: undefined, an evaluation error, the time limit, or a malformed
//! decision is a deny with its own [`Failure`].

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Why the policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or the directory could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A Rego module does not parse or compile.
    #[error("policy {path} does not parse: {message}")]
    Parse {
        /// The module.
        path: PathBuf,
        /// regorus's message, with line and column.
        message: String,
    },
    /// A data file is not a JSON object.
    #[error("policy data {path} is not a JSON object: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The directory holds no Rego module.
    #[error("no *.rego policy in {0}: without a policy every event would be denied")]
    Empty(PathBuf),
    /// The entry rule's package is not defined by any module.
    #[error("policy entry \"{entry}\" names package \"{package}\", which no module in {dir} defines (packages: {found})")]
    NoEntry {
        /// The configured entry rule.
        entry: String,
        /// Its package.
        package: String,
        /// The policy directory.
        dir: PathBuf,
        /// The packages that exist.
        found: String,
    },
}

/// Why a decision is a deny without the policy saying so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The entry rule is undefined for this input.
    Undefined,
    /// Evaluation raised an error.
    Error,
    /// Evaluation exceeded the time limit.
    Timeout,
    /// The entry rule's value does not follow the decision contract.
    Malformed,
}

impl Failure {
    /// The reason code recorded in the audit trail.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Undefined => "policy_undefined",
            Self::Error => "policy_error",
            Self::Timeout => "policy_timeout",
            Self::Malformed => "policy_malformed_decision",
        }
    }
}

/// The outcome of evaluating the policy for one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Whether the event may be actioned.
    pub allow: bool,
    /// Why, as the policy phrased it (or the failure's reason code).
    pub reasons: Vec<String>,
    /// What must be done alongside the action (e.g. `redact`), as the policy returned it.
    pub obligations: Map<String, Value>,
    /// Set when the deny comes from failing closed rather than from the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Detail of the failure (the evaluation error message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Decision {
    /// A deny caused by a failure.
    pub fn failed(failure: Failure, detail: Option<String>) -> Self {
        Self {
            allow: false,
            reasons: vec![failure.reason().to_owned()],
            obligations: Map::new(),
            failure: Some(failure),
            detail,
        }
    }

    /// Reads a decision document; anything off-contract is a [`Failure::Malformed`] deny.
    pub fn from_document(doc: &Value) -> Self {
        let malformed = |why: &str| Self::failed(Failure::Malformed, Some(why.to_owned()));
        let Some(obj) = doc.as_object() else {
            return malformed("decision is not an object");
        };
        let Some(allow) = obj.get("allow").and_then(Value::as_bool) else {
            return malformed("decision.allow is not a boolean");
        };
        let reasons = match obj.get("reasons") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut reasons = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(s) => reasons.push(s.to_owned()),
                        None => return malformed("decision.reasons holds a non-string"),
                    }
                }
                reasons.sort();
                reasons
            }
            Some(_) => return malformed("decision.reasons is not an array"),
        };
        let obligations = match obj.get("obligations") {
            None => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(_) => return malformed("decision.obligations is not an object"),
        };
        Self {
            allow,
            reasons,
            obligations,
            failure: None,
            detail: None,
        }
    }
}

/// The loaded policy set: a template engine and the revision it was built from.
#[derive(Clone)]
pub struct PolicySet {
    engine: regorus::Engine,
    entry: String,
    revision: String,
    modules: Vec<PathBuf>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("entry", &self.entry)
            .field("revision", &self.revision)
            .field("modules", &self.modules)
            .finish()
    }
}

impl PolicySet {
    /// Loads every `*.rego` and `*.json` file under `dir` (recursively, sorted by path).
    pub fn load(dir: &Path, entry: &str, timeout: Duration) -> Result<Self, PolicyError> {
        let mut files = Vec::new();
        collect(dir, &mut files)?;
        files.sort();
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(false);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: timeout,
            check_interval: NonZeroU32::MIN,
        });
        let mut hasher = Sha256::new();
        let mut modules = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
                path: path.clone(),
                source,
            })?;
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            hasher.update(rel.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            if path.extension().is_some_and(|e| e == "rego") {
                engine
                    .add_policy(rel, text)
                    .map_err(|e| PolicyError::Parse {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                modules.push(path);
            } else {
                let data = regorus::Value::from_json_str(&text).map_err(|e| PolicyError::Data {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                if data.as_object().is_err() {
                    return Err(PolicyError::Data {
                        path,
                        message: "top level is not an object".into(),
                    });
                }
                engine.add_data(data).map_err(|e| PolicyError::Data {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            }
        }
        if modules.is_empty() {
            return Err(PolicyError::Empty(dir.to_owned()));
        }
        let package = entry
            .rsplit_once('.')
            .map(|(p, _)| p)
            .unwrap_or(entry)
            .to_owned();
        let packages = engine.get_packages().unwrap_or_default();
        if !packages.contains(&package) {
            return Err(PolicyError::NoEntry {
                entry: entry.to_owned(),
                package,
                dir: dir.to_owned(),
                found: packages.join(", "),
            });
        }
        Ok(Self {
            engine,
            entry: entry.to_owned(),
            revision: format!("sha256:{}", hex::encode(hasher.finalize())),
            modules,
        })
    }

    /// The content hash of every policy and data file.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The Rego modules loaded.
    pub fn modules(&self) -> &[PathBuf] {
        &self.modules
    }

    /// A per-worker evaluator with its own copy of the engine.
    pub fn evaluator(&self) -> Evaluator {
        Evaluator {
            engine: self.engine.clone(),
            entry: self.entry.clone(),
            revision: self.revision.clone(),
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| PolicyError::Read {
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rego" || e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Evaluates the entry rule; owned by one worker, reused for every event.
pub struct Evaluator {
    engine: regorus::Engine,
    entry: String,
    revision: String,
}

impl Evaluator {
    /// The revision this evaluator runs.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Decides on one input document, failing closed.
    pub fn decide(&mut self, input: regorus::Value) -> Decision {
        self.engine.set_input(input);
        match self.engine.eval_rule(self.entry.clone()) {
            Ok(regorus::Value::Undefined) => Decision::failed(Failure::Undefined, None),
            Ok(value) => match serde_json::to_value(&value) {
                Ok(doc) => Decision::from_document(&doc),
                Err(e) => Decision::failed(Failure::Malformed, Some(e.to_string())),
            },
            Err(e) => {
                let timed_out = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<regorus::LimitError>(),
                        Some(regorus::LimitError::TimeLimitExceeded { .. })
                    )
                }) || e.to_string().contains("exceeded time limit");
                let failure = if timed_out {
                    Failure::Timeout
                } else {
                    Failure::Error
                };
                Decision::failed(failure, Some(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(files: &[(&str, &str)], timeout: Duration) -> Result<PolicySet, PolicyError> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write policy");
        }
        PolicySet::load(dir.path(), "data.reflex.decision", timeout)
    }

    const POLICY: &str = r#"package reflex
decision := {"allow": count(deny) == 0, "reasons": deny, "obligations": {}}
deny contains "too big" if input.amount > data.limits.max
deny contains msg if { input.amount == 13; msg := sprintf("%v", [1 / 0]) }
"#;

    fn input(v: Value) -> regorus::Value {
        regorus::Value::from(v)
    }

    #[test]
    fn allows_and_denies_with_data() {
        let set = set(
            &[
                ("p.rego", POLICY),
                ("limits.json", r#"{"limits":{"max":10}}"#),
            ],
            Duration::from_secs(1),
        )
        .expect("loads");
        assert!(set.revision().starts_with("sha256:"));
        let mut ev = set.evaluator();
        let d = ev.decide(input(json!({"amount": 5})));
        assert!(
            d.allow && d.reasons.is_empty() && d.failure.is_none(),
            "{d:?}"
        );
        let d = ev.decide(input(json!({"amount": 50})));
        assert!(!d.allow);
        assert_eq!(d.reasons, ["too big"]);
    }

    #[test]
    fn fails_closed() {
        let undefined = "package reflex\ndecision := {\"allow\": true} if input.x == 1\n";
        let mut ev = set(&[("p.rego", undefined)], Duration::from_secs(1))
            .expect("loads")
            .evaluator();
        let d = ev.decide(input(json!({"x": 2})));
        assert_eq!((d.allow, d.failure), (false, Some(Failure::Undefined)));
        let malformed = "package reflex\ndecision := {\"allow\": \"yes\"}\n";
        let mut ev = set(&[("p.rego", malformed)], Duration::from_secs(1))
            .expect("loads")
            .evaluator();
        assert_eq!(
            ev.decide(input(json!({}))).failure,
            Some(Failure::Malformed)
        );
    }

    #[test]
    fn revision_changes_with_content() {
        let a = set(
            &[
                ("p.rego", POLICY),
                ("limits.json", r#"{"limits":{"max":10}}"#),
            ],
            Duration::from_secs(1),
        )
        .expect("loads");
        let b = set(
            &[
                ("p.rego", POLICY),
                ("limits.json", r#"{"limits":{"max":11}}"#),
            ],
            Duration::from_secs(1),
        )
        .expect("loads");
        assert_ne!(a.revision(), b.revision());
    }

    #[test]
    fn load_errors_name_the_problem() {
        let err = set(
            &[("bad.rego", "package reflex\ndecision := {")],
            Duration::from_secs(1),
        )
        .expect_err("parse");
        assert!(err.to_string().contains("bad.rego"), "{err}");
        let err = set(
            &[("other.rego", "package other\nx := 1\n")],
            Duration::from_secs(1),
        )
        .expect_err("no entry");
        assert!(
            err.to_string().contains("data.reflex") && err.to_string().contains("data.other"),
            "{err}"
        );
        let err = set(&[], Duration::from_secs(1)).expect_err("empty");
        assert!(err.to_string().contains("no *.rego"), "{err}");
    }

    #[test]
    fn from_document_checks_the_contract() {
        let d = Decision::from_document(
            &json!({"allow": true, "reasons": ["b", "a"], "obligations": {"redact": ["x"]}}),
        );
        assert_eq!(d.reasons, ["a", "b"]);
        assert!(d.allow && d.obligations.contains_key("redact"));
        for bad in [
            json!(1),
            json!({"allow": 1}),
            json!({"allow": true, "reasons": [1]}),
            json!({"allow": true, "obligations": []}),
        ] {
            assert_eq!(
                Decision::from_document(&bad).failure,
                Some(Failure::Malformed),
                "{bad}"
            );
        }
    }
}
