//! Fields of an event named in a declaration (`source`, `data.customer_id`) and their values.

use serde_json::Value;

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
    pub fn get<'e>(&self, event: &'e crate::event::CloudEvent) -> Option<FieldValue<'e>> {
        if let Some(path) = &self.data_path {
            let mut value = event.data.as_ref()?;
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
            "id" => &event.id,
            "source" => &event.source,
            "type" => &event.ty,
            "specversion" => &event.specversion,
            "subject" => event.subject.as_ref()?,
            "time" => event.time.as_ref()?,
            "datacontenttype" => event.datacontenttype.as_ref()?,
            "dataschema" => event.dataschema.as_ref()?,
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
}

impl FieldValue<'_> {
    /// As a number, when it is one (a JSON number, or a string holding one).
    pub fn number(self) -> Option<f64> {
        match self {
            Self::Json(Value::Number(n)) => n.as_f64(),
            Self::Json(Value::String(s)) => s.parse().ok(),
            Self::Text(s) => s.parse().ok(),
            Self::Json(_) => None,
        }
    }

    /// As JSON.
    pub fn to_json(self) -> Value {
        match self {
            Self::Text(s) => Value::String(s.to_owned()),
            Self::Json(v) => v.clone(),
        }
    }

    /// Whether it equals `want` (a string attribute equals a JSON string; numbers by value).
    pub fn equals(self, want: &Value) -> bool {
        match (self, want) {
            (Self::Text(s), Value::String(w)) => s == w,
            (Self::Json(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Self::Json(v), w) => v == w,
            (Self::Text(_), _) => false,
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
            Self::Json(v) => {
                use std::fmt::Write as _;
                // Writing to a String cannot fail.
                let _ = write!(out, "{v}");
            }
        }
    }
}
