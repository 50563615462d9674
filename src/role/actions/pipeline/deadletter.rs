//! Records that leave the normal path: dead letters with their context, and events sent to the
//! retry topic (after their action kept failing, or behind an earlier event of their key). Their
//! format is [`crate::ingest::headers`]'s; this module decides when and fills the audit record.

use super::{Input, OutRecord, Processed, Processor};
use crate::audit::{AuditRecord, Outcome, Timings};
use crate::ingest::headers::{self, Context, Letter, Origin, Retry};
use crate::ingest::DeadLetterReason;

/// Why a record is dead-lettered, with what explains it.
#[derive(Debug, Clone)]
pub(super) struct DeadEnd {
    pub reason: DeadLetterReason,
    pub error: String,
    /// The failed action or lookup.
    pub context: Option<Context>,
}

impl DeadEnd {
    pub fn new(reason: DeadLetterReason, error: String) -> Self {
        Self {
            reason,
            error,
            context: None,
        }
    }
}

/// The coordinates of the record's first appearance: its origin when it comes from the retry
/// topic, else itself.
fn first_appearance(input: &Input<'_>, audit: &AuditRecord) -> Origin {
    audit.origin.clone().unwrap_or_else(|| Origin::of(input))
}

impl Processor {
    /// The record as it came, to the dead-letter topic with its reason and context in headers,
    /// and its audit record.
    pub(super) fn dead_letter(
        &self,
        input: &Input<'_>,
        mut audit: AuditRecord,
        end: DeadEnd,
        timings: Timings,
    ) -> Processed {
        self.dead_letter_after(input, &mut audit, end, Vec::new(), timings)
    }

    /// [`Self::dead_letter`] after some `records` (derived events) were already made.
    pub(super) fn dead_letter_after(
        &self,
        input: &Input<'_>,
        audit: &mut AuditRecord,
        end: DeadEnd,
        mut records: Vec<OutRecord>,
        timings: Timings,
    ) -> Processed {
        let origin = first_appearance(input, audit);
        records.push(headers::dead_letter(
            input,
            &self.settings.dlq_topic,
            &Letter {
                reason: end.reason,
                error: &end.error,
                origin: &origin,
                worker: &self.settings.worker,
                event_type: audit.ty.as_deref(),
                retry_round: audit.retry_round,
                context: end.context.as_ref(),
            },
        ));
        audit.outcome = Outcome::DeadLettered;
        audit.reason = Some(end.reason);
        audit.error = Some(end.error);
        self.finish(audit.clone(), records, timings)
    }

    /// Whether a record that failed retryably has rounds left in the retry topic.
    pub(super) fn may_retry(&self, audit: &AuditRecord) -> bool {
        audit.retry_round.unwrap_or(0) < self.settings.retry_rounds
    }

    /// The record to the retry topic, due after the retry delay, one round further; the audit
    /// record says it is retrying and why.
    pub(super) fn retry(
        &self,
        input: &Input<'_>,
        audit: &mut AuditRecord,
        why: String,
        context: Option<Context>,
    ) -> OutRecord {
        let round = audit.retry_round.unwrap_or(0) + 1;
        self.to_retry(input, audit, round, why, context)
    }

    /// The record to the retry topic in the same round (it waits behind another record).
    pub(super) fn follow(
        &self,
        input: &Input<'_>,
        audit: &mut AuditRecord,
        why: String,
    ) -> OutRecord {
        let round = audit.retry_round.unwrap_or(0);
        self.to_retry(input, audit, round, why, None)
    }

    fn to_retry(
        &self,
        input: &Input<'_>,
        audit: &mut AuditRecord,
        round: u32,
        why: String,
        context: Option<Context>,
    ) -> OutRecord {
        let delay = i64::try_from(self.settings.retry_delay.as_millis()).unwrap_or(i64::MAX);
        let due_ms = chrono::Utc::now().timestamp_millis().saturating_add(delay);
        let origin = first_appearance(input, audit);
        let record = headers::retry(
            input,
            &self.settings.retry_topic,
            &Retry {
                round,
                due_ms,
                why: &why,
                origin: &origin,
                context: context.as_ref(),
            },
        );
        audit.outcome = Outcome::Retrying;
        audit.error = Some(why);
        record
    }
}
