//! Worker telemetry: the one place that names reflex's metrics, the typed events that count
//! them, and the listener that serves them ([`listener`]) with the probes.
//!
//! Each worker owns one [`Metrics`]; its listener (`[telemetry] listen`) serves `/metrics` in
//! the Prometheus text format, `/healthz`, `/readyz` (policy loaded, partitions assigned, and
//! the producer reaching the brokers, [`producer`]), and the status page (`/` and
//! `/status.json`, [`status`]), both read from the same [`Metrics`]. Labels take only bounded
//! values: event types that have a schema (others are `(unknown)`, records without a type
//! `(undecodable)`), outcome and reason codes, stage names, service names, and the assigned
//! topic partitions; never ids or error text. The status page also lists the last
//! [`RECENT_CAPACITY`] denials and dead letters ([`Recent`]) with what their audit records say
//! of them, never event data.
//!
//! # Metrics
//! Actions role:
//! - `reflex_events_processed_total{type, outcome}` (counter): events finished, by outcome
//!   (`actioned`, `denied`, `dead_lettered`, `retrying`);
//! - `reflex_dead_letters_total{type, reason}` (counter): dead letters by reason code;
//! - `reflex_stage_duration_seconds{stage}` (histogram): time per stage (`decode`, `validate`,
//!   `enrich`, `policy`, `action`, `delivery`: publishing the outputs until acknowledged);
//! - `reflex_in_flight_records` (gauge): records consumed and not yet finished;
//! - `reflex_breaker_state{service, state}` (gauge, 1 for the current state, 0 for the others):
//!   the circuit breaker of each HTTP service called so far (`closed`, `open`, `half_open`).
//!
//! Lake role:
//! - `reflex_lake_files_written_total{table}`, `reflex_lake_rows_written_total{table}`,
//!   `reflex_lake_bytes_written_total{table}` (counters): Parquet written, per table (every
//!   table of an event type is exported from the start, at 0);
//! - `reflex_lake_last_file_age_seconds{table}` (gauge): time since this worker last wrote a
//!   file of the table (absent before the first);
//! - `reflex_lake_files_present_total` (counter): files a writer found already written with
//!   its records (a replay after a crash or a rebalance) and kept;
//! - `reflex_lake_buffered_bytes` (gauge): row bytes waiting to be written.
//!
//! Analytics role:
//! - `reflex_analytics_findings_total{analysis}`, `reflex_analytics_late_events_total{analysis}`,
//!   `reflex_analytics_groups_evicted_total{analysis}` (counters): findings emitted, events that
//!   came after every window they belong to had closed, groups dropped at `max_groups`;
//! - `reflex_analytics_groups{analysis}` (gauge): groups held over the assigned partitions;
//! - `reflex_analytics_checkpoints_total`, `reflex_analytics_checkpoint_bytes_total` (counters)
//!   and `reflex_analytics_checkpoint_seconds` (histogram): state checkpoints written.
//!
//! Every role:
//! - `reflex_consumer_lag_records{topic, partition}` (gauge): high watermark − position of each
//!   assigned partition (the committed offset, before the worker consumed from it);
//! - `reflex_consumer_lag_seconds{topic, partition}` (gauge): age of the oldest unprocessed
//!   record, at most: now − timestamp of the last record consumed while the lag is above 0 (since
//!   the lag was first seen when nothing was consumed yet), else 0;
//! - `reflex_assigned_partitions` (gauge); `reflex_loop_progress_age_seconds` (gauge): time since
//!   the worker's loop last made progress;
//! - `reflex_policy_info{revision, engine}` (gauge, 1): the policy set deciding;
//! - `reflex_action_results_total{action, kind, result}` (counter): actions that ran, by the
//!   HTTP status the service last answered (`error` when it never answered; `ok` for inline
//!   kinds); `reflex_lookups_total{lookup, source}` (counter): enrichment lookups by where the
//!   value came from (`cache`, `service`, `fallback`);
//! - `reflex_action_attempts_total{service, result, attempt}` (counter): every HTTP attempt of
//!   an action, by service, result (status class `2xx` … `5xx`, or `timeout`, `connect`,
//!   `circuit_open`, `error`) and attempt number (`1`, `2`, `3`, `4+`);
//!   `reflex_action_attempt_duration_seconds{service}` (histogram): their durations;
//! - `reflex_events_read_again_total` (counter): events read again from their event topic
//!   after their copy in the retry topic, handed over with the partition, ran: not run a
//!   second time (the worker that sent them there stopped before committing);
//! - `reflex_spans_started_total`, `reflex_spans_exported_total` and
//!   `reflex_spans_dropped_total{reason}` (counters, `queue_full` or `export_failed`): the
//!   OpenTelemetry spans of this worker (all 0 while tracing is off);
//! - `reflex_kafka_unreachable_seconds` (gauge): how long the brokers have been unreachable, 0
//!   while they answer; `reflex_kafka_outages_total` (counter): outages that ended;
//! - `reflex_lake_store_unreachable_seconds` (gauge): how long the lake's object store has been
//!   unreachable, 0 while it answers; `reflex_lake_store_outages_total` (counter): outages that
//!   ended;
//! - the process-wide policy counters of [`crate::policy::telemetry`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::audit::{AuditRecord, Outcome};
use crate::ingest::DeadLetterReason;
use crate::policy::PolicyEngine;
use crate::service::Services;

mod analytics;
mod histogram;
pub mod lag;
pub mod listener;
pub mod producer;
mod render;
pub mod status;

pub use analytics::{AnalysisCounts, AnalyticsCheckpointed, AnalyticsProgress};
pub use histogram::Histogram;
pub use listener::{serve, ListenError};
pub use render::render;
pub use status::{Recent, Status};

/// Denials and dead letters the status page lists, newest first.
pub const RECENT_CAPACITY: usize = 20;

/// The outcomes, in the order of their counters.
pub const OUTCOMES: [Outcome; 4] = [
    Outcome::Actioned,
    Outcome::Denied,
    Outcome::DeadLettered,
    Outcome::Retrying,
];

/// Label of events whose type has no schema.
pub const UNKNOWN_TYPE: &str = "(unknown)";

/// A topic partition.
pub type TopicPartition = (String, i32);

/// A stage whose duration is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decoding the CloudEvent.
    Decode,
    /// Schema validation.
    Validate,
    /// Enrichment lookups.
    Enrich,
    /// Policy evaluation.
    Policy,
    /// The action.
    Action,
    /// Publishing the outputs until every one is acknowledged.
    Delivery,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 6] = [
        Stage::Decode,
        Stage::Validate,
        Stage::Enrich,
        Stage::Policy,
        Stage::Action,
        Stage::Delivery,
    ];

    /// The `stage` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Validate => "validate",
            Self::Enrich => "enrich",
            Self::Policy => "policy",
            Self::Action => "action",
            Self::Delivery => "delivery",
        }
    }
}

/// What the lag metrics know of one assigned partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// The next offset the worker will consume (last consumed + 1).
    pub position: Option<i64>,
    /// Timestamp (ms since the epoch) of the last record consumed.
    pub last_timestamp_ms: Option<i64>,
    /// The group's committed offset, for a partition not consumed from yet.
    pub committed: Option<i64>,
    /// The low and high watermarks, from the last query.
    pub watermarks: Option<(i64, i64)>,
    /// When the partition was first seen behind (ms since the epoch), while it stays behind.
    pub behind_since_ms: Option<i64>,
}

impl PartitionState {
    /// Records between the position and the high watermark, once the watermarks are known.
    pub fn lag_records(&self) -> Option<i64> {
        let (low, high) = self.watermarks?;
        let at = self.position.or(self.committed).unwrap_or(low);
        Some((high - at).max(0))
    }

    /// Age in seconds of the oldest unprocessed record, at most; 0 when caught up.
    pub fn lag_seconds(&self, now_ms: i64) -> Option<f64> {
        let lag = self.lag_records()?;
        if lag == 0 {
            return Some(0.0);
        }
        let since = self.last_timestamp_ms.or(self.behind_since_ms)?;
        Some((now_ms - since).max(0) as f64 / 1000.0)
    }
}

/// One worker's metrics and probe state. Cheap to update from the hot path: counters are
/// atomics or a short lock on a small map.
#[derive(Debug)]
pub struct Metrics {
    role: &'static str,
    group: String,
    known_types: BTreeSet<String>,
    /// Counts by type label, indexed like [`OUTCOMES`].
    events: Mutex<BTreeMap<String, [u64; OUTCOMES.len()]>>,
    /// Counts by type label and reason code.
    dead_letters: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    /// Actions that ran, by action, kind and result (the HTTP status last answered, `error`
    /// when the service never answered, `ok` for inline kinds).
    actions: Mutex<BTreeMap<String, BTreeMap<ActionResult, u64>>>,
    /// Lookups, by lookup and where the value came from (cache, service, fallback).
    lookups: Mutex<BTreeMap<String, [u64; 3]>>,
    /// HTTP attempts of actions, by service.
    attempts: Mutex<BTreeMap<String, ServiceAttempts>>,
    /// What the producer's last check found, once the worker has a producer.
    producer: Mutex<Option<ProducerCheck>>,
    /// The tracer's span counts, when tracing is on.
    spans: OnceLock<std::sync::Arc<crate::otel::ExportStats>>,
    /// The last denials and dead letters, newest at the front.
    recent: Mutex<VecDeque<Recent>>,
    /// The HTTP services whose breakers are reported, once the worker has them.
    services: OnceLock<Services>,
    /// Whether the brokers are reachable, once the worker has its clients.
    kafka: OnceLock<std::sync::Arc<crate::kafka::Outage>>,
    /// Whether the lake's store answers, once a lake worker has it.
    store: OnceLock<std::sync::Arc<crate::lake::outage::StoreOutage>>,
    /// The exactly-once mode's transactions, when the worker runs in it.
    transactions: OnceLock<std::sync::Arc<crate::kafka::transaction::TransactionStats>>,
    stages: [Histogram; Stage::ALL.len()],
    in_flight: AtomicU64,
    /// Events read again after their retry copy ran ([`EventReadAgain`]).
    read_again: AtomicU64,
    /// What the lake role wrote, by table.
    lake: Mutex<BTreeMap<String, LakeTable>>,
    lake_present: AtomicU64,
    lake_buffered: AtomicU64,
    /// What the analytics role counted, by analysis.
    analytics: Mutex<analytics::AnalyticsCounts>,
    policy: Mutex<Option<(String, PolicyEngine)>>,
    /// The last policy warm-up: revision, event types decided, seconds.
    policy_warm_up: Mutex<Option<(String, usize, f64)>>,
    /// Assigned partitions by topic, so the hot path finds one without allocating.
    partitions: Mutex<BTreeMap<String, BTreeMap<i32, PartitionState>>>,
    started: Instant,
    progress_ms: AtomicU64,
    stall_timeout: Duration,
    assigned_once: AtomicBool,
}

impl Metrics {
    /// Metrics for a worker of `role` in consumer group `group` whose event types are
    /// `known_types`; `/healthz` fails after `stall_timeout` without progress.
    pub fn new<'a>(
        role: &'static str,
        group: &str,
        known_types: impl IntoIterator<Item = &'a str>,
        stall_timeout: Duration,
    ) -> Self {
        let known_types: BTreeSet<String> = known_types.into_iter().map(str::to_owned).collect();
        let lake = if role == "lake" {
            known_types
                .iter()
                .map(|t| (t.clone(), LakeTable::default()))
                .collect()
        } else {
            BTreeMap::new()
        };
        Self {
            role,
            group: group.to_owned(),
            known_types,
            events: Mutex::default(),
            dead_letters: Mutex::default(),
            actions: Mutex::default(),
            lookups: Mutex::default(),
            attempts: Mutex::default(),
            producer: Mutex::new(None),
            spans: OnceLock::new(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CAPACITY)),
            services: OnceLock::new(),
            kafka: OnceLock::new(),
            store: OnceLock::new(),
            transactions: OnceLock::new(),
            stages: std::array::from_fn(|_| Histogram::default()),
            in_flight: AtomicU64::new(0),
            read_again: AtomicU64::new(0),
            lake: Mutex::new(lake),
            lake_present: AtomicU64::new(0),
            lake_buffered: AtomicU64::new(0),
            analytics: Mutex::default(),
            policy: Mutex::new(None),
            policy_warm_up: Mutex::new(None),
            partitions: Mutex::default(),
            started: Instant::now(),
            progress_ms: AtomicU64::new(0),
            stall_timeout,
            assigned_once: AtomicBool::new(false),
        }
    }

    /// The role this worker runs.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// Reports Kafka outages from `outage` from now on (the first call wins).
    pub fn watch_kafka(&self, outage: std::sync::Arc<crate::kafka::Outage>) {
        let _ = self.kafka.set(outage);
    }

    /// The outage watched, or a new one if none is.
    pub fn outage(&self) -> std::sync::Arc<crate::kafka::Outage> {
        std::sync::Arc::clone(self.kafka.get_or_init(crate::kafka::Outage::new))
    }

    /// How long the brokers have been unreachable (zero when they answer), and how many
    /// outages ended since start.
    pub fn kafka_outage(&self) -> (Duration, u64) {
        self.kafka.get().map_or((Duration::ZERO, 0), |o| {
            (o.down_for().unwrap_or(Duration::ZERO), o.ended())
        })
    }

    /// Reports the lake store's outages from `outage` from now on (the first call wins).
    pub fn watch_store(&self, outage: std::sync::Arc<crate::lake::outage::StoreOutage>) {
        let _ = self.store.set(outage);
    }

    /// How long the lake's store has been unreachable (zero when it answers), and how many
    /// outages ended since start.
    pub fn store_outage(&self) -> (Duration, u64) {
        self.store.get().map_or((Duration::ZERO, 0), |o| {
            (o.down_for().unwrap_or(Duration::ZERO), o.ended())
        })
    }

    /// Reports the spans of a tracer from now on (the first call wins).
    pub fn watch_spans(&self, stats: std::sync::Arc<crate::otel::ExportStats>) {
        let _ = self.spans.set(stats);
    }

    /// Makes `/readyz` check the worker's producer ([`ProducerChecked`] reports on it).
    pub fn watch_producer(&self) {
        lock(&self.producer).get_or_insert_with(ProducerCheck::default);
    }

    /// Reports the transactions of the exactly-once mode from now on (the first call wins).
    pub fn watch_transactions(
        &self,
        stats: std::sync::Arc<crate::kafka::transaction::TransactionStats>,
    ) {
        let _ = self.transactions.set(stats);
    }

    /// Transactions committed and aborted, and how long the open one has held records; none
    /// outside the exactly-once mode.
    pub fn transactions(&self) -> Option<((u64, u64), Duration)> {
        self.transactions.get().map(|t| (t.counts(), t.open_for()))
    }

    /// Reports the circuit breakers of `services` from now on (the first call wins).
    pub fn watch_breakers(&self, services: &Services) {
        let _ = self.services.set(services.clone());
    }

    /// The state of each breaker of the watched services, by service name.
    fn breakers(&self) -> Vec<(String, crate::service::BreakerState)> {
        self.services
            .get()
            .map(Services::breaker_states)
            .unwrap_or_default()
    }

    /// The `type` label of an event type.
    fn type_label<'a>(&'a self, ty: Option<&str>) -> &'a str {
        match ty {
            Some(ty) => self
                .known_types
                .get(ty)
                .map_or(UNKNOWN_TYPE, String::as_str),
            None => crate::summary::NO_TYPE,
        }
    }

    /// Notes that the worker's loop made progress (`/healthz`).
    pub fn progress(&self) {
        self.progress_at(Instant::now());
    }

    /// Notes progress made at `now` (a clock the caller read anyway).
    pub fn progress_at(&self, now: Instant) {
        let since = now.saturating_duration_since(self.started);
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the loop last made progress.
    pub fn since_progress(&self) -> Duration {
        let at = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(at)
    }

    /// Sets the number of records in flight.
    pub fn set_in_flight(&self, records: usize) {
        self.in_flight.store(
            u64::try_from(records).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Sets the lake's buffered row bytes.
    pub fn set_lake_buffered(&self, bytes: usize) {
        self.lake_buffered
            .store(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether the process works: its loop made progress within the stall timeout.
    pub fn health(&self) -> Result<(), String> {
        let since = self.since_progress();
        if since > self.stall_timeout {
            return Err(format!(
                "the {} worker's loop made no progress for {:.1}s (limit {:?})",
                self.role,
                since.as_secs_f64(),
                self.stall_timeout
            ));
        }
        Ok(())
    }

    /// The checks of `/readyz`, in order: `policy` (a policy set is loaded), `group`
    /// (partitions are assigned) and, in a worker with a producer, `producer` (its last
    /// metadata request was answered and no Kafka outage is open).
    pub fn ready_checks(&self) -> Vec<ReadyCheck> {
        let mut checks = Vec::with_capacity(3);
        checks.push(ReadyCheck {
            name: "policy",
            problem: lock(&self.policy)
                .is_none()
                .then(|| "no policy set loaded".to_owned()),
        });
        let group = if lock(&self.partitions).values().all(BTreeMap::is_empty) {
            Some(if self.assigned_once.load(Ordering::Relaxed) {
                "no partitions assigned (all revoked)".to_owned()
            } else {
                "no partitions assigned yet".to_owned()
            })
        } else {
            None
        };
        checks.push(ReadyCheck {
            name: "group",
            problem: group,
        });
        if let Some(check) = lock(&self.producer).as_ref() {
            let down = self
                .kafka
                .get()
                .and_then(|o| o.down_for())
                .map(|d| format!("Kafka brokers unreachable for {:.0}s", d.as_secs_f64()));
            let problem = match (&check.error, check.answered) {
                (Some(error), _) => Some(error.clone()),
                (None, None) => Some("the producer has not reached the brokers yet".to_owned()),
                (None, Some(_)) => down,
            };
            checks.push(ReadyCheck {
                name: "producer",
                problem,
            });
        }
        checks
    }

    /// Whether the worker can do its work: the first failing check of [`Self::ready_checks`].
    pub fn readiness(&self) -> Result<(), String> {
        match self.ready_checks().into_iter().find_map(|c| c.problem) {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// The assigned partitions, for the lag probe.
    pub fn assigned(&self) -> Vec<TopicPartition> {
        let partitions = lock(&self.partitions);
        partitions
            .iter()
            .flat_map(|(topic, ps)| ps.keys().map(|p| (topic.clone(), *p)))
            .collect()
    }

    /// Applies `f` to the state of each assigned partition.
    pub fn update_partitions(&self, mut f: impl FnMut(&TopicPartition, &mut PartitionState)) {
        for (topic, ps) in lock(&self.partitions).iter_mut() {
            for (partition, state) in ps.iter_mut() {
                f(&(topic.clone(), *partition), state);
            }
        }
    }
}

/// One check of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCheck {
    /// Its name: `policy`, `group` or `producer`.
    pub name: &'static str,
    /// Why it fails; `None` when it passes.
    pub problem: Option<String>,
}

/// What the last check of the worker's producer found.
#[derive(Debug, Clone, Default)]
struct ProducerCheck {
    /// When the brokers last answered it.
    answered: Option<Instant>,
    /// The last check's error, if it failed.
    error: Option<String>,
}

/// HTTP attempts of actions on one service.
#[derive(Debug, Default)]
pub(crate) struct ServiceAttempts {
    /// Attempts by result label and attempt label.
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
    /// Their durations.
    pub duration: Histogram,
}

/// The `attempt` label: `1`, `2`, `3`, then `4+`.
pub fn attempt_label(attempt: u32) -> &'static str {
    match attempt {
        0 | 1 => "1",
        2 => "2",
        3 => "3",
        _ => "4+",
    }
}

/// How an action ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ActionResult {
    /// The action's kind.
    pub kind: &'static str,
    /// For `http`: the status last answered, 0 when the service never answered.
    pub status: Option<u16>,
}

impl ActionResult {
    /// The `result` label: the status, `error`, or `ok` for inline kinds.
    pub(crate) fn label(self) -> String {
        match self.status {
            Some(0) => "error".to_owned(),
            Some(status) => status.to_string(),
            None => "ok".to_owned(),
        }
    }
}

/// The lookup sources, in the order of [`Metrics`]' lookup counters.
pub(crate) const LOOKUP_SOURCES: [crate::enrich::LookupSource; 3] = [
    crate::enrich::LookupSource::Cache,
    crate::enrich::LookupSource::Service,
    crate::enrich::LookupSource::Fallback,
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn micros_to_seconds(us: u64) -> f64 {
    us as f64 / 1_000_000.0
}

/// An event finished in the actions role: its audit record is written.
#[derive(Debug, Clone, Copy)]
pub struct EventProcessed<'a> {
    /// The audit record.
    pub audit: &'a AuditRecord,
}

impl EventProcessed<'_> {
    /// Counts the outcome and the dead-letter reason, keeps a denial or dead letter for the
    /// status page, and observes the stages that ran (the audit record carries the detail, so
    /// nothing is logged).
    pub fn emit(self, metrics: &Metrics) {
        let audit = self.audit;
        if matches!(audit.outcome, Outcome::Denied | Outcome::DeadLettered) {
            let mut recent = lock(&metrics.recent);
            if recent.len() == RECENT_CAPACITY {
                recent.pop_back();
            }
            recent.push_front(Recent::of(audit));
        }
        let ty = metrics.type_label(audit.ty.as_deref());
        if let (Outcome::DeadLettered, Some(reason)) = (audit.outcome, audit.reason) {
            let mut dead_letters = lock(&metrics.dead_letters);
            // A label is allocated only the first time its type is seen.
            let by_reason = match dead_letters.get_mut(ty) {
                Some(r) => r,
                None => dead_letters.entry(ty.to_owned()).or_default(),
            };
            *by_reason.entry(reason.code()).or_default() += 1;
        }
        if let Some(action) = &audit.action {
            let result = ActionResult {
                kind: action.kind,
                status: if action.kind == "http" {
                    Some(action.status.unwrap_or(0))
                } else {
                    None
                },
            };
            let mut actions = lock(&metrics.actions);
            // A label is allocated only the first time its action is seen.
            let by_result = match actions.get_mut(action.name.as_str()) {
                Some(r) => r,
                None => actions.entry(action.name.clone()).or_default(),
            };
            *by_result.entry(result).or_default() += 1;
        }
        if !audit.lookups.is_empty() {
            let mut lookups = lock(&metrics.lookups);
            for l in &audit.lookups {
                let counts = match lookups.get_mut(l.name.as_str()) {
                    Some(c) => c,
                    None => lookups.entry(l.name.clone()).or_default(),
                };
                counts[LOOKUP_SOURCES
                    .iter()
                    .position(|s| *s == l.source)
                    .unwrap_or_default()] += 1;
            }
        }
        let i = OUTCOMES
            .iter()
            .position(|o| *o == audit.outcome)
            .unwrap_or_default();
        let mut events = lock(&metrics.events);
        match events.get_mut(ty) {
            Some(counts) => counts[i] += 1,
            None => {
                let mut counts = [0; OUTCOMES.len()];
                counts[i] = 1;
                events.insert(ty.to_owned(), counts);
            }
        }
        let t = &audit.timings_us;
        let decoded = audit.reason != Some(DeadLetterReason::TooLarge);
        let validated = audit.ty.is_some()
            && matches!(
                audit.reason,
                None | Some(DeadLetterReason::SchemaInvalid)
                    | Some(DeadLetterReason::ActionFailed)
                    | Some(DeadLetterReason::EnrichmentFailed)
            );
        let stages = [
            (Stage::Decode, decoded, t.decode),
            (Stage::Validate, validated, t.validate),
            (Stage::Enrich, !audit.lookups.is_empty(), t.enrich),
            (Stage::Policy, audit.decision.is_some(), t.policy),
            (Stage::Action, audit.action.is_some(), t.action),
        ];
        for (stage, ran, us) in stages {
            if ran {
                metrics.stage(stage).observe(micros_to_seconds(us));
            }
        }
    }
}

impl Metrics {
    fn stage(&self, stage: Stage) -> &Histogram {
        let i = Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0);
        &self.stages[i]
    }
}

/// A record's outputs were published and acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct OutputsDelivered {
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
}

impl OutputsDelivered {
    /// Observes the delivery stage.
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .stage(Stage::Delivery)
            .observe(self.elapsed.as_secs_f64());
    }
}

/// An event was read again from its event topic after its copy in the retry topic, learned
/// with the partition, ran: it is not run a second time.
#[derive(Debug, Clone, Copy)]
pub struct EventReadAgain;

impl EventReadAgain {
    /// Counts it.
    pub fn emit(self, metrics: &Metrics) {
        metrics.read_again.fetch_add(1, Ordering::Relaxed);
    }
}

/// The worker's loop received a record.
#[derive(Debug, Clone, Copy)]
pub struct RecordConsumed<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (ms since the epoch), when it has one.
    pub timestamp_ms: Option<i64>,
}

impl RecordConsumed<'_> {
    /// Moves the partition's position (lag) and notes progress.
    pub fn emit(self, metrics: &Metrics) {
        self.emit_at(metrics, Instant::now());
    }

    /// [`Self::emit`], the record having arrived at `now`.
    pub fn emit_at(self, metrics: &Metrics, now: Instant) {
        metrics.progress_at(now);
        let mut partitions = lock(&metrics.partitions);
        // A record of a partition revoked meanwhile is not tracked.
        if let Some(state) = partitions
            .get_mut(self.topic)
            .and_then(|ps| ps.get_mut(&self.partition))
        {
            state.position = Some(self.offset + 1);
            if self.timestamp_ms.is_some() {
                state.last_timestamp_ms = self.timestamp_ms;
            }
        }
    }
}

/// Partitions were assigned to this worker.
#[derive(Debug, Clone, Copy)]
pub struct PartitionsAssigned<'a> {
    /// The partitions.
    pub partitions: &'a [TopicPartition],
}

impl PartitionsAssigned<'_> {
    /// Starts tracking them (`/readyz`, lag).
    pub fn emit(self, metrics: &Metrics) {
        let mut partitions = lock(&metrics.partitions);
        for (topic, partition) in self.partitions {
            partitions
                .entry(topic.clone())
                .or_default()
                .entry(*partition)
                .or_default();
        }
        metrics.assigned_once.store(true, Ordering::Relaxed);
    }
}

/// Partitions were taken from this worker.
#[derive(Debug, Clone, Copy)]
pub struct PartitionsRevoked<'a> {
    /// The partitions.
    pub partitions: &'a [TopicPartition],
}

impl PartitionsRevoked<'_> {
    /// Stops tracking them.
    pub fn emit(self, metrics: &Metrics) {
        let mut partitions = lock(&metrics.partitions);
        for (topic, partition) in self.partitions {
            if let Some(ps) = partitions.get_mut(topic) {
                ps.remove(partition);
                if ps.is_empty() {
                    partitions.remove(topic);
                }
            }
        }
    }
}

/// A policy set decides from now on.
#[derive(Debug, Clone, Copy)]
pub struct PolicyActive<'a> {
    /// Its revision.
    pub revision: &'a str,
    /// The evaluator.
    pub engine: PolicyEngine,
}

impl PolicyActive<'_> {
    /// Sets the policy info metric (and `/readyz`'s policy check).
    pub fn emit(self, metrics: &Metrics) {
        *lock(&metrics.policy) = Some((self.revision.to_owned(), self.engine));
    }
}

/// A policy set's evaluators decided every event type once before deciding a record.
#[derive(Debug, Clone, Copy)]
pub struct PolicyWarmed<'a> {
    /// The set's revision.
    pub revision: &'a str,
    /// Event types decided by each evaluator.
    pub types: usize,
    /// Evaluators warmed.
    pub evaluators: usize,
    /// How long it took.
    pub elapsed: Duration,
}

impl PolicyWarmed<'_> {
    /// Logs the warm-up and sets `reflex_policy_warm_up_seconds` and
    /// `reflex_policy_warmed_types` for the revision.
    pub fn emit(self, metrics: &Metrics) {
        tracing::info!(
            revision = %self.revision,
            types = self.types,
            evaluators = self.evaluators,
            elapsed = ?self.elapsed,
            "policy engines warmed: each event type decided once before the first record"
        );
        *lock(&metrics.policy_warm_up) = Some((
            self.revision.to_owned(),
            self.types,
            self.elapsed.as_secs_f64(),
        ));
    }
}

/// What the lake role wrote to one table.
#[derive(Debug, Clone, Copy, Default)]
pub struct LakeTable {
    /// Files.
    pub files: u64,
    /// Rows.
    pub rows: u64,
    /// Parquet bytes.
    pub bytes: u64,
    /// When this worker last wrote a file of it.
    pub last_file: Option<Instant>,
}

/// The lake role wrote a segment's files of one table.
#[derive(Debug, Clone, Copy)]
pub struct LakeFilesWritten<'a> {
    /// The table.
    pub table: &'a str,
    /// Files.
    pub files: u64,
    /// Rows.
    pub rows: u64,
    /// Parquet bytes.
    pub bytes: u64,
}

impl LakeFilesWritten<'_> {
    /// Counts them.
    pub fn emit(self, metrics: &Metrics) {
        let mut lake = lock(&metrics.lake);
        // A table is allocated only the first time it is written, if it was not known.
        let t = match lake.get_mut(self.table) {
            Some(t) => t,
            None => lake.entry(self.table.to_owned()).or_default(),
        };
        t.files += self.files;
        t.rows += self.rows;
        t.bytes += self.bytes;
        t.last_file = Some(Instant::now());
    }
}

/// One HTTP attempt of an action ended (see [`crate::service::AttemptDone`]).
#[derive(Debug, Clone, Copy)]
pub struct ActionAttempted<'a> {
    /// The attempt.
    pub done: &'a crate::service::AttemptDone<'a>,
}

impl ActionAttempted<'_> {
    /// Counts it by service, result and attempt, and observes its duration.
    pub fn emit(self, metrics: &Metrics) {
        let done = self.done;
        let mut attempts = lock(&metrics.attempts);
        // A service is allocated only the first time it is called.
        let service = match attempts.get_mut(done.service) {
            Some(s) => s,
            None => attempts.entry(done.service.to_owned()).or_default(),
        };
        *service
            .counts
            .entry((done.result.label(), attempt_label(done.attempt)))
            .or_default() += 1;
        service.duration.observe(done.elapsed.as_secs_f64());
    }

    /// An observer for [`crate::service::Services::observe_attempts`] that emits this event.
    pub fn observer(metrics: std::sync::Arc<Metrics>) -> crate::service::AttemptObserver {
        std::sync::Arc::new(move |done| ActionAttempted { done }.emit(&metrics))
    }
}

/// The worker's producer was asked for the brokers' metadata of a topic it writes.
#[derive(Debug, Clone, Copy)]
pub struct ProducerChecked<'a> {
    /// What failed, as `/readyz` says it: the brokers did not answer, or the topic is missing.
    pub error: Option<&'a str>,
}

impl ProducerChecked<'_> {
    /// Keeps the answer for `/readyz`; a failure that starts is logged once (the outage, if
    /// it lasts, has its own line).
    pub fn emit(self, metrics: &Metrics) {
        let mut producer = lock(&metrics.producer);
        let check = producer.get_or_insert_with(ProducerCheck::default);
        match self.error {
            None => {
                check.answered = Some(Instant::now());
                check.error = None;
            }
            Some(error) => {
                if check.error.is_none() {
                    tracing::debug!(error, "the producer check failed");
                }
                check.error = Some(error.to_owned());
            }
        }
    }
}

/// The lake role found files already written with the records it meant to write, and kept them.
#[derive(Debug, Clone, Copy)]
pub struct LakeFilesPresent {
    /// How many.
    pub files: u64,
}

impl LakeFilesPresent {
    /// Counts them.
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .lake_present
            .fetch_add(self.files, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
