//! Redaction as its own policy decision: a rule (`[policy] redact`, by default
//! `data.reflex.redact`) whose value is the list of paths to remove from every copy of an event
//! reflex writes (see [`super::redact`] for the path syntax).
//!
//! The rule is a pure function of the event: it is evaluated with an input that holds only
//! `{"event": …}`, and a set whose redaction rule could read anything else (`input.context`,
//! `input.enrichment`, the whole `input`, the clock) is refused when it is loaded
//! ([`super::PolicySet::with_redaction`]), so start-up, `reflex check` and hot reload refuse it
//! alike. The same walk finds which event fields the rule reads ([`Reads`]); the evaluator
//! caches the rule's value per distinct value of those fields, so a lake worker evaluates it
//! about once per event type rather than once per event, and the actions role, the lake and
//! replay cannot disagree on what to hide.
//!
//! Anything off-contract fails closed ([`RedactionFailed`]): the caller then writes no data at
//! all. The rule always runs on regorus's interpreter, whatever `[policy] engine` says: the VM
//! treats an error inside one rule body as that body not holding, so a partial set
//! `redact contains p if …` whose body errors would add no path instead of failing closed, and
//! leave the field in. With the cache the interpreter's cost is paid about once per event type.

mod analysis;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::{input, interpreter_failure, telemetry, Failure};
use crate::event::CloudEvent;

pub(crate) use analysis::analyse;

/// The default redaction rule (`[policy] redact`).
pub const DEFAULT_RULE: &str = "data.reflex.redact";

/// Distinct keys kept before the cache starts over.
pub const CACHE_CAPACITY: usize = 10_000;

/// The redaction rule of a loaded set, checked to read only the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactionRule {
    /// The rule, `data.<package>.<rule>`.
    pub entry: String,
    /// The event fields it can read.
    pub reads: Reads,
    /// The fields as segments (a field name may hold a dot).
    keys: Vec<Vec<String>>,
}

/// Which parts of `input.event` a redaction rule can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// Only these fields, as paths from the input (`event.type`, `event.data.country`); the
    /// rule's value is a function of their values.
    Fields(Vec<String>),
    /// The whole event, or a part of it through a variable index (`input.event.data[k]`).
    Whole,
}

impl fmt::Display for Reads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fields(fields) if fields.is_empty() => f.write_str("nothing of the event"),
            Self::Fields(fields) => f.write_str(&fields.join(", ")),
            Self::Whole => f.write_str("the whole event"),
        }
    }
}

impl RedactionRule {
    /// The cache key of `event`: the JSON of each field read (`None` when the rule reads the
    /// whole event and so has no key smaller than the event).
    fn key(&self, event: &CloudEvent) -> Option<String> {
        if self.reads == Reads::Whole {
            return None;
        }
        let mut key = String::new();
        for path in &self.keys {
            // Separated by a character JSON text never holds unescaped.
            key.push('\u{1}');
            match field(event, path) {
                None => key.push('-'),
                Some(Field::Str(s)) => key.push_str(&serde_json::Value::from(s).to_string()),
                Some(Field::Json(v)) => key.push_str(&v.to_string()),
            }
        }
        Some(key)
    }
}

/// A value in the event document as the policy input shows it.
#[derive(Debug, PartialEq)]
enum Field<'a> {
    Str(&'a str),
    Json(&'a serde_json::Value),
}

/// The value at `path` (`["event", "data", "country"]`) of the input document
/// [`input::event_document`] builds, without building it.
fn field<'a>(event: &'a CloudEvent, path: &[String]) -> Option<Field<'a>> {
    let (name, rest) = match path {
        [event, name, rest @ ..] if event == "event" => (name.as_str(), rest),
        _ => return None,
    };
    // Extensions are inserted last in the document, so one that repeats a name wins.
    let top = match event.extensions.get(name) {
        Some(value) => Field::Json(value),
        None => match name {
            "specversion" => Field::Str(&event.specversion),
            "id" => Field::Str(&event.id),
            "source" => Field::Str(&event.source),
            "type" => Field::Str(&event.ty),
            "subject" => Field::Str(event.subject.as_deref()?),
            "time" => Field::Str(event.time.as_deref()?),
            "datacontenttype" => Field::Str(event.datacontenttype.as_deref()?),
            "dataschema" => Field::Str(event.dataschema.as_deref()?),
            "data" => Field::Json(event.data.as_ref()?),
            _ => return None,
        },
    };
    if rest.is_empty() {
        return Some(top);
    }
    let Field::Json(mut value) = top else {
        return None;
    };
    // Only string keys reach here, and a string key indexes only an object (in Rego too).
    for segment in rest {
        value = value.as_object()?.get(segment)?;
    }
    Some(Field::Json(value))
}

/// Why the redaction rule gave no list of paths; the caller must then write no event data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RedactionFailed {
    /// The redaction rule (empty when no policy set is loaded).
    pub rule: String,
    /// How it failed: undefined, an error, the time limit, a value that is not a list of
    /// strings ([`Failure::Malformed`]), or no policy loaded.
    pub failure: Failure,
    /// The evaluation error or what is wrong with the value.
    pub detail: Option<String>,
}

impl fmt::Display for RedactionFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failure == Failure::NoPolicy {
            return write!(
                f,
                "no policy set is loaded, so nothing is known about what to redact"
            );
        }
        let what = match self.failure {
            Failure::Undefined => "is undefined",
            Failure::Error => "raised an error",
            Failure::Timeout => "ran longer than the time limit",
            Failure::Malformed => "is not a list of paths",
            Failure::NoPolicy => "has no policy",
        };
        write!(f, "redaction rule {} {what}", self.rule)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// How often the redaction rule was evaluated and how often the cache answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedactionStats {
    /// Evaluations of the rule.
    pub evaluations: u64,
    /// Answers from the cache.
    pub hits: u64,
}

/// One evaluator's redaction: its own interpreter and its cache. An evaluator is built per
/// policy revision, so the cache never outlives the revision that filled it.
pub(crate) struct Redactor {
    rule: Option<Arc<RedactionRule>>,
    /// The interpreter, cloned from the evaluator's engine when first needed (a separate engine,
    /// so the decision's input stays set for [`super::Evaluator::eval_rule`]).
    engine: Option<regorus::Engine>,
    cache: HashMap<String, Arc<[String]>>,
    /// Keys kept before the cache starts over ([`CACHE_CAPACITY`]).
    capacity: usize,
    stats: RedactionStats,
    none: Arc<[String]>,
}

impl Redactor {
    /// Redacts with `rule` (none: nothing to redact).
    pub(crate) fn new(rule: Option<Arc<RedactionRule>>) -> Self {
        Self {
            rule,
            engine: None,
            cache: HashMap::new(),
            capacity: CACHE_CAPACITY,
            stats: RedactionStats::default(),
            none: Arc::from(Vec::new()),
        }
    }

    /// Evaluations and cache hits so far.
    pub(crate) fn stats(&self) -> RedactionStats {
        self.stats
    }

    /// The paths to redact from `event`; `template` is the evaluator's engine (`None`: no
    /// policy loaded).
    pub(crate) fn paths(
        &mut self,
        template: Option<&regorus::Engine>,
        event: &CloudEvent,
    ) -> Result<Arc<[String]>, RedactionFailed> {
        let Some(template) = template else {
            return Err(RedactionFailed {
                rule: String::new(),
                failure: Failure::NoPolicy,
                detail: None,
            });
        };
        let Some(rule) = self.rule.clone() else {
            return Ok(self.none.clone());
        };
        let key = rule.key(event);
        if let Some(paths) = key.as_ref().and_then(|k| self.cache.get(k)) {
            self.stats.hits += 1;
            return Ok(paths.clone());
        }
        self.stats.evaluations += 1;
        let failed = |failure, detail| RedactionFailed {
            rule: rule.entry.clone(),
            failure,
            detail,
        };
        let document = input::event_document(event);
        let engine = self.engine.get_or_insert_with(|| template.clone());
        engine.set_input(document);
        let value = engine
            .eval_rule(rule.entry.clone())
            .map_err(|e| failed(interpreter_failure(&e), Some(e.to_string())))?;
        let paths = paths_of(&value).map_err(|(failure, why)| failed(failure, why))?;
        if let Some(key) = key {
            if self.cache.len() >= self.capacity {
                self.cache.clear();
            }
            self.cache.insert(key, paths.clone());
        }
        Ok(paths)
    }
}

/// Counts a redaction that failed closed.
pub(crate) fn failed_closed(failure: &RedactionFailed) {
    telemetry::RedactionFailedClosed {
        failure: failure.failure,
    }
    .emit();
}

/// The rule's value as a sorted list of paths.
fn paths_of(value: &regorus::Value) -> Result<Arc<[String]>, (Failure, Option<String>)> {
    let items: Vec<&regorus::Value> = match value {
        regorus::Value::Undefined => return Err((Failure::Undefined, None)),
        regorus::Value::Array(items) => items.iter().collect(),
        regorus::Value::Set(items) => items.iter().collect(),
        other => {
            return Err((
                Failure::Malformed,
                Some(format!("its value is {}, not an array or set", kind(other))),
            ))
        }
    };
    let mut paths = Vec::with_capacity(items.len());
    for item in items {
        match item {
            regorus::Value::String(s) => paths.push(s.to_string()),
            other => {
                return Err((
                    Failure::Malformed,
                    Some(format!("it holds {}, not only strings", kind(other))),
                ))
            }
        }
    }
    paths.sort();
    paths.dedup();
    Ok(Arc::from(paths))
}

/// What kind of value `value` is (never the value: it may hold event data).
fn kind(value: &regorus::Value) -> &'static str {
    match value {
        regorus::Value::Null => "null",
        regorus::Value::Bool(_) => "a boolean",
        regorus::Value::Number(_) => "a number",
        regorus::Value::String(_) => "a string",
        regorus::Value::Array(_) => "an array",
        regorus::Value::Set(_) => "a set",
        regorus::Value::Object(_) => "an object",
        regorus::Value::Undefined => "undefined",
    }
}

#[cfg(test)]
mod tests;
