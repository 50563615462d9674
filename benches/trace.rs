//! `reflex trace`'s lake lookup on a lake of 1,000,000 events: the lake's own writer (segments
//! per partition, `write_segment`) fills a local directory with the events of three types over
//! two days and their 1,000,000 audit records, then the lookup that `reflex trace` runs
//! (`lake::find::files_holding`: date pruning, statistics, bloom filters, then rows) is timed
//! for an id that is there and one that is not. `make bench-trace` runs it (also in `make
//! bench`); building the lake takes a minute or two the first time.
//!
//! With a broker (`REFLEX_BENCH_BROKERS`, default the local stack's 127.0.0.1:9092), the whole
//! `reflex trace` is timed as well: an audit topic of 3 partitions holding the same 1,000,000
//! audit records (filled once, keyed by event id as the actions role writes them) is read
//! from `--since 24h` beside the lake search. Without one, that part is skipped with a note.

use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use reflex::config::{Config, LakeConfig, RawLake, RawLakeRole};
use reflex::event::CloudEvent;
use reflex::ingest::OutRecord;
use reflex::kafka;
use reflex::lake::encode::EncodeSettings;
use reflex::lake::find::files_holding;
use reflex::lake::segment::{Limits, Row, Segments, TopicPartition};
use reflex::lake::store::LakeStore;
use reflex::lake::table::Coordinates;
use reflex::lake::write::write_segment;
use reflex::lake::Tables;
use reflex::schema::SchemaRegistry;
use reflex::trace::{trace, TraceOptions};
use serde_json::json;

const EVENTS: u64 = 1_000_000;
const PARTITIONS: u64 = 4;
/// Records per segment (the lake role cuts by rows, bytes or age; this is about five minutes of
/// a steady 40 events per second per partition).
const SEGMENT_RECORDS: usize = 12_000;
/// The events' times spread over two days from this instant (2026-03-04T00:00:00Z).
const START_MS: i64 = 1_772_582_400_000;
const SPAN_MS: i64 = 2 * 86_400_000;
const TYPES: [&str; 3] = ["order.placed", "payment.authorized", "refund.requested"];

/// The id of the `n`th event: a UUID that looks random, as producers' ids do.
fn event_id(n: u64) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &n.to_le_bytes()).to_string()
}

fn event(n: u64) -> CloudEvent {
    let ty = TYPES[(n % 3) as usize];
    let time =
        chrono::DateTime::from_timestamp_millis(START_MS + (n as i64 * SPAN_MS) / EVENTS as i64)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let data = match ty {
        "order.placed" => {
            json!({"order_id": format!("ord-{n}"), "customer_id": format!("c-{}", n % 997),
            "amount": (n % 500) as f64 + 0.5, "currency": "EUR", "items": [{"sku": "S-1", "quantity": 1}]})
        }
        "payment.authorized" => {
            json!({"payment_id": format!("pay-{n}"), "order_id": format!("ord-{n}"),
            "amount": (n % 500) as f64, "currency": "EUR"})
        }
        _ => json!({"refund_id": format!("ref-{n}"), "order_id": format!("ord-{n}"),
            "amount": (n % 90) as f64, "currency": "EUR", "reason": "damaged"}),
    };
    CloudEvent {
        specversion: "1.0".into(),
        id: event_id(n),
        source: "/bench/shop".into(),
        ty: ty.into(),
        subject: Some(format!("c-{}", n % 997)),
        time: Some(time),
        datacontenttype: Some("application/json".into()),
        dataschema: None,
        data: Some(data),
        extensions: Default::default(),
    }
}

/// The audit record of the `n`th event (its lake row and its Kafka record).
fn audit_record(n: u64, offset: u64) -> serde_json::Value {
    let event = event(n);
    json!({"event_id": event.id, "type": event.ty, "source": event.source,
        "topic": "bench.events", "partition": n % PARTITIONS, "offset": offset, "outcome": "actioned",
        "decision": {"allow": true, "reasons": []}, "policy_revision": "sha256:bench",
        "worker": "bench", "processed_at": event.time,
        "timings_us": {"decode": 3, "validate": 2, "policy": 9, "action": 1}})
}

/// Writes the lake under `dir` with the lake role's writer: per partition of the event topic
/// and of the audit topic, segments of `SEGMENT_RECORDS` records written as files per (table,
/// hour).
async fn build(dir: &Path, store: &LakeStore, tables: &Tables) {
    let settings = EncodeSettings {
        row_group_rows: 122_880,
        zstd_level: 3,
    };
    let limits = Limits {
        max_records: SEGMENT_RECORDS,
        max_bytes: usize::MAX,
        max_age: std::time::Duration::from_secs(3600),
    };
    let now = chrono::Utc::now();
    let started = Instant::now();
    for p in 0..PARTITIONS {
        for topic in ["events", "audit"] {
            let tp: TopicPartition = (format!("bench.{topic}"), p as i32);
            let mut segments = Segments::new(limits);
            let mut json = Vec::with_capacity(1024);
            for offset in 0..EVENTS / PARTITIONS {
                let n = offset * PARTITIONS + p;
                let event = event(n);
                let at = Coordinates {
                    topic: &tp.0,
                    partition: tp.1,
                    offset: offset as i64,
                    timestamp_ms: None,
                };
                json.clear();
                let (table, hour) = if topic == "events" {
                    let index = tables.index_of(&event.ty).expect("a table per type");
                    let table = tables.get(index).expect("table");
                    (index, table.event_row(&event, at, now, &mut json))
                } else {
                    let record = audit_record(n, offset);
                    let index = tables.audit_index();
                    let table = tables.get(index).expect("audit table");
                    let row = record.to_string();
                    let hour = table
                        .audit_row(row.as_bytes(), at, now, &mut json)
                        .expect("an audit row");
                    (index, hour)
                };
                let row = Row {
                    table,
                    hour,
                    json: &json,
                };
                if segments.push(&tp, offset as i64, Some(row), Instant::now()) {
                    let segment = segments.take(&tp).expect("a full segment");
                    write_segment(store, tables, settings, &tp, &segment)
                        .await
                        .expect("lake files written");
                }
            }
            if let Some(segment) = segments.take(&tp) {
                write_segment(store, tables, settings, &tp, &segment)
                    .await
                    .expect("lake files written");
            }
        }
    }
    std::fs::write(dir.join("complete"), EVENTS.to_string()).expect("mark the lake complete");
    eprintln!(
        "built a lake of {EVENTS} events and {EVENTS} audit records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn bench(c: &mut Criterion) {
    // `cargo test --all-targets` (make test) runs benches without `--bench`, as tests: building
    // a lake of 1,000,000 events is no test, so nothing runs then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("trace: runs only under cargo bench (make bench-trace)");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schemas = SchemaRegistry::load(&repo.join("schemas")).expect("the repository's schemas");
    let tables = Tables::new(&schemas);
    // Kept between runs: building it is the slow part, and the lookup is what is measured.
    let dir = repo.join("target/bench/trace-lake");
    let raw = RawLake {
        store: dir.join("lake").display().to_string(),
        ..RawLake::default()
    };
    let config = LakeConfig::new(raw, RawLakeRole::default(), &dir).expect("lake config");
    let store = LakeStore::open(&config).expect("lake store");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let complete = std::fs::read_to_string(dir.join("complete")).ok();
    if complete.as_deref() != Some(&EVENTS.to_string()) {
        let _ = std::fs::remove_dir_all(dir.join("lake"));
        runtime.block_on(build(&dir, &store, &tables));
    }
    let present = event_id(EVENTS / 2 + 7);
    let absent = uuid::Uuid::new_v4().to_string();
    let (found, searched) = runtime
        .block_on(files_holding(&store, &tables, &present, None))
        .expect("lookup");
    assert_eq!(
        found.len(),
        2,
        "the event's table and the audit table hold it: {found:?}"
    );
    eprintln!("lookup of a present id: {searched:?}");
    let (found, searched) = runtime
        .block_on(files_holding(&store, &tables, &absent, None))
        .expect("lookup");
    assert!(found.is_empty());
    eprintln!("lookup of an absent id: {searched:?}");

    let mut group = c.benchmark_group("trace");
    group.sample_size(20);
    for (name, id, from) in [
        ("lake_1m/present", present.as_str(), None),
        ("lake_1m/absent", absent.as_str(), None),
        (
            "lake_1m/absent_since_last_day",
            absent.as_str(),
            Some("2026-03-05"),
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(files_holding(&store, &tables, id, from))
                    .expect("lookup")
            })
        });
    }
    group.finish();
    whole_trace(c, &runtime, &dir, &present, &absent);
}

/// `reflex trace` whole, Kafka and lake, if a broker answers.
fn whole_trace(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    present: &str,
    absent: &str,
) {
    let brokers = std::env::var("REFLEX_BENCH_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = repo.join("config/reflex.toml");
    let text = std::fs::read_to_string(&path).expect("config/reflex.toml");
    let vars = [
        ("REFLEX_KAFKA_BROKERS", brokers.clone()),
        ("REFLEX_LAKE_STORE", dir.join("lake").display().to_string()),
        ("REFLEX_TOPICS_EVENTS", "reflex-bench-trace.events".into()),
        ("REFLEX_TOPICS_AUDIT", "reflex-bench-trace.audit".into()),
        ("REFLEX_TOPICS_DLQ", "reflex-bench-trace.dlq".into()),
        ("REFLEX_TOPICS_RETRY", "reflex-bench-trace.retry".into()),
        ("REFLEX_TOPICS_PARTITIONS", "3".into()),
        (
            "REFLEX_POLICY_EMIT_TOPIC",
            "reflex-bench-trace.policy".into(),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let config = Config::from_toml(&text, &path, vars).expect("the bench configuration");
    let reachable = std::net::TcpStream::connect_timeout(
        &brokers
            .split(',')
            .next()
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 9092))),
        std::time::Duration::from_secs(1),
    )
    .is_ok();
    if !reachable {
        eprintln!("no broker at {brokers} (make up, or REFLEX_BENCH_BROKERS): the whole trace is not timed");
        return;
    }
    runtime.block_on(fill_audit(&config));
    let mut group = c.benchmark_group("trace");
    group.sample_size(10);
    for (name, id) in [("whole_1m/present", present), ("whole_1m/absent", absent)] {
        // Every audit record, as `--since 24h` reads on a day of 1,000,000 events however
        // long ago the topic was filled; every lake file, as without `--since`.
        let options = TraceOptions {
            id: id.to_owned(),
            since_ms: 0,
            lake_from_date: None,
        };
        let story = runtime.block_on(trace(&config, &options)).expect("trace");
        eprintln!(
            "{name}: found {}, {} audit steps, searched {:?}",
            story.found,
            story.steps.len(),
            story.searched.topics
        );
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(trace(&config, &options)).expect("trace"))
        });
    }
    group.finish();
}

/// Fills the bench's audit topic with the lake's 1,000,000 audit records, once.
async fn fill_audit(config: &Config) {
    kafka::ensure_topics(&config.kafka, &config.topics, &[])
        .await
        .expect("bench topics");
    let consumer = kafka::reader(&config.kafka).expect("reader");
    let mut held = 0;
    for p in 0..3 {
        let (low, high) = rdkafka::consumer::Consumer::fetch_watermarks(
            &consumer,
            &config.topics.audit,
            p,
            std::time::Duration::from_secs(10),
        )
        .expect("watermarks");
        held += high - low;
    }
    if held >= EVENTS as i64 {
        return;
    }
    let started = Instant::now();
    let producer = kafka::producer(&config.kafka, kafka::Outage::new()).expect("producer");
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(50_000) {
        let mut deliveries = Vec::with_capacity(chunk.len());
        for n in chunk {
            let record = OutRecord {
                topic: config.topics.audit.clone(),
                partition: None,
                key: Some(event_id(*n).into_bytes()),
                value: Some(audit_record(*n, n / PARTITIONS).to_string().into_bytes()),
                headers: Vec::new(),
            };
            deliveries.push(kafka::send(&producer, &record).await.expect("sent"));
        }
        for delivery in deliveries {
            kafka::delivered(delivery).await.expect("delivered");
        }
    }
    eprintln!(
        "filled {} with {EVENTS} audit records in {:.1} s",
        config.topics.audit,
        started.elapsed().as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
