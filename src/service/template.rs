//! URL templates: `{id}`, `{type}`, `{source}`, `{subject}` and `{data.a.b}` filled from an
//! event, each value percent-encoded.
//!
//! A template is parsed once, at configuration load, so a bad brace is a start-up error; at run
//! time only a field the event lacks can make rendering fail. Literal braces are not supported.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::event::CloudEvent;

/// Characters left as they are in a value: RFC 3986 "unreserved" (`A-Z a-z 0-9 - . _ ~`).
/// Everything else, `/`, `?`, `#` and `&` included, is encoded, so a value cannot change the
/// shape of the URL.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` is never closed.
    #[error("URL template \"{template}\": `{{` at byte {at} is never closed")]
    Unclosed {
        /// The template.
        template: String,
        /// Byte offset of the `{`.
        at: usize,
    },
    /// A `}` closes nothing.
    #[error("URL template \"{template}\": `}}` at byte {at} closes nothing")]
    Unopened {
        /// The template.
        template: String,
        /// Byte offset of the `}`.
        at: usize,
    },
    /// A placeholder names no field.
    #[error("URL template \"{template}\": unknown placeholder {{{name}}} (expected id, type, source, subject or data.<path>)")]
    Unknown {
        /// The template.
        template: String,
        /// The placeholder.
        name: String,
    },
}

/// Why a template cannot be filled from one event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The event lacks the field.
    #[error("URL template \"{template}\": event has no {field}")]
    Missing {
        /// The template.
        template: String,
        /// The placeholder's field.
        field: String,
    },
    /// The field is an object, an array or null.
    #[error("URL template \"{template}\": {field} is not a string, number or boolean")]
    NotScalar {
        /// The template.
        template: String,
        /// The placeholder's field.
        field: String,
    },
}

/// One placeholder's field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Id,
    Type,
    Source,
    Subject,
    /// A path into `data`, split at dots.
    Data(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
}

/// A parsed URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    text: String,
    parts: Vec<Part>,
}

impl UrlTemplate {
    /// Parses `text`; a stray or unclosed brace or an unknown placeholder is an error.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0;
        while !rest.is_empty() {
            let open = rest.find('{');
            let close = rest.find('}');
            match (open, close) {
                (_, Some(c)) if open.is_none_or(|o| c < o) => {
                    return Err(TemplateError::Unopened {
                        template: text.to_owned(),
                        at: offset + c,
                    })
                }
                (None, _) => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                (Some(o), close) => {
                    let Some(c) = close else {
                        return Err(TemplateError::Unclosed {
                            template: text.to_owned(),
                            at: offset + o,
                        });
                    };
                    let name = &rest[o + 1..c];
                    if name.contains('{') {
                        return Err(TemplateError::Unclosed {
                            template: text.to_owned(),
                            at: offset + o,
                        });
                    }
                    if o > 0 {
                        parts.push(Part::Literal(rest[..o].to_owned()));
                    }
                    parts.push(Part::Field(field(name).ok_or_else(|| {
                        TemplateError::Unknown {
                            template: text.to_owned(),
                            name: name.to_owned(),
                        }
                    })?));
                    offset += c + 1;
                    rest = &rest[c + 1..];
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Fills the placeholders from `event`, percent-encoding each value.
    pub fn render(&self, event: &CloudEvent) -> Result<String, RenderError> {
        self.fill(|field| {
            let missing = || RenderError::Missing {
                template: self.text.clone(),
                field: describe(field),
            };
            let value = match field {
                Field::Id => Value::String(event.id.clone()),
                Field::Type => Value::String(event.ty.clone()),
                Field::Source => Value::String(event.source.clone()),
                Field::Subject => Value::String(event.subject.clone().ok_or_else(missing)?),
                Field::Data(path) => path
                    .iter()
                    .try_fold(event.data.as_ref().ok_or_else(missing)?, |v, key| {
                        v.get(key.as_str())
                    })
                    .ok_or_else(missing)?
                    .clone(),
            };
            match value {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                Value::Null | Value::Array(_) | Value::Object(_) => Err(RenderError::NotScalar {
                    template: self.text.clone(),
                    field: describe(field),
                }),
            }
        })
    }

    /// The template with every placeholder replaced by `value` (for checks at load time).
    pub fn render_with(&self, value: &str) -> String {
        // The closure never fails.
        self.fill(|_| Ok::<_, RenderError>(value.to_owned()))
            .unwrap_or_default()
    }

    fn fill<F>(&self, mut value: F) -> Result<String, RenderError>
    where
        F: FnMut(&Field) -> Result<String, RenderError>,
    {
        let mut out = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(f) => out.extend(utf8_percent_encode(&value(f)?, VALUE)),
            }
        }
        Ok(out)
    }
}

fn field(name: &str) -> Option<Field> {
    match name {
        "id" => Some(Field::Id),
        "type" => Some(Field::Type),
        "source" => Some(Field::Source),
        "subject" => Some(Field::Subject),
        _ => {
            let path = name.strip_prefix("data.")?;
            let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
            keys.iter()
                .all(|k| !k.is_empty())
                .then_some(Field::Data(keys))
        }
    }
}

fn describe(field: &Field) -> String {
    match field {
        Field::Id => "id".into(),
        Field::Type => "type".into(),
        Field::Source => "source".into(),
        Field::Subject => "subject".into(),
        Field::Data(path) => format!("data.{}", path.join(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CloudEvent {
        let json = r#"{"specversion":"1.0","id":"e 1/2","source":"/shop","type":"order.placed",
            "data":{"customer":{"id":"c/7?x=1"},"n":3,"ok":true,"none":null,"list":[1]}}"#;
        CloudEvent::decode(Some(json.as_bytes()), &[])
            .expect("valid")
            .0
    }

    #[test]
    fn fills_and_encodes_every_kind_of_placeholder() {
        let t = UrlTemplate::parse(
            "http://h:1/c/{data.customer.id}/o/{id}?t={type}&s={source}&n={data.n}&b={data.ok}",
        )
        .expect("parses");
        assert_eq!(
            t.render(&event()).expect("renders"),
            "http://h:1/c/c%2F7%3Fx%3D1/o/e%201%2F2?t=order.placed&s=%2Fshop&n=3&b=true"
        );
        assert_eq!(
            t.render_with("x"),
            "http://h:1/c/x/o/x?t=x&s=x&n=x&b=x",
            "load-time sample"
        );
        let plain = UrlTemplate::parse("http://h/plain").expect("parses");
        assert_eq!(plain.render(&event()).expect("renders"), "http://h/plain");
    }

    #[test]
    fn a_field_the_event_lacks_is_a_render_error_naming_it() {
        for (template, field, scalar) in [
            ("http://h/{subject}", "subject", false),
            ("http://h/{data.customer.name}", "data.customer.name", false),
            ("http://h/{data.n.deeper}", "data.n.deeper", false),
            ("http://h/{data.none}", "data.none", true),
            ("http://h/{data.list}", "data.list", true),
        ] {
            let err = UrlTemplate::parse(template)
                .expect("parses")
                .render(&event())
                .expect_err(template);
            let msg = err.to_string();
            assert!(msg.contains(field) && msg.contains(template), "{msg}");
            assert_eq!(
                matches!(err, RenderError::NotScalar { .. }),
                scalar,
                "{msg}"
            );
        }
    }

    #[test]
    fn bad_braces_and_names_are_parse_errors() {
        let cases = [
            ("http://h/{id", "never closed"),
            ("http://h/{{id}", "never closed"),
            ("http://h/id}", "closes nothing"),
            ("http://h/{}", "unknown placeholder {}"),
            ("http://h/{data.}", "unknown placeholder {data.}"),
            ("http://h/{time}", "unknown placeholder {time}"),
        ];
        for (template, want) in cases {
            let msg = UrlTemplate::parse(template)
                .expect_err(template)
                .to_string();
            assert!(msg.contains(want) && msg.contains(template), "{msg}");
        }
    }
}
