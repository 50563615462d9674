//! Lake tables: one per event type and one for audit records; their Arrow schemas and rows.
//!
//! An event row holds the envelope (`id`, `type`, `source`, `subject`, `time`), the `data`
//! properties as typed columns, `data_extra` (the JSON text of whatever the schema does not
//! name), the Kafka coordinates and the ingestion time. A data property whose name is one of
//! these fixed columns is stored as `data_<name>`. An audit row holds the audit record's fields,
//! `extra`, the Kafka coordinates and the ingestion time. Rows are JSON lines that the Arrow
//! JSON decoder turns into record batches against [`Table::schema`].

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

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
        let record: Value = serde_json::from_slice(value).ok()?;
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
    use serde_json::json;

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
