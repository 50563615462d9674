//! reflex turns business events on Kafka into governed, audited actions and a queryable lake.
//!
//! Event providers publish CloudEvents to Kafka topics. reflex runs as consumer-group workers
//! that decode each event, validate it against the schema of its type, evaluate Rego policies,
//! run exactly one action for the type, and write one audit record per event to a compacted
//! topic. What cannot be processed goes to a dead-letter topic with its reason: nothing is
//! dropped silently. The lake role, in a consumer group of its own, writes every valid event
//! (typed by its schema) and every audit record as Parquet files on an object store for DuckDB.
//!
//! # Layout
//! - [`config`]: the configuration file, `REFLEX_*` overrides and start-up validation.
//! - [`event`]: CloudEvents 1.0 decoding, structured and binary mode; [`event::tape`], an
//!   event's data read without a `Value` tree, for readers of a few fields.
//! - [`schema`]: the file schema registry (JSON Schema or Avro per event type), the wire format.
//! - [`registry`]: a Confluent-compatible HTTP schema registry with a cache of schemas by id.
//! - [`policy`]: Rego policies with regorus; the decision contract (emit obligations); the pure
//!   redaction rule; failing closed; hot reload; `reflex policy test` and `eval`; shadow
//!   comparison.
//! - [`analytics`]: windowed aggregates, anomaly baselines and absence rules on event time,
//!   whose findings are new events; pure, run by [`role::analytics`] and `reflex analytics`.
//! - [`action`]: the actions (inline `emit` and `log`, `http` calls) and the type → action table.
//! - [`service`]: calling HTTP services: retries with backoff, circuit breakers, URL templates.
//! - [`enrich`]: lookups in supporting services, cached, whose answers join the policy input.
//! - [`ingest`]: a consumed record's life up to the decision, shared by every consumer of
//!   records: the input record, the `reflex_*` headers (dead-letter and retry format), admission
//!   (size → decode → validate) and the policy input and decision.
//! - [`audit`]: the audit record and the outcome codes.
//! - [`backoff`]: exponential backoff with optional full jitter, shared by every retry loop.
//! - [`cli`]: the commands' reports, printed by the binary as text or JSON.
//! - [`connectivity`]: `reflex check --connect`, every configured endpoint tried and reported.
//! - [`kafka`]: client settings (with `[kafka.security]`: TLS, SASL), the connection check at
//!   start-up, topic creation, delivery of output records, reading topics to their end.
//! - [`ordering`]: key-ordered concurrency within a partition: the key queue and the offset
//!   tracker.
//! - [`role`]: the worker roles side by side: [`role::actions`] (the consumer loop, scheduler,
//!   rebalance handling, delivery, and the pipeline: the order of the stages for one event, free
//!   of Kafka), [`role::lake`] (the lake's consumer loop) and [`role::analytics`] (the
//!   analyses' consumer loop, their checkpoints and findings).
//! - [`lake`]: the lake's tables, Parquet encoding, segments, object store and DuckDB views.
//! - [`produce`]: `reflex produce`, publishing CloudEvents from JSON lines.
//! - [`dlq`]: `reflex dlq list|replay`: the dead-letter topic summarised and sent back.
//! - [`replay`]: `reflex policy replay`, a candidate policy set against the recorded decisions.
//! - [`summary`]: per-type counts of outcomes and reasons.
//! - [`trace`]: `reflex trace`, one event's audit records, dead letters, replays, caused events
//!   and lake files.
//! - [`connectivity`]: `reflex check --connect`, every configured endpoint tried and reported.
//! - [`publisher`]: publisher authentication: the signature a publisher puts on a record, its
//!   verification at admission (`input.publisher` in the policy input) and signing.
//! - [`secret`]: secrets read from `env:` or `file:` references, never shown.
//! - [`http`]: the one HTTP client stack (reqwest over rustls): private CAs, client
//!   certificates, credentials.
//! - [`otel`]: distributed tracing with OpenTelemetry: a worker's tracer and OTLP export, the
//!   W3C trace context read from an event and written on HTTP calls and emitted events.
//! - [`telemetry`]: every metric's name, the typed events that count them, the lag probe and
//!   the listener serving `/metrics`, `/healthz`, `/readyz` and the status page (`/`,
//!   `/status.json`), behind an optional bearer token.
//!
//! # One event's way through the actions role
//! 1. The actions role ([`role::actions`]) polls a record and hands it to its pipeline.
//! 2. [`ingest::Admitter::admit`]: size check, then [`event::CloudEvent::decode`] (or, for
//!    wire-format data, the schema id resolved in the [`registry`] and the data decoded), then
//!    [`schema::SchemaRegistry::validate`]; failures become dead letters. The type selects its
//!    action.
//! 3. Enrichment lookups ([`enrich`]) answer from supporting services.
//! 4. [`ingest::decide`] returns allow, reasons and obligations, or a fail-closed deny; the
//!    policy's redaction rule, which reads the event alone, names the paths removed from every
//!    copy of the data written, and `emit` obligations become derived events. The worker swaps
//!    in a reloaded policy set between two records.
//! 5. Allowed events run their [`action::Action`]; denied events are only audited.
//! 6. The worker publishes the derived, dead-letter and audit records (`acks=all`, idempotent)
//!    and stores the record's offset only after all of them, and every earlier record of the
//!    partition, are acknowledged.
//!
//! The lake role ([`role::lake`]) reads the same topics and the audit topic again, admits each
//! record the same way, removes the same redacted fields, buffers rows per partition, and writes
//! whole Parquet files ([`lake`]) before it commits the offsets they cover.
//!
//! The analytics role ([`role::analytics`]) reads the event topics in a third group, feeds each
//! event to the analyses of [`analytics`] (windows, baselines and absence timers on event
//! time), and publishes their findings as CloudEvents on a topic the actions role reads, so a
//! finding is decided, acted on and audited like any event.

pub mod action;
pub mod analytics;
pub mod audit;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod connectivity;
pub mod dlq;
pub mod enrich;
pub mod event;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod lake;
pub mod ordering;
pub mod otel;
pub mod policy;
pub mod produce;
pub mod publisher;
pub mod registry;
pub mod replay;
pub mod role;
pub mod schema;
pub mod secret;
pub mod service;
pub mod summary;
pub mod telemetry;
pub mod trace;
