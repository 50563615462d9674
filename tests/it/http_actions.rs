//! HTTP actions and enrichment through the actions role, end to end: a real broker and a real
//! HTTP action service on 127.0.0.1 that the tests make slow, failing or down.

use std::path::Path;
use std::time::Duration;

use reflex::role::actions::{self as worker, RunOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::action_service::{ActionService, Behaviour};
use crate::common::*;

/// A test environment whose `order.placed` action is an HTTP call to `service`.
fn http_env(partitions: i32, service: &ActionService, action: &str, roles: &str) -> TestEnv {
    let env = TestEnv::new(partitions);
    use_http_action(&env, service, action, roles);
    env
}

/// Makes `env`'s `order.placed` action an HTTP call to `service` (`action`: more keys of the
/// action; `roles`: more `[roles.actions]` keys).
pub fn use_http_action(env: &TestEnv, service: &ActionService, action: &str, roles: &str) {
    let text = std::fs::read_to_string(&env.config_path).expect("read config");
    let emit = format!(
        "[actions.request_shipment]\nkind = \"emit\"\ntypes = [\"order.placed\"]\ntopic = \"{}\"\ntype = \"shipment.requested\"\n",
        env.shipments
    );
    assert!(text.contains(&emit), "the test config has the emit action");
    let http = format!(
        "[actions.request_shipment]\nkind = \"http\"\ntypes = [\"order.placed\"]\nurl = \"{}/orders/{{subject}}\"\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n{action}\n",
        service.url()
    );
    let text = text.replace(&emit, &http).replace(
        "shutdown_timeout = \"20s\"\n",
        &format!("shutdown_timeout = \"20s\"\n{roles}\n"),
    );
    std::fs::write(&env.config_path, text).expect("write config");
}

async fn drain(env: &TestEnv, worker: &str) -> reflex::summary::Summary {
    tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(
            &env.config(),
            RunOptions {
                worker_id: worker.to_owned(),
                drain: true,
            },
            CancellationToken::new(),
        ),
    )
    .await
    .expect("worker drains within two minutes")
    .expect("worker runs")
}

/// An order of `customer` (the record key, the subject and the action URL's last segment).
pub fn order_of(id: &str, customer: &str) -> Rec {
    let mut event = order(id, "/shop/web", 10.0);
    event["data"]["customer_id"] = json!(customer);
    // The repository's policies redact data.customer_id from everything sent on, so the
    // action URL names the subject.
    event["subject"] = json!(customer);
    Rec::json(customer, &event)
}

/// The ids of the events the service received for `customer`, in arrival order.
fn calls(service: &ActionService, customer: &str) -> Vec<String> {
    service
        .requests_to(&format!("/orders/{customer}"))
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or_default().to_owned())
        .collect()
}

fn last_audit<'a>(
    audits: &'a std::collections::BTreeMap<String, Vec<Value>>,
    id: &str,
) -> &'a Value {
    audits
        .get(id)
        .and_then(|a| a.last())
        .unwrap_or_else(|| panic!("no audit record for {id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn retried_call_keeps_one_idempotency_key_and_is_audited() {
    let service = ActionService::start();
    service.set_behaviour("/orders/flaky", Behaviour::fail(503, 2));
    service.set_behaviour("/orders/picky", Behaviour::fail(400, 1));
    let env = http_env(1, &service, "", "");
    env.create_topics().await;
    produce(
        &env.events,
        &[
            order_of("o-flaky", "flaky"),
            order_of("o-fine", "fine"),
            order_of("o-picky", "picky"),
        ],
    )
    .await;
    drain(&env, "w-http").await;

    assert_eq!(
        calls(&service, "flaky"),
        ["o-flaky"; 3],
        "two 503s, then 200"
    );
    assert_eq!(calls(&service, "fine"), ["o-fine"]);
    assert_eq!(
        calls(&service, "picky"),
        ["o-picky"],
        "a 400 is not retried"
    );
    let request = &service.requests_to("/orders/flaky")[0];
    assert_eq!(request.method, "POST");
    let body = request.body.as_ref().expect("JSON body");
    assert_eq!(body["event"]["id"], "o-flaky");
    assert!(body.get("obligations").is_some(), "{body}");

    let audits = audits_by_key(&env.audit);
    let flaky = last_audit(&audits, "o-flaky");
    assert_eq!(flaky["outcome"], "actioned", "{flaky}");
    assert_eq!(flaky["action"]["kind"], "http");
    assert_eq!(flaky["action"]["attempts"], 3, "{flaky}");
    assert_eq!(flaky["action"]["status"], 200, "{flaky}");
    let picky = last_audit(&audits, "o-picky");
    assert_eq!(picky["outcome"], "dead_lettered", "{picky}");
    assert_eq!(picky["reason"], "action_failed");
    let dlq = read_all(&env.dlq);
    assert_eq!(dlq.len(), 1);
    let h = &dlq[0].headers;
    assert_eq!(h["reflex_reason"], "action_failed");
    assert_eq!(h["reflex_action"], "request_shipment");
    assert_eq!(h["reflex_status"], "400");
    assert_eq!(h["reflex_attempts"], "1");
    assert!(h.contains_key("reflex_response"), "{h:?}");
    assert_eq!(h["reflex_event_type"], "order.placed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_key_retries_in_order_without_blocking_other_keys_then_replays() {
    failing_key_retries_in_order(false).await;
}

/// The same path with every output committed in transactions: the retry, dead-letter and
/// audit topics then hold transaction markers, which readers and the drain check pass over.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_key_retries_in_order_under_exactly_once() {
    failing_key_retries_in_order(true).await;
}

async fn failing_key_retries_in_order(exactly_once: bool) {
    let service = ActionService::start();
    // Four failures: two attempts in the first pass, two in the one retry round.
    service.set_behaviour("/orders/bad", Behaviour::fail(500, 4));
    let env = http_env(
        1,
        &service,
        "max_attempts = 2",
        "retry_delay = \"1s\"\nretry_rounds = 1",
    );
    if exactly_once {
        let text = std::fs::read_to_string(&env.config_path).expect("read config");
        assert!(text.contains("[kafka]\n"));
        let text = text.replace("[kafka]\n", "[kafka]\nguarantee = \"exactly_once\"\n");
        std::fs::write(&env.config_path, text).expect("write config");
    }
    env.create_topics().await;
    let mut records = vec![order_of("b1", "bad")];
    for i in 0..10 {
        records.push(order_of(&format!("g{i}"), &format!("good-{i}")));
        if i == 4 {
            records.push(order_of("b2", "bad"));
        }
    }
    records.push(order_of("b3", "bad"));
    produce(&env.events, &records).await;
    let summary = drain(&env, "w-keys").await;
    assert!(summary.total() >= 13, "{summary}");

    // b1 failed twice, waited in the retry topic, failed twice more and was dead-lettered;
    // b2 and b3 followed it unprocessed and ran after it, in order.
    assert_eq!(calls(&service, "bad"), ["b1", "b1", "b1", "b1", "b2", "b3"]);
    let bad = service.requests_to("/orders/bad");
    for i in 0..10 {
        let good = service.requests_to(&format!("/orders/good-{i}"));
        assert_eq!(good.len(), 1);
        assert!(
            good[0].at < bad[2].at,
            "good-{i} ran before b1's retry round: a failing key does not block others"
        );
    }
    let audits = audits_by_key(&env.audit);
    let outcomes = |id: &str| -> Vec<String> {
        audits[id]
            .iter()
            .map(|a| a["outcome"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(outcomes("b1"), ["retrying", "dead_lettered"]);
    assert_eq!(outcomes("b2"), ["retrying", "actioned"]);
    assert_eq!(outcomes("b3"), ["retrying", "actioned"]);
    let b2 = last_audit(&audits, "b2");
    assert_eq!(b2["origin"]["topic"], env.events.as_str(), "{b2}");
    assert!(audits["b2"][0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("\"b1\"")));
    let dlq = read_all(&env.dlq);
    assert_eq!(dlq.len(), 1, "only b1 is dead-lettered");
    let h = &dlq[0].headers;
    assert_eq!(h["reflex_reason"], "action_failed");
    assert_eq!(h["reflex_status"], "500");
    assert_eq!(h["reflex_attempts"], "4", "attempts over both rounds");
    assert_eq!(h["reflex_source_topic"], env.events.as_str());
    assert_eq!(h["reflex_source_offset"], "0");

    // The cause is fixed (the service answers now): list, replay, and the trail shows both.
    let config = env.config();
    let listing = reflex::dlq::list(&config, &reflex::dlq::Filter::default()).expect("list");
    assert_eq!(listing.groups["order.placed"]["action_failed"].count, 1);
    let out = std::process::Command::new(reflex_bin())
        .args(["--config"])
        .arg(&env.config_path)
        .args(["dlq", "list", "--type", "order.placed"])
        .output()
        .expect("run reflex dlq list");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("order.placed")
            && table.contains("action_failed")
            && table.contains("1 dead letters"),
        "{table}"
    );
    let filter = reflex::dlq::Filter {
        reason: Some("action_failed".into()),
        ..Default::default()
    };
    let replayed = reflex::dlq::replay(&config, &filter, false, false)
        .await
        .expect("replay");
    assert_eq!(replayed.sent.total, 1);
    drain(&env, "w-replay").await;
    assert_eq!(
        calls(&service, "bad").last().map(String::as_str),
        Some("b1")
    );
    let audits = audits_by_key(&env.audit);
    let b1: Vec<&Value> = audits["b1"].iter().collect();
    assert_eq!(b1.len(), 3, "{b1:?}");
    assert_eq!(b1[2]["outcome"], "actioned");
    assert_eq!(
        b1[2]["replay_of"]["dead_letter"],
        format!("{}/{}/{}", env.dlq, dlq[0].partition, dlq[0].offset)
    );
    assert_eq!(b1[2]["replay_of"]["reason"], "action_failed");
    // A second replay knows from the audit trail that this dead letter was replayed.
    let again = reflex::dlq::replay(&config, &filter, false, false)
        .await
        .expect("replay");
    assert_eq!(again.sent.total, 0);
    assert_eq!(
        again.skipped.values().sum::<u64>(),
        1,
        "{:?}",
        again.skipped
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_keeps_calls_off_a_dead_service_and_replay_recovers() {
    let service = ActionService::start();
    service.set_behaviour("", Behaviour::down());
    let env = http_env(1, &service, "max_attempts = 2", "retry_rounds = 0");
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    std::fs::write(
        &env.config_path,
        format!("{text}\n[services]\nbreaker_failures = 3\nbreaker_open_for = \"2s\"\n"),
    )
    .expect("write");
    env.create_topics().await;
    // One key, so the calls come one after another and the breaker sees them in turn.
    let records: Vec<Rec> = (0..20).map(|i| order_of(&format!("d{i}"), "c")).collect();
    produce(&env.events, &records).await;
    drain(&env, "w-down").await;
    let reached = service.total();
    assert!(
        reached < 20,
        "an open breaker keeps calls off the dead service: {reached} of 40 attempts reached it"
    );
    let dlq = read_all(&env.dlq);
    assert_eq!(dlq.len(), 20, "each event is dead-lettered with its reason");
    assert!(
        dlq.iter()
            .any(|r| r.headers["reflex_error"].contains("circuit")),
        "{:?}",
        dlq.iter()
            .map(|r| &r.headers["reflex_error"])
            .collect::<Vec<_>>()
    );

    // The service is back; a new worker (a new breaker) replays the dead letters.
    service.set_behaviour("", Behaviour::ok());
    let replayed =
        reflex::dlq::replay(&env.config(), &reflex::dlq::Filter::default(), false, false)
            .await
            .expect("replay");
    assert_eq!(replayed.sent.total, 20);
    drain(&env, "w-back").await;
    let audits = audits_by_key(&env.audit);
    for i in 0..20 {
        assert_eq!(last_audit(&audits, &format!("d{i}"))["outcome"], "actioned");
    }
}

/// A policy that denies orders of blocked customers, from the enrichment.
const ENRICHED_POLICY: &str = r#"package reflex
import rego.v1
default decision := {"allow": true, "reasons": []}
decision := {"allow": false, "reasons": ["customer is blocked"]} if input.enrichment.customer.blocked == true
redact := []
"#;

fn write_policy(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("p.rego"), ENRICHED_POLICY).expect("write policy");
}

#[tokio::test(flavor = "multi_thread")]
async fn enrichment_feeds_the_policy_and_the_action_and_is_cached() {
    let service = ActionService::start();
    service.set_lookup(
        "/customers/alice",
        json!({"blocked": false, "tier": "gold"}),
    );
    service.set_lookup("/customers/mallory", json!({"blocked": true}));
    let env = http_env(1, &service, "", "");
    let policies = env.config_path.parent().expect("dir").join("enriched");
    write_policy(&policies);
    env.use_policies(&policies, Duration::from_secs(60));
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    std::fs::write(
        &env.config_path,
        format!(
            "{text}\n[[enrichment.\"order.placed\".lookups]]\nname = \"customer\"\nurl = \"{}/customers/{{data.customer_id}}\"\nttl = \"60s\"\non_error = \"deny\"\n",
            service.url()
        ),
    )
    .expect("write");
    env.create_topics().await;
    let records = vec![
        order_of("a1", "alice"),
        order_of("m1", "mallory"),
        order_of("a2", "alice"),
        order_of("a3", "alice"),
        order_of("m2", "mallory"),
        order_of("n1", "nobody"),
    ];
    produce(&env.events, &records).await;
    drain(&env, "w-enrich").await;

    assert_eq!(
        service.count("/customers/alice"),
        1,
        "later lookups hit the cache"
    );
    assert_eq!(service.count("/customers/mallory"), 1);
    let audits = audits_by_key(&env.audit);
    for id in ["a1", "a2", "a3"] {
        assert_eq!(last_audit(&audits, id)["outcome"], "actioned");
    }
    for id in ["m1", "m2"] {
        let a = last_audit(&audits, id);
        assert_eq!(a["outcome"], "denied", "{a}");
        assert_eq!(a["decision"]["reasons"], json!(["customer is blocked"]));
    }
    let sources = |id: &str| last_audit(&audits, id)["lookups"][0]["source"].clone();
    assert_eq!(sources("a1"), "service");
    assert_eq!(sources("a2"), "cache");
    assert_eq!(last_audit(&audits, "a1")["lookups"][0]["name"], "customer");
    // 404 is "not found": the value is null and the policy allows.
    assert_eq!(last_audit(&audits, "n1")["outcome"], "actioned");
    let call = &service.requests_to("/orders/alice")[0];
    let body = call.body.as_ref().expect("body");
    assert_eq!(body["enrichment"]["customer"]["tier"], "gold", "{body}");
    assert!(
        service.requests_to("/orders/mallory").is_empty(),
        "denied: no call"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_run_concurrently_and_each_key_keeps_its_order() {
    let service = ActionService::start();
    service.set_behaviour("", Behaviour::ok().delayed(Duration::from_millis(20)));
    // Two evaluators: records run as tasks on the runtime's threads.
    let env = http_env(1, &service, "", "deciders = 2");
    env.create_topics().await;
    const KEYS: usize = 20;
    const PER_KEY: usize = 8;
    let records: Vec<Rec> = (0..KEYS * PER_KEY)
        .map(|i| order_of(&format!("e{i:04}"), &format!("k{}", i % KEYS)))
        .collect();
    produce(&env.events, &records).await;
    let started = std::time::Instant::now();
    drain(&env, "w-concurrent").await;
    let took = started.elapsed();

    for k in 0..KEYS {
        let ids = calls(&service, &format!("k{k}"));
        let want: Vec<String> = (0..PER_KEY)
            .map(|n| format!("e{:04}", n * KEYS + k))
            .collect();
        assert_eq!(
            ids, want,
            "key k{k} is called once per event, in offset order"
        );
    }
    // One partition, 160 calls of 20 ms each: one at a time would take 3.2 s. Count how many
    // calls overlapped the busiest moment.
    let mut arrivals: Vec<std::time::Instant> = service.requests().iter().map(|r| r.at).collect();
    arrivals.sort();
    let window = Duration::from_millis(20);
    let peak = (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|a| **a < arrivals[i] + window)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        peak > 5,
        "different keys of one partition run concurrently (peak {peak} calls within 20 ms; drain took {took:?})"
    );
}

/// Sets the committed offset of `group` on partition 0 of `topic` back to the start, as when
/// the worker that had read it was killed before its commit.
fn rewind(group: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut start = rdkafka::TopicPartitionList::new();
    start
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(0))
        .expect("offset");
    consumer
        .commit(&start, CommitMode::Sync)
        .expect("the group's offset is set back");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_read_again_after_its_retry_copy_ran_is_not_run_twice() {
    let service = ActionService::start();
    service.set_behaviour("/orders/waits", Behaviour::fail(503, 1));
    // Four records in flight at most: the event's copy in the event topic is read only after
    // the records before it are done, long after its copy in the retry topic is due.
    let env = http_env(
        1,
        &service,
        "max_attempts = 1",
        "retry_delay = \"1s\"\nretry_rounds = 3\nmax_in_flight = 4",
    );
    env.create_topics().await;
    let mut records: Vec<Rec> = (0..300)
        .map(|i| order_of(&format!("f{i}"), "fill"))
        .collect();
    records.push(order_of("e1", "waits"));
    produce(&env.events, &records).await;

    // The first worker sends e1 to the retry topic, then stops; its commit is then lost, as if
    // it had been killed: the next owner reads the event topic from the start.
    let stop = CancellationToken::new();
    let config = env.config();
    let token = stop.clone();
    let first = tokio::spawn(async move {
        worker::run(
            &config,
            RunOptions {
                worker_id: "w-before".into(),
                drain: false,
            },
            token,
        )
        .await
    });
    let audits = wait_for_audits(&env.audit, 301).await;
    assert_eq!(audits["e1"][0]["outcome"], "retrying", "{:?}", audits["e1"]);
    stop.cancel();
    first
        .await
        .expect("join")
        .expect("first worker stops cleanly");
    rewind(&env.group, &env.events);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The next owner, with its /metrics on a port of its own.
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], crate::outage::free_ports(1)[0]));
    let text = std::fs::read_to_string(&env.config_path).expect("config");
    std::fs::write(
        &env.config_path,
        text.replace(
            "[telemetry]\nlisten = \"\"",
            &format!("[telemetry]\nlisten = \"{listen}\""),
        ),
    )
    .expect("config");
    let stop = CancellationToken::new();
    let config = env.config();
    let token = stop.clone();
    let second = tokio::spawn(async move {
        worker::run(
            &config,
            RunOptions {
                worker_id: "w-after".into(),
                drain: false,
            },
            token,
        )
        .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while service.requests_to("/orders/fill").len() < 600 {
        assert!(
            std::time::Instant::now() < deadline,
            "the next owner read the event topic again from the start: {} of 600 calls",
            service.requests_to("/orders/fill").len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Which copy of e1 the next owner took first depends on the order of the two partitions'
    // records in its fetches: here it is the retry copy, so the event-topic copy comes after it
    // ran; were it the other way round, the copy read again is booked as waiting. Either way
    // e1 runs once; the test waits for whichever shows.
    let outcomes = || -> Vec<String> {
        audits_by_key(&env.audit)
            .get("e1")
            .into_iter()
            .flatten()
            .map(|a| a["outcome"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let mut metrics = String::new();
    loop {
        let read_again = crate::outage::metric(&metrics, "reflex_events_read_again_total");
        let seen = outcomes();
        if seen.last().is_some_and(|o| o == "actioned") && (read_again >= 1.0 || seen.len() == 3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "e1 ran from the retry topic and its copy read again was booked: {seen:?}, {read_again} in /metrics"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = crate::outage::scrape(listen).unwrap_or_default();
    }
    stop.cancel();
    let summary = second
        .await
        .expect("join")
        .expect("second worker stops cleanly");
    assert_eq!(
        calls(&service, "waits"),
        ["e1", "e1"],
        "e1 failed once, then ran once from the retry topic; its copy read again did not run"
    );
    let read_again = crate::outage::metric(&metrics, "reflex_events_read_again_total");
    let seen = outcomes();
    assert_eq!(
        summary.read_again as f64, read_again,
        "the worker's summary counts the copy read again as /metrics does"
    );
    if read_again >= 1.0 {
        assert_eq!(read_again, 1.0);
        assert_eq!(
            seen,
            ["retrying", "actioned"],
            "no audit record of the copy read again"
        );
    } else {
        assert_eq!(seen, ["retrying", "retrying", "actioned"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_waiting_in_the_retry_topic_keeps_its_order_across_a_handover() {
    let service = ActionService::start();
    // k1's first call fails once; with one attempt per round it goes to the retry topic.
    service.set_behaviour("/orders/waits", Behaviour::fail(503, 1));
    let env = http_env(
        2,
        &service,
        "max_attempts = 1",
        "retry_delay = \"4s\"\nretry_rounds = 3",
    );
    env.create_topics().await;
    produce(
        &env.events,
        &[order_of("k1", "waits"), order_of("k2", "waits")],
    )
    .await;

    // The first worker sends k1 to the retry topic and k2 behind it, then stops before k1 is
    // due: its record of the waiting key goes with it.
    let stop = CancellationToken::new();
    let config = env.config();
    let token = stop.clone();
    let first = tokio::spawn(async move {
        worker::run(
            &config,
            RunOptions {
                worker_id: "w-before".into(),
                drain: false,
            },
            token,
        )
        .await
    });
    let audits = wait_for_audits(&env.audit, 2).await;
    for id in ["k1", "k2"] {
        assert_eq!(
            audits[id][0]["outcome"], "retrying",
            "{id}: {:?}",
            audits[id]
        );
    }
    stop.cancel();
    first
        .await
        .expect("join")
        .expect("first worker stops cleanly");

    // A later event of the key arrives; the next owner must run it after k1 and k2.
    produce(&env.events, &[order_of("k3", "waits")]).await;
    drain(&env, "w-after").await;
    assert_eq!(
        calls(&service, "waits"),
        ["k1", "k1", "k2", "k3"],
        "the new owner learnt that the key waits in the retry topic"
    );
    let audits = audits_by_key(&env.audit);
    for id in ["k1", "k2", "k3"] {
        assert_eq!(last_audit(&audits, id)["outcome"], "actioned", "{id}");
    }
    assert_eq!(
        audits["k3"][0]["outcome"], "retrying",
        "k3 followed k1 into the retry topic"
    );
}
