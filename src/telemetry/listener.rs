//! The telemetry listener: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and
//! the status page: `/` (one static HTML page, `status.html`) and `/status.json`.
//!
//! HTTP/1.1 with hyper; at most [`MAX_CONNECTIONS`] connections are served at once (further
//! ones wait to be accepted), and a client has [`HEADER_TIMEOUT`] to send its request head.
//!
//! With `[telemetry] token`, every path but the probes needs `Authorization: Bearer <token>`
//! and answers 401 without it. The token is kept only as its SHA-256 digest and compared in
//! constant time. The 401 answer to `/` carries the page itself, which holds no data: it asks
//! for the token, keeps it in the tab's `sessionStorage` and sends it as that header with each
//! `/status.json` request (behind a proxy that adds the header, it never asks).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{render, Metrics};
use crate::secret::Secret;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Longest a client may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The status page: static HTML and plain JavaScript polling `/status.json`.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// The page may run its own inline script and style and talk to this listener only.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address could not be bound (in use, or not an address of this host).
    #[error("cannot listen for telemetry on {addr} ([telemetry] listen): {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error (in the message, so it is not repeated as a cause).
        error: std::io::Error,
    },
}

/// Binds `addr` and serves `metrics` until `stop` is cancelled, requiring `token` (when
/// given) for everything but the probes; returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    token: Option<&Secret>,
    stop: CancellationToken,
) -> Result<SocketAddr, ListenError> {
    let bind_err = |error| ListenError::Bind { addr, error };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let guard = Arc::new(Guard {
        digest: token.map(|t| digest(t.expose().as_bytes())),
    });
    tracing::info!(
        addr = %local,
        role = metrics.role(),
        token = guard.digest.is_some(),
        "telemetry listener started"
    );
    if guard.digest.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            addr = %local,
            "the telemetry listener is reachable from other hosts without a token; set [telemetry] token"
        );
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "telemetry connection not accepted");
                    continue;
                }
            };
            let metrics = Arc::clone(&metrics);
            let guard = Arc::clone(&guard);
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let metrics = Arc::clone(&metrics);
                    let guard = Arc::clone(&guard);
                    async move { Ok::<_, Infallible>(respond(&req, &metrics, &guard)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "telemetry connection ended");
                        }
                    }
                    () = stop.cancelled() => {}
                }
                drop(permit);
            });
        }
        tracing::debug!(addr = %local, "telemetry listener stopped");
    });
    Ok(local)
}

/// What the listener requires of a request.
#[derive(Debug)]
struct Guard {
    /// SHA-256 of the token, when one is required.
    digest: Option<[u8; 32]>,
}

impl Guard {
    /// Whether `req` may read more than the probes: no token is required, or its
    /// `Authorization: Bearer` value is the token.
    fn admits(&self, req: &Request<Incoming>) -> bool {
        let Some(want) = &self.digest else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
        else {
            return false;
        };
        constant_time_eq(&digest(given.as_bytes()), want)
    }
}

/// The credentials of an `Authorization: Bearer <credentials>` value (the scheme is
/// case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
        .filter(|c| !c.is_empty())
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares two digests in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The status page, with `status` (200, or 401 when it must ask for the token).
fn page(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = text(status, "text/html; charset=utf-8", STATUS_PAGE.to_owned());
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Answers one request.
fn respond(req: &Request<Incoming>, metrics: &Metrics, guard: &Guard) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
    }
    let path = req.uri().path();
    if !matches!(path, "/healthz" | "/readyz") && !guard.admits(req) {
        let mut response = if path == "/" {
            page(StatusCode::UNAUTHORIZED)
        } else {
            text(
                StatusCode::UNAUTHORIZED,
                PLAIN,
                "this listener requires the header `Authorization: Bearer <token>` ([telemetry] token); /healthz and /readyz are open\n".into(),
            )
        };
        let headers = response.headers_mut();
        headers.insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"reflex telemetry\""),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    let mut response = match path {
        "/" => page(StatusCode::OK),
        "/status.json" => {
            // A struct of strings and numbers always serialises.
            let body = serde_json::to_string(&metrics.status()).unwrap_or_default();
            text(StatusCode::OK, "application/json", body)
        }
        "/metrics" => text(StatusCode::OK, METRICS_CONTENT_TYPE, render(metrics)),
        "/healthz" => match metrics.health() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        },
        "/readyz" => {
            let (ready, body) = ready_body(&metrics.ready_checks());
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; try /, /status.json, /metrics, /healthz or /readyz\n".into(),
        ),
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The `/readyz` body in the verbose form of Kubernetes' own probes (`[+]name ok`,
/// `[-]name failed: why`, then `ok` or `readyz check failed`), and whether every check passes.
fn ready_body(checks: &[super::ReadyCheck]) -> (bool, String) {
    let mut body = String::new();
    let mut ready = true;
    for check in checks {
        match &check.problem {
            None => body.push_str(&format!("[+]{} ok\n", check.name)),
            Some(why) => {
                ready = false;
                body.push_str(&format!("[-]{} failed: {why}\n", check.name));
            }
        }
    }
    body.push_str(if ready {
        "ok\n"
    } else {
        "readyz check failed\n"
    });
    (ready, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_lists_every_check_and_fails_if_one_fails() {
        let check = |name, problem: Option<&str>| super::super::ReadyCheck {
            name,
            problem: problem.map(str::to_owned),
        };
        let (ready, body) = ready_body(&[check("policy", None), check("producer", None)]);
        assert!(ready);
        assert_eq!(body, "[+]policy ok\n[+]producer ok\nok\n");
        let (ready, body) = ready_body(&[
            check("policy", None),
            check(
                "producer",
                Some("the producer has not reached the brokers yet"),
            ),
        ]);
        assert!(!ready);
        assert_eq!(
            body,
            "[+]policy ok\n[-]producer failed: the producer has not reached the brokers yet\nreadyz check failed\n"
        );
    }

    #[test]
    fn bearer_credentials_are_read_from_the_header_value() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn digests_compare_equal_only_for_the_same_token() {
        let token = digest(b"the-token");
        assert!(constant_time_eq(&digest(b"the-token"), &token));
        assert!(!constant_time_eq(&digest(b"the-token "), &token));
        assert!(!constant_time_eq(&digest(b""), &token));
    }
}
