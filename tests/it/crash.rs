//! Crash safety and clean shutdown of the `reflex` binary against a real broker.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

fn spawn_worker(env: &TestEnv, worker_id: &str, drain: bool) -> Child {
    let mut cmd = Command::new(reflex_bin());
    cmd.args(["run", "--role", "actions", "--worker-id", worker_id])
        .env("REFLEX_CONFIG", &env.config_path)
        .env("REFLEX_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if drain {
        cmd.arg("--drain");
    }
    cmd.spawn().expect("reflex starts")
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("reflex did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Events of a stream: valid orders and refunds, with every 10th schema-invalid.
pub fn events(range: std::ops::Range<usize>) -> Vec<(String, Rec)> {
    range
        .map(|n| {
            let id = format!("ev-{n}");
            let mut event = if n % 2 == 0 {
                order(&id, "/shop/web", 10.0)
            } else {
                refund(&id, 10.0)
            };
            if n % 10 == 0 {
                event["data"]["currency"] = json!("XXX");
            }
            (id.clone(), Rec::json(&format!("key-{}", n % 37), &event))
        })
        .collect()
}

fn random_millis(low: u64, high: u64) -> u64 {
    low + (uuid::Uuid::new_v4().as_u128() % u128::from(high - low)) as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_loses_nothing() {
    let env = TestEnv::new(3);
    env.create_topics().await;
    const TOTAL: usize = 6000;
    let all = events(0..TOTAL);
    let ids: BTreeSet<String> = all.iter().map(|(id, _)| id.clone()).collect();
    let records: Vec<Rec> = all.into_iter().map(|(_, r)| r).collect();

    // Produce in waves while workers are killed, so kills land mid-stream.
    let topic = env.events.clone();
    let producer = tokio::spawn(async move {
        for wave in records.chunks(300) {
            produce(&topic, wave).await;
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
    });

    // A killed member keeps its partitions until its session times out (6 s in the test
    // config), so each worker lives long enough to be assigned partitions and work on them.
    let mut killed = BTreeSet::new();
    for round in 0..4 {
        let worker_id = format!("killed-{round}");
        let mut child = spawn_worker(&env, &worker_id, false);
        tokio::time::sleep(Duration::from_millis(random_millis(7000, 10000))).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        killed.insert(worker_id);
    }
    producer.await.expect("producer task");

    let mut last = spawn_worker(&env, "final", true);
    let status =
        tokio::task::spawn_blocking(move || wait_with_timeout(&mut last, Duration::from_secs(180)))
            .await
            .expect("join");
    assert!(status.success(), "final drain exits cleanly: {status}");

    let audits = audits_by_key(&env.audit);
    let audited: BTreeSet<String> = audits.keys().cloned().collect();
    let missing: Vec<&String> = ids.difference(&audited).collect();
    if !missing.is_empty() {
        let located: Vec<String> = read_all(&env.events)
            .iter()
            .filter(|r| {
                missing.iter().any(|m| {
                    r.value
                        .as_deref()
                        .is_some_and(|v| String::from_utf8_lossy(v).contains(&format!("\"{m}\"")))
                })
            })
            .take(10)
            .map(|r| format!("{}@{}", r.partition, r.offset))
            .collect();
        panic!(
            "{} events have no audit record, e.g. {:?} at {located:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    assert_eq!(
        audited.len(),
        TOTAL,
        "no audit record for an event that was not produced"
    );

    let mut duplicates = 0;
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for (id, records) in &audits {
        for r in records {
            *by_worker
                .entry(r["worker"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        // Every audit record but the last must come from a worker that was killed before its
        // offset commit: a re-delivery of work in flight at the kill.
        for r in &records[..records.len() - 1] {
            duplicates += 1;
            let worker = r["worker"].as_str().unwrap_or_default();
            assert!(
                killed.contains(worker),
                "event {id} audited twice, first by {worker}, which was not killed"
            );
        }
        let last = records.last().cloned().unwrap_or_default();
        let outcome = last["outcome"].as_str().unwrap_or_default();
        let n: usize = id.trim_start_matches("ev-").parse().expect("numbered id");
        let expected = if n % 10 == 0 {
            "dead_lettered"
        } else {
            "actioned"
        };
        assert_eq!(outcome, expected, "{id}: {last}");
    }
    let working = by_worker
        .keys()
        .filter(|w| w.starts_with("killed-"))
        .count();
    assert!(
        working >= 2,
        "at least two killed workers did real work: {by_worker:?}"
    );
    let dlq_ids: BTreeSet<String> = read_all(&env.dlq)
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        dlq_ids.len(),
        TOTAL / 10,
        "every invalid event reached the dead-letter topic"
    );
    eprintln!("kill -9 x4: {TOTAL} events, {duplicates} re-deliveries, audit records by worker {by_worker:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_commits() {
    let env = TestEnv::new(3);
    env.create_topics().await;
    const TOTAL: usize = 3000;
    let all = events(0..TOTAL);
    let records: Vec<Rec> = all.into_iter().map(|(_, r)| r).collect();
    let mut child = spawn_worker(&env, "terminated", false);
    produce(&env.events, &records).await;
    // Wait until the worker is visibly mid-stream, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_all(&env.audit).is_empty() {
        assert!(
            Instant::now() < deadline,
            "worker produced no audit record within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let status =
        tokio::task::spawn_blocking(move || wait_with_timeout(&mut child, Duration::from_secs(60)))
            .await
            .expect("join");
    assert!(status.success(), "SIGTERM is a clean stop: {status}");

    let mut rest = spawn_worker(&env, "after", true);
    let status =
        tokio::task::spawn_blocking(move || wait_with_timeout(&mut rest, Duration::from_secs(120)))
            .await
            .expect("join");
    assert!(status.success());
    let audits = audits_by_key(&env.audit);
    assert_eq!(audits.len(), TOTAL);
    let twice: Vec<&String> = audits
        .iter()
        .filter(|(_, r)| r.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        twice.is_empty(),
        "after a clean stop nothing is processed twice, but {} were: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
}
