//! The order of the stages for one event: size check → decode → validate → policy → action →
//! audit. Only this module knows that order. It turns one input record into the records to
//! publish (derived events, a dead letter, and always one audit record) without touching Kafka,
//! so every outcome can be tested without a broker.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::action::{ActionTable, Effect};
use crate::audit::{AuditRecord, DeadLetterReason, Outcome, Timings};
use crate::event::{CloudEvent, Mode};
use crate::policy::{telemetry, Decision, Evaluator, Failure};
use crate::registry::HttpRegistry;
use crate::schema::SchemaRegistry;

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

impl Input<'_> {
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

/// Runs the stages for one worker; owns that worker's policy evaluator.
pub struct Processor {
    schemas: Arc<SchemaRegistry>,
    actions: Arc<ActionTable>,
    evaluator: Evaluator,
    audit_topic: String,
    dlq_topic: String,
    max_event_bytes: usize,
    worker: String,
    registry: Option<Arc<HttpRegistry>>,
    type_header: String,
    policy_emit_topic: String,
    policy_emit_topics: Vec<String>,
}

/// Settings a [`Processor`] needs besides schemas, actions and policies.
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// The audit topic.
    pub audit_topic: String,
    /// The dead-letter topic.
    pub dlq_topic: String,
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
}

impl Processor {
    /// A processor with its own evaluator.
    pub fn new(
        schemas: Arc<SchemaRegistry>,
        actions: Arc<ActionTable>,
        evaluator: Evaluator,
        settings: ProcessorSettings,
    ) -> Self {
        Self {
            schemas,
            actions,
            evaluator,
            audit_topic: settings.audit_topic,
            dlq_topic: settings.dlq_topic,
            max_event_bytes: settings.max_event_bytes,
            worker: settings.worker,
            registry: settings.registry,
            type_header: settings.type_header,
            policy_emit_topic: settings.policy_emit_topic,
            policy_emit_topics: settings.policy_emit_topics,
        }
    }

    /// Decides the next records with `evaluator` (a reloaded policy set). The record being
    /// processed, if any, finishes with the evaluator it started with.
    pub fn set_evaluator(&mut self, evaluator: Evaluator) {
        self.evaluator = evaluator;
    }

    /// The policy revision deciding the next record.
    pub fn policy_revision(&self) -> &str {
        self.evaluator.revision()
    }

    /// Processes one record.
    pub fn process(&mut self, input: &Input<'_>) -> Processed {
        let mut timings = Timings::default();
        let mut audit = AuditRecord {
            event_id: None,
            ty: None,
            source: None,
            subject: None,
            event_time: None,
            mode: None,
            topic: input.topic.to_owned(),
            partition: input.partition,
            offset: input.offset,
            outcome: Outcome::DeadLettered,
            reason: None,
            error: None,
            decision: None,
            policy_revision: self.evaluator.revision().to_owned(),
            action: None,
            worker: self.worker.clone(),
            processed_at: String::new(),
            timings_us: Timings::default(),
        };
        let mut records = Vec::with_capacity(2);

        let size = input.size();
        if size > self.max_event_bytes {
            let why = format!(
                "record is {size} bytes, above roles.actions.max_event_bytes = {}",
                self.max_event_bytes
            );
            return self.dead_letter(
                input,
                audit,
                records,
                DeadLetterReason::TooLarge,
                why,
                timings,
            );
        }

        let started = Instant::now();
        let is_wire = input
            .value
            .is_some_and(crate::schema::wire::looks_like_wire);
        let decoded = if is_wire {
            wire::decode(self.registry.as_deref(), &self.type_header, input)
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

                return self.dead_letter(
                    input,
                    audit,
                    records,
                    rejected.reason,
                    rejected.error,
                    timings,
                );
            }
        };
        describe(&mut audit, &event, mode);

        let Some(action) = self.actions.get(&event.ty).cloned() else {
            let why = format!("event type \"{}\" has no schema and no action", event.ty);
            return self.dead_letter(
                input,
                audit,
                records,
                DeadLetterReason::UnknownType,
                why,
                timings,
            );
        };

        // Wire-format data was validated against its registered schema while decoding.
        let started = Instant::now();
        let data = event.data.as_ref().unwrap_or(&Value::Null);
        let violations = if is_wire {
            Vec::new()
        } else {
            self.schemas.validate(&event.ty, data).unwrap_or_default()
        };
        timings.validate = micros(started);
        if !violations.is_empty() {
            let why = crate::schema::summarize(&violations);
            return self.dead_letter(
                input,
                audit,
                records,
                DeadLetterReason::SchemaInvalid,
                why,
                timings,
            );
        }

        let started = Instant::now();
        let now = chrono::Utc::now();
        let mut decision = self
            .evaluator
            .decide(policy_input(&event, mode, input, &now));
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
            let derived =
                obligations::emitted_event(event, &emit, index, self.evaluator.revision());
            let topic = emit.topic.unwrap_or_else(|| self.policy_emit_topic.clone());
            emitted.push(json!({"type": emit.ty, "topic": topic, "id": derived.id}));
            let key = derived.id.clone().into_bytes();
            records.push(obligations::event_record(topic, key, &derived));
        }
        if !emitted.is_empty() {
            decision
                .obligations
                .insert("emit".to_owned(), Value::Array(emitted));
        }

        if decision.allow {
            let started = Instant::now();
            let (effect, report) = action.run(event, &decision.obligations);
            timings.action = micros(started);
            if let Effect::Emit {
                topic,
                event: derived,
            } = effect
            {
                let key = input
                    .key
                    .map_or_else(|| derived.id.clone().into_bytes(), <[u8]>::to_vec);
                records.push(obligations::event_record(topic, key, &derived));
            }
            audit.outcome = Outcome::Actioned;
            audit.action = Some(report);
        } else {
            audit.outcome = Outcome::Denied;
        }
        audit.decision = Some(decision);
        self.finish(audit, records, timings)
    }

    /// A topic an `emit` obligation names that the configuration does not allow.
    fn unknown_emit_topic(&self, decision: &Decision) -> Option<String> {
        decision
            .emits()
            .into_iter()
            .filter_map(|e| e.topic)
            .find(|t| *t != self.policy_emit_topic && !self.policy_emit_topics.contains(t))
    }

    fn dead_letter(
        &self,
        input: &Input<'_>,
        mut audit: AuditRecord,
        mut records: Vec<OutRecord>,
        reason: DeadLetterReason,
        error: String,
        timings: Timings,
    ) -> Processed {
        let mut headers: Vec<(String, Vec<u8>)> = input
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
            .collect();
        headers.extend([
            (
                dlq_headers::REASON.to_owned(),
                reason.code().as_bytes().to_vec(),
            ),
            (dlq_headers::ERROR.to_owned(), error.as_bytes().to_vec()),
            (
                dlq_headers::TOPIC.to_owned(),
                input.topic.as_bytes().to_vec(),
            ),
            (
                dlq_headers::PARTITION.to_owned(),
                input.partition.to_string().into_bytes(),
            ),
            (
                dlq_headers::OFFSET.to_owned(),
                input.offset.to_string().into_bytes(),
            ),
            (
                dlq_headers::WORKER.to_owned(),
                self.worker.as_bytes().to_vec(),
            ),
        ]);
        records.push(OutRecord {
            topic: self.dlq_topic.clone(),
            key: input.key.map(<[u8]>::to_vec),
            value: input.value.map(<[u8]>::to_vec),
            headers,
        });
        audit.outcome = Outcome::DeadLettered;
        audit.reason = Some(reason);
        audit.error = Some(error);
        self.finish(audit, records, timings)
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
        audit.timings_us = timings;
        records.push(OutRecord {
            topic: self.audit_topic.clone(),
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
) -> regorus::Value {
    let now = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    crate::policy::input::document(
        event,
        &serde_json::Map::new(),
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
) -> Value {
    json!({
        "event": event,
        "enrichment": {},
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

pub(crate) mod obligations;
pub(crate) mod wire;

#[cfg(test)]
mod tests;
