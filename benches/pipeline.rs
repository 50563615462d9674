//! The actions role's stages without Kafka, on the demo's events and the repo's configuration
//! (`config/reflex.toml`: the schemas, policies and actions a worker loads; its `http` actions
//! run as `log` and its enrichment lookups are left out, so no stage waits on a network):
//!
//! - `pipeline/validate/<input>`: the JSON Schema check of the event's data;
//! - `pipeline/audit_encode/<input>`: the audit record to JSON;
//! - `pipeline/process/<input>`: `Processor::process` whole: decode, validate, policy, action,
//!   audit encode (what a worker does per record besides consuming and producing);
//! - `pipeline/process_traced/<input>`: the same with tracing on, as the actions role does it:
//!   the record's span continuing a `traceparent` header, its stage spans, queued for export to
//!   `REFLEX_BENCH_OTLP` (an OTLP/HTTP base URL; default a closed port, so exports fail and
//!   spans are dropped after encoding: the worker's cost without a collector's).
//!
//! Inputs: the events of `benches/policy-inputs.json`, as structured CloudEvents. `make bench`
//! sums the stages measured alone and compares the sum with the actions role's CPU per event.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use opentelemetry::context::FutureExt as _;
use reflex::action::{Action, ActionKind, ActionTable};
use reflex::config::Config;
use reflex::enrich::{Enricher, EnrichmentTable};
use reflex::ingest::Input;
use reflex::otel::{self, Consumed, Described, Tracer};
use reflex::role::actions::pipeline::{Processor, ProcessorSettings};
use reflex::service::{Services, ServicesConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn events(root: &Path) -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(root.join("benches/policy-inputs.json"))
        .expect("benches/policy-inputs.json");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("inputs are a JSON list");
    cases
        .into_iter()
        .map(|c| {
            let name = c["name"].as_str().expect("named input").to_owned();
            let bytes = serde_json::to_vec(&c["input"]["event"]).expect("event serializes");
            (name, bytes)
        })
        .collect()
}

fn stages(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("config/reflex.toml");
    let text = std::fs::read_to_string(&path).expect("config/reflex.toml");
    let config =
        Config::from_toml(&text, &path, std::iter::empty()).expect("the repo's config loads");
    // Inline actions only, and no enrichment: the stages measured alone, without a network.
    let inline: BTreeMap<String, Arc<Action>> = config
        .actions
        .iter()
        .map(|(ty, action)| {
            let action = match action.kind {
                ActionKind::Http(_) => Action {
                    name: action.name.clone(),
                    kind: ActionKind::Log {
                        message: "bench".into(),
                    },
                },
                _ => action.clone(),
            };
            (ty.to_owned(), Arc::new(action))
        })
        .collect();
    let services = Services::new(ServicesConfig::default()).expect("HTTP client");
    let settings = ProcessorSettings {
        audit_topic: config.topics.audit.clone(),
        dlq_topic: config.topics.dlq.clone(),
        retry_topic: config.topics.retry.clone(),
        retry_delay: config.actions_role.retry_delay,
        retry_rounds: config.actions_role.retry_rounds,
        max_event_bytes: config.actions_role.max_event_bytes,
        worker: "bench".into(),
        registry: None,
        type_header: config.type_header.clone(),
        policy_emit_topic: config.policy_emit_topic.clone(),
        policy_emit_topics: config.policy_emit_topics.clone(),
        enricher: Enricher::new(services.clone(), &EnrichmentTable::default()),
        services,
        tracer: None,
        publishers: std::sync::Arc::default(),
    };
    let actions = Arc::new(ActionTable::new(inline));
    let processor = Processor::new(
        config.schemas.clone(),
        Arc::clone(&actions),
        vec![config.policy.evaluator()],
        settings.clone(),
    );
    let endpoint =
        std::env::var("REFLEX_BENCH_OTLP").unwrap_or_else(|_| "http://127.0.0.1:9".into());
    let tracer = Tracer::start(&endpoint, "actions", "bench").expect("a tracer");
    let traced = Processor::new(
        config.schemas.clone(),
        actions,
        vec![config.policy.evaluator()],
        ProcessorSettings {
            tracer: Some(tracer.clone()),
            ..settings
        },
    );
    let traceparent: &[(&str, &[u8])] = &[(
        "traceparent",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cancel = CancellationToken::new();
    let mut group = c.benchmark_group("pipeline");
    for (name, bytes) in events(root) {
        let input = Input {
            topic: "events.bench",
            partition: 0,
            offset: 42,
            key: None,
            value: Some(&bytes),
            headers: &[],
            timestamp_ms: Some(1_772_359_200_000),
        };
        let event: Value = serde_json::from_slice(&bytes).expect("event");
        let ty = event["type"].as_str().expect("type").to_owned();
        let data = event["data"].clone();
        group.bench_with_input(BenchmarkId::new("validate", &name), &data, |b, d| {
            b.iter(|| {
                config
                    .schemas
                    .validate(&ty, d)
                    .expect("a schema for the type")
            });
        });
        let audit = runtime.block_on(processor.process(&input, &cancel)).audit;
        group.bench_with_input(BenchmarkId::new("audit_encode", &name), &audit, |b, a| {
            b.iter(|| a.encode());
        });
        group.bench_function(BenchmarkId::new("process", &name), |b| {
            b.iter(|| runtime.block_on(processor.process(&input, &cancel)));
        });
        let with_header = Input {
            headers: traceparent,
            ..input
        };
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        let source = event["source"].as_str().unwrap_or_default().to_owned();
        group.bench_function(BenchmarkId::new("process_traced", &name), |b| {
            b.iter(|| {
                let started = SystemTime::now();
                let parent = otel::parent(None, with_header.headers);
                let on = Consumed {
                    topic: with_header.topic,
                    partition: with_header.partition,
                    offset: with_header.offset,
                };
                let cx = tracer.record_span(&parent, started, on);
                tracer.finished_stage(&cx, "decode", started, started);
                tracer.finished_stage(&cx, "validate", started, started);
                let stages = traced.process(&with_header, &cancel);
                let processed = runtime.block_on(stages.with_context(cx.clone()));
                let described = Described {
                    id: &id,
                    ty: &ty,
                    source: &source,
                };
                otel::describe(&cx, described);
                otel::finish(&cx, processed.audit.outcome.as_str(), None);
                processed
            });
        });
    }
    group.finish();
    let stats = tracer.stats();
    eprintln!(
        "spans exported to {}: {}, failed: {}",
        tracer.endpoint(),
        stats.exported.load(std::sync::atomic::Ordering::Relaxed),
        stats.failed.load(std::sync::atomic::Ordering::Relaxed)
    );
    tracer.shutdown();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = stages
}
criterion_main!(benches);
