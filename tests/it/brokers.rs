//! Against the three-broker cluster of `make up BROKERS=3`, so ignored by `make test`; run with
//! `REFLEX_TEST_BROKERS=127.0.0.1:9092,127.0.0.1:9102,127.0.0.1:9112 cargo test --test it brokers
//! -- --ignored` (`REFLEX_TEST_KILL_BROKER` picks the node to crash, 2 by default; the stack's
//! `REFLEX_STACK_DIR` and port variables are passed on to `scripts/stack.sh`).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::lake::wait_output;

fn stack(args: &[&str]) {
    let status = Command::new(repo().join("scripts/stack.sh"))
        .args(args)
        .status()
        .expect("scripts/stack.sh runs");
    assert!(status.success(), "scripts/stack.sh {args:?}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the three-broker cluster: make up BROKERS=3"]
async fn actions_worker_loses_nothing_while_a_broker_is_down_for_20_s() {
    let node = std::env::var("REFLEX_TEST_KILL_BROKER").unwrap_or_else(|_| "2".into());
    let env = TestEnv::new(3);
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = text.replace(
        "partitions = 3\n",
        "partitions = 3\nreplication_factor = 3\n",
    );
    std::fs::write(&env.config_path, text).expect("write config");
    env.create_topics().await;
    const TOTAL: usize = 3000;
    let all = crate::crash::events(0..TOTAL);
    let ids: BTreeSet<String> = all.iter().map(|(id, _)| id.clone()).collect();
    let records: Vec<Rec> = all.into_iter().map(|(_, r)| r).collect();
    let log = env.config_path.with_file_name("worker.log");
    let worker = Command::new(reflex_bin())
        .args(["run", "--role", "actions", "--worker-id", "brokers"])
        .env("REFLEX_CONFIG", &env.config_path)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("reflex starts");
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();

    produce(&env.events, &records[..TOTAL / 3]).await;
    let before = lines().lines().count();
    stack(&["kill-broker", &node]);
    let down = Instant::now();
    produce(&env.events, &records[TOTAL / 3..2 * TOTAL / 3]).await;
    let rest = Duration::from_secs(20).saturating_sub(down.elapsed());
    tokio::time::sleep(rest).await;
    let during: Vec<String> = lines()
        .lines()
        .skip(before)
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .map(str::to_owned)
        .collect();
    let outage = down.elapsed();
    stack(&["start-broker", &node]);
    produce(&env.events, &records[2 * TOTAL / 3..]).await;

    let audits = wait_for_audits(&env.audit, TOTAL).await;
    let status = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = wait_output(worker, Duration::from_secs(60));
    eprintln!(
        "{}{} ERROR/WARN lines while node {node} was down for {:?}:\n{}",
        String::from_utf8_lossy(&out.stdout),
        during.len(),
        outage,
        during.join("\n")
    );
    assert!(out.status.success(), "clean exit after SIGTERM");
    let audited: BTreeSet<String> = audits.keys().cloned().collect();
    let missing: Vec<&String> = ids.difference(&audited).collect();
    assert!(missing.is_empty(), "no audit record for {missing:?}");
}
