//! Key-ordered concurrency against strictly sequential processing, same run, same topic.
//!
//! Starts the HTTP action service (answering after `--delay-ms`), loads `--events` order events
//! over `--keys` distinct keys per partition into a fresh topic, then drains it twice with the
//! actions role and an `http` action: once with `ordering = "partition"` (one record of a
//! partition at a time) and once with `ordering = "key"`. Each run calls its own URL path, so the
//! service's request log tells, per run, whether every key's events arrived in offset order.
//! Writes `target/bench/ordering.json` and `target/bench/ordering.md`.
//!
//! ```text
//! cargo run --release --example ordering_bench -- --events 6000 --partitions 2 --keys 120
//! ```

#[path = "../tests/it/action_service.rs"]
mod action_service;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use action_service::{ActionService, Behaviour, Options};
use anyhow::Context;
use clap::Parser;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use reflex::config::Config;
use reflex::role::actions::{self as worker, RunOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Throughput of key-ordered concurrency against sequential processing")]
struct Args {
    /// Events to load.
    #[arg(long, default_value_t = 6000)]
    events: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 2)]
    partitions: i32,
    /// Distinct keys per partition (about; keys are spread by Kafka's partitioner).
    #[arg(long, default_value_t = 120)]
    keys: usize,
    /// The action service's delay per call, in milliseconds.
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
    /// Records in flight in key mode (roles.actions.max_in_flight).
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// Bootstrap servers.
    #[arg(long, env = "REFLEX_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// One drain of the topic.
struct Run {
    ordering: &'static str,
    events: u64,
    seconds: f64,
    calls: usize,
    keys: usize,
    out_of_order_keys: usize,
    peak_concurrency: usize,
}

fn config_text(args: &Args, topic: &str, service: &str, ordering: &str, repo: &Path) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
[topics]
events = ["{topic}"]
audit = "{topic}.audit"
dlq = "{topic}.dlq"
retry = "{topic}.retry"
partitions = {partitions}
[roles.actions]
group_id = "{topic}.{ordering}"
ordering = "{ordering}"
max_in_flight = {in_flight}
[telemetry]
listen = ""
[schemas]
dir = "{schemas}"
[policy]
dir = "{policies}"
emit_topic = "{topic}.policy"
[actions.call]
kind = "http"
types = ["order.placed"]
url = "{service}/{ordering}/{{subject}}"
timeout = "2s"
[actions.others]
kind = "log"
types = ["payment.authorized", "payment.settled", "refund.requested", "reflex.analytics.refunds_high", "reflex.analytics.payment_not_settled", "reflex.analytics.orders_rate_anomaly"]
"#,
        brokers = args.brokers,
        partitions = args.partitions,
        in_flight = args.max_in_flight,
        schemas = repo.join("schemas").display(),
        policies = repo.join("policies").display(),
    )
}

async fn load(args: &Args, topic: &str, total_keys: usize) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", "5")
        .create()?;
    let mut deliveries = Vec::with_capacity(args.events);
    for i in 0..args.events {
        let key = format!("k-{}", i % total_keys);
        let event = json!({
            "specversion": "1.0", "id": format!("e-{i:08}"), "source": "/shop/web",
            "type": "order.placed", "subject": key,
            "time": chrono::Utc::now().to_rfc3339(),
            "data": {"order_id": format!("ord-{i}"), "customer_id": key, "amount": 10.0,
                     "currency": "EUR", "items": [{"sku": "S-1", "quantity": 1}]}
        })
        .to_string();
        let record = FutureRecord::to(topic).key(&key).payload(&event);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?,
        );
    }
    for d in deliveries {
        d.await?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    Ok(())
}

async fn drain(
    args: &Args,
    topic: &str,
    service: &ActionService,
    ordering: &'static str,
    dir: &Path,
) -> anyhow::Result<Run> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = dir.join(format!("{ordering}.toml"));
    std::fs::write(
        &path,
        config_text(args, topic, &service.url(), ordering, &repo),
    )?;
    let config = Config::load(&path).with_context(|| format!("config {}", path.display()))?;
    let started = Instant::now();
    let summary = worker::run(
        &config,
        RunOptions {
            worker_id: format!("bench-{ordering}"),
            drain: true,
        },
        CancellationToken::new(),
    )
    .await?;
    let seconds = summary.busy_ms as f64 / 1000.0;
    eprintln!(
        "{ordering}: {} events in {seconds:.2} s ({:.2} s with start-up and drain check)",
        summary.total(),
        started.elapsed().as_secs_f64()
    );
    // Per key, the event ids the service received, in arrival order, must be increasing.
    let prefix = format!("/{ordering}/");
    let calls: Vec<_> = service
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with(&prefix))
        .collect();
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for r in &calls {
        let id = r.header("idempotency-key").unwrap_or_default().to_owned();
        by_key
            .entry(r.path[prefix.len()..].to_owned())
            .or_default()
            .push(id);
    }
    let out_of_order_keys = by_key
        .values()
        .filter(|ids| ids.windows(2).any(|w| w[0] >= w[1]))
        .count();
    // Most calls in progress at once, from arrival times and the service's fixed delay.
    let delay = Duration::from_millis(args.delay_ms);
    let mut arrivals: Vec<Instant> = calls.iter().map(|r| r.at).collect();
    arrivals.sort();
    let mut peak = 0;
    let mut first = 0;
    for (i, at) in arrivals.iter().enumerate() {
        while *at >= arrivals[first] + delay {
            first += 1;
        }
        peak = peak.max(i + 1 - first);
    }
    Ok(Run {
        ordering,
        events: summary.total(),
        seconds,
        calls: calls.len(),
        keys: by_key.len(),
        out_of_order_keys,
        peak_concurrency: peak,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let service = ActionService::start_with(Options {
        threads: 1,
        behaviour: Behaviour::ok().delayed(Duration::from_millis(args.delay_ms)),
        ..Options::default()
    })?;
    let topic = format!("bench.ordering.{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir()?;
    let total_keys = args.keys * usize::try_from(args.partitions)?;
    {
        // Create the topics with the configured partitions before loading.
        let path = dir.path().join("setup.toml");
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        std::fs::write(
            &path,
            config_text(&args, &topic, &service.url(), "key", &repo),
        )?;
        let config = Config::load(&path)?;
        reflex::kafka::ensure_topics(&config.kafka, &config.topics, &[]).await?;
    }
    eprintln!(
        "loading {} events over {total_keys} keys into {topic} ({} partitions)",
        args.events, args.partitions
    );
    load(&args, &topic, total_keys).await?;
    let sequential = drain(&args, &topic, &service, "partition", dir.path()).await?;
    let keyed = drain(&args, &topic, &service, "key", dir.path()).await?;
    let rate = |r: &Run| r.events as f64 / r.seconds.max(f64::EPSILON);
    let ratio = rate(&keyed) / rate(&sequential);
    // A sequential consumer with no cost but the service's delay: one call per partition at a
    // time.
    let ideal = f64::from(args.partitions) * 1000.0 / args.delay_ms.max(1) as f64;
    let runs: Vec<serde_json::Value> = [&sequential, &keyed]
        .iter()
        .map(|r| {
            json!({
                "ordering": r.ordering, "events": r.events, "seconds": r.seconds,
                "events_per_s": rate(r), "calls": r.calls, "keys": r.keys,
                "keys_out_of_order": r.out_of_order_keys, "peak_concurrent_calls": r.peak_concurrency,
            })
        })
        .collect();
    let report = json!({
        "events": args.events, "partitions": args.partitions, "keys_per_partition": args.keys,
        "service_delay_ms": args.delay_ms, "max_in_flight": args.max_in_flight,
        "runs": runs, "key_over_partition": ratio, "target": 8.0,
        "ideal_sequential_events_per_s": ideal, "key_over_ideal_sequential": rate(&keyed) / ideal,
    });
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("ordering.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let mut md = format!(
        "## Key-ordered concurrency\n\n{} events, {} partitions, {} keys per partition, action service {} ms per call.\n\n\
         | ordering | events/s | calls | keys | keys out of order | peak concurrent calls |\n|---|---:|---:|---:|---:|---:|\n",
        args.events, args.partitions, args.keys, args.delay_ms
    );
    for r in [&sequential, &keyed] {
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} |\n",
            r.ordering,
            rate(r),
            r.calls,
            r.keys,
            r.out_of_order_keys,
            r.peak_concurrency
        ));
    }
    md.push_str(&format!(
        "\nkey ÷ partition: **{ratio:.1}×** (target ≥ 8×). Against an ideal sequential consumer that costs nothing but the service's delay ({ideal:.0} events/s): {:.1}×.\n",
        rate(&keyed) / ideal
    ));
    std::fs::write(args.out.join("ordering.md"), &md)?;
    println!("{md}");
    anyhow::ensure!(
        sequential.out_of_order_keys == 0 && keyed.out_of_order_keys == 0,
        "a key's events reached the service out of order"
    );
    Ok(())
}
