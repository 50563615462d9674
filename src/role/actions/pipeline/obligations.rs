//! The `emit` obligations of a decision that the pipeline carries out: derived events. (The
//! `redact` obligation is applied with [`crate::policy::redact::redact_event`].)

use serde_json::Value;

use super::OutRecord;
use crate::event::CloudEvent;
use crate::policy::EmitObligation;

/// Namespace of the ids of events emitted by obligations (UUID v5).
const OBLIGATION_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3b0e_55a4_1f7c_4c8e_b1d2_7a90_c4e6_2f13);

/// The CloudEvent an `emit` obligation asks for; its id is stable across re-deliveries.
pub(super) fn emitted_event(
    event: &CloudEvent,
    emit: EmitObligation,
    index: usize,
    revision: &str,
) -> CloudEvent {
    let name = format!("{}\n{}\n{}\n{index}", event.source, event.id, emit.ty);
    let mut extensions = std::collections::BTreeMap::new();
    extensions.insert("causationid".to_owned(), Value::String(event.id.clone()));
    extensions.insert(
        "policyrevision".to_owned(),
        Value::String(revision.to_owned()),
    );
    CloudEvent {
        specversion: crate::event::SPEC_VERSION.to_owned(),
        id: uuid::Uuid::new_v5(&OBLIGATION_ID_NAMESPACE, name.as_bytes()).to_string(),
        source: "/reflex/policy".to_owned(),
        ty: emit.ty,
        subject: event.subject.clone(),
        time: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        datacontenttype: Some("application/json".to_owned()),
        dataschema: None,
        data: Some(emit.data),
        extensions,
    }
}

/// A structured-mode CloudEvent record; a `traceparent` extension attribute is also written
/// as the record's `traceparent` header, for Kafka tooling that reads the header.
pub(super) fn event_record(topic: String, key: Vec<u8>, event: &CloudEvent) -> OutRecord {
    let mut headers = vec![(
        "content-type".into(),
        b"application/cloudevents+json".to_vec(),
    )];
    if let Some(Value::String(traceparent)) = event.extensions.get(crate::otel::TRACEPARENT) {
        headers.push((
            crate::otel::TRACEPARENT.to_owned(),
            traceparent.clone().into_bytes(),
        ));
    }
    OutRecord {
        partition: None,
        topic,
        key: Some(key),
        value: Some(event.to_structured()),
        headers,
    }
}
