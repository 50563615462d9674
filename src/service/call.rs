//! One call to a service: attempts through the breaker, classification of answers, retries.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tokio_util::sync::CancellationToken;

use super::{
    parse_retry_after, retryable_status, AttemptDone, AttemptResult, CallOutcome, CallReport,
    HttpAction, Services, CANCELLED, EXCERPT_BYTES,
};
use crate::event::CloudEvent;

/// One attempt's outcome and the wait the service asked for.
struct Attempt {
    outcome: CallOutcome,
    retry_after: Option<Duration>,
    result: AttemptResult,
}

impl Services {
    /// Calls `action` for `event` with `body` as JSON, retrying retryable outcomes with backoff
    /// until one succeeds, a permanent failure, `max_attempts`, or `cancel`.
    pub async fn perform(
        &self,
        action: &HttpAction,
        event: &CloudEvent,
        body: &serde_json::Value,
        cancel: &CancellationToken,
    ) -> CallReport {
        let started = Instant::now();
        let report = |outcome, attempts| CallReport {
            outcome,
            attempts,
            elapsed: started.elapsed(),
        };
        let url = match action.url.render(event) {
            Ok(url) => url,
            Err(e) => return report(CallOutcome::failed(e.to_string(), false), 0),
        };
        let headers = match request_headers(&action.headers, event) {
            Ok(h) => h,
            Err(e) => return report(CallOutcome::failed(e, false), 0),
        };
        // A JSON value always serialises.
        let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let max_attempts = action.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            if cancel.is_cancelled() {
                return report(cancelled(None), attempt);
            }
            attempt += 1;
            let request = self
                .client(&action.service)
                .request(action.method.clone(), &url)
                .timeout(action.timeout)
                .headers(headers.clone())
                .body(body.clone());
            let sent = Instant::now();
            let done = tokio::select! {
                biased;
                () = cancel.cancelled() => return report(cancelled(None), attempt),
                done = self.exchange(&action.service, request, action.timeout, super::ACTION_RESPONSE_BYTES) => done,
            };
            self.attempted(&AttemptDone {
                service: &action.service,
                attempt,
                result: done.result,
                elapsed: sent.elapsed(),
            });
            if !done.outcome.retryable() || attempt >= max_attempts {
                return report(done.outcome, attempt);
            }
            let delay = action
                .retry
                .delay(attempt, done.retry_after, fastrand::f64());
            tracing::debug!(
                service = %action.service,
                event_id = %event.id,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "retrying HTTP action"
            );
            tokio::select! {
                biased;
                () = cancel.cancelled() => return report(cancelled(Some(done.outcome)), attempt),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One GET of `url` on `service` through its breaker, for lookups: a 2xx JSON answer of at
    /// most `limit` bytes comes back as `Succeeded { response: Some(..) }`.
    pub async fn get(
        &self,
        service: &str,
        url: &str,
        timeout: Duration,
        limit: usize,
    ) -> CallOutcome {
        let mut headers = HeaderMap::new();
        crate::otel::inject(&mut headers);
        let request = self
            .client(service)
            .get(url)
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .headers(headers);
        self.exchange(service, request, timeout, limit)
            .await
            .outcome
    }

    /// Sends one request unless the breaker refuses it, and classifies the answer.
    async fn exchange(
        &self,
        service: &str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        limit: usize,
    ) -> Attempt {
        if let super::Admission::Refused { retry_in } = self.admit(service) {
            return Attempt {
                outcome: CallOutcome::Failed {
                    status: None,
                    error: format!(
                        "circuit breaker of service \"{service}\" is open (next trial in {} ms)",
                        retry_in.as_millis()
                    ),
                    retryable: true,
                    excerpt: String::new(),
                    circuit_open: true,
                },
                retry_after: None,
                result: AttemptResult::CircuitOpen,
            };
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let builder = e.is_builder();
                if !builder {
                    self.record(service, false);
                }
                let result = if e.is_timeout() {
                    AttemptResult::Timeout
                } else if e.is_connect() {
                    AttemptResult::Connect
                } else {
                    AttemptResult::Error
                };
                return Attempt {
                    outcome: CallOutcome::failed(describe(&e, timeout), !builder),
                    retry_after: None,
                    result,
                };
            }
        };
        let status = response.status().as_u16();
        if response.status().is_success() {
            self.record(service, true);
            let json = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"));
            let body = read_prefix(&mut response, limit).await;
            let response = match body {
                Some((bytes, true)) if json && !bytes.is_empty() => {
                    serde_json::from_slice(&bytes).ok()
                }
                _ => None,
            };
            return Attempt {
                outcome: CallOutcome::Succeeded { status, response },
                retry_after: None,
                result: AttemptResult::Status(status),
            };
        }
        let retryable = retryable_status(status);
        self.record(service, !retryable);
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .filter(|_| retryable);
        let excerpt = read_prefix(&mut response, EXCERPT_BYTES)
            .await
            .map(|(mut bytes, _)| {
                bytes.truncate(EXCERPT_BYTES);
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        Attempt {
            outcome: CallOutcome::Failed {
                status: Some(status),
                error: format!("service answered {}", response.status()),
                retryable,
                excerpt,
                circuit_open: false,
            },
            retry_after,
            result: AttemptResult::Status(status),
        }
    }
}

/// The action's headers plus the idempotency key and the CloudEvents attributes.
fn request_headers(base: &HeaderMap, event: &CloudEvent) -> Result<HeaderMap, String> {
    let mut headers = base.clone();
    let pairs = [
        ("idempotency-key", &event.id),
        ("ce-id", &event.id),
        ("ce-type", &event.ty),
        ("ce-source", &event.source),
        ("ce-specversion", &event.specversion),
    ];
    for (name, value) in pairs {
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("event attribute {value:?} cannot be sent as header {name}"))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The trace the call belongs to, when the event is traced.
    crate::otel::inject(&mut headers);
    Ok(headers)
}

/// Reads the body until `limit` bytes are exceeded; `true` when all of it was read. `None`
/// when reading failed before anything arrived.
async fn read_prefix(response: &mut reqwest::Response, limit: usize) -> Option<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk);
                if buf.len() > limit {
                    return Some((buf, false));
                }
            }
            Ok(None) => return Some((buf, true)),
            Err(_) if !buf.is_empty() => return Some((buf, false)),
            Err(_) => return None,
        }
    }
}

/// A transport error as a sentence, with its causes (a timeout names the limit).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", humantime::format_duration(timeout));
    }
    let mut text = if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The outcome of a call stopped by shutdown, keeping the failure it was waiting to retry.
fn cancelled(last: Option<CallOutcome>) -> CallOutcome {
    match last {
        Some(CallOutcome::Failed {
            status,
            error,
            excerpt,
            circuit_open,
            ..
        }) => CallOutcome::Failed {
            status,
            error: format!("{CANCELLED} while waiting to retry after: {error}"),
            retryable: true,
            excerpt,
            circuit_open,
        },
        _ => CallOutcome::failed(CANCELLED.to_owned(), true),
    }
}
