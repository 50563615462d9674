//! HTTP actions and enrichment against the real test action service (`action_service.rs`):
//! retries, idempotency keys, `Retry-After`, the circuit breaker, caching and fallbacks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reflex::enrich::{EnrichVerdict, Enricher, EnrichmentTable, Lookup, LookupSource, OnError};
use reflex::event::CloudEvent;
use reflex::service::{
    BreakerSettings, BreakerState, CallOutcome, HttpAction, RetryPolicy, Services, ServicesConfig,
    UrlTemplate,
};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::action_service::{ActionService, Behaviour};

fn event(id: &str, customer: &str) -> CloudEvent {
    let json = json!({
        "specversion": "1.0", "id": id, "source": "/shop", "type": "order.placed",
        "data": {"order": "o/1", "customer": customer}
    });
    CloudEvent::decode(Some(json.to_string().as_bytes()), &[])
        .expect("valid event")
        .0
}

fn services(failures: u32, open_for: Duration) -> Services {
    Services::new(ServicesConfig {
        breaker: BreakerSettings { failures, open_for },
        ..ServicesConfig::default()
    })
    .expect("client")
}

fn action(server: &ActionService, max_attempts: u32) -> HttpAction {
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("t1"));
    HttpAction {
        service: "orders".into(),
        method: reqwest::Method::POST,
        url: UrlTemplate::parse(&format!("{}/orders/{{data.order}}", server.url()))
            .expect("template"),
        headers,
        timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
        },
    }
}

/// The path the action's template renders for [`event`].
const ORDER_PATH: &str = "/orders/o%2F1";

#[tokio::test]
async fn retries_server_errors_with_the_event_id_as_idempotency_key() {
    let server = ActionService::start();
    server.set_behaviour("/orders", Behaviour::fail(503, 2));
    let services = services(5, Duration::from_secs(10));
    let body = json!({"order": "o/1", "total": 12.5});
    let report = services
        .perform(
            &action(&server, 5),
            &event("evt-1", "c1"),
            &body,
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(report.attempts, 3, "{report:?}");
    let CallOutcome::Succeeded { status, response } = &report.outcome else {
        panic!("should succeed: {report:?}");
    };
    assert_eq!(*status, 200);
    assert_eq!(
        response.as_ref().and_then(|r| r.get("idempotency_key")),
        Some(&json!("evt-1"))
    );
    let requests = server.requests_to(ORDER_PATH);
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("idempotency-key"), Some("evt-1"));
        assert_eq!(r.header("ce-id"), Some("evt-1"));
        assert_eq!(r.header("ce-type"), Some("order.placed"));
        assert_eq!(r.header("ce-source"), Some("/shop"));
        assert_eq!(r.header("x-tenant"), Some("t1"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body.as_ref(), Some(&body));
    }
    let audit = serde_json::to_value(&report).expect("serialises");
    assert_eq!(audit["outcome"]["result"], "succeeded");
    assert_eq!(audit["attempts"], 3);
}

#[tokio::test]
async fn honours_retry_after() {
    let server = ActionService::start();
    server.set_behaviour("", Behaviour::throttle(1, 1));
    let report = services(5, Duration::from_secs(10))
        .perform(
            &action(&server, 3),
            &event("evt-2", "c1"),
            &json!({}),
            &CancellationToken::new(),
        )
        .await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(report.attempts, 2);
    let requests = server.requests_to(ORDER_PATH);
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(2), "retried after {gap:?}");
}

#[tokio::test]
async fn client_errors_fail_at_once_and_exhausted_retries_report_the_last_answer() {
    let server = ActionService::start();
    server.set_behaviour("/orders", Behaviour::fail(400, 10));
    let services = services(5, Duration::from_secs(10));
    let report = services
        .perform(
            &action(&server, 5),
            &event("evt-3", "c1"),
            &json!({}),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(report.attempts, 1);
    assert_eq!(server.count(ORDER_PATH), 1);
    let CallOutcome::Failed {
        status,
        retryable,
        excerpt,
        circuit_open,
        ..
    } = &report.outcome
    else {
        panic!("400 must fail: {report:?}");
    };
    assert_eq!(*status, Some(400));
    assert!(!retryable && !circuit_open);
    assert_eq!(excerpt, "injected failure 400");

    server.set_behaviour("/orders", Behaviour::fail(500, 100));
    let report = services
        .perform(
            &action(&server, 3),
            &event("evt-4", "c1"),
            &json!({}),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(report.attempts, 3);
    assert_eq!(server.count(ORDER_PATH), 4);
    assert!(report.outcome.retryable(), "{report:?}");
    let dlq = serde_json::to_value(&report).expect("serialises");
    assert_eq!(dlq["outcome"]["status"], 500);
    assert_eq!(dlq["outcome"]["retryable"], true);
}

#[tokio::test]
async fn breaker_opens_fails_fast_and_recovers() {
    let server = ActionService::start();
    server.set_behaviour("", Behaviour::down());
    let open_for = Duration::from_millis(600);
    let services = services(3, open_for);
    let one = action(&server, 1);
    let cancel = CancellationToken::new();
    let call = |id: &'static str, a: HttpAction| {
        let services = services.clone();
        let cancel = cancel.clone();
        async move {
            services
                .perform(&a, &event(id, "c1"), &json!({}), &cancel)
                .await
        }
    };
    for id in ["b1", "b2", "b3"] {
        let report = call(id, one.clone()).await;
        assert!(
            matches!(
                report.outcome,
                CallOutcome::Failed {
                    status: None,
                    retryable: true,
                    circuit_open: false,
                    ..
                }
            ),
            "{report:?}"
        );
    }
    assert_eq!(server.count(ORDER_PATH), 3);
    assert_eq!(services.breaker_state("orders"), BreakerState::Open);

    // Open: calls fail fast without reaching the server, even once it is back.
    server.set_behaviour("", Behaviour::ok());
    let started = Instant::now();
    let report = call("b4", one.clone()).await;
    assert!(
        matches!(
            report.outcome,
            CallOutcome::Failed {
                circuit_open: true,
                ..
            }
        ),
        "{report:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    // With retries, every attempt is refused and backs off, none reaches the server.
    let report = call("b5", action(&server, 4)).await;
    assert_eq!(report.attempts, 4);
    assert!(!report.succeeded());
    assert_eq!(server.count(ORDER_PATH), 3, "no request while open");

    tokio::time::sleep(open_for).await;
    let report = call("b6", one.clone()).await;
    assert!(report.succeeded(), "the trial call closes it: {report:?}");
    assert_eq!(services.breaker_state("orders"), BreakerState::Closed);
    let report = call("b7", one).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(server.count(ORDER_PATH), 5);
}

#[tokio::test]
async fn cancellation_stops_a_call_waiting_to_retry() {
    let server = ActionService::start();
    server.set_behaviour("", Behaviour::throttle(5, 30));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let mut slow = action(&server, 5);
    slow.retry.max_backoff = Duration::from_secs(10);
    let started = Instant::now();
    let report = services(5, Duration::from_secs(10))
        .perform(&slow, &event("c1", "c1"), &json!({}), &cancel)
        .await;
    assert!(started.elapsed() < Duration::from_secs(2), "{report:?}");
    assert!(report.outcome.is_cancelled(), "{report:?}");
    assert!(report.outcome.retryable());
    assert_eq!(report.attempts, 1);
    assert_eq!(server.count(ORDER_PATH), 1);
}

fn lookup(server: &ActionService, name: &str, path: &str, on_error: OnError) -> Lookup {
    Lookup {
        name: name.into(),
        service: name.into(),
        url: UrlTemplate::parse(&format!("{}{path}", server.url())).expect("template"),
        timeout: Duration::from_millis(100),
        ttl: Duration::from_millis(400),
        cache_size: 100,
        on_error,
    }
}

fn enricher(lookups: Vec<Lookup>) -> Enricher {
    let table = EnrichmentTable::new(BTreeMap::from([("order.placed".to_owned(), lookups)]));
    Enricher::new(services(5, Duration::from_secs(10)), &table)
}

#[tokio::test]
async fn lookups_are_cached_until_their_ttl_and_not_found_is_null() {
    let server = ActionService::start();
    server.set_lookup("/customers/c1", json!({"tier": "gold"}));
    let enricher = enricher(vec![lookup(
        &server,
        "customer",
        "/customers/{data.customer}",
        OnError::Deny,
    )]);
    let cancel = CancellationToken::new();

    let first = enricher.enrich(&event("e1", "c1"), &cancel).await;
    assert_eq!(first.verdict, EnrichVerdict::Complete);
    assert_eq!(first.values["customer"], json!({"tier": "gold"}));
    assert_eq!(first.lookups[0].source, LookupSource::Service);
    assert_eq!(first.lookups[0].status, Some(200));
    let second = enricher.enrich(&event("e2", "c1"), &cancel).await;
    assert_eq!(second.values["customer"], json!({"tier": "gold"}));
    assert_eq!(second.lookups[0].source, LookupSource::Cache);
    assert_eq!(
        server.count("/customers/c1"),
        1,
        "second lookup is a cache hit"
    );

    let missing = enricher.enrich(&event("e3", "c9"), &cancel).await;
    assert_eq!(missing.verdict, EnrichVerdict::Complete);
    assert_eq!(missing.values["customer"], Value::Null);
    assert_eq!(missing.lookups[0].status, Some(404));
    let again = enricher.enrich(&event("e4", "c9"), &cancel).await;
    assert_eq!(again.lookups[0].source, LookupSource::Cache);
    assert_eq!(server.count("/customers/c9"), 1, "not found is cached too");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let expired = enricher.enrich(&event("e5", "c1"), &cancel).await;
    assert_eq!(expired.lookups[0].source, LookupSource::Service);
    assert_eq!(
        server.count("/customers/c1"),
        2,
        "expired answers are fetched again"
    );

    let audit = serde_json::to_value(&expired).expect("serialises");
    assert_eq!(audit["lookups"][0]["source"], "service");
    assert_eq!(audit["verdict"]["verdict"], "complete");
}

#[tokio::test]
async fn failed_lookups_follow_their_on_error() {
    let server = ActionService::start();
    server.set_behaviour("/slow", Behaviour::ok().delayed(Duration::from_millis(400)));
    server.set_lookup("/fast", json!({"ok": true}));
    server.set_lookup("/slow", json!({"late": true}));
    let cancel = CancellationToken::new();

    let mixed = enricher(vec![
        lookup(&server, "optional", "/slow", OnError::Continue),
        lookup(&server, "required", "/slow", OnError::Deny),
        lookup(&server, "fast", "/fast", OnError::Deny),
    ]);
    let out = mixed.enrich(&event("f1", "c1"), &cancel).await;
    let EnrichVerdict::Deny {
        lookup: failed,
        error,
    } = &out.verdict
    else {
        panic!("a failed deny lookup denies: {out:?}");
    };
    assert_eq!(failed, "required", "continue lookups do not decide");
    assert!(error.contains("no answer within 100ms"), "{error}");
    assert_eq!(out.values.keys().collect::<Vec<_>>(), ["fast"]);
    let sources: Vec<_> = out.lookups.iter().map(|l| l.source).collect();
    assert_eq!(
        sources,
        [
            LookupSource::Fallback,
            LookupSource::Fallback,
            LookupSource::Service
        ]
    );

    let retry = enricher(vec![lookup(&server, "stock", "/slow", OnError::Retry)]);
    let out = retry.enrich(&event("f2", "c1"), &cancel).await;
    assert!(
        matches!(&out.verdict, EnrichVerdict::RetryLater { lookup, .. } if lookup == "stock"),
        "{out:?}"
    );

    let optional = enricher(vec![lookup(&server, "opt", "/slow", OnError::Continue)]);
    let out = optional.enrich(&event("f3", "c1"), &cancel).await;
    assert_eq!(out.verdict, EnrichVerdict::Complete);
    assert!(out.values.is_empty());
    assert!(out.lookups[0].error.is_some());

    // Failures are not cached: once the service answers in time, the lookup succeeds.
    let before = server.count("/slow");
    server.set_behaviour("/slow", Behaviour::ok());
    let out = optional.enrich(&event("f4", "c1"), &cancel).await;
    assert_eq!(out.values["opt"], json!({"late": true}));
    assert_eq!(server.count("/slow"), before + 1);
}
