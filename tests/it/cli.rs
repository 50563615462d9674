//! The command line as a user meets it: `reflex check`, `reflex topics` and `reflex produce`,
//! as text and as JSON.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common::*;

fn reflex(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(reflex_bin())
        .args(args)
        .env("REFLEX_CONFIG", config)
        .env("REFLEX_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reflex starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("reflex exits")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let dest = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy");
        }
    }
}

/// A copy of the repository's config, schemas and policies that a test may break.
fn sandbox() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for d in ["config", "schemas", "policies", "analytics"] {
        copy_dir(&repo().join(d), &dir.path().join(d));
    }
    dir
}

fn check(dir: &Path) -> (bool, String) {
    let out = reflex(&dir.join("config/reflex.toml"), &["check"], None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_accepts_the_repository_config() {
    let (ok, text) = check(sandbox().path());
    assert!(ok, "{text}");
    assert!(
        text.contains("order.placed -> request_shipment (emit)"),
        "{text}"
    );
    assert!(
        text.contains("analysis payment_not_settled: payment.authorized, payment.settled -> reflex.analytics.payment_not_settled"),
        "{text}"
    );
}

#[test]
fn analytics_test_passes_on_the_repository_cases_and_fails_on_a_wrong_one() {
    let dir = sandbox();
    let config = dir.path().join("config/reflex.toml");
    let out = reflex(&config, &["analytics", "test"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 cases passed, 0 failed"), "{text}");
    let cases = dir.path().join("analytics/tests/shop.yaml");
    let wrong = std::fs::read_to_string(&cases).expect("read").replace(
        "values: {refunds: 3, total: 55",
        "values: {refunds: 4, total: 55",
    );
    std::fs::write(&cases, wrong).expect("write");
    let out = reflex(&config, &["analytics", "test", "--json"], None);
    assert!(!out.status.success());
    let report = json_of(&out);
    let failed: Vec<&Value> = report["outcomes"]
        .as_array()
        .expect("outcomes")
        .iter()
        .filter(|o| o["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{report}");
    assert_eq!(
        failed[0]["missing"][0]["data"]["values"]["refunds"], 4,
        "{report}"
    );
    assert_eq!(
        failed[0]["unexpected"][0]["data"]["values"]["refunds"], 3.0,
        "{report}"
    );
}

/// Parses a command's standard output as JSON.
fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn check_json_names_each_type_its_action_and_lookups() {
    let dir = sandbox();
    let out = reflex(
        &dir.path().join("config/reflex.toml"),
        &["check", "--json"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    let action = |ty: &str| {
        report["actions"]
            .as_array()
            .and_then(|all| all.iter().find(|a| a["event_type"] == ty))
            .cloned()
            .unwrap_or_else(|| panic!("no action for {ty}: {report}"))
    };
    let placed = action("order.placed");
    assert_eq!(placed["action"], "request_shipment");
    assert_eq!(placed["kind"], "emit");
    assert_eq!(placed["enrichment"][0]["name"], "customer");
    assert_eq!(placed["enrichment"][0]["on_error"], "continue");
    let payment = action("payment.authorized");
    assert_eq!(payment["http"]["method"], "POST");
    assert_eq!(payment["http"]["max_attempts"], 4);
    assert_eq!(
        report["schemas"]["types"].as_array().map(Vec::len),
        Some(7),
        "{report}"
    );
    assert!(
        report["policies"]["revision"]
            .as_str()
            .is_some_and(|r| r.starts_with("sha256:")),
        "{report}"
    );
}

/// Breaks a copy of the repository in one way.
type Breaker = Box<dyn Fn(&Path)>;

#[test]
fn check_names_each_configuration_error() {
    let cases: Vec<(&str, Breaker, &str)> = vec![
        (
            "two actions",
            Box::new(|d: &Path| {
                let p = d.join("config/reflex.toml");
                let text = std::fs::read_to_string(&p).expect("read")
                    + "\n[actions.second]\nkind = \"log\"\ntypes = [\"refund.requested\"]\n";
                std::fs::write(p, text).expect("write");
            }),
            "event type \"refund.requested\" has two actions: \"approve_refund\" and \"second\"",
        ),
        (
            "no action",
            Box::new(|d: &Path| {
                std::fs::write(d.join("schemas/invoice.sent.json"), r#"{"type":"object"}"#)
                    .expect("write")
            }),
            "event type \"invoice.sent\"",
        ),
        (
            "no schema",
            Box::new(|d: &Path| {
                std::fs::remove_file(d.join("schemas/refund.requested.json")).expect("rm")
            }),
            "event type \"refund.requested\" of action \"approve_refund\" has no schema",
        ),
        (
            "an analysis emits a type without a schema",
            Box::new(|d: &Path| {
                let p = d.join("analytics/shop.toml");
                let text = std::fs::read_to_string(&p).expect("read").replace(
                    "emit = \"reflex.analytics.refunds_high\"",
                    "emit = \"reflex.analytics.refund_storm\"",
                );
                std::fs::write(p, text).expect("write");
            }),
            "analysis \"refunds_per_order\", key emit: event type \"reflex.analytics.refund_storm\" has no schema",
        ),
        (
            "schema does not compile",
            Box::new(|d: &Path| {
                std::fs::write(d.join("schemas/order.placed.json"), r#"{"type": "objekt"}"#)
                    .expect("write")
            }),
            "for event type \"order.placed\" does not compile",
        ),
        (
            "rego does not parse",
            Box::new(|d: &Path| {
                std::fs::write(
                    d.join("policies/sla.rego"),
                    "package reflex.sla\ndeny contains x if {",
                )
                .expect("write")
            }),
            "sla.rego does not parse",
        ),
    ];
    for (name, breaker, expected) in cases {
        let dir = sandbox();
        breaker(dir.path());
        let (ok, text) = check(dir.path());
        assert!(!ok, "{name}: check must fail");
        assert!(
            text.contains(expected),
            "{name}: expected {expected:?} in:\n{text}"
        );
    }
    let dir = sandbox();
    let out = Command::new(reflex_bin())
        .args([
            "--config",
            &dir.path().join("config/reflex.toml").display().to_string(),
            "check",
        ])
        .env("REFLEX_KAFKA_BROKRES", "x:1")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "an unknown REFLEX_* variable is a warning, not an error"
    );
    assert!(
        stdout.contains(
            "warning: environment variable REFLEX_KAFKA_BROKRES names no configuration key"
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_refuses_a_missing_topic_and_creates_none() {
    let env = TestEnv::new(1);
    let missing = format!("{}.typo", env.events);
    let out = reflex(
        &env.config_path,
        &["produce", "--topic", &missing, "-"],
        Some(&format!("{}\n", order("m-1", "/shop/web", 1.0))),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "topic \"{missing}\" does not exist: create it first"
        )),
        "{stderr}"
    );
    let probe: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("metadata client");
    let metadata = rdkafka::consumer::Consumer::fetch_metadata(
        &probe,
        None,
        std::time::Duration::from_secs(10),
    )
    .expect("metadata");
    assert!(
        metadata.topics().iter().all(|t| t.name() != missing),
        "the topic was created"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_validates_unless_told_not_to() {
    let env = TestEnv::new(1);
    env.create_topics().await;
    let good = order("p-1", "/shop/web", 1.0).to_string();
    let mut bad = order("p-2", "/shop/web", 1.0);
    bad["data"]["amount"] = serde_json::json!(-5);
    let unknown =
        serde_json::json!({"specversion": "1.0", "id": "p-3", "source": "/s", "type": "nope"})
            .to_string();
    let input = format!(
        "{good}\n{bad}\n\nnot json\n{unknown}\n{}\n",
        refund("p-4", 3.0)
    );
    let out = reflex(
        &env.config_path,
        &["produce", "--topic", &env.events, "-"],
        Some(&input),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rejected lines make the exit status non-zero"
    );
    assert!(
        stderr.contains("line 2: rejected") && stderr.contains("data/amount"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 4: rejected: not a CloudEvent"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5: rejected: unknown event type \"nope\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("produced 2 events, rejected 3, failed 0"),
        "{stderr}"
    );
    let ids: Vec<String> = read_all(&env.events)
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["p-1", "p-4"]);

    let out = reflex(
        &env.config_path,
        &["produce", "--topic", &env.events, "--no-validate"],
        Some("not json\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = reflex(
        &env.config_path,
        &["produce", "--topic", &env.events, "--binary"],
        Some(&format!("{good}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = read_all(&env.events);
    assert_eq!(all.len(), 4);
    assert_eq!(all[2].value.as_deref(), Some(&b"not json"[..]));
    assert_eq!(
        all[3].headers.get("ce_id").map(String::as_str),
        Some("p-1"),
        "binary mode puts attributes in headers"
    );
    assert_eq!(all[3].key.as_deref(), Some("p-1"), "key is the subject");

    let out = reflex(
        &env.config_path,
        &["produce", "--topic", &env.events, "--json"],
        Some(&format!("{good}\n{bad}\n")),
    );
    assert!(!out.status.success(), "a rejected line fails the command");
    let summary = json_of(&out);
    assert_eq!(summary["produced"], 1, "{summary}");
    assert_eq!(summary["rejected"][0]["line"], 2, "{summary}");
    assert!(
        summary["rejected"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("data/amount")),
        "{summary}"
    );
    assert_eq!(summary["failed"], serde_json::json!([]), "{summary}");
}

#[test]
fn topics_creates_what_is_missing_and_what_reflex_writes_and_says_so_as_text_and_json() {
    let env = TestEnv::new(1);
    let out = reflex(&env.config_path, &["topics", "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_of(&out);
    let created: Vec<&str> = report["created"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    // The configured topics, and the ones reflex writes that they do not name: no reflex
    // producer creates a topic.
    for topic in [
        &env.events,
        &env.audit,
        &env.dlq,
        &env.shipments,
        &env.refunds_approved,
        &env.policy_events,
    ] {
        assert!(created.contains(&topic.as_str()), "{topic} in {report}");
    }
    let out = reflex(&env.config_path, &["topics", "--json"], None);
    assert_eq!(json_of(&out)["created"], serde_json::json!([]));
    let out = reflex(&env.config_path, &["topics"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "all topics exist\n");
}

/// The `THP_enabled` line of a running process's /proc status.
#[cfg(all(target_os = "linux", feature = "mimalloc"))]
fn thp_enabled(child: &std::process::Child, listen: std::net::SocketAddr) -> String {
    // The telemetry listener answers once the worker runs, long after main's first lines.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker's listener did not answer"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .expect("the worker's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
        .expect("THP_enabled in /proc status (Linux 5.0 and later)")
}

/// reflex keeps transparent huge pages off for its process unless MIMALLOC_ALLOW_THP is set.
#[cfg(all(target_os = "linux", feature = "mimalloc"))]
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_runs_without_transparent_huge_pages_unless_mimalloc_is_told_otherwise() {
    let env = TestEnv::new(1);
    env.create_topics().await;
    for (allow, expected) in [(None, "0"), (Some("1"), "1")] {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut cmd = Command::new(reflex_bin());
        cmd.args(["run", "--role", "actions", "--worker-id", "it-thp"])
            .env("REFLEX_CONFIG", &env.config_path)
            .env("REFLEX_LOG", "warn")
            .env("REFLEX_TELEMETRY_LISTEN", listen.to_string())
            .env_remove("MIMALLOC_ALLOW_THP")
            .stdout(Stdio::null());
        if let Some(allow) = allow {
            cmd.env("MIMALLOC_ALLOW_THP", allow);
        }
        let mut child = cmd.spawn().expect("reflex starts");
        let enabled = thp_enabled(&child, listen);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(enabled, expected, "MIMALLOC_ALLOW_THP={allow:?}");
    }
}
