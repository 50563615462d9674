//! Avro schemas: parsing `.avsc` files, decoding datums to JSON, validating JSON against them.

use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde_json::Value;

/// Largest allocation one Avro datum may ask for (strings, bytes, arrays, maps). A declared
/// length above it is an error instead of an allocation.
pub const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Why an Avro datum could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroDecodeError {
    /// The bytes do not decode with the writer schema (truncated, bad lengths, bad union index…).
    #[error("Avro data does not decode with schema id {id}: {message}")]
    Invalid {
        /// The schema id.
        id: u32,
        /// apache-avro's message.
        message: String,
    },
    /// Bytes remain after the datum.
    #[error("Avro data for schema id {id} has {count} trailing bytes after the datum")]
    Trailing {
        /// The schema id.
        id: u32,
        /// How many bytes remain.
        count: usize,
    },
    /// The datum has no JSON form (e.g. a NaN double).
    #[error("Avro datum for schema id {id} has no JSON form: {message}")]
    NotJson {
        /// The schema id.
        id: u32,
        /// What failed.
        message: String,
    },
}

/// Parses an Avro schema, capping allocations the first time any schema is parsed.
pub fn parse(text: &str) -> Result<Schema, String> {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    Schema::parse_str(text).map_err(|e| e.to_string())
}

/// The full name of a record schema (`namespace.name`), used as the event type of plain records.
pub fn record_name(schema: &Schema) -> Option<String> {
    match schema {
        Schema::Record(record) => Some(record.name.fullname(None)),
        _ => None,
    }
}

/// Decodes one datum written with `schema` into JSON; every byte must be used.
pub fn decode(schema: &Schema, id: u32, payload: &[u8]) -> Result<Value, AvroDecodeError> {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    // apache-avro reads a string, or a union index, cut off by the end of the input as null
    // instead of failing; a reader that notes any read past the end tells truncation apart.
    let mut reader = EofTracking {
        rest: payload,
        hit_end: false,
    };
    let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(&mut reader))
        .map_err(|e| AvroDecodeError::Invalid {
            id,
            message: e.to_string(),
        })?;
    if reader.hit_end {
        return Err(AvroDecodeError::Invalid {
            id,
            message: "datum is truncated".into(),
        });
    }
    if !reader.rest.is_empty() {
        return Err(AvroDecodeError::Trailing {
            id,
            count: reader.rest.len(),
        });
    }
    to_json(value).map_err(|message| AvroDecodeError::NotJson { id, message })
}

/// A byte-slice reader that remembers whether anyone asked for more than it had.
struct EofTracking<'a> {
    rest: &'a [u8],
    hit_end: bool,
}

impl std::io::Read for EofTracking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() > self.rest.len() {
            self.hit_end = true;
        }
        self.rest.read(buf)
    }
}

/// Encodes one datum.
pub fn encode(schema: &Schema, value: AvroValue) -> apache_avro::AvroResult<Vec<u8>> {
    GenericDatumWriter::builder(schema)
        .build()?
        .write_value_to_vec(value)
}

/// Converts an Avro value to JSON; unions collapse to their branch.
fn to_json(value: AvroValue) -> Result<Value, String> {
    let value = match value {
        AvroValue::Union(_, inner) => *inner,
        other => other,
    };
    match value {
        AvroValue::Record(fields) => {
            let mut map = serde_json::Map::with_capacity(fields.len());
            for (name, v) in fields {
                map.insert(name, to_json(v)?);
            }
            Ok(Value::Object(map))
        }
        AvroValue::Array(items) => items
            .into_iter()
            .map(to_json)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        AvroValue::Map(entries) => {
            let mut map = serde_json::Map::with_capacity(entries.len());
            for (name, v) in entries {
                map.insert(name, to_json(v)?);
            }
            Ok(Value::Object(map))
        }
        other => Value::try_from(other).map_err(|e| e.to_string()),
    }
}

/// The JSON Schema equivalent of an Avro schema, as the JSON form of its datums looks (see
/// [`decode`]): records are objects, unions with null are nullable, enums and strings are
/// strings, `int`/`long` (and the time logical types) integers, `float`/`double` numbers,
/// arrays arrays, maps objects of values.
pub fn to_json_schema(schema: &Schema) -> Value {
    use serde_json::json;
    match schema {
        Schema::Record(record) => {
            let properties: serde_json::Map<String, Value> = record
                .fields
                .iter()
                .map(|f| (f.name.clone(), to_json_schema(&f.schema)))
                .collect();
            let required: Vec<&str> = record
                .fields
                .iter()
                .filter(|f| !matches!(&f.schema, Schema::Union(u) if u.is_nullable()))
                .map(|f| f.name.as_str())
                .collect();
            json!({"type": "object", "title": record.name.fullname(None), "properties": properties, "required": required})
        }
        Schema::Union(union) => {
            let branches: Vec<&Schema> = union
                .variants()
                .iter()
                .filter(|v| **v != Schema::Null)
                .collect();
            match branches.as_slice() {
                [one] => {
                    let mut inner = to_json_schema(one);
                    if let Some(ty) = inner.get("type").and_then(Value::as_str).map(str::to_owned) {
                        inner["type"] = json!([ty, "null"]);
                    }
                    inner
                }
                _ => json!({}),
            }
        }
        Schema::Array(array) => json!({"type": "array", "items": to_json_schema(&array.items)}),
        Schema::Map(map) => {
            json!({"type": "object", "additionalProperties": to_json_schema(&map.types)})
        }
        Schema::Boolean => json!({"type": "boolean"}),
        Schema::Int | Schema::Long | Schema::Date | Schema::TimeMillis | Schema::TimeMicros => {
            json!({"type": "integer"})
        }
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros => {
            json!({"type": "integer"})
        }
        Schema::Float | Schema::Double => json!({"type": "number"}),
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) => json!({"type": "string"}),
        _ => json!({}),
    }
}

/// Checks JSON `data` against an Avro schema (for structured events of an Avro-typed event type).
pub fn validate_json(schema: &Schema, data: &Value) -> Result<(), String> {
    let avro = AvroValue::try_from(data.clone()).map_err(|e| e.to_string())?;
    match avro.resolve(schema) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{"type":"record","name":"placed","namespace":"order","fields":[
        {"name":"order_id","type":"string"},{"name":"amount","type":"double"},
        {"name":"note","type":["null","string"],"default":null}]}"#;

    fn encode(schema: &Schema, value: AvroValue) -> Vec<u8> {
        super::encode(schema, value).expect("encodes")
    }

    fn order(note: Option<&str>) -> AvroValue {
        AvroValue::Record(vec![
            ("order_id".into(), AvroValue::String("ord-1".into())),
            ("amount".into(), AvroValue::Double(12.5)),
            (
                "note".into(),
                match note {
                    Some(n) => AvroValue::Union(1, Box::new(AvroValue::String(n.into()))),
                    None => AvroValue::Union(0, Box::new(AvroValue::Null)),
                },
            ),
        ])
    }

    #[test]
    fn decodes_to_json_and_names_the_record() {
        let schema = parse(ORDER).expect("parses");
        assert_eq!(record_name(&schema).as_deref(), Some("order.placed"));
        let bytes = encode(&schema, order(Some("gift")));
        let json = decode(&schema, 3, &bytes).expect("decodes");
        assert_eq!(
            json,
            serde_json::json!({"order_id": "ord-1", "amount": 12.5, "note": "gift"})
        );
        let json = decode(&schema, 3, &encode(&schema, order(None))).expect("decodes");
        assert_eq!(json["note"], Value::Null);
    }

    #[test]
    fn truncated_trailing_and_absurd_lengths_are_errors() {
        let schema = parse(ORDER).expect("parses");
        let bytes = encode(&schema, order(Some("gift")));
        let truncated = decode(&schema, 3, &bytes[..bytes.len() - 2]);
        assert!(
            matches!(truncated, Err(AvroDecodeError::Invalid { .. })),
            "{truncated:?}"
        );
        // Cut just before the last union index: apache-avro alone would read it as null.
        let cut = decode(&schema, 3, &bytes[..bytes.len() - 6]);
        assert!(
            matches!(cut, Err(AvroDecodeError::Invalid { .. })),
            "{cut:?}"
        );
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"xx");
        assert_eq!(
            decode(&schema, 3, &trailing),
            Err(AvroDecodeError::Trailing { id: 3, count: 2 })
        );
        // A string declaring a length of about 2^62 bytes: refused, not allocated.
        let absurd = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            decode(&schema, 3, &absurd),
            Err(AvroDecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn validates_json_against_avro() {
        let schema = parse(ORDER).expect("parses");
        assert!(validate_json(
            &schema,
            &serde_json::json!({"order_id": "o", "amount": 1.0, "note": null})
        )
        .is_ok());
        assert!(
            validate_json(&schema, &serde_json::json!({"order_id": 5, "amount": 1.0})).is_err()
        );
    }
}
