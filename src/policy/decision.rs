//! The decision contract: what the entry rule must return, and the deny reasons reflex records
//! when it does not.
//!
//! ```json
//! {"allow": true, "reasons": ["…"],
//!  "obligations": {"redact": ["data.customer_id"],
//!                  "emit": [{"type": "reflex.sla.breached", "topic": "…", "data": {…}}]}}
//! ```
//! `allow` is required; `reasons` (strings) and `obligations` (an object) are optional. Known
//! obligations are checked here so a malformed one fails closed instead of being ignored:
//! `redact` is a list of paths into the event (see [`super::redact`]), `emit` a list of derived
//! events, each with a `type`, an optional `topic` and any `data`. Other obligations are recorded
//! as the policy returned them.

use serde::Serialize;
use serde_json::{Map, Value};

/// Why a decision is a deny without the policy saying so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The entry rule is undefined for this input.
    Undefined,
    /// Evaluation raised an error.
    Error,
    /// Evaluation exceeded the time limit.
    Timeout,
    /// The entry rule's value does not follow the decision contract.
    Malformed,
    /// No policy set is loaded, so nothing can be allowed.
    NoPolicy,
}

impl Failure {
    /// Every failure kind, for counters and reports.
    pub const ALL: [Self; 5] = [
        Self::Undefined,
        Self::Error,
        Self::Timeout,
        Self::Malformed,
        Self::NoPolicy,
    ];

    /// The reason code recorded in the audit trail.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Undefined => "policy_undefined",
            Self::Error => "policy_error",
            Self::Timeout => "policy_timeout",
            Self::Malformed => "policy_malformed_decision",
            Self::NoPolicy => "policy_not_loaded",
        }
    }

    /// A short label for metrics (bounded, never an error text).
    pub fn label(self) -> &'static str {
        match self {
            Self::Undefined => "undefined",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Malformed => "malformed",
            Self::NoPolicy => "no_policy",
        }
    }
}

/// A derived event the policy asks to publish alongside the audit record (`obligations.emit`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmitObligation {
    /// The derived event's type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its topic; the configured `policy.emit_topic` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Its data.
    pub data: Value,
}

/// The outcome of evaluating the policy for one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Whether the event may be actioned.
    pub allow: bool,
    /// Why, as the policy phrased it (or the failure's reason code).
    pub reasons: Vec<String>,
    /// What must be done alongside the action (`redact`, `emit`), as the policy returned it.
    pub obligations: Map<String, Value>,
    /// Set when the deny comes from failing closed rather than from the policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Detail of the failure (the evaluation error message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Decision {
    /// A deny without asking the policy: an enrichment lookup whose `on_error` is `deny` failed.
    pub fn enrichment_failed(detail: String) -> Self {
        Self {
            allow: false,
            reasons: vec!["enrichment_failed".to_owned()],
            obligations: Map::new(),
            failure: None,
            detail: Some(detail),
        }
    }

    /// A deny caused by a failure.
    pub fn failed(failure: Failure, detail: Option<String>) -> Self {
        Self {
            allow: false,
            reasons: vec![failure.reason().to_owned()],
            obligations: Map::new(),
            failure: Some(failure),
            detail,
        }
    }

    /// Reads a decision document; anything off-contract is a [`Failure::Malformed`] deny.
    pub fn from_document(doc: &Value) -> Self {
        let malformed = |why: &str| Self::failed(Failure::Malformed, Some(why.to_owned()));
        let Some(obj) = doc.as_object() else {
            return malformed("decision is not an object");
        };
        let Some(allow) = obj.get("allow").and_then(Value::as_bool) else {
            return malformed("decision.allow is not a boolean");
        };
        let reasons = match obj.get("reasons") {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut reasons = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(s) => reasons.push(s.to_owned()),
                        None => return malformed("decision.reasons holds a non-string"),
                    }
                }
                reasons.sort();
                reasons
            }
            Some(_) => return malformed("decision.reasons is not an array"),
        };
        let obligations = match obj.get("obligations") {
            None => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(_) => return malformed("decision.obligations is not an object"),
        };
        if let Err(why) = check_obligations(&obligations) {
            return malformed(why);
        }
        Self {
            allow,
            reasons,
            obligations,
            failure: None,
            detail: None,
        }
    }

    /// The paths to redact (`obligations.redact`), checked by [`Decision::from_document`].
    pub fn redact_paths(&self) -> Vec<&str> {
        self.obligations
            .get("redact")
            .and_then(Value::as_array)
            .map(|paths| paths.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The derived events to publish (`obligations.emit`), checked by [`Decision::from_document`].
    pub fn emits(&self) -> Vec<EmitObligation> {
        self.obligations
            .get("emit")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(emit_obligation).collect())
            .unwrap_or_default()
    }

    /// The topics the `emit` obligations name (those naming none are left out), read in place.
    pub fn emit_topics(&self) -> impl Iterator<Item = &str> {
        self.obligations
            .get("emit")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|item| item.get("topic")?.as_str())
            .filter(|topic| !topic.is_empty())
    }

    /// [`Decision::emits`] moved out of the decision without copying their data: the `emit`
    /// obligation is left an empty list, for the caller to fill with what it published.
    pub fn take_emits(&mut self) -> Vec<EmitObligation> {
        match self.obligations.get_mut("emit") {
            Some(Value::Array(items)) => std::mem::take(items)
                .into_iter()
                .filter_map(owned_emit_obligation)
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn check_obligations(obligations: &Map<String, Value>) -> Result<(), &'static str> {
    match obligations.get("redact") {
        None => {}
        Some(Value::Array(paths)) if paths.iter().all(Value::is_string) => {}
        Some(_) => return Err("decision.obligations.redact is not a list of paths"),
    }
    match obligations.get("emit") {
        None => {}
        Some(Value::Array(items)) if items.iter().all(|i| emit_obligation(i).is_some()) => {}
        Some(Value::Array(_)) => {
            return Err(
                "decision.obligations.emit holds an item without a string `type` (or with a non-string `topic`)",
            )
        }
        Some(_) => return Err("decision.obligations.emit is not a list"),
    }
    Ok(())
}

fn owned_emit_obligation(item: Value) -> Option<EmitObligation> {
    let Value::Object(mut obj) = item else {
        return None;
    };
    let ty = match obj.remove("type") {
        Some(Value::String(ty)) if !ty.is_empty() => ty,
        _ => return None,
    };
    let topic = match obj.remove("topic") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.is_empty() => Some(t),
        Some(_) => return None,
    };
    Some(EmitObligation {
        ty,
        topic,
        data: obj.remove("data").unwrap_or(Value::Null),
    })
}

fn emit_obligation(item: &Value) -> Option<EmitObligation> {
    let obj = item.as_object()?;
    let ty = obj.get("type")?.as_str()?.to_owned();
    if ty.is_empty() {
        return None;
    }
    let topic = match obj.get("topic") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
        Some(_) => return None,
    };
    Some(EmitObligation {
        ty,
        topic,
        data: obj.get("data").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn from_document_checks_the_contract() {
        let d = Decision::from_document(
            &json!({"allow": true, "reasons": ["b", "a"], "obligations": {"redact": ["x"]}}),
        );
        assert_eq!(d.reasons, ["a", "b"]);
        assert!(d.allow);
        assert_eq!(d.redact_paths(), ["x"]);
        for bad in [
            json!(1),
            json!({"allow": 1}),
            json!({"allow": true, "reasons": [1]}),
            json!({"allow": true, "obligations": []}),
            json!({"allow": true, "obligations": {"redact": "data.x"}}),
            json!({"allow": true, "obligations": {"redact": [1]}}),
            json!({"allow": true, "obligations": {"emit": {"type": "x"}}}),
            json!({"allow": true, "obligations": {"emit": [{"data": {}}]}}),
            json!({"allow": true, "obligations": {"emit": [{"type": "x", "topic": 3}]}}),
        ] {
            let d = Decision::from_document(&bad);
            assert_eq!(d.failure, Some(Failure::Malformed), "{bad}");
            assert!(!d.allow && d.reasons == ["policy_malformed_decision"]);
        }
    }

    #[test]
    fn emit_obligations_are_typed() {
        let d = Decision::from_document(&json!({"allow": false, "obligations": {"emit": [
            {"type": "reflex.sla.breached", "data": {"age_seconds": 1000}},
            {"type": "x", "topic": "t", "data": null},
        ]}}));
        assert_eq!(d.failure, None);
        let emits = d.emits();
        assert_eq!(emits.len(), 2);
        assert_eq!(emits[0].ty, "reflex.sla.breached");
        assert_eq!(emits[0].topic, None);
        assert_eq!(emits[0].data["age_seconds"], 1000);
        assert_eq!(emits[1].topic.as_deref(), Some("t"));
        assert_eq!(d.emit_topics().collect::<Vec<_>>(), ["t"]);
        let mut taken = d.clone();
        assert_eq!(taken.take_emits(), emits);
        assert_eq!(taken.obligations["emit"], serde_json::json!([]));
    }

    #[test]
    fn every_failure_has_its_own_reason() {
        let mut reasons: Vec<_> = Failure::ALL.iter().map(|f| f.reason()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), Failure::ALL.len());
        let d = Decision::failed(Failure::NoPolicy, None);
        assert_eq!(
            (d.allow, d.reasons.as_slice()),
            (false, &["policy_not_loaded".to_owned()][..])
        );
    }
}
