//! The policy input document `{event, publisher, enrichment, context}` (and the redaction rule's `{event}`), built straight into regorus's value
//! type from the decoded event.
//!
//! Going through `serde_json::json!` first would copy the whole event (data included) into a
//! `serde_json::Value` and then convert that copy again; here every string is copied once, and
//! the event's data is read in place. The document is the same value either way (a unit test
//! checks it against the JSON route).

use std::collections::BTreeMap;

use super::projection::Projection;
use crate::event::{CloudEvent, Mode};
use crate::publisher::Publisher;

/// Where and when an event is decided: the input's `context` member.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Topic the event was read from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The content mode it arrived in.
    pub mode: Mode,
    /// The record's Kafka timestamp (ms), when it has one.
    pub kafka_timestamp_ms: Option<i64>,
    /// The decision's moment, RFC 3339 with milliseconds (`context.now`).
    pub now: &'a str,
}

/// The input document for `event`; `publisher` is what its signature proves, `enrichment` the
/// `enrichment` member.
pub fn document(
    event: &CloudEvent,
    publisher: &Publisher,
    enrichment: &serde_json::Map<String, serde_json::Value>,
    context: &Context<'_>,
) -> regorus::Value {
    KEYS.with(|k| {
        object([
            (k.event.clone(), event_value(k, event)),
            (k.publisher.clone(), publisher_value(k, publisher)),
            (
                k.enrichment.clone(),
                enrichment_value(enrichment, &Projection::Whole),
            ),
            (k.context.clone(), context_value(k, context)),
        ])
    })
}

/// [`document`] with only the parts `reads` holds (see [`super::projection`]): the decision is
/// the same, and the event's data is built only as far as the rules read it.
pub fn projected(
    event: &CloudEvent,
    publisher: &Publisher,
    enrichment: &serde_json::Map<String, serde_json::Value>,
    context: &Context<'_>,
    reads: &Projection,
) -> regorus::Value {
    let Projection::Fields(members) = reads else {
        return document(event, publisher, enrichment, context);
    };
    KEYS.with(|k| {
        object(members.iter().filter_map(|(name, member)| {
            let value = match name.as_str() {
                "event" => event_projected(k, event, &member.reads),
                // Small and fixed: built whole.
                "publisher" => publisher_value(k, publisher),
                "enrichment" => enrichment_value(enrichment, &member.reads),
                "context" => context_value(k, context),
                _ => return None,
            };
            Some((member.key.clone(), value))
        }))
    })
}

/// `input.enrichment`: the lookups' values, as far as `reads` reads them.
fn enrichment_value(
    enrichment: &serde_json::Map<String, serde_json::Value>,
    reads: &Projection,
) -> regorus::Value {
    object(enrichment.iter().filter_map(|(name, v)| {
        let reads = reads.member(name)?;
        Some((regorus::Value::from(name.as_str()), reads.json(v)))
    }))
}

/// `input.context`.
fn context_value(k: &Keys, context: &Context<'_>) -> regorus::Value {
    object([
        (k.topic.clone(), regorus::Value::from(context.topic)),
        (k.partition.clone(), regorus::Value::from(context.partition)),
        (k.offset.clone(), regorus::Value::from(context.offset)),
        (k.mode.clone(), k.mode_name(context.mode)),
        (
            k.kafka_timestamp_ms.clone(),
            context
                .kafka_timestamp_ms
                .map_or(regorus::Value::Null, regorus::Value::from),
        ),
        (k.now.clone(), regorus::Value::from(context.now)),
    ])
}

/// [`event_value`] with only the members `reads` reads (an extension wins over an attribute of
/// the same name there too).
fn event_projected(k: &Keys, event: &CloudEvent, reads: &Projection) -> regorus::Value {
    let Projection::Fields(members) = reads else {
        return event_value(k, event);
    };
    object(members.iter().filter_map(|(name, member)| {
        if let Some(value) = event.extensions.get(name) {
            return Some((member.key.clone(), member.reads.json(value)));
        }
        let text = |s: &str| regorus::Value::from(s);
        let value = match name.as_str() {
            "specversion" => text(&event.specversion),
            "id" => text(&event.id),
            "source" => text(&event.source),
            "type" => text(&event.ty),
            "subject" => text(event.subject.as_deref()?),
            "time" => text(event.time.as_deref()?),
            "datacontenttype" => text(event.datacontenttype.as_deref()?),
            "dataschema" => text(event.dataschema.as_deref()?),
            "data" => member.reads.json(event.data.as_ref()?),
            _ => return None,
        };
        Some((member.key.clone(), value))
    }))
}

/// The input document of the redaction rule: `{"event": …}` and nothing else, so the rule's
/// value cannot depend on when or where the event is decided.
pub fn event_document(event: &CloudEvent) -> regorus::Value {
    KEYS.with(|k| object([(k.event.clone(), event_value(k, event))]))
}

/// The CloudEvent as its JSON form would read (absent optional attributes left out,
/// extensions at the top level).
fn event_value(k: &Keys, event: &CloudEvent) -> regorus::Value {
    let mut obj = BTreeMap::new();
    obj.insert(
        k.specversion.clone(),
        regorus::Value::from(&*event.specversion),
    );
    obj.insert(k.id.clone(), regorus::Value::from(&*event.id));
    obj.insert(k.source.clone(), regorus::Value::from(&*event.source));
    obj.insert(k.ty.clone(), regorus::Value::from(&*event.ty));
    let optional = [
        (&k.subject, &event.subject),
        (&k.time, &event.time),
        (&k.datacontenttype, &event.datacontenttype),
        (&k.dataschema, &event.dataschema),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            obj.insert(name.clone(), regorus::Value::from(value.as_str()));
        }
    }
    if let Some(data) = &event.data {
        obj.insert(k.data.clone(), json(data));
    }
    // Extensions last, as serde writes the flattened map after the named attributes (so an
    // extension that repeats a name would win there too).
    for (name, value) in &event.extensions {
        obj.insert(regorus::Value::from(name.as_str()), json(value));
    }
    regorus::Value::from(obj)
}

/// `input.publisher`: `{verified, key_id, status}`, and `claimed_key_id` when the record names
/// one (see [`Publisher::policy_value`]).
fn publisher_value(k: &Keys, publisher: &Publisher) -> regorus::Value {
    let key_id = publisher
        .key_id
        .as_deref()
        .map_or(regorus::Value::Null, regorus::Value::from);
    let verified = regorus::Value::from(publisher.verified);
    let status = regorus::Value::from(publisher.status.name());
    match &publisher.claimed_key_id {
        Some(claimed) => object([
            (k.verified.clone(), verified),
            (k.key_id.clone(), key_id),
            (k.status.clone(), status),
            (
                k.claimed_key_id.clone(),
                regorus::Value::from(claimed.as_str()),
            ),
        ]),
        None => object([
            (k.verified.clone(), verified),
            (k.key_id.clone(), key_id),
            (k.status.clone(), status),
        ]),
    }
}

/// A borrowed JSON value as a regorus value, read in place: the value regorus's own
/// deserializer makes of it (integers as integers, other numbers as floats, objects in key
/// order), without going through serde's visitor for every node.
pub fn json(value: &serde_json::Value) -> regorus::Value {
    match value {
        serde_json::Value::Null => regorus::Value::Null,
        serde_json::Value::Bool(b) => regorus::Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => regorus::Value::from(u),
            (None, Some(i)) => regorus::Value::from(i),
            // Every other JSON number is a finite float.
            (None, None) => n
                .as_f64()
                .map_or(regorus::Value::Null, regorus::Value::from),
        },
        serde_json::Value::String(s) => regorus::Value::from(s.as_str()),
        serde_json::Value::Array(items) => {
            regorus::Value::from(items.iter().map(json).collect::<Vec<_>>())
        }
        serde_json::Value::Object(members) => object(
            members
                .iter()
                .map(|(name, v)| (regorus::Value::from(name.as_str()), json(v))),
        ),
    }
}

/// An object of `members` (an empty one as regorus makes it).
pub(crate) fn object(
    members: impl IntoIterator<Item = (regorus::Value, regorus::Value)>,
) -> regorus::Value {
    let map: BTreeMap<regorus::Value, regorus::Value> = members.into_iter().collect();
    if map.is_empty() {
        regorus::Value::new_object()
    } else {
        regorus::Value::from(map)
    }
}

/// The member names of the input document and the mode names, made once per thread and shared
/// (a clone is a reference count), instead of a string allocated per name per event.
struct Keys {
    event: regorus::Value,
    publisher: regorus::Value,
    enrichment: regorus::Value,
    context: regorus::Value,
    topic: regorus::Value,
    partition: regorus::Value,
    offset: regorus::Value,
    mode: regorus::Value,
    kafka_timestamp_ms: regorus::Value,
    now: regorus::Value,
    specversion: regorus::Value,
    id: regorus::Value,
    source: regorus::Value,
    ty: regorus::Value,
    subject: regorus::Value,
    time: regorus::Value,
    datacontenttype: regorus::Value,
    dataschema: regorus::Value,
    data: regorus::Value,
    verified: regorus::Value,
    key_id: regorus::Value,
    status: regorus::Value,
    claimed_key_id: regorus::Value,
    modes: [regorus::Value; 3],
}

impl Keys {
    fn new() -> Self {
        let v = regorus::Value::from;
        Self {
            event: v("event"),
            publisher: v("publisher"),
            enrichment: v("enrichment"),
            context: v("context"),
            topic: v("topic"),
            partition: v("partition"),
            offset: v("offset"),
            mode: v("mode"),
            kafka_timestamp_ms: v("kafka_timestamp_ms"),
            now: v("now"),
            specversion: v("specversion"),
            id: v("id"),
            source: v("source"),
            ty: v("type"),
            subject: v("subject"),
            time: v("time"),
            datacontenttype: v("datacontenttype"),
            dataschema: v("dataschema"),
            data: v("data"),
            verified: v("verified"),
            key_id: v("key_id"),
            status: v("status"),
            claimed_key_id: v("claimed_key_id"),
            modes: [Mode::Structured, Mode::Binary, Mode::Plain].map(|m| v(mode_name(m))),
        }
    }

    fn mode_name(&self, mode: Mode) -> regorus::Value {
        let i = match mode {
            Mode::Structured => 0,
            Mode::Binary => 1,
            Mode::Plain => 2,
        };
        self.modes[i].clone()
    }
}

thread_local! {
    /// Per thread, so that two threads deciding at once do not contend for the counts.
    static KEYS: Keys = Keys::new();
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Structured => "structured",
        Mode::Binary => "binary",
        Mode::Plain => "plain",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The JSON route this module replaces.
    fn via_json(
        event: &CloudEvent,
        publisher: &Publisher,
        context: &Context<'_>,
    ) -> regorus::Value {
        regorus::Value::from(json!({
            "event": event,
            "publisher": publisher.policy_value(),
            "enrichment": {},
            "context": {
                "topic": context.topic,
                "partition": context.partition,
                "offset": context.offset,
                "mode": context.mode,
                "kafka_timestamp_ms": context.kafka_timestamp_ms,
                "now": context.now,
            },
        }))
    }

    #[test]
    fn same_document_as_the_json_route() {
        let events = [
            json!({"specversion": "1.0", "id": "o-1", "source": "/shop/web", "type": "order.placed",
                   "subject": "ord-1", "time": "2026-03-01T10:00:00Z", "datacontenttype": "application/json",
                   "data": {"amount": 99.5, "n": 3, "big": 18446744073709551615u64, "neg": -4,
                            "items": [{"sku": "S-1", "quantity": 1}], "none": null, "ok": true,
                            "empty": {}, "nothing": [], "small": -0.0, "exp": 1e300,
                            "nested": {"z": {"y": [1, "two", {"x": false}]}, "a": "ü\u{1}"}}}),
            json!({"specversion": "1.0", "id": "p-1", "source": "/payments", "type": "payment.settled",
                   "traceparent": "00-abc", "partitionkey": 7, "dataschema": "urn:x"}),
            json!({"specversion": "1.0", "id": "r-1", "source": "/desk", "type": "refund.requested",
                   "data": "plain text", "subject": "x"}),
        ];
        let verified = Publisher {
            verified: true,
            key_id: Some("desk".into()),
            status: crate::publisher::Status::Verified,
            claimed_key_id: Some("desk".into()),
        };
        let unknown = Publisher {
            verified: false,
            key_id: None,
            status: crate::publisher::Status::UnknownKey,
            claimed_key_id: Some("who".into()),
        };
        for (i, event) in events.into_iter().enumerate() {
            let event: CloudEvent = serde_json::from_value(event).expect("event");
            for (mode, ts) in [
                (Mode::Structured, Some(1_772_359_200_000)),
                (Mode::Binary, None),
            ] {
                let context = Context {
                    topic: "events.orders",
                    partition: 2,
                    offset: 41 + i as i64,
                    mode,
                    kafka_timestamp_ms: ts,
                    now: "2026-03-01T10:00:00.250Z",
                };
                for publisher in [Publisher::unsigned(), verified.clone(), unknown.clone()] {
                    assert_eq!(
                        document(&event, &publisher, &serde_json::Map::new(), &context),
                        via_json(&event, &publisher, &context),
                        "{event:?} {publisher:?}"
                    );
                }
            }
        }
        let enrichment = json!({"customer": {"tier": "gold", "since": 2019}});
        let map = enrichment.as_object().cloned().unwrap_or_default();
        let event: CloudEvent = serde_json::from_value(
            json!({"specversion": "1.0", "id": "a", "source": "/s", "type": "t"}),
        )
        .expect("event");
        let context = Context {
            topic: "t",
            partition: 0,
            offset: 0,
            mode: Mode::Plain,
            kafka_timestamp_ms: None,
            now: "2026-03-01T10:00:00.000Z",
        };
        let doc = document(&event, &Publisher::unsigned(), &map, &context);
        assert_eq!(doc["publisher"]["status"], regorus::Value::from("unsigned"));
        assert_eq!(doc["publisher"]["key_id"], regorus::Value::Null);
        assert_eq!(doc["enrichment"], regorus::Value::from(enrichment));
        assert_eq!(doc["context"]["mode"], regorus::Value::from("plain"));
    }
}
