//! Decision time per event on the demo policy set, with one engine reused for every decision
//! (as a worker does). Inputs: `benches/policy-inputs.json`, the same ones `scripts/bench-policy.sh`
//! gives `opa bench`.
//!
//! - `policy/eval/<input>`: the entry rule's value only (what `opa bench` measures);
//! - `policy/decide/<input>`: the worker's whole step: evaluate, check the contract, fail closed.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use reflex::policy::PolicySet;
use serde_json::Value;

fn inputs(root: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(root.join("benches/policy-inputs.json"))
        .expect("benches/policy-inputs.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("inputs are a JSON list");
    cases
        .into_iter()
        .map(|c| {
            let name = c["name"].as_str().expect("named input").to_owned();
            (name, c["input"].clone())
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
    .expect("demo policies load");
    let mut group = c.benchmark_group("policy");
    for (name, input) in inputs(root) {
        let value = regorus::Value::from(input);
        let mut evaluator = set.evaluator();
        group.bench_with_input(BenchmarkId::new("eval", &name), &value, |b, v| {
            b.iter(|| evaluator.evaluate(v.clone()).expect("defined"));
        });
        group.bench_with_input(BenchmarkId::new("decide", &name), &value, |b, v| {
            b.iter(|| evaluator.decide(v.clone()));
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
