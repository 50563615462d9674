//! The analytics role against the real broker: its findings equal a batch recomputation of
//! the same events, absence fires exactly for the payments never settled in time, late events
//! are counted and left out, and a worker killed with SIGKILL several times mid-stream emits,
//! once restarted, every finding with the same id and values.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// Minutes after 2026-03-01T00:00:00Z as RFC 3339.
pub fn at(minute: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").expect("base");
    (base + chrono::Duration::minutes(minute))
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

const ANALYSES: &str = r#"
[refunds_per_order]
types = ["refund.requested"]
group_by = ["data.order_id"]
keyed_by_group = true
window = { tumbling = "1h" }
allowed_lateness = "10m"
aggregates = { refunds = "count", total = "sum(data.amount)", smallest = "min(data.amount)", largest = "max(data.amount)" }
condition = "refunds >= 1"
emit = "reflex.analytics.refunds_high"

[payment_not_settled]
absence = { first = "payment.authorized", then = "payment.settled", correlate = "data.payment_id", within = "30m" }
keyed_by_group = true
allowed_lateness = "10m"
emit = "reflex.analytics.payment_not_settled"
"#;

/// A test's configuration with the analytics role's topics and the analyses above.
struct AnalyticsEnv {
    env: TestEnv,
    findings: String,
    _analyses: tempfile::TempDir,
}

impl AnalyticsEnv {
    fn new(partitions: i32) -> Self {
        let env = TestEnv::new(partitions);
        let (findings, analyses) = add_analytics(&env);
        Self {
            env,
            findings,
            _analyses: analyses,
        }
    }
}

/// Adds the analytics role to `env`'s configuration: the analyses above in a new directory
/// and the findings' topic among the event topics. Returns that topic and the directory.
fn add_analytics(env: &TestEnv) -> (String, tempfile::TempDir) {
    add_analyses(env, ANALYSES)
}

/// [`add_analytics`] with other analyses.
pub fn add_analyses(env: &TestEnv, declared: &str) -> (String, tempfile::TempDir) {
    let analyses = tempfile::tempdir().expect("tempdir");
    std::fs::write(analyses.path().join("test.toml"), declared).expect("write analyses");
    let findings = format!("{}.findings", env.events);
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let text = text.replace(
        &format!("events = [\"{}\"]", env.events),
        &format!("events = [\"{}\", \"{findings}\"]", env.events),
    );
    let text = format!(
        "{text}\n[analytics]\ndir = \"{dir}\"\ngroup_id = \"{group}.analytics\"\ntopic = \"{findings}\"\nchangelog_topic = \"{findings}.changelog\"\nidle_timeout = \"1s\"\ncheckpoint_interval = \"300ms\"\ndead_letter_late = true\n",
        dir = analyses.path().display(),
        group = env.group,
    );
    std::fs::write(&env.config_path, text).expect("write config");
    (findings, analyses)
}

/// One refund request of `order` at `minute`.
fn refund_at(n: usize, order: usize, minute: i64, amount: f64) -> Value {
    json!({
        "specversion": "1.0", "id": format!("r-{n}"), "source": "/support/desk",
        "type": "refund.requested", "time": at(minute),
        "data": {"refund_id": format!("ref-{n}"), "order_id": format!("ord-{order}"),
                 "amount": amount, "currency": "EUR", "reason": "damaged"}
    })
}

fn payment(ty: &str, n: usize, minute: i64) -> Value {
    let data = if ty == "payment.authorized" {
        json!({"payment_id": format!("pay-{n}"), "order_id": format!("ord-{n}"), "amount": 20.0,
               "currency": "EUR", "method": "card"})
    } else {
        json!({"payment_id": format!("pay-{n}"), "order_id": format!("ord-{n}"), "amount": 20.0,
               "currency": "EUR", "settled_at": 0, "fee": null})
    };
    json!({
        "specversion": "1.0", "id": format!("{ty}-{n}"),
        "source": if ty == "payment.authorized" { "/payments/gateway" } else { "/payments/ledger" },
        "type": ty, "time": at(minute), "data": data
    })
}

/// The stream: refunds of 6 orders over three hours (some out of order, within the allowed
/// lateness), 10 authorised payments of which 2, 4, 6, 8 and 10 are never or too late
/// settled, and, last, an event far ahead on every partition that closes every window.
/// Returns the records and the refunds the recomputation counts.
fn stream(partitions: i32) -> (Vec<Rec>, Vec<Value>) {
    // (arrival minute, record): the stream is sent in arrival order.
    let mut arriving: Vec<(i64, Rec)> = Vec::new();
    let mut refunds = Vec::new();
    for n in 0..90 {
        let order = n % 6;
        let minute = (n as i64) * 2;
        // Every 7th arrives 8 minutes late: within the 10 minutes allowed.
        let arrival = if n % 7 == 3 { minute + 8 } else { minute };
        let event = refund_at(n, order, minute, (n % 13) as f64 + 0.5);
        arriving.push((arrival, Rec::json(&format!("ord-{order}"), &event)));
        refunds.push(event);
    }
    for n in 1..=10 {
        let key = format!("pay-{n}");
        let authorised = 20 + n as i64;
        arriving.push((
            authorised,
            Rec::json(&key, &payment("payment.authorized", n, authorised)),
        ));
        if n % 2 == 1 {
            arriving.push((
                authorised + 10,
                Rec::json(&key, &payment("payment.settled", n, authorised + 10)),
            ));
        } else if n == 2 {
            // 44 minutes after its authorisation.
            arriving.push((66, Rec::json(&key, &payment("payment.settled", n, 66))));
        }
    }
    arriving.sort_by_key(|(arrival, _)| *arrival);
    let mut records: Vec<Rec> = arriving.into_iter().map(|(_, r)| r).collect();
    // Far ahead, on every partition: closes every window and fires every timer.
    let mut covered = BTreeSet::new();
    for k in 0.. {
        let key = format!("tick-{k}");
        let p = reflex::kafka::read::default_partition(key.as_bytes(), partitions as usize)
            .expect("a partition");
        if covered.insert(p) {
            let tick = refund_at(1000 + k, 999, 24 * 60, 1.0);
            records.push(Rec::json(&key, &tick));
        }
        if covered.len() == partitions as usize {
            break;
        }
    }
    (records, refunds)
}

/// What the refunds analysis must find: per order and hour, count, sum, min and max.
fn recompute(refunds: &[Value]) -> BTreeMap<(String, String), Value> {
    let mut windows: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in refunds {
        let time =
            chrono::DateTime::parse_from_rfc3339(r["time"].as_str().expect("time")).expect("time");
        let hour = time.to_utc().format("%Y-%m-%dT%H:00:00.000Z").to_string();
        let order = r["data"]["order_id"].as_str().expect("order").to_owned();
        windows
            .entry((order, hour))
            .or_default()
            .push(r["data"]["amount"].as_f64().expect("amount"));
    }
    windows
        .into_iter()
        .map(|(k, v)| {
            let total: f64 = v.iter().sum();
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (
                k,
                json!({"refunds": v.len() as f64, "total": total, "smallest": min, "largest": max}),
            )
        })
        .collect()
}

/// The findings on the topic: by id, every copy's (type, subject, data).
pub fn findings_by_id(topic: &str) -> BTreeMap<String, Vec<(String, String, Value)>> {
    let mut out: BTreeMap<String, Vec<(String, String, Value)>> = BTreeMap::new();
    for r in read_all(topic) {
        let v = r.json();
        out.entry(v["id"].as_str().expect("id").to_owned())
            .or_default()
            .push((
                v["type"].as_str().expect("type").to_owned(),
                v["subject"].as_str().unwrap_or_default().to_owned(),
                v["data"].clone(),
            ));
    }
    out
}

/// Checks the findings against the recomputation and the payments never settled in time.
fn check_findings(found: &BTreeMap<String, Vec<(String, String, Value)>>, refunds: &[Value]) {
    let want = recompute(refunds);
    let mut windows = BTreeMap::new();
    let mut unsettled = BTreeSet::new();
    for (id, copies) in found {
        let first = &copies[0];
        assert!(
            copies.iter().all(|c| c == first),
            "finding {id} was emitted with different values: {copies:?}"
        );
        let (ty, subject, data) = first;
        match ty.as_str() {
            "reflex.analytics.refunds_high" => {
                let hour = data["window"]["start"].as_str().expect("start").to_owned();
                windows.insert((subject.clone(), hour), data["values"].clone());
            }
            "reflex.analytics.payment_not_settled" => {
                unsettled.insert(subject.clone());
            }
            other => panic!("unexpected finding type {other}"),
        }
    }
    // The tick's own window (order 999) never closes: nothing comes after it.
    assert_eq!(
        windows, want,
        "the windows equal a recomputation of the same events"
    );
    let want_unsettled: BTreeSet<String> = [2, 4, 6, 8, 10]
        .iter()
        .map(|n| format!("pay-{n}"))
        .collect();
    assert_eq!(unsettled, want_unsettled);
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_windows_equal_a_recomputation_and_absence_fires_only_for_unsettled_payments() {
    let a = AnalyticsEnv::new(2);
    a.env.create_topics().await;
    let (records, refunds) = stream(2);
    produce(&a.env.events, &records).await;
    // After the ticks: a refund of the first hour, long closed, is late.
    produce(
        &a.env.events,
        &[Rec::json("ord-1", &refund_at(5000, 1, 5, 100.0))],
    )
    .await;
    let config = a.env.config();
    let summary = reflex::role::analytics::run(
        &config,
        reflex::role::analytics::AnalyticsRunOptions {
            drain: true,
            worker_id: "it".into(),
        },
        CancellationToken::new(),
    )
    .await
    .expect("the analytics role runs");
    assert_eq!(summary.late, 1, "{summary}");
    let late: Vec<Read> = read_all(&a.env.dlq);
    assert_eq!(
        late.len(),
        1,
        "the late refund, and only it, is dead-lettered"
    );
    assert_eq!(late[0].headers["reflex_reason"], "late");
    assert_eq!(late[0].json()["id"], "r-5000");
    let found = findings_by_id(&a.findings);
    check_findings(&found, &refunds);
    assert!(
        found.values().all(|c| c.len() == 1),
        "one run emits each finding once"
    );

    // The findings are events like any other: the actions role audits each one.
    let mut actions = tokio::spawn({
        let config = a.env.config();
        async move {
            reflex::role::actions::run(
                &config,
                reflex::role::actions::RunOptions {
                    worker_id: "it".into(),
                    drain: true,
                },
                CancellationToken::new(),
            )
            .await
        }
    });
    let audits = wait_for_audits(&a.env.audit, records.len() + 1 + found.len()).await;
    for id in found.keys() {
        let audit = &audits[id][0];
        assert_eq!(audit["decision"]["allow"], json!(true), "{audit}");
    }
    let _ = (&mut actions).await;
}

/// A worker process, killed if the test ends (or fails) while it runs.
pub struct Worker(pub Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_analytics(a: &AnalyticsEnv, drain: bool) -> Worker {
    spawn_named(a, drain, "it")
}

fn spawn_named(a: &AnalyticsEnv, drain: bool, worker_id: &str) -> Worker {
    spawn_worker(&a.env, drain, worker_id)
}

/// An analytics worker process on `env`'s configuration.
pub fn spawn_worker(env: &TestEnv, drain: bool, worker_id: &str) -> Worker {
    let mut cmd = Command::new(reflex_bin());
    cmd.args(["run", "--role", "analytics", "--worker-id", worker_id])
        .env("REFLEX_CONFIG", &env.config_path)
        .env("REFLEX_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if drain {
        cmd.arg("--drain");
    }
    Worker(cmd.spawn().expect("reflex starts"))
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_killed_mid_stream_emits_every_finding_with_the_same_id_and_values() {
    let a = AnalyticsEnv::new(2);
    a.env.create_topics().await;
    let (records, refunds) = stream(2);
    let changelog = format!("{}.changelog", a.findings);
    // Three kills, each once the worker has checkpointed further than before.
    let chunk = records.len() / 3 + 1;
    let mut checkpoints = 0;
    for part in records.chunks(chunk) {
        produce(&a.env.events, part).await;
        let mut worker = spawn_analytics(&a, false);
        checkpoints = checkpointed_past(&changelog, checkpoints).await;
        worker.0.kill().expect("SIGKILL");
        worker.0.wait().expect("reaped");
    }
    let mut last = spawn_analytics(&a, true);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = last.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the draining worker did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success());
    let found = findings_by_id(&a.findings);
    check_findings(&found, &refunds);
}

/// Records written to `topic` so far (the sum of its high watermarks); 0 while the topic does
/// not exist yet or has no leaders (the worker creates the changelog at start-up).
pub fn written(topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Ok(consumer) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create::<BaseConsumer>()
    else {
        return 0;
    };
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    let mut total = 0;
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        match consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5)) {
            Ok((_, high)) => total += usize::try_from(high).unwrap_or(0),
            Err(_) => return 0,
        }
    }
    total
}

/// Waits until the changelog holds more than `than` records; returns how many it holds.
pub async fn checkpointed_past(changelog: &str, than: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = written(changelog);
        if now > than {
            return now;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_two_workers_with_a_rebalance_between_them_emit_the_same_findings() {
    let a = AnalyticsEnv::new(2);
    a.env.create_topics().await;
    let (records, refunds) = stream(2);
    let changelog = format!("{}.changelog", a.findings);
    let (first_half, second_half) = records.split_at(records.len() / 2);
    produce(&a.env.events, first_half).await;
    let mut first = spawn_named(&a, false, "it-1");
    let seen = checkpointed_past(&changelog, 0).await;
    // The second worker joins: the group rebalances and the partitions are shared, each
    // moved one restored from its checkpoint.
    let mut second = spawn_named(&a, false, "it-2");
    produce(&a.env.events, second_half).await;
    checkpointed_past(&changelog, seen).await;
    let want = recompute(&refunds).len() + 5;
    let deadline = Instant::now() + Duration::from_secs(120);
    while findings_by_id(&a.findings).len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} findings within 120 s",
            findings_by_id(&a.findings).len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for worker in [&mut first, &mut second] {
        worker.0.kill().expect("stopped");
        worker.0.wait().expect("reaped");
    }
    check_findings(&findings_by_id(&a.findings), &refunds);
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_windows_equal_the_same_aggregation_by_duckdb_over_the_lake() {
    let lake = crate::lake::LakeEnv::new(crate::lake::Store::Local, 2, "max_file_age = \"1s\"");
    let (findings, _analyses) = add_analytics(&lake.env);
    lake.env.create_topics().await;
    let (records, _) = stream(2);
    produce(&lake.env.events, &records).await;
    lake.drain("analytics");
    lake.drain("lake");
    let mut found: BTreeMap<(String, i64), Value> = BTreeMap::new();
    for (_, copies) in findings_by_id(&findings) {
        let (ty, subject, data) = &copies[0];
        if ty == "reflex.analytics.refunds_high" {
            let start = chrono::DateTime::parse_from_rfc3339(
                data["window"]["start"].as_str().expect("start"),
            )
            .expect("start")
            .timestamp_millis();
            found.insert((subject.clone(), start), data["values"].clone());
        }
    }
    // The batch: every refund in the lake but the last one (ord-999), whose hour never closes.
    let batch: BTreeMap<(String, i64), Value> = lake
        .query(
            "SELECT order_id, (epoch_ms(\"time\") // 3600000) * 3600000 AS start, count(*),
                    sum(amount), min(amount), max(amount)
             FROM refund_requested WHERE order_id <> 'ord-999' GROUP BY ALL ORDER BY ALL",
        )
        .into_iter()
        .map(|row| {
            (
                (
                    row[0].as_str().expect("order").to_owned(),
                    row[1].as_i64().expect("start"),
                ),
                json!({
                    "refunds": row[2].as_f64().expect("count"),
                    "total": row[3].as_f64().expect("sum"),
                    "smallest": row[4].as_f64().expect("min"),
                    "largest": row[5].as_f64().expect("max"),
                }),
            )
        })
        .collect();
    assert!(!batch.is_empty());
    assert_eq!(
        found, batch,
        "the findings equal DuckDB's aggregation of the lake's rows"
    );
}

/// Drains the event topics once with the analytics role, in process.
async fn drain_analytics(env: &TestEnv) -> reflex::role::analytics::AnalyticsSummary {
    reflex::role::analytics::run(
        &env.config(),
        reflex::role::analytics::AnalyticsRunOptions {
            drain: true,
            worker_id: "it".into(),
        },
        CancellationToken::new(),
    )
    .await
    .expect("the analytics role runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_state_larger_than_a_record_is_checkpointed_in_parts_and_restored() {
    let env = TestEnv::new(1);
    let (findings, _analyses) = add_analyses(
        &env,
        r#"
[refunds_per_order]
types = ["refund.requested"]
group_by = ["data.order_id"]
keyed_by_group = true
window = { tumbling = "24h" }
aggregates = { refunds = "count" }
condition = "refunds >= 2"
emit = "reflex.analytics.refunds_high"
"#,
    );
    env.create_topics().await;
    // 10 000 orders open in one day's window: over a megabyte of state, more than one record.
    const ORDERS: usize = 10_000;
    let refunds = |from: usize| -> Vec<Rec> {
        (0..ORDERS)
            .map(|o| Rec::json(&format!("ord-{o}"), &refund_at(from + o, o, 60, 1.0)))
            .collect()
    };
    produce(&env.events, &refunds(0)).await;
    let first = drain_analytics(&env).await;
    assert_eq!(
        first.findings, 0,
        "one refund per order is no finding: {first}"
    );
    // The summary tells the work from the start-up and the idle wait before a drain stops.
    assert_eq!(first.records, ORDERS as u64, "{first}");
    assert!(first.busy_ms > 0, "{first}");
    assert!(first.startup_cpu.is_some(), "{first:?}");
    assert!(
        first.to_string().contains(&format!("{ORDERS} records in ")),
        "{first}"
    );

    // The changelog's head for the task names its parts.
    let changelog = format!("{findings}.changelog");
    let mut latest: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for r in read_all(&changelog) {
        latest.insert(r.key.clone().expect("keyed"), r.value.clone());
    }
    let head: Value = serde_json::from_slice(
        latest["refunds_per_order/0"]
            .as_deref()
            .expect("a head record"),
    )
    .expect("the head is JSON");
    let parts = head["parts"]
        .as_u64()
        .expect("the state was written in parts");
    assert!(parts >= 2, "{head}");
    let generation = head["generation"].as_str().expect("generation");
    for n in 0..parts {
        let key = format!("refunds_per_order/0/{generation}/{n}");
        let part = latest[&key].as_deref().expect("every part is there");
        assert!(part.len() <= 512 * 1024, "{key}: {} bytes", part.len());
    }

    // A second refund of every order, and one two days later that closes the window: a fresh
    // worker counts both refunds only if it restored the state from its parts.
    let mut second = refunds(ORDERS);
    second.push(Rec::json(
        "ord-late",
        &refund_at(3 * ORDERS, ORDERS + 1, 3 * 24 * 60, 1.0),
    ));
    produce(&env.events, &second).await;
    let summary = drain_analytics(&env).await;
    let found = findings_by_id(&findings);
    assert_eq!(found.len(), ORDERS, "one finding per order: {summary}");
    assert!(
        found
            .values()
            .all(|copies| copies[0].2["values"]["refunds"].as_f64() == Some(2.0)),
        "every order counted both refunds: {:?}",
        found.values().next()
    );
}

/// `reflex topics` creates the analytics role's changelog with the other topics (a deployment
/// whose workers may not create topics runs it once), and `reflex check --connect` checks that
/// reflex may write the findings and the changelog, probing the compacted changelog with a
/// record it refuses.
#[tokio::test(flavor = "multi_thread")]
async fn topics_creates_the_changelog_and_check_connect_probes_the_findings_and_the_changelog() {
    let a = AnalyticsEnv::new(1);
    let changelog = format!("{}.changelog", a.findings);
    let out = Command::new(reflex_bin())
        .args(["topics", "--json"])
        .env("REFLEX_CONFIG", &a.env.config_path)
        .env("REFLEX_LOG", "warn")
        .output()
        .expect("reflex topics runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let created: Vec<&str> = report["created"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for topic in [&a.findings, &changelog] {
        assert!(created.contains(&topic.as_str()), "{topic} in {report}");
    }

    let endpoints = reflex::connectivity::check(&a.env.config()).await;
    let checked = |address: String| {
        endpoints
            .iter()
            .find(|e| e.kind == "topic" && e.address == address)
            .unwrap_or_else(|| panic!("{address} is checked: {endpoints:?}"))
    };
    let findings = checked(format!("{} (write (analytics findings))", a.findings));
    let state = checked(format!("{changelog} (read, write (analytics state))"));
    for endpoint in [findings, state] {
        assert!(
            endpoint
                .result
                .as_ref()
                .is_ok_and(|d| d.contains("write allowed")),
            "{endpoint}"
        );
    }
    assert!(
        state
            .result
            .as_ref()
            .is_ok_and(|d| d.contains("compacted topic refuses")),
        "the changelog is compacted, so the probe is a record without key: {state}"
    );
}
