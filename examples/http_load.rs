//! Measures `Services::perform` and `Enricher::enrich` against the test action service,
//! in process:
//!
//! ```text
//! cargo run --release --example http_load -- --calls 20000 --concurrency 64 --delay-ms 5
//! ```
//!
//! Prints calls per second and latency percentiles of HTTP actions, then of enrichment with
//! every lookup a cache hit and with every lookup a miss.

#[path = "../tests/it/action_service.rs"]
mod action_service;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use action_service::{ActionService, Behaviour, Options};
use clap::Parser;
use futures_util::StreamExt;
use reflex::enrich::{Enricher, EnrichmentTable, Lookup, OnError};
use reflex::event::CloudEvent;
use reflex::service::{HttpAction, RetryPolicy, Services, ServicesConfig, UrlTemplate};
use tokio_util::sync::CancellationToken;

/// Command-line options.
#[derive(Debug, Parser)]
struct Args {
    /// Calls per phase.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Service delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
    /// Worker threads of the service's runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
}

fn event(i: usize, customer: usize) -> anyhow::Result<CloudEvent> {
    let json = serde_json::json!({
        "specversion": "1.0", "id": format!("evt-{i}"), "source": "/load",
        "type": "order.placed", "data": {"order": format!("o-{i}"), "customer": format!("c-{customer}")}
    });
    Ok(CloudEvent::decode(Some(json.to_string().as_bytes()), &[])?.0)
}

/// Runs `calls` futures `concurrency` at a time; returns the wall time and sorted latencies.
async fn run<F, Fut>(args: &Args, f: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures_util::stream::iter(0..args.calls)
        .map(|i| {
            let call = f(i);
            async move {
                let t = Instant::now();
                call.await;
                t.elapsed()
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    latencies.sort();
    (started.elapsed(), latencies)
}

fn print(name: &str, (wall, lat): (Duration, Vec<Duration>)) {
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "{name:<22} {:>9.0} calls/s  p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        lat.len() as f64 / wall.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = ActionService::start_with(Options {
        threads: args.server_threads,
        record_limit: 0,
        behaviour: Behaviour::ok().delayed(Duration::from_millis(args.delay_ms)),
        ..Options::default()
    })?;
    let services = Services::new(ServicesConfig::default())?;
    let action = Arc::new(HttpAction {
        service: "load".into(),
        method: reqwest::Method::POST,
        url: UrlTemplate::parse(&format!("{}/orders/{{data.order}}", server.url()))?,
        headers: Default::default(),
        timeout: Duration::from_secs(5),
        retry: RetryPolicy::default(),
    });
    let cancel = CancellationToken::new();
    let body = serde_json::json!({"order": "o", "total": 12.5});
    let events: Vec<CloudEvent> = (0..args.calls)
        .map(|i| event(i, i % 100))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "{} calls per phase, {} in flight, service delay {} ms",
        args.calls, args.concurrency, args.delay_ms
    );
    let result = run(&args, |i| {
        let (services, action, cancel, body, e) = (&services, &action, &cancel, &body, &events[i]);
        async move {
            let report = services.perform(action, e, body, cancel).await;
            assert!(report.succeeded(), "{report:?}");
        }
    })
    .await;
    print("http action", result);

    for (name, ttl) in [
        ("enrich, cache hits", Duration::from_secs(600)),
        ("enrich, no cache", Duration::ZERO),
    ] {
        for c in 0..100 {
            server.set_lookup(
                &format!("/customers/c-{c}"),
                serde_json::json!({"tier": "gold"}),
            );
        }
        let table = EnrichmentTable::new(BTreeMap::from([(
            "order.placed".to_owned(),
            vec![Lookup {
                name: "customer".into(),
                service: "lookups".into(),
                url: UrlTemplate::parse(&format!("{}/customers/{{data.customer}}", server.url()))?,
                timeout: Duration::from_secs(1),
                ttl,
                cache_size: 10_000,
                on_error: OnError::Deny,
            }],
        )]));
        let enricher = Enricher::new(services.clone(), &table);
        let result = run(&args, |i| {
            let (enricher, cancel, e) = (&enricher, &cancel, &events[i]);
            async move {
                let out = enricher.enrich(e, cancel).await;
                assert!(out.values.contains_key("customer"), "{out:?}");
            }
        })
        .await;
        print(name, result);
    }
    println!("service saw {} requests", server.total());
    Ok(())
}
