//! Value kinds for the proof, and what admission guarantees about the input's.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

/// The types a value may have, as a set (empty: the value is never defined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind(u16);

impl Kind {
    pub(crate) const NONE: Self = Self(0);
    pub(crate) const NULL: Self = Self(1);
    pub(crate) const BOOL: Self = Self(1 << 1);
    /// An integer.
    pub(crate) const INT: Self = Self(1 << 2);
    /// A number with a fraction.
    const FLOAT: Self = Self(1 << 3);
    /// A string that may be anything.
    pub(crate) const STR: Self = Self(1 << 4);
    /// A string that is an RFC 3339 time within the range of nanoseconds since the epoch.
    pub(crate) const TS: Self = Self(1 << 5);
    pub(crate) const ARR: Self = Self(1 << 6);
    pub(crate) const SET: Self = Self(1 << 7);
    pub(crate) const OBJ: Self = Self(1 << 8);
    pub(crate) const ANY: Self = Self((1 << 9) - 1);
    pub(crate) const NUM: Self = Self(Self::INT.0 | Self::FLOAT.0);
    pub(crate) const STRING: Self = Self(Self::STR.0 | Self::TS.0);
    pub(crate) const COLLECTION: Self = Self(Self::ARR.0 | Self::SET.0 | Self::OBJ.0);

    /// The types of either.
    pub(crate) const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// These types without those of `other`.
    pub(crate) const fn minus(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether every type of `self` is one of `other`'s.
    pub(crate) const fn within(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    /// Whether two values are sure to be of one Rego type (or one is never defined), so the
    /// compiled engine orders them without an error.
    pub(crate) fn one_type(a: Self, b: Self) -> bool {
        let both = a.union(b);
        [
            Self::NULL,
            Self::BOOL,
            Self::NUM,
            Self::STRING,
            Self::ARR,
            Self::SET,
            Self::OBJ,
        ]
        .into_iter()
        .any(|class| both.within(class))
    }

    /// The kind of a JSON value.
    pub(crate) fn of(value: &Value) -> Self {
        match value {
            Value::Null => Self::NULL,
            Value::Bool(_) => Self::BOOL,
            Value::Number(n) if n.is_i64() || n.is_u64() => Self::INT,
            Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => Self::INT,
            Value::Number(_) => Self::FLOAT,
            Value::String(s) if is_timestamp(s) => Self::TS,
            Value::String(_) => Self::STR,
            Value::Array(_) => Self::ARR,
            Value::Object(_) => Self::OBJ,
        }
    }
}

/// The kinds in words, for a reason (`a string or a number`).
pub(crate) fn describe(kind: Kind) -> String {
    if kind == Kind::ANY {
        return "of any type".to_owned();
    }
    if kind == Kind::NONE {
        return "undefined".to_owned();
    }
    let mut names = Vec::new();
    let mut add = |k: Kind, name: &'static str| {
        if !k.within(Kind::NONE) && k.within(kind) {
            names.push(name);
        }
    };
    add(Kind::NULL, "null");
    add(Kind::BOOL, "a boolean");
    if Kind::NUM.within(kind) {
        add(Kind::NUM, "a number");
    } else {
        add(Kind::INT, "an integer");
        add(Kind::FLOAT, "a number with a fraction");
    }
    if Kind::STR.within(kind) {
        add(Kind::STR, "a string");
    } else {
        add(Kind::TS, "an RFC 3339 time");
    }
    add(Kind::ARR, "an array");
    add(Kind::SET, "a set");
    add(Kind::OBJ, "an object");
    names.join(" or ")
}

/// Whether `time.parse_rfc3339_ns(s)` gives a value (regorus parses with the same chrono call).
pub(crate) fn is_timestamp(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .is_some()
}

/// The kind of the part of a known document `value` at `parts` (`None`: any member).
pub(crate) fn at(value: &Value, parts: &[Option<String>]) -> Kind {
    let Some((first, rest)) = parts.split_first() else {
        return Kind::of(value);
    };
    match (first, value) {
        (Some(key), Value::Object(map)) => map.get(key).map_or(Kind::NONE, |v| at(v, rest)),
        (None, Value::Object(map)) => map.values().fold(Kind::NONE, |k, v| k.union(at(v, rest))),
        (None, Value::Array(items)) => items.iter().fold(Kind::NONE, |k, v| k.union(at(v, rest))),
        // A string key into an array or a scalar, or any index into a scalar, is undefined.
        _ => Kind::NONE,
    }
}

/// What admission guarantees about the policy input document before a decision.
///
/// Always: `input.event` has the CloudEvents attributes as strings, its `time` (when present)
/// is an RFC 3339 timestamp in the range of nanoseconds since the epoch (years 1677 to 2262,
/// checked when the event is decoded), `input.context` and `input.publisher` are written by
/// reflex. With [`InputFacts::validated`], also the JSON Schema of each event type's `data`.
#[derive(Debug, Clone, Default)]
pub struct InputFacts {
    /// The JSON Schema of each admitted event type's data, when records' data is checked
    /// against it; `None`: the data's shape is not known.
    schemas: Option<Arc<BTreeMap<String, Value>>>,
    /// Whether wire-format records' data is checked against a registry's schema instead (whose
    /// shape the files do not tell).
    registry: bool,
}

impl InputFacts {
    /// The envelope alone: `input.event.data` may be anything.
    pub fn envelope() -> Self {
        Self::default()
    }

    /// The envelope and the data schemas of every event type admission accepts (each record's
    /// data is validated against its type's schema, and a type without a schema is rejected).
    pub fn validated<'s>(schemas: impl IntoIterator<Item = (&'s str, &'s Value)>) -> Self {
        let schemas = schemas
            .into_iter()
            .map(|(ty, schema)| (ty.to_owned(), schema.clone()))
            .collect();
        Self {
            schemas: Some(Arc::new(schemas)),
            registry: false,
        }
    }

    /// These facts, for a deployment with a schema registry: wire-format records' data is
    /// validated against the schema the registry holds for its id, so the file schemas hold for
    /// the other records only ([`InputFacts::without_data`] for wire-format ones).
    pub fn with_registry(mut self) -> Self {
        self.registry = true;
        self
    }

    /// Whether some records' data is validated against a registry's schema.
    pub(crate) fn registry(&self) -> bool {
        self.registry && self.schemas.is_some()
    }

    /// The envelope alone (what holds for a wire-format record with a registry).
    pub(crate) fn without_data(&self) -> Self {
        Self::envelope()
    }

    /// The kind of `input.<parts>`; `ty`: the event's type, when the rule body requires one.
    pub(crate) fn input(&self, parts: &[Option<String>], ty: Option<&str>) -> Kind {
        let name = |i: usize| parts.get(i).and_then(|p| p.as_deref());
        let leaf = |kind: Kind| if parts.len() == 2 { kind } else { Kind::ANY };
        match (parts.len(), name(0), name(1)) {
            (0, ..) => Kind::OBJ,
            (1, Some("event" | "context" | "publisher" | "enrichment"), _) => Kind::OBJ,
            (_, Some("event"), Some("specversion" | "id" | "source" | "type" | "subject")) => {
                leaf(Kind::STR)
            }
            (_, Some("event"), Some("datacontenttype" | "dataschema")) => leaf(Kind::STR),
            (_, Some("event"), Some("time")) => leaf(Kind::TS),
            (_, Some("event"), Some("data")) => self.data(&parts[2..], ty),
            (_, Some("context"), Some("now")) => leaf(Kind::TS),
            (_, Some("context"), Some("topic" | "mode")) => leaf(Kind::STR),
            (_, Some("context"), Some("partition" | "offset")) => leaf(Kind::INT),
            (_, Some("context"), Some("kafka_timestamp_ms")) => leaf(Kind::INT.union(Kind::NULL)),
            (_, Some("publisher"), Some("verified")) => leaf(Kind::BOOL),
            (_, Some("publisher"), Some("key_id")) => leaf(Kind::STR.union(Kind::NULL)),
            (_, Some("publisher"), Some("status" | "claimed_key_id")) => leaf(Kind::STR),
            _ => Kind::ANY,
        }
    }

    /// The kind of `input.event.data.<parts>`.
    fn data(&self, parts: &[Option<String>], ty: Option<&str>) -> Kind {
        let Some(schemas) = &self.schemas else {
            return Kind::ANY;
        };
        match ty {
            // An event of a type without a schema is never admitted.
            Some(ty) => schemas.get(ty).map_or(Kind::NONE, |s| schema_at(s, parts)),
            None => schemas
                .values()
                .fold(Kind::NONE, |k, s| k.union(schema_at(s, parts))),
        }
    }
}

/// The kinds a JSON Schema allows at `parts` of a valid instance (any kind when unsure).
fn schema_at(schema: &Value, parts: &[Option<String>]) -> Kind {
    let Some(schema) = schema.as_object() else {
        // `true`, or not a schema: anything.
        return if schema == &Value::Bool(false) {
            Kind::NONE
        } else {
            Kind::ANY
        };
    };
    if schema.contains_key("$ref") {
        return Kind::ANY; // draft-07 ignores a $ref's siblings
    }
    let Some((first, rest)) = parts.split_first() else {
        return schema_kind(schema);
    };
    let Some(key) = first else {
        return Kind::ANY;
    };
    if let Some(property) = schema.get("properties").and_then(|p| p.get(key)) {
        return schema_at(property, rest);
    }
    if schema.contains_key("patternProperties") {
        return Kind::ANY;
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) => Kind::NONE,
        Some(additional @ Value::Object(_)) => schema_at(additional, rest),
        _ => Kind::ANY,
    }
}

/// The kinds a schema node allows for the value itself.
fn schema_kind(schema: &serde_json::Map<String, Value>) -> Kind {
    let of_type = |name: &str| match name {
        "null" => Kind::NULL,
        "boolean" => Kind::BOOL,
        "integer" => Kind::INT,
        "number" => Kind::NUM,
        "string" => Kind::STRING,
        "array" => Kind::ARR,
        "object" => Kind::OBJ,
        _ => Kind::ANY,
    };
    match schema.get("type") {
        Some(Value::String(name)) => of_type(name),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().map_or(Kind::ANY, of_type))
            .fold(Kind::NONE, Kind::union),
        _ => match (schema.get("enum"), schema.get("const")) {
            (Some(Value::Array(values)), _) => {
                values.iter().map(Kind::of).fold(Kind::NONE, Kind::union)
            }
            (_, Some(value)) => Kind::of(value),
            _ => Kind::ANY,
        },
    }
}
