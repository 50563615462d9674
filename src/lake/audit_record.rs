//! An audit record read straight into the audit table's builders, without a JSON value tree.
//!
//! The actions role writes audit records of one known shape ([`crate::audit::AuditRecord`]).
//! [`Record`] reads such a record with its strings borrowed from the consumed bytes, and
//! [`Record::append`] appends its fields to the audit table's columns exactly as
//! [`super::rows`] appends the decoded `serde_json::Value`: the same values, the same nulls,
//! the same `extra` (the record's top-level properties the table does not name, such as
//! `publisher` and `enrichment`), the same byte counts (which decide where segments rotate). A
//! record it does not take — a property the table does not name inside one it names, a value of
//! another kind than the audit record's, a duplicate key, an array where an object belongs,
//! invalid JSON — is read as a `serde_json::Value` instead
//! ([`super::table::Table::audit_record`]), so the rows are the same either way.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::rows::{Builders, Column};
use super::shape::Shape;

/// A string, borrowed from the record's bytes unless it has escapes.
#[derive(Debug)]
pub(crate) struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// A struct read only from a JSON object (never from an array, as serde's derive would allow),
/// refusing duplicate keys; every field optional (`null` reads as absent, as the builders take
/// it). Unknown keys are refused, or with `keeps_unknown = true` kept in `unknown` as the JSON
/// value decoder keeps them (the last of a repeated key, in the decoder's map order).
macro_rules! object {
    ($(#[$doc:meta])* $name:ident keeps_unknown = $keeps:literal { $($field:ident: $ty:ty = $key:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub(crate) struct $name<'a> {
            $($field: Option<$ty>,)*
            /// Keys not named, with their values (always empty where they are refused).
            #[allow(dead_code)]
            unknown: serde_json::Map<String, Value>,
            borrowed: PhantomData<&'a str>,
        }

        impl<'a> Deserialize<'a> for $name<'a> {
            fn deserialize<D: Deserializer<'a>>(deserializer: D) -> Result<Self, D::Error> {
                struct ObjectVisitor;
                impl<'a> Visitor<'a> for ObjectVisitor {
                    type Value = $name<'a>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("an object of ", stringify!($name)))
                    }
                    fn visit_map<M: MapAccess<'a>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                        $(let mut $field: Option<Option<$ty>> = None;)*
                        let mut unknown = serde_json::Map::new();
                        while let Some(key) = map.next_key::<Str<'a>>()? {
                            match key.0.as_ref() {
                                $($key => {
                                    if $field.is_some() {
                                        return Err(serde::de::Error::duplicate_field($key));
                                    }
                                    $field = Some(map.next_value()?);
                                })*
                                other if $keeps => {
                                    let value: Value = map.next_value()?;
                                    unknown.insert(other.to_owned(), value);
                                }
                                other => {
                                    return Err(serde::de::Error::unknown_field(other, &[$($key),*]));
                                }
                            }
                        }
                        Ok($name {
                            $($field: $field.flatten(),)*
                            unknown,
                            borrowed: PhantomData,
                        })
                    }
                }
                deserializer.deserialize_map(ObjectVisitor)
            }
        }
    };
}

object! {
    /// An audit record as the audit table names it.
    Record keeps_unknown = true {
        event_id: Str<'a> = "event_id",
        ty: Str<'a> = "type",
        source: Str<'a> = "source",
        subject: Str<'a> = "subject",
        event_time: Str<'a> = "event_time",
        mode: Str<'a> = "mode",
        topic: Str<'a> = "topic",
        partition: i64 = "partition",
        offset: i64 = "offset",
        outcome: Str<'a> = "outcome",
        reason: Str<'a> = "reason",
        error: Str<'a> = "error",
        decision: Decision<'a> = "decision",
        policy_revision: Str<'a> = "policy_revision",
        action: Action<'a> = "action",
        worker: Str<'a> = "worker",
        processed_at: Str<'a> = "processed_at",
        timings_us: Timings<'a> = "timings_us",
        retry_round: i64 = "retry_round",
        origin: Origin<'a> = "origin",
        replay_of: ReplayOf<'a> = "replay_of",
        traceid: Str<'a> = "traceid",
        lookups: Vec<Option<Lookup<'a>>> = "lookups",
    }
}

object! {
    /// The policy decision.
    Decision keeps_unknown = false {
        allow: bool = "allow",
        reasons: Vec<Option<Str<'a>>> = "reasons",
        obligations: Value = "obligations",
        failure: Str<'a> = "failure",
        detail: Str<'a> = "detail",
    }
}

object! {
    /// The action's report.
    Action keeps_unknown = false {
        name: Str<'a> = "name",
        kind: Str<'a> = "kind",
        emitted_id: Str<'a> = "emitted_id",
        emitted_topic: Str<'a> = "emitted_topic",
        status: i64 = "status",
        attempts: i64 = "attempts",
    }
}

object! {
    /// Stage timings.
    Timings keeps_unknown = false {
        decode: i64 = "decode",
        validate: i64 = "validate",
        enrich: i64 = "enrich",
        policy: i64 = "policy",
        action: i64 = "action",
    }
}

object! {
    /// Where a retried record came from.
    Origin keeps_unknown = false {
        topic: Str<'a> = "topic",
        partition: i64 = "partition",
        offset: i64 = "offset",
    }
}

object! {
    /// The dead letter a replayed record came from.
    ReplayOf keeps_unknown = false {
        dead_letter: Str<'a> = "dead_letter",
        reason: Str<'a> = "reason",
    }
}

object! {
    /// One enrichment lookup.
    Lookup keeps_unknown = false {
        name: Str<'a> = "name",
        source: Str<'a> = "source",
        status: i64 = "status",
        error: Str<'a> = "error",
    }
}

fn text<'s>(value: &'s Option<Str<'_>>) -> Option<&'s str> {
    value.as_ref().map(|s| s.0.as_ref())
}

impl<'a> Record<'a> {
    /// Reads an audit record of the known shape; `None` when it is anything else.
    pub(crate) fn parse(value: &'a [u8]) -> Option<Self> {
        crate::event::json_from_bytes(value).ok()
    }

    /// The record's `processed_at`.
    pub(crate) fn processed_at(&self) -> Option<&str> {
        text(&self.processed_at)
    }

    /// Appends the record to the audit table's payload columns (`columns`: property, column,
    /// shape, in table order) and its `extra`; the bytes they add.
    pub(crate) fn append(&self, columns: &[(String, String, Shape)], b: &mut Builders) -> usize {
        let mut bytes = 0;
        for (index, (property, column, _)) in columns.iter().enumerate() {
            let Some(c) = b.payload.get_mut(index) else {
                continue;
            };
            let appended = match property.as_str() {
                "event_id" => c.append_str(text(&self.event_id)),
                "type" => c.append_str(text(&self.ty)),
                "source" => c.append_str(text(&self.source)),
                "subject" => c.append_str(text(&self.subject)),
                "event_time" => c.append_str(text(&self.event_time)),
                "mode" => c.append_str(text(&self.mode)),
                "topic" => c.append_str(text(&self.topic)),
                "partition" => c.append_int(self.partition),
                "offset" => c.append_int(self.offset),
                "outcome" => c.append_str(text(&self.outcome)),
                "reason" => c.append_str(text(&self.reason)),
                "error" => c.append_str(text(&self.error)),
                "decision" => c.append_struct(self.decision.as_ref().map(|d| {
                    move |name: &str, c: &mut Column| match name {
                        "allow" => c.append_bool(d.allow),
                        "reasons" => {
                            c.append_list(d.reasons.as_deref(), |c, r| c.append_str(text(r)))
                        }
                        "obligations" => c.append(d.obligations.as_ref()),
                        "failure" => c.append_str(text(&d.failure)),
                        "detail" => c.append_str(text(&d.detail)),
                        _ => c.append(None),
                    }
                })),
                "policy_revision" => c.append_str(text(&self.policy_revision)),
                "action" => c.append_struct(self.action.as_ref().map(|a| {
                    move |name: &str, c: &mut Column| match name {
                        "name" => c.append_str(text(&a.name)),
                        "kind" => c.append_str(text(&a.kind)),
                        "emitted_id" => c.append_str(text(&a.emitted_id)),
                        "emitted_topic" => c.append_str(text(&a.emitted_topic)),
                        "status" => c.append_int(a.status),
                        "attempts" => c.append_int(a.attempts),
                        _ => c.append(None),
                    }
                })),
                "worker" => c.append_str(text(&self.worker)),
                "processed_at" => c.append_str(text(&self.processed_at)),
                "timings_us" => c.append_struct(self.timings_us.as_ref().map(|t| {
                    move |name: &str, c: &mut Column| match name {
                        "decode" => c.append_int(t.decode),
                        "validate" => c.append_int(t.validate),
                        "enrich" => c.append_int(t.enrich),
                        "policy" => c.append_int(t.policy),
                        "action" => c.append_int(t.action),
                        _ => c.append(None),
                    }
                })),
                "retry_round" => c.append_int(self.retry_round),
                "origin" => c.append_struct(self.origin.as_ref().map(|o| {
                    move |name: &str, c: &mut Column| match name {
                        "topic" => c.append_str(text(&o.topic)),
                        "partition" => c.append_int(o.partition),
                        "offset" => c.append_int(o.offset),
                        _ => c.append(None),
                    }
                })),
                "replay_of" => c.append_struct(self.replay_of.as_ref().map(|r| {
                    move |name: &str, c: &mut Column| match name {
                        "dead_letter" => c.append_str(text(&r.dead_letter)),
                        "reason" => c.append_str(text(&r.reason)),
                        _ => c.append(None),
                    }
                })),
                "traceid" => c.append_str(text(&self.traceid)),
                "lookups" => c.append_list(self.lookups.as_deref(), |c, lookup| {
                    c.append_struct(lookup.as_ref().map(|l| {
                        move |name: &str, c: &mut Column| match name {
                            "name" => c.append_str(text(&l.name)),
                            "source" => c.append_str(text(&l.source)),
                            "status" => c.append_int(l.status),
                            "error" => c.append_str(text(&l.error)),
                            _ => c.append(None),
                        }
                    }))
                }),
                _ => c.append(None),
            };
            bytes += b.appended(column, appended);
        }
        // The properties not named, at the top level only (the record is not read this way when
        // a property it names has some).
        if self.unknown.is_empty() {
            b.extra.append_null();
            return bytes + 1;
        }
        let start = b.extra.values_slice().len();
        // Writing into an Arrow string builder does not fail; a map of JSON values serialises.
        let _ = serde_json::to_string(&self.unknown).map(|text| b.extra.write_str(&text));
        bytes += b.extra.values_slice().len() - start + 4;
        b.extra.append_value("");
        bytes
    }
}
