//! `reflex schemas list|check|register`: the local `schemas/` against a Confluent-compatible
//! registry (`[registry] url`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::Report;
use crate::config::Config;
use crate::registry::manage::{self, Incompatible, SubjectState};
use crate::registry::{HttpRegistry, RegistryError, SubjectVersion};
use crate::schema::Format;

/// Why a `reflex schemas` command could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchemasError {
    /// No registry is configured.
    #[error("no schema registry configured: set [registry] url in {} or REFLEX_REGISTRY_URL", .config.display())]
    NoRegistry {
        /// The configuration file.
        config: PathBuf,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

fn registry(config: &Config) -> Result<Arc<HttpRegistry>, SchemasError> {
    config
        .registry
        .clone()
        .ok_or_else(|| SchemasError::NoRegistry {
            config: config.path.clone(),
        })
}

/// A subject's version, as the reports show it (without the schema text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VersionId {
    /// The version number.
    pub version: u32,
    /// The schema id.
    pub id: u32,
}

impl From<&SubjectVersion> for VersionId {
    fn from(v: &SubjectVersion) -> Self {
        Self {
            version: v.version,
            id: v.id,
        }
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Json => "JSON",
        Format::Avro => "AVRO",
    }
}

/// `reflex schemas list`: each local schema and its subject in the registry.
#[derive(Debug, Clone)]
pub struct ListReport {
    /// One entry per local schema, sorted by event type.
    pub subjects: Vec<SubjectState>,
}

/// Lists each local schema and its subject's versions.
pub async fn list(config: &Config) -> Result<ListReport, SchemasError> {
    let registry = registry(config)?;
    let subjects = manage::list(&config.schemas, &registry).await?;
    Ok(ListReport { subjects })
}

impl Report for ListReport {}

impl fmt::Display for ListReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.subjects.iter().map(ToString::to_string).collect();
        write!(f, "{}", lines.join("\n"))
    }
}

impl Serialize for ListReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Subject<'a> {
            subject: &'a str,
            format: &'static str,
            latest: Option<VersionId>,
            current: Option<VersionId>,
        }
        #[derive(Serialize)]
        struct List<'a> {
            subjects: Vec<Subject<'a>>,
        }
        List {
            subjects: self
                .subjects
                .iter()
                .map(|s| Subject {
                    subject: &s.subject,
                    format: format_name(s.format),
                    latest: s.latest.as_ref().map(VersionId::from),
                    current: s.current.as_ref().map(VersionId::from),
                })
                .collect(),
        }
        .serialize(serializer)
    }
}

/// `reflex schemas register`: the version holding each local schema.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterReport {
    /// One entry per local schema, sorted by event type.
    pub registered: Vec<Registration>,
}

/// Where one local schema is registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// The subject (event type).
    pub subject: String,
    /// The version holding the schema.
    pub version: u32,
    /// The schema id.
    pub id: u32,
}

/// Registers every local schema under its subject (idempotent).
pub async fn register(config: &Config) -> Result<RegisterReport, SchemasError> {
    let registry = registry(config)?;
    let registered = manage::register(&config.schemas, &registry)
        .await?
        .into_iter()
        .map(|v| Registration {
            subject: v.subject,
            version: v.version,
            id: v.id,
        })
        .collect();
    Ok(RegisterReport { registered })
}

impl Report for RegisterReport {}

impl fmt::Display for RegisterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .registered
            .iter()
            .map(|v| format!("{:<24} version {:<3} id {}", v.subject, v.version, v.id))
            .collect();
        write!(f, "{}", lines.join("\n"))
    }
}

/// `reflex schemas check`: each local schema against its subject's latest version, and the
/// lake's columns against the schemas.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The registry's URL.
    pub registry: String,
    /// How many local schemas were checked.
    pub total: usize,
    /// The subjects whose local schema is not compatible.
    pub incompatible: Vec<Incompatible>,
    /// Whether the lake's existing columns keep their types under the local schemas.
    pub lake: LakeCheck,
}

/// The lake part of `reflex schemas check`.
#[derive(Debug, Clone, Serialize)]
pub struct LakeCheck {
    /// The lake's location.
    pub location: String,
    /// What is incompatible; `None` when the columns are compatible.
    pub error: Option<String>,
}

/// Checks every local schema against the registry, and the lake's columns.
pub async fn check(config: &Config) -> Result<CheckReport, SchemasError> {
    let registry = registry(config)?;
    let incompatible = manage::check(&config.schemas, &registry).await?;
    // A schema must also keep the types of the columns the lake already has.
    let lake = crate::lake::check_schemas(config).await;
    Ok(CheckReport {
        registry: registry.url().to_owned(),
        total: config.schemas.types().count(),
        incompatible,
        lake: LakeCheck {
            location: crate::lake::store::describe(&config.lake.location),
            error: lake.err().map(|e| e.to_string()),
        },
    })
}

impl Report for CheckReport {
    fn success(&self) -> bool {
        self.incompatible.is_empty() && self.lake.error.is_none()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.incompatible {
            writeln!(f, "{problem}")?;
        }
        write!(
            f,
            "{} of {} schemas compatible with {}",
            self.total - self.incompatible.len(),
            self.total,
            self.registry
        )?;
        match &self.lake.error {
            None => write!(f, "\nlake columns compatible in {}", self.lake.location),
            Some(e) => write!(f, "\n{e}"),
        }
    }
}
