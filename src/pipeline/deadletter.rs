//! Records that leave the normal path: dead letters with their context, and events sent to the
//! retry topic (after their action kept failing, or behind an earlier event of their key).

use super::{dlq_headers as h, Input, OutRecord, Processed, Processor};
use crate::audit::{AuditRecord, DeadLetterReason, Origin, Outcome, ReplayOf, Timings};

/// Why a record is dead-lettered, with the headers that explain it.
#[derive(Debug, Clone)]
pub(crate) struct Rejection {
    pub reason: DeadLetterReason,
    pub error: String,
    /// Further `reflex_*` headers (action, status, attempts, response excerpt).
    pub context: Vec<(&'static str, String)>,
}

impl Rejection {
    pub fn new(reason: DeadLetterReason, error: String) -> Self {
        Self {
            reason,
            error,
            context: Vec::new(),
        }
    }
}

/// Rounds through the retry topic this record has been through.
pub(crate) fn retry_round(input: &Input<'_>) -> Option<u32> {
    input.header(h::RETRY_ROUND).and_then(|v| v.parse().ok())
}

/// When a record from the retry topic is due, in milliseconds since the epoch.
pub fn retry_due(input: &Input<'_>) -> Option<i64> {
    input.header(h::RETRY_AT).and_then(|v| v.parse().ok())
}

/// The event topic a record from the retry topic first came from.
pub fn origin_topic<'a>(input: &Input<'a>) -> Option<&'a str> {
    input.header(h::RETRY_ROUND)?;
    input.header(h::TOPIC)
}

/// Calls made to the action service in earlier rounds.
pub(crate) fn prior_attempts(input: &Input<'_>) -> u32 {
    input
        .header(h::RETRY_ROUND)
        .and(input.header(h::ATTEMPTS))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where a record from the retry topic first came from.
pub(crate) fn origin(input: &Input<'_>) -> Option<Origin> {
    input.header(h::RETRY_ROUND)?;
    Some(Origin {
        topic: input.header(h::TOPIC)?.to_owned(),
        partition: input.header(h::PARTITION)?.parse().ok()?,
        offset: input.header(h::OFFSET)?.parse().ok()?,
    })
}

/// The dead letter a replayed record comes from.
pub(crate) fn replay_of(input: &Input<'_>) -> Option<ReplayOf> {
    Some(ReplayOf {
        dead_letter: input.header(h::REPLAY_OF)?.to_owned(),
        reason: input
            .header(h::REPLAY_REASON)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// The input's headers without the ones reflex added, followed by `extra`.
fn headers_with(input: &Input<'_>, extra: Vec<(&str, String)>) -> Vec<(String, Vec<u8>)> {
    input
        .headers
        .iter()
        .filter(|(n, _)| !n.starts_with(h::PREFIX))
        .map(|(n, v)| ((*n).to_owned(), v.to_vec()))
        .chain(
            extra
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.into_bytes())),
        )
        .collect()
}

/// The coordinates of the record's first appearance: its origin when it comes from the retry
/// topic, else itself.
fn source(input: &Input<'_>, audit: &AuditRecord) -> [(&'static str, String); 3] {
    match &audit.origin {
        Some(o) => [
            (h::TOPIC, o.topic.clone()),
            (h::PARTITION, o.partition.to_string()),
            (h::OFFSET, o.offset.to_string()),
        ],
        None => [
            (h::TOPIC, input.topic.to_owned()),
            (h::PARTITION, input.partition.to_string()),
            (h::OFFSET, input.offset.to_string()),
        ],
    }
}

impl Processor {
    /// The record as it came, to the dead-letter topic with its reason and context in headers,
    /// and its audit record.
    pub(crate) fn dead_letter(
        &self,
        input: &Input<'_>,
        mut audit: AuditRecord,
        rejection: Rejection,
        timings: Timings,
    ) -> Processed {
        self.dead_letter_after(input, &mut audit, rejection, Vec::new(), timings)
    }

    /// [`Self::dead_letter`] after some `records` (derived events) were already made.
    pub(crate) fn dead_letter_after(
        &self,
        input: &Input<'_>,
        audit: &mut AuditRecord,
        rejection: Rejection,
        mut records: Vec<OutRecord>,
        timings: Timings,
    ) -> Processed {
        let mut extra = vec![
            (h::REASON, rejection.reason.code().to_owned()),
            (h::ERROR, rejection.error.clone()),
        ];
        extra.extend(source(input, audit));
        extra.push((h::WORKER, self.settings.worker.clone()));
        if let Some(ty) = &audit.ty {
            extra.push((h::EVENT_TYPE, ty.clone()));
        }
        if let Some(round) = audit.retry_round {
            extra.push((h::RETRY_ROUND, round.to_string()));
        }
        extra.extend(rejection.context);
        records.push(OutRecord {
            topic: self.settings.dlq_topic.clone(),
            key: input.key.map(<[u8]>::to_vec),
            value: input.value.map(<[u8]>::to_vec),
            headers: headers_with(input, extra),
        });
        audit.outcome = Outcome::DeadLettered;
        audit.reason = Some(rejection.reason);
        audit.error = Some(rejection.error);
        self.finish(audit.clone(), records, timings)
    }

    /// Whether a record that failed retryably has rounds left in the retry topic.
    pub(crate) fn may_retry(&self, audit: &AuditRecord) -> bool {
        audit.retry_round.unwrap_or(0) < self.settings.retry_rounds
    }

    /// The record to the retry topic, due after the retry delay, one round further; the audit
    /// record says it is retrying and why.
    pub(crate) fn retry(
        &self,
        input: &Input<'_>,
        audit: &mut AuditRecord,
        why: String,
        context: Vec<(&'static str, String)>,
    ) -> OutRecord {
        let round = audit.retry_round.unwrap_or(0) + 1;
        self.to_retry(input, audit, round, why, context)
    }

    /// The record to the retry topic in the same round (it waits behind another record).
    pub(crate) fn follow(
        &self,
        input: &Input<'_>,
        audit: &mut AuditRecord,
        why: String,
    ) -> OutRecord {
        let round = audit.retry_round.unwrap_or(0);
        self.to_retry(input, audit, round, why, Vec::new())
    }

    fn to_retry(
        &self,
        input: &Input<'_>,
        audit: &mut AuditRecord,
        round: u32,
        why: String,
        context: Vec<(&'static str, String)>,
    ) -> OutRecord {
        let delay = i64::try_from(self.settings.retry_delay.as_millis()).unwrap_or(i64::MAX);
        let due = chrono::Utc::now().timestamp_millis().saturating_add(delay);
        let mut extra = vec![
            (h::RETRY_ROUND, round.to_string()),
            (h::RETRY_AT, due.to_string()),
            (h::ERROR, why.clone()),
        ];
        extra.extend(source(input, audit));
        extra.extend(context);
        audit.outcome = Outcome::Retrying;
        audit.error = Some(why);
        OutRecord {
            topic: self.settings.retry_topic.clone(),
            key: input.key.map(<[u8]>::to_vec),
            value: input.value.map(<[u8]>::to_vec),
            headers: headers_with(input, extra),
        }
    }
}
