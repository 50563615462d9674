//! Distributed tracing end to end: an actions worker exports its spans over OTLP to a real
//! Jaeger (built by `scripts/jaeger.sh` from the Go module proxy, started here on free ports
//! with in-memory storage), and the events' W3C trace context reaches the HTTP action service,
//! the enrichment lookup and the emitted events.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reflex::role::actions::{self as worker, RunOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::action_service::ActionService;
use crate::common::*;

/// The trace the order arrives in (CloudEvents distributed-tracing extension).
const ORDER_TRACE: &str = "5c1d7e0f3a2b4c6d8e9f0a1b2c3d4e5f";
/// The upstream span the order's span is a child of.
const ORDER_PARENT: &str = "a1b2c3d4e5f60718";
/// The trace the refund arrives in (Kafka `traceparent` header).
const REFUND_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// A free port on 127.0.0.1 (bound and released).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// The `jaeger` binary: `REFLEX_JAEGER`, or built (once) by `scripts/jaeger.sh`.
fn jaeger_bin() -> PathBuf {
    if let Ok(path) = std::env::var("REFLEX_JAEGER") {
        return PathBuf::from(path);
    }
    let output = Command::new(repo().join("scripts/jaeger.sh"))
        .output()
        .expect("run scripts/jaeger.sh");
    assert!(
        output.status.success(),
        "scripts/jaeger.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A Jaeger all-in-one with in-memory storage: OTLP/HTTP in, the query API out; killed when
/// dropped.
struct Jaeger {
    child: Child,
    otlp: SocketAddr,
    query: SocketAddr,
    dir: tempfile::TempDir,
}

impl Jaeger {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (otlp, query, query_grpc) = (free_addr(), free_addr(), free_addr());
        let config = dir.path().join("jaeger.yaml");
        std::fs::write(
            &config,
            format!(
                r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: "{query}"
    grpc:
      endpoint: "{query_grpc}"
receivers:
  otlp:
    protocols:
      http:
        endpoint: "{otlp}"
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
            ),
        )
        .expect("write jaeger.yaml");
        let log = std::fs::File::create(dir.path().join("jaeger.log")).expect("log file");
        let child = Command::new(jaeger_bin())
            .arg(format!("--config={}", config.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jaeger");
        let jaeger = Self {
            child,
            otlp,
            query,
            dir,
        };
        let ready = wait_for(Duration::from_secs(60), || async {
            jaeger.get("/api/services").await.map(|_| ())
        })
        .await;
        if ready.is_none() {
            panic!("Jaeger did not start; its log:\n{}", jaeger.log());
        }
        jaeger
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("jaeger.log")).unwrap_or_default()
    }

    /// `GET path` on the query API, when it answers 200 with JSON.
    async fn get(&self, path: &str) -> Option<Value> {
        let response = client()
            .get(format!("http://{}{path}", self.query))
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reflex::http::client_builder(&reflex::http::HttpTls::default())
        .expect("an HTTP client builder")
        .build()
        .expect("an HTTP client")
}

/// Polls `check` every 250 ms until it gives a value, for at most `limit`; `None` after that.
async fn wait_for<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A test environment whose orders are an HTTP action on `service`, traced to `otlp`.
fn traced_env(service: &ActionService, otlp: &str) -> TestEnv {
    let env = TestEnv::new(1);
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let emit = format!(
        "[actions.request_shipment]\nkind = \"emit\"\ntypes = [\"order.placed\"]\ntopic = \"{}\"\ntype = \"shipment.requested\"\n",
        env.shipments
    );
    assert!(text.contains(&emit), "the test config has the emit action");
    let http = format!(
        "[actions.request_shipment]\nkind = \"http\"\ntypes = [\"order.placed\"]\nurl = \"{}/orders/{{subject}}\"\n",
        service.url()
    );
    let off = "[telemetry]\nlisten = \"\"\n";
    assert!(
        text.contains(off),
        "the test config has a [telemetry] table"
    );
    let text = text
        .replace(&emit, &http)
        .replace(off, &format!("{off}otlp_endpoint = \"{otlp}\"\n"));
    std::fs::write(&env.config_path, text).expect("write config");
    env
}

async fn drain(env: &TestEnv) -> reflex::summary::Summary {
    tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(
            &env.config(),
            RunOptions {
                worker_id: "it-traces".into(),
                drain: true,
            },
            CancellationToken::new(),
        ),
    )
    .await
    .expect("worker drains within two minutes")
    .expect("worker runs")
}

/// The trace and parent span ids of a `traceparent` value.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {traceparent:?}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// A Jaeger span's tag value.
fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The span ids a Jaeger span is a child of.
fn parents(span: &Value) -> Vec<String> {
    span["references"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["refType"] == "CHILD_OF")
        .filter_map(|r| r["spanID"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_events_trace_reaches_jaeger_the_action_service_and_the_emitted_event() {
    let jaeger = Jaeger::start().await;
    let service = ActionService::start();
    service.set_lookup("/customers/c-1", json!({"tier": "gold"}));
    let env = traced_env(&service, &format!("http://{}", jaeger.otlp));
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    std::fs::write(
        &env.config_path,
        format!(
            "{text}\n[[enrichment.\"order.placed\".lookups]]\nname = \"customer\"\nurl = \"{}/customers/{{data.customer_id}}\"\n",
            service.url()
        ),
    )
    .expect("write config");
    env.create_topics().await;

    let mut order = order("o-traced", "/shop/web", 10.0);
    order["traceparent"] = json!(format!("00-{ORDER_TRACE}-{ORDER_PARENT}-01"));
    order["tracestate"] = json!("shop=checkout");
    let mut refund_record = Rec::json("r", &refund("r-traced", 20.0));
    refund_record.headers.push((
        "traceparent".into(),
        format!("00-{REFUND_TRACE}-b7ad6b7169203331-01").into_bytes(),
    ));
    produce(&env.events, &[Rec::json("o", &order), refund_record]).await;
    let summary = drain(&env).await;
    assert_eq!(summary.total(), 2, "{summary}");
    // The audit records name the traces their events arrived in.
    let audits = audits_by_key(&env.audit);
    assert_eq!(audits["o-traced"][0]["traceid"], ORDER_TRACE);
    assert_eq!(audits["r-traced"][0]["traceid"], REFUND_TRACE);

    // (a) The action service was called in the order's trace, by reflex's `action` span.
    let calls = service.requests_to("/orders/o-traced");
    assert_eq!(calls.len(), 1, "one call: {calls:?}");
    let sent = calls[0]
        .header("traceparent")
        .expect("the action call carries a traceparent");
    let (trace, action_span) = ids(sent);
    assert_eq!(trace, ORDER_TRACE, "{sent}");
    assert_ne!(action_span, ORDER_PARENT, "reflex's own span is the parent");
    assert_eq!(calls[0].header("tracestate"), Some("shop=checkout"));
    let lookups = service.requests_to("/customers/c-1");
    assert_eq!(lookups.len(), 1, "one lookup: {lookups:?}");
    let (lookup_trace, enrich_span) = ids(lookups[0]
        .header("traceparent")
        .expect("the lookup carries a traceparent"));
    assert_eq!(lookup_trace, ORDER_TRACE);

    // (b) Jaeger has the order's trace: the event's span under the upstream span, its stage
    // children, and the action span that called the service. Export is batched, so poll.
    let wanted = [
        "decode", "validate", "enrich", "policy", "action", "deliver",
    ];
    let path = format!("/api/traces/{ORDER_TRACE}");
    let found = wait_for(Duration::from_secs(60), || async {
        let answer = jaeger.get(&path).await?;
        let trace = answer["data"].as_array()?.first()?.clone();
        let spans = trace["spans"].as_array()?;
        let complete = wanted
            .iter()
            .all(|name| spans.iter().any(|s| s["operationName"] == *name))
            && spans
                .iter()
                .any(|s| s["operationName"] == "process order.placed");
        complete.then_some(trace)
    })
    .await;
    let Some(trace) = found else {
        panic!(
            "Jaeger never had all spans of trace {ORDER_TRACE}; last answer: {:?}\nJaeger's log:\n{}",
            jaeger.get(&path).await,
            jaeger.log()
        );
    };
    let spans = trace["spans"].as_array().expect("spans");
    let event = spans
        .iter()
        .find(|s| s["operationName"] == "process order.placed")
        .expect("the event's span");
    let event_id = event["spanID"].as_str().expect("span id").to_owned();
    assert_eq!(parents(event), [ORDER_PARENT], "{event}");
    for (key, value) in [
        ("messaging.system", json!("kafka")),
        ("messaging.destination.name", json!(env.events)),
        ("messaging.consumer.group.name", json!(env.group)),
        ("messaging.operation.type", json!("process")),
        ("messaging.kafka.offset", json!(0)),
        ("messaging.kafka.partition", json!(0)),
        ("messaging.destination.partition.id", json!("0")),
        ("cloudevents.event_id", json!("o-traced")),
        ("cloudevents.event_type", json!("order.placed")),
        ("reflex.outcome", json!("actioned")),
        ("span.kind", json!("consumer")),
    ] {
        assert_eq!(tag(event, key), Some(&value), "{key} of {event}");
    }
    for name in wanted {
        let stage = spans
            .iter()
            .find(|s| s["operationName"] == name)
            .unwrap_or_else(|| panic!("a {name} span"));
        assert_eq!(parents(stage), [event_id.as_str()], "{name}: {stage}");
    }
    let action = spans
        .iter()
        .find(|s| s["operationName"] == "action")
        .expect("the action span");
    assert_eq!(
        action["spanID"],
        json!(action_span),
        "the call's parent span"
    );
    let enrich = spans
        .iter()
        .find(|s| s["operationName"] == "enrich")
        .expect("the enrich span");
    assert_eq!(
        enrich["spanID"],
        json!(enrich_span),
        "the lookup's parent span"
    );
    let process = &trace["processes"][event["processID"].as_str().expect("process id")];
    assert_eq!(process["serviceName"], "reflex-actions", "{process}");
    // Nothing secret or from the event's data is an attribute.
    let text = trace.to_string();
    assert!(
        !text.contains("customer"),
        "event data in the trace: {text}"
    );

    // (c) The event the refund's emit action published continues the refund's trace, as an
    // extension attribute and as the record's header.
    let approved = read_all(&env.refunds_approved);
    assert_eq!(approved.len(), 1, "{approved:?}");
    let derived = approved[0].json();
    let traceparent = derived["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the emitted event has a traceparent: {derived}"));
    assert_eq!(ids(traceparent).0, REFUND_TRACE, "{derived}");
    assert_eq!(
        approved[0].headers.get("traceparent").map(String::as_str),
        Some(traceparent)
    );
    assert_eq!(derived["causationid"], "r-traced");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_does_not_hold_up_events() {
    let service = ActionService::start();
    // Nothing listens on a port just released.
    let env = traced_env(&service, &format!("http://{}", free_addr()));
    env.create_topics().await;
    let mut order = order("o-untraced", "/shop/web", 10.0);
    order["traceparent"] = json!(format!("00-{ORDER_TRACE}-{ORDER_PARENT}-01"));
    produce(&env.events, &[Rec::json("o", &order)]).await;
    let summary = drain(&env).await;
    assert_eq!(summary.total(), 1, "{summary}");
    let audits = audits_by_key(&env.audit);
    assert_eq!(audits["o-untraced"][0]["outcome"], "actioned");
    let calls = service.requests_to("/orders/o-untraced");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].header("traceparent").map(|t| ids(t).0),
        Some(ORDER_TRACE.to_owned())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lake_role_exports_a_span_per_segment_with_a_child_per_file() {
    use crate::lake::{LakeEnv, Store};
    let jaeger = Jaeger::start().await;
    let lake = LakeEnv::new(Store::Local, 1, "");
    let text = std::fs::read_to_string(&lake.env.config_path).expect("read config");
    let off = "[telemetry]\nlisten = \"\"\n";
    assert!(
        text.contains(off),
        "the test config has a [telemetry] table"
    );
    let otlp = format!("{off}otlp_endpoint = \"http://{}\"\n", jaeger.otlp);
    std::fs::write(&lake.env.config_path, text.replace(off, &otlp)).expect("write config");
    lake.env.create_topics().await;
    let records: Vec<Rec> = (0..3)
        .map(|i| {
            Rec::json(
                &format!("o{i}"),
                &order(&format!("lake-{i}"), "/shop/web", 5.0),
            )
        })
        .chain([Rec::json("r", &refund("lake-r", 20.0))])
        .collect();
    produce(&lake.env.events, &records).await;
    lake.drain("lake");

    // Export is batched and the worker exports what is queued when it stops; poll anyway.
    let path = "/api/traces?service=reflex-lake&limit=50";
    let segment_name = format!("lake write {}", lake.env.events);
    let found = wait_for(Duration::from_secs(60), || async {
        let answer = jaeger.get(path).await?;
        let traces = answer["data"].as_array()?.clone();
        traces.into_iter().find(|t| {
            t["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["operationName"] == *segment_name))
        })
    })
    .await;
    let Some(trace) = found else {
        panic!(
            "Jaeger never had the lake's span {segment_name}; last answer: {:?}\nJaeger's log:\n{}",
            jaeger.get(path).await,
            jaeger.log()
        );
    };
    let spans = trace["spans"].as_array().expect("spans");
    let segment = spans
        .iter()
        .find(|s| s["operationName"] == *segment_name)
        .expect("the segment's span");
    assert_eq!(
        tag(segment, "reflex.lake.rows"),
        Some(&json!(4)),
        "{segment}"
    );
    assert_eq!(tag(segment, "reflex.lake.first_offset"), Some(&json!(0)));
    assert_eq!(tag(segment, "reflex.lake.next_offset"), Some(&json!(4)));
    assert_eq!(
        tag(segment, "messaging.destination.partition.id"),
        Some(&json!("0"))
    );
    let files: Vec<&Value> = spans
        .iter()
        .filter(|s| s["operationName"] == "lake file")
        .collect();
    assert_eq!(
        tag(segment, "reflex.lake.files"),
        Some(&json!(files.len())),
        "a child per file"
    );
    let rows_of = |table: &str| -> i64 {
        files
            .iter()
            .filter(|f| tag(f, "reflex.lake.table") == Some(&json!(table)))
            .filter_map(|f| tag(f, "reflex.lake.rows").and_then(Value::as_i64))
            .sum()
    };
    assert_eq!(rows_of("order.placed"), 3);
    assert_eq!(rows_of("refund.requested"), 1);
    let segment_id = segment["spanID"].as_str().expect("span id");
    for file in &files {
        assert_eq!(parents(file), [segment_id], "{file}");
        assert!(tag(file, "reflex.lake.bytes")
            .and_then(Value::as_i64)
            .is_some_and(|b| b > 0));
        let key = tag(file, "reflex.lake.key")
            .and_then(Value::as_str)
            .expect("the file's key");
        assert!(
            std::path::Path::new(&lake.root).join(key).exists(),
            "{key} is in the lake"
        );
    }
    let process = &trace["processes"][segment["processID"].as_str().expect("process id")];
    assert_eq!(process["serviceName"], "reflex-lake", "{process}");
}
