//! The shape of a JSON value as a JSON Schema describes it, and its Arrow type.
//!
//! A [`Shape`] is derived once per table from the event type's JSON Schema. It gives the Arrow
//! data type of each column (objects → structs, arrays → lists, `date-time` → timestamp,
//! integers → int64, numbers → float64) and prepares each row for the Arrow JSON decoder (the
//! builders of [`super::rows`] read values the same way):
//! values the schema leaves untyped are kept as their JSON text, and properties the schema does
//! not name are collected separately ([`Shape::extra`]) so nothing is lost.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use serde_json::{Map, Value};

/// What a JSON Schema says about a value, reduced to what a column needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// `boolean`.
    Bool,
    /// `integer`: int64.
    Int,
    /// `number`: float64.
    Float,
    /// `string` (also an `enum` or `const` of strings).
    Str,
    /// `string` with `format: date-time`: a UTC timestamp in microseconds.
    Timestamp,
    /// `string` with `format: date`.
    Date,
    /// Untyped, mixed or unresolved (`$ref`, `oneOf`, ...): the value's JSON text.
    Json,
    /// `array` with `items`.
    List(Box<Shape>),
    /// `object` with `properties`, in the schema's order.
    Struct(Vec<(String, Shape)>),
}

/// The timestamp type of every time column: microseconds, UTC (written as the offset `+00:00`,
/// which arrow-json parses without a timezone database).
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("+00:00")))
}

impl Shape {
    /// The shape a JSON Schema (or sub-schema) describes.
    pub fn from_schema(schema: &Value) -> Self {
        let Some(obj) = schema.as_object() else {
            return Self::Json;
        };
        let ty = match obj.get("type") {
            Some(Value::String(t)) => Some(t.as_str()),
            Some(Value::Array(types)) => {
                let named: Vec<&str> = types
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| *t != "null")
                    .collect();
                match named.as_slice() {
                    [one] => Some(*one),
                    _ => return Self::Json,
                }
            }
            _ => None,
        };
        match ty {
            Some("boolean") => Self::Bool,
            Some("integer") => Self::Int,
            Some("number") => Self::Float,
            Some("string") => match obj.get("format").and_then(Value::as_str) {
                Some("date-time") => Self::Timestamp,
                Some("date") => Self::Date,
                _ => Self::Str,
            },
            Some("array") => match obj.get("items") {
                Some(items) if items.is_object() => Self::List(Box::new(Self::from_schema(items))),
                _ => Self::Json,
            },
            Some("object") => Self::object(obj),
            Some(_) => Self::Json,
            None => Self::untyped(obj),
        }
    }

    fn object(obj: &Map<String, Value>) -> Self {
        match obj.get("properties").and_then(Value::as_object) {
            Some(props) if !props.is_empty() => Self::Struct(
                props
                    .iter()
                    .map(|(name, s)| (name.clone(), Self::from_schema(s)))
                    .collect(),
            ),
            _ => Self::Json,
        }
    }

    /// A schema without `type`: an `enum`/`const` of one kind, or an object by its properties.
    fn untyped(obj: &Map<String, Value>) -> Self {
        let values: Vec<&Value> = match (obj.get("enum"), obj.get("const")) {
            (Some(Value::Array(values)), _) => values.iter().collect(),
            (None, Some(value)) => vec![value],
            _ if obj.contains_key("properties") => return Self::object(obj),
            _ => return Self::Json,
        };
        let all = |f: fn(&Value) -> bool| !values.is_empty() && values.iter().all(|v| f(v));
        if all(Value::is_string) {
            Self::Str
        } else if all(|v| v.is_i64() || v.is_u64()) {
            Self::Int
        } else if all(Value::is_number) {
            Self::Float
        } else if all(Value::is_boolean) {
            Self::Bool
        } else {
            Self::Json
        }
    }

    /// The Arrow type of a column of this shape. Every field is nullable: optional properties
    /// are common and a later schema may add fields that old files lack.
    pub fn data_type(&self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int => DataType::Int64,
            Self::Float => DataType::Float64,
            Self::Str | Self::Json => DataType::Utf8,
            Self::Timestamp => timestamp_type(),
            Self::Date => DataType::Date32,
            Self::List(item) => {
                DataType::List(Arc::new(Field::new("item", item.data_type(), true)))
            }
            Self::Struct(fields) => DataType::Struct(Fields::from(
                fields
                    .iter()
                    .map(|(name, shape)| Field::new(name, shape.data_type(), true))
                    .collect::<Vec<_>>(),
            )),
        }
    }

    /// `value` as the Arrow JSON decoder reads it for this shape: untyped values become their
    /// JSON text, integral floats of integer columns become integers, properties the schema
    /// does not name are left out (see [`Shape::extra`]).
    pub fn normalize(&self, value: &Value) -> Value {
        match (self, value) {
            (_, Value::Null) => Value::Null,
            (Self::Json, v) => Value::String(v.to_string()),
            (Self::Int, Value::Number(n)) if n.is_f64() => n
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map_or_else(|| value.clone(), |f| Value::from(f as i64)),
            (Self::Str, v) if !v.is_string() => Value::String(v.to_string()),
            // Microseconds since the epoch, the column's unit; RFC 3339 with any offset.
            (Self::Timestamp, Value::String(text)) => chrono::DateTime::parse_from_rfc3339(text)
                .map_or(Value::Null, |t| Value::from(t.timestamp_micros())),
            (Self::List(item), Value::Array(values)) => {
                Value::Array(values.iter().map(|v| item.normalize(v)).collect())
            }
            (Self::Struct(fields), Value::Object(map)) => Value::Object(
                fields
                    .iter()
                    .filter_map(|(name, shape)| {
                        map.get(name).map(|v| (name.clone(), shape.normalize(v)))
                    })
                    .collect(),
            ),
            (_, v) => v.clone(),
        }
    }

    /// The value [`Self::normalize`] was given, as far as a row read back as JSON tells it:
    /// JSON text parsed again, nulls dropped from objects (timestamps stay as read).
    pub fn restore(&self, value: &Value) -> Value {
        match (self, value) {
            (Self::Json, Value::String(text)) => {
                serde_json::from_str(text).unwrap_or_else(|_| value.clone())
            }
            (Self::List(item), Value::Array(values)) => {
                Value::Array(values.iter().map(|v| item.restore(v)).collect())
            }
            (Self::Struct(fields), Value::Object(map)) => Value::Object(
                map.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(name, v)| {
                        let shape = fields.iter().find(|(n, _)| n == name).map(|(_, s)| s);
                        (
                            name.clone(),
                            shape.map_or_else(|| v.clone(), |s| s.restore(v)),
                        )
                    })
                    .collect(),
            ),
            (_, v) => v.clone(),
        }
    }

    /// Whether `value` has parts the schema does not name, at any depth: whether
    /// [`Self::extra`] is `Some`, without building it.
    pub fn has_extra(&self, value: &Value) -> bool {
        match (self, value) {
            (Self::Struct(fields), Value::Object(map)) => map.iter().any(|(key, v)| {
                fields
                    .iter()
                    .find(|(name, _)| name == key)
                    .is_none_or(|(_, shape)| shape.has_extra(v))
            }),
            (Self::List(item), Value::Array(values)) => values.iter().any(|v| item.has_extra(v)),
            _ => false,
        }
    }

    /// The parts of `value` the schema does not name, at any depth, in the value's own
    /// structure (array elements without extras are `null`); `None` when there are none.
    pub fn extra(&self, value: &Value) -> Option<Value> {
        match (self, value) {
            (Self::Struct(fields), Value::Object(map)) => {
                let mut out = Map::new();
                for (key, v) in map {
                    match fields.iter().find(|(name, _)| name == key) {
                        None => {
                            out.insert(key.clone(), v.clone());
                        }
                        Some((_, shape)) => {
                            if let Some(inner) = shape.extra(v) {
                                out.insert(key.clone(), inner);
                            }
                        }
                    }
                }
                (!out.is_empty()).then_some(Value::Object(out))
            }
            (Self::List(item), Value::Array(values)) => {
                let extras: Vec<Option<Value>> = values.iter().map(|v| item.extra(v)).collect();
                extras.iter().any(Option::is_some).then(|| {
                    Value::Array(
                        extras
                            .into_iter()
                            .map(|e| e.unwrap_or(Value::Null))
                            .collect(),
                    )
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_schema() -> Value {
        json!({"type": "object", "properties": {
            "order_id": {"type": "string"},
            "amount": {"type": "number"},
            "currency": {"enum": ["EUR", "USD"]},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "quantity": {"type": "integer"}}}},
            "placed_at": {"type": "string", "format": "date-time"},
            "note": {"type": ["string", "null"]},
            "anything": {},
            "mixed": {"type": ["string", "integer"]}
        }})
    }

    #[test]
    fn schema_types_map_to_arrow_types() {
        let Shape::Struct(fields) = Shape::from_schema(&order_schema()) else {
            panic!("an object with properties is a struct");
        };
        let types: Vec<(String, DataType)> = fields
            .iter()
            .map(|(n, s)| (n.clone(), s.data_type()))
            .collect();
        let get = |name: &str| {
            types
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.clone())
        };
        assert_eq!(get("order_id"), Some(DataType::Utf8));
        assert_eq!(get("amount"), Some(DataType::Float64));
        assert_eq!(get("currency"), Some(DataType::Utf8));
        assert_eq!(get("placed_at"), Some(timestamp_type()));
        assert_eq!(get("note"), Some(DataType::Utf8));
        assert_eq!(get("anything"), Some(DataType::Utf8));
        assert_eq!(get("mixed"), Some(DataType::Utf8));
        let Some(DataType::List(item)) = get("items") else {
            panic!("items is a list");
        };
        let DataType::Struct(inner) = item.data_type() else {
            panic!("of structs");
        };
        assert_eq!(inner.len(), 2);
        let quantity = inner.find("quantity").map(|(_, f)| f.data_type().clone());
        assert_eq!(quantity, Some(DataType::Int64));
    }

    #[test]
    fn normalize_keeps_untyped_as_json_text_and_extra_collects_unnamed() {
        let shape = Shape::from_schema(&order_schema());
        let data = json!({"order_id": "o-1", "amount": 5, "anything": {"a": [1]},
            "items": [{"sku": "s", "quantity": 2.0, "colour": "red"}, {"sku": "t", "quantity": 1}],
            "gift": true});
        let row = shape.normalize(&data);
        assert_eq!(row["anything"], json!("{\"a\":[1]}"));
        assert_eq!(row["items"][0]["quantity"], json!(2));
        assert!(row["items"][0].get("colour").is_none());
        assert!(row.get("gift").is_none());
        assert_eq!(
            shape.extra(&data),
            Some(json!({"gift": true, "items": [{"colour": "red"}, null]}))
        );
        assert_eq!(shape.extra(&json!({"order_id": "o"})), None);
    }
}
