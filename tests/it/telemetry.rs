//! The telemetry listener of a running actions worker, end to end: a real Prometheus (built by
//! `scripts/prometheus.sh` from the Go module proxy) scrapes `/metrics` and the tests ask it
//! through its HTTP query API; `/readyz` follows the group assignment; the lag follows a worker
//! held up by a failing action service.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reflex::role::actions::{self as worker, RunOptions};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::action_service::{ActionService, Behaviour};
use crate::common::*;

/// A free port on 127.0.0.1 (bound and released; nothing else here takes ports at random).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Turns the test config's listener on at `addr`, with the lag probed every 200 ms.
fn listen_on(env: &TestEnv, addr: SocketAddr) {
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let off = "[telemetry]\nlisten = \"\"\n";
    assert!(text.contains(off), "the test config turns the listener off");
    let on = format!("[telemetry]\nlisten = \"{addr}\"\nlag_interval = \"200ms\"\n");
    std::fs::write(&env.config_path, text.replace(off, &on)).expect("write config");
}

/// An actions worker running until the returned token is cancelled.
fn start_worker(env: &TestEnv) -> (CancellationToken, JoinHandle<reflex::summary::Summary>) {
    let config = env.config();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let options = RunOptions {
            worker_id: "it-telemetry".into(),
            drain: false,
        };
        worker::run(&config, options, token)
            .await
            .expect("worker runs")
    });
    (stop, task)
}

async fn stop_worker(stop: CancellationToken, task: JoinHandle<reflex::summary::Summary>) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("worker stops within a minute")
        .expect("worker task");
}

/// An HTTP client; reflex's builder installs the TLS provider reqwest needs, whichever test
/// runs first.
fn client() -> reqwest::Client {
    reflex::http::client_builder(&reflex::http::HttpTls::default())
        .expect("an HTTP client builder")
        .build()
        .expect("an HTTP client")
}

/// `GET http://addr/path`: status and body.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let response = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Polls `check` every 200 ms until it gives a value, for at most `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `prometheus` binary: `REFLEX_PROMETHEUS`, or built (once) by `scripts/prometheus.sh`.
fn prometheus_bin() -> PathBuf {
    if let Ok(path) = std::env::var("REFLEX_PROMETHEUS") {
        return PathBuf::from(path);
    }
    let output = Command::new(repo().join("scripts/prometheus.sh"))
        .output()
        .expect("run scripts/prometheus.sh");
    assert!(
        output.status.success(),
        "scripts/prometheus.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A Prometheus server scraping one reflex worker every second; stopped when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn scraping(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: reflex\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            child,
            addr,
            _dir: dir,
        };
        wait_for(
            "Prometheus to be ready",
            Duration::from_secs(60),
            || async {
                get(addr, "/-/ready")
                    .await
                    .filter(|(status, _)| *status == 200)
            },
        )
        .await;
        prometheus
    }

    /// The instant vector of `query`: each series' labels and value.
    async fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let q = utf8_percent_encode(query, NON_ALPHANUMERIC);
        let Some((200, body)) = get(self.addr, &format!("/api/v1/query?query={q}")).await else {
            return Vec::new();
        };
        let answer: Value = serde_json::from_str(&body).expect("query answer is JSON");
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let value = s["value"][1].as_str()?.parse().ok()?;
                Some((s["metric"].clone(), value))
            })
            .collect()
    }

    /// How many series `query` selects, or Prometheus's answer when it refuses the query.
    async fn series(&self, query: &str) -> Result<usize, String> {
        let q = utf8_percent_encode(query, NON_ALPHANUMERIC);
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={q}"))
            .await
            .ok_or("Prometheus does not answer")?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || answer["status"] != "success" {
            return Err(body);
        }
        Ok(answer["data"]["result"].as_array().map_or(0, Vec::len))
    }

    /// The value of a query that selects one series, once it has one.
    async fn value(&self, query: &str) -> Option<f64> {
        match self.query(query).await.as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// Waits until `query` selects one series whose value satisfies `ok`; returns the value.
    async fn wait_value(&self, query: &str, ok: impl Fn(f64) -> bool) -> f64 {
        wait_for(query, Duration::from_secs(60), || async {
            self.value(query).await.filter(|v| ok(*v))
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_outcomes_dead_letters_stages_and_the_policy_revision() {
    let env = TestEnv::new(1);
    let addr = free_addr();
    listen_on(&env, addr);
    env.create_topics().await;
    // A known mix: 3 actioned, 1 denied, 4 schema-invalid, 2 undecodable, 1 of an unknown type.
    let mut records = Vec::new();
    for i in 0..3 {
        records.push(Rec::json(
            &format!("ok{i}"),
            &order(&format!("ok-{i}"), "/shop/web", 10.0),
        ));
    }
    records.push(Rec::json("deny", &order("denied-1", "/shop/intruder", 5.0)));
    for i in 0..4 {
        let mut invalid = order(&format!("invalid-{i}"), "/shop/web", 10.0);
        invalid["data"]["currency"] = json!("DOGE");
        records.push(Rec::json(&format!("bad{i}"), &invalid));
    }
    records.push(Rec::raw("garbage-1", b"\xff\x00garbage"));
    records.push(Rec::raw("garbage-2", b"not json"));
    let unknown = json!({"specversion": "1.0", "id": "unknown-1", "source": "/shop/web",
                         "type": "order.cancelled", "data": {}});
    records.push(Rec::json("unknown", &unknown));
    produce(&env.events, &records).await;

    let (stop, task) = start_worker(&env);
    let audits = wait_for_audits(&env.audit, records.len()).await;
    let revision = audits["ok-0"][0]["policy_revision"]
        .as_str()
        .expect("revision")
        .to_owned();
    let prometheus = Prometheus::scraping(addr).await;

    // Once Prometheus has scraped after the last audit record, every counter is final.
    let delivered = prometheus
        .wait_value(
            "reflex_stage_duration_seconds_count{stage=\"delivery\"}",
            |v| v == 11.0,
        )
        .await;
    assert_eq!(delivered, 11.0);
    assert_eq!(
        prometheus.value("up{job=\"reflex\"}").await,
        Some(1.0),
        "the scrape succeeds: the text format parses"
    );
    let by_outcome = prometheus
        .query("sum by (outcome) (reflex_events_processed_total)")
        .await;
    let mut outcomes: Vec<(String, f64)> = by_outcome
        .iter()
        .map(|(m, v)| (m["outcome"].as_str().unwrap_or("?").to_owned(), *v))
        .collect();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        outcomes,
        [
            ("actioned".to_owned(), 3.0),
            ("dead_lettered".to_owned(), 7.0),
            ("denied".to_owned(), 1.0),
            ("retrying".to_owned(), 0.0)
        ]
    );
    assert_eq!(
        prometheus
            .value("sum(reflex_action_results_total{result=\"ok\"})")
            .await,
        Some(3.0),
        "each actioned event ran its inline action once"
    );
    let dead_letter = |ty: &str, reason: &str| {
        format!("reflex_dead_letters_total{{type=\"{ty}\",reason=\"{reason}\"}}")
    };
    assert_eq!(
        prometheus
            .value(&dead_letter("order.placed", "schema_invalid"))
            .await,
        Some(4.0)
    );
    assert_eq!(
        prometheus
            .value(&dead_letter("(undecodable)", "undecodable"))
            .await,
        Some(2.0)
    );
    assert_eq!(
        prometheus
            .value(&dead_letter("(unknown)", "unknown_type"))
            .await,
        Some(1.0),
        "a type without a schema is counted under one bounded label"
    );
    assert_eq!(
        prometheus
            .value("reflex_events_processed_total{type=\"order.placed\",outcome=\"denied\"}")
            .await,
        Some(1.0)
    );
    // The policy ran for the 4 events it decided; its histogram has every one in +Inf, and
    // PromQL reads a quantile from the buckets.
    assert_eq!(
        prometheus
            .value("reflex_stage_duration_seconds_bucket{stage=\"policy\",le=\"+Inf\"}")
            .await,
        Some(4.0)
    );
    let median = prometheus
        .value("histogram_quantile(0.5, reflex_stage_duration_seconds_bucket{stage=\"policy\"})")
        .await
        .expect("a policy median");
    assert!(median > 0.0 && median <= 10.0, "{median}");
    let info = prometheus.query("reflex_policy_info").await;
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].0["revision"], revision.as_str());
    // The default engine, auto, decides the repository's policies compiled (they are proved safe).
    assert_eq!(info[0].0["engine"], "compiled");
    // Caught up: no lag on the events topic.
    let lag = format!(
        "reflex_consumer_lag_records{{topic=\"{}\",partition=\"0\"}}",
        env.events
    );
    assert_eq!(prometheus.wait_value(&lag, |v| v == 0.0).await, 0.0);
    assert_eq!(
        prometheus.value("reflex_in_flight_records").await,
        Some(0.0)
    );
    dashboard_queries_answer(&prometheus).await;
    drop(prometheus);
    stop_worker(stop, task).await;
}

/// Every expression of `deploy/grafana/reflex.json` is valid PromQL, and each one that reads
/// only the actions role's metrics selects series from an actions worker.
async fn dashboard_queries_answer(prometheus: &Prometheus) {
    let text =
        std::fs::read_to_string(repo().join("deploy/grafana/reflex.json")).expect("the dashboard");
    fn collect(value: &Value, exprs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(e)) => exprs.push(e.clone()),
                        _ => collect(v, exprs),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, exprs)),
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "{exprs:?}");
    for expr in &exprs {
        // Grafana's variables, as Grafana fills them in.
        let query = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        // Lake, breaker and HTTP action series do not exist in an actions worker that called no
        // service; dead letters exist only for the reasons seen.
        let expects_series = ![
            "reflex_lake_",
            "reflex_breaker_state",
            "reason=\"",
            "kind=\"http\"",
            "reflex_action_attempt",
        ]
        .iter()
        .any(|s| query.contains(s));
        wait_for(expr, Duration::from_secs(30), || async {
            match prometheus.series(&query).await {
                Err(refused) => panic!("Prometheus refuses {query}: {refused}"),
                Ok(0) if expects_series => None,
                Ok(n) => Some(n),
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_unavailable_until_partitions_are_assigned() {
    // The worker does not create the topics, so it cannot be assigned anything until the test
    // creates them; it looks for new topics every second.
    let env = TestEnv::new(1);
    let addr = free_addr();
    listen_on(&env, addr);
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let text = text
        .replace(
            "\"heartbeat.interval.ms\" = \"1000\"\n",
            "\"heartbeat.interval.ms\" = \"1000\"\n\"topic.metadata.refresh.interval.ms\" = \"1000\"\n",
        )
        .replace("partitions = 1\n", "partitions = 1\ncreate_missing = false\n");
    std::fs::write(&env.config_path, text).expect("write config");

    let (stop, task) = start_worker(&env);
    let health = wait_for("the listener", Duration::from_secs(30), || {
        get(addr, "/healthz")
    })
    .await;
    assert_eq!(health, (200, "ok\n".to_owned()));
    // Not ready while the policy set loads, then while nothing is assigned.
    let (status, body) = wait_for(
        "the policy set to load",
        Duration::from_secs(30),
        || async {
            get(addr, "/readyz")
                .await
                .filter(|(_, body)| !body.starts_with("[-]policy failed: no policy set loaded\n"))
        },
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        body.starts_with("[+]policy ok\n[-]group failed: no partitions assigned yet\n"),
        "{body}"
    );
    assert!(body.ends_with("\nreadyz check failed\n"), "{body}");
    // The audit topic is missing too, and no producer of the worker creates it: the producer
    // check names it.
    let missing = format!(
        "\n[-]producer failed: topic \"{}\" does not exist: create it (`reflex topics` creates the configured ones)\n",
        env.audit
    );
    let missing = missing.as_str();
    let (status, body) = wait_for(
        "the producer check to name the missing audit topic",
        Duration::from_secs(30),
        || async move {
            get(addr, "/readyz")
                .await
                .filter(|(_, body)| body.contains(missing))
        },
    )
    .await;
    assert_eq!(status, 503, "{body}");

    env.create_topics().await;
    let ready = wait_for("/readyz to turn ready", Duration::from_secs(60), || async {
        get(addr, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(ready.1, "[+]policy ok\n[+]group ok\n[+]producer ok\nok\n");
    let (_, metrics) = get(addr, "/metrics").await.expect("metrics");
    assert!(
        metrics.contains("\nreflex_assigned_partitions 2\n"),
        "the events topic and the retry topic, one partition each:\n{metrics}"
    );
    let (status, _) = get(addr, "/nothing-here").await.expect("answers");
    assert_eq!(status, 404);
    stop_worker(stop, task).await;
    assert!(
        get(addr, "/healthz").await.is_none(),
        "the listener stops with the worker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_rises_while_the_worker_is_held_up_and_returns_to_zero_after_it_drains() {
    // order.placed calls an HTTP service that fails until released; with one record in flight
    // the worker consumes nothing more while the first order is retried.
    let service = ActionService::start();
    service.set_behaviour("", Behaviour::fail(503, u32::MAX));
    let env = TestEnv::new(1);
    let addr = free_addr();
    listen_on(&env, addr);
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let emit = format!(
        "[actions.request_shipment]\nkind = \"emit\"\ntypes = [\"order.placed\"]\ntopic = \"{}\"\ntype = \"shipment.requested\"\n",
        env.shipments
    );
    let http = format!(
        "[actions.request_shipment]\nkind = \"http\"\ntypes = [\"order.placed\"]\nurl = \"{}/orders/{{subject}}\"\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 100000\n",
        service.url()
    );
    assert!(text.contains(&emit));
    let text = text.replace(&emit, &http).replace(
        "shutdown_timeout = \"20s\"\n",
        "shutdown_timeout = \"20s\"\nmax_in_flight = 1\n",
    ) + "\n[services]\nbreaker_failures = 1000000\n";
    std::fs::write(&env.config_path, text).expect("write config");
    env.create_topics().await;

    let (stop, task) = start_worker(&env);
    produce(
        &env.events,
        &[Rec::json("k0", &order("held-0", "/shop/web", 10.0))],
    )
    .await;
    wait_for(
        "the first order to reach the service",
        Duration::from_secs(60),
        || async { (service.total() > 0).then_some(()) },
    )
    .await;
    let more: Vec<Rec> = (1..=5)
        .map(|i| {
            Rec::json(
                &format!("k{i}"),
                &order(&format!("held-{i}"), "/shop/web", 10.0),
            )
        })
        .collect();
    produce(&env.events, &more).await;

    let prometheus = Prometheus::scraping(addr).await;
    let records = format!(
        "reflex_consumer_lag_records{{topic=\"{}\",partition=\"0\"}}",
        env.events
    );
    let seconds = format!(
        "reflex_consumer_lag_seconds{{topic=\"{}\",partition=\"0\"}}",
        env.events
    );
    assert_eq!(
        prometheus.wait_value(&records, |v| v == 5.0).await,
        5.0,
        "five orders wait behind the held one"
    );
    let first = prometheus.wait_value(&seconds, |v| v > 0.0).await;
    let later = prometheus.wait_value(&seconds, |v| v > first).await;
    assert!(later > first, "the oldest waiting record grows older");
    assert_eq!(
        prometheus.value("reflex_in_flight_records").await,
        Some(1.0)
    );
    // The service fails, but far fewer times in a row than open its breaker.
    let service_name = service.addr().to_string();
    let breaker = |state: &str| {
        format!("reflex_breaker_state{{service=\"{service_name}\",state=\"{state}\"}}")
    };
    assert_eq!(
        prometheus
            .wait_value(&breaker("closed"), |v| v == 1.0)
            .await,
        1.0
    );
    assert_eq!(prometheus.value(&breaker("open")).await, Some(0.0));
    let (_, body) = get(addr, "/status.json").await.expect("status.json");
    let status: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        status["breakers"],
        json!([{"service": service_name, "state": "closed"}])
    );
    assert_eq!(status["in_flight"], 1);

    service.set_behaviour("", Behaviour::ok());
    wait_for_audits(&env.audit, 6).await;
    assert_eq!(prometheus.wait_value(&records, |v| v == 0.0).await, 0.0);
    assert_eq!(prometheus.wait_value(&seconds, |v| v == 0.0).await, 0.0);
    assert_eq!(
        prometheus
            .value("reflex_events_processed_total{type=\"order.placed\",outcome=\"actioned\"}")
            .await,
        Some(6.0)
    );
    drop(prometheus);
    stop_worker(stop, task).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_http_attempt_is_counted_by_service_result_and_attempt_and_readyz_checks_the_producer(
) {
    // The service fails its first four requests with 503; one record in flight at a time, so
    // the first order takes five attempts (four failures, then 200) and the second one.
    let service = ActionService::start();
    service.set_behaviour("", Behaviour::fail(503, 4));
    let env = TestEnv::new(1);
    let addr = free_addr();
    listen_on(&env, addr);
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let emit = format!(
        "[actions.request_shipment]\nkind = \"emit\"\ntypes = [\"order.placed\"]\ntopic = \"{}\"\ntype = \"shipment.requested\"\n",
        env.shipments
    );
    let http = format!(
        "[actions.request_shipment]\nkind = \"http\"\ntypes = [\"order.placed\"]\nurl = \"{}/orders/{{subject}}\"\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\nmax_attempts = 10\n",
        service.url()
    );
    assert!(text.contains(&emit));
    let text = text.replace(&emit, &http).replace(
        "shutdown_timeout = \"20s\"\n",
        "shutdown_timeout = \"20s\"\nmax_in_flight = 1\n",
    ) + "\n[services]\nbreaker_failures = 1000000\n";
    std::fs::write(&env.config_path, text).expect("write config");
    env.create_topics().await;
    produce(
        &env.events,
        &[
            Rec::json("k1", &order("attempts-1", "/shop/web", 10.0)),
            Rec::json("k2", &order("attempts-2", "/shop/web", 10.0)),
        ],
    )
    .await;

    let (stop, task) = start_worker(&env);
    let audits = wait_for_audits(&env.audit, 2).await;
    assert_eq!(audits["attempts-1"][0]["action"]["attempts"], 5);
    assert_eq!(audits["attempts-2"][0]["action"]["attempts"], 1);
    assert_eq!(service.total(), 6);
    let (status, metrics) = get(addr, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    let name = service.addr().to_string();
    let attempts = |result: &str, attempt: &str| {
        sample(
            &metrics,
            &format!("reflex_action_attempts_total{{service=\"{name}\",result=\"{result}\",attempt=\"{attempt}\"}}"),
        )
    };
    assert_eq!(attempts("5xx", "1"), Some(1.0), "{metrics}");
    assert_eq!(attempts("5xx", "2"), Some(1.0));
    assert_eq!(attempts("5xx", "3"), Some(1.0));
    assert_eq!(attempts("5xx", "4+"), Some(1.0), "the fourth attempt");
    assert_eq!(attempts("2xx", "4+"), Some(1.0), "the fifth attempt");
    assert_eq!(attempts("2xx", "1"), Some(1.0), "the second order");
    assert_eq!(attempts("2xx", "2"), None);
    let duration = |suffix: &str, le: &str| {
        sample(
            &metrics,
            &format!("reflex_action_attempt_duration_seconds_{suffix}{{service=\"{name}\"{le}}}"),
        )
    };
    assert_eq!(duration("count", ""), Some(6.0));
    assert_eq!(duration("bucket", ",le=\"+Inf\""), Some(6.0));
    assert!(duration("sum", "").is_some_and(|s| s > 0.0));
    assert_eq!(
        sample(
            &metrics,
            "reflex_action_results_total{action=\"request_shipment\",kind=\"http\",result=\"200\"}"
        ),
        Some(2.0),
        "one result per action, whatever its attempts"
    );
    assert_eq!(sample(&metrics, "reflex_spans_started_total"), Some(0.0));

    // The producer has reached the brokers: /readyz lists it beside the group and the policy.
    let (status, body) = wait_for("the producer check", Duration::from_secs(30), || async {
        get(addr, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, "[+]policy ok\n[+]group ok\n[+]producer ok\nok\n");
    stop_worker(stop, task).await;
}

/// The value of the sample `series` (name and labels exactly as written) in a `/metrics` text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lake_role_counts_what_it_writes() {
    use crate::lake::{LakeEnv, Store};
    let lake = LakeEnv::new(Store::Local, 1, "max_file_age = \"1s\"");
    let addr = free_addr();
    listen_on(&lake.env, addr);
    lake.env.create_topics().await;
    let records: Vec<Rec> = (0..5)
        .map(|n| Rec::json("k", &refund(&format!("lake-{n}"), 5.0)))
        .collect();
    produce(&lake.env.events, &records).await;

    let config = lake.env.config();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let options = reflex::role::lake::LakeRunOptions { drain: false };
        reflex::role::lake::run(&config, options, token)
            .await
            .expect("lake worker runs")
    });
    let lag = format!(
        "reflex_consumer_lag_records{{topic=\"{}\",partition=\"0\"}}",
        lake.env.events
    );
    let table = |name: &str| format!("{name}{{table=\"refund.requested\"}}");
    let text = wait_for(
        "five rows written and no lag",
        Duration::from_secs(60),
        || async {
            let (_, text) = get(addr, "/metrics").await?;
            (sample(&text, &table("reflex_lake_rows_written_total")) == Some(5.0)
                && sample(&text, &lag) == Some(0.0))
            .then_some(text)
        },
    )
    .await;
    let files = sample(&text, &table("reflex_lake_files_written_total"));
    assert!(files.is_some_and(|n| n >= 1.0), "{text}");
    assert!(sample(&text, &table("reflex_lake_bytes_written_total")).is_some_and(|n| n > 0.0));
    assert!(sample(&text, &table("reflex_lake_last_file_age_seconds")).is_some());
    assert_eq!(
        sample(
            &text,
            "reflex_lake_rows_written_total{table=\"order.placed\"}"
        ),
        Some(0.0),
        "a table not written yet is exported at 0"
    );
    assert_eq!(sample(&text, "reflex_lake_buffered_bytes"), Some(0.0));
    assert_eq!(
        lake.count("SELECT count(*) FROM refund_requested"),
        5,
        "the rows counted are the rows DuckDB reads"
    );
    let (status, _) = get(addr, "/readyz").await.expect("readyz");
    assert_eq!(status, 200);
    // The status page reads the same counters.
    let (_, body) = get(addr, "/status.json").await.expect("status.json");
    let status: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["role"], "lake");
    assert_eq!(status["lake"]["rows"], 5);
    let refunds = status["lake"]["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["table"] == "refund.requested")
        .expect("the refund table is listed");
    assert_eq!(refunds["rows"], 5);
    assert_eq!(refunds["files"].as_f64(), files);
    let dom = chromium(&format!("http://{addr}/"), &["--dump-dom"]).await;
    assert_eq!(data_count(&dom, "lake-rows"), Some(5), "{dom}");
    assert!(dom.contains("data-table=\"refund.requested\""), "{dom}");
    let screenshot = target_dir().join("status-page-lake.png");
    chromium(
        &format!("http://{addr}/"),
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,900",
        ],
    )
    .await;
    assert!(screenshot.exists(), "{}", screenshot.display());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("lake worker stops within a minute")
        .expect("lake task");
}

/// The `chromium` binary: `REFLEX_CHROMIUM`, else Debian's `/usr/bin/chromium`.
fn chromium_bin() -> PathBuf {
    let path = std::env::var("REFLEX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "{} is missing: install Debian's chromium (apt-get install -y chromium) or set REFLEX_CHROMIUM",
        path.display()
    );
    path
}

/// Headless Chromium on `url` with a fresh profile, its scripts run for 5 s of virtual time;
/// `extra` adds `--dump-dom` or `--screenshot=…`. Returns its standard output.
async fn chromium(url: &str, extra: &[&str]) -> String {
    let url = url.to_owned();
    let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_chromium(&url, &extra))
        .await
        .expect("chromium task")
}

fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let output = Command::new(chromium_bin())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `data-count` of the element whose id is `id` in a dumped DOM.
fn data_count(dom: &str, id: &str) -> Option<u64> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let value = tag.split("data-count=\"").nth(1)?.split('"').next()?;
    value.parse().ok()
}

/// Where test artifacts are kept: the target directory of this test binary.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/debug/deps/it-…
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
}

/// A value of `data.customer_id`, which the repository's policy redacts from order.placed.
const REDACTED_VALUE: &str = "cust-REDACTED-4711";

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_in_chromium_shows_the_outcomes_and_no_redacted_value() {
    let env = TestEnv::new(1);
    let addr = free_addr();
    listen_on(&env, addr);
    env.create_topics().await;
    // 3 actioned, 1 denied, exactly 4 schema-invalid, 2 undecodable, 1 of an unknown type;
    // every order carries a customer id the policy's redaction rule hides.
    let with_customer = |mut event: Value| {
        event["data"]["customer_id"] = json!(REDACTED_VALUE);
        event
    };
    let mut records = Vec::new();
    for i in 0..3 {
        let ok = with_customer(order(&format!("page-ok-{i}"), "/shop/web", 10.0));
        records.push(Rec::json(&format!("ok{i}"), &ok));
    }
    let denied = with_customer(order("page-denied-1", "/shop/intruder", 5.0));
    records.push(Rec::json("deny", &denied));
    for i in 0..4 {
        let mut invalid = with_customer(order(&format!("page-invalid-{i}"), "/shop/web", 10.0));
        invalid["data"]["currency"] = json!("DOGE");
        records.push(Rec::json(&format!("bad{i}"), &invalid));
    }
    records.push(Rec::raw("garbage-1", b"\xff\x00garbage"));
    records.push(Rec::raw("garbage-2", b"not json"));
    let unknown = json!({"specversion": "1.0", "id": "page-unknown-1", "source": "/shop/web",
                         "type": "order.cancelled", "data": {"customer_id": REDACTED_VALUE}});
    records.push(Rec::json("unknown", &unknown));
    produce(&env.events, &records).await;

    let (stop, task) = start_worker(&env);
    wait_for_audits(&env.audit, records.len()).await;
    // The counters are final once the last audit record is written.
    let status: Value = wait_for("status.json", Duration::from_secs(60), || async {
        let (status, body) = get(addr, "/status.json").await?;
        assert_eq!(status, 200);
        assert!(
            !body.contains(REDACTED_VALUE),
            "status.json holds a redacted value: {body}"
        );
        let json: Value = serde_json::from_str(&body).expect("status.json is JSON");
        (json["recent"].as_array().map(Vec::len) == Some(8)).then_some(json)
    })
    .await;
    assert_eq!(status["role"], "actions");
    assert_eq!(status["group"], env.group.as_str());
    let recent = &status["recent"];
    assert_eq!(recent[0]["event_id"], "page-unknown-1", "newest first");
    let denial = recent
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["outcome"] == "denied")
        .expect("the denial is listed");
    assert_eq!(denial["event_id"], "page-denied-1");
    assert_eq!(denial["source"], "/shop/intruder");

    let url = format!("http://{addr}/");
    let dom = wait_for(
        "the page to show the outcomes",
        Duration::from_secs(60),
        || async {
            let dom = chromium(&url, &["--dump-dom"]).await;
            data_count(&dom, "outcome-actioned")
                .is_some()
                .then_some(dom)
        },
    )
    .await;
    let counts: Vec<(&str, Option<u64>)> = [
        "outcome-actioned",
        "outcome-denied",
        "outcome-dead_lettered",
        "dead-letter-schema_invalid",
        "dead-letter-undecodable",
        "dead-letter-unknown_type",
        "outcome-retrying",
    ]
    .into_iter()
    .map(|id| (id, data_count(&dom, id)))
    .collect();
    assert_eq!(
        counts,
        [
            ("outcome-actioned", Some(3)),
            ("outcome-denied", Some(1)),
            ("outcome-dead_lettered", Some(7)),
            ("dead-letter-schema_invalid", Some(4)),
            ("dead-letter-undecodable", Some(2)),
            ("dead-letter-unknown_type", Some(1)),
            ("outcome-retrying", Some(0)),
        ],
        "{dom}"
    );
    assert!(
        dom.contains("page-denied-1") && dom.contains("page-invalid-3"),
        "the page lists the denial and the dead letters: {dom}"
    );
    assert!(
        !dom.contains(REDACTED_VALUE),
        "the page shows a redacted value: {dom}"
    );
    let revision = status["policy"]["revision"].as_str().expect("a revision");
    assert!(dom.contains(revision), "the policy revision is shown");

    let screenshot = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,900",
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "a PNG at {}",
        screenshot.display()
    );
    stop_worker(stop, task).await;
}

/// A reverse proxy on a free port that forwards GETs to `target` with `Authorization: Bearer
/// <token>` added: how a browser reaches a listener that requires a token without typing it.
async fn header_injecting_proxy(target: SocketAddr, token: &str) -> SocketAddr {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let auth = format!("Bearer {token}");
    tokio::spawn(async move {
        let client = client();
        while let Ok((stream, _)) = listener.accept().await {
            let (client, auth) = (client.clone(), auth.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let (client, auth) = (client.clone(), auth.clone());
                    async move {
                        let url = format!("http://{target}{}", req.uri());
                        let answer = client
                            .get(url)
                            .header("authorization", auth)
                            .send()
                            .await
                            .expect("the listener answers");
                        let mut response =
                            hyper::Response::builder().status(answer.status().as_u16());
                        if let Some(ct) = answer.headers().get("content-type") {
                            response = response.header("content-type", ct.as_bytes());
                        }
                        let body = answer.bytes().await.expect("body");
                        Ok::<_, std::convert::Infallible>(
                            response.body(Full::new(body)).expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_guards_everything_but_the_probes() {
    const TOKEN: &str = "tok-3f9a2c71e4b8";
    let env = TestEnv::new(1);
    let addr = free_addr();
    listen_on(&env, addr);
    let dir = env.config_path.parent().expect("config dir");
    std::fs::write(dir.join("telemetry-token"), format!("{TOKEN}\n")).expect("write token");
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let text = text.replace(
        "[telemetry]\n",
        "[telemetry]\ntoken = \"file:telemetry-token\"\n",
    );
    std::fs::write(&env.config_path, text).expect("write config");
    env.create_topics().await;
    produce(
        &env.events,
        &[Rec::json("k", &order("tok-ok-1", "/shop/web", 10.0))],
    )
    .await;

    let (stop, task) = start_worker(&env);
    wait_for_audits(&env.audit, 1).await;
    let ready = wait_for(
        "/readyz without a token",
        Duration::from_secs(60),
        || async { get(addr, "/readyz").await.filter(|(s, _)| *s == 200) },
    )
    .await;
    assert_eq!(ready.1, "[+]policy ok\n[+]group ok\n[+]producer ok\nok\n");
    assert_eq!(get(addr, "/healthz").await.map(|r| r.0), Some(200));

    let client = client();
    let fetch = |path: &str, auth: Option<&str>| {
        let mut request = client.get(format!("http://{addr}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        async move {
            let response = request.send().await.expect("the listener answers");
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            (status, challenge, response.text().await.expect("body"))
        }
    };
    let right = format!("Bearer {TOKEN}");
    for path in ["/", "/status.json", "/metrics", "/nothing-here"] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some(TOKEN),
            Some("Basic dG9rOnRvaw=="),
        ] {
            let (status, challenge, body) = fetch(path, auth).await;
            assert_eq!(status, 401, "{path} with {auth:?}");
            assert_eq!(
                challenge.as_deref(),
                Some("Bearer realm=\"reflex telemetry\"")
            );
            assert!(!body.contains(TOKEN), "{path}: the answer holds the token");
        }
    }
    let (_, _, page) = fetch("/", None).await;
    assert!(
        page.contains("id=\"token-form\"") && !page.contains("outcome-actioned\" data-count"),
        "the 401 page asks for the token and holds no data"
    );
    let (status, _, body) = fetch("/status.json", Some(&right)).await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["types"][0]["actioned"], 1);
    let (status, _, metrics) = fetch("/metrics", Some(&right)).await;
    assert_eq!(status, 200);
    assert!(metrics
        .contains("reflex_events_processed_total{type=\"order.placed\",outcome=\"actioned\"} 1"));
    assert_eq!(fetch("/", Some(&right)).await.0, 200);
    assert_eq!(fetch("/nothing-here", Some(&right)).await.0, 404);

    // A browser behind a proxy that adds the header sees the page work, with no prompt.
    let proxy = header_injecting_proxy(addr, TOKEN).await;
    let dom = chromium(&format!("http://{proxy}/"), &["--dump-dom"]).await;
    assert_eq!(data_count(&dom, "outcome-actioned"), Some(1), "{dom}");
    assert!(
        dom.contains("id=\"token-form\" hidden"),
        "the token form stays hidden: {dom}"
    );
    // Without the proxy, the page asks for the token instead of showing data.
    let dom = chromium(&format!("http://{addr}/"), &["--dump-dom"]).await;
    assert_eq!(data_count(&dom, "outcome-actioned"), None, "{dom}");
    assert!(dom.contains("a token is required"), "{dom}");
    stop_worker(stop, task).await;
}

/// The `/metrics` sample `series`, once the worker serves it.
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    wait_for(series, Duration::from_secs(60), || async {
        let (_, metrics) = get(addr, "/metrics").await?;
        sample(&metrics, series)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn each_policy_set_is_warmed_before_it_decides_and_the_first_record_of_each_type_is_decided_as_the_policy_says(
) {
    let policies = copy_policies();
    let env = TestEnv::new(1);
    env.use_policies(policies.path(), Duration::from_millis(100));
    let addr = free_addr();
    listen_on(&env, addr);
    env.create_topics().await;
    let config = env.config();
    let first = config.policy.revision().to_owned();
    let types = config.actions.iter().count();

    let (stop, task) = start_worker(&env);
    // The worker reports the warm-up of the set it starts with: every type with an action.
    let warmed = metric(
        addr,
        &format!("reflex_policy_warmed_types{{revision=\"{first}\"}}"),
    )
    .await;
    assert_eq!(warmed, types as f64);
    assert!(
        metric(
            addr,
            &format!("reflex_policy_warm_up_seconds{{revision=\"{first}\"}}")
        )
        .await
            >= 0.0
    );

    // The first record of each type is decided as the policy says, not as a warm-up input was.
    let records = vec![
        Rec::json("first-order", &order("first-order", "/shop/web", 99.5)),
        Rec::json("first-refund", &refund("first-refund", 300.0)),
        Rec::json(
            "first-intruder",
            &order("first-intruder", "/shop/intruder", 5.0),
        ),
    ];
    produce(&env.events, &records).await;
    let audits = wait_for_audits(&env.audit, records.len()).await;
    let decided = |id: &str| {
        let audit = &audits[id][0];
        assert!(
            audit["decision"].get("failure").is_none(),
            "{id} decided without failing closed: {audit}"
        );
        (
            audit["outcome"].as_str().unwrap_or_default().to_owned(),
            audit["decision"]["reasons"].clone(),
            audit["policy_revision"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    assert_eq!(
        decided("first-order"),
        ("actioned".to_owned(), json!([]), first.clone())
    );
    assert_eq!(
        decided("first-refund"),
        ("actioned".to_owned(), json!([]), first.clone())
    );
    assert_eq!(
        decided("first-intruder"),
        (
            "denied".to_owned(),
            json!(["source is not allowed to publish this event type"]),
            first.clone()
        )
    );

    // A reloaded set is warmed too before it decides, and then decides by its own rules.
    let limits = policies.path().join("data/limits.json");
    let mut data: Value =
        serde_json::from_str(&std::fs::read_to_string(&limits).expect("read limits"))
            .expect("limits are JSON");
    data["limits"]["refund_auto_approve"]["EUR"] = json!(100);
    std::fs::write(&limits, data.to_string()).expect("write limits");
    let second = reflex::policy::files::revision(policies.path()).expect("revision");
    assert_ne!(first, second);
    let warmed = metric(
        addr,
        &format!("reflex_policy_warmed_types{{revision=\"{second}\"}}"),
    )
    .await;
    assert_eq!(warmed, types as f64);
    // The reloaded set takes over between two records once it is warm.
    wait_for(
        "the reloaded set to decide",
        Duration::from_secs(60),
        || async {
            let (_, metrics) = get(addr, "/metrics").await?;
            metrics
                .contains(&format!("reflex_policy_info{{revision=\"{second}\""))
                .then_some(())
        },
    )
    .await;
    let after = [Rec::json("later-refund", &refund("later-refund", 300.0))];
    produce(&env.events, &after).await;
    let audits = wait_for_audits(&env.audit, records.len() + 1).await;
    let audit = &audits["later-refund"][0];
    assert_eq!(audit["outcome"], "denied", "{audit}");
    assert_eq!(
        audit["decision"]["reasons"],
        json!(["refund above the automatic approval limit"]),
        "{audit}"
    );
    assert_eq!(audit["policy_revision"], second.as_str(), "{audit}");
    stop_worker(stop, task).await;
}
