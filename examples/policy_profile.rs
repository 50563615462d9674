//! A fixed amount of policy work for an instruction-counting profiler: the worker's policy step
//! (`ingest::decide`: the input built from a decoded event, as far as the rules read it, the
//! decision and the redaction rule) repeated over the inputs of `benches/policy-inputs.json`.
//!
//! usage: policy_profile [ROUNDS] [ENGINE]   (default 2000 rounds over every input; ENGINE is
//! `interpreter` (the default), `compiled` or `auto`, as `[policy] engine`)
//!
//! `valgrind --tool=callgrind target/release/examples/policy_profile 200` counts instructions
//! repeatably even on a loaded machine; without valgrind it prints the mean time per decision.

use std::path::Path;
use std::time::{Duration, Instant};

use reflex::event::{CloudEvent, Mode};
use reflex::ingest::{decide, DecisionInput, EmitTopics, Input};
use reflex::policy::{PolicyEngine, PolicySet};
use serde_json::Value;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A generous limit: under valgrind the first decision (which prepares the engine) is slow.
    let engine = match std::env::args().nth(2).as_deref() {
        None | Some("interpreter") => PolicyEngine::Interpreter,
        Some("compiled") => PolicyEngine::Compiled,
        Some("auto") => PolicyEngine::Auto,
        Some(other) => anyhow::bail!("unknown engine {other:?}: interpreter, compiled or auto"),
    };
    let set = PolicySet::load(
        &root.join("policies"),
        "data.reflex.decision",
        Duration::from_secs(60),
    )?
    .with_redaction(reflex::policy::redaction::DEFAULT_RULE)?
    .with_engine(engine);
    let text = std::fs::read_to_string(root.join("benches/policy-inputs.json"))?;
    let cases: Vec<Value> = serde_json::from_str(&text)?;
    let mut events = Vec::new();
    for case in &cases {
        let input = &case["input"];
        let event: CloudEvent = serde_json::from_value(input["event"].clone())?;
        let now = chrono::DateTime::parse_from_rfc3339(
            input["context"]["now"].as_str().unwrap_or_default(),
        )?
        .with_timezone(&chrono::Utc);
        events.push((event, now, input["context"].clone()));
    }
    let mut evaluator = set.evaluator();
    let publisher = reflex::publisher::Publisher::unsigned();
    let enrichment = serde_json::Map::new();
    let emit = EmitTopics {
        default: "reflex.policy.events".to_owned(),
        allowed: Vec::new(),
    };
    let mut allowed = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        for (event, now, context) in &events {
            let input = Input {
                topic: context["topic"].as_str().unwrap_or_default(),
                partition: 0,
                offset: context["offset"].as_i64().unwrap_or_default(),
                key: None,
                value: None,
                headers: &[],
                timestamp_ms: context["kafka_timestamp_ms"].as_i64(),
            };
            let on = DecisionInput {
                event,
                mode: Mode::Structured,
                input: &input,
                now,
                publisher: &publisher,
                enrichment: &enrichment,
                wire: false,
            };
            let decision = decide(&mut evaluator, &on, &emit);
            allowed += usize::from(decision.allow);
        }
    }
    let decisions = rounds * events.len();
    println!(
        "{decisions} decisions ({allowed} allowed), {:.2} µs each",
        started.elapsed().as_secs_f64() * 1e6 / decisions as f64
    );
    Ok(())
}
