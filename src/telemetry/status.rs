//! The status page's data: `/status.json`, read from the same [`Metrics`] as `/metrics`.
//!
//! Counts are totals since the worker started; the page turns two answers into rates. The
//! recent denials and dead letters carry what their audit records say of them (ids, envelope
//! attributes, reason codes and the policy's reasons), never event data, so nothing the
//! redaction rule hides can reach the page.

use serde::Serialize;

use super::{lock, Metrics, OUTCOMES};
use crate::audit::{AuditRecord, Outcome};

/// Longest text kept of one field of a [`Recent`] entry, in characters.
pub const FIELD_CHARS: usize = 200;

/// The worker's state, as `/status.json` serves it (README "Watching reflex" documents it).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `actions` or `lake`.
    pub role: &'static str,
    /// The consumer group.
    pub group: String,
    /// Seconds since the worker started (the page's clock for rates).
    pub uptime_seconds: f64,
    /// `/healthz`: `ok`, or why not.
    pub health: String,
    /// `/readyz`: `ready`, or why not.
    pub readiness: String,
    /// The policy set deciding.
    pub policy: Option<PolicyStatus>,
    /// Records consumed and not yet finished (actions role).
    pub in_flight: u64,
    /// Events finished by type label (actions role).
    pub types: Vec<TypeCounts>,
    /// Dead letters by type label and reason code (actions role).
    pub dead_letters: Vec<DeadLetterCount>,
    /// Each assigned partition's lag.
    pub partitions: Vec<PartitionLag>,
    /// The last denials and dead letters, newest first (actions role).
    pub recent: Vec<Recent>,
    /// Circuit breakers by service (actions role, services called so far).
    pub breakers: Vec<BreakerStatus>,
    /// What the lake role wrote (lake role).
    pub lake: Option<LakeStatus>,
}

/// The policy set deciding.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    /// Its revision (content hash).
    pub revision: String,
    /// The evaluator.
    pub engine: &'static str,
}

/// Events of one type label by outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TypeCounts {
    /// The type label (`(unknown)`, `(undecodable)` for events without a known type).
    #[serde(rename = "type")]
    pub ty: String,
    /// Actioned.
    pub actioned: u64,
    /// Denied.
    pub denied: u64,
    /// Dead-lettered.
    pub dead_lettered: u64,
    /// Sent to the retry topic.
    pub retrying: u64,
}

/// Dead letters of one type label and reason.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterCount {
    /// The type label.
    #[serde(rename = "type")]
    pub ty: String,
    /// The reason code.
    pub reason: &'static str,
    /// How many.
    pub count: u64,
}

/// One assigned partition's lag (absent until the brokers answered).
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Records behind the high watermark.
    pub lag_records: Option<i64>,
    /// Age of the oldest unprocessed record, at most.
    pub lag_seconds: Option<f64>,
}

/// One service's circuit breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerStatus {
    /// The service name.
    pub service: String,
    /// `closed`, `open` or `half_open`.
    pub state: &'static str,
}

/// What the lake role wrote.
#[derive(Debug, Clone, Serialize)]
pub struct LakeStatus {
    /// Per table: every table of an event type, and any other table written.
    pub tables: Vec<LakeTableStatus>,
    /// Parquet files written (all tables).
    pub files: u64,
    /// Rows written (all tables).
    pub rows: u64,
    /// Parquet bytes written (all tables).
    pub bytes: u64,
    /// Row bytes buffered, not yet written.
    pub buffered_bytes: u64,
}

/// What the lake role wrote to one table.
#[derive(Debug, Clone, Serialize)]
pub struct LakeTableStatus {
    /// The table.
    pub table: String,
    /// Parquet files written.
    pub files: u64,
    /// Rows written.
    pub rows: u64,
    /// Parquet bytes written.
    pub bytes: u64,
    /// Seconds since this worker last wrote a file of it (`null` before the first).
    pub last_file_age_seconds: Option<f64>,
}

/// A denial or dead letter as the page lists it: what its audit record says, never its data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recent {
    /// When it was processed (RFC 3339).
    pub time: String,
    /// `denied` or `dead_lettered`.
    pub outcome: Outcome,
    /// The event id.
    pub event_id: Option<String>,
    /// The event type.
    #[serde(rename = "type")]
    pub ty: Option<String>,
    /// The event source.
    pub source: Option<String>,
    /// The event subject.
    pub subject: Option<String>,
    /// The dead-letter reason code.
    pub reason: Option<&'static str>,
    /// The policy's reasons for a denial.
    pub reasons: Vec<String>,
    /// The dead-letter explanation (the audit record's, which never holds the payload).
    pub error: Option<String>,
    /// Topic of the input record.
    pub topic: String,
    /// Partition of the input record.
    pub partition: i32,
    /// Offset of the input record.
    pub offset: i64,
}

impl Recent {
    /// The entry for `audit`; long texts are cut to [`FIELD_CHARS`].
    pub fn of(audit: &AuditRecord) -> Self {
        let cut = |s: &Option<String>| s.as_deref().map(shorten);
        Self {
            time: audit.processed_at.clone(),
            outcome: audit.outcome,
            event_id: cut(&audit.event_id),
            ty: cut(&audit.ty),
            source: cut(&audit.source),
            subject: cut(&audit.subject),
            reason: audit.reason.map(|r| r.code()),
            reasons: audit
                .decision
                .iter()
                .flat_map(|d| d.reasons.iter().map(|r| shorten(r)))
                .collect(),
            error: cut(&audit.error),
            topic: audit.topic.clone(),
            partition: audit.partition,
            offset: audit.offset,
        }
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(FIELD_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

impl Metrics {
    /// The worker's state now.
    pub fn status(&self) -> Status {
        use std::sync::atomic::Ordering::Relaxed;
        let actions = self.role == "actions";
        let types = lock(&self.events)
            .iter()
            .map(|(ty, counts)| {
                let n = |o: Outcome| {
                    OUTCOMES
                        .iter()
                        .position(|x| *x == o)
                        .map_or(0, |i| counts[i])
                };
                TypeCounts {
                    ty: ty.clone(),
                    actioned: n(Outcome::Actioned),
                    denied: n(Outcome::Denied),
                    dead_lettered: n(Outcome::DeadLettered),
                    retrying: n(Outcome::Retrying),
                }
            })
            .collect();
        let dead_letters = lock(&self.dead_letters)
            .iter()
            .flat_map(|(ty, by_reason)| {
                by_reason.iter().map(|(reason, count)| DeadLetterCount {
                    ty: ty.clone(),
                    reason,
                    count: *count,
                })
            })
            .collect();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let partitions = lock(&self.partitions)
            .iter()
            .flat_map(|(topic, ps)| {
                ps.iter().map(move |(partition, state)| PartitionLag {
                    topic: topic.clone(),
                    partition: *partition,
                    lag_records: state.lag_records(),
                    lag_seconds: state.lag_seconds(now_ms),
                })
            })
            .collect();
        let policy = lock(&self.policy)
            .as_ref()
            .map(|(revision, engine)| PolicyStatus {
                revision: revision.clone(),
                engine: engine.name(),
            });
        let lake = (!actions).then(|| {
            let tables: Vec<LakeTableStatus> = lock(&self.lake)
                .iter()
                .map(|(table, t)| LakeTableStatus {
                    table: table.clone(),
                    files: t.files,
                    rows: t.rows,
                    bytes: t.bytes,
                    last_file_age_seconds: t.last_file.map(|at| at.elapsed().as_secs_f64()),
                })
                .collect();
            LakeStatus {
                files: tables.iter().map(|t| t.files).sum(),
                rows: tables.iter().map(|t| t.rows).sum(),
                bytes: tables.iter().map(|t| t.bytes).sum(),
                tables,
                buffered_bytes: self.lake_buffered.load(Relaxed),
            }
        });
        Status {
            role: self.role,
            group: self.group.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            health: match self.health() {
                Ok(()) => "ok".to_owned(),
                Err(why) => why,
            },
            readiness: match self.readiness() {
                Ok(()) => "ready".to_owned(),
                Err(why) => format!("not ready: {why}"),
            },
            policy,
            in_flight: self.in_flight.load(Relaxed),
            types,
            dead_letters,
            partitions,
            recent: lock(&self.recent).iter().cloned().collect(),
            breakers: self
                .breakers()
                .into_iter()
                .map(|(service, state)| BreakerStatus {
                    service,
                    state: state.as_str(),
                })
                .collect(),
            lake,
        }
    }
}
