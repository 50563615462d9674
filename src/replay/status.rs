//! `reflex policy status`: the revision workers should run, and whether it compiles, against the
//! revisions workers decide with. That revision is the policy directory's, or, when
//! `[policy.bundle] url` is set, the manifest revision of the bundle there, fetched and verified
//! as a worker would.
//!
//! Workers run in other processes (and on other hosts); the one record all of them write is the
//! audit trail, and every audit record names the worker and the revision that decided. So the
//! status reads the tail of the audit topic: each worker's latest decision tells its running
//! revision. A directory that does not compile is what every worker refused (they keep running
//! their revision); a worker on an older revision that compiles has a reload pending or stopped.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use rdkafka::message::Message;
use serde::Serialize;
use serde_json::Value;

use super::ReplayError;
use crate::config::{KafkaConfig, PolicySettings};
use crate::kafka::{reader, scan, Start};
use crate::policy::{files, PolicySet};

/// The revision a worker last decided with, as its audit records show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerRevision {
    /// The worker id.
    pub worker: String,
    /// The revision of its latest decision.
    pub revision: String,
    /// When it made that decision.
    pub processed_at: String,
}

/// The revisions workers run, read from the last `tail` audit records of every partition: the
/// audit trail is the one record every worker process writes, so it answers across processes.
pub fn running_revisions(
    kafka: &KafkaConfig,
    audit_topic: &str,
    tail: i64,
) -> Result<Vec<WorkerRevision>, ReplayError> {
    let consumer = reader(kafka)?;
    let mut latest: HashMap<String, WorkerRevision> = HashMap::new();
    scan(&consumer, audit_topic, Start::Tail(tail), None, |m| {
        let Some(audit) = m
            .payload()
            .and_then(|p| serde_json::from_slice::<Value>(p).ok())
        else {
            return;
        };
        let (Some(worker), Some(revision), Some(at)) = (
            audit["worker"].as_str(),
            audit["policy_revision"].as_str(),
            audit["processed_at"].as_str(),
        ) else {
            return;
        };
        if audit.get("decision").is_none() {
            return;
        }
        let newer = latest
            .get(worker)
            .is_none_or(|w| w.processed_at.as_str() < at);
        if newer {
            latest.insert(
                worker.to_owned(),
                WorkerRevision {
                    worker: worker.to_owned(),
                    revision: revision.to_owned(),
                    processed_at: at.to_owned(),
                },
            );
        }
    })?;
    let mut out: Vec<WorkerRevision> = latest.into_values().collect();
    out.sort_by(|a, b| a.worker.cmp(&b.worker));
    Ok(out)
}

/// The directory against the workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyStatus {
    /// The policy directory.
    pub dir: PathBuf,
    /// The bundle URL workers decide from, when one is configured (then `dir` is not used).
    pub bundle: Option<String>,
    /// Whether the bundle's signature was checked (a verification key is configured) and held.
    pub verified: bool,
    /// The directory's revision, or the bundle's manifest revision (empty when the bundle
    /// could not be fetched, verified or read).
    pub revision: String,
    /// Why it does not compile (or, for a bundle, cannot be fetched or verified), when so.
    pub refused: Option<String>,
    /// The engine that decides it (`compiled` or `interpreter`), when it compiles.
    pub engine: Option<&'static str>,
    /// `[policy] engine` as configured.
    pub configured_engine: &'static str,
    /// Why `engine = "auto"` decides it with the interpreter (`file:line: what may raise`).
    pub not_compiled: Vec<String>,
    /// Why `engine = "auto"`, compiling it, decides wire-format records with the interpreter.
    pub not_compiled_wire: Vec<String>,
    /// The audit topic read.
    pub audit_topic: String,
    /// Records read per partition.
    pub tail: i64,
    /// Each worker's latest decision.
    pub workers: Vec<WorkerRevision>,
}

/// Compiles the directory and reads the workers' revisions from the audit trail.
pub fn status(settings: &PolicySettings, tail: i64) -> Result<PolicyStatus, ReplayError> {
    let (revision, loaded) = match &settings.bundle {
        Some(spec) => {
            let loaded = PolicySet::load_bundle(spec.clone(), &settings.entry, settings.timeout);
            let revision = loaded
                .as_ref()
                .map(|set| set.revision().to_owned())
                .unwrap_or_default();
            (revision, loaded)
        }
        None => (
            files::revision(&settings.dir).map_err(ReplayError::Directory)?,
            PolicySet::load(&settings.dir, &settings.entry, settings.timeout),
        ),
    };
    let loaded = loaded
        .and_then(|set| set.with_redaction(&settings.redact))
        .map(|set| {
            set.with_input_facts(settings.input_facts())
                .with_engine(settings.engine)
        });
    let (refused, engine, not_compiled, not_compiled_wire) = match loaded {
        Ok(set) => (
            None,
            Some(set.engine().name()),
            set.not_compiled().to_vec(),
            set.not_compiled_wire().to_vec(),
        ),
        Err(e) => (Some(e.to_string()), None, Vec::new(), Vec::new()),
    };
    let workers = running_revisions(&settings.kafka, &settings.audit_topic, tail)?;
    Ok(PolicyStatus {
        dir: settings.dir.clone(),
        bundle: settings.bundle.as_ref().map(|b| b.url.clone()),
        verified: refused.is_none() && settings.bundle.as_ref().is_some_and(|b| b.key.is_some()),
        revision,
        refused,
        engine,
        configured_engine: settings.engine.name(),
        not_compiled,
        not_compiled_wire,
        audit_topic: settings.audit_topic.clone(),
        tail,
        workers,
    })
}

impl fmt::Display for PolicyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.bundle {
            Some(url) => format!("bundle {url}"),
            None => self.dir.display().to_string(),
        };
        match (&self.refused, &self.bundle) {
            (None, bundle) => {
                if bundle.is_some() {
                    let signature = if self.verified {
                        "signature verified"
                    } else {
                        "not verified: no [policy.bundle] verification_key"
                    };
                    writeln!(
                        f,
                        "{source}: revision {} ({signature}, compiles)",
                        self.revision
                    )?;
                } else {
                    writeln!(f, "{source}: revision {} (compiles)", self.revision)?;
                }
                let engine = self.engine.unwrap_or("interpreter");
                if self.configured_engine == "auto" && engine == "compiled" {
                    writeln!(f, "engine: compiled (auto: proved compiled-safe)")?;
                    if !self.not_compiled_wire.is_empty() {
                        writeln!(f, "  wire-format records (data validated by the registry's schema, not the files) are decided by the interpreter:")?;
                        for why in &self.not_compiled_wire {
                            writeln!(f, "  {why}")?;
                        }
                    }
                } else if self.configured_engine == "auto" {
                    writeln!(f, "engine: interpreter (auto: not proved compiled-safe)")?;
                    for why in &self.not_compiled {
                        writeln!(f, "  {why}")?;
                    }
                } else {
                    writeln!(f, "engine: {engine} (configured)")?;
                }
            }
            (Some(e), None) => {
                writeln!(f, "{source}: revision {} REFUSED: {e}", self.revision)?;
                writeln!(f, "  workers keep the revision they run until it compiles")?;
            }
            (Some(e), Some(_)) => {
                writeln!(f, "{source}: REFUSED: {e}")?;
                writeln!(
                    f,
                    "  workers keep the revision they run until the bundle there loads"
                )?;
            }
        }
        if self.workers.is_empty() {
            write!(
                f,
                "no decisions in the last {} records of each partition of {}",
                self.tail, self.audit_topic
            )?;
        }
        for (i, w) in self.workers.iter().enumerate() {
            let note = if w.revision == self.revision {
                "current"
            } else if self.refused.is_some() && self.bundle.is_some() {
                "running (bundle refused)"
            } else if self.refused.is_some() {
                "running (directory refused)"
            } else {
                "older (reload pending, or the worker stopped)"
            };
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "  {:<28} {}  last decision {}  {note}",
                w.worker, w.revision, w.processed_at
            )?;
        }
        Ok(())
    }
}
