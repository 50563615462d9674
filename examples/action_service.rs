//! The test HTTP action service as a standalone binary, for the demo and the load benchmark:
//!
//! ```text
//! cargo run --release --example action_service -- --port 8090 --delay-ms 5
//! ```
//!
//! It accepts every POST/PUT (`200 {"accepted": true, ...}`), answers GETs of the paths in
//! `--lookups` (a JSON object: path → answer) and 404 otherwise, and prints the request count
//! every `--report-every` seconds and at Ctrl-C. The code is the integration tests' own
//! (`tests/it/action_service.rs`).

#[path = "../tests/it/action_service.rs"]
mod action_service;

use std::time::Duration;

use action_service::{ActionService, Behaviour, Options};
use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "A real HTTP action service for reflex's demo and load benchmark")]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8090)]
    port: u16,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A JSON file mapping GET paths to their answers (enrichment lookups).
    #[arg(long)]
    lookups: Option<std::path::PathBuf>,
    /// Seconds between request-count reports (0: only at exit).
    #[arg(long, default_value_t = 10)]
    report_every: u64,
    /// Answer this status to every request under a path prefix: `PREFIX=STATUS`, repeatable
    /// (for example `--fail /ledger/pay-7=503`).
    #[arg(long, value_parser = parse_fail)]
    fail: Vec<(String, u16)>,
}

fn parse_fail(text: &str) -> Result<(String, u16), String> {
    let (prefix, status) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("--fail \"{text}\" is not PREFIX=STATUS"))?;
    let status = status
        .parse::<u16>()
        .ok()
        .filter(|s| (400..600).contains(s))
        .ok_or_else(|| format!("--fail \"{text}\": the status must be 400 to 599"))?;
    Ok((prefix.to_owned(), status))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let service = ActionService::start_with(Options {
        port: args.port,
        threads: args.threads,
        // The benchmark sends millions of requests: keep counts, not bodies.
        record_limit: 0,
        behaviour: Behaviour::ok().delayed(Duration::from_millis(args.delay_ms)),
    })?;
    if let Some(path) = &args.lookups {
        let text = std::fs::read_to_string(path)?;
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)?;
        for (path, value) in map {
            service.set_lookup(&path, value);
        }
    }
    for (prefix, status) in &args.fail {
        service.set_behaviour(prefix, Behaviour::fail(*status, u32::MAX));
    }
    println!(
        "action service on {} (delay {} ms)",
        service.url(),
        args.delay_ms
    );
    let mut ticker = tokio::time::interval(Duration::from_secs(args.report_every.max(1)));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick(), if args.report_every > 0 => println!("requests: {}", service.total()),
        }
    }
    println!("requests: {}", service.total());
    Ok(())
}
