//! The audit record: one per event, keyed by event id, on the compacted audit topic.
//!
//! It says what happened to the event and why: the outcome, the dead-letter reason or the
//! policy decision with the policy revision, the action and what it produced, the worker, and
//! how long each stage took. It never carries the event's data.

use serde::{Deserialize, Serialize};

use crate::action::ActionReport;
use crate::event::Mode;
use crate::policy::Decision;

/// What happened to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The policy allowed it and its action completed.
    Actioned,
    /// The policy denied it (or failed closed); no action ran.
    Denied,
    /// It could not be processed and went to the dead-letter topic.
    DeadLettered,
    /// Its action (or an enrichment lookup) kept failing, or an earlier event of its key is
    /// retrying: it went to the retry topic and is processed again after the retry delay.
    Retrying,
}

impl Outcome {
    /// The outcome's name as recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Actioned => "actioned",
            Self::Denied => "denied",
            Self::DeadLettered => "dead_lettered",
            Self::Retrying => "retrying",
        }
    }
}

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
        }
    }
}

/// Microseconds spent in each stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Decoding.
    pub decode: u64,
    /// Schema validation.
    pub validate: u64,
    /// Enrichment lookups.
    #[serde(default)]
    pub enrich: u64,
    /// Policy evaluation.
    pub policy: u64,
    /// The inline action.
    pub action: u64,
}

/// Where a record read from the retry topic first appeared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Topic of the original record.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// The dead letter a replayed record comes from (`reflex dlq replay`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayOf {
    /// `topic/partition/offset` of the dead letter.
    pub dead_letter: String,
    /// Its reason code.
    pub reason: String,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// The event id, when the event had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The event type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// The event source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The event subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The event time as the producer wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// The content mode it arrived in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Topic of the input record.
    pub topic: String,
    /// Partition of the input record.
    pub partition: i32,
    /// Offset of the input record.
    pub offset: i64,
    /// What happened.
    pub outcome: Outcome,
    /// Why it was dead-lettered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeadLetterReason>,
    /// Detail of the dead-letter reason (never the payload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The policy decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Content hash of the policy set that decided.
    pub policy_revision: String,
    /// The action that ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionReport>,
    /// The worker that processed it.
    pub worker: String,
    /// When it was processed (RFC 3339).
    pub processed_at: String,
    /// Stage timings.
    pub timings_us: Timings,
    /// Rounds through the retry topic before this processing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_round: Option<u32>,
    /// For a record read from the retry topic, where it first appeared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// For a replayed dead letter, which one and why it was dead-lettered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<ReplayOf>,
    /// The enrichment lookups that fed the decision, and where each answer came from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<crate::enrich::LookupReport>,
}

impl AuditRecord {
    /// The record for `input` before anything is known of it: a dead letter until a later
    /// stage says otherwise.
    pub fn new(input: &crate::pipeline::Input<'_>, worker: &str) -> Self {
        Self {
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
            policy_revision: String::new(),
            action: None,
            worker: worker.to_owned(),
            processed_at: String::new(),
            timings_us: Timings::default(),
            retry_round: None,
            origin: None,
            replay_of: None,
            lookups: Vec::new(),
        }
    }

    /// The record key: the event id, or `topic/partition/offset` when there is no usable id.
    pub fn key(&self) -> String {
        match &self.event_id {
            Some(id) => id.clone(),
            None => format!("{}/{}/{}", self.topic, self.partition, self.offset),
        }
    }

    /// The record value (JSON).
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON maps always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}
