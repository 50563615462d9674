//! The order of the stages for one event: size check → decode → validate → policy → action →
//! audit. Only this module knows that order. It turns one input record into the records to
//! publish (derived events, a dead letter, and always one audit record) without touching Kafka,
//! so every outcome can be tested without a broker.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use tokio_util::sync::CancellationToken;

use crate::action::{Action, ActionTable, Effect};
use crate::audit::{AuditRecord, DeadLetterReason, Outcome, Timings};
use crate::enrich::{EnrichVerdict, Enricher};
use crate::event::{CloudEvent, Mode};
use crate::policy::{telemetry, Decision, Evaluator, Failure};
use crate::registry::HttpRegistry;
use crate::schema::SchemaRegistry;
use crate::service::{CallOutcome, Services};
use deadletter::Rejection;

/// Headers reflex adds to a dead-letter record.
pub mod dlq_headers {
    /// The machine-readable reason code.
    pub const REASON: &str = "reflex_reason";
    /// A human-readable explanation.
    pub const ERROR: &str = "reflex_error";
    /// Topic of the original record.
    pub const TOPIC: &str = "reflex_source_topic";
    /// Partition of the original record.
    pub const PARTITION: &str = "reflex_source_partition";
    /// Offset of the original record.
    pub const OFFSET: &str = "reflex_source_offset";
    /// The worker that dead-lettered it.
    pub const WORKER: &str = "reflex_worker";
    /// The event's type, when it was read.
    pub const EVENT_TYPE: &str = "reflex_event_type";
    /// The action that failed.
    pub const ACTION: &str = "reflex_action";
    /// The action service's last HTTP status.
    pub const STATUS: &str = "reflex_status";
    /// Calls made to the action service, over every round.
    pub const ATTEMPTS: &str = "reflex_attempts";
    /// The start of the action service's last response body.
    pub const RESPONSE: &str = "reflex_response";
    /// Rounds through the retry topic so far.
    pub const RETRY_ROUND: &str = "reflex_retry_round";
    /// When a record in the retry topic is due (milliseconds since the epoch).
    pub const RETRY_AT: &str = "reflex_retry_at";
    /// The enrichment lookup that failed.
    pub const LOOKUP: &str = "reflex_lookup";
    /// `topic/partition/offset` of the dead letter a replayed record comes from.
    pub const REPLAY_OF: &str = "reflex_replay_of";
    /// The reason code of the dead letter a replayed record comes from.
    pub const REPLAY_REASON: &str = "reflex_replay_reason";
    /// Every header reflex adds starts with this; they are stripped before adding new ones.
    pub const PREFIX: &str = "reflex_";
}

/// One input record, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// Record headers.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Broker timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl<'a> Input<'a> {
    /// The first header named `name`, if its value is UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Key, value and header bytes together, as checked against `max_event_bytes`.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.key.map_or(0, <[u8]>::len) + self.value.map_or(0, <[u8]>::len) + headers
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: String,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What processing one record produced. The input's offset may be stored once every record
/// in `records` is acknowledged.
#[derive(Debug, Clone)]
pub struct Processed {
    /// Derived events or the dead letter, then the audit record (always last).
    pub records: Vec<OutRecord>,
    /// The audit record, also encoded as the last of `records`.
    pub audit: AuditRecord,
}

/// Runs the stages for one worker. Shared by the worker's records in flight, which may run on
/// several threads: each decision takes one of the policy evaluators (one per core by default),
/// locked only while it decides.
pub struct Processor {
    schemas: Arc<SchemaRegistry>,
    actions: Arc<ActionTable>,
    evaluators: Vec<Mutex<Evaluator>>,
    next: AtomicUsize,
    settings: ProcessorSettings,
}

/// Settings a [`Processor`] needs besides schemas, actions and policies.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// The audit topic.
    pub audit_topic: String,
    /// The dead-letter topic.
    pub dlq_topic: String,
    /// The retry topic: events whose action failed after its attempts wait there.
    pub retry_topic: String,
    /// How long an event waits in the retry topic before its next round.
    pub retry_delay: Duration,
    /// Rounds through the retry topic before an event is dead-lettered.
    pub retry_rounds: u32,
    /// Largest event processed.
    pub max_event_bytes: usize,
    /// This worker's id, recorded in audit and dead-letter records.
    pub worker: String,
    /// The schema registry for wire-format data.
    pub registry: Option<Arc<HttpRegistry>>,
    /// Header naming the type of plain wire-format records.
    pub type_header: String,
    /// Topic of events emitted by `emit` obligations that name none.
    pub policy_emit_topic: String,
    /// Further topics `emit` obligations may name.
    pub policy_emit_topics: Vec<String>,
    /// The HTTP client and circuit breakers of the action services.
    pub services: Services,
    /// The enrichment lookups, with their caches.
    pub enricher: Enricher,
}

/// A record that passed decoding and validation: its event, ready for enrichment, the policy
/// and the action.
#[derive(Debug)]
pub struct Admission {
    event: CloudEvent,
    mode: Mode,
    action: Arc<Action>,
    audit: AuditRecord,
    timings: Timings,
}

impl Admission {
    /// The event's id.
    pub fn event_id(&self) -> &str {
        &self.event.id
    }
}

/// The first stages' verdict on a record.
#[derive(Debug)]
pub enum Admitted {
    /// Processing ended early (a dead letter); publish its records.
    Finished(Box<Processed>),
    /// A valid event with an action.
    Event(Box<Admission>),
}

impl Processor {
    /// A processor deciding with `evaluators` (at least one is kept: an empty list means one
    /// evaluator without a policy, which denies everything).
    pub fn new(
        schemas: Arc<SchemaRegistry>,
        actions: Arc<ActionTable>,
        evaluators: Vec<Evaluator>,
        settings: ProcessorSettings,
    ) -> Self {
        let mut evaluators: Vec<Mutex<Evaluator>> =
            evaluators.into_iter().map(Mutex::new).collect();
        if evaluators.is_empty() {
            evaluators.push(Mutex::new(Evaluator::unloaded()));
        }
        Self {
            schemas,
            actions,
            evaluators,
            next: AtomicUsize::new(0),
            settings,
        }
    }

    /// A free evaluator, or (when every one is deciding) the next one in turn.
    fn evaluator(&self) -> MutexGuard<'_, Evaluator> {
        let n = self.evaluators.len();
        let first = self.next.fetch_add(1, AtomicOrdering::Relaxed);
        for i in 0..n {
            match self.evaluators[(first + i) % n].try_lock() {
                Ok(guard) => return guard,
                // A panic while deciding poisons the lock; the evaluator holds no half-made state.
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.evaluators[first % n]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides the next records with evaluators from `make` (a reloaded policy set), one per
    /// slot. Records already past their decision are not affected.
    pub fn set_evaluators(&self, mut make: impl FnMut() -> Evaluator) {
        for slot in &self.evaluators {
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = make();
        }
    }

    /// The policy revision deciding the next record.
    pub fn policy_revision(&self) -> String {
        self.evaluator().revision().to_owned()
    }

    /// Runs every stage for one record.
    pub async fn process(&self, input: &Input<'_>, cancel: &CancellationToken) -> Processed {
        match self.admit(input) {
            Admitted::Finished(processed) => *processed,
            Admitted::Event(admission) => self.complete(input, *admission, cancel).await,
        }
    }

    /// Size check, decoding, the type's action and schema validation.
    pub fn admit(&self, input: &Input<'_>) -> Admitted {
        let mut timings = Timings::default();
        let mut audit = AuditRecord::new(input, &self.settings.worker);
        audit.retry_round = deadletter::retry_round(input);
        audit.origin = deadletter::origin(input);
        audit.replay_of = deadletter::replay_of(input);
        let size = input.size();
        if size > self.settings.max_event_bytes {
            let why = format!(
                "record is {size} bytes, above roles.actions.max_event_bytes = {}",
                self.settings.max_event_bytes
            );
            let rejected = Rejection::new(DeadLetterReason::TooLarge, why);
            return Admitted::Finished(Box::new(self.dead_letter(input, audit, rejected, timings)));
        }

        let started = Instant::now();
        let is_wire = input
            .value
            .is_some_and(crate::schema::wire::looks_like_wire);
        let decoded = if is_wire {
            wire::decode(
                self.settings.registry.as_deref(),
                &self.settings.type_header,
                input,
            )
        } else {
            CloudEvent::decode(input.value, input.headers).map_err(|e| wire::Rejected {
                reason: DeadLetterReason::Undecodable,
                error: e.to_string(),
                event: None,
            })
        };
        timings.decode = micros(started);
        let (event, mode) = match decoded {
            Ok(ok) => ok,
            Err(rejected) => {
                if let Some(envelope) = &rejected.event {
                    describe(&mut audit, &envelope.0, envelope.1);
                }
                let rejected = Rejection::new(rejected.reason, rejected.error);
                return Admitted::Finished(Box::new(
                    self.dead_letter(input, audit, rejected, timings),
                ));
            }
        };
        describe(&mut audit, &event, mode);

        let Some(action) = self.actions.get(&event.ty).cloned() else {
            let why = format!("event type \"{}\" has no schema and no action", event.ty);
            let rejected = Rejection::new(DeadLetterReason::UnknownType, why);
            return Admitted::Finished(Box::new(self.dead_letter(input, audit, rejected, timings)));
        };

        // Wire-format data was validated against its registered schema while decoding.
        let started = Instant::now();
        let violations = if is_wire {
            Vec::new()
        } else {
            let data = event.data.as_ref().unwrap_or(&Value::Null);
            self.schemas.validate(&event.ty, data).unwrap_or_default()
        };
        timings.validate = micros(started);
        if !violations.is_empty() {
            let why = crate::schema::summarize(&violations);
            let rejected = Rejection::new(DeadLetterReason::SchemaInvalid, why);
            return Admitted::Finished(Box::new(self.dead_letter(input, audit, rejected, timings)));
        }
        Admitted::Event(Box::new(Admission {
            event,
            mode,
            action,
            audit,
            timings,
        }))
    }

    /// Enrichment, the policy decision, its obligations and the action, for an admitted event.
    /// A `cancel`led call ends as a failure the worker discards (the record is processed
    /// again after restart).
    pub async fn complete(
        &self,
        input: &Input<'_>,
        admission: Admission,
        cancel: &CancellationToken,
    ) -> Processed {
        let Admission {
            event,
            mode,
            action,
            mut audit,
            mut timings,
        } = admission;
        let mut records = Vec::with_capacity(2);

        let started = Instant::now();
        let enrichment = self.settings.enricher.enrich(&event, cancel).await;
        timings.enrich = micros(started);
        audit.lookups = enrichment.lookups;
        match enrichment.verdict {
            EnrichVerdict::Complete => {}
            EnrichVerdict::Deny { lookup, error } => {
                let detail = format!("enrichment lookup \"{lookup}\" failed: {error}");
                audit.outcome = Outcome::Denied;
                audit.decision = Some(Decision::enrichment_failed(detail));
                return self.finish(audit, records, timings);
            }
            EnrichVerdict::RetryLater { lookup, error } => {
                let why = format!("enrichment lookup \"{lookup}\" failed: {error}");
                let context = vec![(dlq_headers::LOOKUP, lookup)];
                if self.may_retry(&audit) {
                    records.push(self.retry(input, &mut audit, why, context));
                    return self.finish(audit, records, timings);
                }
                let mut rejection = Rejection::new(DeadLetterReason::EnrichmentFailed, why);
                rejection.context = context;
                return self.dead_letter_after(input, &mut audit, rejection, records, timings);
            }
        }
        let enrichment = enrichment.values;

        let started = Instant::now();
        let now = chrono::Utc::now();
        let mut decision = {
            let mut evaluator = self.evaluator();
            audit.policy_revision = evaluator.revision().to_owned();
            evaluator.decide(policy_input(&event, mode, input, &now, &enrichment))
        };
        if let Some(topic) = self.unknown_emit_topic(&decision) {
            let detail = format!(
                "an emit obligation names topic \"{topic}\", which is neither policy.emit_topic nor in policy.emit_topics"
            );
            telemetry::PolicyFailedClosed {
                failure: Failure::Malformed,
            }
            .emit();
            decision = Decision::failed(Failure::Malformed, Some(detail));
        }
        timings.policy = micros(started);
        audit.processed_at = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

        // Every copy of the event's data written from here on is redacted.
        let redact = decision.redact_paths();
        let redacted;
        let event = if redact.is_empty() {
            &event
        } else {
            redacted = obligations::redacted(&event, &redact);
            &redacted
        };
        // The audit record names what was emitted (type, topic, id), not the emitted data.
        let mut emitted = Vec::new();
        for (index, emit) in decision.emits().into_iter().enumerate() {
            let derived = obligations::emitted_event(event, &emit, index, &audit.policy_revision);
            let topic = emit
                .topic
                .unwrap_or_else(|| self.settings.policy_emit_topic.clone());
            emitted.push(json!({"type": emit.ty, "topic": topic, "id": derived.id}));
            let key = derived.id.clone().into_bytes();
            records.push(obligations::event_record(topic, key, &derived));
        }
        if !emitted.is_empty() {
            decision
                .obligations
                .insert("emit".to_owned(), Value::Array(emitted));
        }

        if !decision.allow {
            audit.outcome = Outcome::Denied;
            audit.decision = Some(decision);
            return self.finish(audit, records, timings);
        }
        let started = Instant::now();
        let (effect, mut report) = action.run(event, &decision.obligations);
        match effect {
            Effect::Emit {
                topic,
                event: derived,
            } => {
                let key = input
                    .key
                    .map_or_else(|| derived.id.clone().into_bytes(), <[u8]>::to_vec);
                records.push(obligations::event_record(topic, key, &derived));
            }
            Effect::Done => {}
            Effect::Call => {
                let Some(http) = action.http() else {
                    unreachable!("only http actions ask for a call");
                };
                let body = json!({
                    "event": event,
                    "enrichment": enrichment,
                    "obligations": decision.obligations,
                });
                let call = self
                    .settings
                    .services
                    .perform(http, event, &body, cancel)
                    .await;
                let attempts = deadletter::prior_attempts(input) + call.attempts;
                report.attempts = Some(attempts);
                if let CallOutcome::Failed {
                    status,
                    error,
                    retryable,
                    excerpt,
                    ..
                } = call.outcome
                {
                    timings.action = micros(started);
                    report.status = status;
                    audit.action = Some(report);
                    audit.decision = Some(decision);
                    let why = format!(
                        "action \"{}\" failed after {attempts} attempts: {error}",
                        action.name
                    );
                    let mut context = vec![
                        (dlq_headers::ACTION, action.name.clone()),
                        (dlq_headers::ATTEMPTS, attempts.to_string()),
                        (dlq_headers::RESPONSE, excerpt),
                    ];
                    if let Some(status) = status {
                        context.push((dlq_headers::STATUS, status.to_string()));
                    }
                    if retryable && self.may_retry(&audit) {
                        records.push(self.retry(input, &mut audit, why, context));
                        return self.finish(audit, records, timings);
                    }
                    let mut rejection = Rejection::new(DeadLetterReason::ActionFailed, why);
                    rejection.context = context;
                    return self.dead_letter_after(input, &mut audit, rejection, records, timings);
                }
                if let CallOutcome::Succeeded { status, .. } = call.outcome {
                    report.status = Some(status);
                }
            }
        }
        timings.action = micros(started);
        audit.outcome = Outcome::Actioned;
        audit.action = Some(report);
        audit.decision = Some(decision);
        self.finish(audit, records, timings)
    }

    /// An admitted event that must wait behind an earlier event of its key, which is in the
    /// retry topic: it follows it there, unprocessed, so the key's order is kept.
    pub fn wait_behind(&self, input: &Input<'_>, admission: Admission, first: &str) -> Processed {
        let Admission {
            mut audit, timings, ..
        } = admission;
        let why =
            format!("waits behind event \"{first}\" of the same key, which is in the retry topic");
        let record = self.follow(input, &mut audit, why);
        self.finish(audit, vec![record], timings)
    }

    /// A topic an `emit` obligation names that the configuration does not allow.
    fn unknown_emit_topic(&self, decision: &Decision) -> Option<String> {
        decision
            .emits()
            .into_iter()
            .filter_map(|e| e.topic)
            .find(|t| {
                *t != self.settings.policy_emit_topic
                    && !self.settings.policy_emit_topics.contains(t)
            })
    }

    fn finish(
        &self,
        mut audit: AuditRecord,
        mut records: Vec<OutRecord>,
        timings: Timings,
    ) -> Processed {
        if audit.processed_at.is_empty() {
            audit.processed_at =
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        }
        if audit.policy_revision.is_empty() {
            audit.policy_revision = self.evaluator().revision().to_owned();
        }
        audit.timings_us = timings;
        records.push(OutRecord {
            topic: self.settings.audit_topic.clone(),
            key: Some(audit.key().into_bytes()),
            value: Some(audit.encode()),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
        });
        Processed { records, audit }
    }
}

/// Copies the envelope into the audit record.
fn describe(audit: &mut AuditRecord, event: &CloudEvent, mode: Mode) {
    audit.event_id = Some(event.id.clone());
    audit.ty = Some(event.ty.clone());
    audit.source = Some(event.source.clone());
    audit.subject = event.subject.clone();
    audit.event_time = event.time.clone();
    audit.mode = Some(mode);
}

/// The policy input document: `{event, enrichment, context}`. `now` is the moment of the
/// decision; the audit record's `processed_at` is the same instant, so a replay can decide again
/// with the same `context.now` (to the millisecond).
pub fn policy_input(
    event: &CloudEvent,
    mode: Mode,
    input: &Input<'_>,
    now: &chrono::DateTime<chrono::Utc>,
    enrichment: &serde_json::Map<String, Value>,
) -> regorus::Value {
    let now = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    crate::policy::input::document(
        event,
        enrichment,
        &crate::policy::input::Context {
            topic: input.topic,
            partition: input.partition,
            offset: input.offset,
            mode,
            kafka_timestamp_ms: input.timestamp_ms,
            now: &now,
        },
    )
}

/// [`policy_input`] as JSON (the same document; `policy_input` builds it without this copy).
pub fn policy_document(
    event: &CloudEvent,
    mode: Mode,
    input: &Input<'_>,
    now: &chrono::DateTime<chrono::Utc>,
    enrichment: &serde_json::Map<String, Value>,
) -> Value {
    json!({
        "event": event,
        "enrichment": enrichment,
        "context": {
            "topic": input.topic,
            "partition": input.partition,
            "offset": input.offset,
            "mode": mode,
            "kafka_timestamp_ms": input.timestamp_ms,
            "now": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        },
    })
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

pub(crate) mod deadletter;
pub use deadletter::{origin_topic, retry_due};
pub(crate) mod obligations;
pub(crate) mod wire;

#[cfg(test)]
mod tests;
