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
                event,
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
