//! Distributed tracing with OpenTelemetry: a worker's [`Tracer`], the W3C trace context read
//! from an event, and the `traceparent` written on what the event causes.
//!
//! Tracing is off unless an OTLP endpoint is configured (`[telemetry] otlp_endpoint`, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`); then each actions or lake worker owns one [`Tracer`] whose
//! spans go to a bounded queue ([`QUEUE_SPANS`]) that a background thread exports in batches
//! over OTLP/HTTP (protobuf). A full queue drops spans; an unreachable collector fails exports on
//! that thread only. Both are counted ([`ExportStats`], served in `/metrics` and logged when
//! the worker stops) and the pipeline never waits for them.
//! [`Tracer::shutdown`] exports what is queued.
//!
//! Context in ([`parent`]): the event's CloudEvents distributed-tracing extension (`traceparent`
//! and `tracestate` attributes; `ce_traceparent` headers in binary mode), else a Kafka
//! `traceparent` header; without either the event's span starts a new trace.
//! Context out: [`inject`] writes the current span's `traceparent` (and `tracestate`) on an
//! HTTP request, [`stamp`] on an emitted event as extension attributes. Without a current span
//! (tracing off) both do nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use serde_json::Value;

/// The W3C trace context header, and the CloudEvents extension attribute of the same name.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor trace state, header and CloudEvents extension attribute.
pub const TRACESTATE: &str = "tracestate";
/// The binary-mode (Kafka header) form of the `traceparent` extension attribute.
const CE_TRACEPARENT: &str = "ce_traceparent";
/// The binary-mode form of the `tracestate` extension attribute.
const CE_TRACESTATE: &str = "ce_tracestate";

/// Spans waiting for export; more are dropped (and counted).
pub const QUEUE_SPANS: usize = 4096;
/// Spans per OTLP request.
const BATCH_SPANS: usize = 512;
/// Longest a span waits in the queue before a (partial) batch is exported.
const EXPORT_DELAY: Duration = Duration::from_secs(1);
/// Longest one OTLP request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest [`Tracer::shutdown`] waits for the queued spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The OTLP exporter could not be built.
    #[error("cannot export traces to {endpoint}: {source}")]
    Exporter {
        /// The traces URL.
        endpoint: String,
        /// What failed.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The traces URL of an OTLP/HTTP base endpoint (`http://host:4318` → `…/v1/traces`), the way
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
pub fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// Started, ended, exported and lost spans of one tracer.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans started.
    pub started: AtomicU64,
    /// Spans ended (and offered to the export queue).
    pub ended: AtomicU64,
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans lost because an export failed (collector unreachable or refusing).
    pub failed: AtomicU64,
    /// Spans dropped because the export queue held [`QUEUE_SPANS`] already.
    pub dropped: AtomicU64,
    /// Spans in the queue: offered and not yet taken by an export.
    queued: AtomicU64,
    failing: AtomicBool,
}

impl ExportStats {
    /// Spans waiting in the export queue.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Takes a place in the queue for one ended span; `false` (and the span counted as
    /// dropped) when the queue is full.
    fn enqueue(&self) -> bool {
        self.ended.fetch_add(1, Ordering::Relaxed);
        if self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE_SPANS as u64 {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// `spans` left the queue for an export.
    fn dequeue(&self, spans: u64) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(spans))
            });
    }
}

/// One worker's tracer: its spans are exported in the background to one OTLP endpoint.
#[derive(Clone)]
pub struct Tracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    group: Arc<str>,
    endpoint: Arc<str>,
    stats: Arc<ExportStats>,
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer")
            .field("endpoint", &self.endpoint)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// Where a consumed record came from, for the attributes of its span.
#[derive(Debug, Clone, Copy)]
pub struct Consumed<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// What admission learnt of the event, for the name and attributes of its span.
#[derive(Debug, Clone, Copy)]
pub struct Described<'a> {
    /// The CloudEvent `id`.
    pub id: &'a str,
    /// The CloudEvent `type`.
    pub ty: &'a str,
    /// The CloudEvent `source`.
    pub source: &'a str,
}

impl Tracer {
    /// A tracer of service `reflex-<role>` exporting to the OTLP/HTTP base `endpoint`, for a
    /// worker of consumer group `group`. Builds its HTTP client and starts the export thread;
    /// call it where blocking is allowed.
    pub fn start(endpoint: &str, role: &str, group: &str) -> Result<Self, TraceError> {
        let url = traces_url(endpoint);
        // An https endpoint uses the process-wide rustls provider, as every client of reflex.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| TraceError::Exporter {
                endpoint: url.clone(),
                source,
            })?;
        let stats = Arc::new(ExportStats::default());
        let counting = Counting {
            inner: exporter,
            stats: Arc::clone(&stats),
            endpoint: url.clone(),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE_SPANS)
            .with_max_export_batch_size(BATCH_SPANS)
            .with_scheduled_delay(EXPORT_DELAY)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(CountingProcessor {
                inner: BatchSpanProcessor::builder(counting)
                    .with_batch_config(batch)
                    .build(),
                stats: Arc::clone(&stats),
            })
            .with_resource(
                Resource::builder()
                    .with_service_name(format!("reflex-{role}"))
                    .build(),
            )
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "reflex");
        Ok(Self {
            provider,
            tracer,
            group: group.into(),
            endpoint: url.into(),
            stats,
        })
    }

    /// The traces URL spans are sent to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Started, exported and lost spans so far.
    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// The span counts, shared (for `/metrics`).
    pub fn shared_stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// The span of one consumed record (kind consumer), started at `start`, in the trace of
    /// `parent` (see [`parent`]) or a new one; named `process <topic>` until [`describe`] names
    /// it after the event type. Returns the context holding it.
    pub fn record_span(&self, parent: &Context, start: SystemTime, on: Consumed<'_>) -> Context {
        let attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", on.topic.to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                on.partition.to_string(),
            ),
            KeyValue::new("messaging.kafka.partition", i64::from(on.partition)),
            KeyValue::new("messaging.kafka.offset", on.offset),
            KeyValue::new("messaging.consumer.group.name", self.group.to_string()),
        ];
        let span = self
            .tracer
            .span_builder(format!("process {}", on.topic))
            .with_kind(SpanKind::Consumer)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// A finished child of `cx` that ran from `start` to `end` (stages timed before the event's
    /// span existed: decoding and validation).
    pub fn finished_stage(
        &self,
        cx: &Context,
        name: &'static str,
        start: SystemTime,
        end: SystemTime,
    ) {
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .start_with_context(&self.tracer, cx);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end);
    }

    /// A child of the current span, started now; end it with `cx.span().end()`.
    pub fn stage(&self, name: &'static str) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .start(&self.tracer);
        Context::current_with_span(span)
    }

    /// Exports the queued spans (waiting at most a few seconds) and stops the export thread.
    /// Blocks: call it where blocking is allowed.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(endpoint = %self.endpoint, %error, "traces not all exported at shutdown");
        }
        tracing::info!(
            endpoint = %self.endpoint,
            exported = self.stats.exported.load(Ordering::Relaxed),
            failed = self.stats.failed.load(Ordering::Relaxed),
            dropped_queue_full = self.stats.dropped.load(Ordering::Relaxed),
            "trace export stopped"
        );
    }
}

/// A segment of one partition the lake role wrote, for the attributes of its span.
#[derive(Debug, Clone, Copy)]
pub struct LakeSegment<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset of its first record.
    pub first_offset: i64,
    /// Offset after its last record.
    pub next_offset: i64,
    /// Files found already written with its records and kept.
    pub files_present: u64,
}

/// One lake file written, for its span.
#[derive(Debug, Clone, Copy)]
pub struct LakeFile<'a> {
    /// Its table.
    pub table: &'a str,
    /// Its key under the lake root.
    pub key: &'a str,
    /// Rows.
    pub rows: u64,
    /// Parquet bytes.
    pub bytes: u64,
    /// When encoding it began and when the store held it.
    pub span: (SystemTime, SystemTime),
}

impl Tracer {
    /// The spans of one segment the lake role wrote, from `start` to `end`: `lake write
    /// <topic>` with the partition, offsets and totals, and a `lake file` child per file
    /// created (table, key, rows, bytes). A trace of its own: a segment holds many events.
    pub fn lake_segment(
        &self,
        segment: LakeSegment<'_>,
        (start, end): (SystemTime, SystemTime),
        files: &[LakeFile<'_>],
    ) {
        let total = |f: fn(&LakeFile<'_>) -> u64| {
            i64::try_from(files.iter().map(f).sum::<u64>()).unwrap_or(i64::MAX)
        };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.destination.name", segment.topic.to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                segment.partition.to_string(),
            ),
            KeyValue::new("messaging.consumer.group.name", self.group.to_string()),
            KeyValue::new("reflex.lake.first_offset", segment.first_offset),
            KeyValue::new("reflex.lake.next_offset", segment.next_offset),
            KeyValue::new("reflex.lake.files", count(files.len() as u64)),
            KeyValue::new("reflex.lake.files_present", count(segment.files_present)),
            KeyValue::new("reflex.lake.rows", total(|f| f.rows)),
            KeyValue::new("reflex.lake.bytes", total(|f| f.bytes)),
        ];
        let span = self
            .tracer
            .span_builder(format!("lake write {}", segment.topic))
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &Context::new());
        let cx = Context::new().with_span(span);
        for file in files {
            let mut child = self
                .tracer
                .span_builder("lake file")
                .with_kind(SpanKind::Client)
                .with_start_time(file.span.0)
                .with_attributes(vec![
                    KeyValue::new("reflex.lake.table", file.table.to_owned()),
                    KeyValue::new("reflex.lake.key", file.key.to_owned()),
                    KeyValue::new("reflex.lake.rows", count(file.rows)),
                    KeyValue::new("reflex.lake.bytes", count(file.bytes)),
                ])
                .start_with_context(&self.tracer, &cx);
            opentelemetry::trace::Span::end_with_timestamp(&mut child, file.span.1);
        }
        cx.span().end_with_timestamp(end);
    }
}

/// Names the record's span after its event (`process <type>`) and adds the CloudEvents
/// attributes.
pub fn describe(cx: &Context, event: Described<'_>) {
    let span = cx.span();
    span.update_name(format!("process {}", event.ty));
    span.set_attributes([
        KeyValue::new("cloudevents.event_id", event.id.to_owned()),
        KeyValue::new("cloudevents.event_type", event.ty.to_owned()),
        KeyValue::new("cloudevents.event_source", event.source.to_owned()),
    ]);
}

/// Ends the record's span with its outcome code (`actioned`, `denied`, …); a dead letter or a
/// failure to deliver marks it as an error, with `reason` (a bounded code, never error text).
pub fn finish(cx: &Context, outcome: &str, error: Option<&str>) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("reflex.outcome", outcome.to_owned()));
    if let Some(reason) = error {
        span.set_attribute(KeyValue::new("error.type", reason.to_owned()));
        span.set_status(Status::error(reason.to_owned()));
    }
    span.end();
}

/// The trace an event continues: its `traceparent` / `tracestate` extension attributes, else
/// the record's `traceparent` / `tracestate` headers (the binary-mode `ce_` forms first). An
/// empty context (a new trace) when none is present or valid.
pub fn parent(extensions: Option<&BTreeMap<String, Value>>, headers: &[(&str, &[u8])]) -> Context {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let extension = |name: &str| extensions.and_then(|e| e.get(name)).and_then(Value::as_str);
    let candidates = [
        (extension(TRACEPARENT), extension(TRACESTATE)),
        (header(CE_TRACEPARENT), header(CE_TRACESTATE)),
        (header(TRACEPARENT), header(TRACESTATE)),
    ];
    for (traceparent, tracestate) in candidates {
        let Some(traceparent) = traceparent else {
            continue;
        };
        let carrier = Carrier {
            traceparent,
            tracestate,
        };
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    Context::new()
}

/// Writes the current span's `traceparent` (and `tracestate`) on `headers`; nothing without a
/// current span.
pub fn inject(headers: &mut reqwest::header::HeaderMap) {
    Context::map_current(|cx| {
        if cx.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
        }
    });
}

/// The current span's `traceparent` and `tracestate` (empty when absent), if there is a
/// current span.
pub fn current() -> Option<(String, String)> {
    Context::map_current(|cx| {
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut fields = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut fields);
        let traceparent = fields.remove(TRACEPARENT)?;
        Some((traceparent, fields.remove(TRACESTATE).unwrap_or_default()))
    })
}

/// The trace id (32 lower-case hex digits) of the span in `cx`, if it is valid.
pub fn trace_id(cx: &Context) -> Option<String> {
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// The trace id of the current span, if there is one.
pub fn current_trace_id() -> Option<String> {
    Context::map_current(trace_id)
}

/// Stamps the current span's context on an emitted event's extension attributes, replacing
/// any it had; nothing without a current span.
pub fn stamp(extensions: &mut BTreeMap<String, Value>) -> Option<String> {
    let (traceparent, tracestate) = current()?;
    extensions.insert(TRACEPARENT.to_owned(), Value::String(traceparent.clone()));
    if tracestate.is_empty() {
        extensions.remove(TRACESTATE);
    } else {
        extensions.insert(TRACESTATE.to_owned(), Value::String(tracestate));
    }
    Some(traceparent)
}

/// A `traceparent` / `tracestate` pair read by the propagator.
struct Carrier<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

struct HeaderInjector<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) else {
            return;
        };
        self.0.insert(name, value);
    }
}

/// The batch processor behind a queue bound of its own, counting the spans started, and those
/// offered to the queue or dropped because it is full. The batch processor's own queue is as
/// large as the bound, so it never drops a span this one let through.
#[derive(Debug)]
struct CountingProcessor {
    inner: BatchSpanProcessor,
    stats: Arc<ExportStats>,
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.stats.enqueue() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it exports and loses; the first failure of a run of
/// failures is logged once, as is the recovery.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    stats: Arc<ExportStats>,
    endpoint: String,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        self.stats.dequeue(spans);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.stats.exported.fetch_add(spans, Ordering::Relaxed);
                if self.stats.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "traces are exported again");
                }
            }
            Err(error) => {
                self.stats.failed.fetch_add(spans, Ordering::Relaxed);
                if !self.stats.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %error,
                        "traces cannot be exported; spans are dropped until the collector answers"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn trace_id(cx: &Context) -> String {
        cx.span().span_context().trace_id().to_string()
    }

    #[test]
    fn the_event_extension_comes_before_the_kafka_header() {
        let mut extensions = BTreeMap::new();
        extensions.insert(TRACEPARENT.to_owned(), Value::String(PARENT.to_owned()));
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        let headers: [(&str, &[u8]); 1] = [(TRACEPARENT, other.as_bytes())];
        let cx = parent(Some(&extensions), &headers);
        assert_eq!(trace_id(&cx), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(cx.span().span_context().is_remote());

        let cx = parent(None, &headers);
        assert_eq!(trace_id(&cx), "11111111111111111111111111111111");
        let binary: [(&str, &[u8]); 2] = [
            (TRACEPARENT, other.as_bytes()),
            (CE_TRACEPARENT, PARENT.as_bytes()),
        ];
        assert_eq!(
            trace_id(&parent(None, &binary)),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace_or_falls_back() {
        let mut extensions = BTreeMap::new();
        extensions.insert(
            TRACEPARENT.to_owned(),
            Value::String("00-zz-yy-01".to_owned()),
        );
        assert!(!parent(Some(&extensions), &[])
            .span()
            .span_context()
            .is_valid());
        let headers: [(&str, &[u8]); 1] = [(TRACEPARENT, PARENT.as_bytes())];
        assert_eq!(
            trace_id(&parent(Some(&extensions), &headers)),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        extensions.insert(TRACEPARENT.to_owned(), Value::Bool(true));
        assert!(!parent(Some(&extensions), &[])
            .span()
            .span_context()
            .is_valid());
    }

    #[test]
    fn without_a_current_span_nothing_is_written() {
        let mut headers = reqwest::header::HeaderMap::new();
        inject(&mut headers);
        assert!(headers.is_empty());
        let mut extensions = BTreeMap::new();
        assert_eq!(stamp(&mut extensions), None);
        assert!(extensions.is_empty());
    }

    #[test]
    fn the_current_remote_context_is_written_on_requests_and_events() {
        let headers: [(&str, &[u8]); 2] =
            [(TRACEPARENT, PARENT.as_bytes()), (TRACESTATE, b"vendor=1")];
        let _guard = parent(None, &headers).attach();
        let mut out = reqwest::header::HeaderMap::new();
        inject(&mut out);
        assert_eq!(
            out.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
            Some(PARENT)
        );
        assert_eq!(
            out.get(TRACESTATE).and_then(|v| v.to_str().ok()),
            Some("vendor=1")
        );
        let mut extensions = BTreeMap::new();
        extensions.insert(TRACESTATE.to_owned(), Value::String("stale=1".to_owned()));
        assert_eq!(stamp(&mut extensions).as_deref(), Some(PARENT));
        assert_eq!(extensions[TRACESTATE], Value::String("vendor=1".to_owned()));
    }

    #[test]
    fn a_full_queue_drops_and_counts_spans_until_an_export_takes_some() {
        let stats = ExportStats::default();
        for _ in 0..QUEUE_SPANS {
            assert!(stats.enqueue());
        }
        assert!(!stats.enqueue(), "the queue is full");
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(stats.queued(), QUEUE_SPANS as u64);
        stats.dequeue(BATCH_SPANS as u64);
        assert!(stats.enqueue(), "an export made room");
        assert_eq!(stats.ended.load(Ordering::Relaxed), QUEUE_SPANS as u64 + 2);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_trace_id_is_that_of_the_context_or_none() {
        let headers: [(&str, &[u8]); 1] = [(TRACEPARENT, PARENT.as_bytes())];
        let cx = parent(None, &headers);
        assert_eq!(
            super::trace_id(&cx).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(super::trace_id(&parent(None, &[])), None);
        assert_eq!(current_trace_id(), None);
        let _guard = cx.attach();
        assert_eq!(
            current_trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn the_traces_url_appends_the_signal_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
    }
}
