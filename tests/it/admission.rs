//! One admission path: `policy replay` decides like the worker (wire-format events through the
//! registry, the enrichment answers the audit record stored, the recorded moment), and the
//! lake, the audit record and the emitted event hide the same fields of one event.

use std::time::Duration;

use apache_avro::types::Value as AvroValue;
use reflex::registry::HttpRegistry;
use reflex::replay::{self, ReplayOptions};
use reflex::role::actions::{self as worker, RunOptions};
use reflex::schema::{avro, wire, Format};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::action_service::ActionService;
use crate::common::*;
use crate::lake::{LakeEnv, Store};
use crate::registry::registry_url;

fn set_refund_limit(policies: &std::path::Path, eur: u32) {
    let path = policies.join("data/limits.json");
    let mut limits: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    limits["limits"]["refund_auto_approve"]["EUR"] = json!(eur);
    std::fs::write(&path, limits.to_string()).expect("write limits");
}

/// A `payment.settled` event as the ledger publishes it: binary mode, Avro data in the wire
/// format under the repository's registered schema.
fn settled(schema: &apache_avro::Schema, schema_id: u32, id: &str, amount: f64) -> Rec {
    let value = AvroValue::Record(vec![
        ("payment_id".into(), AvroValue::String(id.into())),
        ("order_id".into(), AvroValue::String("ord-1".into())),
        ("amount".into(), AvroValue::Double(amount)),
        ("currency".into(), AvroValue::Enum(0, "EUR".into())),
        (
            "settled_at".into(),
            AvroValue::TimestampMillis(chrono::Utc::now().timestamp_millis()),
        ),
        ("fee".into(), AvroValue::Union(0, Box::new(AvroValue::Null))),
    ]);
    let payload = avro::encode(schema, value).expect("encodes");
    Rec {
        key: Some(id.to_owned()),
        value: Some(wire::frame(schema_id, &payload)),
        headers: vec![
            ("ce_specversion".into(), b"1.0".to_vec()),
            ("ce_id".into(), id.as_bytes().to_vec()),
            ("ce_source".into(), b"/payments/ledger".to_vec()),
            ("ce_type".into(), b"payment.settled".to_vec()),
            (
                "ce_time".into(),
                chrono::Utc::now().to_rfc3339().into_bytes(),
            ),
            ("content-type".into(), b"application/avro".to_vec()),
        ],
    }
}

/// A refund request in binary mode: `ce_*` headers, the data as the value.
fn binary_refund(id: &str, amount: f64) -> Rec {
    let data = json!({"refund_id": "ref-7", "order_id": "ord-1", "amount": amount,
                      "currency": "EUR", "reason": "damaged"});
    Rec {
        key: Some(id.to_owned()),
        value: Some(data.to_string().into_bytes()),
        headers: vec![
            ("ce_specversion".into(), b"1.0".to_vec()),
            ("ce_id".into(), id.as_bytes().to_vec()),
            ("ce_source".into(), b"/support/desk".to_vec()),
            ("ce_type".into(), b"refund.requested".to_vec()),
            (
                "ce_time".into(),
                chrono::Utc::now().to_rfc3339().into_bytes(),
            ),
            ("content-type".into(), b"application/json".to_vec()),
        ],
    }
    .signed(&desk_key(), "support-desk")
}

fn order_of(id: &str, customer: &str, amount: f64) -> Rec {
    let mut event = order(id, "/shop/web", amount);
    event["data"]["customer_id"] = json!(customer);
    Rec::json(id, &event)
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_of_the_unchanged_policy_reproduces_every_decision_and_a_candidate_only_its_changes()
{
    let env = TestEnv::new(2);
    let service = ActionService::start();
    service.set_lookup("/customers/c-good", json!({"blocked": false}));
    service.set_lookup("/customers/c-blocked", json!({"blocked": true}));
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    let text = format!(
        "{text}\n[registry]\nurl = \"{}\"\ntimeout = \"2s\"\n\
         [[enrichment.\"order.placed\".lookups]]\nname = \"customer\"\n\
         url = \"{}/customers/{{data.customer_id}}\"\nttl = \"0s\"\non_error = \"continue\"\n",
        registry_url(),
        service.url()
    );
    std::fs::write(&env.config_path, text).expect("write config");
    env.create_topics().await;
    let config = env.config();

    // The repository's Avro schema of payment.settled, registered as `reflex schemas register`
    // does (idempotent: the demo registers the same text).
    let registry = HttpRegistry::new(&registry_url(), Duration::from_secs(5)).expect("client");
    let (format, schema_text) = config.schemas.source("payment.settled").expect("schema");
    assert_eq!(format, Format::Avro);
    let schema_id = registry
        .register("payment.settled", format, schema_text)
        .await
        .expect("registers payment.settled")
        .id;
    let schema = avro::parse(schema_text).expect("parses");

    let mut records = Vec::new();
    for i in 0..3 {
        let id = format!("small-{i}");
        records.push(Rec::json(&id, &refund(&id, 50.0)));
    }
    for i in 0..4 {
        records.push(binary_refund(&format!("medium-{i}"), 300.0));
    }
    records.push(Rec::json("large-0", &refund("large-0", 900.0)));
    records.push(order_of("order-good", "c-good", 20.0));
    records.push(order_of("order-blocked", "c-blocked", 20.0));
    records.push(order_of("order-big", "c-good", 20_000.0));
    records.push(settled(&schema, schema_id, "settled-1", 10.0));
    records.push(settled(&schema, schema_id, "settled-2", 99.0));
    records.push(Rec::raw("junk", b"not an event"));
    produce(&env.events, &records).await;
    tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(
            &config,
            RunOptions {
                worker_id: "admission-recorder".into(),
                drain: true,
            },
            CancellationToken::new(),
        ),
    )
    .await
    .expect("drains")
    .expect("runs");

    // The worker decided the blocked customer's order on the customer service's answer, and
    // its audit record keeps that answer for a replay.
    let audits = audits_by_key(&env.audit);
    let blocked = audits["order-blocked"].last().expect("audit").clone();
    assert_eq!(blocked["outcome"], "denied", "{blocked}");
    assert_eq!(
        blocked["decision"]["reasons"],
        json!(["customer is blocked"])
    );
    assert_eq!(
        blocked["enrichment"],
        json!({"customer": {"blocked": true}})
    );
    for id in ["settled-1", "settled-2"] {
        let audit = audits[id].last().expect("audit");
        assert_eq!(audit["outcome"], "actioned", "{audit}");
        assert_eq!(audit["mode"], "binary", "{audit}");
    }

    // The unchanged policy: every decision compared, none changed.
    let options = |candidate: std::path::PathBuf| ReplayOptions {
        candidate,
        topics: vec![],
        from_offset: None,
        max_events: None,
    };
    let same = replay::replay(&config, &options(repo().join("policies")))
        .await
        .expect("replay");
    assert_eq!(same.compared(), 13, "{same}");
    assert_eq!(same.changed(), 0, "{same}");
    assert_eq!(same.types["payment.settled"].compared, 2, "{same}");
    assert_eq!(same.types["order.placed"].compared, 3, "{same}");
    assert_eq!(same.types["refund.requested"].compared, 8, "{same}");
    assert_eq!(
        same.skipped.values().sum::<u64>(),
        1,
        "only the undecodable record: {same}"
    );

    // A lower refund limit changes exactly the medium refunds (binary mode), nothing else.
    let candidate = copy_policies();
    set_refund_limit(candidate.path(), 100);
    let changed = replay::replay(&config, &options(candidate.path().to_owned()))
        .await
        .expect("replay");
    assert_eq!(changed.compared(), 13, "{changed}");
    assert_eq!(changed.changed(), 4, "{changed}");
    assert_eq!(changed.types["refund.requested"].allow_to_deny, 4);
    let examples: Vec<&str> = changed
        .examples
        .values()
        .flatten()
        .map(|e| e.event_id.as_str())
        .collect();
    assert!(
        examples.iter().all(|id| id.starts_with("medium-")),
        "{examples:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lake_the_audit_record_and_the_emitted_event_hide_the_same_fields() {
    let lake = LakeEnv::new(Store::Local, 1, "max_file_age = \"30s\"");
    lake.env.create_topics().await;
    let mut event = order("order-hidden", "/shop/web", 42.0);
    event["data"]["customer_id"] = json!("c-secret-7");
    produce(&lake.env.events, &[Rec::json("order-hidden", &event)]).await;
    lake.drain("actions");
    lake.drain("lake");

    // The audit record names the redacted path (and never carries data).
    let audits = audits_by_key(&lake.env.audit);
    let audit = audits["order-hidden"].last().expect("audit").clone();
    assert_eq!(audit["outcome"], "actioned", "{audit}");
    assert_eq!(
        audit["decision"]["obligations"]["redact"],
        json!(["data.customer_id"]),
        "{audit}"
    );
    assert!(!audit.to_string().contains("c-secret-7"), "{audit}");

    // The emitted shipment carries the order's data without the customer id.
    let shipments = read_all(&lake.env.shipments);
    assert_eq!(shipments.len(), 1);
    let shipment = shipments[0].json();
    assert_eq!(shipment["causationid"], "order-hidden");
    assert_eq!(shipment["data"]["amount"], 42.0);
    assert!(shipment["data"].get("customer_id").is_none(), "{shipment}");

    // The lake row: the same field empty, the rest there.
    let row = &lake.query(
        "SELECT customer_id, amount, data_extra FROM order_placed WHERE id = 'order-hidden'",
    )[0];
    assert_eq!(row[0], Value::Null, "{row:?}");
    assert_eq!(row[1], json!(42.0));
    assert!(
        !row[2].to_string().contains("c-secret-7"),
        "nothing of it in data_extra: {row:?}"
    );
}
