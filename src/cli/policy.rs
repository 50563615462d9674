//! `reflex policy check|status|test`: the policy directory compiled, compared with the revisions
//! the workers decide with, and tested. These need only the `[policy]` table
//! ([`PolicySettings`]), so they work on a policy set that does not compile.

use std::fmt;
use std::path::Path;

use serde::{Serialize, Serializer};

use super::Report;
use crate::config::PolicySettings;
use crate::policy::explain::{self, Explanation};
use crate::policy::testing::{self, TestError};
use crate::policy::{files, PolicyError, PolicySet};
use crate::replay::status::PolicyStatus;
use crate::replay::ReplayError;

/// `reflex policy check`: whether the policy set in a directory compiles, and its revision.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyCheckReport {
    /// The policy directory.
    pub dir: String,
    /// Its revision (content hash), or `unreadable` when its files cannot be read.
    pub revision: String,
    /// What compiling it gave.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Whether a policy set compiles.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Verdict {
    /// It compiles: workers would load it.
    Ok {
        /// The entry rule.
        entry: String,
        /// The parts of the input the entry rule can read (workers build only those).
        entry_reads: String,
        /// The redaction rule, or `off`.
        redaction: String,
        /// The event fields the redaction rule reads.
        redaction_reads: Option<String>,
        /// How many Rego modules.
        modules: usize,
        /// The packages it defines.
        packages: Vec<String>,
    },
    /// It does not: workers keep their running revision.
    Refused {
        /// Why, naming the file.
        error: String,
    },
}

/// Compiles the policy set in `dir` as a worker would.
pub fn check(dir: &Path, settings: &PolicySettings) -> PolicyCheckReport {
    let loaded = PolicySet::load(dir, &settings.entry, settings.timeout)
        .and_then(|set| set.with_redaction(&settings.redact));
    let (revision, verdict) = match loaded {
        Ok(set) => (
            set.revision().to_owned(),
            Verdict::Ok {
                entry: set.entry().to_owned(),
                entry_reads: set.input_reads().map_or_else(
                    || "the whole input".to_owned(),
                    |reads| match reads.paths() {
                        paths if paths.is_empty() => "nothing of the input".to_owned(),
                        paths => paths.join(", "),
                    },
                ),
                redaction: set
                    .redaction()
                    .map_or_else(|| "off".to_owned(), |r| r.entry.clone()),
                redaction_reads: set.redaction().map(|r| r.reads.to_string()),
                modules: set.modules().len(),
                packages: set.packages(),
            },
        ),
        Err(e) => {
            // The error already says what cannot be read or compiled.
            let revision = files::revision(dir).unwrap_or_else(|_| "unreadable".into());
            (
                revision,
                Verdict::Refused {
                    error: e.to_string(),
                },
            )
        }
    };
    PolicyCheckReport {
        dir: dir.display().to_string(),
        revision,
        verdict,
    }
}

impl Report for PolicyCheckReport {
    fn success(&self) -> bool {
        matches!(self.verdict, Verdict::Ok { .. })
    }
}

impl fmt::Display for PolicyCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Ok {
                entry,
                entry_reads,
                redaction,
                redaction_reads,
                modules,
                packages,
            } => {
                writeln!(f, "{}: ok, revision {}", self.dir, self.revision)?;
                writeln!(f, "  entry     {entry} (reads {entry_reads})")?;
                match redaction_reads {
                    Some(reads) => writeln!(f, "  redaction {redaction} (reads {reads})")?,
                    None => writeln!(f, "  redaction {redaction}")?,
                }
                writeln!(f, "  modules   {modules}")?;
                write!(f, "  packages  {}", packages.join(", "))
            }
            Verdict::Refused { error } => {
                writeln!(f, "{}: REFUSED, revision {}", self.dir, self.revision)?;
                writeln!(f, "  {error}")?;
                write!(
                    f,
                    "  running workers keep their revision until this compiles"
                )
            }
        }
    }
}

/// Why `reflex policy eval` could not decide.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The policy set does not load.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The input is not JSON.
    #[error("the input is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The input is neither a policy input `{event, …}` nor a CloudEvent.
    #[error("the input is not a CloudEvent: {0}")]
    NotEvent(#[from] crate::event::DecodeError),
    /// `--now` does not parse.
    #[error("--now \"{0}\" is not an RFC 3339 time (2026-11-26T08:00:00Z)")]
    Now(String),
}

/// `reflex policy eval`: the decision on one input and what each package contributed. `text`
/// is a full policy input (`{event, publisher, enrichment, context}`), used as it is, or a
/// CloudEvent, wrapped as the worker wraps it with `context.now` = `now` (RFC 3339; default:
/// now), unsigned or, with `signed_by`, as if its signature verified for that key id.
pub fn eval(
    dir: &Path,
    settings: &PolicySettings,
    text: &str,
    now: Option<&str>,
    signed_by: Option<&str>,
) -> Result<Explanation, EvalError> {
    let set = PolicySet::load(dir, &settings.entry, settings.timeout)?
        .with_redaction(&settings.redact)?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(EvalError::NotJson)?;
    let document = if value.get("event").is_some() {
        value
    } else {
        let now = match now {
            Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|_| EvalError::Now(t.to_owned()))?
                .with_timezone(&chrono::Utc),
            None => chrono::Utc::now(),
        };
        let publisher = signed_by.map_or_else(crate::publisher::Publisher::unsigned, |id| {
            crate::publisher::Publisher {
                verified: true,
                key_id: Some(id.to_owned()),
                status: crate::publisher::Status::Verified,
                claimed_key_id: Some(id.to_owned()),
            }
        });
        crate::ingest::hand_document(text, &now, &publisher)?
    };
    Ok(explain::explain(&set, &document))
}

/// `reflex policy status`: the revision workers should run (the directory's, or the bundle's
/// when `[policy.bundle] url` is set) against the workers' (from the tail of the audit topic,
/// `tail` records per partition).
pub fn status(settings: &PolicySettings, tail: i64) -> Result<PolicyStatus, ReplayError> {
    crate::replay::status::status(settings, tail)
}

impl Report for PolicyStatus {
    fn success(&self) -> bool {
        self.refused.is_none()
    }
}

/// `reflex policy test`: the Rego `test_*` rules and the YAML cases of a policy directory.
#[derive(Debug, Clone)]
pub struct PolicyTestReport(pub testing::Report);

/// Runs the tests of the policy set in `dir`.
pub fn test(dir: &Path, settings: &PolicySettings) -> Result<PolicyTestReport, TestError> {
    testing::run(dir, &settings.entry, settings.timeout).map(PolicyTestReport)
}

impl Report for PolicyTestReport {
    fn success(&self) -> bool {
        self.0.failed() == 0
    }
}

impl fmt::Display for PolicyTestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for PolicyTestReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Test<'a> {
            name: &'a str,
            passed: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            want: Option<&'a serde_json::Value>,
            got: Option<&'a serde_json::Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Tests<'a> {
            passed: usize,
            failed: usize,
            tests: Vec<Test<'a>>,
        }
        let failed = self.0.failed();
        Tests {
            passed: self.0.outcomes.len() - failed,
            failed,
            tests: self
                .0
                .outcomes
                .iter()
                .map(|o| Test {
                    name: &o.name,
                    passed: o.passed,
                    want: o.want.as_ref(),
                    got: o.got.as_ref(),
                    error: o.error.as_deref(),
                })
                .collect(),
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::KafkaConfig;

    fn settings(dir: &Path) -> PolicySettings {
        PolicySettings {
            dir: dir.to_owned(),
            entry: "data.reflex.decision".into(),
            redact: "data.reflex.redact".into(),
            timeout: Duration::from_millis(100),
            kafka: KafkaConfig {
                brokers: "127.0.0.1:9092".into(),
                client_id: "reflex".into(),
                properties: Default::default(),
                consumer: Default::default(),
                producer: Default::default(),
                security: Default::default(),
                group: Default::default(),
                guarantee: Default::default(),
                transactions: Default::default(),
            },
            audit_topic: "reflex.audit".into(),
            bundle: None,
            engine: crate::policy::PolicyEngine::Auto,
            schema_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"),
            registry_url: String::new(),
        }
    }

    #[test]
    fn check_reports_a_compiling_set_and_a_refused_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("p.rego"),
            "package reflex\nredact := [p | some p in [\"data.x\"]; input.event.type == \"t\"]\ndecision := {\"allow\": true, \"reasons\": [], \"obligations\": {}}\n",
        )
        .expect("write");
        let report = check(dir.path(), &settings(dir.path()));
        assert!(report.success(), "{report}");
        let d = dir.path().display();
        assert_eq!(
            report.to_string(),
            format!(
                "{d}: ok, revision {}\n  entry     data.reflex.decision (reads nothing of the input)\n  redaction data.reflex.redact (reads event.type)\n  modules   1\n  packages  data.reflex",
                report.revision
            )
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["status"], "ok");
        assert_eq!(json["packages"][0], "data.reflex");

        std::fs::write(dir.path().join("broken.rego"), "package x\ny := {").expect("write");
        let report = check(dir.path(), &settings(dir.path()));
        assert!(!report.success());
        let text = report.to_string();
        assert!(
            text.starts_with(&format!("{d}: REFUSED, revision sha256:")),
            "{text}"
        );
        assert!(
            text.ends_with("\n  running workers keep their revision until this compiles"),
            "{text}"
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["status"], "refused");
        assert!(
            json["error"]
                .as_str()
                .is_some_and(|e| e.contains("broken.rego")),
            "{json}"
        );
    }
}
