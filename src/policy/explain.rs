//! `reflex policy eval`: a decision and why.
//!
//! Besides the decision document, it lists what each package contributed: the value of every
//! `deny`, `redact` and `emit` rule that is non-empty for the input. With the demo layout (one
//! package per concern, combined in `data.reflex`) that names the rules that fired.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::{Decision, PolicySet};

/// The rules whose values explain a decision.
pub const EXPLAINED_RULES: [&str; 3] = ["deny", "redact", "emit"];

/// One package's non-empty contribution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    /// `data.<package>.<rule>`.
    pub rule: String,
    /// Its value for the input.
    pub value: Value,
}

/// A decision with its explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The revision that decided.
    pub revision: String,
    /// The decision as the pipeline records it (fail-closed reasons included).
    pub decision: Decision,
    /// The entry rule's raw value, when it is defined.
    pub document: Option<Value>,
    /// Non-empty `deny`, `redact` and `emit` rules, by package.
    pub contributions: Vec<Contribution>,
}

/// Evaluates `input` and gathers what each package contributed.
pub fn explain(set: &PolicySet, input: &Value) -> Explanation {
    let mut evaluator = set.evaluator();
    let (decision, document) = match evaluator.evaluate(regorus::Value::from(input.clone())) {
        Ok(doc) => (Decision::from_document(&doc), Some(doc)),
        Err(failed) => (failed, None),
    };
    let mut contributions = Vec::new();
    for package in set.packages() {
        for rule in EXPLAINED_RULES {
            let name = format!("{package}.{rule}");
            if let Some(value) = evaluator.eval_rule(&name) {
                let empty = match &value {
                    Value::Array(a) => a.is_empty(),
                    Value::Object(o) => o.is_empty(),
                    Value::Null => true,
                    _ => false,
                };
                if !empty {
                    contributions.push(Contribution { rule: name, value });
                }
            }
        }
    }
    Explanation {
        revision: set.revision().to_owned(),
        decision,
        document,
        contributions,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.decision;
        writeln!(f, "decision: {}", if d.allow { "allow" } else { "deny" })?;
        for reason in &d.reasons {
            writeln!(f, "  reason: {reason}")?;
        }
        if let Some(failure) = d.failure {
            writeln!(
                f,
                "  failed closed: {}{}",
                failure.reason(),
                d.detail
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            )?;
        }
        if !d.obligations.is_empty() {
            writeln!(f, "obligations: {}", Value::Object(d.obligations.clone()))?;
        }
        if !self.contributions.is_empty() {
            writeln!(f, "rules that fired:")?;
            for c in &self.contributions {
                writeln!(f, "  {} = {}", c.rule, c.value)?;
            }
        }
        write!(f, "revision: {}", self.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_rules_that_fired() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("a.rego"),
            "package reflex\ndeny contains r if some r in data.reflex.limits.deny\ndecision := {\"allow\": count(deny) == 0, \"reasons\": deny}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("b.rego"),
            "package reflex.limits\ndeny contains \"too big\" if input.n > 10\n",
        )
        .expect("write");
        let set = PolicySet::load(
            dir.path(),
            "data.reflex.decision",
            std::time::Duration::from_secs(1),
        )
        .expect("loads");
        let e = explain(&set, &json!({"n": 11}));
        assert!(!e.decision.allow);
        assert!(e.contributions.contains(&Contribution {
            rule: "data.reflex.limits.deny".into(),
            value: json!(["too big"])
        }));
        let text = e.to_string();
        assert!(
            text.starts_with("decision: deny\n  reason: too big\n"),
            "{text}"
        );
        assert!(
            text.contains("data.reflex.limits.deny = [\"too big\"]"),
            "{text}"
        );
        let e = explain(&set, &json!({"n": 1}));
        assert!(e.decision.allow && e.contributions.is_empty(), "{e:?}");
    }
}
