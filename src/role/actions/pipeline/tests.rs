use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::action::{Action, ActionKind};
use crate::policy::{Failure, PolicySet};

struct Fixture {
    _dir: tempfile::TempDir,
    processor: Processor,
}

const POLICY: &str = r#"package reflex
redact := []
decision := {"allow": count(deny) == 0, "reasons": deny, "obligations": {}}
deny contains "amount above limit" if input.event.data.amount > 100
deny contains msg if { input.event.data.amount == 13; msg := sprintf("%v", [1 / 0]) }
"#;

fn fixture(policy: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let schemas = dir.path().join("schemas");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&schemas).expect("mkdir");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::write(
        schemas.join("refund.requested.json"),
        r#"{"type":"object","required":["amount"],"properties":{"amount":{"type":"number"}}}"#,
    )
    .expect("write");
    std::fs::write(policies.join("p.rego"), policy).expect("write");
    let registry = SchemaRegistry::load(&schemas).expect("schemas");
    let set = PolicySet::load(&policies, "data.reflex.decision", Duration::from_secs(1))
        .and_then(|set| set.with_redaction(crate::policy::redaction::DEFAULT_RULE))
        .expect("policies");
    let mut table = BTreeMap::new();
    table.insert(
        "refund.requested".to_owned(),
        Arc::new(Action {
            name: "approve".into(),
            kind: ActionKind::Emit {
                topic: "refunds.approved".into(),
                event_type: "refund.approved".into(),
                source: "/r".into(),
            },
        }),
    );
    let services = crate::service::Services::new(crate::service::ServicesConfig::default())
        .expect("HTTP client");
    let processor = Processor::new(
        Arc::new(registry),
        Arc::new(ActionTable::new(table)),
        vec![set.evaluator()],
        ProcessorSettings {
            audit_topic: "audit".into(),
            dlq_topic: "dlq".into(),
            retry_topic: "retry".into(),
            retry_delay: Duration::from_secs(30),
            retry_rounds: 3,
            max_event_bytes: 1024,
            worker: "w1".into(),
            registry: None,
            type_header: "event_type".into(),
            policy_emit_topic: "policy.events".into(),
            policy_emit_topics: vec!["alerts".into()],
            services: services.clone(),
            enricher: crate::enrich::Enricher::new(
                services,
                &crate::enrich::EnrichmentTable::default(),
            ),
            tracer: None,
            publishers: std::sync::Arc::default(),
        },
    );
    Fixture {
        _dir: dir,
        processor,
    }
}

impl Fixture {
    /// Runs every stage for one record to its end.
    fn process(&self, input: &Input<'_>) -> Processed {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(self.processor.process(input, &CancellationToken::new()))
    }
}

fn input<'a>(value: &'a [u8], headers: &'a [(&'a str, &'a [u8])]) -> Input<'a> {
    Input {
        topic: "events",
        partition: 2,
        offset: 41,
        key: Some(b"k"),
        value: Some(value),
        headers,
        timestamp_ms: Some(1),
    }
}

fn refund(id: &str, data: &str) -> Vec<u8> {
    format!(r#"{{"specversion":"1.0","id":"{id}","source":"/desk","type":"refund.requested","data":{data}}}"#).into_bytes()
}

fn header<'a>(record: &'a OutRecord, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn audit_json(p: &Processed) -> Value {
    let last = p.records.last().expect("audit record is last");
    assert_eq!(last.topic, "audit");
    serde_json::from_slice(last.value.as_deref().expect("audit value")).expect("audit is json")
}

#[test]
fn allowed_event_emits_and_audits() {
    let f = fixture(POLICY);
    let value = refund("r1", r#"{"amount": 20}"#);
    let p = f.process(&input(&value, &[]));
    assert_eq!(p.records.len(), 2);
    assert_eq!(p.records[0].topic, "refunds.approved");
    let derived: Value =
        serde_json::from_slice(p.records[0].value.as_deref().expect("value")).expect("json");
    assert_eq!(derived["type"], "refund.approved");
    assert_eq!(derived["causationid"], "r1");
    let audit = audit_json(&p);
    assert_eq!(p.records[1].key.as_deref(), Some(&b"r1"[..]));
    assert_eq!(audit["outcome"], "actioned");
    assert_eq!(audit["decision"]["allow"], true);
    assert_eq!(audit["action"]["emitted_id"], derived["id"]);
    assert!(audit["policy_revision"]
        .as_str()
        .is_some_and(|r| r.starts_with("sha256:")));
    assert!(audit.get("data").is_none(), "audit never carries data");
}

#[test]
fn the_audit_record_names_the_trace_the_event_arrived_in_even_with_tracing_off() {
    let f = fixture(POLICY);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    // The CloudEvents extension attribute.
    let value = format!(
        r#"{{"specversion":"1.0","id":"t1","source":"/desk","type":"refund.requested","traceparent":"{traceparent}","data":{{"amount": 20}}}}"#
    );
    let p = f.process(&input(value.as_bytes(), &[]));
    assert_eq!(audit_json(&p)["traceid"], trace);
    // The Kafka header, also for a record dead-lettered at admission.
    let headers: [(&str, &[u8]); 1] = [("traceparent", traceparent.as_bytes())];
    let p = f.process(&input(b"not json", &headers));
    assert_eq!(p.audit.outcome, Outcome::DeadLettered);
    assert_eq!(audit_json(&p)["traceid"], trace);
    // No trace: no field.
    let value = refund("t2", r#"{"amount": 20}"#);
    let p = f.process(&input(&value, &[]));
    assert!(audit_json(&p).get("traceid").is_none());
}

#[test]
fn denied_event_is_audited_not_actioned() {
    let f = fixture(POLICY);
    let value = refund("r2", r#"{"amount": 500}"#);
    let p = f.process(&input(&value, &[]));
    assert_eq!(p.records.len(), 1, "only the audit record");
    let audit = audit_json(&p);
    assert_eq!(audit["outcome"], "denied");
    assert_eq!(audit["decision"]["reasons"], json!(["amount above limit"]));
    assert!(audit.get("action").is_none());
}

#[test]
fn policy_error_fails_closed() {
    let f = fixture(POLICY);
    let value = refund("r3", r#"{"amount": 13}"#);
    let p = f.process(&input(&value, &[]));
    assert_eq!(p.audit.outcome, Outcome::Denied);
    let decision = p.audit.decision.as_ref().expect("decision");
    assert_eq!(decision.failure, Some(Failure::Error));
}

const OBLIGING: &str = r#"package reflex
redact := ["data.secret", "data.nothing.here"]
decision := {"allow": input.event.data.amount < 100, "reasons": [], "obligations": {
    "emit": [e | input.event.data.amount > 50; e := {"type": "big.refund", "data": {"amount": input.event.data.amount}}],
}}
"#;

#[test]
fn redact_removes_fields_from_derived_events_and_emit_publishes_before_the_audit() {
    let f = fixture(OBLIGING);
    let value = refund("r7", r#"{"amount": 60, "secret": "4242"}"#);
    let p = f.process(&input(&value, &[]));
    let topics: Vec<&str> = p.records.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["policy.events", "refunds.approved", "audit"]);
    let emitted: Value =
        serde_json::from_slice(p.records[0].value.as_deref().expect("value")).expect("json");
    assert_eq!(emitted["type"], "big.refund");
    assert_eq!(emitted["data"], json!({"amount": 60}));
    assert_eq!(emitted["causationid"], "r7");
    assert_eq!(emitted["policyrevision"], p.audit.policy_revision.as_str());
    let derived: Value =
        serde_json::from_slice(p.records[1].value.as_deref().expect("value")).expect("json");
    assert_eq!(derived["data"], json!({"amount": 60}), "secret redacted");
    // The audit record names the emitted event, without its data.
    let audit = audit_json(&p);
    assert_eq!(
        audit["decision"]["obligations"]["emit"],
        json!([{"type": "big.refund", "topic": "policy.events", "id": emitted["id"]}])
    );
    // The audit record names the redacted paths, which come from the redaction rule.
    assert_eq!(
        audit["decision"]["obligations"]["redact"],
        json!(["data.nothing.here", "data.secret"])
    );
    // Re-processing derives the same emitted id (idempotent downstream).
    let again = f.process(&input(&value, &[]));
    assert_eq!(again.records[0].key, p.records[0].key);

    // Denied events still emit what the policy asks, and nothing else.
    let value = refund("r8", r#"{"amount": 600, "secret": "4242"}"#);
    let p = f.process(&input(&value, &[]));
    let topics: Vec<&str> = p.records.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["policy.events", "audit"]);
    assert_eq!(p.audit.outcome, Outcome::Denied);
}

#[test]
fn emit_to_a_topic_the_configuration_does_not_allow_fails_closed() {
    let policy = r#"package reflex
redact := []
decision := {"allow": true, "obligations": {"emit": [{"type": "x", "topic": input.event.data.to}]}}
"#;
    let f = fixture(policy);
    let value = refund("r10", r#"{"amount": 1, "to": "alerts"}"#);
    let p = f.process(&input(&value, &[]));
    assert_eq!(p.audit.outcome, Outcome::Actioned);
    assert_eq!(p.records[0].topic, "alerts");
    let value = refund("r11", r#"{"amount": 1, "to": "nowhere"}"#);
    let p = f.process(&input(&value, &[]));
    assert_eq!(p.audit.outcome, Outcome::Denied);
    assert_eq!(p.records.len(), 1, "only the audit record");
    let decision = p.audit.decision.expect("decision");
    assert_eq!(decision.failure, Some(Failure::Malformed));
    assert!(decision.detail.is_some_and(|d| d.contains("\"nowhere\"")));
}

#[test]
fn a_swapped_evaluator_decides_the_next_record_and_is_recorded() {
    let f = fixture(POLICY);
    let before = f.processor.policy_revision().to_owned();
    let value = refund("r9", r#"{"amount": 20}"#);
    assert_eq!(
        f.process(&input(&value, &[])).audit.outcome,
        Outcome::Actioned
    );
    f.processor
        .set_evaluators(crate::policy::Evaluator::unloaded);
    let p = f.process(&input(&value, &[]));
    assert_eq!(p.audit.outcome, Outcome::Denied);
    assert_eq!(p.audit.policy_revision, "none");
    assert_ne!(before, "none");
    let decision = p.audit.decision.expect("decision");
    assert_eq!(decision.reasons, ["policy_not_loaded"]);
    assert_eq!(decision.failure, Some(Failure::NoPolicy));
}

#[test]
fn bad_records_go_to_the_dlq_with_reason() {
    let f = fixture(POLICY);
    let cases: Vec<(Vec<u8>, DeadLetterReason, Option<&str>)> = vec![
        (
            b"\x01\x02not json".to_vec(),
            DeadLetterReason::Undecodable,
            None,
        ),
        (b"\x00\x00\x01".to_vec(), DeadLetterReason::WireFormat, None),
        (
            b"\x00\x00\x00\x00\x07avro".to_vec(),
            DeadLetterReason::SchemaNotFound,
            None,
        ),
        (
            refund("r4", r#"{"amount": "ten"}"#),
            DeadLetterReason::SchemaInvalid,
            Some("r4"),
        ),
        (
            br#"{"specversion":"1.0","id":"u1","source":"/s","type":"no.such.type"}"#.to_vec(),
            DeadLetterReason::UnknownType,
            Some("u1"),
        ),
        (vec![b' '; 2000], DeadLetterReason::TooLarge, None),
    ];
    for (value, reason, id) in cases {
        let p = f.process(&input(&value, &[("trace", b"t1")]));
        assert_eq!(p.records.len(), 2, "{reason:?}: dead letter + audit");
        let dlq = &p.records[0];
        assert_eq!(dlq.topic, "dlq");
        assert_eq!(
            dlq.value.as_deref(),
            Some(value.as_slice()),
            "{reason:?}: original bytes kept"
        );
        assert_eq!(dlq.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            header(dlq, crate::ingest::headers::REASON),
            Some(reason.code())
        );
        assert_eq!(header(dlq, crate::ingest::headers::OFFSET), Some("41"));
        assert_eq!(header(dlq, "trace"), Some("t1"), "original headers kept");
        let audit = audit_json(&p);
        assert_eq!(audit["outcome"], "dead_lettered");
        assert_eq!(audit["reason"], reason.code());
        let expected_key = id.map_or_else(|| "events/2/41".to_owned(), str::to_owned);
        assert_eq!(
            p.records[1].key.as_deref(),
            Some(expected_key.as_bytes()),
            "{reason:?}"
        );
    }
    let value = refund("r5", r#"{"amount": "ten"}"#);
    let p = f.process(&input(&value, &[]));
    let error = header(&p.records[0], crate::ingest::headers::ERROR).expect("error header");
    assert!(error.contains("data/amount"), "{error}");
}

#[test]
fn binary_mode_events_are_processed() {
    let f = fixture(POLICY);
    let headers: Vec<(&str, &[u8])> = vec![
        ("ce_specversion", b"1.0"),
        ("ce_id", b"b1"),
        ("ce_source", b"/desk"),
        ("ce_type", b"refund.requested"),
        ("content-type", b"application/json"),
    ];
    let p = f.process(&input(br#"{"amount": 1}"#, &headers));
    assert_eq!(p.audit.outcome, Outcome::Actioned);
    assert_eq!(p.audit.mode, Some(Mode::Binary));
}
