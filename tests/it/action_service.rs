//! A real HTTP action service for tests, the demo and the load benchmark.
//!
//! It runs on its own thread and tokio runtime, bound to `127.0.0.1` (port 0 in tests), records
//! every request (method, path, headers, JSON body, arrival time) and behaves as told, per path
//! prefix or globally (prefix `""`; the longest matching prefix wins): answer after a delay, fail
//! with a status N times and then succeed, answer 429 with `Retry-After`, or be down (close the
//! connection without answering). GETs of paths in the lookup map answer that JSON, other GETs
//! 404; other methods answer `200 {"accepted": true, "idempotency_key": ...}`.
//! `examples/action_service.rs` runs the same code as a standalone binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// One request as the service saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: HashMap<String, String>,
    /// The body, when it is JSON.
    pub body: Option<Value>,
    /// When its head arrived.
    pub at: Instant,
}

impl Recorded {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How the service answers the paths of one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Answer normally.
    Ok,
    /// Answer `status` (with `Retry-After: retry_after` when set) to the next `times`
    /// requests, then normally.
    Fail {
        /// The status.
        status: u16,
        /// How many requests fail.
        times: u32,
        /// `Retry-After` seconds sent with the failures.
        retry_after: Option<u64>,
    },
    /// Close the connection without answering.
    Down,
}

/// A behaviour: a delay before answering and a mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// Wait before answering (also before closing, when down).
    pub delay: Duration,
    /// What to answer.
    pub mode: Mode,
}

impl Behaviour {
    /// Answer normally, at once.
    pub fn ok() -> Self {
        Self {
            delay: Duration::ZERO,
            mode: Mode::Ok,
        }
    }

    /// Fail `times` requests with `status`, then answer normally.
    pub fn fail(status: u16, times: u32) -> Self {
        Self {
            delay: Duration::ZERO,
            mode: Mode::Fail {
                status,
                times,
                retry_after: None,
            },
        }
    }

    /// Answer `429` with `Retry-After: seconds` to `times` requests.
    pub fn throttle(times: u32, seconds: u64) -> Self {
        Self {
            delay: Duration::ZERO,
            mode: Mode::Fail {
                status: 429,
                times,
                retry_after: Some(seconds),
            },
        }
    }

    /// Close every connection without answering.
    pub fn down() -> Self {
        Self {
            delay: Duration::ZERO,
            mode: Mode::Down,
        }
    }

    /// The same with a delay before answering.
    pub fn delayed(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }
}

/// How the service starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// Port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Runtime worker threads.
    pub threads: usize,
    /// Most requests kept in full (counts are always kept).
    pub record_limit: usize,
    /// The global behaviour at start.
    pub behaviour: Behaviour,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            port: 0,
            threads: 1,
            record_limit: usize::MAX,
            behaviour: Behaviour::ok(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// (prefix, behaviour), longest prefix first.
    rules: Vec<(String, Behaviour)>,
    lookups: HashMap<String, Value>,
    requests: Vec<Recorded>,
    counts: HashMap<String, u64>,
    total: u64,
    record_limit: usize,
}

/// A running service; stopped when dropped.
pub struct ActionService {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ActionService {
    /// Starts a service on a free port, answering normally.
    pub fn start() -> Self {
        Self::start_with(Options::default()).expect("start the action service")
    }

    /// Starts a service with `options`.
    pub fn start_with(options: Options) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads.max(1))
            .enable_all()
            .build()?;
        // Bound here (not on the runtime) so a test's own runtime may start the service.
        let listener = std::net::TcpListener::bind(("127.0.0.1", options.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            rules: vec![(String::new(), options.behaviour)],
            record_limit: options.record_limit,
            ..State::default()
        }));
        let stop = CancellationToken::new();
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("action-service".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => serve(listener, state, stop).await,
                            Err(e) => eprintln!("action service cannot listen: {e}"),
                        }
                    })
                })?
        };
        Ok(Self {
            addr,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the behaviour of paths starting with `prefix` (`""`: every path without a longer
    /// matching prefix).
    pub fn set_behaviour(&self, prefix: &str, behaviour: Behaviour) {
        let mut state = self.lock();
        state.rules.retain(|(p, _)| p != prefix);
        state.rules.push((prefix.to_owned(), behaviour));
        state.rules.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    /// Serves `value` to GETs of `path` (path and query, exactly).
    pub fn set_lookup(&self, path: &str, value: Value) {
        self.lock().lookups.insert(path.to_owned(), value);
    }

    /// Every request recorded so far (up to the record limit), in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The requests of `path` (path and query, exactly).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Requests of `path` (path and query, exactly) so far.
    pub fn count(&self, path: &str) -> u64 {
        self.lock().counts.get(path).copied().unwrap_or(0)
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ActionService {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(req, state.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// The error that makes hyper close a connection without answering.
#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("service is down")
    }
}

impl std::error::Error for Down {}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, Down> {
    let at = Instant::now();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&body).ok();
    let key = headers.get("idempotency-key").cloned();
    let (behaviour, lookup) = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.total += 1;
        *s.counts.entry(path.clone()).or_default() += 1;
        if s.requests.len() < s.record_limit {
            s.requests.push(Recorded {
                method: method.clone(),
                path: path.clone(),
                headers,
                body,
                at,
            });
        }
        let lookup = s.lookups.get(&path).cloned();
        let rule = s
            .rules
            .iter_mut()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, b)| b);
        let behaviour = match rule {
            Some(b) => {
                let now = b.clone();
                if let Mode::Fail { times, .. } = &mut b.mode {
                    *times = times.saturating_sub(1);
                    if *times == 0 {
                        b.mode = Mode::Ok;
                    }
                }
                now
            }
            None => Behaviour::ok(),
        };
        (behaviour, lookup)
    };
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let (status, body, retry_after) = match behaviour.mode {
        Mode::Down => return Err(Down),
        Mode::Fail { times: 0, .. } | Mode::Ok => match (method.as_str(), lookup) {
            ("GET", Some(value)) => (200, value.to_string(), None),
            ("GET", None) => (404, json!({"error": "not found"}).to_string(), None),
            _ => (
                200,
                json!({"accepted": true, "idempotency_key": key}).to_string(),
                None,
            ),
        },
        Mode::Fail {
            status,
            retry_after,
            ..
        } => (status, format!("injected failure {status}"), retry_after),
    };
    let mut response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(
            "content-type",
            if status == 200 || status == 404 {
                "application/json"
            } else {
                "text/plain"
            },
        );
    if let Some(seconds) = retry_after {
        response = response.header("retry-after", seconds.to_string());
    }
    Ok(response
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}
