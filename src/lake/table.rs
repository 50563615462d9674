//! Lake tables: one per event type and one for audit records; their Arrow schemas and rows.
//!
//! An event row holds the envelope (`id`, `type`, `source`, `subject`, `time`), the `data`
//! properties as typed columns, `data_extra` (the JSON text of whatever the schema does not
//! name), the Kafka coordinates and the ingestion time. A data property whose name is one of
//! these fixed columns is stored as `data_<name>`. An audit row holds the audit record's fields,
//! `extra`, the Kafka coordinates and the ingestion time.
//!
//! The lake role appends each row's values straight to its file's Arrow builders
//! ([`Table::event`], [`Table::audit_record`], [`super::rows`]). A row can also be written as a JSON
//! line ([`Table::event_row`], [`Table::audit_row`]) that the Arrow JSON decoder turns into the
//! same record batch against [`Table::schema`]; that form is the reference the builders are
//! checked against.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::audit_record::Record;
use super::rows::{Builders, Rows};
use super::shape::{timestamp_type, Shape};
use crate::event::CloudEvent;

/// Name of the audit table.
pub const AUDIT_TABLE: &str = "audit";

/// Columns every table has after its own, and the hive partition columns.
const KAFKA_COLUMNS: [&str; 5] = [
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "ingested_at",
];
const ENVELOPE: [&str; 5] = ["id", "type", "source", "subject", "time"];
const PARTITION_COLUMNS: [&str; 2] = ["date", "hour"];

/// The audit record as the lake types it (see [`crate::audit::AuditRecord`]).
const AUDIT_SCHEMA: &str = r#"{"type": "object", "properties": {
  "event_id": {"type": "string"}, "type": {"type": "string"}, "source": {"type": "string"},
  "subject": {"type": "string"}, "event_time": {"type": "string", "format": "date-time"},
  "mode": {"type": "string"}, "topic": {"type": "string"}, "partition": {"type": "integer"},
  "offset": {"type": "integer"}, "outcome": {"type": "string"}, "reason": {"type": "string"},
  "error": {"type": "string"},
  "decision": {"type": "object", "properties": {
    "allow": {"type": "boolean"}, "reasons": {"type": "array", "items": {"type": "string"}},
    "obligations": {"type": "object"}, "failure": {"type": "string"}, "detail": {"type": "string"}}},
  "policy_revision": {"type": "string"},
  "action": {"type": "object", "properties": {
    "name": {"type": "string"}, "kind": {"type": "string"},
    "emitted_id": {"type": "string"}, "emitted_topic": {"type": "string"},
    "status": {"type": "integer"}, "attempts": {"type": "integer"}}},
  "worker": {"type": "string"},
  "processed_at": {"type": "string", "format": "date-time"},
  "timings_us": {"type": "object", "properties": {
    "decode": {"type": "integer"}, "validate": {"type": "integer"}, "enrich": {"type": "integer"},
    "policy": {"type": "integer"}, "action": {"type": "integer"}}},
  "retry_round": {"type": "integer"},
  "origin": {"type": "object", "properties": {
    "topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}}},
  "replay_of": {"type": "object", "properties": {
    "dead_letter": {"type": "string"}, "reason": {"type": "string"}}},
  "traceid": {"type": "string"},
  "lookups": {"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string"}, "source": {"type": "string"}, "status": {"type": "integer"},
    "error": {"type": "string"}}}}
}}"#;

/// Where a record came from.
#[derive(Debug, Clone, Copy)]
pub struct Coordinates<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The record's timestamp in milliseconds, if it has one.
    pub timestamp_ms: Option<i64>,
}

/// The hour a row belongs to (hive partition `date=YYYY-MM-DD/hour=HH`), as hours since the
/// Unix epoch in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hour(pub i64);

impl Hour {
    /// The hour containing `time`.
    pub fn of(time: DateTime<Utc>) -> Self {
        Self(time.timestamp().div_euclid(3600))
    }

    /// `date=YYYY-MM-DD/hour=HH`.
    pub fn path(self) -> String {
        let time = DateTime::from_timestamp(self.0 * 3600, 0).unwrap_or_default();
        time.format("date=%Y-%m-%d/hour=%H").to_string()
    }
}

/// Which records a table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableKind {
    /// Valid events of one type.
    Events,
    /// Audit records.
    Audit,
}

/// One lake table.
#[derive(Debug, Clone)]
pub struct Table {
    /// Its name, the first path segment under the lake root: the event type, or `audit`.
    pub name: String,
    /// What it holds.
    pub kind: TableKind,
    /// Its Arrow schema.
    pub schema: SchemaRef,
    /// The shape of the payload (`data`, or the audit record).
    shape: Shape,
    /// Payload properties that are columns: property, column name, shape.
    columns: Vec<(String, String, Shape)>,
}

impl Table {
    /// The table of an event type with the given JSON Schema for its `data`.
    pub fn events(ty: &str, data_schema: &Value) -> Self {
        let shape = Shape::from_schema(data_schema);
        let reserved = |name: &str| {
            ENVELOPE
                .iter()
                .chain(&KAFKA_COLUMNS)
                .chain(&PARTITION_COLUMNS)
                .any(|r| *r == name)
                || name == "data_extra"
        };
        let columns: Vec<(String, String, Shape)> = match &shape {
            Shape::Struct(fields) => fields
                .iter()
                .map(|(name, s)| {
                    let column = if reserved(name) {
                        format!("data_{name}")
                    } else {
                        name.clone()
                    };
                    (name.clone(), column, s.clone())
                })
                .collect(),
            _ => vec![(String::new(), "data".to_owned(), Shape::Json)],
        };
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("subject", DataType::Utf8, true),
            Field::new("time", timestamp_type(), true),
        ];
        fields.extend(
            columns
                .iter()
                .map(|(_, column, s)| Field::new(column, s.data_type(), true)),
        );
        fields.push(Field::new("data_extra", DataType::Utf8, true));
        fields.extend(kafka_fields());
        Self {
            name: ty.to_owned(),
            kind: TableKind::Events,
            schema: Arc::new(Schema::new(fields)),
            shape,
            columns,
        }
    }

    /// The audit table.
    pub fn audit() -> Self {
        let schema: Value = serde_json::from_str(AUDIT_SCHEMA).unwrap_or_default();
        let shape = Shape::from_schema(&schema);
        let columns: Vec<(String, String, Shape)> = match &shape {
            Shape::Struct(fields) => fields
                .iter()
                .map(|(n, s)| (n.clone(), n.clone(), s.clone()))
                .collect(),
            _ => Vec::new(),
        };
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|(_, column, s)| Field::new(column, s.data_type(), true))
            .collect();
        fields.push(Field::new("extra", DataType::Utf8, true));
        fields.extend(kafka_fields());
        Self {
            name: AUDIT_TABLE.to_owned(),
            kind: TableKind::Audit,
            schema: Arc::new(Schema::new(fields)),
            shape,
            columns,
        }
    }

    /// The column holding the event id, written with a bloom filter: `id` in an event table,
    /// `event_id` in the audit table.
    pub fn id_column(&self) -> &'static str {
        match self.kind {
            TableKind::Events => "id",
            TableKind::Audit => "event_id",
        }
    }

    /// The row of a valid event as a JSON line, and the hour it belongs to: the event's `time`,
    /// else the record timestamp, else the ingestion time.
    pub fn event_row(
        &self,
        event: &CloudEvent,
        at: Coordinates<'_>,
        ingested: DateTime<Utc>,
        out: &mut Vec<u8>,
    ) -> Hour {
        let mut row = Map::new();
        row.insert("id".into(), Value::from(event.id.as_str()));
        row.insert("type".into(), Value::from(event.ty.as_str()));
        row.insert("source".into(), Value::from(event.source.as_str()));
        row.insert("subject".into(), event.subject.as_deref().into());
        let time = event.time.as_deref().and_then(parse_time);
        row.insert("time".into(), time.map(micros).into());
        let data = event.data.as_ref().unwrap_or(&Value::Null);
        self.payload(data, &mut row, "data_extra");
        let hour = time
            .or_else(|| at.timestamp_ms.and_then(DateTime::from_timestamp_millis))
            .unwrap_or(ingested);
        finish(row, at, ingested, out);
        Hour::of(hour)
    }

    /// The row of an audit record (JSON) and its hour: the record's `processed_at`, else the
    /// record timestamp, else the ingestion time. `None` if the value is not a JSON object.
    pub fn audit_row(
        &self,
        value: &[u8],
        at: Coordinates<'_>,
        ingested: DateTime<Utc>,
        out: &mut Vec<u8>,
    ) -> Option<Hour> {
        let record: Value = crate::event::json_from_bytes(value).ok()?;
        if !record.is_object() {
            return None;
        }
        let mut row = Map::new();
        self.payload(&record, &mut row, "extra");
        let hour = record
            .get("processed_at")
            .and_then(Value::as_str)
            .and_then(parse_time)
            .or_else(|| at.timestamp_ms.and_then(DateTime::from_timestamp_millis))
            .unwrap_or(ingested);
        finish(row, at, ingested, out);
        Some(Hour::of(hour))
    }

    /// A valid event's row, ready to be appended to its file's rows: its hour is the event's
    /// `time`, else the record timestamp, else the ingestion time (as [`Self::event_row`]).
    pub fn event<'a>(
        &'a self,
        event: &'a CloudEvent,
        at: Coordinates<'a>,
        ingested: DateTime<Utc>,
    ) -> EventRow<'a> {
        let time = event.time.as_deref().and_then(parse_time);
        EventRow {
            table: self,
            event,
            at,
            ingested,
            time,
        }
    }

    /// An audit record's row (the record's JSON), ready to be appended to its file's rows: its
    /// hour is the record's `processed_at`, else the record timestamp, else the ingestion time
    /// (as [`Self::audit_row`]). `None` if the record is not a JSON object. A record of the
    /// audit record's own shape is read without a JSON value tree ([`super::audit_record`]).
    pub fn audit_record<'a>(
        &'a self,
        value: &'a [u8],
        at: Coordinates<'a>,
        ingested: DateTime<Utc>,
    ) -> Option<AuditRow<'a>> {
        let (record, time) = match Record::parse(value) {
            Some(record) => {
                let time = record.processed_at().and_then(parse_time);
                (AuditValue::Typed(record), time)
            }
            None => {
                let record: Value = crate::event::json_from_bytes(value).ok()?;
                if !record.is_object() {
                    return None;
                }
                let time = record
                    .get("processed_at")
                    .and_then(Value::as_str)
                    .and_then(parse_time);
                (AuditValue::Json(record), time)
            }
        };
        Some(AuditRow {
            table: self,
            record,
            at,
            ingested,
            time,
        })
    }

    /// The builders of this table's columns in `rows`.
    fn builders<'r>(&self, rows: &'r mut Rows) -> Option<&'r mut Builders> {
        rows.builders(&self.schema, self.kind == TableKind::Events, &self.columns)
    }

    /// Appends the payload's columns and its unnamed parts; the bytes they add.
    fn append_payload(&self, b: &mut Builders, payload: &Value) -> usize {
        let mut bytes = 0;
        for (index, (property, column, _)) in self.columns.iter().enumerate() {
            let value = if property.is_empty() {
                Some(payload)
            } else {
                payload.get(property)
            };
            bytes += b.payload_value(index, column, value);
        }
        match self
            .shape
            .has_extra(payload)
            .then(|| self.shape.extra(payload))
        {
            Some(Some(extra)) => {
                let start = b.extra.values_slice().len();
                // Writing into an Arrow string builder does not fail.
                let _ = write!(b.extra, "{extra}");
                bytes += b.extra.values_slice().len() - start + 4;
                b.extra.append_value("");
            }
            _ => {
                b.extra.append_null();
                bytes += 1;
            }
        }
        bytes
    }

    /// The audit record a row of the audit table holds (the row as JSON, as `arrow-json`
    /// writes it): its columns and the `extra` parts merged again; the Kafka columns dropped.
    pub fn audit_value(&self, row: &Map<String, Value>) -> Value {
        let mut record = Map::new();
        for (property, column, shape) in &self.columns {
            match row.get(column) {
                Some(Value::Null) | None => {}
                Some(v) => {
                    record.insert(property.clone(), shape.restore(v));
                }
            }
        }
        if let Some(Value::Object(extra)) = row
            .get("extra")
            .and_then(Value::as_str)
            .and_then(|t| serde_json::from_str(t).ok())
        {
            merge(&mut record, extra);
        }
        Value::Object(record)
    }

    /// Adds the payload's columns and its unnamed parts to `row`.
    fn payload(&self, payload: &Value, row: &mut Map<String, Value>, extra_column: &str) {
        for (property, column, shape) in &self.columns {
            let value = if property.is_empty() {
                Some(payload)
            } else {
                payload.get(property)
            };
            if let Some(v) = value {
                row.insert(column.clone(), shape.normalize(v));
            }
        }
        let extra = self.shape.extra(payload).map(|e| e.to_string());
        row.insert(extra_column.to_owned(), extra.into());
    }
}

/// A valid event's row before it is appended ([`Table::event`]).
#[derive(Debug, Clone, Copy)]
pub struct EventRow<'a> {
    table: &'a Table,
    event: &'a CloudEvent,
    at: Coordinates<'a>,
    ingested: DateTime<Utc>,
    time: Option<DateTime<Utc>>,
}

impl EventRow<'_> {
    /// The hour partition the row belongs to.
    pub fn hour(&self) -> Hour {
        Hour::of(
            self.time
                .unwrap_or_else(|| record_time(self.at, self.ingested)),
        )
    }

    /// Appends the row to `rows` (the rows of a file of its table); the bytes it adds.
    pub fn append(&self, rows: &mut Rows) -> usize {
        let Some(b) = self.table.builders(rows) else {
            return 0;
        };
        let event = self.event;
        let mut bytes = 0;
        if let Some(e) = b.envelope.as_mut() {
            e.id.append_value(&event.id);
            e.ty.append_value(&event.ty);
            e.source.append_value(&event.source);
            e.subject.append_option(event.subject.as_deref());
            e.time.append_option(self.time.map(micros));
            bytes += event.id.len() + event.ty.len() + event.source.len() + 4 * 4 + 8;
            bytes += event.subject.as_deref().map_or(1, str::len);
        }
        let data = event.data.as_ref().unwrap_or(&Value::Null);
        bytes += self.table.append_payload(b, data);
        bytes + append_kafka(b, self.at, self.ingested)
    }
}

/// An audit record's row before it is appended ([`Table::audit_record`]).
#[derive(Debug)]
pub struct AuditRow<'a> {
    table: &'a Table,
    record: AuditValue<'a>,
    at: Coordinates<'a>,
    ingested: DateTime<Utc>,
    time: Option<DateTime<Utc>>,
}

/// An audit record as read: of the audit record's own shape, or any JSON object.
// The typed record lives on the stack for one record, read and appended: boxing it would add an
// allocation per record to save moving it once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum AuditValue<'a> {
    Typed(Record<'a>),
    Json(Value),
}

impl AuditRow<'_> {
    /// The hour partition the row belongs to.
    pub fn hour(&self) -> Hour {
        Hour::of(
            self.time
                .unwrap_or_else(|| record_time(self.at, self.ingested)),
        )
    }

    /// Appends the row to `rows` (the rows of a file of the audit table); the bytes it adds.
    pub fn append(&self, rows: &mut Rows) -> usize {
        let Some(b) = self.table.builders(rows) else {
            return 0;
        };
        let bytes = match &self.record {
            AuditValue::Typed(record) => record.append(&self.table.columns, b),
            AuditValue::Json(record) => self.table.append_payload(b, record),
        };
        bytes + append_kafka(b, self.at, self.ingested)
    }

    /// Whether the record was read without a JSON value tree.
    #[cfg(test)]
    fn typed(&self) -> bool {
        matches!(self.record, AuditValue::Typed(_))
    }
}

/// The record timestamp, else the ingestion time.
fn record_time(at: Coordinates<'_>, ingested: DateTime<Utc>) -> DateTime<Utc> {
    at.timestamp_ms
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(ingested)
}

/// Appends the Kafka columns; the bytes they add.
fn append_kafka(b: &mut Builders, at: Coordinates<'_>, ingested: DateTime<Utc>) -> usize {
    let k = &mut b.kafka;
    k.topic.append_value(at.topic);
    k.partition.append_value(at.partition);
    k.offset.append_value(at.offset);
    k.timestamp.append_option(at.timestamp_ms);
    k.ingested_at.append_value(micros(ingested));
    at.topic.len() + 4 + 4 + 8 + 8 + 8
}

/// Merges `extra` (the parts of a record the schema does not name) into `into`, at any depth.
fn merge(into: &mut Map<String, Value>, extra: Map<String, Value>) {
    for (key, value) in extra {
        match (into.get_mut(&key), value) {
            (Some(Value::Object(inner)), Value::Object(more)) => merge(inner, more),
            // A list's extras are per element, `null` where an element has none.
            (Some(Value::Array(items)), Value::Array(more)) => {
                for (item, more) in items.iter_mut().zip(more) {
                    if let (Value::Object(item), Value::Object(more)) = (item, more) {
                        merge(item, more);
                    }
                }
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn kafka_fields() -> Vec<Field> {
    vec![
        Field::new("kafka_topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new(
            "kafka_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("+00:00"))),
            true,
        ),
        Field::new("ingested_at", timestamp_type(), false),
    ]
}

fn finish(
    mut row: Map<String, Value>,
    at: Coordinates<'_>,
    ingested: DateTime<Utc>,
    out: &mut Vec<u8>,
) {
    row.insert("kafka_topic".into(), Value::from(at.topic));
    row.insert("kafka_partition".into(), Value::from(at.partition));
    row.insert("kafka_offset".into(), Value::from(at.offset));
    row.insert("kafka_timestamp".into(), at.timestamp_ms.into());
    row.insert("ingested_at".into(), Value::from(micros(ingested)));
    // A map of JSON values always serialises.
    let _ = serde_json::to_writer(&mut *out, &row);
    out.push(b'\n');
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Microseconds since the epoch: the timestamp columns' unit.
fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::encode::{decode_json, encode, encode_batches, EncodeSettings};
    use crate::lake::rows::BATCH_ROWS;
    use arrow_array::RecordBatch;
    use serde_json::json;

    /// A small deterministic generator, so a failure reproduces.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// A value of `shape`, or of another kind where the schema leaves it open: nulls, integral
    /// floats, RFC 3339 times with offsets and invalid ones, escapes, nested lists and objects,
    /// properties the schema does not name.
    fn value(shape: &Shape, rng: &mut Lcg, depth: usize) -> Value {
        if rng.below(8) == 0 {
            return Value::Null;
        }
        match shape {
            Shape::Bool => Value::Bool(rng.below(2) == 0),
            Shape::Int => match rng.below(3) {
                0 => json!(rng.below(1000) as i64 - 500),
                1 => json!(rng.below(100) as f64),
                _ => json!(i64::MAX - rng.below(3) as i64),
            },
            Shape::Float => match rng.below(3) {
                0 => json!(rng.below(1000) as f64 / 7.0),
                1 => json!(rng.below(1000)),
                _ => json!(-1.0e-300),
            },
            Shape::Str => match rng.below(4) {
                0 => json!(format!("s-{}", rng.below(100))),
                1 => json!("ünï \"quoted\"\n\ttab \u{1F600}"),
                2 => json!(""),
                _ => json!("EUR"),
            },
            Shape::Timestamp => match rng.below(4) {
                0 => json!("2026-01-02T03:04:05.123456+01:00"),
                1 => json!("2026-03-04T05:06:07Z"),
                2 => json!("yesterday"),
                _ => json!("1969-12-31T23:59:59.5-00:30"),
            },
            Shape::Date => json!(format!("2026-02-{:02}", 1 + rng.below(28))),
            Shape::Json => any(rng, depth),
            Shape::List(item) => {
                let n = rng.below(4);
                Value::Array((0..n).map(|_| value(item, rng, depth + 1)).collect())
            }
            Shape::Struct(fields) => {
                let mut map = Map::new();
                for (name, shape) in fields {
                    if rng.below(5) != 0 {
                        map.insert(name.clone(), value(shape, rng, depth + 1));
                    }
                }
                if rng.below(3) == 0 {
                    map.insert(format!("unnamed_{}", rng.below(5)), any(rng, depth + 1));
                }
                Value::Object(map)
            }
        }
    }

    /// Any JSON value.
    fn any(rng: &mut Lcg, depth: usize) -> Value {
        match rng.below(if depth > 2 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => json!(rng.below(2) == 0),
            2 => json!(rng.below(1000) as f64 / 8.0),
            3 => json!(format!("x{}", rng.below(10))),
            4 => Value::Array((0..rng.below(3)).map(|_| any(rng, depth + 1)).collect()),
            _ => {
                let mut map = Map::new();
                for n in 0..rng.below(3) {
                    map.insert(format!("k{n}"), any(rng, depth + 1));
                }
                Value::Object(map)
            }
        }
    }

    fn event(ty: &str, n: u64, data: Option<Value>, rng: &mut Lcg) -> CloudEvent {
        let mut event = json!({"specversion": "1.0", "id": format!("e-{n}"), "source": "/s",
            "type": ty});
        if rng.below(3) != 0 {
            event["subject"] = json!(format!("sub-{n}"));
        }
        match rng.below(4) {
            0 => {}
            1 => event["time"] = json!("not a time"),
            _ => {
                event["time"] = json!(format!("2026-01-0{}T1{}:00:00.25+02:00", 1 + n % 3, n % 10))
            }
        }
        if let Some(data) = data {
            event["data"] = data;
        }
        serde_json::from_value(event).expect("event")
    }

    fn coordinates(n: u64, rng: &mut Lcg) -> Coordinates<'static> {
        Coordinates {
            topic: "events.t",
            partition: 3,
            offset: n as i64,
            timestamp_ms: (rng.below(2) == 0).then_some(1_767_225_600_000 + n as i64),
        }
    }

    /// The rows the lake role appends give the record batch arrow-json decodes from the JSON
    /// rows, and the same Parquet, for every demo event type, the audit table and evolved
    /// schemas.
    fn same_batch(
        table: &Table,
        rows: Vec<(Option<EventRow<'_>>, Option<AuditRow<'_>>)>,
        json: &[u8],
    ) {
        let mut built = Rows::default();
        for (event, audit) in &rows {
            if let Some(row) = event {
                row.append(&mut built);
            }
            if let Some(row) = audit {
                row.append(&mut built);
            }
        }
        built.seal();
        let built = built.batches().expect("rows fit the schema").to_vec();
        let decoded = decode_json(&table.name, &table.schema, json).expect("decodes");
        assert_eq!(built.len(), decoded.len(), "{}: batches", table.name);
        assert_eq!(
            built.iter().map(RecordBatch::num_rows).sum::<usize>(),
            rows.len()
        );
        for (built, decoded) in built.iter().zip(&decoded) {
            for (column, field) in table.schema.fields().iter().enumerate() {
                assert_eq!(
                    built.column(column).to_data(),
                    decoded.column(column).to_data(),
                    "{}: column {}",
                    table.name,
                    field.name()
                );
            }
            assert_eq!(built, decoded, "{}", table.name);
        }
        let settings = EncodeSettings {
            row_group_rows: 50,
            zstd_level: 3,
        };
        let meta = vec![("reflex.topic".to_owned(), "events.t".to_owned())];
        let from_rows = encode_batches(
            &table.name,
            table.id_column(),
            &built,
            settings,
            meta.clone(),
        )
        .expect("encodes");
        let from_json = encode(
            &table.name,
            &table.schema,
            table.id_column(),
            json,
            settings,
            meta,
        )
        .expect("encodes");
        assert!(from_rows == from_json, "{}: the same Parquet", table.name);
    }

    fn compare_events(table: &Table, seed: u64) {
        let mut rng = Lcg(seed);
        let ingested = DateTime::from_timestamp_micros(1_767_225_600_123_456).expect("time");
        let events: Vec<(CloudEvent, Coordinates<'static>)> = (0..300)
            .map(|n| {
                let data = match rng.below(10) {
                    0 => None,
                    1 => Some(any(&mut rng, 0)),
                    _ => Some(value(&table.shape, &mut rng, 0)),
                };
                let e = event(&table.name, n, data, &mut rng);
                (e, coordinates(n, &mut rng))
            })
            .collect();
        let mut json = Vec::new();
        let mut rows = Vec::new();
        for (e, at) in &events {
            let hour = table.event_row(e, *at, ingested, &mut json);
            let row = table.event(e, *at, ingested);
            assert_eq!(row.hour(), hour);
            rows.push((Some(row), None));
        }
        same_batch(table, rows, &json);
    }

    #[test]
    fn appended_rows_equal_the_json_path_for_the_demo_types() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
        let schemas =
            crate::schema::SchemaRegistry::load(std::path::Path::new(dir)).expect("schemas");
        let tables = crate::lake::Tables::new(&schemas);
        let mut names = Vec::new();
        for (seed, table) in tables.iter().enumerate() {
            if table.kind == TableKind::Events {
                compare_events(table, seed as u64 + 1);
                names.push(table.name.clone());
            }
        }
        for ty in ["order.placed", "payment.settled", "refund.requested"] {
            assert!(names.iter().any(|n| n == ty), "{ty} in {names:?}");
        }
    }

    #[test]
    fn appended_rows_equal_the_json_path_after_schema_evolution() {
        let old = json!({"type": "object", "properties": {
            "amount": {"type": "number"}, "note": {"type": "string"},
            "lines": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "qty": {"type": "integer"}}}}}});
        // A property added at the top and inside the list's items, one no longer named.
        let new = json!({"type": "object", "properties": {
            "amount": {"type": "number"}, "coupon": {"type": "string"},
            "paid": {"type": "boolean"}, "on": {"type": "string", "format": "date"},
            "lines": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "qty": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"}}}}}});
        let (before, after) = (Table::events("x.y", &old), Table::events("x.y", &new));
        assert!(crate::lake::evolution::type_changes(
            before.schema.fields(),
            after.schema.fields()
        )
        .is_empty());
        // Events written for each schema, read by the table of either.
        for (seed, table) in [(11, &before), (12, &after)] {
            compare_events(table, seed);
        }
        let mut rng = Lcg(13);
        let ingested = DateTime::from_timestamp_micros(0).expect("time");
        let events: Vec<CloudEvent> = (0..200)
            .map(|n| {
                let shape = if n % 2 == 0 {
                    &before.shape
                } else {
                    &after.shape
                };
                let data = value(shape, &mut rng, 0);
                event("x.y", n, Some(data), &mut rng)
            })
            .collect();
        for table in [&before, &after] {
            let mut json = Vec::new();
            let mut rows = Vec::new();
            for (n, e) in events.iter().enumerate() {
                let at = coordinates(n as u64, &mut rng);
                table.event_row(e, at, ingested, &mut json);
                rows.push((Some(table.event(e, at, ingested)), None));
            }
            same_batch(table, rows, &json);
        }
    }

    #[test]
    fn appended_audit_rows_equal_the_json_path() {
        let table = Table::audit();
        let mut rng = Lcg(21);
        let ingested = DateTime::from_timestamp_micros(1_767_225_600_000_001).expect("time");
        let records: Vec<Value> = (0..200)
            .map(|n| {
                let mut record = value(&table.shape, &mut rng, 0);
                if n % 3 == 0 {
                    record = json!({"event_id": format!("e-{n}"), "outcome": "acted",
                        "decision": {"allow": true, "reasons": [], "obligations": {"redact": ["data.card_last4"]}},
                        "processed_at": "2026-01-02T03:04:05.678Z",
                        "timings_us": {"decode": 3, "validate": 1, "policy": 9, "action": 0},
                        "lookups": [{"name": "customer", "status": 200}, {"name": "fx", "error": "timeout", "extra": 1}]});
                }
                record
            })
            .collect();
        let texts: Vec<String> = records.iter().map(Value::to_string).collect();
        let mut json = Vec::new();
        let mut rows = Vec::new();
        for (n, text) in texts.iter().enumerate() {
            let at = coordinates(n as u64, &mut rng);
            let hour = table.audit_row(text.as_bytes(), at, ingested, &mut json);
            let row = table.audit_record(text.as_bytes(), at, ingested);
            assert_eq!(row.as_ref().map(AuditRow::hour), hour);
            if row.is_some() {
                rows.push((None, row));
            }
        }
        same_batch(&table, rows, &json);
    }

    /// An audit record as the actions role writes it, with every field the lake names set or
    /// left out by `n`.
    fn actions_audit_record(n: usize) -> crate::audit::AuditRecord {
        use crate::audit::{AuditRecord, Outcome, Timings};
        let input = crate::ingest::Input {
            topic: "events.orders",
            partition: 2,
            offset: n as i64,
            key: None,
            value: None,
            headers: &[],
            timestamp_ms: None,
        };
        let mut a = AuditRecord::new(&input, "worker-1");
        let some = |k: usize| n % k != 0;
        a.event_id = some(7).then(|| format!("e-{n}"));
        a.ty = some(5).then(|| "order.placed".to_owned());
        a.source = Some("/shop".to_owned());
        a.subject = some(2).then(|| format!("customer \"{n}\" ünï\n"));
        a.event_time = some(3).then(|| ["2026-01-02T03:04:05.25+02:00", "later"][n % 2].to_owned());
        a.mode = some(4).then_some(crate::event::Mode::Structured);
        a.outcome = [
            Outcome::Actioned,
            Outcome::Denied,
            Outcome::DeadLettered,
            Outcome::Retrying,
        ][n % 4];
        a.reason = (n % 4 == 2).then_some(crate::ingest::DeadLetterReason::SchemaInvalid);
        a.error = (n % 4 == 2).then(|| "data.amount: -1 is less than 0".to_owned());
        a.decision = some(6).then(|| {
            let mut obligations = Map::new();
            if some(2) {
                obligations.insert("redact".into(), json!(["data.card_last4", n]));
            }
            crate::policy::Decision {
                allow: some(3),
                reasons: (0..n % 3).map(|i| format!("reason {i} \t")).collect(),
                obligations,
                failure: (n % 6 == 1).then_some(crate::policy::Failure::Timeout),
                detail: (n % 6 == 1).then(|| "over 10ms".to_owned()),
            }
        });
        a.policy_revision = format!("sha256:{n:x}");
        a.action = some(3).then(|| crate::action::ActionReport {
            name: "notify".to_owned(),
            kind: "http",
            emitted_id: some(2).then(|| format!("x-{n}")),
            emitted_topic: some(2).then(|| "derived".to_owned()),
            status: some(5).then_some(200),
            attempts: some(5).then_some(1 + n as u32 % 3),
        });
        a.processed_at = [
            "2026-01-02T03:04:05.678Z",
            "2026-01-02T04:00:00+01:00",
            "not a time",
        ][n % 3]
            .to_owned();
        a.timings_us = Timings {
            decode: n as u64,
            validate: 2,
            enrich: 0,
            policy: 40,
            action: u64::from(some(2)),
        };
        a.retry_round = (n % 5 == 1).then_some(2);
        a.origin = (n % 5 == 1).then(|| crate::ingest::headers::Origin {
            topic: "events.orders".to_owned(),
            partition: 2,
            offset: 9,
        });
        a.replay_of = (n % 7 == 3).then(|| crate::ingest::headers::ReplayOf {
            dead_letter: "reflex.dlq/0/4".to_owned(),
            reason: "schema_invalid".to_owned(),
        });
        a.traceid = some(2).then(|| format!("{n:032x}"));
        a.publisher = some(11).then(|| crate::publisher::Publisher {
            verified: n % 2 == 0,
            key_id: some(2).then(|| "support-desk".to_owned()),
            status: crate::publisher::Status::Unsigned,
            claimed_key_id: None,
        });
        a.lookups = (0..n % 3)
            .map(|i| crate::enrich::LookupReport {
                name: format!("lookup-{i}"),
                source: crate::enrich::LookupSource::Service,
                status: (i == 0).then_some(200),
                error: (i == 1).then(|| "timeout".to_owned()),
            })
            .collect();
        a
    }

    /// The audit records the actions role writes (with `publisher` and `enrichment`, which the
    /// table keeps in `extra`) are read without a JSON value tree, and their rows are those of
    /// the JSON path; records with a property the table does not name inside one it names go
    /// the general way in the same file.
    #[test]
    fn actions_audit_records_are_read_without_a_value_tree() {
        let table = Table::audit();
        let mut rng = Lcg(22);
        let ingested = DateTime::from_timestamp_micros(1_767_225_600_000_001).expect("time");
        let texts: Vec<(bool, Vec<u8>)> = (0..120)
            .map(|n| {
                let mut record = actions_audit_record(n);
                if n % 10 == 9 {
                    record
                        .enrichment
                        .insert("customer".into(), json!({"tier": n}));
                }
                let mut text = record.encode();
                let nested = n % 13 == 4;
                if nested {
                    let mut value: Value = serde_json::from_slice(&text).expect("json");
                    value["timings_us"]["queue"] = json!(n);
                    text = value.to_string().into_bytes();
                }
                (!nested, text)
            })
            .collect();
        let mut json = Vec::new();
        let mut rows = Vec::new();
        for (n, (typed, text)) in texts.iter().enumerate() {
            let at = coordinates(n as u64, &mut rng);
            let hour = table.audit_row(text, at, ingested, &mut json);
            let row = table.audit_record(text, at, ingested).expect("a row");
            assert_eq!(row.typed(), *typed, "record {n}");
            assert_eq!(Some(row.hour()), hour);
            rows.push((None, Some(row)));
        }
        same_batch(&table, rows, &json);
    }

    /// A file of more rows than a batch holds is built in batches of [`BATCH_ROWS`], each sized
    /// from the one before; they hold the rows of the JSON path and give the Parquet of all the
    /// rows as one batch; leaving out rows crosses batches.
    #[test]
    fn rows_are_built_in_batches_that_give_the_same_parquet() {
        let table = Table::audit();
        let mut rng = Lcg(24);
        let ingested = DateTime::from_timestamp_micros(1_767_225_600_000_001).expect("time");
        let n = 2 * BATCH_ROWS + 1000;
        let texts: Vec<Vec<u8>> = (0..n).map(|n| actions_audit_record(n).encode()).collect();
        let mut json = Vec::new();
        let mut built = Rows::default();
        for (n, text) in texts.iter().enumerate() {
            let at = coordinates(n as u64, &mut rng);
            table.audit_row(text, at, ingested, &mut json);
            let row = table.audit_record(text, at, ingested).expect("a row");
            row.append(&mut built);
        }
        built.seal();
        let batches = built.batches().expect("rows fit").to_vec();
        assert_eq!(
            batches
                .iter()
                .map(RecordBatch::num_rows)
                .collect::<Vec<_>>(),
            [BATCH_ROWS, BATCH_ROWS, 1000]
        );
        let mut decoder = arrow_json::ReaderBuilder::new(table.schema.clone())
            .with_batch_size(n)
            .build_decoder()
            .expect("decoder");
        assert_eq!(decoder.decode(&json).expect("decodes"), json.len());
        let whole = decoder.flush().expect("decodes").expect("a batch");
        for (i, batch) in batches.iter().enumerate() {
            assert_eq!(
                *batch,
                whole.slice(i * BATCH_ROWS, batch.num_rows()),
                "batch {i}"
            );
        }
        let settings = EncodeSettings {
            row_group_rows: 2 * BATCH_ROWS,
            zstd_level: 3,
        };
        let parquet = |batches: &[RecordBatch]| {
            encode_batches("audit", "event_id", batches, settings, Vec::new()).expect("encodes")
        };
        assert!(
            parquet(&batches) == parquet(std::slice::from_ref(&whole)),
            "the same Parquet"
        );
        built.skip(BATCH_ROWS + 10);
        let rest = built.batches().expect("rows fit").to_vec();
        assert_eq!(
            rest.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
            [BATCH_ROWS - 10, 1000]
        );
        let skipped = whole.slice(BATCH_ROWS + 10, n - BATCH_ROWS - 10);
        assert!(
            parquet(&rest) == parquet(&[skipped]),
            "the same rows after skipping"
        );
        assert_eq!(
            crate::lake::rows::rows_from(&batches, BATCH_ROWS + 10)
                .iter()
                .map(RecordBatch::num_rows)
                .collect::<Vec<_>>(),
            [BATCH_ROWS - 10, 1000]
        );
    }

    /// What the typed reading refuses goes the general way: unnamed properties, other kinds,
    /// duplicate keys, arrays where objects belong.
    #[test]
    fn unusual_audit_records_go_the_general_way() {
        let table = Table::audit();
        let mut rng = Lcg(23);
        let ingested = DateTime::from_timestamp_micros(0).expect("time");
        let texts = [
            r#"{"event_id": "a", "outcome": "acted", "partition": 1}"#,
            r#"{"event_id": "a", "new_field": 1}"#,
            r#"{"event_id": "a", "partition": 1.0}"#,
            r#"{"event_id": "a", "partition": "2"}"#,
            r#"{"event_id": "a", "event_id": "b"}"#,
            r#"{"event_id": "a", "decision": {"allow": true, "why": 1}}"#,
            r#"{"event_id": "a", "lookups": [null, {"name": "n", "status": 200}]}"#,
            r#"{"z": {"b": [1, 2.5]}, "event_id": "a", "x": 1, "x": null, "a": "\u00e9"}"#,
            r#"{"event_id": 7, "topic": null, "processed_at": "2026-01-02T03:04:05Z"}"#,
        ];
        let mut json = Vec::new();
        let mut rows = Vec::new();
        for (n, text) in texts.iter().enumerate() {
            let at = coordinates(n as u64, &mut rng);
            let hour = table.audit_row(text.as_bytes(), at, ingested, &mut json);
            let row = table
                .audit_record(text.as_bytes(), at, ingested)
                .expect("a row");
            assert_eq!(row.typed(), [0, 1, 6, 7].contains(&n), "{text}");
            assert_eq!(Some(row.hour()), hour);
            rows.push((None, Some(row)));
        }
        same_batch(&table, rows, &json);
        // An array where the decision's object belongs fails the file, as arrow-json fails it.
        let text = r#"{"event_id": "a", "decision": ["x"]}"#;
        let row = table
            .audit_record(text.as_bytes(), coordinates(0, &mut rng), ingested)
            .expect("a row");
        assert!(!row.typed());
        let mut rows = Rows::default();
        row.append(&mut rows);
        rows.seal();
        assert_eq!(
            rows.batches().expect_err("refused"),
            "column \"decision\": an array does not fit a struct column"
        );
        for text in ["[1, 2]", "\"text\"", "{\"event_id\": "] {
            let at = coordinates(0, &mut rng);
            assert!(table.audit_record(text.as_bytes(), at, ingested).is_none());
        }
    }

    #[test]
    fn sealed_rows_can_leave_out_their_first_rows() {
        let table = Table::events("x.y", &json!({"type": "object", "properties": {}}));
        let mut rng = Lcg(5);
        let events: Vec<CloudEvent> = (0..5).map(|n| event("x.y", n, None, &mut rng)).collect();
        let mut rows = Rows::default();
        for (n, e) in events.iter().enumerate() {
            table
                .event(e, coordinates(n as u64, &mut rng), Utc::now())
                .append(&mut rows);
        }
        rows.seal();
        rows.skip(2);
        let batch = &rows.batches().expect("sealed")[0];
        let offsets = batch.column_by_name("kafka_offset").expect("offsets");
        let offsets = offsets
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .expect("int64");
        assert_eq!(offsets.values().to_vec(), [2, 3, 4]);
    }

    #[test]
    fn a_value_of_the_wrong_kind_fails_the_file_naming_its_column() {
        let table = Table::events(
            "x.y",
            &json!({"type": "object", "properties": {"paid": {"type": "boolean"},
                "lines": {"type": "array", "items": {"type": "integer"}}}}),
        );
        let event: CloudEvent = serde_json::from_value(json!({"specversion": "1.0", "id": "e",
            "source": "/s", "type": "x.y", "data": {"paid": "yes", "lines": [1]}}))
        .expect("event");
        let at = Coordinates {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp_ms: None,
        };
        let mut json = Vec::new();
        table.event_row(&event, at, Utc::now(), &mut json);
        assert!(decode_json(&table.name, &table.schema, &json).is_err());
        let mut rows = Rows::default();
        table.event(&event, at, Utc::now()).append(&mut rows);
        rows.seal();
        assert_eq!(
            rows.batches().expect_err("refused"),
            "column \"paid\": a string does not fit a boolean column"
        );
    }

    #[test]
    fn hour_paths_are_utc_hive_partitions() {
        let t = parse_time("2026-03-01T23:59:59+02:00").expect("time");
        assert_eq!(Hour::of(t).path(), "date=2026-03-01/hour=21");
        let t = parse_time("1969-12-31T23:30:00Z").expect("time");
        assert_eq!(Hour::of(t).path(), "date=1969-12-31/hour=23");
    }

    #[test]
    fn reserved_property_names_are_prefixed() {
        let table = Table::events(
            "x.y",
            &json!({"type": "object", "properties": {"type": {"type": "string"}, "n": {"type": "integer"}}}),
        );
        let names: Vec<&str> = table
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert!(
            names.contains(&"data_type") && names.contains(&"n"),
            "{names:?}"
        );
        assert_eq!(names.iter().filter(|n| **n == "type").count(), 1);
    }
}
