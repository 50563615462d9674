//! Analytics: windowed aggregates, anomaly baselines and absence rules over event time, whose
//! findings are new CloudEvents. Pure: no Kafka here; the role ([`crate::role::analytics`]) feeds
//! records in and publishes what comes out, and `reflex analytics test` does the same offline.
//!
//! # Layout
//! - [`spec`]: the declarations in `analytics/*.toml` and their validation.
//! - [`aggregate`]: the accumulators (count, sum, min, max, avg, HyperLogLog++ count-distinct,
//!   t-digest percentiles).
//! - [`engine`]: windows, the watermark, late events, baselines, timers, eviction and the
//!   findings with their deterministic ids; one engine per task (input partition number).
//! - [`testing`]: `reflex analytics test`, findings of a JSON-lines file against YAML cases.

pub mod aggregate;
pub mod engine;
pub mod spec;
pub mod testing;

use std::path::Path;
use std::sync::Arc;

pub use engine::{Engine, Finding, Observation, Observed};
pub use spec::{Analysis, SpecError};

use crate::event::CloudEvent;

/// Every finding of `analyses` over `events` (in order, one input), closing every window at
/// the end: what `reflex analytics run` prints and what the test cases compare.
pub fn run_offline(
    analyses: Arc<[Analysis]>,
    events: &[CloudEvent],
    max_groups: usize,
) -> Result<(Vec<Finding>, u64), OfflineError> {
    let mut engine = Engine::new(analyses, max_groups);
    let mut out = Vec::new();
    let mut late = 0;
    for (offset, event) in events.iter().enumerate() {
        let time_ms = event
            .parsed_time()
            .map(|t| t.timestamp_millis())
            .ok_or_else(|| OfflineError::NoTime {
                line: offset + 1,
                id: event.id.clone(),
            })?;
        let observed = engine.observe(
            Observation {
                event: event.into(),
                time_ms,
                topic: "input",
                offset: i64::try_from(offset).unwrap_or(i64::MAX),
            },
            &mut out,
        );
        late += u64::from(observed.late);
    }
    engine.flush(&mut out);
    Ok((out, late))
}

/// The event type under which an analysis reads the audit topic's records (`types =
/// ["reflex.audit"]`): the role then subscribes to the audit topic too.
pub const AUDIT_TYPE: &str = "reflex.audit";

/// An audit record as an event an analysis can read: type [`AUDIT_TYPE`], source
/// `/reflex/audit`, the audited event's id as `id` and its type as `subject`, the moment of the
/// decision (`processed_at`) as `time`, and the whole record as `data` (`data.outcome`,
/// `data.reason`, `data.decision.allow`, …). `None` for a value that is not an audit record.
pub fn audit_event(value: &[u8], topic: &str, partition: i32, offset: i64) -> Option<CloudEvent> {
    let record: serde_json::Value = serde_json::from_slice(value).ok()?;
    let object = record.as_object()?;
    let text = |key: &str| object.get(key).and_then(serde_json::Value::as_str);
    let time = text("processed_at")?.to_owned();
    chrono::DateTime::parse_from_rfc3339(&time).ok()?;
    let id =
        text("event_id").map_or_else(|| format!("{topic}/{partition}/{offset}"), str::to_owned);
    let subject = text("type").map(str::to_owned);
    Some(CloudEvent {
        specversion: crate::event::SPEC_VERSION.to_owned(),
        id,
        source: "/reflex/audit".to_owned(),
        ty: AUDIT_TYPE.to_owned(),
        subject,
        time: Some(time),
        datacontenttype: Some("application/json".to_owned()),
        dataschema: None,
        data: Some(record),
        extensions: std::collections::BTreeMap::new(),
    })
}

/// Why events cannot be analysed offline.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// An event without `time`: offline there is no record timestamp to fall back on.
    #[error("line {line}: event \"{id}\" has no time; analyses run on event time")]
    NoTime {
        /// The line (from 1).
        line: usize,
        /// The event id.
        id: String,
    },
    /// A line is not a CloudEvent.
    #[error("{path} line {line}: not a CloudEvent: {message}", path = path.display())]
    Line {
        /// The file.
        path: std::path::PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file cannot be read.
    #[error("cannot read {path}: {source}", path = path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The CloudEvents of a JSON-lines file (blank lines and `#` comments skipped).
pub fn read_events(path: &Path) -> Result<Vec<CloudEvent>, OfflineError> {
    let text = std::fs::read_to_string(path).map_err(|source| OfflineError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (event, _) =
            CloudEvent::decode(Some(line.as_bytes()), &[]).map_err(|e| OfflineError::Line {
                path: path.to_owned(),
                line: i + 1,
                message: e.to_string(),
            })?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_record_reads_as_an_event_of_type_reflex_audit() {
        let record = br#"{"event_id":"o-1","type":"order.placed","outcome":"denied","decision":{"allow":false,"reasons":["x"]},"processed_at":"2026-03-01T10:00:00Z"}"#;
        let event = audit_event(record, "reflex.audit", 0, 7).expect("an audit record");
        assert_eq!(event.ty, AUDIT_TYPE);
        assert_eq!(event.id, "o-1");
        assert_eq!(event.subject.as_deref(), Some("order.placed"));
        assert_eq!(event.time.as_deref(), Some("2026-03-01T10:00:00Z"));
        let analyses: Arc<[Analysis]> = spec::parse_file(
            Path::new("a.toml"),
            "[denials]\ntypes = [\"reflex.audit\"]\nwhere = { \"data.outcome\" = \"denied\" }\ngroup_by = [\"subject\"]\nwindow = { tumbling = \"10m\" }\ncondition = \"count >= 1\"\nemit = \"denials.high\"\n",
        )
        .expect("valid")
        .into();
        let (found, _) = run_offline(analyses, &[event], 10).expect("runs");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key, "order.placed");
        assert!(audit_event(b"{}", "reflex.audit", 0, 1).is_none());
        assert!(audit_event(b"not json", "reflex.audit", 0, 1).is_none());
    }
}
