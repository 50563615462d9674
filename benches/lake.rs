//! Lake encoding throughput: demo-like `order.placed` events appended to a file's Arrow
//! builders and encoded as one zstd Parquet file in memory, the work the lake role does per file
//! besides Kafka and the store; beside it the same through JSON rows and arrow-json's decoder.
//! `make bench-lake` runs it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reflex::event::CloudEvent;
use reflex::lake::encode::{encode, encode_batches, EncodeSettings};
use reflex::lake::rows::Rows;
use reflex::lake::table::{Coordinates, Table};
use serde_json::{json, Value};

const EVENTS: usize = 20_000;

fn events() -> Vec<CloudEvent> {
    (0..EVENTS)
        .map(|n| {
            let items: Vec<Value> = (0..(n % 4 + 1))
                .map(|i| json!({"sku": format!("SKU-{}", 100 + (n * 7 + i) % 900), "quantity": 1 + i % 3, "unit_price": 5.0 + (n % 195) as f64}))
                .collect();
            serde_json::from_value(json!({
                "specversion": "1.0", "id": format!("bench-order-{n}"), "source": "/shop/web",
                "type": "order.placed", "subject": format!("ord-{n}"),
                "time": "2026-03-04T05:06:07.123Z", "datacontenttype": "application/json",
                "data": {"order_id": format!("ord-{n}"), "customer_id": format!("cust-{}", n % 60),
                         "amount": 12.5 + (n % 1000) as f64, "currency": "EUR", "items": items,
                         "placed_at": "2026-03-04T05:06:07.000Z"}
            }))
            .unwrap_or_else(|e| panic!("bench event {n} is a CloudEvent: {e}"))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let schema_path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/order.placed.json");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(schema_path).unwrap_or_else(|e| panic!("{schema_path}: {e}")),
    )
    .unwrap_or_else(|e| panic!("{schema_path}: {e}"));
    let table = Table::events("order.placed", &schema);
    let events = events();
    let input_bytes: usize = events
        .iter()
        .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len()))
        .sum();
    let settings = EncodeSettings {
        row_group_rows: 122_880,
        zstd_level: 3,
    };
    let rows = |events: &[CloudEvent]| {
        let mut json = Vec::with_capacity(events.len() * 512);
        for (offset, event) in events.iter().enumerate() {
            let at = Coordinates {
                topic: "events.orders",
                partition: 0,
                offset: offset as i64,
                timestamp_ms: Some(1_772_600_000_000),
            };
            table.event_row(event, at, chrono::Utc::now(), &mut json);
        }
        json
    };
    let json = rows(&events);
    let parquet = encode(
        &table.name,
        &table.schema,
        table.id_column(),
        &json,
        settings,
        vec![],
    )
    .unwrap_or_else(|e| panic!("encodes: {e}"));
    eprintln!(
        "{EVENTS} events: {input_bytes} bytes as CloudEvent JSON, {} bytes of rows, {} bytes of Parquet",
        json.len(),
        parquet.len()
    );

    let arrow = |events: &[CloudEvent]| {
        let mut rows = Rows::default();
        for (offset, event) in events.iter().enumerate() {
            let at = Coordinates {
                topic: "events.orders",
                partition: 0,
                offset: offset as i64,
                timestamp_ms: Some(1_772_600_000_000),
            };
            table.event(event, at, chrono::Utc::now()).append(&mut rows);
        }
        rows.seal();
        let batches = rows
            .batches()
            .unwrap_or_else(|e| panic!("rows: {e}"))
            .to_vec();
        encode_batches(&table.name, table.id_column(), &batches, settings, vec![]).map(|p| p.len())
    };
    let json_path = |events: &[CloudEvent]| {
        let json = rows(events);
        encode(
            &table.name,
            &table.schema,
            table.id_column(),
            &json,
            settings,
            vec![],
        )
        .map(|p| p.len())
    };

    let mut group = c.benchmark_group("lake");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("rows_and_parquet_events", |b| {
        b.iter(|| arrow(black_box(&events)))
    });
    group.bench_function("json_rows_and_parquet_events", |b| {
        b.iter(|| json_path(black_box(&events)))
    });
    group.throughput(Throughput::Bytes(input_bytes as u64));
    group.bench_function("rows_and_parquet_bytes", |b| {
        b.iter(|| arrow(black_box(&events)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
