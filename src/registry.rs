//! A Confluent-compatible schema registry over HTTP (Confluent Schema Registry, Apicurio's
//! `/apis/ccompat/v7`, Karapace, Redpanda).
//!
//! Subjects are named after event types: the schema of `order.placed` is registered under the
//! subject `order.placed`. Schemas fetched by id are compiled once and cached for the life of the
//! process (a registered id never changes). A lookup either finds the schema, learns that the id
//! does not exist (the event's fault: a dead letter), or fails to reach the registry (not the
//! event's fault: the caller waits and tries again).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, post_schema, SrSettings,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde::Deserialize;

use crate::http::{HttpAuth, HttpTls};
use crate::schema::{Format, Kind};

pub mod manage;

/// Why the registry could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry says the schema id does not exist.
    #[error("schema id {0} is not in the registry")]
    NotFound(u32),
    /// The registry could not be reached or failed; the request may succeed later.
    #[error("schema registry at {url} is unavailable: {message}")]
    Unavailable {
        /// The registry's URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The registry returned a schema reflex cannot compile.
    #[error("schema id {id} from the registry does not compile: {message}")]
    Compile {
        /// The schema id.
        id: u32,
        /// The compiler's message.
        message: String,
    },
    /// The registry refused a request (e.g. an incompatible schema).
    #[error("schema registry refused {what}: {message}")]
    Refused {
        /// The request.
        what: String,
        /// The registry's message.
        message: String,
    },
}

/// A schema fetched from the registry by id.
pub struct Registered {
    /// Its id.
    pub id: u32,
    /// The subjects (event types) it is registered under.
    pub subjects: Vec<String>,
    /// Its format.
    pub format: Format,
    /// The record full name (Avro) or title (JSON Schema), if it has one.
    pub name: Option<String>,
    /// The compiled schema.
    pub kind: Kind,
}

/// The result of looking up a schema id in the cache.
pub enum Lookup {
    /// Known and compiled.
    Found(Arc<Registered>),
    /// The registry said it does not exist, or its schema does not compile: why.
    Missing(String),
    /// Not looked up yet.
    Unknown,
}

/// A registered version of a subject.
#[derive(Debug, Clone, Deserialize)]
pub struct SubjectVersion {
    /// Subject.
    pub subject: String,
    /// Version number.
    pub version: u32,
    /// Schema id.
    pub id: u32,
    /// The schema text.
    #[serde(default)]
    pub schema: String,
}

/// Client with a cache of schemas by id.
pub struct HttpRegistry {
    url: String,
    settings: SrSettings,
    http: reqwest::Client,
    cache: RwLock<HashMap<u32, Arc<Registered>>>,
    missing: RwLock<HashMap<u32, String>>,
}

impl std::fmt::Debug for HttpRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRegistry")
            .field("url", &self.url)
            .finish()
    }
}

#[derive(Deserialize)]
struct IdVersion {
    subject: String,
}

#[derive(Deserialize)]
struct Compatibility {
    is_compatible: bool,
    #[serde(default)]
    messages: Vec<String>,
}

impl HttpRegistry {
    /// A client for the registry at `url` (e.g. `http://127.0.0.1:8081/apis/ccompat/v7`).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RegistryError> {
        Self::with_tls(url, timeout, &HttpTls::default(), HttpAuth::None)
    }

    /// A client that trusts `tls`'s CAs, presents its client certificate, and sends `auth` with
    /// every request (as a sensitive header, so no `Debug` output shows it).
    pub fn with_tls(
        url: &str,
        timeout: Duration,
        tls: &HttpTls,
        auth: HttpAuth,
    ) -> Result<Self, RegistryError> {
        let url = url.trim_end_matches('/').to_owned();
        let unavailable = |message: String| RegistryError::Unavailable {
            url: url.clone(),
            message,
        };
        let builder = || -> Result<reqwest::ClientBuilder, RegistryError> {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(value) = auth.header() {
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
            Ok(crate::http::client_builder(tls)
                .map_err(|e| unavailable(e.to_string()))?
                .default_headers(headers)
                .timeout(timeout))
        };
        let settings = SrSettings::new_builder(url.clone())
            .set_timeout(timeout)
            .build_with(builder()?)
            .map_err(|e| unavailable(e.to_string()))?;
        let http = builder()?.build().map_err(|e| unavailable(e.to_string()))?;
        Ok(Self {
            url,
            settings,
            http,
            cache: RwLock::default(),
            missing: RwLock::default(),
        })
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the cache knows about `id`, without a request.
    pub fn lookup(&self, id: u32) -> Lookup {
        if let Some(found) = read(&self.cache).get(&id).cloned() {
            return Lookup::Found(found);
        }
        if let Some(why) = read(&self.missing).get(&id).cloned() {
            return Lookup::Missing(why);
        }
        Lookup::Unknown
    }

    /// Makes sure the schema of a wire-format `value` is resolved (or known not to exist) before
    /// the record is decoded. A registry that cannot be reached is not the event's fault: the
    /// caller waits, with backoff, and the reason is logged. Returns false if `shutdown` came
    /// first; true at once for a value that is not in the wire format.
    pub async fn await_schema(
        &self,
        value: &[u8],
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> bool {
        let Ok((id, _)) = crate::schema::wire::split(value) else {
            return true;
        };
        if !matches!(self.lookup(id), Lookup::Unknown) {
            return true;
        }
        let curve =
            crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for attempt in 1.. {
            match self.resolve(id).await {
                Ok(_) | Err(RegistryError::NotFound(_) | RegistryError::Compile { .. }) => {
                    return true
                }
                Err(e) => {
                    let backoff = curve.next_delay(attempt);
                    tracing::warn!(error = %e, schema_id = id, attempt, retry_in = ?backoff, "schema registry unavailable; the event waits for its schema");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
        true
    }

    /// Fetches, compiles and caches schema `id` (and the subjects it is registered under).
    pub async fn resolve(&self, id: u32) -> Result<Arc<Registered>, RegistryError> {
        if let Lookup::Found(found) = self.lookup(id) {
            return Ok(found);
        }
        let fetched = match get_schema_by_id(id, &self.settings).await {
            Ok(s) => s,
            Err(e) if e.to_string().contains("status 404") => {
                return Err(self.remember_missing(RegistryError::NotFound(id), id));
            }
            Err(e) => return Err(self.unavailable(crate::http::error_chain(&e))),
        };
        let format = match fetched.schema_type {
            SchemaType::Avro => Format::Avro,
            SchemaType::Json => Format::Json,
            other => {
                return Err(RegistryError::Compile {
                    id,
                    message: format!("schema type {other:?} is not supported"),
                })
            }
        };
        let kind = match Kind::compile(format, &fetched.schema) {
            Ok(kind) => kind,
            Err(message) => {
                return Err(self.remember_missing(RegistryError::Compile { id, message }, id))
            }
        };
        let versions: Vec<IdVersion> = self
            .get_json(&format!("/schemas/ids/{id}/versions"))
            .await?;
        let name = match &kind {
            Kind::Avro(schema) => crate::schema::avro::record_name(schema),
            // The text has just compiled as a JSON Schema, so it parses; only `title` is optional.
            Kind::Json(_) => serde_json::from_str::<serde_json::Value>(&fetched.schema)
                .ok()
                .and_then(|s| s.get("title").and_then(|t| t.as_str()).map(str::to_owned)),
        };
        let registered = Arc::new(Registered {
            id,
            subjects: versions.into_iter().map(|v| v.subject).collect(),
            format,
            name,
            kind,
        });
        write(&self.cache).insert(id, registered.clone());
        Ok(registered)
    }

    /// Registers `text` under `subject` (idempotent: an identical schema keeps its id) and
    /// returns the subject's version that holds it.
    pub async fn register(
        &self,
        subject: &str,
        format: Format,
        text: &str,
    ) -> Result<SubjectVersion, RegistryError> {
        let schema_type = match format {
            Format::Avro => SchemaType::Avro,
            Format::Json => SchemaType::Json,
        };
        let supplied = SuppliedSchema::new(Some(subject.to_owned()), schema_type, text.to_owned());
        post_schema(&self.settings, subject.to_owned(), supplied)
            .await
            .map_err(|e| RegistryError::Refused {
                what: format!("subject \"{subject}\""),
                message: e.to_string(),
            })?;
        self.find(subject, format, text)
            .await?
            .ok_or_else(|| RegistryError::Refused {
                what: format!("subject \"{subject}\""),
                message: "registered schema not found".into(),
            })
    }

    /// The version of `subject` holding exactly `text`, if registered.
    pub async fn find(
        &self,
        subject: &str,
        format: Format,
        text: &str,
    ) -> Result<Option<SubjectVersion>, RegistryError> {
        let request = self
            .http
            .post(format!("{}/subjects/{subject}", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&schema_body(format, text));
        self.optional_json(request).await
    }

    /// The latest version of `subject`, if any.
    pub async fn latest(&self, subject: &str) -> Result<Option<SubjectVersion>, RegistryError> {
        let request = self
            .http
            .get(format!("{}/subjects/{subject}/versions/latest", self.url));
        self.optional_json(request).await
    }

    /// Sends `request`; the JSON answer, or `None` on 404.
    async fn optional_json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, RegistryError> {
        let response = request
            .send()
            .await
            .map_err(|e| self.unavailable(crate::http::error_chain(&e)))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = response
            .error_for_status()
            .map_err(|e| self.unavailable(crate::http::error_chain(&e)))?;
        response
            .json()
            .await
            .map(Some)
            .map_err(|e| self.unavailable(crate::http::error_chain(&e)))
    }

    /// The compatibility level that applies to `subject` (its own or the global one).
    pub async fn compatibility_level(&self, subject: &str) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct Level {
            #[serde(rename = "compatibilityLevel", alias = "compatibility")]
            level: String,
        }
        let subject_level: Result<Level, _> = self
            .get_json(&format!("/config/{subject}?defaultToGlobal=true"))
            .await;
        match subject_level {
            Ok(l) => Ok(l.level),
            Err(_) => self.get_json::<Level>("/config").await.map(|l| l.level),
        }
    }

    /// Whether `text` is compatible with the latest version of `subject` under the subject's
    /// compatibility level; the registry's messages name what is incompatible.
    pub async fn check_compatible(
        &self,
        subject: &str,
        format: Format,
        text: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let response = self
            .http
            .post(format!(
                "{}/compatibility/subjects/{subject}/versions/latest?verbose=true",
                self.url
            ))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&schema_body(format, text))
            .send()
            .await
            .map_err(|e| self.unavailable(crate::http::error_chain(&e)))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let status = response.status();
        let text_body = response
            .text()
            .await
            .map_err(|e| self.unavailable(crate::http::error_chain(&e)))?;
        let answer: Compatibility =
            serde_json::from_str(&text_body).map_err(|_| RegistryError::Refused {
                what: format!("the compatibility check of subject \"{subject}\""),
                message: format!("{status}: {text_body}"),
            })?;
        if answer.is_compatible {
            Ok(Vec::new())
        } else if answer.messages.is_empty() {
            Ok(vec![
                "the registry reports it incompatible without details".to_owned()
            ])
        } else {
            Ok(answer.messages)
        }
    }

    /// Every subject in the registry.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        self.get_json("/subjects").await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, RegistryError> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| self.unavailable(crate::http::error_chain(&e)))?;
        response
            .json()
            .await
            .map_err(|e| self.unavailable(crate::http::error_chain(&e)))
    }

    /// Caches a permanent failure for `id`, so the event is dead-lettered with it.
    fn remember_missing(&self, error: RegistryError, id: u32) -> RegistryError {
        write(&self.missing).insert(id, error.to_string());
        error
    }

    fn unavailable(&self, message: String) -> RegistryError {
        RegistryError::Unavailable {
            url: self.url.clone(),
            message,
        }
    }
}

/// Reads a cache map. A panic elsewhere while it was held cannot leave the map half-updated (an
/// insert either happens or not), so a poisoned lock is used as it is.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes a cache map; see [`read`] on poisoning.
fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn schema_body(format: Format, text: &str) -> serde_json::Value {
    let mut body = serde_json::json!({ "schema": text });
    if format == Format::Json {
        body["schemaType"] = serde_json::Value::String("JSON".into());
    }
    body
}
