//! Calling HTTP services safely: HTTP actions and the lookups of enrichment.
//!
//! [`Services`] holds one HTTP client and one circuit breaker per service name (by default a
//! URL's `host:port`, so an action and a lookup on the same service share a breaker).
//! [`Services::perform`] calls an [`HttpAction`] for one event: the URL rendered from the event,
//! the body as JSON, the event id as `Idempotency-Key` on every attempt, retries with
//! exponential backoff and full jitter for retryable outcomes only, `Retry-After` honoured up to
//! [`RETRY_AFTER_CAP_FACTOR`] × `max_backoff`, and an early stop when the shutdown token fires.
//! Redirects are not followed: an action service answers for itself.

mod breaker;
mod call;
mod retry;
mod template;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde::{Serialize, Serializer};
use serde_json::Value;

pub use breaker::{Admission, Breaker, BreakerSettings, BreakerState};
pub use retry::{parse_retry_after, retryable_status, RetryPolicy, RETRY_AFTER_CAP_FACTOR};
pub use template::{RenderError, TemplateError, UrlTemplate};

/// The error text of a call stopped by the shutdown token (see [`CallOutcome::is_cancelled`]).
pub const CANCELLED: &str = "cancelled by shutdown";

/// Bytes of a failed answer's body kept in [`CallOutcome::Failed::excerpt`].
pub const EXCERPT_BYTES: usize = 512;

/// Largest JSON answer of an action kept in [`CallOutcome::Succeeded::response`].
pub const ACTION_RESPONSE_BYTES: usize = 64 * 1024;

/// `[services]`: settings shared by every service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServicesConfig {
    /// When each service's breaker opens and for how long.
    pub breaker: BreakerSettings,
    /// Private CA and client certificate for HTTPS services.
    pub tls: crate::http::HttpTls,
    /// TLS settings of single services, by service name, in place of `tls`.
    pub service_tls: std::collections::BTreeMap<String, crate::http::HttpTls>,
}

/// Why the HTTP client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// reqwest refused the settings.
    #[error("cannot build the HTTP client for services: {0}")]
    Client(#[source] reqwest::Error),
    /// The `[services.tls]` files are not usable.
    #[error("cannot build the HTTP client for services: {0}")]
    Tls(#[source] crate::http::TlsError),
}

/// One HTTP action, validated: where and how to call, and how patiently.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAction {
    /// Name of the service, which selects the circuit breaker.
    pub service: String,
    /// The request method.
    pub method: Method,
    /// The URL, filled from each event.
    pub url: UrlTemplate,
    /// Extra request headers; values read from the environment are marked sensitive, so they
    /// never appear in `Debug` output.
    pub headers: HeaderMap,
    /// Limit of one attempt, connection to last byte.
    pub timeout: Duration,
    /// Attempts and backoff.
    pub retry: RetryPolicy,
}

/// What calling a service came to, after every attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallReport {
    /// The last attempt's outcome.
    pub outcome: CallOutcome,
    /// Attempts made, including those refused by an open breaker (0 when the URL could not
    /// be rendered or the call was cancelled before its first attempt).
    pub attempts: u32,
    /// From the call to its outcome, backoff included; serialised in microseconds.
    #[serde(rename = "elapsed_us", serialize_with = "micros")]
    pub elapsed: Duration,
}

impl CallReport {
    /// Whether the service accepted the call.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, CallOutcome::Succeeded { .. })
    }
}

/// The outcome of a call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CallOutcome {
    /// A 2xx answer.
    Succeeded {
        /// Its status.
        status: u16,
        /// Its body, when it is JSON and small.
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<Value>,
    },
    /// No 2xx answer.
    Failed {
        /// The last answer's status, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// What went wrong.
        error: String,
        /// Whether trying again later might succeed (connection errors, timeouts, 408, 429,
        /// 5xx, an open breaker, a shutdown); false for other 4xx and unrenderable URLs.
        retryable: bool,
        /// The start of the last answer's body (lossy UTF-8, at most [`EXCERPT_BYTES`]).
        #[serde(skip_serializing_if = "String::is_empty")]
        excerpt: String,
        /// Whether the last attempt was refused by the service's open circuit breaker.
        circuit_open: bool,
    },
}

impl CallOutcome {
    /// A failure without an answer.
    pub fn failed(error: String, retryable: bool) -> Self {
        Self::Failed {
            status: None,
            error,
            retryable,
            excerpt: String::new(),
            circuit_open: false,
        }
    }

    /// Whether the shutdown token stopped the call (the action may or may not have happened;
    /// the event must be processed again).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Failed { error, .. } if error.starts_with(CANCELLED))
    }

    /// Whether trying again later might succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Failed {
                retryable: true,
                ..
            }
        )
    }
}

/// What one HTTP attempt of an action came to, as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttemptResult {
    /// The service answered with this status.
    Status(u16),
    /// No answer within the action's timeout.
    Timeout,
    /// The connection could not be opened.
    Connect,
    /// The service's open circuit breaker refused the attempt (nothing was sent).
    CircuitOpen,
    /// Any other transport failure.
    Error,
}

impl AttemptResult {
    /// The label: the status class (`2xx` … `5xx`) or the error kind (`timeout`, `connect`,
    /// `circuit_open`, `error`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Status(s) if s < 200 => "1xx",
            Self::Status(s) if s < 300 => "2xx",
            Self::Status(s) if s < 400 => "3xx",
            Self::Status(s) if s < 500 => "4xx",
            Self::Status(_) => "5xx",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::CircuitOpen => "circuit_open",
            Self::Error => "error",
        }
    }
}

/// One HTTP attempt of an action, as [`Services::perform`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct AttemptDone<'a> {
    /// The service called.
    pub service: &'a str,
    /// Which attempt of the call it was, from 1.
    pub attempt: u32,
    /// What it came to.
    pub result: AttemptResult,
    /// From sending the request to the answer's head (or the failure).
    pub elapsed: Duration,
}

/// Told of every HTTP attempt of an action (see [`Services::observe_attempts`]).
pub type AttemptObserver = Arc<dyn Fn(&AttemptDone<'_>) + Send + Sync>;

fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The HTTP client and the circuit breakers, shared by every worker; cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// Clients of the services with TLS settings of their own.
    service_clients: HashMap<String, reqwest::Client>,
    config: ServicesConfig,
    breakers: Mutex<HashMap<String, Breaker>>,
    observer: OnceLock<AttemptObserver>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("breakers", &self.breakers)
            .field("observed", &self.observer.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Services {
    /// One client (no redirects, pooled connections), one more per service with TLS settings
    /// of its own, and no breaker yet.
    pub fn new(config: ServicesConfig) -> Result<Self, ServiceError> {
        let client = Self::client_with(&config.tls)?;
        let service_clients = config
            .service_tls
            .iter()
            .map(|(service, tls)| Ok((service.clone(), Self::client_with(tls)?)))
            .collect::<Result<_, ServiceError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                service_clients,
                config,
                breakers: Mutex::default(),
                observer: OnceLock::new(),
            }),
        })
    }

    /// Tells `observer` of every HTTP attempt of an action from now on (the first call wins).
    pub fn observe_attempts(&self, observer: AttemptObserver) {
        let _ = self.inner.observer.set(observer);
    }

    /// Reports one attempt to the observer, if there is one.
    fn attempted(&self, done: &AttemptDone<'_>) {
        if let Some(observer) = self.inner.observer.get() {
            observer(done);
        }
    }

    fn client_with(tls: &crate::http::HttpTls) -> Result<reqwest::Client, ServiceError> {
        crate::http::client_builder(tls)
            .map_err(ServiceError::Tls)?
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reflex/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ServiceError::Client)
    }

    /// The client that calls `service`: its own when it has TLS settings of its own.
    fn client(&self, service: &str) -> &reqwest::Client {
        self.inner
            .service_clients
            .get(service)
            .unwrap_or(&self.inner.client)
    }

    /// The settings.
    pub fn config(&self) -> &ServicesConfig {
        &self.inner.config
    }

    /// The state of `service`'s breaker now (closed for a service never called).
    pub fn breaker_state(&self, service: &str) -> BreakerState {
        self.breakers()
            .get(service)
            .map_or(BreakerState::Closed, |b| b.state(Instant::now()))
    }

    /// The state of every breaker now, by service name: the services called so far.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let now = Instant::now();
        let mut states: Vec<(String, BreakerState)> = self
            .breakers()
            .iter()
            .map(|(name, b)| (name.clone(), b.state(now)))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        states
    }

    /// Asks `service`'s breaker for a call now.
    fn admit(&self, service: &str) -> Admission {
        let mut breakers = self.breakers();
        if let Some(b) = breakers.get_mut(service) {
            return b.admit(Instant::now());
        }
        breakers
            .entry(service.to_owned())
            .or_insert_with(|| Breaker::new(self.inner.config.breaker))
            .admit(Instant::now())
    }

    /// Tells `service`'s breaker how an admitted call went.
    fn record(&self, service: &str, ok: bool) {
        let now = Instant::now();
        let (before, after) = match self.breakers().get_mut(service) {
            Some(b) => {
                let before = b.state(now);
                b.record(ok, now);
                (before, b.state(now))
            }
            None => return,
        };
        match (before, after) {
            (BreakerState::Open, _) | (_, BreakerState::HalfOpen) => {}
            // A failed trial: the service is still down, which the opening said once.
            (BreakerState::HalfOpen, BreakerState::Open) => {
                tracing::debug!(service, "circuit breaker trial failed: open again")
            }
            (BreakerState::Closed, BreakerState::Open) => tracing::warn!(
                service,
                open_for_ms = self.inner.config.breaker.open_for.as_millis() as u64,
                "circuit breaker opened: calls fail fast"
            ),
            (BreakerState::HalfOpen, BreakerState::Closed) => {
                tracing::info!(service, "circuit breaker closed: service answers again");
            }
            (BreakerState::Closed, BreakerState::Closed) => {}
        }
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        // The map stays consistent even if a holder panicked: every update is one assignment.
        self.inner
            .breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
