//! Shadow evaluation: how a candidate policy set would change the recorded decisions.
//!
//! [`ShadowReport`] is fed pairs (the decision in the audit trail, the candidate's decision for
//! the same input) and counts, per event type, the decisions that stay, turn from allow to
//! deny, from deny to allow, or keep allow/deny with other reasons; it counts each transition
//! (`allow → deny: refund above the automatic approval limit`) and keeps a few examples of each.
//! Reading the recorded events and audit records is the caller's job (`reflex policy replay`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::Decision;

/// Examples kept per transition.
pub const EXAMPLES_PER_TRANSITION: usize = 3;

/// Counts for one event type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeShift {
    /// Decisions compared.
    pub compared: u64,
    /// Same allow and same reasons.
    pub unchanged: u64,
    /// Allowed before, denied by the candidate.
    pub allow_to_deny: u64,
    /// Denied before, allowed by the candidate.
    pub deny_to_allow: u64,
    /// Still denied, for other reasons.
    pub reasons_changed: u64,
}

/// One changed decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// The event id.
    pub event_id: String,
    /// `topic/partition/offset` of the event.
    pub at: String,
    /// The recorded decision, as a label.
    pub before: String,
    /// The candidate's decision, as a label.
    pub after: String,
}

/// The comparison of a candidate with the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShadowReport {
    /// The candidate's revision.
    pub candidate: String,
    /// Counts by event type.
    pub types: BTreeMap<String, TypeShift>,
    /// `(type, before, after)` → count, for changed decisions.
    #[serde(serialize_with = "transition_list")]
    pub transitions: BTreeMap<Transition, u64>,
    /// A few examples per transition.
    #[serde(serialize_with = "transition_list")]
    pub examples: BTreeMap<Transition, Vec<Example>>,
    /// Records not compared, by why (no audit record, dead-lettered, undecodable...).
    pub skipped: BTreeMap<String, u64>,
    /// Recorded revisions seen, with their counts.
    pub recorded_revisions: BTreeMap<String, u64>,
}

/// `(event type, decision before, decision after)`, each decision as a [`label`].
pub type Transition = (String, String, String);

/// JSON has no tuple keys: a transition map is written as a list of
/// `{type, before, after, value}`.
fn transition_list<S, V>(map: &BTreeMap<Transition, V>, s: S) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    V: Serialize,
{
    #[derive(Serialize)]
    struct Entry<'a, V> {
        #[serde(rename = "type")]
        ty: &'a str,
        before: &'a str,
        after: &'a str,
        value: &'a V,
    }
    s.collect_seq(map.iter().map(|((ty, before, after), value)| Entry {
        ty,
        before,
        after,
        value,
    }))
}

/// A decision as one line: `allow`, or `deny: reason; reason`.
pub fn label(decision: &Decision) -> String {
    if decision.allow {
        "allow".to_owned()
    } else {
        let mut reasons = decision.reasons.clone();
        reasons.sort();
        format!("deny: {}", reasons.join("; "))
    }
}

impl ShadowReport {
    /// A report for the candidate revision.
    pub fn new(candidate: &str) -> Self {
        Self {
            candidate: candidate.to_owned(),
            ..Self::default()
        }
    }

    /// Counts one record that could not be compared.
    pub fn skip(&mut self, why: &str) {
        *self.skipped.entry(why.to_owned()).or_default() += 1;
    }

    /// Compares one recorded decision with the candidate's.
    pub fn record(
        &mut self,
        ty: &str,
        event_id: &str,
        at: &str,
        recorded_revision: &str,
        before: &Decision,
        after: &Decision,
    ) {
        *self
            .recorded_revisions
            .entry(recorded_revision.to_owned())
            .or_default() += 1;
        let shift = self.types.entry(ty.to_owned()).or_default();
        shift.compared += 1;
        let (b, a) = (label(before), label(after));
        if b == a {
            shift.unchanged += 1;
            return;
        }
        match (before.allow, after.allow) {
            (true, false) => shift.allow_to_deny += 1,
            (false, true) => shift.deny_to_allow += 1,
            _ => shift.reasons_changed += 1,
        }
        let key = (ty.to_owned(), b.clone(), a.clone());
        *self.transitions.entry(key.clone()).or_default() += 1;
        let examples = self.examples.entry(key).or_default();
        if examples.len() < EXAMPLES_PER_TRANSITION {
            examples.push(Example {
                event_id: event_id.to_owned(),
                at: at.to_owned(),
                before: b,
                after: a,
            });
        }
    }

    /// Decisions compared, over all types.
    pub fn compared(&self) -> u64 {
        self.types.values().map(|t| t.compared).sum()
    }

    /// Decisions that would change.
    pub fn changed(&self) -> u64 {
        self.types.values().map(|t| t.compared - t.unchanged).sum()
    }
}

impl fmt::Display for ShadowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "candidate revision {}", self.candidate)?;
        for (rev, n) in &self.recorded_revisions {
            writeln!(f, "recorded under {rev}: {n} decisions")?;
        }
        writeln!(
            f,
            "{:<22}{:>9}{:>11}{:>14}{:>14}{:>10}",
            "event type", "compared", "unchanged", "allow→deny", "deny→allow", "reasons"
        )?;
        for (ty, s) in &self.types {
            writeln!(
                f,
                "{ty:<22}{:>9}{:>11}{:>14}{:>14}{:>10}",
                s.compared, s.unchanged, s.allow_to_deny, s.deny_to_allow, s.reasons_changed
            )?;
        }
        if !self.transitions.is_empty() {
            writeln!(f, "changes:")?;
        }
        for (key @ (ty, before, after), n) in &self.transitions {
            writeln!(f, "  {n:>6} × {ty}: {before} → {after}")?;
            for e in self.examples.get(key).into_iter().flatten() {
                writeln!(f, "           e.g. {} at {}", e.event_id, e.at)?;
            }
        }
        for (why, n) in &self.skipped {
            writeln!(f, "not compared: {n} × {why}")?;
        }
        write!(
            f,
            "{} of {} decisions would change",
            self.changed(),
            self.compared()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(doc: serde_json::Value) -> Decision {
        Decision::from_document(&doc)
    }

    #[test]
    fn counts_transitions_by_type_and_keeps_examples() {
        let allow = d(json!({"allow": true}));
        let big = d(json!({"allow": false, "reasons": ["too big"]}));
        let late = d(json!({"allow": false, "reasons": ["late"]}));
        let mut r = ShadowReport::new("sha256:new");
        for i in 0..5 {
            r.record(
                "refund",
                &format!("r{i}"),
                "t/0/1",
                "sha256:old",
                &allow,
                &big,
            );
        }
        r.record("refund", "r9", "t/0/9", "sha256:old", &allow, &allow);
        r.record("order", "o1", "t/1/1", "sha256:old", &big, &allow);
        r.record("order", "o2", "t/1/2", "sha256:old", &big, &late);
        r.skip("no audit record");
        assert_eq!((r.compared(), r.changed()), (8, 7));
        assert_eq!(r.types["refund"].allow_to_deny, 5);
        assert_eq!(r.types["refund"].unchanged, 1);
        assert_eq!(r.types["order"].deny_to_allow, 1);
        assert_eq!(r.types["order"].reasons_changed, 1);
        let key = (
            "refund".to_owned(),
            "allow".to_owned(),
            "deny: too big".to_owned(),
        );
        assert_eq!(r.transitions[&key], 5);
        assert_eq!(r.examples[&key].len(), EXAMPLES_PER_TRANSITION);
        let text = r.to_string();
        assert!(text.contains("5 × refund: allow → deny: too big"), "{text}");
        assert!(text.contains("e.g. r0 at t/0/1"), "{text}");
        assert!(text.contains("not compared: 1 × no audit record"), "{text}");
        assert!(text.ends_with("7 of 8 decisions would change"), "{text}");
        let json = serde_json::to_value(&r).expect("the report serialises");
        assert_eq!(
            json["transitions"][0],
            json!({"type": "order", "before": "deny: too big", "after": "allow", "value": 1})
        );
    }
}
