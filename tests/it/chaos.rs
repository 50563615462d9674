//! Faults with several live workers at once, on the real stack: `kill -9` and restarts, scaling
//! up and down, rolling restarts and a paused (zombie) worker, while a load generator produces
//! keyed events at a steady rate. A reconciler then checks what reflex promises and prints a
//! table per scenario:
//! - every produced id has a final audit record (actioned, or dead-lettered for bad input) and
//!   every bad input is in the dead-letter topic;
//! - an event was processed more than once only by a worker that was killed (`kill -9`, or a
//!   pause past its session timeout), or by a worker whose partitions were revoked before the
//!   repeat (each worker's log lines carry its id, so the reconciler sees whose were);
//! - each key's events were processed in offset order;
//! - each valid event is in the lake exactly once (DuckDB over the `<table>_raw` views).
//!
//! `make test` runs the short scenarios; `make chaos` (`REFLEX_CHAOS=full`) runs the whole suite.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::action_service::{ActionService, Behaviour};
use crate::common::*;
use crate::faults::{self, BrokersOverride, PrivateCluster, PrivateS3};
use crate::lake::{LakeEnv, Store};
use crate::outage::{free_ports, scrape};

/// Whether the whole suite runs (`make chaos`) or its short version (`make test`).
pub(crate) fn full() -> bool {
    std::env::var("REFLEX_CHAOS").is_ok_and(|v| v == "full")
}

/// A worker process of the fleet.
pub(crate) struct Worker {
    pub role: &'static str,
    name: String,
    incarnation: u32,
    child: Option<Child>,
    /// Its telemetry listener (`/metrics`), the same through restarts.
    pub listen: SocketAddr,
}

/// The workers of a scenario, started and hurt as the scenario says.
pub(crate) struct Fleet<'a> {
    lake: &'a LakeEnv,
    pub workers: Vec<Worker>,
    /// Static membership: each worker restarts under its own `--instance-id`.
    static_members: bool,
    /// Incarnations ended by `kill -9` or paused past their session timeout.
    killed: BTreeSet<String>,
    /// The scenario's log: every worker's lines, each after the worker's id.
    log: Arc<Mutex<File>>,
    pub kills: usize,
}

impl<'a> Fleet<'a> {
    fn new(lake: &'a LakeEnv, static_members: bool, log: File) -> Self {
        Self {
            lake,
            workers: Vec::new(),
            static_members,
            killed: BTreeSet::new(),
            log: Arc::new(Mutex::new(log)),
            kills: 0,
        }
    }

    fn worker_id(w: &Worker) -> String {
        format!("{}.{}", w.name, w.incarnation)
    }

    fn spawn(&mut self, index: usize) {
        let w = &mut self.workers[index];
        w.incarnation += 1;
        let id = Self::worker_id(w);
        let mut cmd = self
            .lake
            .command(&["run", "--role", w.role, "--worker-id", &id]);
        // INFO for reflex: an outage is one WARN line when it starts and one INFO when it ends.
        // REFLEX_CHAOS_LOG sets the workers' log filter, e.g. to look into one module.
        cmd.env(
            "REFLEX_LOG",
            std::env::var("REFLEX_CHAOS_LOG").unwrap_or_else(|_| "warn,reflex=info".into()),
        )
        .env("REFLEX_TELEMETRY_LISTEN", w.listen.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if self.static_members {
            cmd.args(["--instance-id", &w.name]);
        }
        let mut child = cmd.spawn().expect("reflex starts");
        // Each line goes to the scenario's log after the incarnation's id, so the reconciler
        // knows which worker had its partitions revoked, and a reader which worker said what.
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&self.log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let _ = writeln!(log, "{id} {line}");
                }
            });
        }
        w.child = Some(child);
    }

    /// Adds and starts a worker of `role`; returns its index.
    fn add(&mut self, role: &'static str) -> usize {
        let n = self.workers.iter().filter(|w| w.role == role).count();
        self.workers.push(Worker {
            role,
            name: format!("{role}-{n}"),
            incarnation: 0,
            child: None,
            listen: SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0])),
        });
        let index = self.workers.len() - 1;
        self.spawn(index);
        index
    }

    fn pid(&self, index: usize) -> String {
        self.workers[index]
            .child
            .as_ref()
            .map(|c| c.id().to_string())
            .expect("worker is running")
    }

    fn signal(&self, index: usize, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid(index)])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} worker {index}");
    }

    /// `kill -9` and restart at once.
    fn kill_and_restart(&mut self, index: usize) {
        let w = &mut self.workers[index];
        let mut child = w.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        self.killed.insert(Self::worker_id(w));
        self.kills += 1;
        self.spawn(index);
    }

    /// SIGTERM, wait for the clean stop (it drains and commits), return how long it took.
    fn stop(&mut self, index: usize) -> Duration {
        let started = Instant::now();
        self.signal(index, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Left in place until it exits, so a worker that hangs is killed when the fleet is
            // dropped.
            let child = self.workers[index].child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("wait") {
                self.workers[index].child = None;
                assert!(status.success(), "SIGTERM is a clean stop: {status}");
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "a worker did not stop within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the worker exited by itself (it is reaped).
    fn exited(&mut self, index: usize) -> bool {
        let w = &mut self.workers[index];
        let exited = w
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("wait").is_some());
        if exited {
            w.child = None;
        }
        exited
    }

    /// Stops every running worker cleanly.
    fn stop_all(&mut self) {
        for i in 0..self.workers.len() {
            if self.workers[i].child.is_some() {
                self.stop(i);
            }
        }
    }

    /// `/metrics` of every running worker of `role`.
    pub fn scrape(&self, role: &str) -> Vec<String> {
        self.running(role)
            .into_iter()
            .filter_map(|i| scrape(self.workers[i].listen))
            .collect()
    }

    pub fn running(&self, role: &str) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&i| self.workers[i].role == role && self.workers[i].child.is_some())
            .collect()
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(mut c) = w.child.take() {
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// One produced event.
struct Produced {
    id: String,
    key: String,
    valid: bool,
    /// A refund request: its approval is emitted to the refunds topic.
    refund: bool,
}

/// Produces `rate` events per second for `duration`, keyed over `keys` keys, every 20th one
/// schema-invalid; returns what it produced.
async fn load(
    topic: String,
    prefix: String,
    rate: usize,
    duration: Duration,
    keys: usize,
) -> Vec<Produced> {
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1);
    let mut produced = Vec::new();
    let producer = idempotent_producer();
    let started = Instant::now();
    let mut n = 0usize;
    while started.elapsed() < duration {
        let mut batch = Vec::with_capacity(per_tick);
        for _ in 0..per_tick {
            let id = format!("{prefix}-{n}");
            // Every 25th key's orders meet a flaky action service (when the scenario has one).
            let k = n % keys;
            let key = if k % 25 == 0 {
                format!("flaky-{k}")
            } else {
                format!("key-{k}")
            };
            let mut event = if n % 2 == 0 {
                let mut order = order(&id, "/shop/web", 10.0);
                // The HTTP action's URL names the subject.
                order["subject"] = json!(key);
                order
            } else {
                refund(&id, 10.0)
            };
            let valid = n % 20 != 7;
            if !valid {
                event["data"]["currency"] = json!("XXX");
            }
            batch.push(Rec::json(&key, &event));
            produced.push(Produced {
                id,
                key,
                valid,
                refund: n % 2 == 1,
            });
            n += 1;
        }
        produce_with(&producer, &topic, &batch).await;
        let next = tick * u32::try_from(produced.len() / per_tick).unwrap_or(u32::MAX);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    produced
}

/// What a scenario measured.
#[derive(Debug, Default)]
struct Figures {
    produced: usize,
    /// Events that went through the retry topic.
    retried: usize,
    lost: usize,
    duplicated: usize,
    redelivered: usize,
    out_of_order: usize,
    lake_rows: i64,
    lake_ids: i64,
    kills: usize,
    longest_pause: Duration,
    /// From the fault's end until the work it held back was done.
    recovered: Option<Duration>,
    log_lines: usize,
    /// What the scenario observed besides the table's columns.
    notes: Vec<String>,
    violations: Vec<String>,
}

/// When each worker logged that partitions were revoked from it, from the scenario's log.
fn revocations(log: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let mut at: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if !line.contains("partitions revoked") {
            continue;
        }
        let mut words = line.split_whitespace();
        if let (Some(worker), Some(time)) = (words.next(), words.next()) {
            at.entry(worker.to_owned())
                .or_default()
                .push(time.to_owned());
        }
    }
    at
}

/// Whether `worker` logged a revocation between two RFC 3339 times, the first less a few
/// seconds: a record finishing as its partition is revoked may be stamped just after it.
fn revoked_between(
    revocations: &BTreeMap<String, Vec<String>>,
    worker: &str,
    from: &str,
    to: &str,
) -> bool {
    let time = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let (Some(from), Some(to)) = (time(from), time(to)) else {
        return false;
    };
    revocations
        .get(worker)
        .into_iter()
        .flatten()
        .filter_map(|t| time(t))
        .any(|t| from - chrono::TimeDelta::seconds(5) <= t && t <= to)
}

/// Reads back the audit, dead-letter, event topics and the lake, and checks the invariants.
fn reconcile(
    env: &TestEnv,
    lake: &LakeEnv,
    produced: &[Produced],
    killed: &BTreeSet<String>,
    revocations: &BTreeMap<String, Vec<String>>,
    rebalances: bool,
    exactly_once: bool,
) -> Figures {
    let mut f = Figures {
        produced: produced.len(),
        ..Figures::default()
    };
    let audits = audits_by_key(&env.audit);
    // Where and when each event was produced.
    let events: BTreeMap<String, (i32, i64, i64)> = read_all(&env.events)
        .iter()
        .map(|r| {
            (
                r.json()["id"].as_str().unwrap_or_default().to_owned(),
                (r.partition, r.offset, r.timestamp_ms.unwrap_or(0)),
            )
        })
        .collect();
    let final_of = |records: &[Value]| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|a| a["outcome"] != "retrying")
            .map(|a| {
                (
                    a["worker"].as_str().unwrap_or_default().to_owned(),
                    a["processed_at"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let mut first_done: BTreeMap<&str, String> = BTreeMap::new();
    let mut unforeseen: BTreeMap<String, usize> = BTreeMap::new();
    for p in produced {
        let Some(records) = audits.get(&p.id) else {
            f.lost += 1;
            f.violations.push(format!("{}: no audit record", p.id));
            continue;
        };
        if records.iter().any(|a| a["outcome"] == "retrying") {
            f.retried += 1;
        }
        let last = records.last().cloned().unwrap_or_default();
        let want = if p.valid { "actioned" } else { "dead_lettered" };
        if last["outcome"] != want {
            f.lost += 1;
            f.violations.push(format!(
                "{}: final outcome {} (want {want})",
                p.id, last["outcome"]
            ));
        }
        let finals = final_of(records);
        if finals.len() > 1 {
            f.duplicated += 1;
            f.redelivered += finals.len() - 1;
            // Every final record but the last is work whose commit did not happen: the worker
            // was killed, or (with `rebalances`) its partition was taken away meanwhile.
            for (done, again) in finals.iter().zip(&finals[1..]) {
                let worker = &done.0;
                if exactly_once {
                    f.violations.push(format!(
                        "{}: two final audit records under exactly_once, the first by {worker}",
                        p.id
                    ));
                } else if killed.contains(worker) || rebalances {
                } else if revoked_between(revocations, worker, &done.1, &again.1) {
                    // Work in flight when a partition is revoked is done again by its next
                    // owner; where the scenario expects no rebalance, one happened anyway.
                    *unforeseen.entry(worker.clone()).or_default() += 1;
                } else {
                    let trail: Vec<String> = records
                        .iter()
                        .map(|a| {
                            format!(
                                "{} {} {}",
                                a["processed_at"].as_str().unwrap_or_default(),
                                a["worker"].as_str().unwrap_or_default(),
                                a["outcome"].as_str().unwrap_or_default()
                            )
                        })
                        .collect();
                    f.violations.push(format!(
                        "{}: processed twice, first by {worker}, which was neither killed nor had partitions revoked before the repeat; its audit records: {}",
                        p.id,
                        trail.join(", ")
                    ));
                }
            }
        }
        if let Some((_, at)) = finals.first() {
            first_done.insert(&p.id, at.clone());
        }
    }
    for (worker, events) in &unforeseen {
        f.notes.push(format!(
            "{worker} had partitions revoked, unforeseen in this scenario (e.g. a static member back after its session timeout on a loaded machine): {events} of its events were processed again by the next owner"
        ));
    }
    // Per-key order: each key's events, in production order, were first finished in that order.
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in produced {
        by_key.entry(&p.key).or_default().push(&p.id);
    }
    for (key, ids) in &by_key {
        let times: Vec<&String> = ids.iter().filter_map(|id| first_done.get(id)).collect();
        for pair in times.windows(2) {
            if pair[1] < pair[0] {
                f.out_of_order += 1;
                f.violations.push(format!(
                    "key {key}: an event finished before the one produced ahead of it"
                ));
            }
        }
    }
    // The longest time a partition stood still with work waiting: for each offset, from when
    // it could start (produced, and the previous offset done) to when it was first done.
    let mut by_partition: BTreeMap<i32, Vec<(i64, i64, i64)>> = BTreeMap::new();
    // The flaky keys wait in the retry topic by design; they are left out.
    for p in produced.iter().filter(|p| !p.key.starts_with("flaky-")) {
        if let (Some(&(partition, offset, produced_ms)), Some(done)) =
            (events.get(&p.id), first_done.get(p.id.as_str()))
        {
            let done_ms = chrono::DateTime::parse_from_rfc3339(done)
                .map(|t| t.timestamp_millis())
                .unwrap_or(produced_ms);
            by_partition
                .entry(partition)
                .or_default()
                .push((offset, produced_ms, done_ms));
        }
    }
    for rows in by_partition.values_mut() {
        rows.sort_unstable();
        let mut previous_done = i64::MIN;
        for &(_, produced_ms, done_ms) in rows.iter() {
            let ready = produced_ms.max(previous_done);
            let waited = u64::try_from(done_ms - ready).unwrap_or(0);
            f.longest_pause = f.longest_pause.max(Duration::from_millis(waited));
            previous_done = previous_done.max(done_ms);
        }
    }
    // Every bad input is in the dead-letter topic.
    let dead: BTreeSet<String> = read_all(&env.dlq)
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    for p in produced.iter().filter(|p| !p.valid) {
        if !dead.contains(&p.id) {
            f.violations
                .push(format!("{}: bad input not dead-lettered", p.id));
        }
    }
    // Each valid refund's approval was emitted; under exactly_once, once.
    let mut approvals: BTreeMap<String, usize> = BTreeMap::new();
    for r in read_all(&env.refunds_approved) {
        let cause = r.json()["causationid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *approvals.entry(cause).or_default() += 1;
    }
    for p in produced.iter().filter(|p| p.refund && p.valid) {
        match approvals.get(&p.id).copied().unwrap_or(0) {
            0 => f
                .violations
                .push(format!("{}: no refund approval emitted", p.id)),
            1 => {}
            n if exactly_once => f.violations.push(format!(
                "{}: {n} refund approvals emitted under exactly_once",
                p.id
            )),
            _ => {}
        }
    }
    // The lake holds each valid event once.
    let valid = produced.iter().filter(|p| p.valid).count();
    let row = &lake.query(
        "SELECT count(*), count(DISTINCT id) FROM \
         (SELECT id FROM order_placed_raw UNION ALL SELECT id FROM refund_requested_raw)",
    )[0];
    f.lake_rows = row[0].as_i64().unwrap_or(-1);
    f.lake_ids = row[1].as_i64().unwrap_or(-1);
    if f.lake_rows != f.lake_ids {
        f.violations.push(format!(
            "lake: {} rows for {} ids: a file was written twice",
            f.lake_rows, f.lake_ids
        ));
    }
    if usize::try_from(f.lake_ids).ok() != Some(valid) {
        f.violations
            .push(format!("lake: {} of {valid} valid events", f.lake_ids));
    }
    f
}

/// Waits until every produced id has a final audit record, or `limit` passes.
async fn settle(env: &TestEnv, produced: &[Produced], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let audits = audits_by_key(&env.audit);
        let open = produced
            .iter()
            .filter(|p| {
                audits
                    .get(&p.id)
                    .and_then(|a| a.last())
                    .is_none_or(|a| a["outcome"] == "retrying")
            })
            .count();
        if open == 0 || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The fault a scenario applies while the load runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// `kill -9` a random worker every `every` and restart it at once.
    Kill { every: Duration },
    /// SIGTERM one worker at a time and restart it, every `every`.
    Rolling { every: Duration },
    /// Actions workers go from 1 to `peak` and back, one step every `every`.
    Storm { peak: usize, every: Duration },
    /// One actions worker is paused (SIGSTOP) for `pause`, then resumed.
    Zombie { pause: Duration },
    /// The lake's object store (an s3s-fs of the scenario's own) is stopped for `outage`.
    StoreDown { outage: Duration },
    /// The action service answers 503 to every order for `failing`, then answers each after
    /// `delay` for `slow`.
    ServiceDown {
        failing: Duration,
        slow: Duration,
        delay: Duration,
    },
    /// A syntax error is written into the policy directory, and fixed `broken` later.
    BrokenPolicy { broken: Duration },
    /// On a three-broker cluster of the scenario's own: one broker is killed for `node_down`,
    /// later the whole cluster stops for `all_down`.
    BrokersDown {
        node_down: Duration,
        all_down: Duration,
    },
}

pub(crate) struct Scenario {
    pub name: &'static str,
    /// Orders are HTTP actions, and the service fails a burst of calls for the flaky keys every
    /// few seconds, so their events go through the retry topic while the faults happen.
    pub flaky: bool,
    /// `[kafka.group] protocol`.
    pub protocol: &'static str,
    pub actions: usize,
    pub lake: usize,
    pub rate: usize,
    pub duration: Duration,
    pub fault: Fault,
    pub static_members: bool,
    /// Re-processing at a rebalance is expected (records in flight when partitions moved).
    pub rebalances: bool,
    /// `[kafka] guarantee = "exactly_once"`: no audit record or emitted event twice.
    pub exactly_once: bool,
}

/// Waits until consumer group `group` is stable with `members` members.
async fn wait_for_members(group: &str, members: usize) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list = client
            .fetch_group_list(Some(group), Duration::from_secs(5))
            .ok();
        let formed = list.as_ref().is_some_and(|l| {
            l.groups()
                .iter()
                .any(|g| g.state() == "Stable" && g.members().len() == members)
        });
        if formed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} did not form with {members} members within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The machine's load averages, as `/proc/loadavg` gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn random_below(n: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % n.max(1) as u128) as usize
}

async fn run(s: &Scenario) -> Figures {
    // The broker scenario runs on a cluster of its own, which every helper then uses.
    let cluster = matches!(s.fault, Fault::BrokersDown { .. }).then(PrivateCluster::start);
    let _brokers = cluster.as_ref().map(|c| BrokersOverride::set(&c.brokers()));
    // The store outage needs a store of its own to stop; the others write to a local directory.
    let s3 = matches!(s.fault, Fault::StoreDown { .. }).then(PrivateS3::start);
    let lake = match &s3 {
        Some(s3) => LakeEnv::on(
            Store::S3,
            6,
            &format!(
                "max_file_age = \"3s\"\nmax_buffered_bytes = {}",
                faults::MAX_BUFFERED
            ),
            &s3.endpoint(),
        ),
        None => LakeEnv::new(Store::Local, 6, "max_file_age = \"3s\""),
    };
    let env = &lake.env;
    // The broken reload needs a policy directory of its own, polled twice a second.
    let policies = matches!(s.fault, Fault::BrokenPolicy { .. }).then(|| {
        let dir = copy_policies();
        env.use_policies(dir.path(), Duration::from_millis(500));
        dir
    });
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    // On three brokers, reflex's topics are replicated to all three (min.insync.replicas=2 is
    // the cluster's default).
    let text = if cluster.is_some() {
        text.replace(
            "partitions = 6\n",
            "partitions = 6\nreplication_factor = 3\n",
        )
    } else {
        text
    };
    // The test config's session settings are the classic protocol's; the new one takes the
    // broker's.
    let text = match s.protocol {
        "consumer" => text
            .replace("\"session.timeout.ms\" = \"6000\"\n", "")
            .replace("\"heartbeat.interval.ms\" = \"1000\"\n", ""),
        _ => text,
    };
    let service = s.flaky.then(|| std::sync::Arc::new(ActionService::start()));
    let text = match &service {
        Some(service) => {
            let emit = format!(
                "[actions.request_shipment]\nkind = \"emit\"\ntypes = [\"order.placed\"]\ntopic = \"{}\"\ntype = \"shipment.requested\"\n",
                env.shipments
            );
            assert!(text.contains(&emit), "the test config has the emit action");
            let http = format!(
                "[actions.request_shipment]\nkind = \"http\"\ntypes = [\"order.placed\"]\nurl = \"{}/orders/{{subject}}\"\nmax_attempts = 1\n",
                service.url()
            );
            // Retry rounds outlast the service's outage: nothing runs out of them.
            let retries = match s.fault {
                Fault::ServiceDown { failing, .. } => format!(
                    "retry_delay = \"2s\"\nretry_rounds = {}\n",
                    failing.as_secs() / 2 + 10
                ),
                _ => "retry_delay = \"1s\"\nretry_rounds = 8\n".to_owned(),
            };
            // A slow answer is an answer, not a timeout.
            let timeout = match s.fault {
                Fault::ServiceDown { delay, .. } => {
                    format!("timeout = \"{}s\"\n", delay.as_secs() + 5)
                }
                _ => String::new(),
            };
            text.replace(&emit, &format!("{http}{timeout}")).replace(
                "shutdown_timeout = \"20s\"\n",
                &format!("shutdown_timeout = \"20s\"\n{retries}"),
            )
        }
        None => text,
    };
    let text = if s.exactly_once {
        assert!(
            text.contains("[kafka]\n"),
            "the test config has a [kafka] table"
        );
        text.replace("[kafka]\n", "[kafka]\nguarantee = \"exactly_once\"\n")
    } else {
        text
    };
    std::fs::write(
        &env.config_path,
        format!("{text}\n[kafka.group]\nprotocol = \"{}\"\n", s.protocol),
    )
    .expect("config");
    // A burst of failures for the flaky keys every 12 s (unless the whole service goes down).
    let bursts = !matches!(s.fault, Fault::ServiceDown { .. });
    let flaky = service.clone().filter(|_| bursts).map(|service| {
        tokio::spawn(async move {
            loop {
                // Fewer failures in a burst than retry rounds: no event runs out of rounds.
                service.set_behaviour("/orders/flaky-", Behaviour::fail(503, 3));
                tokio::time::sleep(Duration::from_secs(12)).await;
            }
        })
    });
    env.create_topics().await;
    // The workers' log is kept under target/chaos as an artifact of the run, also when the
    // scenario fails.
    let log_path = log_file(s);
    let log = File::create(&log_path).expect("log file");
    let mut fleet = Fleet::new(&lake, s.static_members, log);
    for _ in 0..s.actions {
        fleet.add("actions");
    }
    for _ in 0..s.lake {
        fleet.add("lake");
    }
    // Start the load once the groups are formed, so the rebalances counted are the faults'.
    let config = env.config();
    if s.protocol == "classic" {
        wait_for_members(&config.actions_role.group_id, s.actions).await;
        wait_for_members(&config.lake.group_id, s.lake).await;
    } else {
        // The classic group listing does not show groups of the new protocol; its members are
        // assigned a few seconds after they start.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let loader = tokio::spawn(load(
        env.events.clone(),
        s.name.to_owned(),
        s.rate,
        s.duration,
        1000,
    ));
    let started = Instant::now();
    let mut recovered = None;
    let mut notes = Vec::new();
    let mut violations = Vec::new();
    // Faults until the load ends.
    match s.fault {
        Fault::Kill { every } => {
            while started.elapsed() + every < s.duration {
                tokio::time::sleep(every).await;
                let alive: Vec<usize> = (0..fleet.workers.len())
                    .filter(|&i| fleet.workers[i].child.is_some())
                    .collect();
                let victim = alive[random_below(alive.len())];
                fleet.kill_and_restart(victim);
            }
        }
        Fault::Rolling { every } => {
            let mut next = 0;
            while started.elapsed() + every < s.duration {
                tokio::time::sleep(every).await;
                let index = next % fleet.workers.len();
                fleet.stop(index);
                fleet.spawn(index);
                next += 1;
            }
        }
        Fault::Storm { peak, every } => {
            let mut up = true;
            while started.elapsed() + every < s.duration {
                tokio::time::sleep(every).await;
                let running = fleet.running("actions");
                if up && running.len() < peak {
                    match (0..fleet.workers.len()).find(|&i| {
                        fleet.workers[i].role == "actions" && fleet.workers[i].child.is_none()
                    }) {
                        Some(i) => fleet.spawn(i),
                        None => {
                            fleet.add("actions");
                        }
                    }
                } else if running.len() > 1 {
                    up = false;
                    if let Some(&last) = running.last() {
                        fleet.stop(last);
                    }
                } else {
                    up = true;
                }
            }
        }
        Fault::Zombie { pause } => {
            tokio::time::sleep(s.duration / 4).await;
            let victim = fleet.running("actions")[0];
            fleet.signal(victim, "-STOP");
            tokio::time::sleep(pause).await;
            fleet.signal(victim, "-CONT");
            // Paused past its session timeout, it lost its partitions: what it finishes now
            // may be done again by their new owner.
            let w = &fleet.workers[victim];
            fleet.killed.insert(Fleet::worker_id(w));
            if s.exactly_once {
                // Paused past the transaction timeout too, its producer was fenced: it stops
                // by itself, and is restarted as an orchestrator would.
                tokio::time::sleep(Duration::from_secs(10)).await;
                if fleet.exited(victim) {
                    fleet.spawn(victim);
                }
            }
        }
        Fault::StoreDown { outage } => {
            let s3 = s3.as_ref().expect("the scenario's own store");
            let seen = faults::store_down(s, &fleet, env, s3, outage).await;
            recovered = Some(seen.recovered);
            notes = seen.notes;
            violations = seen.violations;
        }
        Fault::ServiceDown {
            failing,
            slow,
            delay,
        } => {
            let service = service.as_ref().expect("the scenario's action service");
            let seen = faults::service_down(s, &fleet, env, service, failing, slow, delay).await;
            recovered = Some(seen.recovered);
            notes = seen.notes;
            violations = seen.violations;
        }
        Fault::BrokersDown {
            node_down,
            all_down,
        } => {
            let cluster = cluster.as_ref().expect("the scenario's cluster");
            let seen = faults::brokers_down(s, env, cluster, node_down, all_down).await;
            recovered = Some(seen.recovered);
            notes = seen.notes;
            violations = seen.violations;
        }
        Fault::BrokenPolicy { broken } => {
            let dir = policies.as_ref().expect("the scenario's policies");
            let seen = faults::broken_policy(s, &fleet, env, dir.path(), broken).await;
            recovered = Some(seen.recovered);
            notes = seen.notes;
            violations = seen.violations;
        }
    }
    let produced = loader.await.expect("load task");
    if let Some(flaky) = flaky {
        flaky.abort();
    }
    if let Some(service) = &service {
        service.set_behaviour("/orders/flaky-", Behaviour::ok());
    }
    settle(env, &produced, Duration::from_secs(120)).await;
    // Lake files close after max_file_age; give the lake workers time to write them, then stop
    // everything cleanly and let one lake worker drain what is left.
    tokio::time::sleep(Duration::from_secs(4)).await;
    fleet.stop_all();
    lake.drain("lake");
    let mut figures = reconcile(
        env,
        &lake,
        &produced,
        &fleet.killed,
        &revocations(&log_path),
        s.rebalances,
        s.exactly_once,
    );
    figures.kills = fleet.kills;
    figures.recovered = recovered;
    figures.notes.splice(0..0, notes);
    figures.violations.extend(violations);
    figures.log_lines = std::fs::read_to_string(&log_path)
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .count()
        })
        .unwrap_or(0);
    drop(fleet);
    figures
}

fn table(name: &str, s: &Scenario, f: &Figures) -> String {
    format!(
        "| {name} | {}+{} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {:.1} s | {} | {} |",
        s.actions,
        s.lake,
        f.produced,
        f.retried,
        f.kills,
        f.lost,
        f.duplicated,
        f.redelivered,
        f.out_of_order,
        f.violations.len(),
        f.lake_ids,
        f.lake_rows,
        f.longest_pause.as_secs_f64(),
        f.recovered
            .map_or("-".to_owned(), |r| format!("{:.1} s", r.as_secs_f64())),
        f.log_lines,
    )
}

const HEADER: &str = "| scenario | actions+lake | events | via retry | kills | lost | duplicated | re-delivered | out of order | violations | lake ids/rows | longest pause | time to recover | ERROR/WARN lines |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The workers' log of scenario `s`, under target/chaos (made if missing).
pub(crate) fn log_file(s: &Scenario) -> std::path::PathBuf {
    let kept = repo().join("target/chaos");
    std::fs::create_dir_all(&kept).expect("target/chaos");
    let name: String = format!("{}-{}-{}", s.name, s.protocol, guarantee(s))
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    kept.join(format!("{name}.log"))
}

/// Keeps a scenario's row and notes under `target/chaos` (`header.md`, `rows.md`, `notes.md`),
/// which `make chaos` starts afresh and prints as one table at its end; scenarios running side by
/// side each append in one write.
fn keep_in_report(row: &str, name: &str, notes: &str) {
    use std::io::Write;
    let dir = repo().join("target/chaos");
    let append = |file: &str, text: String| -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(file))?
            .write_all(text.as_bytes())
    };
    let kept = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("header.md"), format!("{HEADER}\n")))
        .and_then(|()| append("rows.md", format!("{row}\n")))
        .and_then(|()| append("notes.md", format!("\n{name}:\n{notes}")));
    if let Err(e) = kept {
        eprintln!("target/chaos: the scenario's figures were not kept: {e}");
    }
}

/// Keeps a scenario's figures that have columns of their own (the registry outage) in the notes
/// of `target/chaos/report.md`.
pub(crate) fn keep_note(name: &str, text: &str) {
    use std::io::Write;
    let dir = repo().join("target/chaos");
    let kept = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("notes.md"))?
            .write_all(format!("\n{name}:\n\n{text}").as_bytes())
    });
    if let Err(e) = kept {
        eprintln!("target/chaos: the scenario's figures were not kept: {e}");
    }
}

fn guarantee(s: &Scenario) -> &'static str {
    if s.exactly_once {
        "exactly_once"
    } else {
        "at_least_once"
    }
}

pub(crate) async fn check(s: Scenario) {
    let f = run(&s).await;
    let name = format!("{} ({}, {})", s.name, s.protocol, guarantee(&s));
    let row = table(&name, &s, &f);
    eprintln!("\n{HEADER}\n{row}");
    let mut notes: String = f.notes.iter().map(|n| format!("- {n}\n")).collect();
    notes.push_str(&format!(
        "- machine load (1, 5, 15 min): {}\n",
        load_average()
    ));
    eprint!("{notes}");
    keep_in_report(&row, &name, &notes);
    assert!(
        f.violations.is_empty(),
        "{}: {} violations, e.g. {:?}",
        s.name,
        f.violations.len(),
        &f.violations[..f.violations.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_kill_9_and_restart_with_live_workers() {
    let (duration, every) = if full() {
        (Duration::from_secs(126), Duration::from_secs(6))
    } else {
        (Duration::from_secs(45), Duration::from_secs(9))
    };
    check(Scenario {
        name: "kill -9 + restart",
        protocol: "classic",
        flaky: true,
        actions: 3,
        lake: 2,
        rate: 100,
        duration,
        fault: Fault::Kill { every },
        // Restarted under the same instance id, a worker gets its partitions back without a
        // rebalance: only the killed incarnation's unfinished work is done twice.
        static_members: true,
        rebalances: false,
        exactly_once: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_rebalance_storm() {
    let (duration, peak) = if full() {
        (Duration::from_secs(60), 4)
    } else {
        (Duration::from_secs(36), 3)
    };
    check(Scenario {
        name: "rebalance storm",
        protocol: "classic",
        flaky: true,
        actions: 1,
        lake: 1,
        rate: 100,
        duration,
        fault: Fault::Storm {
            peak,
            every: Duration::from_secs(5),
        },
        static_members: false,
        rebalances: true,
        exactly_once: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_rolling_restart_with_static_members() {
    if !full() {
        return;
    }
    check(Scenario {
        name: "rolling restart (SIGTERM, static members)",
        protocol: "classic",
        flaky: false,
        actions: 3,
        lake: 1,
        rate: 100,
        duration: Duration::from_secs(45),
        fault: Fault::Rolling {
            every: Duration::from_secs(8),
        },
        static_members: true,
        // Static members restart without a rebalance, and a clean stop commits all it did.
        rebalances: false,
        exactly_once: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_zombie_worker() {
    if !full() {
        return;
    }
    check(Scenario {
        name: "zombie (SIGSTOP past the session timeout)",
        protocol: "classic",
        flaky: false,
        actions: 2,
        lake: 1,
        rate: 100,
        duration: Duration::from_secs(45),
        fault: Fault::Zombie {
            pause: Duration::from_secs(20),
        },
        static_members: false,
        rebalances: true,
        exactly_once: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_kill_9_under_the_consumer_protocol() {
    if !full() {
        return;
    }
    check(Scenario {
        name: "kill -9 + restart",
        protocol: "consumer",
        flaky: true,
        actions: 3,
        lake: 2,
        rate: 100,
        duration: Duration::from_secs(60),
        fault: Fault::Kill {
            every: Duration::from_secs(9),
        },
        // A static member restarted before the broker's session timeout is refused
        // (UnreleasedInstanceId) under this protocol: the replacement joins as a new member, and
        // the broker moves partitions to it from the others, whose records in flight run again.
        static_members: false,
        rebalances: true,
        exactly_once: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_rebalance_storm_under_the_consumer_protocol() {
    if !full() {
        return;
    }
    check(Scenario {
        name: "rebalance storm",
        protocol: "consumer",
        flaky: true,
        actions: 1,
        lake: 1,
        rate: 100,
        duration: Duration::from_secs(60),
        fault: Fault::Storm {
            peak: 4,
            every: Duration::from_secs(5),
        },
        static_members: false,
        rebalances: true,
        exactly_once: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_kill_9_under_exactly_once() {
    let (duration, every) = if full() {
        (Duration::from_secs(90), Duration::from_secs(6))
    } else {
        (Duration::from_secs(45), Duration::from_secs(9))
    };
    check(Scenario {
        name: "kill -9 + restart",
        protocol: "classic",
        flaky: true,
        actions: 3,
        lake: 2,
        rate: 100,
        duration,
        fault: Fault::Kill { every },
        static_members: true,
        rebalances: false,
        // Outputs and offsets are committed together: what a killed worker did since its last
        // commit is aborted, and a read_committed reader sees each event's outcome once.
        exactly_once: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_zombie_worker_under_exactly_once() {
    if !full() {
        return;
    }
    check(Scenario {
        name: "zombie (SIGSTOP past the session timeout)",
        protocol: "classic",
        flaky: false,
        actions: 2,
        lake: 1,
        rate: 100,
        duration: Duration::from_secs(45),
        fault: Fault::Zombie {
            pause: Duration::from_secs(20),
        },
        static_members: false,
        rebalances: true,
        // The zombie's transaction cannot commit for partitions it lost: it is aborted, and
        // nothing the zombie did after its pause is visible.
        exactly_once: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_rebalance_storm_under_exactly_once() {
    if !full() {
        return;
    }
    check(Scenario {
        name: "rebalance storm",
        protocol: "classic",
        flaky: true,
        actions: 1,
        lake: 1,
        rate: 100,
        duration: Duration::from_secs(60),
        fault: Fault::Storm {
            peak: 4,
            every: Duration::from_secs(5),
        },
        static_members: false,
        rebalances: true,
        // The open transaction is committed before partitions are revoked, and what was in
        // flight for them is dropped uncommitted: the next owner's answer is the only one.
        exactly_once: true,
    })
    .await;
}
