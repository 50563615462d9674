//! Decision time per event on the demo policy set, with one engine reused for every decision
//! (as a worker does). Inputs: `benches/policy-inputs.json`, the same ones `scripts/bench-policy.sh`
//! gives `opa bench`.
//!
//! - `policy/eval/<input>`: the entry rule's value only (what `opa bench` measures);
//! - `policy/decide/<input>`: the worker's whole decision: evaluate, check the contract, fail
//!   closed, with the default engine (regorus's interpreter);
//! - `policy/decide_compiled/<input>`: the same with `[policy] engine = "compiled"` (the entry
//!   rule compiled to regorus's VM), for the ratio in the same run;
//! - `policy/input/<input>`: building the input document from the decoded event
//!   (`ingest::policy_input`); `policy/input_json/<input>`: the same document through
//!   `serde_json::json!` and a conversion (the former route);
//! - `policy/stage/<input>`, `policy/stage_compiled/<input>`: input document + decision, the
//!   policy stage of an audit record's `timings_us.policy`, with each engine;
//! - `policy/redaction/<input>`: what the lake role pays per event to learn what to hide: the
//!   redaction rule, answered from the evaluator's cache after the first event of a type (the
//!   lake used to take `policy/stage` for it).

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use reflex::event::{CloudEvent, Mode};
use reflex::ingest::{policy_document, policy_input, Input};
use reflex::policy::{PolicyEngine, PolicySet};
use serde_json::Value;

struct Case {
    name: String,
    input: Value,
    event: CloudEvent,
    now: chrono::DateTime<chrono::Utc>,
}

fn cases(root: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(root.join("benches/policy-inputs.json"))
        .expect("benches/policy-inputs.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("inputs are a JSON list");
    cases
        .into_iter()
        .map(|c| {
            let input = c["input"].clone();
            let now = input["context"]["now"].as_str().expect("context.now");
            Case {
                name: c["name"].as_str().expect("named input").to_owned(),
                event: serde_json::from_value(input["event"].clone()).expect("a CloudEvent"),
                now: chrono::DateTime::parse_from_rfc3339(now)
                    .expect("RFC 3339")
                    .with_timezone(&chrono::Utc),
                input,
            }
        })
        .collect()
}

fn decisions(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = PolicySet::load(
        &root.join("policies"),
        "data.reflex.decision",
        Duration::from_millis(100),
    )
    .and_then(|set| set.with_redaction(reflex::policy::redaction::DEFAULT_RULE))
    .expect("demo policies load")
    .with_engine(PolicyEngine::Compiled);
    assert!(set.is_compiled(), "the demo policies compile to the VM");
    let mut group = c.benchmark_group("policy");
    for case in cases(root) {
        let name = &case.name;
        let value = regorus::Value::from(case.input.clone());
        let mut compiled = set.evaluator();
        let mut interpreter = set.interpreter();
        assert_eq!(
            compiled.decide(value.clone()),
            interpreter.decide(value.clone()),
            "{name}: the VM and the interpreter decide the same"
        );
        group.bench_with_input(BenchmarkId::new("eval", name), &value, |b, v| {
            b.iter(|| interpreter.evaluate(v.clone()).expect("defined"));
        });
        group.bench_with_input(BenchmarkId::new("decide", name), &value, |b, v| {
            b.iter(|| interpreter.decide(v.clone()));
        });
        group.bench_with_input(BenchmarkId::new("decide_compiled", name), &value, |b, v| {
            b.iter(|| compiled.decide(v.clone()));
        });
        let ctx = &case.input["context"];
        let input = Input {
            topic: ctx["topic"].as_str().expect("context.topic"),
            partition: ctx["partition"].as_i64().expect("partition") as i32,
            offset: ctx["offset"].as_i64().expect("offset"),
            key: None,
            value: None,
            headers: &[],
            timestamp_ms: ctx["kafka_timestamp_ms"].as_i64(),
        };
        let (event, now) = (&case.event, &case.now);
        let none = serde_json::Map::new();
        // As the demo's desk signs its refunds.
        let signed = reflex::publisher::Publisher {
            verified: true,
            key_id: Some("support-desk".into()),
            status: reflex::publisher::Status::Verified,
            claimed_key_id: Some("support-desk".into()),
        };
        let signed = &signed;
        assert_eq!(
            policy_input(event, Mode::Structured, &input, now, signed, &none),
            regorus::Value::from(policy_document(
                event,
                Mode::Structured,
                &input,
                now,
                signed,
                &none
            )),
        );
        group.bench_function(BenchmarkId::new("input", name), |b| {
            b.iter(|| policy_input(event, Mode::Structured, &input, now, signed, &none));
        });
        group.bench_function(BenchmarkId::new("input_json", name), |b| {
            b.iter(|| {
                regorus::Value::from(policy_document(
                    event,
                    Mode::Structured,
                    &input,
                    now,
                    signed,
                    &none,
                ))
            });
        });
        group.bench_function(BenchmarkId::new("stage", name), |b| {
            b.iter(|| {
                interpreter.decide(policy_input(
                    event,
                    Mode::Structured,
                    &input,
                    now,
                    signed,
                    &none,
                ))
            });
        });
        group.bench_function(BenchmarkId::new("stage_compiled", name), |b| {
            b.iter(|| {
                compiled.decide(policy_input(
                    event,
                    Mode::Structured,
                    &input,
                    now,
                    signed,
                    &none,
                ))
            });
        });
        let mut redactor = set.evaluator();
        group.bench_function(BenchmarkId::new("redaction", name), |b| {
            b.iter(|| redactor.redaction(event).expect("paths"));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decisions
}
criterion_main!(benches);
