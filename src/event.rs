//! CloudEvents 1.0 over the Kafka protocol binding: structured and binary content modes.
//!
//! Structured mode carries the whole event as a JSON object in the record value; binary mode
//! carries the attributes in `ce_*` headers and `data` as the value. This module turns either
//! into a [`CloudEvent`] and knows nothing about Kafka clients: headers arrive as name/bytes pairs.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod tape;

/// Record headers as owned name/value pairs.
pub type OwnedHeaders = Vec<(String, Vec<u8>)>;

/// The only CloudEvents version reflex accepts.
pub const SPEC_VERSION: &str = "1.0";

/// Parses JSON from bytes, checked as UTF-8 once as a whole and then read as text. It accepts
/// and rejects exactly what `serde_json::from_slice` does, with less work: that checks each
/// string on its own as it goes, which costs more than one pass over the whole input.
pub fn json_from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        <serde_json::Error as serde::de::Error>::custom(format_args!("not UTF-8: {e}"))
    })?;
    serde_json::from_str(text)
}

/// Which Kafka binding content mode an event arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The record value is a JSON CloudEvent.
    Structured,
    /// Attributes are `ce_*` headers; the value is `data`.
    Binary,
    /// Not a CloudEvent: a wire-format record whose envelope reflex derived (type from a header
    /// or the schema's name, id from the record's coordinates).
    Plain,
}

/// A decoded CloudEvent whose `data` is JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// `specversion`, always `1.0`.
    pub specversion: String,
    /// `id`, unique per `source`.
    pub id: String,
    /// `source`, a URI reference naming the producer.
    pub source: String,
    /// `type`, which selects schema, policy input shape and action.
    #[serde(rename = "type")]
    pub ty: String,
    /// `subject`, the thing the event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `time` as written by the producer (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `datacontenttype`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// `dataschema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// `data`, absent when the event carries none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Extension attributes.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
}

/// An event's attributes, borrowed: from a [`CloudEvent`], or straight from a structured
/// record read with its `data` on a tape ([`TapedEvent`]).
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// `specversion`.
    pub specversion: &'a str,
    /// `id`.
    pub id: &'a str,
    /// `source`.
    pub source: &'a str,
    /// `type`.
    pub ty: &'a str,
    /// `subject`.
    pub subject: Option<&'a str>,
    /// `time` as written by the producer.
    pub time: Option<&'a str>,
    /// `datacontenttype`.
    pub datacontenttype: Option<&'a str>,
    /// `dataschema`.
    pub dataschema: Option<&'a str>,
    /// `data`, when the event holds it as a value (not when it is on a tape).
    pub data: Option<&'a Value>,
    /// Extension attributes.
    pub extensions: &'a BTreeMap<String, Value>,
}

impl Attributes<'_> {
    /// The event they describe, owned, with their `data` (none when it is on a tape).
    pub fn to_event(&self) -> CloudEvent {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        CloudEvent {
            specversion: self.specversion.to_owned(),
            id: self.id.to_owned(),
            source: self.source.to_owned(),
            ty: self.ty.to_owned(),
            subject: owned(self.subject),
            time: owned(self.time),
            datacontenttype: owned(self.datacontenttype),
            dataschema: owned(self.dataschema),
            data: self.data.cloned(),
            extensions: self.extensions.clone(),
        }
    }

    /// Checks the required attributes and the timestamp; returns the time, parsed.
    fn check(&self) -> Result<Option<DateTime<FixedOffset>>, DecodeError> {
        if self.specversion.is_empty() {
            return Err(DecodeError::Missing("specversion"));
        }
        if self.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(self.specversion.to_owned()));
        }
        for (name, value) in [("id", self.id), ("source", self.source), ("type", self.ty)] {
            if value.trim().is_empty() {
                return Err(DecodeError::Missing(name));
            }
        }
        let Some(time) = self.time else {
            return Ok(None);
        };
        let parsed =
            DateTime::parse_from_rfc3339(time).map_err(|_| DecodeError::Time(time.to_owned()))?;
        // Policies compare times as nanoseconds since the epoch (time.parse_rfc3339_ns).
        if parsed.timestamp_nanos_opt().is_none() {
            return Err(DecodeError::TimeOutOfRange(time.to_owned()));
        }
        Ok(Some(parsed))
    }
}

/// An event as a reader of its fields sees it: its attributes, and its `data` either in them
/// or, read without a `Value` tree ([`CloudEvent::decode_structured_tape`]), on a tape.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The attributes; also the `data`, unless that is on `tape`.
    pub attributes: Attributes<'a>,
    /// The `data`, when it is on a tape.
    pub tape: Option<tape::TapeNode<'a>>,
}

impl<'a> From<&'a CloudEvent> for EventRef<'a> {
    fn from(event: &'a CloudEvent) -> Self {
        Self {
            attributes: event.attributes(),
            tape: None,
        }
    }
}

impl EventRef<'_> {
    /// The whole event, its `data` as a `Value`.
    pub fn to_event(&self) -> CloudEvent {
        let mut event = self.attributes.to_event();
        if let Some(tape) = self.tape {
            event.data = Some(tape.to_json());
        }
        event
    }
}

/// A structured CloudEvent read with its `data` on a tape and its attributes borrowed from the
/// record wherever they hold no escape ([`CloudEvent::decode_structured_tape`]).
#[derive(Debug, Deserialize)]
pub struct TapedEvent<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    subject: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    datacontenttype: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    dataschema: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<tape::Tape<'a>>,
    #[serde(flatten)]
    extensions: BTreeMap<String, Value>,
    /// `time`, parsed when the event was checked.
    #[serde(skip)]
    parsed_time: Option<DateTime<FixedOffset>>,
}

impl<'a> TapedEvent<'a> {
    /// The attributes (the `data` is on [`Self::tape`]).
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            specversion: &self.specversion,
            id: &self.id,
            source: &self.source,
            ty: &self.ty,
            subject: self.subject.as_deref(),
            time: self.time.as_deref(),
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            data: None,
            extensions: &self.extensions,
        }
    }

    /// The `data`, on a tape; `None` when the event has none.
    pub fn tape(&self) -> Option<&tape::Tape<'a>> {
        self.data.as_ref()
    }

    /// The event time, as checked; `None` when the producer did not set one.
    pub fn parsed_time(&self) -> Option<DateTime<FixedOffset>> {
        self.parsed_time
    }

    /// The event as its fields are read.
    pub fn view(&self) -> EventRef<'_> {
        EventRef {
            attributes: self.attributes(),
            tape: self.data.as_ref().map(tape::Tape::root),
        }
    }
}

/// Why a record is not a usable CloudEvent.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The record has no value and no `ce_*` headers.
    #[error("record has no value and no ce_specversion header")]
    Empty,
    /// The value is not JSON (structured mode) or not a JSON object.
    #[error("value is not a JSON CloudEvent: {0}")]
    NotJson(String),
    /// A required attribute is missing or empty.
    #[error("required attribute \"{0}\" is missing or empty")]
    Missing(&'static str),
    /// `specversion` is not `1.0`.
    #[error("specversion \"{0}\" is not supported (only \"1.0\")")]
    SpecVersion(String),
    /// `time` is not an RFC 3339 timestamp.
    #[error("time \"{0}\" is not an RFC 3339 timestamp")]
    Time(String),
    /// `time` is outside the years policies can compute with (1677 to 2262).
    #[error("time \"{0}\" is outside the range policies compute with (1677-09-21 to 2262-04-11, nanoseconds since 1970 in 64 bits)")]
    TimeOutOfRange(String),
    /// A `ce_*` header is not UTF-8.
    #[error("header \"{0}\" is not UTF-8")]
    HeaderNotUtf8(String),
    /// Binary-mode data that is not JSON.
    #[error("data with content type \"{0}\" is not JSON: {1}")]
    DataNotJson(String, String),
    /// `data_base64` or a non-JSON content type, which schemas cannot validate yet.
    #[error("data of content type \"{0}\" cannot be validated against a JSON Schema")]
    UnsupportedData(String),
}

impl CloudEvent {
    /// Decodes a record: binary mode when a `ce_specversion` header is present, else structured.
    pub fn decode(
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<(Self, Mode), DecodeError> {
        let is_binary = headers.iter().any(|(name, _)| *name == "ce_specversion");
        let event = if is_binary {
            (Self::decode_binary(value, headers)?, Mode::Binary)
        } else {
            (
                Self::decode_structured(value.ok_or(DecodeError::Empty)?)?,
                Mode::Structured,
            )
        };
        event.0.check()?;
        Ok(event)
    }

    fn decode_structured(value: &[u8]) -> Result<Self, DecodeError> {
        let event: Self = json_from_bytes(value).map_err(|e| classify_json_error(&e))?;
        if event.extensions.contains_key("data_base64") {
            return Err(DecodeError::UnsupportedData(
                "application/octet-stream (data_base64)".into(),
            ));
        }
        Ok(event)
    }

    /// Decodes a structured record as [`Self::decode`] does, with its `data` read onto a
    /// [`tape::Tape`] rather than into a `Value`, and its attributes borrowed from `value`: for
    /// readers of a few fields, which need no `Value` tree and no owned copy. Accepts and
    /// rejects exactly what `decode` does.
    pub fn decode_structured_tape(value: &[u8]) -> Result<TapedEvent<'_>, DecodeError> {
        let mut taped: TapedEvent<'_> =
            json_from_bytes(value).map_err(|e| classify_json_error(&e))?;
        if taped.extensions.contains_key("data_base64") {
            return Err(DecodeError::UnsupportedData(
                "application/octet-stream (data_base64)".into(),
            ));
        }
        taped.parsed_time = taped.attributes().check()?;
        Ok(taped)
    }

    /// Decodes the `ce_*` headers of a binary-mode record whose value is decoded elsewhere.
    pub fn decode_attributes(headers: &[(&str, &[u8])]) -> Result<Self, DecodeError> {
        let event = Self::decode_binary(None, headers)?;
        event.check()?;
        Ok(event)
    }

    fn decode_binary(value: Option<&[u8]>, headers: &[(&str, &[u8])]) -> Result<Self, DecodeError> {
        let mut event = Self {
            specversion: String::new(),
            id: String::new(),
            source: String::new(),
            ty: String::new(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            data: None,
            extensions: BTreeMap::new(),
        };
        for (name, raw) in headers {
            let attr = if let Some(attr) = name.strip_prefix("ce_") {
                attr
            } else if name.eq_ignore_ascii_case("content-type") {
                "datacontenttype"
            } else {
                continue;
            };
            let text = std::str::from_utf8(raw)
                .map_err(|_| DecodeError::HeaderNotUtf8((*name).to_owned()))?
                .to_owned();
            match attr {
                "specversion" => event.specversion = text,
                "id" => event.id = text,
                "source" => event.source = text,
                "type" => event.ty = text,
                "subject" => event.subject = Some(text),
                "time" => event.time = Some(text),
                "datacontenttype" => event.datacontenttype = Some(text),
                "dataschema" => event.dataschema = Some(text),
                other => {
                    event
                        .extensions
                        .insert(other.to_owned(), Value::String(text));
                }
            }
        }
        if let Some(bytes) = value {
            let ct = event
                .datacontenttype
                .as_deref()
                .unwrap_or("application/json");
            if !is_json_content_type(ct) {
                return Err(DecodeError::UnsupportedData(ct.to_owned()));
            }
            let data = json_from_bytes(bytes)
                .map_err(|e| DecodeError::DataNotJson(ct.to_owned(), e.to_string()))?;
            event.data = Some(data);
        }
        Ok(event)
    }

    /// Checks the required attributes and the timestamp.
    fn check(&self) -> Result<(), DecodeError> {
        self.attributes().check().map(drop)
    }

    /// The attributes, borrowed (with the `data`).
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            specversion: &self.specversion,
            id: &self.id,
            source: &self.source,
            ty: &self.ty,
            subject: self.subject.as_deref(),
            time: self.time.as_deref(),
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            data: self.data.as_ref(),
            extensions: &self.extensions,
        }
    }

    /// The event time, parsed; `None` when the producer did not set one.
    pub fn parsed_time(&self) -> Option<DateTime<FixedOffset>> {
        self.time
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    }

    /// Encodes the event in structured mode.
    pub fn to_structured(&self) -> Vec<u8> {
        // Serialising a struct of strings and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The `ce_*` headers and value of this event in binary mode.
    pub fn to_binary(&self) -> (OwnedHeaders, Option<Vec<u8>>) {
        let mut headers = vec![
            (
                "ce_specversion".to_owned(),
                self.specversion.clone().into_bytes(),
            ),
            ("ce_id".to_owned(), self.id.clone().into_bytes()),
            ("ce_source".to_owned(), self.source.clone().into_bytes()),
            ("ce_type".to_owned(), self.ty.clone().into_bytes()),
        ];
        let optional = [
            ("ce_subject", &self.subject),
            ("ce_time", &self.time),
            ("ce_dataschema", &self.dataschema),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                headers.push((name.to_owned(), v.clone().into_bytes()));
            }
        }
        let ct = self
            .datacontenttype
            .clone()
            .unwrap_or_else(|| "application/json".into());
        headers.push(("content-type".to_owned(), ct.into_bytes()));
        for (name, value) in &self.extensions {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.push((format!("ce_{name}"), text.into_bytes()));
        }
        let value = self.data.as_ref().map(|d| d.to_string().into_bytes());
        (headers, value)
    }
}

fn is_json_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

/// Maps serde's error for a structured event to the attribute it concerns.
fn classify_json_error(err: &serde_json::Error) -> DecodeError {
    let msg = err.to_string();
    for attr in ["specversion", "id", "source", "type"] {
        if msg.starts_with(&format!("missing field `{attr}`")) {
            return DecodeError::Missing(attr);
        }
    }
    DecodeError::NotJson(msg)
}

/// The attributes that tell one event's records apart, read without decoding `data`: for
/// finding every record of one event (`reflex trace`), not for admitting it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Identity {
    /// `id`.
    pub id: String,
    /// `type`.
    #[serde(rename = "type", default)]
    pub ty: String,
    /// The `causationid` extension: the id of the event that caused this one, for events
    /// reflex emits.
    #[serde(default)]
    pub causationid: Option<String>,
}

impl Identity {
    /// The identity of a binary-mode record (`ce_*` headers) or a structured one (JSON value);
    /// `None` when the record has no usable id.
    pub fn of(value: Option<&[u8]>, headers: &[(&str, &[u8])]) -> Option<Self> {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        let identity = if header("ce_specversion").is_some() {
            Self {
                id: header("ce_id")?.to_owned(),
                ty: header("ce_type").unwrap_or_default().to_owned(),
                causationid: header("ce_causationid").map(str::to_owned),
            }
        } else {
            serde_json::from_slice(value?).ok()?
        };
        (!identity.id.is_empty()).then_some(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{"specversion":"1.0","id":"e1","source":"/shop","type":"order.placed",
        "time":"2026-01-01T10:00:00Z","subject":"o-1","data":{"order_id":"o-1"},"traceparent":"t"}"#;

    #[test]
    fn decodes_structured_with_extensions() {
        let (event, mode) = CloudEvent::decode(Some(ORDER.as_bytes()), &[]).expect("valid event");
        assert_eq!(mode, Mode::Structured);
        assert_eq!(event.ty, "order.placed");
        assert_eq!(event.subject.as_deref(), Some("o-1"));
        assert_eq!(event.extensions["traceparent"], Value::String("t".into()));
        assert_eq!(event.data, Some(serde_json::json!({"order_id": "o-1"})));
    }

    #[test]
    fn json_from_bytes_accepts_and_rejects_what_from_slice_does() {
        let inputs: [&[u8]; 12] = [
            ORDER.as_bytes(),
            br#"{"a":"caf\u00e9 \ud83d\ude00","b":[1,-2.5e3,null,true],"c":{"d":"\n\"x\""}}"#,
            "{\"é\":\"ünïcödé 😀\"}".as_bytes(),
            b"{\"a\":\"\xff\"}",
            b"\xef\xbb\xbf{}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"a\":\"\xc3\"}",
            br#"{"a":"\ud800"}"#,
            b"{\"a\":1} trailing",
            b"",
            b"\xff\x00garbage",
            br#"{"a":"x""#,
        ];
        for input in inputs {
            let ours = json_from_bytes::<Value>(input).ok();
            let slice = serde_json::from_slice::<Value>(input).ok();
            assert_eq!(ours, slice, "{}", String::from_utf8_lossy(input));
        }
        let err = json_from_bytes::<Value>(b"{\"a\":\"\xff\"}").expect_err("not UTF-8");
        assert!(err.to_string().starts_with("not UTF-8: "), "{err}");
    }

    #[test]
    fn binary_round_trip_equals_structured() {
        let (event, _) = CloudEvent::decode(Some(ORDER.as_bytes()), &[]).expect("valid event");
        let (headers, value) = event.to_binary();
        let borrowed: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let (back, mode) = CloudEvent::decode(value.as_deref(), &borrowed).expect("binary decodes");
        assert_eq!(mode, Mode::Binary);
        assert_eq!(back.id, event.id);
        assert_eq!(back.data, event.data);
        assert_eq!(back.datacontenttype.as_deref(), Some("application/json"));
    }

    #[test]
    fn rejects_garbage_and_missing_attributes() {
        assert!(matches!(
            CloudEvent::decode(Some(b"\xff\x00garbage"), &[]),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(CloudEvent::decode(None, &[]), Err(DecodeError::Empty));
        let no_id = r#"{"specversion":"1.0","source":"/s","type":"t"}"#;
        assert_eq!(
            CloudEvent::decode(Some(no_id.as_bytes()), &[]),
            Err(DecodeError::Missing("id"))
        );
        let empty_type = r#"{"specversion":"1.0","id":"1","source":"/s","type":" "}"#;
        assert_eq!(
            CloudEvent::decode(Some(empty_type.as_bytes()), &[]),
            Err(DecodeError::Missing("type"))
        );
        let v03 = r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#;
        assert_eq!(
            CloudEvent::decode(Some(v03.as_bytes()), &[]),
            Err(DecodeError::SpecVersion("0.3".into()))
        );
        let bad_time =
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#;
        assert_eq!(
            CloudEvent::decode(Some(bad_time.as_bytes()), &[]),
            Err(DecodeError::Time("yesterday".into()))
        );
        // RFC 3339, but past what policies can turn into nanoseconds (time.parse_rfc3339_ns).
        let far = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2300-01-01T00:00:00Z"}"#;
        let err = CloudEvent::decode(Some(far.as_bytes()), &[]).expect_err("out of range");
        assert_eq!(
            err,
            DecodeError::TimeOutOfRange("2300-01-01T00:00:00Z".into())
        );
        assert!(
            err.to_string().contains("1677-09-21 to 2262-04-11"),
            "{err}"
        );
        let edge = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2262-04-11T00:00:00Z"}"#;
        assert!(CloudEvent::decode(Some(edge.as_bytes()), &[]).is_ok());
    }

    #[test]
    fn decoding_onto_a_tape_reads_and_rejects_what_decode_does() {
        let records = [
            ORDER,
            // Escapes in attributes (owned, not borrowed), no time, no data.
            r#"{"specversion":"1.0","id":"a\"b\u00e9","source":"\/s","type":"t","subject":"x\ny"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-01-01T10:00:00+02:00","ext":{"k":[1]}}"#,
            r#"{"specversion":"1.0","source":"/s","type":"t"}"#,
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2300-01-01T00:00:00Z"}"#,
            r#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":7,"source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AA=="}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":[1,{"a":null}]}"#,
        ];
        for record in records {
            let whole = CloudEvent::decode(Some(record.as_bytes()), &[]).map(|(event, _)| event);
            let taped = CloudEvent::decode_structured_tape(record.as_bytes());
            let read = taped.as_ref().map(|event| event.view().to_event());
            assert_eq!(read.as_ref().map_err(|e| *e), whole.as_ref(), "{record}");
            if let (Ok(taped), Ok(whole)) = (&taped, &whole) {
                assert_eq!(taped.parsed_time(), whole.parsed_time(), "{record}");
            }
        }
        let escaped = CloudEvent::decode_structured_tape(records[1].as_bytes()).expect("decodes");
        assert_eq!(escaped.attributes().id, "a\"b\u{e9}");
        assert_eq!(escaped.attributes().subject, Some("x\ny"));
        assert!(escaped.tape().is_none());
    }

    #[test]
    fn binary_rejects_non_json_data_and_bad_headers() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce_specversion", b"1.0"),
            ("ce_id", b"1"),
            ("ce_source", b"/s"),
            ("ce_type", b"t"),
        ];
        assert!(matches!(
            CloudEvent::decode(Some(b"{not json"), &headers),
            Err(DecodeError::DataNotJson(..))
        ));
        let mut with_ct = headers.clone();
        with_ct.push(("content-type", b"application/avro"));
        assert_eq!(
            CloudEvent::decode(Some(b"x"), &with_ct),
            Err(DecodeError::UnsupportedData("application/avro".into()))
        );
        let mut bad = headers.clone();
        bad.push(("ce_subject", b"\xff"));
        assert_eq!(
            CloudEvent::decode(None, &bad),
            Err(DecodeError::HeaderNotUtf8("ce_subject".into()))
        );
    }

    #[test]
    fn identity_reads_id_type_and_cause_in_both_modes() {
        let structured = br#"{"specversion":"1.0","id":"e2","source":"/s","type":"t.x","causationid":"e1","data":{"id":"inner"}}"#;
        let id = Identity::of(Some(structured), &[]).expect("identity");
        assert_eq!(
            (id.id.as_str(), id.ty.as_str(), id.causationid.as_deref()),
            ("e2", "t.x", Some("e1"))
        );
        let headers: &[(&str, &[u8])] = &[
            ("ce_specversion", b"1.0"),
            ("ce_id", b"e3"),
            ("ce_type", b"t.y"),
        ];
        let id = Identity::of(Some(b"not json"), headers).expect("binary identity");
        assert_eq!((id.id.as_str(), id.causationid), ("e3", None));
        assert_eq!(Identity::of(Some(b"{\"id\": \"\"}"), &[]), None);
        assert_eq!(Identity::of(Some(b"\x00\x01"), &[]), None);
    }
}
