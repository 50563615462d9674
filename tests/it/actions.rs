//! Each outcome of the actions role, end to end through a real broker.

use std::time::Duration;

use reflex::role::actions::{self as worker, RunOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::*;

async fn drain(env: &TestEnv, worker: &str) -> reflex::summary::Summary {
    drain_with(env, worker, reflex::kafka::Guarantee::AtLeastOnce).await
}

async fn drain_with(
    env: &TestEnv,
    worker: &str,
    guarantee: reflex::kafka::Guarantee,
) -> reflex::summary::Summary {
    let mut config = env.config();
    config.kafka.guarantee = guarantee;
    let options = RunOptions {
        worker_id: worker.to_owned(),
        drain: true,
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(&config, options, CancellationToken::new()),
    )
    .await
    .expect("worker drains within two minutes")
    .expect("worker runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_outcome_is_audited_and_bad_input_is_dead_lettered() {
    every_outcome(reflex::kafka::Guarantee::AtLeastOnce).await;
}

/// The same outcomes with outputs and offsets committed in transactions; the readers are
/// `read_committed`, so what they count was committed.
#[tokio::test(flavor = "multi_thread")]
async fn every_outcome_is_audited_once_under_exactly_once() {
    every_outcome(reflex::kafka::Guarantee::ExactlyOnce).await;
}

async fn every_outcome(guarantee: reflex::kafka::Guarantee) {
    let env = TestEnv::new(2);
    env.create_topics().await;
    let stale_payment = json!({
        "specversion": "1.0", "id": "pay-stale", "source": "/payments/gateway", "type": "payment.authorized",
        "time": (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339(),
        "data": {"payment_id": "pay-1", "order_id": "ord-1", "amount": 10.0, "currency": "EUR", "method": "card"}
    });
    let mut schema_invalid = order("order-invalid", "/shop/web", 10.0);
    schema_invalid["data"]["currency"] = json!("DOGE");
    let unknown = json!({"specversion": "1.0", "id": "unknown-1", "source": "/shop/web", "type": "order.cancelled", "data": {}});
    let binary = Rec {
        key: Some("binary-1".into()),
        value: Some(br#"{"refund_id":"ref-9","order_id":"ord-9","amount":12.5,"currency":"EUR","reason":"goodwill"}"#.to_vec()),
        headers: vec![
            ("ce_specversion".into(), b"1.0".to_vec()),
            ("ce_id".into(), b"refund-binary".to_vec()),
            ("ce_source".into(), b"/support/desk".to_vec()),
            ("ce_type".into(), b"refund.requested".to_vec()),
            ("content-type".into(), b"application/json".to_vec()),
        ],
    }
    .signed(&desk_key(), "support-desk");
    let records = vec![
        Rec::json("k1", &order("order-ok", "/shop/web", 99.5)),
        Rec::json("k2", &order("order-unauthorized", "/shop/intruder", 5.0)),
        Rec::json("k3", &refund("refund-ok", 20.0)),
        Rec::json("k4", &refund("refund-too-big", 900.0)),
        Rec::json("k5", &stale_payment),
        Rec::json("k6", &schema_invalid),
        Rec::json("k7", &unknown),
        Rec::raw("k8", b"\xff\x00garbage"),
        binary,
    ];
    produce(&env.events, &records).await;

    let summary = drain_with(&env, "it-worker", guarantee).await;
    assert_eq!(summary.total(), 9, "{summary}");

    let audits = audits_by_key(&env.audit);
    let outcome = |key: &str| -> Value {
        let records = audits
            .get(key)
            .unwrap_or_else(|| panic!("no audit record for {key}: {audits:?}"));
        assert_eq!(records.len(), 1, "exactly one audit record for {key}");
        records[0].clone()
    };
    assert_eq!(outcome("order-ok")["outcome"], "actioned");
    assert_eq!(outcome("order-ok")["action"]["name"], "request_shipment");
    let denied = outcome("order-unauthorized");
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(
        denied["decision"]["reasons"],
        json!(["source is not allowed to publish this event type"])
    );
    assert_eq!(outcome("refund-ok")["outcome"], "actioned");
    assert_eq!(
        outcome("refund-too-big")["decision"]["reasons"],
        json!(["refund above the automatic approval limit"])
    );
    assert_eq!(
        outcome("pay-stale")["decision"]["reasons"],
        json!(["event older than its SLA deadline"])
    );
    assert_eq!(outcome("order-invalid")["reason"], "schema_invalid");
    assert_eq!(outcome("unknown-1")["reason"], "unknown_type");
    let binary = outcome("refund-binary");
    assert_eq!(
        (binary["outcome"].as_str(), binary["mode"].as_str()),
        (Some("actioned"), Some("binary"))
    );
    // The undecodable record has no id: its audit key is its coordinates.
    let coordinates: Vec<&String> = audits
        .keys()
        .filter(|k| k.starts_with(&format!("{}/", env.events)))
        .collect();
    assert_eq!(coordinates.len(), 1, "{:?}", audits.keys());
    assert_eq!(audits[coordinates[0]][0]["reason"], "undecodable");
    for records in audits.values() {
        assert!(records[0]["policy_revision"]
            .as_str()
            .is_some_and(|r| r.starts_with("sha256:")));
        assert!(
            records[0].get("data").is_none(),
            "audit records never carry event data"
        );
    }

    // Dead letters keep the original bytes and say why.
    let dlq = read_all(&env.dlq);
    assert_eq!(dlq.len(), 3, "schema-invalid, unknown type, undecodable");
    let mut reasons: Vec<&str> = dlq
        .iter()
        .map(|r| r.headers["reflex_reason"].as_str())
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["schema_invalid", "undecodable", "unknown_type"]);
    let garbage = dlq
        .iter()
        .find(|r| r.headers["reflex_reason"] == "undecodable")
        .expect("undecodable dead letter");
    assert_eq!(garbage.value.as_deref(), Some(&b"\xff\x00garbage"[..]));
    assert_eq!(garbage.key.as_deref(), Some("k8"));
    assert_eq!(garbage.headers["reflex_source_topic"], env.events);
    let invalid = dlq
        .iter()
        .find(|r| r.headers["reflex_reason"] == "schema_invalid")
        .expect("schema dead letter");
    assert!(
        invalid.headers["reflex_error"].contains("/currency"),
        "{:?}",
        invalid.headers
    );

    // Only allowed events were actioned: one shipment, two refund approvals.
    let shipments = read_all(&env.shipments);
    assert_eq!(shipments.len(), 1);
    let shipment = shipments[0].json();
    assert_eq!(shipment["type"], "shipment.requested");
    assert_eq!(shipment["causationid"], "order-ok");
    assert_eq!(outcome("order-ok")["action"]["emitted_id"], shipment["id"]);
    let approved: Vec<String> = read_all(&env.refunds_approved)
        .iter()
        .map(|r| r.json()["causationid"].to_string())
        .collect();
    assert_eq!(approved.len(), 2, "{approved:?}");

    // Offsets were committed: a second run of the same group finds nothing to do.
    let again = drain_with(&env, "it-worker-2", guarantee).await;
    assert_eq!(
        again.total(),
        0,
        "nothing is processed twice after a clean stop: {again}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_event_is_dead_lettered_whole() {
    let env = TestEnv::new(1);
    env.create_topics().await;
    let mut big = order("order-big", "/shop/web", 1.0);
    big["data"]["note"] = json!("x".repeat(100_000));
    produce(
        &env.events,
        &[
            Rec::json("big", &big),
            Rec::json("ok", &order("order-after-big", "/shop/web", 1.0)),
        ],
    )
    .await;
    let summary = drain(&env, "it-big").await;
    assert_eq!(summary.total(), 2);
    let audits = audits_by_key(&env.audit);
    assert!(
        !audits.contains_key("order-big"),
        "an oversized record is not decoded, so it is keyed by coordinates"
    );
    let by_coordinates = audits
        .iter()
        .find(|(k, _)| k.ends_with("/0"))
        .expect("oversized record audited by coordinates");
    assert_eq!(by_coordinates.1[0]["reason"], "too_large");
    assert_eq!(
        audits["order-after-big"][0]["outcome"], "actioned",
        "the worker keeps going"
    );
    let dlq = read_all(&env.dlq);
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].value.as_ref().map(Vec::len),
        Some(big.to_string().len()),
        "original bytes kept whole"
    );
}

/// A key's next record starts once the previous one's outputs are in the producer's hands, not
/// once they are acknowledged: the emitted events of one key still reach their topic in the
/// order of the events that caused them, and every one is audited once.
#[tokio::test(flavor = "multi_thread")]
async fn one_hot_keys_outputs_keep_its_offset_order() {
    let env = TestEnv::new(2);
    env.create_topics().await;
    let ids: Vec<String> = (0..300).map(|n| format!("hot-order-{n}")).collect();
    let records: Vec<Rec> = ids
        .iter()
        .map(|id| Rec::json("one-customer", &order(id, "/shop/web", 10.0)))
        .collect();
    produce(&env.events, &records).await;
    let summary = drain(&env, "hot-key").await;
    assert_eq!(summary.total(), 300, "{summary}");
    let shipments = read_all(&env.shipments);
    let causes: Vec<String> = shipments
        .iter()
        .map(|r| {
            r.json()["causationid"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        causes, ids,
        "the shipments of one key, in their partition's order"
    );
    let partitions: std::collections::BTreeSet<i32> =
        shipments.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 1, "one key, one partition");
    let audits = audits_by_key(&env.audit);
    for id in &ids {
        let outcomes: Vec<&Value> = audits
            .get(id)
            .map(|a| a.iter().map(|a| &a["outcome"]).collect())
            .unwrap_or_default();
        assert_eq!(outcomes, vec![&json!("actioned")], "{id}");
    }
}

/// A worker that does not create topics never has one created for it: with the audit topic
/// missing on a broker that creates topics on demand (as the local stack's does), the first
/// audit record fails, the worker stops naming the topic, and no audit topic with the broker's
/// defaults (not compacted) appears.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_audit_topic_stops_the_worker_and_is_never_created_with_the_brokers_defaults() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let env = TestEnv::new(1);
    let mut config = env.config();
    config.topics.create_missing = false;
    // librdkafka waits this long before it calls a topic missing (30 s by default).
    config
        .kafka
        .producer
        .insert("topic.metadata.propagation.max.ms".into(), "1000".into());
    let retry = config.topics.retry.clone();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[
                NewTopic::new(&env.events, 1, TopicReplication::Fixed(1)),
                NewTopic::new(&retry, 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    produce(
        &env.events,
        &[Rec::json("o-1", &order("o-1", "web-shop", 10.0))],
    )
    .await;

    let options = RunOptions {
        worker_id: "it-missing-audit".into(),
        drain: false,
    };
    let stopped = tokio::time::timeout(
        Duration::from_secs(90),
        worker::run(&config, options, CancellationToken::new()),
    )
    .await
    .expect("the worker stops on its own within 90 s");
    let error = stopped
        .expect_err("a record to a missing topic fails")
        .to_string();
    assert!(
        error.contains(&format!("delivery to \"{}\"", env.audit)),
        "{error}"
    );

    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("metadata client");
    let metadata = probe
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(names.contains(&env.events.as_str()), "{names:?}");
    assert!(
        !names.contains(&env.audit.as_str()),
        "the audit topic was created by the worker: {names:?}"
    );
}

/// A new group starts each partition where `auto.offset.reset` says (the worker gives the
/// partitions without a committed offset their start itself, at assignment): with `latest`,
/// the records produced before the worker joined are not taken, those produced after are.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_group_with_latest_starts_at_the_end_of_each_partition() {
    let env = TestEnv::new(2);
    env.create_topics().await;
    let before: Vec<Rec> = (0..4)
        .map(|i| {
            let id = format!("before-{i}");
            Rec::json(&id, &order(&id, "/shop/web", 10.0))
        })
        .collect();
    produce(&env.events, &before).await;

    let mut config = env.config();
    config
        .kafka
        .consumer
        .insert("auto.offset.reset".into(), "latest".into());
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let options = RunOptions {
                worker_id: "it-latest".into(),
                drain: false,
            };
            worker::run(&config, options, shutdown).await
        }
    });
    // Until the worker has its partitions, a record sent may still be before their start: one
    // is sent every half second until one is answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut sent = 0;
    loop {
        let id = format!("after-{sent}");
        produce(
            &env.events,
            &[Rec::json(&id, &order(&id, "/shop/web", 10.0))],
        )
        .await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if audits_by_key(&env.audit)
            .keys()
            .any(|k| k.starts_with("after-"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "none of {sent} records sent after the worker started was answered in 90 s"
        );
    }
    // One more, sent once the worker surely has its partitions, is answered too.
    produce(
        &env.events,
        &[Rec::json(
            "after-last",
            &order("after-last", "/shop/web", 10.0),
        )],
    )
    .await;
    let audits = loop {
        let audits = audits_by_key(&env.audit);
        if audits.contains_key("after-last") {
            break audits;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the last record was not answered"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    shutdown.cancel();
    worker
        .await
        .expect("the worker task ends")
        .expect("the worker stops cleanly");
    for i in 0..4 {
        assert!(
            !audits.contains_key(&format!("before-{i}")),
            "before-{i}, produced before the group existed, was taken: {:?}",
            audits.keys().collect::<Vec<_>>()
        );
    }
}
