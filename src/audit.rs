//! The audit record: one per event, keyed by event id, on the compacted audit topic.
//!
//! It says what happened to the event and why: the outcome, the dead-letter reason or the
//! policy decision with the policy revision, the action and what it produced, the worker, and
//! how long each stage took. It never carries the event's data.

use serde::{Deserialize, Serialize};

use crate::action::ActionReport;
use crate::event::Mode;
use crate::ingest::headers::{Origin, ReplayOf};
use crate::ingest::{DeadLetterReason, Input};
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
    /// Revision of the policy set that decided: the content hash of the policy files, or the
    /// manifest revision of the bundle it was loaded from.
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
    /// The W3C trace id (32 hex digits) of the trace the processing belongs to: the record's
    /// span when tracing is on, else the trace the event arrived in (its `traceparent`);
    /// absent when there is neither (and in records written before the field existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceid: Option<String>,
    /// What the event's publisher signature proved (every admitted event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<crate::publisher::Publisher>,
    /// The enrichment lookups that fed the decision, and where each answer came from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lookups: Vec<crate::enrich::LookupReport>,
    /// The enrichment answers the policy decided on, by lookup name, so that a replay decides
    /// on the same input. Answers are the supporting services' documents, never event data.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub enrichment: serde_json::Map<String, serde_json::Value>,
}

impl AuditRecord {
    /// The record for `input` before anything is known of it: a dead letter until a later
    /// stage says otherwise.
    pub fn new(input: &Input<'_>, worker: &str) -> Self {
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
            traceid: None,
            publisher: None,
            lookups: Vec::new(),
            enrichment: serde_json::Map::new(),
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
