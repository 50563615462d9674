//! Publisher authentication end to end: refunds signed, tampered with, unsigned and signed by an
//! unknown key, through the real worker, the repository's policies and a real broker. The
//! policies require a verified signature by a key allowed for the source
//! (`policies/authz.rego`, `policies/data/signatures.json`).

use std::time::Duration;

use reflex::publisher::SigningKey;
use reflex::role::actions::{self as worker, RunOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::*;

const REQUIRED: &str = "a verified publisher signature is required for this event type";

#[tokio::test(flavor = "multi_thread")]
async fn signed_refunds_are_approved_and_tampered_unsigned_or_unknown_ones_denied_and_audited() {
    let env = TestEnv::new(1);
    // A second desk key, HMAC-SHA256 with its secret in a file, which the policy data allows
    // beside the Ed25519 key.
    let secret = format!("desk-hmac-secret-{}", uuid::Uuid::new_v4().simple());
    let secret_file = env.config_path.with_file_name("desk-hmac");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write secret");
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    std::fs::write(
        &env.config_path,
        format!(
            "{text}\n[publishers.desk-hmac]\nalgorithm = \"hmac-sha256\"\nsecret = \"file:{}\"\n",
            secret_file.display()
        ),
    )
    .expect("write config");
    let policies = copy_policies();
    std::fs::write(
        policies.path().join("data/signatures.json"),
        r#"{"signatures": {"required_types": ["refund.requested"],
             "keys": {"/support/desk": ["support-desk", "desk-hmac"]}}}"#,
    )
    .expect("write signatures");
    env.use_policies(policies.path(), Duration::ZERO);
    env.create_topics().await;

    let hmac = SigningKey::hmac(secret.as_bytes()).expect("hmac key");
    let stranger = SigningKey::ed25519(&SigningKey::generate_ed25519_seed().expect("seed"))
        .expect("ed25519 key");
    let mut tampered = Rec::json("k3", &refund("refund-tampered", 20.0));
    tampered.value = Some(refund("refund-tampered", 450.0).to_string().into_bytes());
    let records = vec![
        Rec::json("k1", &refund("refund-signed", 20.0)),
        Rec::unsigned("k2", &refund("refund-hmac", 20.0)).signed(&hmac, "desk-hmac"),
        tampered,
        Rec::unsigned("k4", &refund("refund-unsigned", 20.0)),
        Rec::unsigned("k5", &refund("refund-unknown-key", 20.0)).signed(&stranger, "someone"),
        Rec::unsigned("k6", &refund("refund-forged", 20.0)).signed(&stranger, "support-desk"),
        Rec::unsigned("k7", &order("order-unsigned", "/shop/web", 10.0)),
    ];
    produce(&env.events, &records).await;

    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(
            &env.config(),
            RunOptions {
                worker_id: "publishers".into(),
                drain: true,
            },
            CancellationToken::new(),
        ),
    )
    .await
    .expect("worker drains within two minutes")
    .expect("worker runs");
    assert_eq!(summary.total(), 7, "{summary}");

    let audits = wait_for_audits(&env.audit, 7).await;
    let audit = |id: &str| -> &Value {
        let records = audits
            .get(id)
            .unwrap_or_else(|| panic!("no audit record for {id}: {audits:?}"));
        assert_eq!(records.len(), 1, "one audit record for {id}");
        &records[0]
    };
    for (id, key) in [
        ("refund-signed", "support-desk"),
        ("refund-hmac", "desk-hmac"),
    ] {
        let a = audit(id);
        assert_eq!(a["outcome"], "actioned", "{a}");
        assert_eq!(
            a["publisher"],
            json!({"verified": true, "key_id": key, "status": "verified", "claimed_key_id": key}),
            "{a}"
        );
    }
    for (id, status, claimed) in [
        ("refund-tampered", "bad_signature", json!("support-desk")),
        ("refund-unsigned", "unsigned", Value::Null),
        ("refund-unknown-key", "unknown_key", json!("someone")),
        ("refund-forged", "bad_signature", json!("support-desk")),
    ] {
        let a = audit(id);
        assert_eq!(a["outcome"], "denied", "{a}");
        assert_eq!(a["decision"]["reasons"], json!([REQUIRED]), "{a}");
        assert_eq!(a["publisher"]["verified"], false, "{a}");
        assert_eq!(a["publisher"]["key_id"], Value::Null, "{a}");
        assert_eq!(a["publisher"]["status"], status, "{a}");
        assert_eq!(
            a["publisher"]
                .get("claimed_key_id")
                .cloned()
                .unwrap_or(Value::Null),
            claimed,
            "{a}"
        );
    }
    let order = audit("order-unsigned");
    assert_eq!(
        order["outcome"], "actioned",
        "an order needs no signature: {order}"
    );
    assert_eq!(order["publisher"]["status"], "unsigned", "{order}");

    let approved: Vec<String> = read_all(&env.refunds_approved)
        .iter()
        .map(|r| r.json()["data"]["refund_id"].to_string())
        .collect();
    assert_eq!(
        approved.len(),
        2,
        "only the two verified refunds are approved"
    );
    let written = format!("{audits:?}");
    assert!(
        !written.contains(&secret),
        "the HMAC secret is in an audit record"
    );
}

/// The demo's desk (`scripts/demo-refunds.py`: confluent-kafka and Python's `cryptography`,
/// nothing of reflex) signs with a key from `reflex sign --new-key`; the worker verifies what it
/// signed and denies what it did not, changed, or signed with a key reflex does not know.
#[tokio::test(flavor = "multi_thread")]
async fn refunds_signed_in_python_by_the_demo_desk_verify() {
    let env = TestEnv::new(1);
    let key_file = env.config_path.with_file_name("desk.key");
    let out = std::process::Command::new(reflex_bin())
        .args(["sign", "--new-key"])
        .arg(&key_file)
        .output()
        .expect("reflex sign runs");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let public = stdout
        .trim()
        .strip_prefix("public_key = \"")
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("a public_key line: {stdout}"));
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let ours = desk_key().public_key().expect("public key");
    std::fs::write(&env.config_path, text.replace(&ours, public)).expect("write config");
    env.create_topics().await;

    let refunds = env.config_path.with_file_name("refunds.jsonl");
    let lines: Vec<String> = (0..14)
        .map(|n| refund(&format!("py-{n}"), 10.0 + n as f64).to_string())
        .collect();
    std::fs::write(&refunds, lines.join("\n") + "\n").expect("write refunds");
    let python = crate::registry::project_python();
    let out = std::process::Command::new(python)
        .arg(repo().join("scripts/demo-refunds.py"))
        .arg(brokers())
        .arg(&env.events)
        .arg(&refunds)
        .arg("support-desk")
        .arg(&key_file)
        .output()
        .expect("demo-refunds.py runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    worker::run(
        &env.config(),
        RunOptions {
            worker_id: "python-desk".into(),
            drain: true,
        },
        CancellationToken::new(),
    )
    .await
    .expect("worker runs");
    let audits = wait_for_audits(&env.audit, 14).await;
    let status = |n: usize| -> (String, String) {
        let a = &audits[&format!("py-{n}")][0];
        (
            a["outcome"].as_str().unwrap_or_default().to_owned(),
            a["publisher"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    for n in 0..14 {
        let want = match n {
            6 => ("denied", "bad_signature"),
            9 => ("denied", "unsigned"),
            12 => ("denied", "unknown_key"),
            _ => ("actioned", "verified"),
        };
        assert_eq!(status(n), (want.0.into(), want.1.into()), "refund py-{n}");
    }
}
