//! The analytics role re-keys through repartition topics on the real broker: orders keyed at
//! random, counted per customer by two workers, equal a recomputation, and each customer is
//! reported by one worker only; an analysis of the audit topic counts the actions role's real
//! denials per event type and hour. Records of a repartition topic below the committed
//! offsets are deleted after each checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::analytics::{
    add_analyses, at, checkpointed_past, findings_by_id, spawn_worker, written,
};
use crate::common::*;

const PER_CUSTOMER: &str = r#"
[orders_per_customer]
types = ["order.placed"]
group_by = ["data.customer_id"]
window = { tumbling = "1h" }
allowed_lateness = "10m"
aggregates = { orders = "count", total = "sum(data.amount)" }
condition = "orders >= 1"
emit = "reflex.analytics.refunds_high"
"#;

/// An order of `customer` at `minute` (of event time), in a record with a random key.
fn order_at(n: usize, customer: &str, minute: i64, amount: f64) -> Rec {
    let event = json!({
        "specversion": "1.0", "id": format!("o-{n}"), "source": "/shop/web",
        "type": "order.placed", "time": at(minute),
        "data": {"order_id": format!("ord-{n}"), "customer_id": customer, "amount": amount,
                 "currency": "EUR", "items": [{"sku": "S-1", "quantity": 1}]}
    });
    Rec::json(&uuid::Uuid::new_v4().to_string(), &event)
}

/// Members of consumer group `group` (classic protocol).
fn members(group: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Ok(consumer) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create::<BaseConsumer>()
    else {
        return 0;
    };
    consumer
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .ok()
        .and_then(|list| {
            list.groups()
                .iter()
                .find(|g| g.name() == group && g.state() == "Stable")
                .map(|g| g.members().len())
        })
        .unwrap_or(0)
}

/// Per (customer, window start): the orders' count and sum.
type Windows = BTreeMap<(String, String), (f64, f64)>;

/// Orders of 8 customers over three hours, randomly keyed, so each customer's orders are
/// spread over the input partitions; a few arrive up to 8 minutes out of order. Last, a day
/// later, one order of a customer placed on each of the `partitions` repartition partitions:
/// the event time there passes every window above (their own windows never close). Returns
/// the records and, per customer and hour, the count and sum of the orders.
fn orders_stream(partitions: usize) -> (Vec<Rec>, Windows) {
    let mut arriving: Vec<(i64, Rec)> = Vec::new();
    let mut want = Windows::new();
    for n in 0..160 {
        let customer = format!("c-{}", n % 8);
        let minute = (n as i64 * 7) % 180;
        let amount = (n % 11) as f64 + 1.0;
        let arrival = if n % 9 == 4 { minute + 8 } else { minute };
        arriving.push((arrival, order_at(n, &customer, minute, amount)));
        let hour = format!("{}:00:00.000Z", &at(minute)[..13]);
        let entry = want.entry((customer, hour)).or_default();
        entry.0 += 1.0;
        entry.1 += amount;
    }
    arriving.sort_by_key(|(arrival, _)| *arrival);
    let mut records: Vec<Rec> = arriving.into_iter().map(|(_, r)| r).collect();
    let mut covered = BTreeSet::new();
    for k in 0.. {
        let customer = format!("tick-{k}");
        let p = reflex::kafka::read::default_partition(customer.as_bytes(), partitions)
            .expect("partition");
        if covered.insert(p) {
            records.push(order_at(1000 + k, &customer, 24 * 60, 1.0));
        }
        if covered.len() == partitions {
            break;
        }
    }
    (records, want)
}

/// The per-customer findings on `topic` as (customer, window start) -> (orders, total),
/// checking that every copy of a finding has the same values.
fn per_customer(topic: &str) -> Windows {
    let mut windows = BTreeMap::new();
    for (id, copies) in &findings_by_id(topic) {
        let (_, subject, data) = &copies[0];
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "finding {id} was emitted with different values: {copies:?}"
        );
        let values = &data["values"];
        windows.insert(
            (
                subject.clone(),
                data["window"]["start"].as_str().expect("start").to_owned(),
            ),
            (
                values["orders"].as_f64().expect("orders"),
                values["total"].as_f64().expect("total"),
            ),
        );
    }
    windows
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_two_workers_count_randomly_keyed_orders_per_customer_through_a_repartition_topic(
) {
    let env = TestEnv::new(2);
    let (findings, _analyses) = add_analyses(&env, PER_CUSTOMER);
    // Every forwarded record is read back below: none is purged.
    let mut config = std::fs::read_to_string(&env.config_path).expect("read config");
    config.push_str("purge_repartition = false\n");
    std::fs::write(&env.config_path, config).expect("write config");
    env.create_topics().await;
    let group = format!("{}.analytics", env.group);
    let repartition = format!("{group}-orders_per_customer-repartition");
    let (records, want) = orders_stream(2);

    let mut first = spawn_worker(&env, false, "w-1");
    let mut second = spawn_worker(&env, false, "w-2");
    // Both workers hold their partitions before the first record: no rebalance moves a group.
    let deadline = Instant::now() + Duration::from_secs(90);
    while members(&group) < 2 {
        assert!(
            Instant::now() < deadline,
            "the two workers did not join within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    produce(&env.events, &records).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    while findings_by_id(&findings).len() < want.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} findings within 120 s",
            findings_by_id(&findings).len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for worker in [&mut first, &mut second] {
        worker.0.kill().expect("stopped");
        worker.0.wait().expect("reaped");
    }

    let windows = per_customer(&findings);
    assert_eq!(
        windows, want,
        "per customer and hour, the counts and sums equal a recomputation of the orders"
    );

    // Who emitted each customer's findings: one worker per customer.
    let mut emitters: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for record in read_all(&findings) {
        let subject = record.json()["subject"]
            .as_str()
            .expect("subject")
            .to_owned();
        emitters
            .entry(subject)
            .or_default()
            .insert(record.headers["reflex_worker"].clone());
    }
    for (customer, workers) in &emitters {
        assert_eq!(
            workers.len(),
            1,
            "customer {customer} was reported by {workers:?}"
        );
    }
    // The events really went through the repartition topic, keyed by customer.
    let rekeyed = read_all(&repartition);
    assert!(rekeyed.len() >= records.len(), "{} records", rekeyed.len());
    for record in &rekeyed {
        let key = record.key.as_deref().expect("keyed");
        assert_eq!(record.json()["data"]["customer_id"], json!(key));
        assert_eq!(
            Some(record.partition),
            reflex::kafka::read::default_partition(key.as_bytes(), 2)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn analytics_killed_mid_stream_counts_each_order_once_though_it_is_forwarded_again() {
    let env = TestEnv::new(2);
    let (findings, _analyses) = add_analyses(&env, PER_CUSTOMER);
    env.create_topics().await;
    let changelog = format!("{findings}.changelog");
    let repartition = format!("{}.analytics-orders_per_customer-repartition", env.group);
    let (records, want) = orders_stream(2);
    // Three kills, each once the worker has checkpointed further than before: what it
    // forwarded after its last checkpoint is forwarded again by the next worker.
    let chunk = records.len() / 3 + 1;
    let mut checkpoints = 0;
    for part in records.chunks(chunk) {
        produce(&env.events, part).await;
        let mut worker = spawn_worker(&env, false, "it");
        checkpoints = checkpointed_past(&changelog, checkpoints).await;
        worker.0.kill().expect("SIGKILL");
        worker.0.wait().expect("reaped");
    }
    let mut last = spawn_worker(&env, true, "it");
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
    eprintln!(
        "{} orders, {} records forwarded to {repartition}",
        records.len(),
        written(&repartition)
    );
    assert_eq!(
        per_customer(&findings),
        want,
        "per customer and hour, each order counted once"
    );
    // The checkpoints deleted forwarded records, never past the offsets they committed: each
    // partition still holds everything from where the group resumes (a purge that did not
    // answer in time leaves more, for the next checkpoint).
    let group = format!("{}.analytics", env.group);
    let mut purged = 0;
    for (p, (low, high)) in watermarks(&repartition).into_iter().enumerate() {
        let resume = committed(&group, &repartition, p as i32).unwrap_or(0);
        eprintln!("{repartition}/{p}: first record kept {low}, committed {resume}, {high} written");
        assert!(
            low <= resume,
            "{repartition}/{p}: first record kept {low}, past the committed {resume} (of {high} written)"
        );
        purged += low;
    }
    assert!(
        purged > 0,
        "nothing of {repartition} was purged after the checkpoints"
    );
}

/// The low and high watermarks of each partition of `topic`.
fn watermarks(topic: &str) -> Vec<(i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions.sort_unstable();
    partitions
        .into_iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
        })
        .collect()
}

/// The offset `group` committed on `topic`/`partition`, if any.
fn committed(group: &str, topic: &str, partition: i32) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed.elements().first().and_then(|e| match e.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    })
}

const DENIALS: &str = r#"
[denials_per_type]
types = ["reflex.audit"]
where = { "data.outcome" = "denied" }
group_by = ["subject"]
window = { tumbling = "1h" }
aggregates = { denials = "count" }
condition = "denials >= 1"
emit = "reflex.analytics.refunds_high"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn analytics_counts_the_actions_roles_denials_per_type_from_the_audit_topic() {
    let env = TestEnv::new(1);
    let (findings, _analyses) = add_analyses(&env, DENIALS);
    env.create_topics().await;
    // Allowed and denied orders and refunds (over a limit, or from a source not allowed).
    let mut records = Vec::new();
    for n in 0..6 {
        let amount = if n % 2 == 0 { 20_000.0 } else { 10.0 };
        records.push(Rec::json(
            &format!("o{n}"),
            &order(&format!("order-{n}"), "/shop/web", amount),
        ));
    }
    records.push(Rec::json(
        "o-x",
        &order("order-intruder", "/shop/intruder", 5.0),
    ));
    for n in 0..3 {
        let amount = if n == 0 { 900.0 } else { 10.0 };
        records.push(Rec::json(
            &format!("r{n}"),
            &refund(&format!("refund-{n}"), amount),
        ));
    }
    produce(&env.events, &records).await;
    let config = env.config();
    reflex::role::actions::run(
        &config,
        reflex::role::actions::RunOptions {
            worker_id: "it".into(),
            drain: true,
        },
        CancellationToken::new(),
    )
    .await
    .expect("the actions role runs");
    let audits = wait_for_audits(&env.audit, records.len()).await;

    // What the analysis must find: the denials in the audit trail, per type and hour.
    let mut want: BTreeMap<(String, String), f64> = BTreeMap::new();
    for copies in audits.values() {
        let audit = &copies[copies.len() - 1];
        if audit["outcome"] == json!("denied") {
            let time = audit["processed_at"].as_str().expect("processed_at");
            let time = chrono::DateTime::parse_from_rfc3339(time).expect("rfc 3339");
            let hour = time.to_utc().format("%Y-%m-%dT%H:00:00.000Z").to_string();
            *want
                .entry((audit["type"].as_str().expect("type").to_owned(), hour))
                .or_default() += 1.0;
        }
    }
    let denied: f64 = want.values().sum();
    assert!(
        denied >= 4.0,
        "the policies denied {denied} events: {want:?}"
    );
    // A denial a day later closes those windows (its own never closes).
    let later = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    produce(
        &env.audit,
        &[Rec::json(
            "tick",
            &json!({"event_id": "tick", "type": "tick", "outcome": "denied",
                    "decision": {"allow": false, "reasons": []}, "processed_at": later}),
        )],
    )
    .await;

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
    assert!(summary.repartitioned > denied as u64, "{summary}");
    let mut found: BTreeMap<(String, String), f64> = BTreeMap::new();
    for copies in findings_by_id(&findings).values() {
        let (_, subject, data) = &copies[0];
        found.insert(
            (
                subject.clone(),
                data["window"]["start"].as_str().expect("start").to_owned(),
            ),
            data["values"]["denials"].as_f64().expect("denials"),
        );
    }
    assert_eq!(
        found, want,
        "denials per type and hour equal the audit trail's: {:?}",
        summary
    );
}
