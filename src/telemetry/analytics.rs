//! The analytics role's metrics: findings, late events, evictions and groups per analysis, and
//! the state checkpoints.

use std::collections::BTreeMap;
use std::time::Duration;

use super::render::{family, histogram, sample};
use super::{lock, Histogram, Metrics};

/// Counts of one analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnalysisCounts {
    /// Findings emitted.
    pub findings: u64,
    /// Late events.
    pub late: u64,
    /// Groups evicted at `max_groups`.
    pub evicted: u64,
    /// Groups held now.
    pub groups: u64,
}

/// Everything the analytics role counts.
#[derive(Debug, Default)]
pub(super) struct AnalyticsCounts {
    by_analysis: BTreeMap<String, AnalysisCounts>,
    checkpoints: u64,
    checkpoint_bytes: u64,
    checkpoint_seconds: Histogram,
}

/// An analysis's counts moved: `findings` and `late` are added, `evicted` and `groups` are
/// the current totals over the assigned partitions.
#[derive(Debug, Clone, Copy)]
pub struct AnalyticsProgress<'a> {
    /// The analysis.
    pub analysis: &'a str,
    /// Findings emitted since the last report.
    pub findings: u64,
    /// Late events since the last report.
    pub late: u64,
    /// Groups evicted since the last report.
    pub evicted: u64,
    /// Groups held now.
    pub groups: u64,
}

impl AnalyticsProgress<'_> {
    /// Counts it.
    pub fn emit(self, metrics: &Metrics) {
        let mut counts = lock(&metrics.analytics);
        let c = match counts.by_analysis.get_mut(self.analysis) {
            Some(c) => c,
            None => counts
                .by_analysis
                .entry(self.analysis.to_owned())
                .or_default(),
        };
        c.findings += self.findings;
        c.late += self.late;
        c.evicted += self.evicted;
        c.groups = self.groups;
        if self.late > 0 {
            tracing::debug!(analysis = self.analysis, late = self.late, "late events");
        }
    }
}

/// A checkpoint of every assigned partition's state was written.
#[derive(Debug, Clone, Copy)]
pub struct AnalyticsCheckpointed {
    /// Changelog records written.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// How long it took, outputs flushed and offsets committed.
    pub took: Duration,
}

impl AnalyticsCheckpointed {
    /// Counts it.
    pub fn emit(self, metrics: &Metrics) {
        let mut counts = lock(&metrics.analytics);
        counts.checkpoints += 1;
        counts.checkpoint_bytes += self.bytes;
        counts.checkpoint_seconds.observe(self.took.as_secs_f64());
        tracing::debug!(records = self.records, bytes = self.bytes, took = ?self.took, "state checkpointed");
    }
}

impl Metrics {
    /// The counts of each analysis.
    pub fn analytics(&self) -> BTreeMap<String, AnalysisCounts> {
        lock(&self.analytics).by_analysis.clone()
    }
}

/// Renders the analytics role's families.
pub(super) fn render(out: &mut String, metrics: &Metrics) {
    let counts = lock(&metrics.analytics);
    for (name, kind, help, value) in [
        (
            "reflex_analytics_findings_total",
            "counter",
            "Findings emitted, per analysis (again after a crash, with the same ids).",
            (|c| c.findings) as fn(&AnalysisCounts) -> u64,
        ),
        (
            "reflex_analytics_late_events_total",
            "counter",
            "Events that came after every window they belong to had closed, per analysis.",
            |c| c.late,
        ),
        (
            "reflex_analytics_groups_evicted_total",
            "counter",
            "Groups dropped at max_groups, least recently used first, per analysis.",
            |c| c.evicted,
        ),
        (
            "reflex_analytics_groups",
            "gauge",
            "Groups held over the assigned partitions, per analysis.",
            |c| c.groups,
        ),
    ] {
        family(out, name, kind, help);
        for (analysis, c) in &counts.by_analysis {
            sample(out, name, &[("analysis", analysis)], value(c));
        }
    }
    family(
        out,
        "reflex_analytics_checkpoints_total",
        "counter",
        "State checkpoints written to the changelog topic.",
    );
    sample(
        out,
        "reflex_analytics_checkpoints_total",
        &[],
        counts.checkpoints,
    );
    family(
        out,
        "reflex_analytics_checkpoint_bytes_total",
        "counter",
        "Bytes of state written to the changelog topic.",
    );
    sample(
        out,
        "reflex_analytics_checkpoint_bytes_total",
        &[],
        counts.checkpoint_bytes,
    );
    family(
        out,
        "reflex_analytics_checkpoint_seconds",
        "histogram",
        "Time to write a checkpoint: findings flushed, state written, offsets committed.",
    );
    histogram(
        out,
        "reflex_analytics_checkpoint_seconds",
        &[],
        &counts.checkpoint_seconds.snapshot(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_analytics_families_render_per_analysis() {
        let metrics = Metrics::new("analytics", "g", ["t"], Duration::from_secs(30));
        AnalyticsProgress {
            analysis: "refunds",
            findings: 2,
            late: 1,
            evicted: 0,
            groups: 5,
        }
        .emit(&metrics);
        AnalyticsProgress {
            analysis: "refunds",
            findings: 1,
            late: 0,
            evicted: 3,
            groups: 4,
        }
        .emit(&metrics);
        AnalyticsCheckpointed {
            records: 2,
            bytes: 100,
            took: Duration::from_millis(3),
        }
        .emit(&metrics);
        let text = super::super::render::render(&metrics);
        for line in [
            "reflex_analytics_findings_total{analysis=\"refunds\"} 3",
            "reflex_analytics_late_events_total{analysis=\"refunds\"} 1",
            "reflex_analytics_groups_evicted_total{analysis=\"refunds\"} 3",
            "reflex_analytics_groups{analysis=\"refunds\"} 4",
            "reflex_analytics_checkpoints_total 1",
            "reflex_analytics_checkpoint_bytes_total 100",
            "reflex_analytics_checkpoint_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing in:\n{text}");
        }
        assert!(!text.contains("reflex_lake_"), "{text}");
    }
}
