//! The policy input document `{event, publisher, enrichment, context}` (and the redaction rule's `{event}`), built straight into regorus's value
//! type from the decoded event.
//!
//! Going through `serde_json::json!` first would copy the whole event (data included) into a
//! `serde_json::Value` and then convert that copy again; here every string is copied once, and
//! the event's data is read in place. The document is the same value either way (a unit test
//! checks it against the JSON route).

use std::collections::BTreeMap;

use serde::Deserialize;

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
    let mut doc = BTreeMap::new();
    doc.insert(key("event"), event_value(event));
    doc.insert(key("publisher"), publisher_value(publisher));
    let enrichment: BTreeMap<_, _> = enrichment
        .iter()
        .map(|(k, v)| (regorus::Value::from(k.as_str()), json(v)))
        .collect();
    doc.insert(key("enrichment"), regorus::Value::from(enrichment));
    let mut ctx = BTreeMap::new();
    ctx.insert(key("topic"), regorus::Value::from(context.topic));
    ctx.insert(key("partition"), regorus::Value::from(context.partition));
    ctx.insert(key("offset"), regorus::Value::from(context.offset));
    ctx.insert(key("mode"), regorus::Value::from(mode_name(context.mode)));
    ctx.insert(
        key("kafka_timestamp_ms"),
        context
            .kafka_timestamp_ms
            .map_or(regorus::Value::Null, regorus::Value::from),
    );
    ctx.insert(key("now"), regorus::Value::from(context.now));
    doc.insert(key("context"), regorus::Value::from(ctx));
    regorus::Value::from(doc)
}

/// The input document of the redaction rule: `{"event": …}` and nothing else, so the rule's
/// value cannot depend on when or where the event is decided.
pub fn event_document(event: &CloudEvent) -> regorus::Value {
    let mut doc = BTreeMap::new();
    doc.insert(key("event"), event_value(event));
    regorus::Value::from(doc)
}

/// The CloudEvent as its JSON form would read (absent optional attributes left out,
/// extensions at the top level).
fn event_value(event: &CloudEvent) -> regorus::Value {
    let mut obj = BTreeMap::new();
    obj.insert(
        key("specversion"),
        regorus::Value::from(&*event.specversion),
    );
    obj.insert(key("id"), regorus::Value::from(&*event.id));
    obj.insert(key("source"), regorus::Value::from(&*event.source));
    obj.insert(key("type"), regorus::Value::from(&*event.ty));
    let optional = [
        ("subject", &event.subject),
        ("time", &event.time),
        ("datacontenttype", &event.datacontenttype),
        ("dataschema", &event.dataschema),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            obj.insert(key(name), regorus::Value::from(value.as_str()));
        }
    }
    if let Some(data) = &event.data {
        obj.insert(key("data"), json(data));
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
fn publisher_value(publisher: &Publisher) -> regorus::Value {
    let mut obj = BTreeMap::new();
    obj.insert(key("verified"), regorus::Value::from(publisher.verified));
    obj.insert(
        key("key_id"),
        publisher
            .key_id
            .as_deref()
            .map_or(regorus::Value::Null, regorus::Value::from),
    );
    obj.insert(key("status"), regorus::Value::from(publisher.status.name()));
    if let Some(claimed) = &publisher.claimed_key_id {
        obj.insert(
            key("claimed_key_id"),
            regorus::Value::from(claimed.as_str()),
        );
    }
    regorus::Value::from(obj)
}

/// A borrowed JSON value as a regorus value, without an intermediate copy.
pub fn json(value: &serde_json::Value) -> regorus::Value {
    // Deserializing from a `serde_json::Value` cannot fail for a type that accepts any JSON.
    regorus::Value::deserialize(value).unwrap_or(regorus::Value::Null)
}

fn key(name: &'static str) -> regorus::Value {
    regorus::Value::from(name)
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
                            "items": [{"sku": "S-1", "quantity": 1}], "none": null, "ok": true}}),
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
