use super::*;
use crate::audit::Timings;
use crate::ingest::Input;

fn audit(ty: Option<&str>, outcome: Outcome, reason: Option<DeadLetterReason>) -> AuditRecord {
    let input = Input {
        topic: "events",
        partition: 0,
        offset: 7,
        key: None,
        value: None,
        headers: &[],
        timestamp_ms: None,
    };
    let mut a = AuditRecord::new(&input, "w");
    a.ty = ty.map(str::to_owned);
    a.outcome = outcome;
    a.reason = reason;
    a.timings_us = Timings {
        decode: 3,
        validate: 2,
        enrich: 0,
        policy: 40,
        action: 0,
    };
    a
}

fn metrics() -> Metrics {
    Metrics::new(
        "actions",
        "reflex-actions",
        ["order.placed", "refund.requested"],
        Duration::from_secs(30),
    )
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
}

#[test]
fn outcomes_are_counted_by_type_with_bounded_labels() {
    let m = metrics();
    for _ in 0..4 {
        let a = audit(
            Some("order.placed"),
            Outcome::DeadLettered,
            Some(DeadLetterReason::SchemaInvalid),
        );
        EventProcessed { audit: &a }.emit(&m);
    }
    let a = audit(
        Some("order.shipped-by-someone-else"),
        Outcome::DeadLettered,
        Some(DeadLetterReason::UnknownType),
    );
    EventProcessed { audit: &a }.emit(&m);
    let a = audit(
        None,
        Outcome::DeadLettered,
        Some(DeadLetterReason::Undecodable),
    );
    EventProcessed { audit: &a }.emit(&m);
    let a = audit(Some("refund.requested"), Outcome::Actioned, None);
    EventProcessed { audit: &a }.emit(&m);
    let text = render(&m);
    assert_eq!(
        line(
            &text,
            "reflex_dead_letters_total{type=\"order.placed\",reason=\"schema_invalid\"}"
        ),
        Some("4"),
        "{text}"
    );
    assert_eq!(
        line(
            &text,
            "reflex_events_processed_total{type=\"(unknown)\",outcome=\"dead_lettered\"}"
        ),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        line(
            &text,
            "reflex_events_processed_total{type=\"(undecodable)\",outcome=\"dead_lettered\"}"
        ),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        line(
            &text,
            "reflex_events_processed_total{type=\"refund.requested\",outcome=\"actioned\"}"
        ),
        Some("1"),
        "{text}"
    );
    assert!(
        !text.contains("shipped-by-someone-else"),
        "a type without a schema is never a label"
    );
    // Decoding ran for all 7; validation for the 4 schema-invalid and the actioned one; the
    // policy only where there is a decision (none here).
    assert_eq!(
        line(
            &text,
            "reflex_stage_duration_seconds_count{stage=\"decode\"}"
        ),
        Some("7")
    );
    assert_eq!(
        line(
            &text,
            "reflex_stage_duration_seconds_count{stage=\"validate\"}"
        ),
        Some("5")
    );
    assert_eq!(
        line(
            &text,
            "reflex_stage_duration_seconds_count{stage=\"policy\"}"
        ),
        Some("0")
    );
    assert_eq!(
        line(
            &text,
            "reflex_stage_duration_seconds_bucket{stage=\"decode\",le=\"+Inf\"}"
        ),
        Some("7")
    );
}

#[test]
fn every_family_has_help_and_type_once() {
    let m = metrics();
    PolicyActive {
        revision: "sha256:ab\"c",
        engine: PolicyEngine::Compiled,
    }
    .emit(&m);
    let text = render(&m);
    let mut seen = BTreeSet::new();
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = l.split(' ').nth(2).unwrap_or_default();
        assert!(seen.insert(name.to_owned()), "{name} declared twice");
        assert!(name.starts_with("reflex_"), "{name}");
    }
    assert!(
        text.contains("reflex_policy_info{revision=\"sha256:ab\\\"c\",engine=\"compiled\"} 1"),
        "label values are escaped: {text}"
    );
}

#[test]
fn readiness_needs_a_policy_and_partitions() {
    let m = metrics();
    assert_eq!(m.readiness(), Err("no policy set loaded".to_owned()));
    PolicyActive {
        revision: "sha256:1",
        engine: PolicyEngine::Interpreter,
    }
    .emit(&m);
    assert_eq!(m.readiness(), Err("no partitions assigned yet".to_owned()));
    let tps = [("events".to_owned(), 0), ("events".to_owned(), 1)];
    PartitionsAssigned { partitions: &tps }.emit(&m);
    assert_eq!(m.readiness(), Ok(()));
    PartitionsRevoked { partitions: &tps }.emit(&m);
    assert_eq!(
        m.readiness(),
        Err("no partitions assigned (all revoked)".to_owned())
    );
}

#[test]
fn readiness_needs_a_producer_that_reached_the_brokers_once_it_has_one() {
    let m = metrics();
    PolicyActive {
        revision: "sha256:1",
        engine: PolicyEngine::Interpreter,
    }
    .emit(&m);
    PartitionsAssigned {
        partitions: &[("events".to_owned(), 0)],
    }
    .emit(&m);
    let names: Vec<&str> = m.ready_checks().iter().map(|c| c.name).collect();
    assert_eq!(names, ["policy", "group"], "no producer, no producer check");
    m.watch_producer();
    assert_eq!(
        m.readiness(),
        Err("the producer has not reached the brokers yet".to_owned())
    );
    ProducerChecked { error: None }.emit(&m);
    assert_eq!(m.readiness(), Ok(()));
    ProducerChecked {
        error: Some("the brokers did not answer the producer: Local: Broker transport failure"),
    }
    .emit(&m);
    assert_eq!(
        m.readiness(),
        Err("the brokers did not answer the producer: Local: Broker transport failure".to_owned())
    );
    let names: Vec<&str> = m.ready_checks().iter().map(|c| c.name).collect();
    assert_eq!(names, ["policy", "group", "producer"]);
    ProducerChecked { error: None }.emit(&m);
    assert_eq!(m.readiness(), Ok(()));
}

#[test]
fn action_attempts_are_counted_by_service_result_and_bounded_attempt() {
    use crate::service::{AttemptDone, AttemptResult};
    let m = metrics();
    let observe = ActionAttempted::observer(std::sync::Arc::new(metrics()));
    observe(&AttemptDone {
        service: "unused",
        attempt: 1,
        result: AttemptResult::Timeout,
        elapsed: Duration::from_millis(1),
    });
    let attempts = [
        (1, AttemptResult::Status(503)),
        (2, AttemptResult::Status(502)),
        (3, AttemptResult::Timeout),
        (4, AttemptResult::CircuitOpen),
        (5, AttemptResult::Connect),
        (6, AttemptResult::Status(201)),
    ];
    for (attempt, result) in attempts {
        ActionAttempted {
            done: &AttemptDone {
                service: "payments:8080",
                attempt,
                result,
                elapsed: Duration::from_millis(30),
            },
        }
        .emit(&m);
    }
    let text = render(&m);
    let series = |result: &str, attempt: &str| {
        line(
            &text,
            &format!("reflex_action_attempts_total{{service=\"payments:8080\",result=\"{result}\",attempt=\"{attempt}\"}} "),
        )
        .map(str::to_owned)
    };
    assert_eq!(series("5xx", "1").as_deref(), Some("1"));
    assert_eq!(series("5xx", "2").as_deref(), Some("1"));
    assert_eq!(series("timeout", "3").as_deref(), Some("1"));
    assert_eq!(series("circuit_open", "4+").as_deref(), Some("1"));
    assert_eq!(series("connect", "4+").as_deref(), Some("1"));
    assert_eq!(series("2xx", "4+").as_deref(), Some("1"));
    assert_eq!(
        line(
            &text,
            "reflex_action_attempt_duration_seconds_count{service=\"payments:8080\"}"
        ),
        Some("6")
    );
    assert_eq!(
        line(
            &text,
            "reflex_action_attempt_duration_seconds_bucket{service=\"payments:8080\",le=\"0.025\"}"
        ),
        Some("0"),
        "30 ms is above the 25 ms bucket"
    );
    assert_eq!(
        line(
            &text,
            "reflex_action_attempt_duration_seconds_bucket{service=\"payments:8080\",le=\"0.05\"}"
        ),
        Some("6")
    );
    assert!(!text.contains("unused"), "another worker's metrics");
    assert_eq!(line(&text, "reflex_spans_started_total"), Some("0"));
}

#[test]
fn health_fails_when_the_loop_stalls() {
    // A stall timeout of 1 ms is certainly exceeded after sleeping 5 ms.
    let m = Metrics::new("lake", "reflex-lake", [], Duration::from_millis(1));
    m.progress();
    std::thread::sleep(Duration::from_millis(5));
    let why = m.health().expect_err("stalled");
    assert!(why.contains("lake worker's loop made no progress"), "{why}");
    let m = Metrics::new("lake", "reflex-lake", [], Duration::from_secs(3600));
    m.progress();
    assert_eq!(m.health(), Ok(()));
}

#[test]
fn lag_is_the_distance_from_the_position_to_the_high_watermark() {
    let mut s = PartitionState::default();
    assert_eq!(s.lag_records(), None, "unknown until the watermarks are");
    s.watermarks = Some((10, 25));
    assert_eq!(
        s.lag_records(),
        Some(15),
        "from the low watermark without a commit"
    );
    s.committed = Some(20);
    assert_eq!(s.lag_records(), Some(5));
    s.position = Some(22);
    s.last_timestamp_ms = Some(1_000);
    assert_eq!(
        s.lag_records(),
        Some(3),
        "the position wins over the commit"
    );
    assert_eq!(s.lag_seconds(4_500), Some(3.5));
    s.position = Some(26);
    assert_eq!(s.lag_records(), Some(0), "never negative");
    assert_eq!(s.lag_seconds(9_000), Some(0.0));
    let behind = PartitionState {
        watermarks: Some((0, 3)),
        behind_since_ms: Some(2_000),
        ..PartitionState::default()
    };
    assert_eq!(behind.lag_seconds(3_000), Some(1.0));
}

#[test]
fn consumed_records_move_only_assigned_partitions() {
    let m = metrics();
    let tps = [("events".to_owned(), 0)];
    PartitionsAssigned { partitions: &tps }.emit(&m);
    for (partition, offset) in [(0, 4), (1, 9)] {
        RecordConsumed {
            topic: "events",
            partition,
            offset,
            timestamp_ms: Some(1),
        }
        .emit(&m);
    }
    let mut seen = Vec::new();
    m.update_partitions(|tp, s| seen.push((tp.clone(), s.position)));
    assert_eq!(seen, [(("events".to_owned(), 0), Some(5))]);
}

#[tokio::test]
async fn an_address_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let err = serve(addr, std::sync::Arc::new(metrics()), None, stop)
        .await
        .expect_err("in use");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot listen for telemetry on {addr}"))
            && msg.contains("in use"),
        "{msg}"
    );
}

#[test]
fn the_status_reads_the_counters_the_metrics_render() {
    let m = metrics();
    for _ in 0..3 {
        let a = audit(
            Some("order.placed"),
            Outcome::DeadLettered,
            Some(DeadLetterReason::SchemaInvalid),
        );
        EventProcessed { audit: &a }.emit(&m);
    }
    let a = audit(Some("order.placed"), Outcome::Actioned, None);
    EventProcessed { audit: &a }.emit(&m);
    let status = m.status();
    assert_eq!(
        (status.role, status.group.as_str()),
        ("actions", "reflex-actions")
    );
    assert_eq!(status.types.len(), 1);
    let t = &status.types[0];
    assert_eq!(
        (
            t.ty.as_str(),
            t.actioned,
            t.dead_lettered,
            t.denied,
            t.retrying
        ),
        ("order.placed", 1, 3, 0, 0)
    );
    let text = render(&m);
    for (outcome, n) in [("actioned", t.actioned), ("dead_lettered", t.dead_lettered)] {
        let series =
            format!("reflex_events_processed_total{{type=\"order.placed\",outcome=\"{outcome}\"}}");
        assert_eq!(
            line(&text, &series),
            Some(n.to_string().as_str()),
            "{series}"
        );
    }
    assert_eq!(status.dead_letters.len(), 1);
    assert_eq!(
        (status.dead_letters[0].reason, status.dead_letters[0].count),
        ("schema_invalid", 3)
    );
    assert!(status.lake.is_none(), "the actions role has no lake");
    assert_eq!(status.readiness, "not ready: no policy set loaded");
}

#[test]
fn recent_keeps_the_last_denials_and_dead_letters_newest_first() {
    let m = metrics();
    for i in 0..(RECENT_CAPACITY + 5) {
        let (outcome, reason) = if i % 2 == 0 {
            (Outcome::Denied, None)
        } else {
            (Outcome::DeadLettered, Some(DeadLetterReason::SchemaInvalid))
        };
        let mut a = audit(Some("order.placed"), outcome, reason);
        a.event_id = Some(format!("e-{i}"));
        EventProcessed { audit: &a }.emit(&m);
        let mut ok = audit(Some("order.placed"), Outcome::Actioned, None);
        ok.event_id = Some(format!("ok-{i}"));
        EventProcessed { audit: &ok }.emit(&m);
    }
    let recent = m.status().recent;
    assert_eq!(recent.len(), RECENT_CAPACITY);
    let ids: Vec<&str> = recent
        .iter()
        .filter_map(|r| r.event_id.as_deref())
        .collect();
    assert_eq!(ids.first(), Some(&"e-24"));
    assert_eq!(ids.last(), Some(&"e-5"));
    assert!(
        ids.iter().all(|id| id.starts_with("e-")),
        "actioned events are not listed"
    );
    assert_eq!(recent[1].reason, Some("schema_invalid"));
}

#[test]
fn a_recent_entry_holds_what_the_audit_record_says_cut_short() {
    let mut a = audit(Some("order.placed"), Outcome::Denied, None);
    a.event_id = Some("x".repeat(500));
    a.decision = Some(crate::policy::Decision {
        allow: false,
        reasons: vec!["source is not allowed".to_owned()],
        obligations: serde_json::Map::new(),
        failure: None,
        detail: None,
    });
    let r = Recent::of(&a);
    assert_eq!(r.reasons, ["source is not allowed"]);
    let id = r.event_id.expect("an id");
    assert_eq!(
        id.chars().count(),
        status::FIELD_CHARS + 1,
        "cut, with an ellipsis"
    );
    let json = serde_json::to_value(Recent::of(&a)).expect("serialises");
    assert_eq!(json["outcome"], "denied");
    assert_eq!(json["type"], "order.placed");
}

#[test]
fn the_lake_status_names_its_tables_and_totals() {
    let m = Metrics::new(
        "lake",
        "reflex-lake",
        ["order.placed"],
        Duration::from_secs(30),
    );
    let text = render(&m);
    assert_eq!(
        line(
            &text,
            "reflex_lake_rows_written_total{table=\"order.placed\"}"
        ),
        Some("0"),
        "a table is exported before its first file"
    );
    assert!(!text.contains("reflex_lake_last_file_age_seconds{"));
    for (table, rows) in [
        ("order.placed", 10),
        ("reflex.audit", 3),
        ("order.placed", 5),
    ] {
        LakeFilesWritten {
            table,
            files: 1,
            rows,
            bytes: 1000,
        }
        .emit(&m);
    }
    let lake = m.status().lake.expect("the lake role reports its lake");
    let tables: Vec<(&str, u64, u64)> = lake
        .tables
        .iter()
        .map(|t| (t.table.as_str(), t.files, t.rows))
        .collect();
    assert_eq!(tables, [("order.placed", 2, 15), ("reflex.audit", 1, 3)]);
    assert!(lake
        .tables
        .iter()
        .all(|t| t.last_file_age_seconds.is_some()));
    assert_eq!((lake.files, lake.rows, lake.bytes), (3, 18, 3000));
    let text = render(&m);
    assert_eq!(
        line(
            &text,
            "reflex_lake_rows_written_total{table=\"order.placed\"}"
        ),
        Some("15"),
        "the page and the metrics read the same counters"
    );
    assert!(text.contains("reflex_lake_last_file_age_seconds{table=\"reflex.audit\"}"));
}

/// The PromQL expressions of the Grafana dashboard in `deploy/grafana/`.
fn dashboard_exprs() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/reflex.json");
    let text = std::fs::read_to_string(path).expect("the dashboard is in the repository");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.extend(target["expr"].as_str().map(str::to_owned));
        }
    }
    exprs
}

#[test]
fn every_dashboard_expression_names_metrics_reflex_exports() {
    let mut families = BTreeSet::new();
    for m in [
        metrics(),
        Metrics::new("lake", "reflex-lake", [], Duration::from_secs(30)),
    ] {
        let text = render(&m);
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut words = l.split(' ').skip(2);
            let (name, kind) = (words.next().unwrap_or_default(), words.next());
            families.insert(name.to_owned());
            if kind == Some("histogram") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    families.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("reflex_"))
            .collect();
        assert!(!names.is_empty(), "{expr} reads no reflex metric");
        for name in names {
            assert!(
                families.contains(name),
                "{expr}: {name} is not a metric reflex exports"
            );
            used.insert(name.to_owned());
        }
    }
    for needed in [
        "reflex_consumer_lag_seconds",
        "reflex_dead_letters_total",
        "reflex_breaker_state",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
}

#[test]
fn actions_are_counted_by_result_and_lookups_by_source() {
    use crate::action::ActionReport;
    use crate::enrich::{LookupReport, LookupSource};
    let m = metrics();
    let http = |status: Option<u16>| ActionReport {
        name: "notify_ledger".into(),
        kind: "http",
        emitted_id: None,
        emitted_topic: None,
        status,
        attempts: Some(2),
    };
    for status in [Some(200), Some(200), Some(503), None] {
        let mut a = audit(Some("order.placed"), Outcome::Actioned, None);
        a.action = Some(http(status));
        a.lookups = vec![LookupReport {
            name: "customer".into(),
            source: if status == Some(200) {
                LookupSource::Cache
            } else {
                LookupSource::Fallback
            },
            status,
            error: None,
        }];
        EventProcessed { audit: &a }.emit(&m);
    }
    let text = render(&m);
    let value = |prefix: &str| line(&text, prefix).unwrap_or_else(|| panic!("{prefix} in\n{text}"));
    assert_eq!(
        value("reflex_action_results_total{action=\"notify_ledger\",kind=\"http\",result=\"200\"}"),
        "2"
    );
    assert_eq!(
        value("reflex_action_results_total{action=\"notify_ledger\",kind=\"http\",result=\"503\"}"),
        "1"
    );
    assert_eq!(
        value(
            "reflex_action_results_total{action=\"notify_ledger\",kind=\"http\",result=\"error\"}"
        ),
        "1"
    );
    assert_eq!(
        value("reflex_lookups_total{lookup=\"customer\",source=\"cache\"}"),
        "2"
    );
    assert_eq!(
        value("reflex_lookups_total{lookup=\"customer\",source=\"fallback\"}"),
        "2"
    );
    assert_eq!(
        value("reflex_lookups_total{lookup=\"customer\",source=\"service\"}"),
        "0"
    );
}

#[test]
fn events_read_again_after_their_retry_copy_ran_are_counted() {
    let m = metrics();
    assert!(render(&m).contains("\nreflex_events_read_again_total 0\n"));
    EventReadAgain.emit(&m);
    EventReadAgain.emit(&m);
    assert!(render(&m).contains("\nreflex_events_read_again_total 2\n"));
}
