//! Policy management end to end: hot reload in a running worker, a refused reload, the
//! `reflex policy` commands, and shadow replay against the audit trail.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reflex::policy::files;
use reflex::policy::telemetry;
use reflex::policy::PolicyEngine;
use reflex::replay::{self, ReplayOptions};
use reflex::role::actions::{self as worker, RunOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::*;

fn set_refund_limit(policies: &Path, eur: u32) {
    let path = policies.join("data/limits.json");
    let mut limits: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    limits["limits"]["refund_auto_approve"]["EUR"] = json!(eur);
    std::fs::write(&path, limits.to_string()).expect("write limits");
}

fn refunds(prefix: &str, n: usize, amount: f64) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            Rec::json(&id, &refund(&id, amount))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_changes_decisions_from_one_offset_on_and_a_broken_set_changes_nothing() {
    let policies = copy_policies();
    let env = TestEnv::new(1);
    env.use_policies(policies.path(), Duration::from_millis(100));
    env.create_topics().await;
    let config = env.config();
    let first = config.policy.revision().to_owned();

    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let options = RunOptions {
                worker_id: "reload-worker".into(),
                drain: false,
            };
            worker::run(&config, options, shutdown).await
        }
    });

    // Under the shipped limit (500 EUR) a 300 EUR refund is approved.
    produce(&env.events, &refunds("before", 5, 300.0)).await;
    wait_for_audits(&env.audit, 5).await;

    // Lower the limit while the worker runs: the next records are decided by the new revision.
    set_refund_limit(policies.path(), 100);
    let second = files::revision(policies.path()).expect("revision");
    assert_ne!(first, second);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    produce(&env.events, &refunds("after", 5, 300.0)).await;
    wait_for_audits(&env.audit, 10).await;

    // A set that does not compile is refused: the running revision stays, decisions do not move.
    let refused_before = telemetry::refused_reloads();
    std::fs::write(
        policies.path().join("broken.rego"),
        "package reflex.broken\ndeny contains \"x\" if {",
    )
    .expect("write broken module");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    produce(&env.events, &refunds("broken", 5, 300.0)).await;
    let audits = wait_for_audits(&env.audit, 15).await;
    assert!(
        telemetry::refused_reloads() > refused_before,
        "the refusal is counted"
    );

    shutdown.cancel();
    worker
        .await
        .expect("worker task")
        .expect("worker stops cleanly");

    let mut by_offset: Vec<&Value> = audits.values().map(|records| &records[0]).collect();
    by_offset.sort_by_key(|a| a["offset"].as_i64());
    let switch = by_offset
        .iter()
        .position(|a| a["outcome"] == "denied")
        .expect("some refunds are denied after the reload");
    for (i, audit) in by_offset.iter().enumerate() {
        let id = audit["event_id"].as_str().expect("event id");
        if i < switch {
            assert!(id.starts_with("before-"), "{id} allowed: {audit}");
            assert_eq!(audit["outcome"], "actioned", "{audit}");
            assert_eq!(audit["policy_revision"], first.as_str(), "{audit}");
        } else {
            assert!(!id.starts_with("before-"), "{id} decided after the reload");
            assert_eq!(audit["outcome"], "denied", "{audit}");
            assert_eq!(
                audit["decision"]["reasons"],
                json!(["refund above the automatic approval limit"])
            );
            assert_eq!(
                audit["policy_revision"],
                second.as_str(),
                "the broken set never ran: {audit}"
            );
        }
    }
    assert_eq!(switch, 5, "the five events before the reload were approved");

    // `reflex policy status` shows the refused directory and the revision the worker ran.
    let output = Command::new(reflex_bin())
        .arg("--config")
        .arg(&env.config_path)
        .args(["policy", "status"])
        .output()
        .expect("run reflex policy status");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a refused directory exits non-zero: {stdout}"
    );
    assert!(
        stdout.contains("REFUSED") && stdout.contains("broken.rego"),
        "{stdout}"
    );
    assert!(
        stdout.contains("reload-worker") && stdout.contains(&second),
        "{stdout}"
    );
    assert!(stdout.contains("running (directory refused)"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_shows_what_a_candidate_would_change_and_reproduces_the_recorded_decisions() {
    let env = TestEnv::new(2);
    env.create_topics().await;
    let stale_payment = json!({
        "specversion": "1.0", "id": "pay-stale", "source": "/payments/gateway", "type": "payment.authorized",
        "time": (chrono::Utc::now() - chrono::Duration::minutes(20)).to_rfc3339(),
        "data": {"payment_id": "pay-1", "order_id": "ord-1", "amount": 10.0, "currency": "EUR", "method": "card", "card_last4": "4242"}
    });
    let mut records = refunds("small", 3, 50.0);
    records.extend(refunds("medium", 4, 300.0));
    records.extend(refunds("large", 2, 900.0));
    records.push(Rec::json("o1", &order("order-ok", "/shop/web", 20.0)));
    records.push(Rec::json("p1", &stale_payment));
    records.push(Rec::raw("junk", b"not an event"));
    produce(&env.events, &records).await;
    let config = env.config();
    tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(
            &config,
            RunOptions {
                worker_id: "replay-recorder".into(),
                drain: true,
            },
            CancellationToken::new(),
        ),
    )
    .await
    .expect("drains")
    .expect("runs");

    // The stale payment was denied and its SLA breach published, without the card digits.
    let breaches = read_all(&env.policy_events);
    assert_eq!(breaches.len(), 1, "one SLA breach event");
    let breach = breaches[0].json();
    assert_eq!(breach["type"], "reflex.sla.breached");
    assert_eq!(breach["causationid"], "pay-stale");
    assert_eq!(breach["data"]["deadline_seconds"], 900);
    assert!(breach["data"]["age_seconds"]
        .as_f64()
        .is_some_and(|a| a >= 1200.0));

    // The shipment derived from the order carries the order's data without the customer id.
    let shipments = read_all(&env.shipments);
    assert_eq!(shipments.len(), 1);
    let shipment = shipments[0].json();
    assert_eq!(shipment["causationid"], "order-ok");
    assert_eq!(shipment["data"]["amount"], 20.0);
    assert!(
        shipment["data"].get("customer_id").is_none(),
        "redacted: {shipment}"
    );

    // The same policies reproduce every recorded decision, the time-dependent one included.
    let same = replay::replay(
        &config,
        &ReplayOptions {
            candidate: repo().join("policies"),
            topics: vec![],
            from_offset: None,
            max_events: None,
        },
    )
    .await
    .expect("replay");
    assert_eq!(same.compared(), 11, "{same}");
    assert_eq!(same.changed(), 0, "{same}");
    assert_eq!(
        same.skipped.values().sum::<u64>(),
        1,
        "the undecodable record: {same}"
    );

    // A lower refund limit turns exactly the medium refunds from allowed to denied.
    let candidate = copy_policies();
    set_refund_limit(candidate.path(), 100);
    let output = Command::new(reflex_bin())
        .args(["--config"])
        .arg(&env.config_path)
        .args(["policy", "replay", "--candidate"])
        .arg(candidate.path())
        .output()
        .expect("run reflex policy replay");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(
            "4 × refund.requested: allow → deny: refund above the automatic approval limit"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("e.g. medium-"), "{stdout}");
    assert!(
        stdout.ends_with("4 of 11 decisions would change\n"),
        "{stdout}"
    );
    let output = Command::new(reflex_bin())
        .args(["--config"])
        .arg(&env.config_path)
        .args(["policy", "replay", "--json", "--candidate"])
        .arg(candidate.path())
        .output()
        .expect("run reflex policy replay --json");
    let json: Value = serde_json::from_slice(&output.stdout).expect("replay --json prints JSON");
    assert_eq!(
        json["transitions"],
        json!([{"type": "refund.requested", "before": "allow",
                "after": "deny: refund above the automatic approval limit", "value": 4}])
    );
    let report = replay::replay(
        &config,
        &ReplayOptions {
            candidate: candidate.path().to_owned(),
            topics: vec![],
            from_offset: None,
            max_events: None,
        },
    )
    .await
    .expect("replay");
    let refunds = &report.types["refund.requested"];
    assert_eq!(
        (refunds.compared, refunds.allow_to_deny, refunds.unchanged),
        (9, 4, 5)
    );
    assert_eq!(report.types["payment.authorized"].unchanged, 1);
}

fn reflex_policy(args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new(reflex_bin())
        .args(["--config"])
        .arg(repo().join("config/reflex.toml"))
        .arg("policy")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run reflex policy");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn policy_test_passes_on_the_repository_and_fails_with_the_decision_it_got() {
    let (ok, out) = reflex_policy(&["test"], &repo().join("policies"));
    assert!(ok, "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");

    let policies = copy_policies();
    std::fs::write(
        policies.path().join("tests/wrong.yaml"),
        r#"cases:
  - note: a large refund is not approved automatically
    input: {event: {id: r, source: /support/desk, type: refund.requested, data: {amount: 10, currency: EUR}}, publisher: {verified: true, key_id: support-desk}}
    want: {allow: false}
"#,
    )
    .expect("write case");
    let (ok, out) = reflex_policy(&["test"], policies.path());
    assert!(!ok, "a failing case exits non-zero: {out}");
    assert!(
        out.contains("FAIL tests/wrong.yaml: a large refund is not approved automatically"),
        "{out}"
    );
    assert!(out.contains("got:  {\"allow\":true"), "{out}");
    assert!(out.contains(" passed, 1 failed"), "{out}");

    std::fs::write(policies.path().join("broken.rego"), "package x\ny := {").expect("write");
    let (ok, out) = reflex_policy(&["check"], policies.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("REFUSED") && out.contains("broken.rego"),
        "{out}"
    );
}

/// `reflex policy <args> --dir <dir> --json`: whether it succeeded, and the JSON it printed.
fn reflex_policy_json(args: &[&str], dir: &Path) -> (bool, Value) {
    let output = Command::new(reflex_bin())
        .args(["--config"])
        .arg(repo().join("config/reflex.toml"))
        .arg("policy")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--json")
        .output()
        .expect("run reflex policy");
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "policy {args:?} --json is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), json)
}

#[test]
fn policy_check_and_test_as_json() {
    let repo_policies = repo().join("policies");
    let (ok, check) = reflex_policy_json(&["check"], &repo_policies);
    assert!(ok, "{check}");
    assert_eq!(check["status"], "ok", "{check}");
    assert_eq!(check["entry"], "data.reflex.decision", "{check}");
    assert_eq!(
        check["revision"],
        files::revision(&repo_policies).expect("revision").as_str()
    );
    let (ok, tests) = reflex_policy_json(&["test"], &repo_policies);
    assert!(ok, "{tests}");
    assert_eq!(tests["failed"], 0, "{tests}");
    assert!(tests["passed"].as_u64().is_some_and(|n| n > 0), "{tests}");

    let policies = copy_policies();
    std::fs::write(
        policies.path().join("tests/wrong.yaml"),
        r#"cases:
  - note: a large refund is not approved automatically
    input: {event: {id: r, source: /support/desk, type: refund.requested, data: {amount: 10, currency: EUR}}, publisher: {verified: true, key_id: support-desk}}
    want: {allow: false}
"#,
    )
    .expect("write case");
    let (ok, tests) = reflex_policy_json(&["test"], policies.path());
    assert!(!ok, "a failing case exits non-zero: {tests}");
    assert_eq!(tests["failed"], 1, "{tests}");
    let failed: Vec<&Value> = tests["tests"]
        .as_array()
        .map(|t| t.iter().filter(|t| t["passed"] == false).collect())
        .unwrap_or_default();
    assert_eq!(
        failed[0]["name"],
        "tests/wrong.yaml: a large refund is not approved automatically"
    );
    assert_eq!(failed[0]["got"]["allow"], true, "{tests}");

    std::fs::write(policies.path().join("broken.rego"), "package x\ny := {").expect("write");
    let (ok, check) = reflex_policy_json(&["check"], policies.path());
    assert!(!ok, "{check}");
    assert_eq!(check["status"], "refused", "{check}");
    assert!(
        check["error"]
            .as_str()
            .is_some_and(|e| e.contains("broken.rego")),
        "{check}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_status_as_json_with_no_decisions_yet() {
    let env = TestEnv::new(1);
    env.create_topics().await;
    let output = Command::new(reflex_bin())
        .arg("--config")
        .arg(&env.config_path)
        .args(["policy", "status", "--tail", "10", "--json"])
        .output()
        .expect("run reflex policy status");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: Value = serde_json::from_slice(&output.stdout).expect("status --json prints JSON");
    assert_eq!(status["audit_topic"], env.audit.as_str(), "{status}");
    assert_eq!(status["refused"], Value::Null, "{status}");
    assert_eq!(status["workers"], json!([]), "{status}");
    assert_eq!(
        status["revision"],
        files::revision(&repo().join("policies"))
            .expect("revision")
            .as_str()
    );
    // The repository's policies are proved compiled-safe: `auto` compiles them.
    assert_eq!(status["configured_engine"], "auto", "{status}");
    assert_eq!(status["engine"], "compiled", "{status}");
    assert_eq!(status["not_compiled"], json!([]), "{status}");

    // A deny rule that may divide by zero: the set is decided by the interpreter, and why.
    let policies = copy_policies();
    std::fs::write(
        policies.path().join("ratio.rego"),
        "package reflex.business\n\n\
         deny contains \"too many per item\" if input.event.data.amount / input.event.data.n > 10\n",
    )
    .expect("write module");
    env.use_policies(policies.path(), Duration::from_secs(2));
    let output = Command::new(reflex_bin())
        .arg("--config")
        .arg(&env.config_path)
        .args(["policy", "status", "--tail", "10"])
        .output()
        .expect("run reflex policy status");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("engine: interpreter (auto: not proved compiled-safe)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ratio.rego:3: division input.event.data.amount / input.event.data.n may raise: the divisor is not a non-zero constant"),
        "{stdout}"
    );
}

#[test]
fn policy_eval_prints_the_decision_and_the_rules_that_fired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        json!({"specversion": "1.0", "id": "r-1", "source": "/support/desk", "type": "refund.requested",
               "time": "2026-03-01T10:00:00Z",
               "data": {"refund_id": "ref-1", "order_id": "ord-1", "amount": 900, "currency": "EUR", "reason": "goodwill"}})
        .to_string(),
    )
    .expect("write event");
    let (ok, out) = reflex_policy(
        &[
            "eval",
            "--now",
            "2026-03-01T10:00:05Z",
            "--signed-by",
            "support-desk",
            "--input",
            event.to_str().expect("utf-8"),
        ],
        &repo().join("policies"),
    );
    assert!(ok, "{out}");
    assert!(
        out.starts_with("decision: deny\n  reason: refund above the automatic approval limit\n"),
        "{out}"
    );
    assert!(
        out.contains("data.reflex.business.deny = [\"refund above the automatic approval limit\"]"),
        "{out}"
    );
    let (ok, out) = reflex_policy(
        &["eval", "--input", event.to_str().expect("utf-8")],
        &repo().join("policies"),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("reason: a verified publisher signature is required for this event type"),
        "a bare event is decided unsigned: {out}"
    );
}

/// A payment authorization `age_minutes` old (the SLA deadline is 15 minutes).
fn payment(id: &str, age_minutes: i64) -> Value {
    let time = chrono::Utc::now() - chrono::Duration::minutes(age_minutes);
    json!({
        "specversion": "1.0", "id": id, "source": "/payments/gateway", "type": "payment.authorized",
        "time": time.to_rfc3339(),
        "data": {"payment_id": "pay-1", "order_id": "ord-1", "amount": 20.0, "currency": "EUR",
                 "method": "card", "card_last4": "4242"}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_policies_decide_with_the_compiled_engine_by_default_as_the_interpreter_does() {
    let env = TestEnv::new(2);
    // Every compiled decision is decided by the interpreter too.
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    std::fs::write(
        &env.config_path,
        text.replace(
            "timeout = \"5s\"\n",
            "timeout = \"5s\"\ncross_check_every = 1\n",
        ),
    )
    .expect("write config");
    env.create_topics().await;
    let config = env.config();
    // The default engine is auto, and the repository's policies are proved compiled-safe.
    assert_eq!(config.policy.configured_engine(), PolicyEngine::Auto);
    assert_eq!(config.policy.not_compiled(), [] as [String; 0]);
    assert_eq!(config.policy.engine(), PolicyEngine::Compiled);

    // One event for each way the demo decides.
    let records = vec![
        Rec::json("allowed-order", &order("allowed-order", "/shop/web", 99.5)),
        Rec::json("big-order", &order("big-order", "/shop/web", 20_000.0)),
        Rec::json(
            "intruder-order",
            &order("intruder-order", "/shop/intruder", 5.0),
        ),
        Rec::json("small-refund", &refund("small-refund", 100.0)),
        Rec::json("big-refund", &refund("big-refund", 900.0)),
        Rec::unsigned("unsigned-refund", &refund("unsigned-refund", 100.0)),
        Rec::json("fresh-payment", &payment("fresh-payment", 1)),
        Rec::json("late-payment", &payment("late-payment", 60)),
    ];
    let expected: Vec<(&str, Vec<&str>)> = vec![
        ("allowed-order", vec![]),
        ("big-order", vec!["order above the single-order limit"]),
        (
            "intruder-order",
            vec!["source is not allowed to publish this event type"],
        ),
        ("small-refund", vec![]),
        (
            "big-refund",
            vec!["refund above the automatic approval limit"],
        ),
        (
            "unsigned-refund",
            vec!["a verified publisher signature is required for this event type"],
        ),
        ("fresh-payment", vec![]),
        ("late-payment", vec!["event older than its SLA deadline"]),
    ];
    let (checks, disagreements) = (
        telemetry::cross_checks(),
        telemetry::cross_check_disagreements(),
    );
    produce(&env.events, &records).await;
    let options = RunOptions {
        worker_id: "compiled-worker".into(),
        drain: true,
    };
    worker::run(&config, options, CancellationToken::new())
        .await
        .expect("the worker drains the topic");

    let audits = wait_for_audits(&env.audit, records.len()).await;
    for (id, reasons) in &expected {
        let audit = &audits[*id][0];
        assert_eq!(
            audit["decision"]["allow"],
            reasons.is_empty(),
            "{id}: {audit}"
        );
        assert_eq!(
            audit["decision"]["reasons"],
            json!(reasons),
            "{id}: {audit}"
        );
        assert!(
            audit["decision"].get("failure").is_none(),
            "{id} decided without failing closed: {audit}"
        );
    }
    // The late payment's decision asks for a breach event, from the compiled engine as well.
    let emits = &audits["late-payment"][0]["decision"]["obligations"]["emit"];
    assert_eq!(emits[0]["type"], "reflex.sla.breached", "{emits}");
    // Each decision was also decided by the interpreter, and none differed.
    assert!(
        telemetry::cross_checks() >= checks + records.len() as u64,
        "every decision is cross-checked"
    );
    assert_eq!(
        telemetry::cross_check_disagreements(),
        disagreements,
        "the compiled engine and the interpreter decide the demo alike"
    );
}
