//! The rows of one lake file as Arrow arrays, appended one row at a time.
//!
//! [`Rows`] holds an array builder per column of a table's schema; [`crate::lake::table::Table`]
//! appends an event's or an audit record's values straight from the decoded JSON value, and the
//! builders become one record batch when the file is written ([`Rows::seal`]). Each value is
//! read the way arrow-json's decoder reads the JSON row [`crate::lake::table::Table::event_row`]
//! writes, so the batch is the one that decoder would give: untyped values as their JSON text,
//! integral floats in integer columns as integers, `date-time` strings as microseconds (`null`
//! when they are not RFC 3339), numeric strings in number columns parsed. A value that decoder
//! refuses (a string in a boolean column, an object in a list column) is a null in its column
//! and makes the file fail to encode with an error naming the column, as it failed before.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, NullBufferBuilder,
    StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
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

/// The rows of one file: column builders while rows are appended, a record batch once sealed.
#[derive(Debug, Default)]
pub struct Rows {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    /// No row yet.
    #[default]
    Empty,
    /// Rows being appended.
    Building(Box<Builders>),
    /// The batch, or why the rows do not fit the schema.
    Sealed(Result<RecordBatch, String>),
}

impl Rows {
    /// The builders, made for `schema` and `columns` when this is the first row.
    pub(crate) fn builders(
        &mut self,
        schema: &SchemaRef,
        envelope: bool,
        columns: &[(String, String, Shape)],
    ) -> Option<&mut Builders> {
        if matches!(self.state, State::Empty) {
            let builders = Builders::new(schema, envelope, columns);
            self.state = State::Building(Box::new(builders));
        }
        match &mut self.state {
            State::Building(builders) => Some(builders),
            _ => None,
        }
    }

    /// Turns the builders into the record batch; rows appended later are refused.
    pub fn seal(&mut self) {
        if let State::Building(builders) = std::mem::take(&mut self.state) {
            self.state = State::Sealed(builders.finish());
        }
    }

    /// Leaves out the first `rows` rows of the sealed batch.
    pub fn skip(&mut self, rows: usize) {
        if let State::Sealed(Ok(batch)) = &mut self.state {
            let rows = rows.min(batch.num_rows());
            *batch = batch.slice(rows, batch.num_rows() - rows);
        }
    }

    /// The sealed batch, or why the rows do not fit their schema (a column and its value).
    pub fn batch(&self) -> Result<&RecordBatch, String> {
        match &self.state {
            State::Sealed(Ok(batch)) => Ok(batch),
            State::Sealed(Err(e)) => Err(e.clone()),
            State::Empty => Err("no rows were appended".to_owned()),
            State::Building(_) => Err("the rows are not sealed".to_owned()),
        }
    }
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
