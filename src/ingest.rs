//! A consumed record's life up to the decision, the same for every consumer of records: the
//! actions role, the lake role, `reflex policy replay` and `eval`, and `reflex dlq`.
//!
//! - [`Input`] is a consumed record as every stage sees it; [`OutRecord`] a record to publish.
//! - [`headers`] owns every `reflex_*` header: the dead-letter and retry format.
//! - [`Admitter::admit`] is the one admission: size limit → structured, binary or wire-format
//!   decode → schema validation, giving an [`Admitted`] event, with its publisher's signature
//!   verified ([`crate::publisher`]), or a [`Rejection`] with its dead-letter reason. A missing
//!   or bad signature is not a rejection: the policy decides on it. [`Admitter::admit_fields`]
//!   gives the same answer to readers of a few fields (the analytics role), with a structured
//!   event's data on a tape instead of in a `Value`.
//! - [`policy_input`] is the one builder of the policy input document `{event, publisher,
//!   enrichment, context}`, and [`decide`] the one decision on it: the full decision, the allowed `emit`
//!   topics, and the redaction paths, which come from the event alone.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::{CloudEvent, EventRef, Mode, TapedEvent};
use crate::policy::redaction::RedactionFailed;
use crate::policy::{telemetry, Decision, Evaluator, Failure};
use crate::publisher::{Keyring, Publisher};
use crate::registry::HttpRegistry;
use crate::schema::SchemaRegistry;

pub mod fuzz;
pub mod headers;
mod record;
mod wire;

pub use record::{Input, OutRecord};

/// Why a record went to the dead-letter topic. The codes are stable, for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Larger than `roles.actions.max_event_bytes`.
    TooLarge,
    /// Not a CloudEvent (bad bytes, missing attributes, bad time).
    Undecodable,
    /// No schema and no action for its type.
    UnknownType,
    /// `data` violates the type's schema.
    SchemaInvalid,
    /// `data` claims the Confluent wire format but its header is malformed.
    WireFormat,
    /// The wire-format schema id is not in the registry (or no registry is configured).
    SchemaNotFound,
    /// The wire-format schema id belongs to another subject than the event type's.
    SchemaSubjectMismatch,
    /// The wire-format payload does not decode with its schema (truncated, trailing bytes…).
    DataUndecodable,
    /// The action failed permanently, or kept failing through every retry round.
    ActionFailed,
    /// An enrichment lookup whose fallback is `retry` kept failing through every retry round.
    EnrichmentFailed,
    /// The analytics role found the event late: every window it belongs to had closed.
    Late,
}

impl DeadLetterReason {
    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Undecodable => "undecodable",
            Self::UnknownType => "unknown_type",
            Self::SchemaInvalid => "schema_invalid",
            Self::WireFormat => "wire_format",
            Self::SchemaNotFound => "schema_not_found",
            Self::SchemaSubjectMismatch => "schema_subject_mismatch",
            Self::DataUndecodable => "data_undecodable",
            Self::ActionFailed => "action_failed",
            Self::EnrichmentFailed => "enrichment_failed",
            Self::Late => "late",
        }
    }
}

/// Microseconds the admission stages took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmitTimings {
    /// Decoding (and, for wire-format data, validation against the registered schema).
    pub decode: u64,
    /// Validation against the type's schema.
    pub validate: u64,
}

/// A record that passed admission: a valid event of a known type.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The event.
    pub event: CloudEvent,
    /// How it arrived.
    pub mode: Mode,
    /// Whether its data came in the Confluent wire format.
    pub wire: bool,
    /// What its publisher signature proves.
    pub publisher: Publisher,
    /// Stage timings.
    pub timings: AdmitTimings,
}

/// An event admitted for reading its fields ([`Admitter::admit_fields`]).
#[derive(Debug)]
pub enum AdmittedFields<'a> {
    /// A structured event: its attributes borrowed from the record, its data on a tape.
    Taped(TapedEvent<'a>),
    /// Any other event, decoded whole.
    Whole(CloudEvent),
}

impl AdmittedFields<'_> {
    /// The event as its fields are read.
    pub fn view(&self) -> EventRef<'_> {
        match self {
            Self::Taped(event) => event.view(),
            Self::Whole(event) => EventRef::from(event),
        }
    }

    /// The event time, parsed; `None` when the producer did not set one.
    pub fn parsed_time(&self) -> Option<DateTime<FixedOffset>> {
        match self {
            Self::Taped(event) => event.parsed_time(),
            Self::Whole(event) => event.parsed_time(),
        }
    }
}

/// A record that did not pass admission: its dead-letter reason and explanation.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The dead-letter reason.
    pub reason: DeadLetterReason,
    /// The explanation (never the payload).
    pub error: String,
    /// The envelope, when it was read before the failure.
    pub envelope: Option<Box<(CloudEvent, Mode)>>,
    /// Stage timings.
    pub timings: AdmitTimings,
}

/// Admits records: what every consumer of records needs to read one.
#[derive(Debug, Clone)]
pub struct Admitter {
    schemas: Arc<SchemaRegistry>,
    registry: Option<Arc<HttpRegistry>>,
    type_header: String,
    max_event_bytes: usize,
    publishers: Arc<Keyring>,
    timed: bool,
}

impl Admitter {
    /// An admitter with the configuration's schemas, registry, type header, size limit and
    /// publisher keys.
    pub fn new(config: &Config) -> Self {
        Self::with(
            config.schemas.clone(),
            config.registry.clone(),
            config.type_header.clone(),
            config.actions_role.max_event_bytes,
        )
        .with_publishers(config.publishers.clone())
    }

    /// An admitter from its parts.
    pub fn with(
        schemas: Arc<SchemaRegistry>,
        registry: Option<Arc<HttpRegistry>>,
        type_header: String,
        max_event_bytes: usize,
    ) -> Self {
        Self {
            schemas,
            registry,
            type_header,
            max_event_bytes,
            publishers: Arc::default(),
            timed: true,
        }
    }

    /// Leaves [`Admitted::timings`] and [`Rejection::timings`] at zero: for roles that report
    /// no stage timings, which then read no clock per record.
    pub fn untimed(mut self) -> Self {
        self.timed = false;
        self
    }

    /// Verifies publisher signatures with `publishers` (without: every signed record has an
    /// unknown key).
    pub fn with_publishers(mut self, publishers: Arc<Keyring>) -> Self {
        self.publishers = publishers;
        self
    }

    /// The start of a timed stage, when stages are timed.
    fn clock(&self) -> Option<Instant> {
        self.timed.then(Instant::now)
    }

    /// The schema registry for wire-format data, if one is configured.
    pub fn registry(&self) -> Option<&HttpRegistry> {
        self.registry.as_deref()
    }

    /// Waits, with backoff, until the schema of a wire-format `value` is resolved (or known not
    /// to exist), so that [`Self::admit`] can decide on it. Returns false if `shutdown` came
    /// first. A value that is not in the wire format, or no registry, returns at once.
    pub async fn prepare(&self, value: Option<&[u8]>, shutdown: &CancellationToken) -> bool {
        match (self.registry(), value) {
            (Some(registry), Some(value)) => registry.await_schema(value, shutdown).await,
            _ => true,
        }
    }

    /// [`Self::admit`] for readers of an event's fields (the analytics role): the same
    /// answer, with a structured event's `data` read onto a tape and validated there, without
    /// a `Value` tree. Any other record, and any the tape does not admit (data that is not
    /// valid, an object with a key twice, a type without a JSON Schema), takes `admit` itself.
    /// The publisher's signature, which such readers do not use, is not verified.
    pub fn admit_fields<'a>(&self, input: &Input<'a>) -> Result<AdmittedFields<'a>, Rejection> {
        if let Some(admitted) = self.admit_on_tape(input) {
            return Ok(admitted);
        }
        self.admit(input).map(|a| AdmittedFields::Whole(a.event))
    }

    /// A structured event admitted with its data on a tape, or `None` for [`Self::admit`].
    fn admit_on_tape<'a>(&self, input: &Input<'a>) -> Option<AdmittedFields<'a>> {
        let value = input.value?;
        let binary = input
            .headers
            .iter()
            .any(|(name, _)| *name == "ce_specversion");
        if binary
            || input.size() > self.max_event_bytes
            || crate::schema::wire::looks_like_wire(value)
        {
            return None;
        }
        let event = CloudEvent::decode_structured_tape(value).ok()?;
        let data = event.tape().filter(|tape| !tape.reads_as_value())?;
        if self
            .schemas
            .valid_on_tape(event.attributes().ty, data.root())
            != Some(true)
        {
            return None;
        }
        Some(AdmittedFields::Taped(event))
    }

    /// Size limit → decode (structured, binary or wire format) → schema validation, and the
    /// publisher's signature verified.
    pub fn admit(&self, input: &Input<'_>) -> Result<Admitted, Rejection> {
        let mut timings = AdmitTimings::default();
        let reject = |reason, error, envelope, timings| Rejection {
            reason,
            error,
            envelope,
            timings,
        };
        let size = input.size();
        if size > self.max_event_bytes {
            let why = format!(
                "record is {size} bytes, above roles.actions.max_event_bytes = {}",
                self.max_event_bytes
            );
            return Err(reject(DeadLetterReason::TooLarge, why, None, timings));
        }

        let started = self.clock();
        let is_wire = input
            .value
            .is_some_and(crate::schema::wire::looks_like_wire);
        let decoded = if is_wire {
            wire::decode(self.registry(), &self.type_header, input)
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
            Err(r) => return Err(reject(r.reason, r.error, r.event, timings)),
        };

        // Wire-format data was validated against its registered schema while decoding; the
        // type must still be one this deployment knows.
        let started = self.clock();
        let violations = if is_wire {
            self.schemas.contains(&event.ty).then(Vec::new)
        } else {
            static NO_DATA: Value = Value::Null;
            let data = event.data.as_ref().unwrap_or(&NO_DATA);
            self.schemas.validate(&event.ty, data)
        };
        timings.validate = micros(started);
        let Some(violations) = violations else {
            let why = format!("event type \"{}\" has no schema and no action", event.ty);
            let envelope = Some(Box::new((event, mode)));
            return Err(reject(
                DeadLetterReason::UnknownType,
                why,
                envelope,
                timings,
            ));
        };
        if !violations.is_empty() {
            let why = crate::schema::summarize(&violations);
            let envelope = Some(Box::new((event, mode)));
            return Err(reject(
                DeadLetterReason::SchemaInvalid,
                why,
                envelope,
                timings,
            ));
        }
        let publisher = self
            .publishers
            .verify(input.key, input.value, input.headers);
        Ok(Admitted {
            event,
            mode,
            wire: is_wire,
            publisher,
            timings,
        })
    }
}

/// The policy input document: `{event, publisher, enrichment, context}`. `now` is the moment of
/// the decision; the audit record's `processed_at` is the same instant, so a replay can decide
/// again with the same `context.now` (to the millisecond).
pub fn policy_input(
    event: &CloudEvent,
    mode: Mode,
    input: &Input<'_>,
    now: &chrono::DateTime<chrono::Utc>,
    publisher: &Publisher,
    enrichment: &Map<String, Value>,
) -> regorus::Value {
    let now = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    crate::policy::input::document(
        event,
        publisher,
        enrichment,
        &policy_context(mode, input, &now),
    )
}

/// The input's `context` member for a record; `now` is the decision's moment in RFC 3339 with
/// milliseconds.
fn policy_context<'a>(
    mode: Mode,
    input: &Input<'a>,
    now: &'a str,
) -> crate::policy::input::Context<'a> {
    crate::policy::input::Context {
        topic: input.topic,
        partition: input.partition,
        offset: input.offset,
        mode,
        kafka_timestamp_ms: input.timestamp_ms,
        now,
    }
}

/// [`policy_input`] as JSON (the same document; `policy_input` builds it without this copy).
pub fn policy_document(
    event: &CloudEvent,
    mode: Mode,
    input: &Input<'_>,
    now: &chrono::DateTime<chrono::Utc>,
    publisher: &Publisher,
    enrichment: &Map<String, Value>,
) -> Value {
    serde_json::json!({
        "event": event,
        "publisher": publisher.policy_value(),
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

/// The policy input for a CloudEvent given by hand (`reflex policy eval`): decoded as a
/// structured record is, wrapped as the worker wraps it, at the coordinates `(eval)/0/0`,
/// with `publisher` as given, without enrichment.
pub fn hand_document(
    text: &str,
    now: &chrono::DateTime<chrono::Utc>,
    publisher: &Publisher,
) -> Result<Value, crate::event::DecodeError> {
    let (event, mode) = CloudEvent::decode(Some(text.as_bytes()), &[])?;
    let input = Input {
        topic: "(eval)",
        partition: 0,
        offset: 0,
        key: None,
        value: Some(text.as_bytes()),
        headers: &[],
        timestamp_ms: None,
    };
    Ok(policy_document(
        &event,
        mode,
        &input,
        now,
        publisher,
        &Map::new(),
    ))
}

/// The topics `emit` obligations may name.
#[derive(Debug, Clone, Default)]
pub struct EmitTopics {
    /// The topic of obligations that name none (`policy.emit_topic`).
    pub default: String,
    /// Further topics they may name (`policy.emit_topics`).
    pub allowed: Vec<String>,
}

impl EmitTopics {
    /// The configuration's emit topics.
    pub fn new(config: &Config) -> Self {
        Self {
            default: config.policy_emit_topic.clone(),
            allowed: config.policy_emit_topics.clone(),
        }
    }

    fn allows(&self, topic: &str) -> bool {
        topic == self.default || self.allowed.iter().any(|t| t == topic)
    }
}

/// What the decision stage needs besides the evaluator: the event, where it was read, the
/// moment of the decision and the enrichment answers.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// The admitted event.
    pub event: &'a CloudEvent,
    /// How it arrived.
    pub mode: Mode,
    /// The consumed record.
    pub input: &'a Input<'a>,
    /// The moment of the decision.
    pub now: &'a chrono::DateTime<chrono::Utc>,
    /// What the record's publisher signature proves.
    pub publisher: &'a Publisher,
    /// The enrichment answers by lookup name.
    pub enrichment: &'a Map<String, Value>,
    /// Whether its data arrived in the Confluent wire format ([`Admitted::wire`]).
    pub wire: bool,
}

/// The decision on an admitted event, as the actions role takes it and a replay repeats it: the
/// policy's decision, failed closed if an `emit` obligation names a topic `emit` does not allow
/// or if the redaction rule cannot say what to hide; its `redact` obligation holds the redaction
/// rule's paths ([`redaction`]).
pub fn decide(evaluator: &mut Evaluator, on: &DecisionInput<'_>, emit: &EmitTopics) -> Decision {
    let now = on.now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let context = policy_context(on.mode, on.input, &now);
    let mut decision = evaluator.decide_with(
        |reads| match reads {
            Some(reads) => crate::policy::input::projected(
                on.event,
                on.publisher,
                on.enrichment,
                &context,
                reads,
            ),
            None => crate::policy::input::document(on.event, on.publisher, on.enrichment, &context),
        },
        on.wire,
    );
    let paths = match redaction(evaluator, on.event) {
        Ok(paths) => paths,
        Err(failed) => {
            let mut denied = Decision::failed(failed.failure, Some(failed.to_string()));
            denied
                .obligations
                .insert("redact".to_owned(), json!(["data"]));
            return denied;
        }
    };
    decision
        .obligations
        .insert("redact".to_owned(), json!(paths.as_ref()));
    if let Some(topic) = decision.emit_topics().find(|t| !emit.allows(t)) {
        let detail = format!(
            "an emit obligation names topic \"{topic}\", which is neither policy.emit_topic nor in policy.emit_topics"
        );
        telemetry::PolicyFailedClosed {
            failure: Failure::Malformed,
        }
        .emit();
        return Decision::failed(Failure::Malformed, Some(detail));
    }
    decision
}

/// The paths to hide from every copy of `event` written (audit obligations, emitted events, the
/// action body, lake rows): the policy's redaction rule, which reads the event alone. A failure
/// is counted and logged; callers then hide all data.
pub fn redaction(
    evaluator: &mut Evaluator,
    event: &CloudEvent,
) -> Result<Arc<[String]>, RedactionFailed> {
    evaluator.redaction(event).inspect_err(|failed| {
        tracing::warn!(error = %failed, event_type = %event.ty, "redaction failed closed; the event's data is hidden");
    })
}

fn micros(since: Option<Instant>) -> u64 {
    since.map_or(0, |since| {
        u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
    })
}
