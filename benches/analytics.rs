//! The analytics engine alone: events through a count window over 10 000 groups (the figure
//! the analytics role's CPU per event is held to), and the cost of a state checkpoint.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reflex::analytics::spec::parse_file;
use reflex::analytics::{Analysis, Engine, Observation};
use reflex::event::CloudEvent;

const GROUPS: usize = 10_000;

fn analyses() -> Arc<[Analysis]> {
    parse_file(
        Path::new("bench.toml"),
        r#"
[per_customer]
types = ["order.placed"]
group_by = ["data.customer_id"]
window = { tumbling = "1m" }
aggregates = { orders = "count" }
condition = "orders > 1000"
emit = "bench.found"
"#,
    )
    .expect("valid")
    .into()
}

fn events(n: usize) -> Vec<CloudEvent> {
    (0..n)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "specversion": "1.0", "id": format!("e{i}"), "source": "/shop/web",
                "type": "order.placed", "data": {"customer_id": format!("c-{}", i % GROUPS), "amount": 1.0}
            }))
            .expect("event")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = events(100_000);
    let mut group = c.benchmark_group("analytics");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("count_window_10k_groups", |b| {
        b.iter(|| {
            let mut engine = Engine::new(analyses(), 100_000);
            let mut out = Vec::new();
            // 100 events per second of event time: windows close as the stream moves on.
            for (offset, event) in events.iter().enumerate() {
                engine.observe(
                    Observation {
                        event: event.into(),
                        time_ms: offset as i64 * 10,
                        topic: "events",
                        offset: offset as i64,
                    },
                    &mut out,
                );
            }
            black_box(out.len())
        })
    });
    group.finish();

    let mut engine = Engine::new(analyses(), 100_000);
    let mut out = Vec::new();
    for (offset, event) in events.iter().take(GROUPS).enumerate() {
        let obs = Observation {
            event: event.into(),
            time_ms: 0,
            topic: "events",
            offset: offset as i64,
        };
        engine.observe(obs, &mut out);
    }
    let bytes = engine.snapshot(0).expect("snapshot").len();
    eprintln!("analytics: a checkpoint of {GROUPS} open groups is {bytes} bytes");
    let mut checkpoint = c.benchmark_group("analytics_checkpoint");
    checkpoint.throughput(Throughput::Elements(GROUPS as u64));
    checkpoint.bench_function("snapshot_10k_groups", |b| {
        b.iter(|| black_box(engine.snapshot(0).expect("snapshot").len()))
    });
    checkpoint.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
