//! Fields of an event named in a declaration (`source`, `data.customer_id`) and their values.

use serde_json::Value;

use crate::event::tape::TapeNode;
use crate::event::EventRef;

/// A field of an event: an envelope attribute (`source`, `type`, `subject`, `id`, `time`, an
/// extension) or a path into `data` (`data.customer.id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// As written.
    pub name: String,
    /// The path below `data`, when it is a data field.
    data_path: Option<Vec<String>>,
}

impl Field {
    /// Parses `name`; `None` when it is empty or has an empty segment.
    pub fn parse(name: &str) -> Option<Self> {
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return None;
        }
        let data_path = match name.strip_prefix("data.") {
            Some(rest) => Some(rest.split('.').map(str::to_owned).collect()),
            None if name == "data" => Some(Vec::new()),
            None => None,
        };
        Some(Self {
            name: name.to_owned(),
            data_path,
        })
    }

    /// The field's value in `event`, if present.
    pub fn get<'e>(&self, event: impl Into<EventRef<'e>>) -> Option<FieldValue<'e>> {
        let EventRef {
            attributes: event,
            tape,
        } = event.into();
        if let (Some(path), Some(mut node)) = (&self.data_path, tape) {
            for segment in path {
                node = match node.get(segment) {
                    Some(member) => member,
                    None => node.index(segment.parse::<usize>().ok()?)?,
                };
            }
            return (!node.null()).then_some(FieldValue::Tape(node));
        }
        if let Some(path) = &self.data_path {
            let mut value = event.data?;
            for segment in path {
                value = match value {
                    Value::Object(map) => map.get(segment)?,
                    Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            return (!value.is_null()).then_some(FieldValue::Json(value));
        }
        let text = match self.name.as_str() {
            "id" => event.id,
            "source" => event.source,
            "type" => event.ty,
            "specversion" => event.specversion,
            "subject" => event.subject?,
            "time" => event.time?,
            "datacontenttype" => event.datacontenttype?,
            "dataschema" => event.dataschema?,
            other => return event.extensions.get(other).map(FieldValue::Json),
        };
        Some(FieldValue::Text(text))
    }
}

/// A field's value, borrowed from the event.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'e> {
    /// An envelope attribute.
    Text(&'e str),
    /// A JSON value (a data field or an extension).
    Json(&'e Value),
    /// A data field on a tape.
    Tape(TapeNode<'e>),
}

impl FieldValue<'_> {
    /// As a number, when it is one (a JSON number, or a string holding one).
    pub fn number(self) -> Option<f64> {
        match self {
            Self::Json(Value::Number(n)) => n.as_f64(),
            Self::Json(Value::String(s)) => s.parse().ok(),
            Self::Text(s) => s.parse().ok(),
            Self::Tape(node) => match node.number() {
                Some(n) => n.as_f64(),
                None => node.str()?.parse().ok(),
            },
            Self::Json(_) => None,
        }
    }

    /// As JSON.
    pub fn to_json(self) -> Value {
        match self {
            Self::Text(s) => Value::String(s.to_owned()),
            Self::Json(v) => v.clone(),
            Self::Tape(node) => node.to_json(),
        }
    }

    /// Whether it is a string (an attribute, or a JSON string).
    pub fn is_str(self) -> bool {
        match self {
            Self::Text(_) | Self::Json(Value::String(_)) => true,
            Self::Json(_) => false,
            Self::Tape(node) => node.str().is_some(),
        }
    }

    /// Whether it equals `want` (a string attribute equals a JSON string; numbers by value).
    pub fn equals(self, want: &Value) -> bool {
        match (self, want) {
            (Self::Text(s), Value::String(w)) => s == w,
            (Self::Json(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Self::Json(v), w) => v == w,
            (Self::Text(_), _) => false,
            (Self::Tape(node), w) => match (node.str(), node.number(), w) {
                (Some(s), _, Value::String(w)) => s == w,
                (_, Some(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                _ => node.to_json() == *w,
            },
        }
    }

    /// A stable text form: strings as they are, anything else as compact JSON.
    pub fn text(self) -> String {
        let mut text = String::new();
        self.write_text(&mut text);
        text
    }

    /// [`Self::text`] appended to `out`.
    pub fn write_text(self, out: &mut String) {
        match self {
            Self::Text(s) => out.push_str(s),
            Self::Json(Value::String(s)) => out.push_str(s),
            Self::Tape(node) => {
                use std::fmt::Write as _;
                match (node.str(), node.number()) {
                    (Some(s), _) => out.push_str(s),
                    // Writing to a String cannot fail.
                    (_, Some(n)) => drop(write!(out, "{n}")),
                    _ => drop(write!(out, "{}", node.to_json())),
                }
            }
            Self::Json(v) => {
                use std::fmt::Write as _;
                // Writing to a String cannot fail.
                let _ = write!(out, "{v}");
            }
        }
    }
}
