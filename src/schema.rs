//! The file schema registry: one schema per event type, compiled once at start-up.
//!
//! `schemas/<event type>.json` (JSON Schema) or `schemas/<event type>.avsc` (Avro) holds the
//! schema of that type's `data`. A schema that does not parse or compile is a start-up error
//! naming the file; validation errors carry the JSON path of the offending value, never the
//! value itself. [`wire`] reads the Confluent wire format and [`avro`] decodes Avro datums.

pub mod avro;
pub mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::event::tape::{TapeJson, TapeNode};

/// Why the schema directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The directory or a file in it could not be read.
    #[error("cannot read schema {path}: {source}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A schema file is not JSON.
    #[error("schema {path} is not valid JSON: {message}")]
    NotJson {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Two schema files for one event type.
    #[error("event type \"{ty}\" has two schemas: {first} and {second}; keep one")]
    TwoSchemas {
        /// The event type.
        ty: String,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A schema file is JSON but not a valid JSON Schema.
    #[error("schema {path} for event type \"{ty}\" does not compile: {message}")]
    Compile {
        /// The event type.
        ty: String,
        /// The file.
        path: PathBuf,
        /// The compiler's message.
        message: String,
    },
}

/// One violation of an event's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer to the offending value inside `data` (empty for `data` itself).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "data{path}: {}", self.message)
    }
}

/// The violations as one line, for a dead-letter header or an error message.
pub fn summarize(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Compiled schemas by event type.
pub struct SchemaRegistry {
    schemas: BTreeMap<String, Compiled>,
}

struct Compiled {
    path: PathBuf,
    text: String,
    kind: Kind,
    /// The schema as JSON Schema (Avro schemas translated), from which the lake derives columns.
    json_schema: Value,
    /// A JSON Schema compiled again for data on a tape ([`crate::event::tape`]).
    on_tape: Option<jsonschema::Validator<TapeJson>>,
}

/// A compiled schema of either format.
pub enum Kind {
    /// A JSON Schema validator.
    Json(Box<jsonschema::Validator>),
    /// An Avro schema.
    Avro(Box<apache_avro::Schema>),
}

/// The format of a schema, as the Confluent API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON Schema (`JSON`).
    Json,
    /// Avro (`AVRO`).
    Avro,
}

impl Kind {
    /// Compiles `text` of `format`.
    pub fn compile(format: Format, text: &str) -> Result<Self, String> {
        match format {
            Format::Avro => avro::parse(text).map(|s| Self::Avro(Box::new(s))),
            Format::Json => {
                let schema: Value =
                    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .map(|v| Self::Json(Box::new(v)))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Validates JSON `data`: the first few violations, empty when valid.
    pub fn validate(&self, data: &Value) -> Vec<Violation> {
        match self {
            Self::Json(validator) => {
                if validator.is_valid(data) {
                    return Vec::new();
                }
                validator
                    .iter_errors(data)
                    .take(5)
                    .map(|e| Violation {
                        path: e.instance_path().to_string(),
                        message: describe(&e),
                    })
                    .collect()
            }
            Self::Avro(schema) => match avro::validate_json(schema, data) {
                Ok(()) => Vec::new(),
                Err(message) => vec![Violation {
                    path: String::new(),
                    message,
                }],
            },
        }
    }
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("types", &self.schemas.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SchemaRegistry {
    /// Loads and compiles every `*.json` file in `dir`; the file stem is the event type.
    pub fn load(dir: &Path) -> Result<Self, SchemaError> {
        let read = |path: &Path, source| SchemaError::Read {
            path: path.to_owned(),
            source,
        };
        let mut schemas = BTreeMap::new();
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| read(dir, e))? {
            // An entry that cannot be read may be a schema: skipping it would start reflex
            // without that event type.
            let path = entry.map_err(|e| read(dir, e))?.path();
            if path
                .extension()
                .is_some_and(|ext| ext == "json" || ext == "avsc")
            {
                entries.push(path);
            }
        }
        entries.sort();
        for path in entries {
            let Some(ty) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|e| read(&path, e))?;
            if let Err(e) = serde_json::from_str::<Value>(&text) {
                return Err(SchemaError::NotJson {
                    path,
                    message: e.to_string(),
                });
            }
            let format = if path.extension().is_some_and(|e| e == "avsc") {
                Format::Avro
            } else {
                Format::Json
            };
            let kind = Kind::compile(format, &text).map_err(|message| SchemaError::Compile {
                ty: ty.clone(),
                path: path.clone(),
                message,
            })?;
            if let Some(first) = schemas.get(&ty).map(|c: &Compiled| c.path.clone()) {
                return Err(SchemaError::TwoSchemas {
                    ty,
                    first,
                    second: path,
                });
            }
            let json_schema = match &kind {
                Kind::Avro(schema) => avro::to_json_schema(schema),
                Kind::Json(_) => serde_json::from_str(&text).unwrap_or(Value::Null),
            };
            // The same schema, which compiled above: it compiles for the tape too.
            let on_tape = match &kind {
                Kind::Json(_) => jsonschema::options_for::<TapeJson>()
                    .should_validate_formats(true)
                    .build(&json_schema)
                    .ok(),
                Kind::Avro(_) => None,
            };
            schemas.insert(
                ty,
                Compiled {
                    path,
                    text,
                    kind,
                    json_schema,
                    on_tape,
                },
            );
        }
        Ok(Self { schemas })
    }

    /// The event types that have a schema.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.schemas.keys().map(String::as_str)
    }

    /// Whether `ty` has a schema.
    pub fn contains(&self, ty: &str) -> bool {
        self.schemas.contains_key(ty)
    }

    /// The file a type's schema came from.
    pub fn path(&self, ty: &str) -> Option<&Path> {
        self.schemas.get(ty).map(|c| c.path.as_path())
    }

    /// The schema text and format of `ty`, as registered.
    pub fn source(&self, ty: &str) -> Option<(Format, &str)> {
        self.schemas.get(ty).map(|c| {
            let format = match c.kind {
                Kind::Json(_) => Format::Json,
                Kind::Avro(_) => Format::Avro,
            };
            (format, c.text.as_str())
        })
    }

    /// The JSON Schema of a type's `data` (for an Avro type, its JSON Schema equivalent).
    pub fn schema(&self, ty: &str) -> Option<&Value> {
        self.schemas.get(ty).map(|c| &c.json_schema)
    }

    /// Whether data on a tape is valid against the JSON Schema of `ty`: `None` if the type has
    /// none (no schema, or an Avro one); then, and when it is not valid, [`Self::validate`]
    /// on the data as a `Value` gives the answer and the violations.
    pub fn valid_on_tape(&self, ty: &str, data: TapeNode<'_>) -> Option<bool> {
        let validator = self.schemas.get(ty)?.on_tape.as_ref()?;
        Some(validator.is_valid(data))
    }

    /// Validates `data` against the schema of `ty`. `None` if the type has no schema; otherwise
    /// the first few violations (empty when valid).
    pub fn validate(&self, ty: &str, data: &Value) -> Option<Vec<Violation>> {
        self.schemas.get(ty).map(|c| c.kind.validate(data))
    }
}

/// A message about a validation error that does not repeat the (possibly sensitive) value.
fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    let full = error.to_string();
    let instance = error.instance().to_string();
    // jsonschema's messages start with the offending value; keep only what follows it.
    match full.strip_prefix(&instance) {
        Some(rest) => rest.trim_start().to_owned(),
        None => {
            let kind = format!("{:?}", error.kind());
            kind.split([' ', '{', '('])
                .next()
                .unwrap_or("invalid")
                .to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry(files: &[(&str, &str)]) -> Result<SchemaRegistry, SchemaError> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write schema");
        }
        SchemaRegistry::load(dir.path())
    }

    const ORDER: &str = r#"{"type":"object","required":["order_id","amount"],
        "properties":{"order_id":{"type":"string"},"amount":{"type":"number","minimum":0}}}"#;

    #[test]
    fn validates_and_reports_path_without_value() {
        let reg = registry(&[("order.placed.json", ORDER)]).expect("loads");
        assert_eq!(reg.types().collect::<Vec<_>>(), ["order.placed"]);
        assert_eq!(
            reg.validate("order.placed", &json!({"order_id": "o", "amount": 3})),
            Some(vec![])
        );
        let errs = reg
            .validate("order.placed", &json!({"order_id": "o", "amount": -12345}))
            .expect("known type");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "/amount");
        assert!(!errs[0].message.contains("12345"), "{}", errs[0].message);
        assert!(
            errs[0].to_string().starts_with("data/amount:"),
            "{}",
            errs[0]
        );
        assert_eq!(reg.validate("refund.requested", &json!({})), None);
    }

    #[test]
    fn compile_failure_names_type_and_file() {
        let err = registry(&[("bad.type.json", r#"{"type": 12}"#)]).expect_err("does not compile");
        let msg = err.to_string();
        assert!(
            msg.contains("\"bad.type\"") && msg.contains("bad.type.json"),
            "{msg}"
        );
        let err = registry(&[("x.json", "{nope")]).expect_err("not json");
        assert!(err.to_string().contains("x.json"), "{err}");
    }
}
