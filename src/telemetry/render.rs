//! The Prometheus text exposition format (version 0.0.4) of a worker's [`Metrics`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::histogram::HistogramSnapshot;
use super::{lock, LakeTable, Metrics, Stage, OUTCOMES};
use crate::policy::telemetry as policy_telemetry;
use crate::service::BreakerState;

/// Writes a metric family's `# HELP` and `# TYPE` lines.
pub(super) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample; `labels` are name/value pairs, values escaped.
pub(super) fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A float as Prometheus writes it (`+Inf` for infinity).
fn float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".to_owned()
    } else {
        v.to_string()
    }
}

/// The worker's metrics, and the process-wide policy counters, in the text format.
pub fn render(metrics: &Metrics) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let role = metrics.role;
    match role {
        "actions" => render_actions(&mut out, metrics),
        "analytics" => super::analytics::render(&mut out, metrics),
        _ => render_lake(&mut out, metrics),
    }
    render_partitions(&mut out, metrics);
    render_spans(&mut out, metrics);
    let (down, outages) = metrics.kafka_outage();
    family(
        &mut out,
        "reflex_kafka_unreachable_seconds",
        "gauge",
        "How long the Kafka brokers have been unreachable; 0 while they answer.",
    );
    sample(
        &mut out,
        "reflex_kafka_unreachable_seconds",
        &[],
        down.as_secs_f64(),
    );
    family(
        &mut out,
        "reflex_kafka_outages_total",
        "counter",
        "Kafka outages that ended (brokers unreachable, then answering again).",
    );
    sample(&mut out, "reflex_kafka_outages_total", &[], outages);
    if let Some(((committed, aborted), open)) = metrics.transactions() {
        family(
            &mut out,
            "reflex_kafka_transactions_total",
            "counter",
            "Transactions of the exactly-once mode, by result (committed, aborted).",
        );
        sample(
            &mut out,
            "reflex_kafka_transactions_total",
            &[("result", "committed")],
            committed,
        );
        sample(
            &mut out,
            "reflex_kafka_transactions_total",
            &[("result", "aborted")],
            aborted,
        );
        family(
            &mut out,
            "reflex_kafka_transaction_open_seconds",
            "gauge",
            "How long the open transaction has held records uncommitted (read_committed readers of reflex's topics wait behind it); 0 when it holds none.",
        );
        sample(
            &mut out,
            "reflex_kafka_transaction_open_seconds",
            &[],
            open.as_secs_f64(),
        );
    }

    family(
        &mut out,
        "reflex_loop_progress_age_seconds",
        "gauge",
        "Time since the worker's loop last made progress; /healthz fails above the stall timeout.",
    );
    sample(
        &mut out,
        "reflex_loop_progress_age_seconds",
        &[],
        metrics.since_progress().as_secs_f64(),
    );
    family(
        &mut out,
        "reflex_policy_info",
        "gauge",
        "The policy set deciding: its revision and evaluator.",
    );
    if let Some((revision, engine)) = lock(&metrics.policy).as_ref() {
        sample(
            &mut out,
            "reflex_policy_info",
            &[("revision", revision), ("engine", engine.name())],
            1,
        );
    }
    if let Some((revision, types, seconds)) = lock(&metrics.policy_warm_up).as_ref() {
        family(
            &mut out,
            "reflex_policy_warm_up_seconds",
            "gauge",
            "How long the policy set's evaluators took to decide every event type once before its first record.",
        );
        sample(
            &mut out,
            "reflex_policy_warm_up_seconds",
            &[("revision", revision)],
            *seconds,
        );
        family(
            &mut out,
            "reflex_policy_warmed_types",
            "gauge",
            "Event types each evaluator decided once before the policy set's first record.",
        );
        sample(
            &mut out,
            "reflex_policy_warmed_types",
            &[("revision", revision)],
            *types,
        );
    }
    let mut last = "";
    for counter in policy_telemetry::snapshot() {
        if counter.name != last {
            family(
                &mut out,
                counter.name,
                "counter",
                "Policy counter of this process (see reflex::policy::telemetry).",
            );
            last = counter.name;
        }
        let labels: Vec<(&str, &str)> = counter.kind.map(|k| ("kind", k)).into_iter().collect();
        sample(&mut out, counter.name, &labels, counter.value);
    }
    out
}

fn render_actions(out: &mut String, metrics: &Metrics) {
    family(
        out,
        "reflex_events_processed_total",
        "counter",
        "Events finished by the actions role, by type and outcome.",
    );
    for (ty, counts) in lock(&metrics.events).iter() {
        for (outcome, n) in OUTCOMES.iter().zip(counts) {
            sample(
                out,
                "reflex_events_processed_total",
                &[("type", ty), ("outcome", outcome.as_str())],
                n,
            );
        }
    }
    family(
        out,
        "reflex_events_read_again_total",
        "counter",
        "Events read again from their event topic after their retry copy, handed over with the partition, ran; not run a second time.",
    );
    sample(
        out,
        "reflex_events_read_again_total",
        &[],
        metrics.read_again.load(Ordering::Relaxed),
    );
    family(
        out,
        "reflex_dead_letters_total",
        "counter",
        "Events sent to the dead-letter topic, by type and reason code.",
    );
    for (ty, by_reason) in lock(&metrics.dead_letters).iter() {
        for (reason, n) in by_reason {
            sample(
                out,
                "reflex_dead_letters_total",
                &[("type", ty), ("reason", reason)],
                n,
            );
        }
    }
    family(
        out,
        "reflex_action_results_total",
        "counter",
        "Actions that ran, by action, kind and result: the HTTP status the service last answered, error when it never answered, ok for inline kinds.",
    );
    for (action, by_result) in lock(&metrics.actions).iter() {
        for (result, n) in by_result {
            sample(
                out,
                "reflex_action_results_total",
                &[
                    ("action", action),
                    ("kind", result.kind),
                    ("result", &result.label()),
                ],
                n,
            );
        }
    }
    render_attempts(out, metrics);
    family(
        out,
        "reflex_lookups_total",
        "counter",
        "Enrichment lookups, by lookup and where the value came from (cache, service, fallback).",
    );
    for (lookup, counts) in lock(&metrics.lookups).iter() {
        for (source, n) in super::LOOKUP_SOURCES.iter().zip(counts) {
            sample(
                out,
                "reflex_lookups_total",
                &[("lookup", lookup), ("source", source.as_str())],
                n,
            );
        }
    }
    let name = "reflex_stage_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Time spent in each stage of the actions role.",
    );
    for stage in Stage::ALL {
        let snap = metrics.stage(stage).snapshot();
        histogram(out, name, &[("stage", stage.label())], &snap);
    }
    family(
        out,
        "reflex_in_flight_records",
        "gauge",
        "Records consumed and not yet finished.",
    );
    sample(
        out,
        "reflex_in_flight_records",
        &[],
        metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed),
    );
    family(
        out,
        "reflex_breaker_state",
        "gauge",
        "Circuit breaker of each HTTP service called so far: 1 for its current state.",
    );
    for (service, state) in metrics.breakers() {
        for each in BreakerState::ALL {
            sample(
                out,
                "reflex_breaker_state",
                &[("service", &service), ("state", each.as_str())],
                u8::from(each == state),
            );
        }
    }
}

/// A histogram's `_bucket`, `_sum` and `_count` samples with `labels` (before `le`).
pub(super) fn histogram(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    snap: &HistogramSnapshot,
) {
    let bucket = format!("{name}_bucket");
    for (bound, n) in &snap.buckets {
        let le = float(*bound);
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        sample(out, &bucket, &with_le, n);
    }
    sample(out, &format!("{name}_sum"), labels, snap.sum);
    sample(out, &format!("{name}_count"), labels, snap.count);
}

fn render_attempts(out: &mut String, metrics: &Metrics) {
    let attempts = lock(&metrics.attempts);
    family(
        out,
        "reflex_action_attempts_total",
        "counter",
        "HTTP attempts of actions, by service, result (status class, or timeout, connect, circuit_open, error) and attempt number (1, 2, 3, 4+).",
    );
    for (service, a) in attempts.iter() {
        for ((result, attempt), n) in &a.counts {
            sample(
                out,
                "reflex_action_attempts_total",
                &[
                    ("service", service),
                    ("result", result),
                    ("attempt", attempt),
                ],
                n,
            );
        }
    }
    let name = "reflex_action_attempt_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Duration of each HTTP attempt of an action, by service.",
    );
    for (service, a) in attempts.iter() {
        histogram(out, name, &[("service", service)], &a.duration.snapshot());
    }
}

fn render_spans(out: &mut String, metrics: &Metrics) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = metrics.spans.get();
    let load = |f: fn(&crate::otel::ExportStats) -> &std::sync::atomic::AtomicU64| {
        stats.map_or(0, |s| f(s).load(Relaxed))
    };
    family(
        out,
        "reflex_spans_started_total",
        "counter",
        "OpenTelemetry spans started by this worker (0 while tracing is off).",
    );
    sample(out, "reflex_spans_started_total", &[], load(|s| &s.started));
    family(
        out,
        "reflex_spans_exported_total",
        "counter",
        "Spans the OTLP collector accepted.",
    );
    sample(
        out,
        "reflex_spans_exported_total",
        &[],
        load(|s| &s.exported),
    );
    family(
        out,
        "reflex_spans_dropped_total",
        "counter",
        "Spans lost: the export queue was full, or the collector did not take them.",
    );
    sample(
        out,
        "reflex_spans_dropped_total",
        &[("reason", "queue_full")],
        load(|s| &s.dropped),
    );
    sample(
        out,
        "reflex_spans_dropped_total",
        &[("reason", "export_failed")],
        load(|s| &s.failed),
    );
}

fn render_lake(out: &mut String, metrics: &Metrics) {
    let lake = lock(&metrics.lake);
    for (name, help, value) in [
        (
            "reflex_lake_files_written_total",
            "Parquet files written, per table.",
            (|t| t.files) as fn(&LakeTable) -> u64,
        ),
        (
            "reflex_lake_rows_written_total",
            "Rows written to Parquet files, per table.",
            |t| t.rows,
        ),
        (
            "reflex_lake_bytes_written_total",
            "Bytes of Parquet written, per table.",
            |t| t.bytes,
        ),
    ] {
        family(out, name, "counter", help);
        for (table, t) in lake.iter() {
            sample(out, name, &[("table", table)], value(t));
        }
    }
    family(
        out,
        "reflex_lake_files_present_total",
        "counter",
        "Lake files found already written with the same records and kept.",
    );
    sample(
        out,
        "reflex_lake_files_present_total",
        &[],
        metrics
            .lake_present
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    family(
        out,
        "reflex_lake_last_file_age_seconds",
        "gauge",
        "Time since this worker last wrote a file of the table.",
    );
    for (table, t) in lake.iter() {
        if let Some(at) = t.last_file {
            sample(
                out,
                "reflex_lake_last_file_age_seconds",
                &[("table", table)],
                at.elapsed().as_secs_f64(),
            );
        }
    }
    family(
        out,
        "reflex_lake_buffered_bytes",
        "gauge",
        "Row bytes buffered and not yet written.",
    );
    sample(
        out,
        "reflex_lake_buffered_bytes",
        &[],
        metrics
            .lake_buffered
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let (down, outages) = metrics.store_outage();
    family(
        out,
        "reflex_lake_store_unreachable_seconds",
        "gauge",
        "How long the lake's object store has been unreachable; 0 while it answers.",
    );
    sample(
        out,
        "reflex_lake_store_unreachable_seconds",
        &[],
        down.as_secs_f64(),
    );
    family(
        out,
        "reflex_lake_store_outages_total",
        "counter",
        "Lake store outages that ended (writes failing, then succeeding again).",
    );
    sample(out, "reflex_lake_store_outages_total", &[], outages);
}

fn render_partitions(out: &mut String, metrics: &Metrics) {
    let partitions = lock(&metrics.partitions);
    family(
        out,
        "reflex_assigned_partitions",
        "gauge",
        "Partitions assigned to this worker.",
    );
    let assigned: usize = partitions.values().map(BTreeMap::len).sum();
    sample(out, "reflex_assigned_partitions", &[], assigned);
    let each = || {
        partitions
            .iter()
            .flat_map(|(topic, ps)| ps.iter().map(move |(p, s)| (topic, p, s)))
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    family(
        out,
        "reflex_consumer_lag_records",
        "gauge",
        "Records between the worker's position and the high watermark, per assigned partition.",
    );
    for (topic, partition, state) in each() {
        if let Some(lag) = state.lag_records() {
            let p = partition.to_string();
            sample(
                out,
                "reflex_consumer_lag_records",
                &[("topic", topic), ("partition", &p)],
                lag,
            );
        }
    }
    family(
        out,
        "reflex_consumer_lag_seconds",
        "gauge",
        "Age of the oldest unprocessed record (at most), per assigned partition; 0 when caught up.",
    );
    for (topic, partition, state) in each() {
        if let Some(age) = state.lag_seconds(now_ms) {
            let p = partition.to_string();
            sample(
                out,
                "reflex_consumer_lag_seconds",
                &[("topic", topic), ("partition", &p)],
                age,
            );
        }
    }
}
