//! The decode stage for values in the Confluent wire format: binary-mode CloudEvents whose data
//! is Avro or JSON with a registry schema id, and plain records without a CloudEvents envelope.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{DeadLetterReason, Input};
use crate::event::{CloudEvent, Mode, SPEC_VERSION};
use crate::registry::{HttpRegistry, Lookup};
use crate::schema::{avro, wire, Format, Kind};

/// A record the wire decode stage rejects: the reason, its explanation, and the envelope if it
/// was read before the failure.
pub(super) struct Rejected {
    /// The dead-letter reason.
    pub reason: DeadLetterReason,
    /// The explanation.
    pub error: String,
    /// The envelope, when known.
    pub event: Option<Box<(CloudEvent, Mode)>>,
}

fn reject(reason: DeadLetterReason, error: String, event: Option<(CloudEvent, Mode)>) -> Rejected {
    Rejected {
        reason,
        error,
        event: event.map(Box::new),
    }
}

/// Decodes a wire-format value. The schema id must already be resolved (or known missing) in
/// `registry`'s cache: consumers wait for it with [`HttpRegistry::await_schema`] first.
pub(super) fn decode(
    registry: Option<&HttpRegistry>,
    type_header: &str,
    input: &Input<'_>,
) -> Result<(CloudEvent, Mode), Rejected> {
    let value = input.value.unwrap_or_default();
    let binary = input.headers.iter().any(|(n, _)| *n == "ce_specversion");
    let envelope = if binary {
        let event = CloudEvent::decode_attributes(input.headers)
            .map_err(|e| reject(DeadLetterReason::Undecodable, e.to_string(), None))?;
        Some((event, Mode::Binary))
    } else {
        None
    };
    let (id, payload) = match wire::split(value) {
        Ok(split) => split,
        Err(e) => {
            return Err(reject(
                DeadLetterReason::WireFormat,
                e.to_string(),
                envelope,
            ))
        }
    };
    let Some(registry) = registry else {
        let why =
            format!("data is in wire format (schema id {id}) but no [registry] url is configured");
        return Err(reject(DeadLetterReason::SchemaNotFound, why, envelope));
    };
    let registered = match registry.lookup(id) {
        Lookup::Found(r) => r,
        Lookup::Missing(why) => {
            return Err(reject(
                DeadLetterReason::SchemaNotFound,
                format!("{why} (registry {})", registry.url()),
                envelope,
            ));
        }
        Lookup::Unknown => {
            let why = format!("schema id {id} was not resolved before decoding");
            return Err(reject(DeadLetterReason::SchemaNotFound, why, envelope));
        }
    };
    let (mut event, mode) = match envelope {
        Some(e) => e,
        None => {
            let ty = input
                .header(type_header)
                .map(str::to_owned)
                .or_else(|| registered.name.clone());
            let Some(ty) = ty else {
                let why = format!("plain wire-format record without a \"{type_header}\" header, and schema id {id} has no name");
                return Err(reject(DeadLetterReason::Undecodable, why, None));
            };
            (plain_envelope(input, ty), Mode::Plain)
        }
    };
    let subject = event.ty.clone();
    if !registered.subjects.contains(&subject) {
        let why = format!(
            "schema id {id} is registered under {:?}, not under subject \"{subject}\" of event type \"{subject}\"",
            registered.subjects
        );
        return Err(reject(
            DeadLetterReason::SchemaSubjectMismatch,
            why,
            Some((event, mode)),
        ));
    }
    let data = match &registered.kind {
        Kind::Avro(schema) => avro::decode(schema, id, payload).map_err(|e| e.to_string()),
        Kind::Json(_) => crate::event::json_from_bytes::<Value>(payload)
            .map_err(|e| format!("JSON data for schema id {id} does not parse: {e}")),
    };
    let data = match data {
        Ok(d) => d,
        Err(why) => {
            return Err(reject(
                DeadLetterReason::DataUndecodable,
                why,
                Some((event, mode)),
            ))
        }
    };
    let violations = registered.kind.validate(&data);
    if !violations.is_empty() {
        let why = crate::schema::summarize(&violations);
        return Err(reject(
            DeadLetterReason::SchemaInvalid,
            why,
            Some((event, mode)),
        ));
    }
    event.datacontenttype = Some(match registered.format {
        Format::Avro => "application/avro".to_owned(),
        Format::Json => "application/json".to_owned(),
    });
    event
        .dataschema
        .get_or_insert_with(|| format!("{}/schemas/ids/{id}", registry.url()));
    event.data = Some(data);
    Ok((event, mode))
}

/// The envelope of a plain record: id from its coordinates, source from its topic, time from
/// its Kafka timestamp.
fn plain_envelope(input: &Input<'_>, ty: String) -> CloudEvent {
    let time = input
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    CloudEvent {
        specversion: SPEC_VERSION.to_owned(),
        id: format!("{}-{}-{}", input.topic, input.partition, input.offset),
        source: format!("kafka://{}", input.topic),
        ty,
        subject: input
            .key
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_owned),
        time,
        datacontenttype: None,
        dataschema: None,
        data: None,
        extensions: BTreeMap::new(),
    }
}
