//! Policy telemetry: typed events whose `emit()` logs and counts.
//!
//! Counters are process-wide and labelled only by bounded values (the failure kind):
//! - `reflex_policy_failures_total{kind}`: fail-closed denies, one counter per [`Failure`];
//! - `reflex_policy_redaction_failures_total{kind}`: redaction rule evaluations that failed
//!   closed (the caller writes no event data);
//! - `reflex_policy_reloads_total`: policy sets swapped in by hot reload;
//! - `reflex_policy_reloads_refused_total`: changed policy sets that did not compile;
//! - `reflex_policy_cross_checks_total`: compiled decisions decided by the interpreter too
//!   (`[policy] cross_check_every`);
//! - `reflex_policy_cross_check_disagreements_total`: those where the two engines disagreed
//!   (the interpreter's decision was kept).
//!
//! [`snapshot`] reads them all, e.g. for a worker's final log line or an exporter.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Decision, Failure, PolicyEngine};

static FAILURES: [AtomicU64; Failure::ALL.len()] = [const { AtomicU64::new(0) }; 5];
static REDACTION_FAILURES: [AtomicU64; Failure::ALL.len()] = [const { AtomicU64::new(0) }; 5];
static RELOADS: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static CROSS_CHECKS: AtomicU64 = AtomicU64::new(0);
static DISAGREEMENTS: AtomicU64 = AtomicU64::new(0);

/// A policy set's engine was chosen (at load and at every reload).
#[derive(Debug, Clone, Copy)]
pub struct PolicyEngineChosen<'a> {
    /// The set's revision.
    pub revision: &'a str,
    /// `[policy] engine`.
    pub configured: PolicyEngine,
    /// The engine that decides.
    pub deciding: PolicyEngine,
    /// Why `auto` chose the interpreter.
    pub reasons: &'a [String],
    /// Why `auto` decides wire-format records with the interpreter although it compiled.
    pub wire: &'a [String],
}

impl PolicyEngineChosen<'_> {
    /// Logs it (INFO: the interpreter is a correct, slower choice, not a fault).
    pub fn emit(self) {
        let configured = self.configured.name();
        match (self.configured, self.deciding) {
            (PolicyEngine::Auto, PolicyEngine::Compiled) if self.wire.is_empty() => tracing::info!(
                revision = self.revision,
                engine = "compiled",
                configured,
                "the policy set is proved compiled-safe: deciding with the compiled engine"
            ),
            (PolicyEngine::Auto, PolicyEngine::Compiled) => tracing::info!(
                revision = self.revision,
                engine = "compiled",
                configured,
                wire_format_why = %self.wire.join("; "),
                "the policy set is proved compiled-safe for data the schema files validate: deciding with the compiled engine, and wire-format records (validated by the registry's schema) with the interpreter"
            ),
            (PolicyEngine::Auto, _) => tracing::info!(
                revision = self.revision,
                engine = "interpreter",
                configured,
                why = %self.reasons.join("; "),
                "the policy set is not proved compiled-safe: deciding with the interpreter"
            ),
            (_, deciding) => tracing::info!(
                revision = self.revision,
                engine = deciding.name(),
                configured,
                "policy engine"
            ),
        }
    }
}

/// A compiled decision was decided by the interpreter too.
#[derive(Debug, Clone, Copy)]
pub struct EnginesCompared<'a> {
    /// Whether they agreed (or one ran out of time, which says nothing about the engines).
    pub agree: bool,
    /// The event's id.
    pub event_id: &'a str,
    /// The revision deciding.
    pub revision: &'a str,
    /// The compiled engine's decision.
    pub compiled: &'a Decision,
    /// The interpreter's decision (kept when they disagree).
    pub interpreted: &'a Decision,
}

impl EnginesCompared<'_> {
    /// Counts it; a disagreement is logged at WARN with both decisions (never the event).
    pub fn emit(self) {
        CROSS_CHECKS.fetch_add(1, Ordering::Relaxed);
        if self.agree {
            return;
        }
        DISAGREEMENTS.fetch_add(1, Ordering::Relaxed);
        let mut compiled = super::shadow::label(self.compiled);
        let interpreted = super::shadow::label(self.interpreted);
        if compiled == interpreted {
            compiled.push_str(" (other obligations)");
        }
        tracing::warn!(
            event_id = self.event_id,
            revision = self.revision,
            compiled = %compiled,
            interpreter = %interpreted,
            "the compiled engine and the interpreter disagree; keeping the interpreter's decision"
        );
    }
}

/// A decision failed closed.
#[derive(Debug, Clone, Copy)]
pub struct PolicyFailedClosed {
    /// Why.
    pub failure: Failure,
}

impl PolicyFailedClosed {
    /// Counts it (the audit record carries the detail; logging each one would flood).
    pub fn emit(self) {
        FAILURES[index(self.failure)].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(kind = self.failure.label(), "policy failed closed");
    }
}

/// The redaction rule gave no list of paths, so no event data is written.
#[derive(Debug, Clone, Copy)]
pub struct RedactionFailedClosed {
    /// Why.
    pub failure: Failure,
}

impl RedactionFailedClosed {
    /// Counts it (the caller logs or records the detail).
    pub fn emit(self) {
        REDACTION_FAILURES[index(self.failure)].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(kind = self.failure.label(), "redaction failed closed");
    }
}

/// A new policy revision was swapped in.
#[derive(Debug, Clone, Copy)]
pub struct PolicyReloaded<'a> {
    /// The revision that ran before.
    pub from: &'a str,
    /// The revision that runs now.
    pub to: &'a str,
}

impl PolicyReloaded<'_> {
    /// Logs and counts it.
    pub fn emit(self) {
        RELOADS.fetch_add(1, Ordering::Relaxed);
        tracing::info!(from = self.from, to = self.to, "policy reloaded");
    }
}

/// A changed policy set was refused; the running revision stays.
#[derive(Debug, Clone, Copy)]
pub struct PolicyReloadRefused<'a> {
    /// The revision that keeps running.
    pub running: &'a str,
    /// Why the new set was refused.
    pub error: &'a dyn std::error::Error,
}

impl PolicyReloadRefused<'_> {
    /// Logs (ERROR: an operator must fix the policy repository) and counts it.
    pub fn emit(self) {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            running = self.running,
            error = %self.error,
            "changed policy set refused; the running revision stays"
        );
    }
}

fn index(failure: Failure) -> usize {
    Failure::ALL
        .iter()
        .position(|f| *f == failure)
        .unwrap_or_default()
}

/// One counter's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    /// Metric name.
    pub name: &'static str,
    /// The `kind` label, when the metric has one.
    pub kind: Option<&'static str>,
    /// The count since the process started.
    pub value: u64,
}

/// Every policy counter.
pub fn snapshot() -> Vec<Counter> {
    let mut out: Vec<Counter> = Failure::ALL
        .iter()
        .map(|f| Counter {
            name: "reflex_policy_failures_total",
            kind: Some(f.label()),
            value: FAILURES[index(*f)].load(Ordering::Relaxed),
        })
        .collect();
    out.extend(Failure::ALL.iter().map(|f| Counter {
        name: "reflex_policy_redaction_failures_total",
        kind: Some(f.label()),
        value: REDACTION_FAILURES[index(*f)].load(Ordering::Relaxed),
    }));
    out.push(Counter {
        name: "reflex_policy_reloads_total",
        kind: None,
        value: RELOADS.load(Ordering::Relaxed),
    });
    out.push(Counter {
        name: "reflex_policy_reloads_refused_total",
        kind: None,
        value: REFUSED.load(Ordering::Relaxed),
    });
    out.push(Counter {
        name: "reflex_policy_cross_checks_total",
        kind: None,
        value: cross_checks(),
    });
    out.push(Counter {
        name: "reflex_policy_cross_check_disagreements_total",
        kind: None,
        value: cross_check_disagreements(),
    });
    out
}

/// Compiled decisions decided by the interpreter too.
pub fn cross_checks() -> u64 {
    CROSS_CHECKS.load(Ordering::Relaxed)
}

/// Cross-checked decisions where the engines disagreed.
pub fn cross_check_disagreements() -> u64 {
    DISAGREEMENTS.load(Ordering::Relaxed)
}

/// The current count of fail-closed denies of one kind.
pub fn failures(failure: Failure) -> u64 {
    FAILURES[index(failure)].load(Ordering::Relaxed)
}

/// The current count of redaction evaluations that failed closed with `failure`.
pub fn redaction_failures(failure: Failure) -> u64 {
    REDACTION_FAILURES[index(failure)].load(Ordering::Relaxed)
}

/// The current count of refused reloads.
pub fn refused_reloads() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}
