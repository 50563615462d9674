//! The order of the stages for one event: admission (size check → decode → validate) →
//! enrichment → policy → action → audit. Only this module knows that order. It turns one input
//! record into the records to publish (derived events, a dead letter or retry record, and always
//! one audit record) without touching Kafka, so every outcome can be tested without a broker.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::Context as TraceContext;
use serde_json::{json, Value};

use tokio_util::sync::CancellationToken;

use crate::action::{Action, ActionTable, Effect};
use crate::audit::{AuditRecord, Outcome, Timings};
use crate::enrich::{EnrichVerdict, Enricher};
use crate::event::{CloudEvent, Mode};
use crate::ingest::headers::{self, Context};
use crate::ingest::{
    self, Admitter, DeadLetterReason, DecisionInput, EmitTopics, Input, OutRecord,
};
use crate::otel::{self, Tracer};
use crate::policy::{Decision, Evaluator};
use crate::publisher::{Keyring, Publisher};
use crate::registry::HttpRegistry;
use crate::schema::SchemaRegistry;
use crate::service::{CallOutcome, Services};
use deadletter::DeadEnd;

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
    admitter: Admitter,
    emit: EmitTopics,
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
    /// The worker's tracer when tracing is on: stages run in spans of their own.
    pub tracer: Option<Tracer>,
    /// The publishers' keys, which verify record signatures at admission.
    pub publishers: Arc<Keyring>,
}

/// A record that passed decoding and validation: its event, ready for enrichment, the policy
/// and the action.
#[derive(Debug)]
pub struct Admission {
    event: CloudEvent,
    mode: Mode,
    /// Whether its data arrived in the Confluent wire format.
    wire: bool,
    publisher: Publisher,
    action: Arc<Action>,
    audit: AuditRecord,
    timings: Timings,
}

impl Admission {
    /// The event's id.
    pub fn event_id(&self) -> &str {
        &self.event.id
    }

    /// The admitted event.
    pub fn event(&self) -> &CloudEvent {
        &self.event
    }

    /// Time spent decoding and validating it.
    pub fn timings(&self) -> &Timings {
        &self.timings
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
        let admitter = Admitter::with(
            schemas,
            settings.registry.clone(),
            settings.type_header.clone(),
            settings.max_event_bytes,
        )
        .with_publishers(settings.publishers.clone());
        let emit = EmitTopics {
            default: settings.policy_emit_topic.clone(),
            allowed: settings.policy_emit_topics.clone(),
        };
        Self {
            admitter,
            emit,
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

    /// The worker's tracer, when tracing is on.
    pub fn tracer(&self) -> Option<&Tracer> {
        self.settings.tracer.as_ref()
    }

    /// A span for `name`, child of the current one, when tracing is on; it ends when dropped.
    fn stage_span(&self, name: &'static str) -> StageSpan {
        StageSpan(self.settings.tracer.as_ref().map(|t| t.stage(name)))
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

    /// Admission (size check, decoding, schema validation) and the type's action.
    pub fn admit(&self, input: &Input<'_>) -> Admitted {
        let mut timings = Timings::default();
        let mut audit = AuditRecord::new(input, &self.settings.worker);
        audit.retry_round = headers::retry_round(input);
        audit.origin = headers::origin(input);
        audit.replay_of = headers::replay_of(input);
        // The trace the record arrived in; a decoded event's own `traceparent` comes first.
        audit.traceid = crate::otel::trace_id(&crate::otel::parent(None, input.headers));
        let admitted = match self.admitter.admit(input) {
            Ok(admitted) => admitted,
            Err(rejection) => {
                timings.decode = rejection.timings.decode;
                timings.validate = rejection.timings.validate;
                if let Some(envelope) = &rejection.envelope {
                    describe(&mut audit, &envelope.0, envelope.1);
                }
                let end = DeadEnd::new(rejection.reason, rejection.error);
                return Admitted::Finished(Box::new(self.dead_letter(input, audit, end, timings)));
            }
        };
        timings.decode = admitted.timings.decode;
        timings.validate = admitted.timings.validate;
        describe(&mut audit, &admitted.event, admitted.mode);
        if !admitted.event.extensions.is_empty() {
            audit.traceid = crate::otel::trace_id(&crate::otel::parent(
                Some(&admitted.event.extensions),
                input.headers,
            ))
            .or(audit.traceid);
        }
        audit.publisher = Some(admitted.publisher.clone());
        let Some(action) = self.actions.get(&admitted.event.ty).cloned() else {
            // Start-up checks that every type with a schema has an action.
            let why = format!("event type \"{}\" has no action", admitted.event.ty);
            let end = DeadEnd::new(DeadLetterReason::UnknownType, why);
            return Admitted::Finished(Box::new(self.dead_letter(input, audit, end, timings)));
        };
        Admitted::Event(Box::new(Admission {
            event: admitted.event,
            mode: admitted.mode,
            wire: admitted.wire,
            publisher: admitted.publisher,
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
            wire,
            publisher,
            action,
            mut audit,
            mut timings,
        } = admission;
        let mut records = Vec::with_capacity(2);

        let started = Instant::now();
        let span = self.stage_span("enrich");
        let enrichment = span
            .around(self.settings.enricher.enrich(&event, cancel))
            .await;
        drop(span);
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
                let context = Context::Lookup { name: lookup };
                if self.may_retry(&audit) {
                    records.push(self.retry(input, &mut audit, why, Some(context)));
                    return self.finish(audit, records, timings);
                }
                let mut end = DeadEnd::new(DeadLetterReason::EnrichmentFailed, why);
                end.context = Some(context);
                return self.dead_letter_after(input, &mut audit, end, records, timings);
            }
        }
        let enrichment = enrichment.values;
        audit.enrichment = enrichment.clone();

        let started = Instant::now();
        let span = self.stage_span("policy");
        let now = chrono::Utc::now();
        let mut decision = {
            let mut evaluator = self.evaluator();
            audit.policy_revision = evaluator.revision().to_owned();
            let on = DecisionInput {
                event: &event,
                mode,
                input,
                now: &now,
                publisher: &publisher,
                enrichment: &enrichment,
                wire,
            };
            ingest::decide(&mut evaluator, &on, &self.emit)
        };
        drop(span);
        timings.policy = micros(started);
        audit.processed_at = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

        // Every copy of the event's data written from here on is redacted: the event is
        // redacted in place, as nothing after the decision reads what is hidden.
        let mut event = event;
        crate::policy::redact::redact_event(&mut event, &decision.redact_paths());
        let event = &event;
        // The audit record names what was emitted (type, topic, id), not the emitted data.
        let emits = decision.take_emits();
        if !emits.is_empty() {
            let mut emitted = Vec::with_capacity(emits.len());
            for (index, emit) in emits.into_iter().enumerate() {
                let topic = emit
                    .topic
                    .clone()
                    .unwrap_or_else(|| self.settings.policy_emit_topic.clone());
                let ty = emit.ty.clone();
                let mut derived =
                    obligations::emitted_event(event, emit, index, &audit.policy_revision);
                if self.settings.tracer.is_some() {
                    otel::stamp(&mut derived.extensions);
                }
                emitted.push(json!({"type": ty, "topic": topic, "id": derived.id}));
                let key = derived.id.clone().into_bytes();
                records.push(obligations::event_record(topic, key, &derived));
            }
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
        let span = self.stage_span("action");
        let (effect, mut report) = action.run(event, &decision.obligations);
        match effect {
            Effect::Emit {
                topic,
                event: mut derived,
            } => {
                span.stamp(&mut derived.extensions);
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
                let call = span
                    .around(self.settings.services.perform(http, event, &body, cancel))
                    .await;
                let attempts = headers::prior_attempts(input) + call.attempts;
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
                    let context = Context::Action {
                        name: action.name.clone(),
                        status,
                        attempts,
                        response: excerpt,
                    };
                    if retryable && self.may_retry(&audit) {
                        records.push(self.retry(input, &mut audit, why, Some(context)));
                        return self.finish(audit, records, timings);
                    }
                    let mut end = DeadEnd::new(DeadLetterReason::ActionFailed, why);
                    end.context = Some(context);
                    return self.dead_letter_after(input, &mut audit, end, records, timings);
                }
                if let CallOutcome::Succeeded { status, .. } = call.outcome {
                    report.status = Some(status);
                }
            }
        }
        drop(span);
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

    /// An event read again from its event topic while its copy waits in the retry topic (a
    /// crash or a rebalance came between the two): no second copy, only an audit record saying
    /// so; the copy runs in its turn.
    pub fn already_waiting(&self, admission: Admission) -> Processed {
        let Admission {
            mut audit, timings, ..
        } = admission;
        audit.outcome = crate::audit::Outcome::Retrying;
        audit.error = Some(
            "read again while its copy waits in the retry topic; that copy runs in its turn".into(),
        );
        self.finish(audit, Vec::new(), timings)
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
        // The record's span, when tracing is on, is current while its stages run.
        if let Some(traceid) = crate::otel::current_trace_id() {
            audit.traceid = Some(traceid);
        }
        records.push(OutRecord {
            partition: None,
            topic: self.settings.audit_topic.clone(),
            key: Some(audit.key().into_bytes()),
            value: Some(audit.encode()),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
        });
        Processed { records, audit }
    }
}

/// The span of one stage when tracing is on; ended when dropped.
struct StageSpan(Option<TraceContext>);

impl StageSpan {
    /// `stage` with this span current while it runs.
    fn around<F: std::future::Future>(
        &self,
        stage: F,
    ) -> impl std::future::Future<Output = F::Output> {
        match &self.0 {
            Some(cx) => Either::Left(stage.with_context(cx.clone())),
            None => Either::Right(stage),
        }
    }

    /// Stamps this span's trace context on an emitted event.
    fn stamp(&self, extensions: &mut std::collections::BTreeMap<String, Value>) {
        if let Some(cx) = &self.0 {
            let _current = cx.clone().attach();
            otel::stamp(extensions);
        }
    }
}

impl Drop for StageSpan {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
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

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

mod deadletter;
mod obligations;

#[cfg(test)]
mod tests;
