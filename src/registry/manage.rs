//! `reflex schemas`: keeping the registry in step with `schemas/`.
//!
//! Every schema file is published under the subject named after its event type. `check` asks the
//! registry whether each file is compatible with the subject's latest version (under the
//! subject's compatibility level), `register` publishes them (idempotently), `list` shows both
//! sides.

use std::fmt;

use serde_json::Value;

use super::{HttpRegistry, RegistryError, SubjectVersion};
use crate::schema::{Format, SchemaRegistry};

/// One event type's schema, locally and in the registry.
#[derive(Debug, Clone)]
pub struct SubjectState {
    /// The subject (event type).
    pub subject: String,
    /// The local file's format.
    pub format: Format,
    /// The latest registered version, if any.
    pub latest: Option<SubjectVersion>,
    /// The registered version holding exactly the local file, if any.
    pub current: Option<SubjectVersion>,
}

impl fmt::Display for SubjectState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.format {
            Format::Json => "JSON",
            Format::Avro => "AVRO",
        };
        write!(f, "{:<24} {format:<5} ", self.subject)?;
        match (&self.current, &self.latest) {
            (Some(c), Some(l)) if c.version == l.version => {
                write!(f, "registered: version {} id {} (latest)", c.version, c.id)
            }
            (Some(c), Some(l)) => write!(
                f,
                "registered: version {} id {} (latest is version {})",
                c.version, c.id, l.version
            ),
            (None, Some(l)) => write!(
                f,
                "changed locally: latest is version {} id {}; run `reflex schemas register`",
                l.version, l.id
            ),
            _ => write!(f, "not registered"),
        }
    }
}

/// What `check` found wrong with one subject.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Incompatible {
    /// The subject.
    pub subject: String,
    /// Its compatibility level, when the registry told it.
    pub level: Option<String>,
    /// The registry's explanation, naming the field.
    pub messages: Vec<String>,
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match &self.level {
            Some(level) => format!("{level} "),
            None => String::new(),
        };
        write!(
            f,
            "subject \"{}\": schemas/{}: not {level}compatible with the latest registered version: {}",
            self.subject,
            self.subject,
            self.messages.join("; ")
        )
    }
}

/// The state of every local schema's subject.
pub async fn list(
    local: &SchemaRegistry,
    registry: &HttpRegistry,
) -> Result<Vec<SubjectState>, RegistryError> {
    let mut out = Vec::new();
    for subject in local.types() {
        let Some((format, text)) = local.source(subject) else {
            continue;
        };
        let latest = registry.latest(subject).await?;
        let current = if latest.is_some() {
            registry.find(subject, format, text).await?
        } else {
            None
        };
        out.push(SubjectState {
            subject: subject.to_owned(),
            format,
            latest,
            current,
        });
    }
    Ok(out)
}

/// Checks each local schema against its subject's latest version.
pub async fn check(
    local: &SchemaRegistry,
    registry: &HttpRegistry,
) -> Result<Vec<Incompatible>, RegistryError> {
    let mut problems = Vec::new();
    for subject in local.types() {
        let Some((format, text)) = local.source(subject) else {
            continue;
        };
        let mut messages = registry.check_compatible(subject, format, text).await?;
        if !messages.is_empty() {
            // Some registries (Apicurio) answer without naming the field: say which changed.
            if let Some(latest) = registry.latest(subject).await? {
                let fields = explain(format, &latest.schema, text);
                if !fields.is_empty() {
                    messages = fields;
                }
            }
            let level = match registry.compatibility_level(subject).await {
                Ok(level) => Some(level),
                Err(error) => {
                    tracing::warn!(subject, %error, "cannot read the subject's compatibility level");
                    None
                }
            };
            problems.push(Incompatible {
                subject: subject.to_owned(),
                level,
                messages,
            });
        }
    }
    Ok(problems)
}

/// Registers every local schema under its subject; returns the version holding each.
pub async fn register(
    local: &SchemaRegistry,
    registry: &HttpRegistry,
) -> Result<Vec<SubjectVersion>, RegistryError> {
    let mut out = Vec::new();
    for subject in local.types() {
        let Some((format, text)) = local.source(subject) else {
            continue;
        };
        out.push(registry.register(subject, format, text).await?);
    }
    Ok(out)
}

/// Field-level changes between `old` and `new` that break readers of the new schema reading old
/// data (BACKWARD): a changed field type, an Avro field added without a default, a JSON property
/// that became required. Top-level fields only.
pub fn explain(format: Format, old: &str, new: &str) -> Vec<String> {
    let (Ok(old), Ok(new)) = (
        serde_json::from_str::<Value>(old),
        serde_json::from_str::<Value>(new),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match format {
        Format::Avro => {
            let fields = |v: &Value| -> Vec<(String, Value, bool)> {
                v.get("fields")
                    .and_then(Value::as_array)
                    .map(|fs| {
                        fs.iter()
                            .filter_map(|f| {
                                let name = f.get("name")?.as_str()?.to_owned();
                                Some((
                                    name,
                                    f.get("type").cloned().unwrap_or(Value::Null),
                                    f.get("default").is_some(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let before = fields(&old);
            for (name, ty, has_default) in fields(&new) {
                match before.iter().find(|(n, _, _)| *n == name) {
                    Some((_, old_ty, _)) if *old_ty != ty => {
                        out.push(format!(
                            "field \"{name}\" changed type from {old_ty} to {ty}"
                        ));
                    }
                    None if !has_default => {
                        out.push(format!("field \"{name}\" was added without a default"))
                    }
                    _ => {}
                }
            }
        }
        Format::Json => {
            let props = |v: &Value| {
                v.get("properties")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default()
            };
            let required = |v: &Value| -> Vec<String> {
                v.get("required")
                    .and_then(Value::as_array)
                    .map(|r| {
                        r.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (before, after) = (props(&old), props(&new));
            for (name, schema) in &after {
                match before.get(name) {
                    Some(old_schema) if old_schema.get("type") != schema.get("type") => {
                        out.push(format!(
                            "property \"{name}\" changed type from {} to {}",
                            old_schema.get("type").unwrap_or(&Value::Null),
                            schema.get("type").unwrap_or(&Value::Null)
                        ))
                    }
                    None => out.push(format!(
                        "property \"{name}\" was added to an open content model"
                    )),
                    _ => {}
                }
            }
            let was = required(&old);
            for name in required(&new) {
                if !was.contains(&name) {
                    out.push(format!("property \"{name}\" became required"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_avro_and_json_changes() {
        let old = r#"{"type":"record","name":"r","fields":[{"name":"amount","type":"double"}]}"#;
        let new = r#"{"type":"record","name":"r","fields":[{"name":"amount","type":"string"},
            {"name":"note","type":"string"},{"name":"tag","type":["null","string"],"default":null}]}"#;
        assert_eq!(
            explain(Format::Avro, old, new),
            [
                r#"field "amount" changed type from "double" to "string""#,
                r#"field "note" was added without a default"#
            ]
        );
        let old = r#"{"properties":{"qty":{"type":"integer"}},"required":[]}"#;
        let new = r#"{"properties":{"qty":{"type":"string"},"sku":{"type":"string"}},"required":["qty"]}"#;
        assert_eq!(
            explain(Format::Json, old, new),
            [
                r#"property "qty" changed type from "integer" to "string""#,
                r#"property "sku" was added to an open content model"#,
                r#"property "qty" became required"#
            ]
        );
    }
}
