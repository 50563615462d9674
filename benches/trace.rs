//! `reflex trace`'s lake lookup on a lake of 1,000,000 events: the lake's own writer (segments
//! per partition, `write_segment`) fills a local directory with the events of three types over
//! two days and their 1,000,000 audit records, then the lookup that `reflex trace` runs
//! (`lake::find::files_holding`: date pruning, statistics, bloom filters, then rows) is timed
//! for an id that is there and one that is not. `make bench-trace` runs it (also in `make
//! bench`); building the lake takes a minute or two the first time.
//!
//! The lake's audit rows are those of an audit topic of 3 partitions as the actions role fills
//! it (keyed by event id, so placed by the default partitioner, in order). With a broker
//! (`REFLEX_BENCH_BROKERS`, default the local stack's 127.0.0.1:9092), the whole `reflex trace`
//! is timed as well: that audit topic is filled once with the same 1,000,000 audit records and
//! the lake group's offsets are committed at its end, as a lake role that wrote them all would
//! have, so the command reads the older audit records from the lake and Kafka only past those
//! offsets. Without a broker, that part is skipped with a note.

use std::path::Path;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use reflex::config::{Config, LakeConfig, RawLake, RawLakeRole};
use reflex::event::CloudEvent;
use reflex::ingest::OutRecord;
use reflex::kafka;
use reflex::lake::encode::EncodeSettings;
use reflex::lake::find::files_holding;
use reflex::lake::rows::Rows;
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
/// The audit topic the lake's audit rows come from, and its partitions.
const AUDIT_TOPIC: &str = "reflex-bench-trace.audit";
const AUDIT_PARTITIONS: usize = 3;
/// The lake group whose committed offsets bound the audit topic's read.
const LAKE_GROUP: &str = "reflex-bench-trace.lake";
/// Written when the lake is complete; a lake with another mark is built again.
fn complete_mark() -> String {
    format!("{EVENTS} events; audit rows from {AUDIT_TOPIC} ({AUDIT_PARTITIONS} partitions)")
}

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
        let tp: TopicPartition = ("bench.events".to_owned(), p as i32);
        let mut segments = Segments::new(limits);
        for offset in 0..EVENTS / PARTITIONS {
            let n = offset * PARTITIONS + p;
            let event = event(n);
            let at = Coordinates {
                topic: &tp.0,
                partition: tp.1,
                offset: offset as i64,
                timestamp_ms: None,
            };
            let index = tables.index_of(&event.ty).expect("a table per type");
            let table = tables.get(index).expect("table");
            let prepared = table.event(&event, at, now);
            let append = |rows: &mut Rows| prepared.append(rows);
            let row = Row {
                table: index,
                hour: prepared.hour(),
                append: &append,
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
    // The audit topic's records, each at the partition and offset the actions role's producer
    // gives it (see `fill_audit`).
    let mut audits: Vec<Vec<u64>> = vec![Vec::new(); AUDIT_PARTITIONS];
    for n in 0..EVENTS {
        let p = kafka::default_partition(event_id(n).as_bytes(), AUDIT_PARTITIONS).expect("a key");
        audits[p as usize].push(n);
    }
    for (p, ns) in audits.iter().enumerate() {
        let tp: TopicPartition = (AUDIT_TOPIC.to_owned(), p as i32);
        let mut segments = Segments::new(limits);
        let index = tables.audit_index();
        let table = tables.get(index).expect("audit table");
        for (offset, n) in ns.iter().enumerate() {
            let at = Coordinates {
                topic: &tp.0,
                partition: tp.1,
                offset: offset as i64,
                timestamp_ms: None,
            };
            let record = audit_record(*n, *n / PARTITIONS).to_string();
            let prepared = table
                .audit_record(record.as_bytes(), at, now)
                .expect("an audit row");
            let append = |rows: &mut Rows| prepared.append(rows);
            let row = Row {
                table: index,
                hour: prepared.hour(),
                append: &append,
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
    std::fs::write(dir.join("complete"), complete_mark()).expect("mark the lake complete");
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
    if complete.as_deref() != Some(complete_mark().as_str()) {
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
    // The actions' emit topics too are the bench's own, so another run's derived events on the
    // shared broker are not read.
    let text = std::fs::read_to_string(&path)
        .expect("config/reflex.toml")
        .replace(
            "topic = \"events.shipments\"",
            "topic = \"reflex-bench-trace.shipments\"",
        )
        .replace(
            "topic = \"events.refunds.approved\"",
            "topic = \"reflex-bench-trace.refunds.approved\"",
        );
    let vars = [
        ("REFLEX_KAFKA_BROKERS", brokers.clone()),
        ("REFLEX_LAKE_STORE", dir.join("lake").display().to_string()),
        ("REFLEX_TOPICS_EVENTS", "reflex-bench-trace.events".into()),
        ("REFLEX_TOPICS_AUDIT", AUDIT_TOPIC.into()),
        ("REFLEX_ROLES_LAKE_GROUP_ID", LAKE_GROUP.into()),
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
        // Every audit record inside `--since`, as `--since 24h` reads on a day of 1,000,000
        // events however long ago the topic was filled (the lake holds them all, so only the
        // records past the lake group's offsets are read from Kafka); every lake file, as
        // without `--since`.
        let options = TraceOptions {
            id: id.to_owned(),
            since_ms: 0,
            lake_from_date: None,
        };
        let story = runtime.block_on(trace(&config, &options)).expect("trace");
        eprintln!(
            "{name}: found {}, {} audit steps, searched {:?}, audit partitions read from the lake group's offsets {:?}",
            story.found,
            story.steps.len(),
            story.searched.topics,
            story.searched.audit_from_lake
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
    if held < EVENTS as i64 {
        produce_audit(config).await;
    }
    commit_lake_offsets(config, &consumer);
}

/// Commits the lake group's offsets at the end of each audit partition, as a lake role that
/// wrote every audit record would have, after checking that the lake's coordinates for a
/// record are where Kafka holds it.
fn commit_lake_offsets(config: &Config, consumer: &kafka::Reader) {
    use rdkafka::consumer::{CommitMode, Consumer};
    let probe_id = event_id(EVENTS / 2 + 7);
    let p = kafka::default_partition(probe_id.as_bytes(), AUDIT_PARTITIONS).expect("a key");
    let offset = (0..EVENTS / 2 + 7)
        .filter(|n| kafka::default_partition(event_id(*n).as_bytes(), AUDIT_PARTITIONS) == Some(p))
        .count() as i64;
    let starts = std::collections::HashMap::from([(p, offset)]);
    let mut reader = kafka::TopicReader::open_partitions(consumer, &config.topics.audit, &starts)
        .expect("the audit topic");
    let found = reader
        .next_record()
        .expect("a record")
        .and_then(|m| rdkafka::message::Message::key(&m).map(<[u8]>::to_vec));
    drop(reader);
    consumer.unassign().expect("unassign");
    assert_eq!(
        found.as_deref(),
        Some(probe_id.as_bytes()),
        "the audit topic holds the records in the order the lake's rows name (refill it: delete {})",
        config.topics.audit
    );
    let group = kafka::probe(&config.kafka, &config.lake.group_id, kafka::Outage::new())
        .expect("a client of the lake group");
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..AUDIT_PARTITIONS as i32 {
        let (_, high) = consumer
            .fetch_watermarks(&config.topics.audit, p, std::time::Duration::from_secs(10))
            .expect("watermarks");
        list.add_partition_offset(&config.topics.audit, p, rdkafka::Offset::Offset(high))
            .expect("offset");
    }
    group
        .commit(&list, CommitMode::Sync)
        .expect("the lake group's offsets committed");
}

/// Fills the audit topic with the 1,000,000 audit records, in order, one producer.
async fn produce_audit(config: &Config) {
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
