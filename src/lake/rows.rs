//! The rows of one lake file as Arrow arrays, appended one row at a time.
//!
//! [`Rows`] holds an array builder per column of a table's schema; [`crate::lake::table::Table`]
//! appends an event's or an audit record's values straight from the decoded record, and the
//! builders become record batches of [`BATCH_ROWS`] rows, the last when the file is written
//! ([`Rows::seal`]). Each value is read the way arrow-json's decoder reads the JSON row
//! [`crate::lake::table::Table::event_row`] writes, so the batches are the ones that decoder would
//! give: untyped values as their JSON text, integral floats in integer columns as integers,
//! `date-time` strings as microseconds (`null` when they are not RFC 3339), numeric strings in
//! number columns parsed. A value that decoder refuses (a string in a boolean column, an object
//! in a list column) is a null in its column and makes the file fail to encode with an error
//! naming the column, as it failed before.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    NullBufferBuilder, StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
};
use arrow_array::types::{Date32Type, Float64Type, Int64Type};
use arrow_array::{ArrayRef, ListArray, RecordBatch, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_cast::parse::Parser;
use arrow_schema::{DataType, FieldRef, Fields, SchemaRef};
use serde_json::Value;

use super::shape::Shape;

/// Bytes a null adds to a buffer, about (its validity bit and its slot).
const NULL_BYTES: usize = 1;

/// Rows per record batch. A file's rows are built in batches of this many, each batch's
/// builders sized from the previous batch's, so a file's buffers are allocated once at their size
/// instead of regrowing (copying them and touching fresh pages each time) as its rows come. It
/// is the JSON decoder's batch size ([`super::encode`]) and divides the default row group size,
/// so the Parquet file is the one a single batch of all the rows gives.
pub const BATCH_ROWS: usize = 8192;

/// The rows of one file: column builders while rows are appended, record batches once sealed.
#[derive(Debug, Default)]
pub struct Rows {
    /// Batches of [`BATCH_ROWS`] rows, built.
    built: Vec<RecordBatch>,
    /// The builders of the rows after them.
    building: Option<Box<Builders>>,
    /// Whether rows are no longer appended.
    sealed: bool,
    /// Why the rows do not fit the schema: the first value that did not fit its column.
    error: Option<String>,
}

impl Rows {
    /// The builders of the next row, made for `schema` and `columns` when this is the first row
    /// (or the first of a batch); `None` once sealed.
    pub(crate) fn builders(
        &mut self,
        schema: &SchemaRef,
        envelope: bool,
        columns: &[(String, String, Shape)],
    ) -> Option<&mut Builders> {
        if self.sealed {
            return None;
        }
        if self.building.as_ref().is_some_and(|b| b.rows >= BATCH_ROWS) {
            self.finish_batch();
        }
        let builders = self
            .building
            .get_or_insert_with(|| Box::new(Builders::new(schema, envelope, columns)));
        builders.rows += 1;
        Some(builders)
    }

    /// Turns the full builders into a batch and starts the next batch's, sized like them.
    fn finish_batch(&mut self) {
        if let Some(builders) = self.building.as_mut() {
            let next = builders.successor();
            let full = std::mem::replace(&mut **builders, next);
            self.keep(full.finish());
        }
    }

    fn keep(&mut self, batch: Result<RecordBatch, String>) {
        match batch {
            Ok(batch) => self.built.push(batch),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }

    /// Turns the builders into record batches; rows appended later are refused.
    pub fn seal(&mut self) {
        if self.sealed {
            return;
        }
        self.sealed = true;
        if let Some(builders) = self.building.take() {
            if builders.rows > 0 {
                self.keep(builders.finish());
            }
        }
    }

    /// Leaves out the first `rows` rows of the sealed batches.
    pub fn skip(&mut self, mut rows: usize) {
        if !self.sealed || self.error.is_some() {
            return;
        }
        while rows > 0 {
            let more = self.built.len() > 1;
            let Some(first) = self.built.first_mut() else {
                return;
            };
            if rows >= first.num_rows() && more {
                rows -= first.num_rows();
                self.built.remove(0);
            } else {
                let rows = rows.min(first.num_rows());
                *first = first.slice(rows, first.num_rows() - rows);
                return;
            }
        }
    }

    /// The sealed batches, or why the rows do not fit their schema (a column and its value).
    pub fn batches(&self) -> Result<&[RecordBatch], String> {
        if !self.sealed {
            return Err("the rows are not sealed".to_owned());
        }
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.built.is_empty() {
            return Err("no rows were appended".to_owned());
        }
        Ok(&self.built)
    }
}

/// The rows of `batches` from row `start` on (slices, not copies).
pub fn rows_from(batches: &[RecordBatch], mut start: usize) -> Vec<RecordBatch> {
    let mut rest = Vec::with_capacity(batches.len());
    for batch in batches {
        if start >= batch.num_rows() {
            start -= batch.num_rows();
            continue;
        }
        rest.push(batch.slice(start, batch.num_rows() - start));
        start = 0;
    }
    rest
}

/// A string builder for `items` values, with room for the bytes `like` holds per value and an
/// eighth more.
fn strings_like(like: &StringBuilder, items: usize) -> StringBuilder {
    let bytes = like.values_slice().len() * items / like.len().max(1);
    StringBuilder::with_capacity(items, bytes + bytes / 8)
}

/// The builders of one table's columns, in schema order: the envelope (event tables), the
/// payload's columns, the extra column, the Kafka columns.
#[derive(Debug)]
pub(crate) struct Builders {
    schema: SchemaRef,
    /// `id`, `type`, `source`, `subject`, `time` of an event table.
    pub envelope: Option<Envelope>,
    /// One per payload column.
    pub payload: Vec<Column>,
    /// `data_extra` or `extra`.
    pub extra: StringBuilder,
    /// The Kafka coordinates and the ingestion time.
    pub kafka: Kafka,
    /// The first value that does not fit its column.
    pub error: Option<String>,
    /// Rows appended.
    rows: usize,
}

/// The envelope columns of an event table.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    pub id: StringBuilder,
    pub ty: StringBuilder,
    pub source: StringBuilder,
    pub subject: StringBuilder,
    pub time: TimestampMicrosecondBuilder,
}

/// The Kafka columns every table ends with.
#[derive(Debug, Default)]
pub(crate) struct Kafka {
    pub topic: StringBuilder,
    pub partition: Int32Builder,
    pub offset: Int64Builder,
    pub timestamp: TimestampMillisecondBuilder,
    pub ingested_at: TimestampMicrosecondBuilder,
}

impl Builders {
    fn new(schema: &SchemaRef, envelope: bool, columns: &[(String, String, Shape)]) -> Self {
        Self {
            schema: Arc::clone(schema),
            envelope: envelope.then(Envelope::default),
            payload: columns.iter().map(|(_, _, s)| Column::new(s)).collect(),
            extra: StringBuilder::new(),
            kafka: Kafka::default(),
            error: None,
            rows: 0,
        }
    }

    /// Empty builders for the next [`BATCH_ROWS`] rows, sized like these.
    fn successor(&self) -> Self {
        let rows = BATCH_ROWS;
        let e = self.envelope.as_ref().map(|e| Envelope {
            id: strings_like(&e.id, rows),
            ty: strings_like(&e.ty, rows),
            source: strings_like(&e.source, rows),
            subject: strings_like(&e.subject, rows),
            time: TimestampMicrosecondBuilder::with_capacity(rows),
        });
        let k = &self.kafka;
        Self {
            schema: Arc::clone(&self.schema),
            envelope: e,
            payload: self.payload.iter().map(|c| c.successor(rows)).collect(),
            extra: strings_like(&self.extra, rows),
            kafka: Kafka {
                topic: strings_like(&k.topic, rows),
                partition: Int32Builder::with_capacity(rows),
                offset: Int64Builder::with_capacity(rows),
                timestamp: TimestampMillisecondBuilder::with_capacity(rows),
                ingested_at: TimestampMicrosecondBuilder::with_capacity(rows),
            },
            error: None,
            rows: 0,
        }
    }

    /// Appends `value` to the payload column `index` (named `column`); the bytes it adds.
    pub fn payload_value(&mut self, index: usize, column: &str, value: Option<&Value>) -> usize {
        let Some(builder) = self.payload.get_mut(index) else {
            return 0;
        };
        let appended = builder.append(value);
        self.appended(column, appended)
    }

    /// The bytes a value appended to the payload column `column` added, noting the first value
    /// that did not fit its column.
    pub fn appended(&mut self, column: &str, appended: Result<usize, String>) -> usize {
        match appended {
            Ok(bytes) => bytes,
            Err(mismatch) => {
                if self.error.is_none() {
                    self.error = Some(format!("column \"{column}\": {mismatch}"));
                }
                NULL_BYTES
            }
        }
    }

    fn finish(mut self) -> Result<RecordBatch, String> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let fields = self.schema.fields().clone();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(fields.len());
        if let Some(mut e) = self.envelope.take() {
            arrays.push(Arc::new(e.id.finish()));
            arrays.push(Arc::new(e.ty.finish()));
            arrays.push(Arc::new(e.source.finish()));
            arrays.push(Arc::new(e.subject.finish()));
            arrays.push(Arc::new(
                e.time
                    .finish()
                    .with_data_type(fields[arrays.len()].data_type().clone()),
            ));
        }
        for column in &mut self.payload {
            let field = &fields[arrays.len()];
            arrays.push(
                column
                    .finish(field.data_type())
                    .map_err(|e| e.to_string())?,
            );
        }
        arrays.push(Arc::new(self.extra.finish()));
        let k = &mut self.kafka;
        arrays.push(Arc::new(k.topic.finish()));
        arrays.push(Arc::new(k.partition.finish()));
        arrays.push(Arc::new(k.offset.finish()));
        let ms = fields[arrays.len()].data_type().clone();
        arrays.push(Arc::new(k.timestamp.finish().with_data_type(ms)));
        let us = fields[arrays.len()].data_type().clone();
        arrays.push(Arc::new(k.ingested_at.finish().with_data_type(us)));
        RecordBatch::try_new(Arc::clone(&self.schema), arrays).map_err(|e| e.to_string())
    }
}

/// The builder of one payload column (or struct field, or list item), by its shape.
#[derive(Debug)]
pub(crate) enum Column {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    /// A string column: strings as they are, other values as their JSON text.
    Str(StringBuilder),
    /// An untyped column: every value as its JSON text.
    Json(StringBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Date(Date32Builder),
    List {
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        item: Box<Column>,
    },
    Struct {
        names: Vec<String>,
        children: Vec<Column>,
        nulls: NullBufferBuilder,
    },
}

impl Column {
    fn new(shape: &Shape) -> Self {
        match shape {
            Shape::Bool => Self::Bool(BooleanBuilder::new()),
            Shape::Int => Self::Int(Int64Builder::new()),
            Shape::Float => Self::Float(Float64Builder::new()),
            Shape::Str => Self::Str(StringBuilder::new()),
            Shape::Json => Self::Json(StringBuilder::new()),
            Shape::Timestamp => Self::Timestamp(TimestampMicrosecondBuilder::new()),
            Shape::Date => Self::Date(Date32Builder::new()),
            Shape::List(item) => Self::List {
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
                item: Box::new(Self::new(item)),
            },
            Shape::Struct(fields) => Self::Struct {
                names: fields.iter().map(|(n, _)| n.clone()).collect(),
                children: fields.iter().map(|(_, s)| Self::new(s)).collect(),
                nulls: NullBufferBuilder::new(0),
            },
        }
    }

    /// An empty builder of the same shape for `items` values, sized like this one.
    fn successor(&self, items: usize) -> Self {
        match self {
            Self::Bool(_) => Self::Bool(BooleanBuilder::with_capacity(items)),
            Self::Int(_) => Self::Int(Int64Builder::with_capacity(items)),
            Self::Float(_) => Self::Float(Float64Builder::with_capacity(items)),
            Self::Str(b) => Self::Str(strings_like(b, items)),
            Self::Json(b) => Self::Json(strings_like(b, items)),
            Self::Timestamp(_) => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(items))
            }
            Self::Date(_) => Self::Date(Date32Builder::with_capacity(items)),
            Self::List { offsets, item, .. } => {
                // Items per list as in this batch, and an eighth more.
                let per = item.len() * items / offsets.len().saturating_sub(1).max(1);
                let mut next = Vec::with_capacity(items + 1);
                next.push(0);
                Self::List {
                    offsets: next,
                    nulls: NullBufferBuilder::new(items),
                    item: Box::new(item.successor(per + per / 8)),
                }
            }
            Self::Struct {
                names, children, ..
            } => Self::Struct {
                names: names.clone(),
                children: children.iter().map(|c| c.successor(items)).collect(),
                nulls: NullBufferBuilder::new(items),
            },
        }
    }

    /// Values appended.
    fn len(&self) -> usize {
        match self {
            Self::Bool(b) => b.len(),
            Self::Int(b) => b.len(),
            Self::Float(b) => b.len(),
            Self::Str(b) | Self::Json(b) => b.len(),
            Self::Timestamp(b) => b.len(),
            Self::Date(b) => b.len(),
            Self::List { offsets, .. } => offsets.len().saturating_sub(1),
            Self::Struct { nulls, .. } => nulls.len(),
        }
    }

    /// Appends a string as [`Self::append`] appends a JSON string.
    pub fn append_str(&mut self, value: Option<&str>) -> Result<usize, String> {
        match (&mut *self, value) {
            (_, None) => {
                self.append_null();
                Ok(NULL_BYTES)
            }
            (Self::Str(b), Some(s)) => {
                b.append_value(s);
                Ok(s.len() + 4)
            }
            (Self::Timestamp(b), Some(s)) => {
                match chrono::DateTime::parse_from_rfc3339(s) {
                    Ok(t) => b.append_value(t.timestamp_micros()),
                    Err(_) => b.append_null(),
                }
                Ok(8)
            }
            (_, Some(s)) => self.append(Some(&Value::String(s.to_owned()))),
        }
    }

    /// Appends an integer as [`Self::append`] appends a JSON integer.
    pub fn append_int(&mut self, value: Option<i64>) -> Result<usize, String> {
        match (&mut *self, value) {
            (_, None) => {
                self.append_null();
                Ok(NULL_BYTES)
            }
            (Self::Int(b), Some(v)) => {
                b.append_value(v);
                Ok(8)
            }
            (_, Some(v)) => self.append(Some(&Value::from(v))),
        }
    }

    /// Appends a boolean as [`Self::append`] appends a JSON boolean.
    pub fn append_bool(&mut self, value: Option<bool>) -> Result<usize, String> {
        match (&mut *self, value) {
            (_, None) => {
                self.append_null();
                Ok(NULL_BYTES)
            }
            (Self::Bool(b), Some(v)) => {
                b.append_value(v);
                Ok(1)
            }
            (_, Some(v)) => self.append(Some(&Value::Bool(v))),
        }
    }

    /// Appends a list as [`Self::append`] appends a JSON array, each item by `item`.
    pub fn append_list<T>(
        &mut self,
        items: Option<&[T]>,
        mut item: impl FnMut(&mut Self, &T) -> Result<usize, String>,
    ) -> Result<usize, String> {
        let Some(values) = items else {
            self.append_null();
            return Ok(NULL_BYTES);
        };
        let Self::List {
            offsets,
            nulls,
            item: builder,
        } = self
        else {
            self.append_null();
            return Err(format!("an array does not fit a {} column", self.kind()));
        };
        let mut bytes = 4;
        let mut refused = None;
        for v in values {
            match item(builder, v) {
                Ok(n) => bytes += n,
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        let last = offsets.last().copied().unwrap_or_default();
        offsets.push(last + i32::try_from(values.len()).unwrap_or(i32::MAX));
        nulls.append_non_null();
        match refused {
            Some(e) => Err(format!("an item: {e}")),
            None => Ok(bytes),
        }
    }

    /// Appends a struct as [`Self::append`] appends a JSON object: each field (by name) by
    /// `field`; `None` for a null.
    pub fn append_struct(
        &mut self,
        field: Option<impl FnMut(&str, &mut Self) -> Result<usize, String>>,
    ) -> Result<usize, String> {
        let Some(mut field) = field else {
            self.append_null();
            return Ok(NULL_BYTES);
        };
        let Self::Struct {
            names,
            children,
            nulls,
        } = self
        else {
            self.append_null();
            return Err(format!("an object does not fit a {} column", self.kind()));
        };
        let mut bytes = 0;
        let mut refused = None;
        for (name, child) in names.iter().zip(children.iter_mut()) {
            match field(name, child) {
                Ok(n) => bytes += n,
                Err(e) => {
                    refused.get_or_insert(format!("field \"{name}\": {e}"));
                }
            }
        }
        nulls.append_non_null();
        match refused {
            Some(e) => Err(e),
            None => Ok(bytes),
        }
    }

    /// Appends a value (`None` when absent); the bytes it adds, or why it does not fit (a null
    /// was appended instead).
    pub fn append(&mut self, value: Option<&Value>) -> Result<usize, String> {
        let value = match value {
            None | Some(Value::Null) => {
                self.append_null();
                return Ok(NULL_BYTES);
            }
            Some(v) => v,
        };
        let fits = match (&mut *self, value) {
            (Self::Bool(b), Value::Bool(v)) => {
                b.append_value(*v);
                Some(1)
            }
            (Self::Int(b), Value::Number(n)) => int(n).map(|v| {
                b.append_value(v);
                8
            }),
            (Self::Int(b), Value::String(s)) => Int64Type::parse(s).map(|v| {
                b.append_value(v);
                8
            }),
            (Self::Float(b), Value::Number(n)) => n.as_f64().map(|v| {
                b.append_value(v);
                8
            }),
            (Self::Float(b), Value::String(s)) => Float64Type::parse(s).map(|v| {
                b.append_value(v);
                8
            }),
            (Self::Str(b), Value::String(s)) => {
                b.append_value(s);
                Some(s.len() + 4)
            }
            (Self::Str(b) | Self::Json(b), v) => {
                let start = b.values_slice().len();
                // Writing into an Arrow string builder does not fail.
                let _ = write!(b, "{v}");
                let bytes = b.values_slice().len() - start;
                b.append_value("");
                Some(bytes + 4)
            }
            (Self::Timestamp(b), Value::String(s)) => {
                match chrono::DateTime::parse_from_rfc3339(s) {
                    Ok(t) => b.append_value(t.timestamp_micros()),
                    Err(_) => b.append_null(),
                }
                Some(8)
            }
            (Self::Timestamp(b), Value::Number(n)) => {
                let v = n
                    .as_i64()
                    .or_else(|| n.as_f64().map(|f| f as i64))
                    .unwrap_or_default();
                b.append_value(v);
                Some(8)
            }
            (Self::Date(b), Value::String(s)) => Date32Type::parse(s).map(|v| {
                b.append_value(v);
                4
            }),
            (Self::Date(b), Value::Number(n)) => n
                .as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .or_else(|| n.as_f64().and_then(float_to_i32))
                .map(|v| {
                    b.append_value(v);
                    4
                }),
            (
                Self::List {
                    offsets,
                    nulls,
                    item,
                },
                Value::Array(values),
            ) => {
                let mut bytes = 4;
                let mut refused = None;
                for v in values {
                    match item.append(Some(v)) {
                        Ok(n) => bytes += n,
                        Err(e) => {
                            refused.get_or_insert(e);
                        }
                    }
                }
                let last = offsets.last().copied().unwrap_or_default();
                offsets.push(last + i32::try_from(values.len()).unwrap_or(i32::MAX));
                nulls.append_non_null();
                if let Some(e) = refused {
                    return Err(format!("an item: {e}"));
                }
                Some(bytes)
            }
            (
                Self::Struct {
                    names,
                    children,
                    nulls,
                },
                Value::Object(map),
            ) => {
                let mut bytes = 0;
                let mut refused = None;
                for (name, child) in names.iter().zip(children.iter_mut()) {
                    match child.append(map.get(name)) {
                        Ok(n) => bytes += n,
                        Err(e) => {
                            refused.get_or_insert(format!("field \"{name}\": {e}"));
                        }
                    }
                }
                nulls.append_non_null();
                if let Some(e) = refused {
                    return Err(e);
                }
                Some(bytes)
            }
            _ => None,
        };
        fits.ok_or_else(|| {
            self.append_null();
            format!("{} does not fit a {} column", kind(value), self.kind())
        })
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int(b) => b.append_null(),
            Self::Float(b) => b.append_null(),
            Self::Str(b) | Self::Json(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::List { offsets, nulls, .. } => {
                let last = offsets.last().copied().unwrap_or_default();
                offsets.push(last);
                nulls.append_null();
            }
            // As arrow-json does: the fields of a null struct are null too.
            Self::Struct {
                children, nulls, ..
            } => {
                for child in children {
                    child.append_null();
                }
                nulls.append_null();
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Bool(_) => "boolean",
            Self::Int(_) => "integer",
            Self::Float(_) => "number",
            Self::Str(_) | Self::Json(_) => "string",
            Self::Timestamp(_) => "timestamp",
            Self::Date(_) => "date",
            Self::List { .. } => "list",
            Self::Struct { .. } => "struct",
        }
    }

    fn finish(&mut self, data_type: &DataType) -> Result<ArrayRef, arrow_schema::ArrowError> {
        Ok(match (self, data_type) {
            (Self::Bool(b), _) => Arc::new(b.finish()),
            (Self::Int(b), _) => Arc::new(b.finish()),
            (Self::Float(b), _) => Arc::new(b.finish()),
            (Self::Str(b) | Self::Json(b), _) => Arc::new(b.finish()),
            (Self::Timestamp(b), t) => Arc::new(b.finish().with_data_type(t.clone())),
            (Self::Date(b), _) => Arc::new(b.finish()),
            (
                Self::List {
                    offsets,
                    nulls,
                    item,
                },
                DataType::List(field),
            ) => {
                let values = item.finish(field.data_type())?;
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::try_new(
                    FieldRef::clone(field),
                    offsets,
                    values,
                    nulls.finish(),
                )?)
            }
            (
                Self::Struct {
                    children, nulls, ..
                },
                DataType::Struct(fields),
            ) => {
                let arrays = children
                    .iter_mut()
                    .zip(fields.iter())
                    .map(|(c, f)| c.finish(f.data_type()))
                    .collect::<Result<Vec<_>, _>>()?;
                let nulls = nulls.finish();
                Arc::new(StructArray::try_new(Fields::clone(fields), arrays, nulls)?)
            }
            (column, t) => {
                return Err(arrow_schema::ArrowError::SchemaError(format!(
                    "a {} column cannot have type {t}",
                    column.kind()
                )))
            }
        })
    }
}

/// An integer column's value as arrow-json reads the number's JSON text: integers as they
/// are, other numbers truncated when they are in range.
fn int(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        let f = n.as_f64()?;
        // num-traits' range check for f64 → i64, as arrow-json casts.
        (f > i64::MIN as f64 - 1.0 && f < i64::MAX as f64 + 1.0).then_some(f as i64)
    })
}

fn float_to_i32(f: f64) -> Option<i32> {
    (f > f64::from(i32::MIN) - 1.0 && f < f64::from(i32::MAX) + 1.0).then_some(f as i32)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
