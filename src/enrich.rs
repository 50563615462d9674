//! Enrichment: lookups in supporting services whose answers join the policy input.
//!
//! Each event type has a list of [`Lookup`]s (`[enrichment."<type>"]` in the configuration).
//! [`Enricher::enrich`] runs an event's lookups concurrently: a GET of the URL rendered from the
//! event through [`Services`] (so through the breaker of the lookup's service, by default the
//! URL's `host:port`), with the lookup's timeout and one attempt. Answers are cached per lookup
//! by rendered URL for `ttl` (moka, at most `cache_size` entries; concurrent misses of one URL
//! make one request). A 404 is an answer, "not found": the value is `null` and it is cached too.
//! Anything else that is not a 2xx JSON answer is a failure, never cached, handled by the
//! lookup's `on_error`: `continue` omits the value, `deny` and `retry` set the verdict. The first
//! failed lookup (in configuration order) whose `on_error` is not `continue` decides it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::event::CloudEvent;
use crate::service::{CallOutcome, Services, UrlTemplate, CANCELLED};

/// Largest lookup answer accepted.
pub const LOOKUP_RESPONSE_BYTES: usize = 1024 * 1024;

/// What a failed lookup means for the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The event is denied (the policy is not asked).
    Deny,
    /// The value is left out; the policy decides without it.
    Continue,
    /// The event is processed again later.
    Retry,
}

impl OnError {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Continue => "continue",
            Self::Retry => "retry",
        }
    }
}

/// One lookup of an event type, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// Its name: the key of its answer in the enrichment.
    pub name: String,
    /// The service, which selects the circuit breaker.
    pub service: String,
    /// The URL, filled from the event.
    pub url: UrlTemplate,
    /// Limit of the request.
    pub timeout: Duration,
    /// How long an answer is reused; zero: never cached.
    pub ttl: Duration,
    /// Most answers cached; zero: never cached.
    pub cache_size: u64,
    /// What a failure means.
    pub on_error: OnError,
}

/// The lookups of each event type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnrichmentTable {
    by_type: BTreeMap<String, Vec<Lookup>>,
}

impl EnrichmentTable {
    /// Wraps a validated type → lookups map.
    pub fn new(by_type: BTreeMap<String, Vec<Lookup>>) -> Self {
        Self { by_type }
    }

    /// The lookups of `ty` (none for a type without enrichment).
    pub fn get(&self, ty: &str) -> &[Lookup] {
        self.by_type.get(ty).map_or(&[], Vec::as_slice)
    }

    /// Every (type, lookups) pair, sorted by type.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Lookup])> {
        self.by_type.iter().map(|(t, l)| (t.as_str(), l.as_slice()))
    }

    /// Whether no type has lookups.
    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }
}

/// Where a lookup's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupSource {
    /// A cached answer.
    Cache,
    /// The service, now.
    Service,
    /// The lookup failed and its `on_error` applied.
    Fallback,
}

impl LookupSource {
    /// The name in audit records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Service => "service",
            Self::Fallback => "fallback",
        }
    }
}

/// What one lookup did, for the audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LookupReport {
    /// The lookup's name.
    pub name: String,
    /// Where its value came from.
    pub source: LookupSource,
    /// The answer's status (also for a cached answer), if there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the lookups mean for the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum EnrichVerdict {
    /// Go on to the policy (lookups with `on_error = "continue"` may be missing).
    Complete,
    /// Deny the event: `lookup` failed and its `on_error` is `deny`.
    Deny {
        /// The lookup.
        lookup: String,
        /// Why it failed.
        error: String,
    },
    /// Process the event again later: `lookup` failed (or shutdown stopped it) and its
    /// `on_error` is `retry`.
    RetryLater {
        /// The lookup.
        lookup: String,
        /// Why it failed.
        error: String,
    },
}

/// The outcome of an event's lookups.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Enrichment {
    /// Lookup name → answer (`null` for "not found"); the policy input's `enrichment`.
    pub values: serde_json::Map<String, Value>,
    /// One report per lookup, in configuration order.
    pub lookups: Vec<LookupReport>,
    /// What they mean for the event.
    pub verdict: EnrichVerdict,
}

impl Default for Enrichment {
    fn default() -> Self {
        Self {
            values: serde_json::Map::new(),
            lookups: Vec::new(),
            verdict: EnrichVerdict::Complete,
        }
    }
}

/// A cached answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    value: Value,
}

/// Why a lookup failed.
#[derive(Debug)]
struct Failure {
    status: Option<u16>,
    error: String,
}

type Cache = moka::future::Cache<String, Arc<Answer>>;

/// Runs the lookups of events; cheap to clone, shared by every worker (and so are the caches).
#[derive(Debug, Clone)]
pub struct Enricher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    services: Services,
    /// Per type, each lookup with its cache (`None`: not cached).
    by_type: BTreeMap<String, Vec<(Lookup, Option<Cache>)>>,
}

impl Enricher {
    /// An enricher for `table`'s lookups with empty caches, calling through `services`.
    pub fn new(services: Services, table: &EnrichmentTable) -> Self {
        let by_type = table
            .iter()
            .map(|(ty, lookups)| {
                let with_caches = lookups
                    .iter()
                    .map(|l| {
                        let cache = (!l.ttl.is_zero() && l.cache_size > 0).then(|| {
                            moka::future::Cache::builder()
                                .max_capacity(l.cache_size)
                                .time_to_live(l.ttl)
                                .build()
                        });
                        (l.clone(), cache)
                    })
                    .collect();
                (ty.to_owned(), with_caches)
            })
            .collect();
        Self {
            inner: Arc::new(Inner { services, by_type }),
        }
    }

    /// Runs `event`'s lookups; a type without lookups is `Complete` at once. When `cancel`
    /// fires first, the verdict is `RetryLater`.
    pub async fn enrich(&self, event: &CloudEvent, cancel: &CancellationToken) -> Enrichment {
        let Some(lookups) = self.inner.by_type.get(&event.ty) else {
            return Enrichment::default();
        };
        let all = futures_util::future::join_all(
            lookups
                .iter()
                .map(|(lookup, cache)| self.lookup(lookup, cache.as_ref(), event)),
        );
        let results = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                let lookup = lookups.first().map(|(l, _)| l.name.clone()).unwrap_or_default();
                return Enrichment {
                    verdict: EnrichVerdict::RetryLater { lookup, error: CANCELLED.to_owned() },
                    ..Enrichment::default()
                };
            }
            results = all => results,
        };
        let mut enrichment = Enrichment::default();
        for ((lookup, _), result) in lookups.iter().zip(results) {
            match result {
                Ok((answer, source)) => {
                    enrichment
                        .values
                        .insert(lookup.name.clone(), answer.value.clone());
                    enrichment.lookups.push(LookupReport {
                        name: lookup.name.clone(),
                        source,
                        status: Some(answer.status),
                        error: None,
                    });
                }
                Err(failure) => {
                    tracing::debug!(lookup = %lookup.name, event_id = %event.id, error = %failure.error, "lookup failed");
                    let undecided = enrichment.verdict == EnrichVerdict::Complete;
                    let (name, error) = (lookup.name.clone(), failure.error.clone());
                    match lookup.on_error {
                        OnError::Deny if undecided => {
                            enrichment.verdict = EnrichVerdict::Deny {
                                lookup: name,
                                error,
                            }
                        }
                        OnError::Retry if undecided => {
                            enrichment.verdict = EnrichVerdict::RetryLater {
                                lookup: name,
                                error,
                            }
                        }
                        _ => {}
                    }
                    enrichment.lookups.push(LookupReport {
                        name: lookup.name.clone(),
                        source: LookupSource::Fallback,
                        status: failure.status,
                        error: Some(failure.error.clone()),
                    });
                }
            }
        }
        enrichment
    }

    /// One lookup: from the cache, or from the service (and then cached).
    async fn lookup(
        &self,
        lookup: &Lookup,
        cache: Option<&Cache>,
        event: &CloudEvent,
    ) -> Result<(Arc<Answer>, LookupSource), Arc<Failure>> {
        let url = lookup.url.render(event).map_err(|e| {
            Arc::new(Failure {
                status: None,
                error: e.to_string(),
            })
        })?;
        let Some(cache) = cache else {
            let answer = self.fetch(lookup, &url).await.map_err(Arc::new)?;
            return Ok((answer, LookupSource::Service));
        };
        let entry = cache
            .entry_by_ref(&url)
            .or_try_insert_with(self.fetch(lookup, &url))
            .await?;
        let source = if entry.is_fresh() {
            LookupSource::Service
        } else {
            LookupSource::Cache
        };
        Ok((entry.into_value(), source))
    }

    /// One GET; a 2xx JSON answer or a 404 (as `null`) is an answer.
    async fn fetch(&self, lookup: &Lookup, url: &str) -> Result<Arc<Answer>, Failure> {
        let outcome = self
            .inner
            .services
            .get(&lookup.service, url, lookup.timeout, LOOKUP_RESPONSE_BYTES)
            .await;
        match outcome {
            CallOutcome::Succeeded {
                status,
                response: Some(value),
            } => Ok(Arc::new(Answer { status, value })),
            CallOutcome::Succeeded {
                status,
                response: None,
            } => Err(Failure {
                status: Some(status),
                error: format!("answer is not JSON, or larger than {LOOKUP_RESPONSE_BYTES} bytes"),
            }),
            CallOutcome::Failed {
                status: Some(404), ..
            } => Ok(Arc::new(Answer {
                status: 404,
                value: Value::Null,
            })),
            CallOutcome::Failed { status, error, .. } => Err(Failure { status, error }),
        }
    }
}
