//! `reflex schemas`: keeping the registry in step with `schemas/`.
//!
//! Every schema file is published under the subject named after its event type. `check` asks the
//! registry whether each file is compatible with the subject's latest version (under the
//! subject's compatibility level), `register` publishes them (idempotently), `list` shows both
//! sides.

use std::fmt;

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
            (Some(c), Some(l)) if c.version == l.version => write!(f, "registered: version {} id {} (latest)", c.version, c.id),
            (Some(c), Some(l)) => write!(f, "registered: version {} id {} (latest is version {})", c.version, c.id, l.version),
            (None, Some(l)) => write!(f, "changed locally: latest is version {} id {}; run `reflex schemas register`", l.version, l.id),
            _ => write!(f, "not registered"),
        }
    }
}

/// What `check` found wrong with one subject.
#[derive(Debug, Clone)]
pub struct Incompatible {
    /// The subject.
    pub subject: String,
    /// Its compatibility level.
    pub level: String,
    /// The registry's explanation, naming the field.
    pub messages: Vec<String>,
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject \"{}\": schemas/{}: not {} compatible with the latest registered version: {}",
            self.subject,
            self.subject,
            self.level,
            self.messages.join("; ")
        )
    }
}

/// The state of every local schema's subject.
pub async fn list(local: &SchemaRegistry, registry: &HttpRegistry) -> Result<Vec<SubjectState>, RegistryError> {
    let mut out = Vec::new();
    for subject in local.types() {
        let Some((format, text)) = local.source(subject) else { continue };
        let latest = registry.latest(subject).await?;
        let current = if latest.is_some() { registry.find(subject, format, text).await? } else { None };
        out.push(SubjectState { subject: subject.to_owned(), format, latest, current });
    }
    Ok(out)
}

/// Checks each local schema against its subject's latest version.
pub async fn check(local: &SchemaRegistry, registry: &HttpRegistry) -> Result<Vec<Incompatible>, RegistryError> {
    let mut problems = Vec::new();
    for subject in local.types() {
        let Some((format, text)) = local.source(subject) else { continue };
        let messages = registry.check_compatible(subject, format, text).await?;
        if !messages.is_empty() {
            let level = registry.compatibility_level(subject).await.unwrap_or_else(|_| "BACKWARD".into());
            problems.push(Incompatible { subject: subject.to_owned(), level, messages });
        }
    }
    Ok(problems)
}

/// Registers every local schema under its subject; returns the version holding each.
pub async fn register(local: &SchemaRegistry, registry: &HttpRegistry) -> Result<Vec<SubjectVersion>, RegistryError> {
    let mut out = Vec::new();
    for subject in local.types() {
        let Some((format, text)) = local.source(subject) else { continue };
        out.push(registry.register(subject, format, text).await?);
    }
    Ok(out)
}
