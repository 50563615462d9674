//! Faults of what reflex depends on besides Kafka, with live workers under load (the fleet, load
//! generator and reconciler of [`crate::chaos`]): the lake's object store down, an action
//! service failing and then slow, a policy set broken on reload. Each scenario prints the
//! chaos table (lost, duplicated, longest pause, time to recover) and what it saw of the fault;
//! `make test` runs the short forms, `make chaos` the long ones.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::action_service::{ActionService, Behaviour};
use crate::chaos::{check, full, log_file, Fault, Fleet, Scenario};
use crate::common::*;
use crate::outage::{free_ports, log_lines, metric};

/// `lake.max_buffered_bytes` of the store outage: small, so the bound is reached while the
/// store is down.
pub const MAX_BUFFERED: usize = 256 * 1024;

/// `roles.actions.max_event_bytes` of the test configuration: the most one record adds to the
/// lake's buffers past its bound before a write is started.
const ONE_RECORD: f64 = 65_536.0;

/// An s3s-fs of the scenario's own (port and data directory), the binary `make up` installed,
/// started and stopped by `scripts/stack.sh`, so it can go down without touching the shared one.
pub struct PrivateS3 {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateS3 {
    pub fn start() -> Self {
        let s3 = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_ports(1)[0],
        };
        s3.stack("up");
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stack(&self, command: &str) {
        let status = Command::new(repo().join("scripts/stack.sh"))
            .args([command, "s3"])
            .env("REFLEX_STACK_DIR", self.dir.path())
            .env("S3_PORT", self.port.to_string())
            .stdout(Stdio::null())
            .status()
            .expect("stack.sh runs");
        assert!(status.success(), "scripts/stack.sh {command} s3");
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/stack.sh"))
            .args(["down", "s3"])
            .env("REFLEX_STACK_DIR", self.dir.path())
            .env("S3_PORT", self.port.to_string())
            .stdout(Stdio::null())
            .status();
    }
}

/// What a fault's driver saw.
pub struct Seen {
    /// From the fault's end until the work it held back was done.
    pub recovered: Duration,
    pub notes: Vec<String>,
    pub violations: Vec<String>,
}

/// The end offset of each partition of `topic` now.
fn end_offsets(topic: &str) -> BTreeMap<i32, i64> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("client");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions
        .into_iter()
        .map(|p| {
            let (_, high) = client
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (p, high)
        })
        .collect()
}

/// Whether consumer group `group` has committed `topic` up to `ends`.
fn committed_past(group: &str, topic: &str, ends: &BTreeMap<i32, i64>) -> bool {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("client");
    let mut list = TopicPartitionList::new();
    for &p in ends.keys() {
        list.add_partition(topic, p);
    }
    let Ok(committed) = client.committed_offsets(list, Duration::from_secs(10)) else {
        return false;
    };
    ends.iter().all(|(&p, &end)| {
        matches!(
            committed.find_partition(topic, p).map(|e| e.offset()),
            Some(Offset::Offset(at)) if at >= end
        )
    })
}

/// Waits until `group` has committed `topic` up to `ends`; how long it took, or `None` after
/// `limit`.
async fn wait_committed(
    group: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    limit: Duration,
) -> Option<Duration> {
    let from = Instant::now();
    while from.elapsed() < limit {
        if committed_past(group, topic, ends) {
            return Some(from.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Waits until every event produced so far has a final audit record; how long it took, or
/// `None` after `limit`.
async fn wait_audited(env: &TestEnv, limit: Duration) -> Option<Duration> {
    let from = Instant::now();
    let ids: Vec<String> = read_all(&env.events)
        .iter()
        .filter_map(|r| r.json()["id"].as_str().map(str::to_owned))
        .collect();
    while from.elapsed() < limit {
        let audits = audits_by_key(&env.audit);
        let open = ids.iter().any(|id| {
            audits
                .get(id)
                .and_then(|a| a.last())
                .is_none_or(|a| a["outcome"] == "retrying")
        });
        if !open {
            return Some(from.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

/// The sum over the running workers of `role` of metric `name`.
fn fleet_metric(fleet: &Fleet<'_>, role: &str, name: &str) -> f64 {
    fleet.scrape(role).iter().map(|m| metric(m, name)).sum()
}

/// Whether a worker of `role` shows a circuit breaker open (or half-open: a trial under way).
fn breaker_open(fleet: &Fleet<'_>) -> bool {
    fleet.scrape("actions").iter().any(|m| {
        m.lines().any(|l| {
            l.starts_with("reflex_breaker_state{")
                && !l.contains("state=\"closed\"")
                && l.ends_with(" 1")
        })
    })
}

fn processed_at(audit: &serde_json::Value) -> Option<DateTime<Utc>> {
    audit["processed_at"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The lake's store stops for `outage` a quarter into the load, then starts again.
pub async fn store_down(
    s: &Scenario,
    fleet: &Fleet<'_>,
    env: &TestEnv,
    s3: &PrivateS3,
    outage: Duration,
) -> Seen {
    let mut seen = Seen {
        recovered: Duration::ZERO,
        notes: Vec::new(),
        violations: Vec::new(),
    };
    tokio::time::sleep(s.duration / 4).await;
    s3.stack("down");
    let down = Instant::now();
    let mut most_buffered = 0f64;
    let mut shown = false;
    while down.elapsed() < outage {
        for m in fleet.scrape("lake") {
            most_buffered = most_buffered.max(metric(&m, "reflex_lake_buffered_bytes"));
            shown |= metric(&m, "reflex_lake_store_unreachable_seconds") > 0.0;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s3.stack("up");
    let ends = end_offsets(&env.events);
    let group = env.config().lake.group_id.clone();
    match wait_committed(&group, &env.events, &ends, Duration::from_secs(120)).await {
        Some(after) => seen.recovered = after,
        None => seen
            .violations
            .push("the lake did not catch up within 120 s of the store's return".into()),
    }
    let outages = fleet_metric(fleet, "lake", "reflex_lake_store_outages_total");
    let still = fleet_metric(fleet, "lake", "reflex_lake_store_unreachable_seconds");
    let went = log_lines(&log_file(s), "lake store unreachable;");
    let back = log_lines(&log_file(s), "lake store reachable again");
    seen.notes.push(format!(
        "store down {:.0} s: at most {most_buffered:.0} bytes buffered per lake worker (limit {MAX_BUFFERED}); {went} lines when it went, {back} when it came back; {outages} outages ended in /metrics",
        outage.as_secs_f64()
    ));
    if most_buffered > MAX_BUFFERED as f64 + ONE_RECORD {
        seen.violations.push(format!(
            "lake buffered {most_buffered} bytes while the store was down, past its bound {MAX_BUFFERED}"
        ));
    }
    if !shown {
        seen.violations
            .push("no lake worker showed the outage in /metrics".into());
    }
    if went == 0 || went > s.lake || went != back {
        seen.violations.push(format!(
            "{went} lines when the store went and {back} when it came back, for {} lake workers: want one each way per worker that wrote",
            s.lake
        ));
    }
    if still != 0.0 || outages < 1.0 {
        seen.violations.push(format!(
            "after the store came back /metrics shows {still} s unreachable and {outages} outages ended"
        ));
    }
    seen
}

/// The action service answers 503 to every order for `failing` a quarter into the load, then
/// answers each after `delay` for `slow`, then answers normally again.
pub async fn service_down(
    s: &Scenario,
    fleet: &Fleet<'_>,
    env: &TestEnv,
    service: &ActionService,
    failing: Duration,
    slow: Duration,
    delay: Duration,
) -> Seen {
    let mut seen = Seen {
        recovered: Duration::ZERO,
        notes: Vec::new(),
        violations: Vec::new(),
    };
    tokio::time::sleep(s.duration / 4).await;
    service.set_behaviour("/orders/", Behaviour::fail(503, u32::MAX));
    let failed_at = Utc::now();
    let from = Instant::now();
    let mut opened: Option<DateTime<Utc>> = None;
    while from.elapsed() < failing {
        if opened.is_none() && breaker_open(fleet) {
            opened = Some(Utc::now());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    service.set_behaviour("/orders/", Behaviour::ok().delayed(delay));
    let answered_at = Utc::now();
    tokio::time::sleep(slow).await;
    service.set_behaviour("/orders/", Behaviour::ok());
    match wait_audited(env, Duration::from_secs(180)).await {
        Some(after) => seen.recovered = after,
        None => seen.violations.push(
            "events produced before the service recovered were not all final within 180 s".into(),
        ),
    }
    // Refunds are inline actions: the worker's other keys flow while orders fail.
    let audits = audits_by_key(&env.audit);
    let produced: BTreeMap<String, (String, i64)> = read_all(&env.events)
        .iter()
        .map(|r| {
            let event = r.json();
            (
                event["id"].as_str().unwrap_or_default().to_owned(),
                (
                    event["type"].as_str().unwrap_or_default().to_owned(),
                    r.timestamp_ms.unwrap_or(0),
                ),
            )
        })
        .collect();
    let mut flowed = 0;
    let mut slowest = 0i64;
    for (id, (ty, at_ms)) in &produced {
        let Some(done) = audits
            .get(id)
            .and_then(|a| a.iter().find(|a| a["outcome"] != "retrying"))
            .and_then(processed_at)
        else {
            continue;
        };
        if ty == "refund.requested" && *at_ms >= failed_at.timestamp_millis() {
            slowest = slowest.max(done.timestamp_millis() - at_ms);
            if opened.is_some_and(|o| *at_ms >= o.timestamp_millis()) && done < answered_at {
                flowed += 1;
            }
        }
    }
    seen.notes.push(format!(
        "503 for {:.0} s, then answers after {:.0} s for {:.0} s: breaker open {}; {flowed} refunds produced after it opened were actioned while orders still failed; slowest refund from then on {:.1} s",
        failing.as_secs_f64(),
        delay.as_secs_f64(),
        slow.as_secs_f64(),
        opened.map_or("never".to_owned(), |o| format!(
            "{:.1} s after the first 503",
            (o - failed_at).num_milliseconds() as f64 / 1000.0
        )),
        slowest as f64 / 1000.0
    ));
    if opened.is_none() {
        seen.violations
            .push("no worker showed its breaker open while the service answered 503".into());
    }
    if flowed == 0 {
        seen.violations
            .push("no other key's event was actioned while the orders failed".into());
    }
    seen
}

/// A module with a syntax error is written into the policy directory a quarter into the load,
/// and fixed `broken` later.
pub async fn broken_policy(
    s: &Scenario,
    fleet: &Fleet<'_>,
    env: &TestEnv,
    dir: &Path,
    broken: Duration,
) -> Seen {
    let mut seen = Seen {
        recovered: Duration::ZERO,
        notes: Vec::new(),
        violations: Vec::new(),
    };
    let first = reflex::policy::files::revision(dir).expect("revision");
    tokio::time::sleep(s.duration / 4).await;
    let module = dir.join("broken.rego");
    std::fs::write(&module, "package reflex.broken\ndeny contains \"x\" if {").expect("write");
    let broke_at = Utc::now();
    tokio::time::sleep(broken).await;
    let refused = fleet_metric(fleet, "actions", "reflex_policy_reloads_refused_total")
        + fleet_metric(fleet, "lake", "reflex_policy_reloads_refused_total");
    let lines = log_lines(&log_file(s), "changed policy set refused");
    std::fs::write(&module, "package reflex.broken\n\nnothing := false\n").expect("write");
    let fixed_at = Utc::now();
    let fixed = reflex::policy::files::revision(dir).expect("revision");
    let from = Instant::now();
    let mut recovered = None;
    let mut audits = BTreeMap::new();
    while from.elapsed() < Duration::from_secs(60) {
        audits = audits_by_key(&env.audit);
        if audits
            .values()
            .flatten()
            .any(|a| a["policy_revision"] == fixed.as_str())
        {
            recovered = Some(from.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    match recovered {
        Some(after) => seen.recovered = after,
        None => seen
            .violations
            .push("no decision with the fixed revision within 60 s".into()),
    }
    let workers = s.actions + s.lake;
    let during = audits
        .values()
        .flatten()
        .filter(|a| processed_at(a).is_some_and(|t| t > broke_at && t < fixed_at))
        .collect::<Vec<_>>();
    let kept = during
        .iter()
        .filter(|a| a["policy_revision"] == first.as_str())
        .count();
    seen.notes.push(format!(
        "policy broken for {:.0} s: {refused} refusals in /metrics and {lines} log lines for {workers} workers; {kept} of {} decisions meanwhile by the last good revision",
        broken.as_secs_f64(),
        during.len()
    ));
    if refused != workers as f64 || lines != workers {
        seen.violations.push(format!(
            "{refused} refusals in /metrics and {lines} log lines for {workers} workers: want one each per worker"
        ));
    }
    if during.is_empty() || kept != during.len() {
        seen.violations.push(format!(
            "{} of {} decisions while the set was broken were by the last good revision",
            kept,
            during.len()
        ));
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_object_store_down() {
    let (duration, outage) = if full() {
        (Duration::from_secs(80), Duration::from_secs(60))
    } else {
        (Duration::from_secs(30), Duration::from_secs(15))
    };
    check(Scenario {
        name: "object store down",
        protocol: "classic",
        flaky: false,
        actions: 1,
        lake: 2,
        rate: 100,
        duration,
        fault: Fault::StoreDown { outage },
        static_members: false,
        rebalances: false,
        exactly_once: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_action_service_down_then_slow() {
    let (duration, failing, slow, delay) = if full() {
        (
            Duration::from_secs(110),
            Duration::from_secs(60),
            Duration::from_secs(20),
            Duration::from_secs(10),
        )
    } else {
        (
            Duration::from_secs(30),
            Duration::from_secs(8),
            Duration::from_secs(8),
            Duration::from_secs(2),
        )
    };
    check(Scenario {
        name: "action service 503, then slow",
        protocol: "classic",
        flaky: true,
        actions: 2,
        lake: 1,
        rate: 100,
        duration,
        fault: Fault::ServiceDown {
            failing,
            slow,
            delay,
        },
        static_members: false,
        rebalances: false,
        exactly_once: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_policy_broken_on_reload() {
    let (duration, broken) = if full() {
        (Duration::from_secs(40), Duration::from_secs(15))
    } else {
        (Duration::from_secs(25), Duration::from_secs(8))
    };
    check(Scenario {
        name: "policy broken on reload",
        protocol: "classic",
        flaky: false,
        actions: 2,
        lake: 1,
        rate: 100,
        duration,
        fault: Fault::BrokenPolicy { broken },
        static_members: false,
        rebalances: false,
        exactly_once: false,
    })
    .await;
}

/// A three-broker KRaft cluster of the scenario's own (`BROKERS=3 scripts/stack.sh` in a
/// stack directory of its own, on free ports), stopped and deleted when dropped.
pub struct PrivateCluster {
    dir: tempfile::TempDir,
    /// The first node's port; node N listens on `port + 10 (N - 1)`, its controller on
    /// `port + 1 + 10 (N - 1)`.
    port: u16,
}

impl PrivateCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The jars are the shared stack's (`make up` fetched them), linked rather than fetched.
        let libs = dir.path().join("kafka/libs");
        std::fs::create_dir_all(&libs).expect("mkdir");
        for entry in
            std::fs::read_dir(repo().join(".stack/kafka/libs")).expect("make up fetched Kafka")
        {
            let path = entry.expect("entry").path();
            std::os::unix::fs::symlink(&path, libs.join(path.file_name().expect("name")))
                .expect("link jars");
        }
        // Six ports, ten apart for the three nodes, none of them in use.
        let port = loop {
            let base = 20_000 + (uuid::Uuid::new_v4().as_u128() % 2_000) as u16 * 10;
            let free = (0..3).all(|n| {
                [base + 10 * n, base + 1 + 10 * n]
                    .iter()
                    .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            });
            if free {
                break base;
            }
        };
        let cluster = Self { dir, port };
        cluster.stack(&["up", "kafka"]);
        cluster
    }

    /// The bootstrap list of all three nodes.
    pub fn brokers(&self) -> String {
        (0..3)
            .map(|n| format!("127.0.0.1:{}", self.port + 10 * n))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn stack(&self, args: &[&str]) {
        let status = Command::new(repo().join("scripts/stack.sh"))
            .args(args)
            .env("REFLEX_STACK_DIR", self.dir.path())
            .env("BROKERS", "3")
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", (self.port + 1).to_string())
            .env("KAFKA_PORT_STEP", "10")
            // Three brokers beside the workers on two cores: small heaps.
            .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
            .stdout(Stdio::null())
            .status()
            .expect("stack.sh runs");
        assert!(status.success(), "scripts/stack.sh {args:?}");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/stack.sh"))
            .args(["down", "kafka"])
            .env("REFLEX_STACK_DIR", self.dir.path())
            .env("BROKERS", "3")
            .stdout(Stdio::null())
            .status();
    }
}

/// Points the test helpers (`brokers()`) at another cluster until dropped. The variable is the
/// process's: only for a scenario that runs alone (`make chaos` runs one test at a time).
pub struct BrokersOverride(Option<String>);

impl BrokersOverride {
    pub fn set(brokers: &str) -> Self {
        let before = std::env::var("REFLEX_TEST_BROKERS").ok();
        std::env::set_var("REFLEX_TEST_BROKERS", brokers);
        Self(before)
    }
}

impl Drop for BrokersOverride {
    fn drop(&mut self) {
        match &self.0 {
            Some(before) => std::env::set_var("REFLEX_TEST_BROKERS", before),
            None => std::env::remove_var("REFLEX_TEST_BROKERS"),
        }
    }
}

/// On the scenario's three-broker cluster: node 2 is killed (`kill -9`) a quarter into the load
/// and started again after `node_down`; later the whole cluster stops for `all_down` and starts
/// again.
pub async fn brokers_down(
    s: &Scenario,
    env: &TestEnv,
    cluster: &PrivateCluster,
    node_down: Duration,
    all_down: Duration,
) -> Seen {
    let mut seen = Seen {
        recovered: Duration::ZERO,
        notes: Vec::new(),
        violations: Vec::new(),
    };
    let log = log_file(s);
    tokio::time::sleep(s.duration / 4).await;
    cluster.stack(&["kill-broker", "2"]);
    let killed = Instant::now();
    tokio::time::sleep(node_down).await;
    cluster.stack(&["start-broker", "2"]);
    let node_back = killed.elapsed();
    let node_lines = log_lines(&log, "Kafka brokers unreachable");
    // The stream settles on three brokers again before the whole cluster goes.
    tokio::time::sleep(s.duration / 8).await;
    let before = log_lines(&log, "WARN") + log_lines(&log, "ERROR");
    cluster.stack(&["down", "kafka"]);
    let down = Instant::now();
    tokio::time::sleep(all_down).await;
    cluster.stack(&["up", "kafka"]);
    let outage = down.elapsed();
    match wait_audited(env, Duration::from_secs(180)).await {
        Some(after) => seen.recovered = after,
        None => seen.violations.push(
            "events produced before the cluster came back were not all final within 180 s".into(),
        ),
    }
    // A worker says the brokers are back once data flows to it again.
    let went = log_lines(&log, "Kafka brokers unreachable");
    let lines_from = Instant::now();
    while log_lines(&log, "Kafka brokers reachable again") < went
        && lines_from.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let back = log_lines(&log, "Kafka brokers reachable again");
    let during = log_lines(&log, "WARN") + log_lines(&log, "ERROR") - before;
    let workers = s.actions + s.lake;
    seen.notes.push(format!(
        "node 2 killed and back after {:.0} s ({node_lines} outage lines meanwhile); whole cluster down {:.0} s (start included): {} workers logged {} lines when it went, {} when it came back, {during} ERROR/WARN lines from the cluster's stop on",
        node_back.as_secs_f64(),
        outage.as_secs_f64(),
        workers,
        went - node_lines,
        back
    ));
    if went - node_lines == 0 || went - node_lines > workers || back != went {
        seen.violations.push(format!(
            "{} lines when the cluster went and {back} when it came back, for {workers} workers: want at most one each way per worker",
            went - node_lines
        ));
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_three_brokers_one_killed_then_all_stopped() {
    // Three more JVMs and a process-wide broker setting: only in the full suite, which runs
    // one scenario at a time.
    if !full() {
        return;
    }
    check(Scenario {
        name: "3 brokers: kill -9 one, then stop all",
        protocol: "classic",
        flaky: false,
        actions: 2,
        lake: 1,
        rate: 50,
        duration: Duration::from_secs(150),
        fault: Fault::BrokersDown {
            node_down: Duration::from_secs(20),
            all_down: Duration::from_secs(30),
        },
        static_members: false,
        // A broker's return moves partition leaders and group coordinators: records in flight
        // then may be processed again.
        rebalances: true,
        exactly_once: false,
    })
    .await;
}
