//! Per-type counts of outcomes and reasons, printed when a worker stops.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::audit::{AuditRecord, Outcome};

/// Name used for records whose type could not be read.
pub const NO_TYPE: &str = "(undecodable)";

/// Counts for one event type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeCounts {
    /// Allowed and actioned.
    pub actioned: u64,
    /// Denied by policy or failing closed.
    pub denied: u64,
    /// Sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Sent to the retry topic (an event retried twice counts twice).
    pub retrying: u64,
    /// Deny reasons and dead-letter reason codes, with their counts.
    pub reasons: BTreeMap<String, u64>,
}

/// Outcome counts by event type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Counts by event type (sorted).
    pub types: BTreeMap<String, TypeCounts>,
    /// Milliseconds from the first record received to the last one fully acknowledged.
    pub busy_ms: u64,
    /// Records read again from their event topic after their copy from the retry topic ran:
    /// their offsets are stored, with no audit record of their own.
    pub read_again: u64,
    /// CPU time the process had used when its first record arrived: start-up, not work.
    #[serde(skip)]
    pub startup_cpu: Option<Duration>,
}

/// The CPU time this process has used so far, all threads together (Linux; `None` elsewhere).
/// A worker reads it once, when its first record arrives, so that a run's summary can tell
/// the cost of starting (configuration, schemas, policies, clients, joining the group) from
/// the cost of its records.
pub fn process_cpu() -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Some(Duration::new(
            u64::try_from(t.tv_sec).ok()?,
            u32::try_from(t.tv_nsec).ok()?,
        ))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

impl Summary {
    /// Counts one audit record.
    pub fn record(&mut self, audit: &AuditRecord) {
        let ty = audit.ty.as_deref().unwrap_or(NO_TYPE);
        let counts = match self.types.get_mut(ty) {
            Some(c) => c,
            None => self.types.entry(ty.to_owned()).or_default(),
        };
        match audit.outcome {
            Outcome::Actioned => counts.actioned += 1,
            Outcome::Denied => {
                counts.denied += 1;
                for reason in audit.decision.iter().flat_map(|d| &d.reasons) {
                    *counts
                        .reasons
                        .entry(format!("denied: {reason}"))
                        .or_default() += 1;
                }
            }
            Outcome::DeadLettered => {
                counts.dead_lettered += 1;
                if let Some(reason) = audit.reason {
                    *counts
                        .reasons
                        .entry(format!("dlq: {}", reason.code()))
                        .or_default() += 1;
                }
            }
            Outcome::Retrying => counts.retrying += 1,
        }
    }

    /// Total records counted.
    pub fn total(&self) -> u64 {
        self.types
            .values()
            .map(|c| c.actioned + c.denied + c.dead_lettered + c.retrying)
            .sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .types
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(4)
            .max(10);
        writeln!(
            f,
            "{:<width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
            "event type", "actioned", "denied", "dlq", "retrying", "total"
        )?;
        let (mut a, mut d, mut q, mut r) = (0, 0, 0, 0);
        for (ty, c) in &self.types {
            let total = c.actioned + c.denied + c.dead_lettered + c.retrying;
            writeln!(
                f,
                "{ty:<width$}  {:>8}  {:>8}  {:>8}  {:>8}  {total:>8}",
                c.actioned, c.denied, c.dead_lettered, c.retrying
            )?;
            for (reason, n) in &c.reasons {
                writeln!(f, "{:<width$}    {n:>6} × {reason}", "")?;
            }
            (a, d, q, r) = (
                a + c.actioned,
                d + c.denied,
                q + c.dead_lettered,
                r + c.retrying,
            );
        }
        let all = a + d + q + r;
        write!(
            f,
            "{:<width$}  {a:>8}  {d:>8}  {q:>8}  {r:>8}  {all:>8}",
            "all"
        )?;
        if self.read_again > 0 {
            write!(
                f,
                "\n{} records read again after their retry copy ran (not run again, no audit record of their own)",
                self.read_again
            )?;
        }
        if self.busy_ms > 0 {
            let secs = self.busy_ms as f64 / 1000.0;
            let rate = all as f64 / secs;
            write!(f, "\n{all} records in {secs:.2}s from the first received to the last acknowledged ({rate:.0} records/s)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_again_are_named_only_when_there_are_some() {
        let mut summary = Summary::default();
        assert!(!summary.to_string().contains("read again"));
        summary.read_again = 2;
        assert!(
            summary
                .to_string()
                .contains("2 records read again after their retry copy ran"),
            "{summary}"
        );
        assert_eq!(summary.total(), 0, "they have no audit record of their own");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_cpu_time_grows_with_work_done() {
        let before = process_cpu().expect("Linux reports a process's CPU time");
        // Work until the clock moves (its resolution is the scheduler's, not a fixed step).
        let mut x = 0u64;
        let mut after = before;
        for round in 0..10_000u64 {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i ^ round));
            }
            after = process_cpu().expect("still reported");
            if after > before {
                break;
            }
        }
        assert!(after > before, "{before:?} then {after:?} ({x})");
    }
}
