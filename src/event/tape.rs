//! JSON read into one flat vector (a "tape"), its strings borrowed from the input where they
//! have no escapes: an event's `data` read without a `serde_json::Value` tree, which allocates
//! for every string, key, object and array, and frees them all again with the event.
//!
//! The tape is parsed by `serde_json` itself, so it accepts and rejects exactly the documents
//! `serde_json::from_str::<Value>` does. It implements jsonschema's instance representation
//! ([`TapeJson`]), so a type's schema validates it in place.
//!
//! Two kinds of document read differently as a `Value`, and are flagged so that callers take
//! the `Value` path for them ([`Tape::reads_as_value`]): an object with a key twice (a `Value`
//! keeps the last), and `serde_json`'s private raw-value key, which a `Value` reads as JSON text.

use std::borrow::Cow;
use std::fmt;

use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

/// The key `serde_json` reads as a raw value inside a `Value` (its `raw_value` feature).
const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

/// One value of the tape. A container is followed by its contents: an array by its elements,
/// an object by a [`Entry::Key`] and its value per member; `end` is the index after them.
#[derive(Debug, Clone, PartialEq)]
enum Entry<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array { len: u32, end: u32 },
    Object { len: u32, end: u32 },
    Key(Cow<'a, str>),
}

/// A JSON document read onto a tape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tape<'a> {
    entries: Vec<Entry<'a>>,
    value_only: bool,
}

impl<'a> Tape<'a> {
    /// Parses `text`, as `serde_json::from_str` would.
    pub fn parse(text: &'a str) -> serde_json::Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let tape = Self::deserialize(&mut de)?;
        de.end()?;
        Ok(tape)
    }

    /// Whether the document reads differently as a `serde_json::Value` (an object with a key
    /// twice, or `serde_json`'s raw-value key): then only the `Value` is the document.
    pub fn reads_as_value(&self) -> bool {
        self.value_only
    }

    /// The document's root.
    pub fn root(&self) -> TapeNode<'_> {
        TapeNode::at(&self.entries, 0)
    }

    /// The document as a `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        self.root().to_json()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Tape<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut builder = Builder {
            // An event's data is a few dozen values: one allocation, seldom grown.
            entries: Vec::with_capacity(64),
            value_only: false,
        };
        ValueSeed(&mut builder).deserialize(deserializer)?;
        Ok(Tape {
            entries: builder.entries,
            value_only: builder.value_only,
        })
    }
}

struct Builder<'a> {
    entries: Vec<Entry<'a>>,
    value_only: bool,
}

impl Builder<'_> {
    fn index(&self) -> u32 {
        // A document of four billion values is far beyond any record size limit.
        u32::try_from(self.entries.len()).unwrap_or(u32::MAX)
    }

    fn key(&self, at: u32) -> &str {
        match &self.entries[at as usize] {
            Entry::Key(key) => key,
            _ => "",
        }
    }

    /// The keys of the object at `at`, whose members are the last entries (read just now).
    fn member_keys(&self, at: u32) -> impl Iterator<Item = &str> {
        let end = self.index();
        let mut i = at + 1;
        std::iter::from_fn(move || {
            if i >= end {
                return None;
            }
            let key = self.key(i);
            i = after(&self.entries, i + 1);
            Some(key)
        })
    }

    /// Whether a key of the object at `at`, with `len` members read just now, is written
    /// twice.
    fn has_duplicate_key(&self, at: u32, len: u32) -> bool {
        if len <= 32 {
            return self
                .member_keys(at)
                .enumerate()
                .any(|(i, a)| self.member_keys(at).skip(i + 1).any(|b| b == a));
        }
        let mut sorted: Vec<&str> = self.member_keys(at).collect();
        sorted.sort_unstable();
        sorted.windows(2).any(|pair| pair[0] == pair[1])
    }
}

struct ValueSeed<'b, 'a>(&'b mut Builder<'a>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for ValueSeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for ValueSeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.0.entries.push(Entry::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.entries.push(Entry::Number(v.into()));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.entries.push(Entry::Number(v.into()));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // As `Value` reads it: a float without a JSON form is null.
        let entry = Number::from_f64(v).map_or(Entry::Null, Entry::Number);
        self.0.entries.push(entry);
        Ok(())
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.0.entries.push(Entry::String(Cow::Borrowed(v)));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.0.entries.push(Entry::String(Cow::Owned(v.to_owned())));
        Ok(())
    }

    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.0.entries.push(Entry::String(Cow::Owned(v)));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.entries.push(Entry::Null);
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.0.entries.push(Entry::Null);
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let builder = self.0;
        let at = builder.entries.len();
        builder.entries.push(Entry::Array { len: 0, end: 0 });
        let mut len = 0u32;
        while seq.next_element_seed(ValueSeed(builder))?.is_some() {
            len = len.saturating_add(1);
        }
        let end = builder.index();
        builder.entries[at] = Entry::Array { len, end };
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let builder = self.0;
        let at = builder.entries.len();
        builder.entries.push(Entry::Object { len: 0, end: 0 });
        let mut len = 0u32;
        // A bit per key, chosen by its length and ends: only an object in which two keys share
        // one can have a key twice, and only such an object's keys are compared.
        let (mut seen, mut shared) = (0u64, false);
        while map.next_key_seed(KeySeed(builder))?.is_some() {
            let bit = builder.entries.last().map_or(0, key_bit);
            shared |= seen & bit != 0;
            seen |= bit;
            map.next_value_seed(ValueSeed(builder))?;
            len = len.saturating_add(1);
        }
        if shared && builder.has_duplicate_key(u32::try_from(at).unwrap_or(u32::MAX), len) {
            builder.value_only = true;
        }
        let end = builder.index();
        builder.entries[at] = Entry::Object { len, end };
        Ok(())
    }
}

/// One of 64 bits for a key entry, from its length and its first and last bytes (equal keys
/// always get the same bit).
fn key_bit(entry: &Entry<'_>) -> u64 {
    let Entry::Key(key) = entry else {
        return 0;
    };
    let bytes = key.as_bytes();
    let (first, last) = (bytes.first(), bytes.last());
    let mix = (bytes.len() as u64).wrapping_mul(0x9E37_79B9)
        ^ u64::from(first.copied().unwrap_or(0)).wrapping_mul(0x85EB_CA6B)
        ^ u64::from(last.copied().unwrap_or(0)).wrapping_mul(0xC2B2_AE35);
    1 << ((mix ^ (mix >> 17)) & 63)
}

struct KeySeed<'b, 'a>(&'b mut Builder<'a>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for KeySeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for KeySeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.push(Cow::Borrowed(v));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.push(Cow::Owned(v.to_owned()));
        Ok(())
    }

    fn visit_string<E>(self, v: String) -> Result<(), E> {
        self.push(Cow::Owned(v));
        Ok(())
    }
}

impl<'a> KeySeed<'_, 'a> {
    fn push(self, key: Cow<'a, str>) {
        if key == RAW_VALUE_KEY {
            self.0.value_only = true;
        }
        self.0.entries.push(Entry::Key(key));
    }
}

/// A value on a tape, or a string of its own (a property name being validated).
#[derive(Debug, Clone, Copy)]
pub struct TapeNode<'a> {
    entries: &'a [Entry<'a>],
    at: u32,
    /// A string outside the tape.
    name: Option<&'a str>,
}

/// An object on a tape.
#[derive(Debug, Clone, Copy)]
pub struct TapeObject<'a> {
    entries: &'a [Entry<'a>],
    at: u32,
    len: u32,
    end: u32,
}

/// An array on a tape.
#[derive(Debug, Clone, Copy)]
pub struct TapeArray<'a> {
    entries: &'a [Entry<'a>],
    at: u32,
    len: u32,
    end: u32,
}

/// The index after the value at `at`.
fn after(entries: &[Entry<'_>], at: u32) -> u32 {
    match entries.get(at as usize) {
        Some(Entry::Array { end, .. } | Entry::Object { end, .. }) => *end,
        _ => at + 1,
    }
}

impl<'a> TapeNode<'a> {
    fn at(entries: &'a [Entry<'a>], at: u32) -> Self {
        Self {
            entries,
            at,
            name: None,
        }
    }

    fn entry(&self) -> Option<&'a Entry<'a>> {
        match self.name {
            Some(_) => None,
            None => self.entries.get(self.at as usize),
        }
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<TapeNode<'a>> {
        self.object().and_then(|o| o.find(key))
    }

    /// The element `index` of an array.
    pub fn index(&self, index: usize) -> Option<TapeNode<'a>> {
        self.array().and_then(|a| a.elements_iter().nth(index))
    }

    /// The string, if it is one.
    pub fn str(&self) -> Option<&'a str> {
        match (self.name, self.entry()) {
            (Some(name), _) => Some(name),
            (None, Some(Entry::String(s))) => Some(s),
            _ => None,
        }
    }

    /// The number, if it is one.
    pub fn number(&self) -> Option<&'a Number> {
        match self.entry() {
            Some(Entry::Number(n)) => Some(n),
            _ => None,
        }
    }

    /// Whether it is `null`.
    pub fn null(&self) -> bool {
        matches!(self.entry(), Some(Entry::Null))
    }

    fn object(&self) -> Option<TapeObject<'a>> {
        match self.entry() {
            Some(&Entry::Object { len, end }) => Some(TapeObject {
                entries: self.entries,
                at: self.at,
                len,
                end,
            }),
            _ => None,
        }
    }

    fn array(&self) -> Option<TapeArray<'a>> {
        match self.entry() {
            Some(&Entry::Array { len, end }) => Some(TapeArray {
                entries: self.entries,
                at: self.at,
                len,
                end,
            }),
            _ => None,
        }
    }

    /// The value as a `serde_json::Value`.
    pub fn to_json(&self) -> Value {
        if let Some(object) = self.object() {
            let mut map = Map::new();
            for (key, value) in object.members_iter() {
                map.insert(key.to_owned(), value.to_json());
            }
            return Value::Object(map);
        }
        if let Some(array) = self.array() {
            return Value::Array(array.elements_iter().map(|e| e.to_json()).collect());
        }
        match (self.name, self.entry()) {
            (Some(name), _) => Value::String(name.to_owned()),
            (None, Some(Entry::Bool(b))) => Value::Bool(*b),
            (None, Some(Entry::Number(n))) => Value::Number(n.clone()),
            (None, Some(Entry::String(s))) => Value::String(s.to_string()),
            _ => Value::Null,
        }
    }
}

impl<'a> TapeObject<'a> {
    fn find(&self, key: &str) -> Option<TapeNode<'a>> {
        self.members_iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    }

    fn members_iter(&self) -> Members<'a> {
        Members {
            entries: self.entries,
            next: self.at + 1,
            end: self.end,
        }
    }
}

impl<'a> TapeArray<'a> {
    fn elements_iter(&self) -> Elements<'a> {
        Elements {
            entries: self.entries,
            next: self.at + 1,
            end: self.end,
        }
    }
}

/// An object's members in document order.
#[derive(Debug, Clone)]
pub struct Members<'a> {
    entries: &'a [Entry<'a>],
    next: u32,
    end: u32,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let Some(Entry::Key(key)) = self.entries.get(self.next as usize) else {
            self.next = self.end;
            return None;
        };
        let at = self.next + 1;
        self.next = after(self.entries, at);
        Some((key, TapeNode::at(self.entries, at)))
    }
}

/// An array's elements in order.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    entries: &'a [Entry<'a>],
    next: u32,
    end: u32,
}

impl<'a> Iterator for Elements<'a> {
    type Item = TapeNode<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let at = self.next;
        self.next = after(self.entries, at);
        Some(TapeNode::at(self.entries, at))
    }
}

/// jsonschema's instance representation for a [`Tape`].
#[derive(Debug)]
pub struct TapeJson;

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> T) -> T {
        f(TapeNode {
            entries: &[],
            at: 0,
            name: Some(string),
        })
    }
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = TapeObject<'a>;
    type Array = TapeArray<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<TapeObject<'a>> {
        self.object()
    }

    fn as_array(&self) -> Option<TapeArray<'a>> {
        self.array()
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        self.str().map(Cow::Borrowed)
    }

    fn as_number(&self) -> Option<&'a Number> {
        self.number()
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.entry() {
            Some(Entry::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        self.null()
    }

    fn json_type(&self) -> JsonType {
        match (self.name, self.entry()) {
            (Some(_), _) | (None, Some(Entry::String(_))) => JsonType::String,
            (None, Some(Entry::Bool(_))) => JsonType::Boolean,
            (None, Some(Entry::Number(_))) => JsonType::Number,
            (None, Some(Entry::Array { .. })) => JsonType::Array,
            (None, Some(Entry::Object { .. })) => JsonType::Object,
            _ => JsonType::Null,
        }
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let string = self.str()?;
        // A code point takes one to four bytes, so the count lies in `ceil(bytes / 4)..=bytes`.
        let bytes = string.len() as u64;
        let fewest = bytes.div_ceil(4);
        if bytes < min || fewest > max {
            return Some(false);
        }
        if min <= fewest && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(string.chars().count() as u64)))
    }

    fn equals_value(&self, expected: &Value) -> bool {
        // `enum` and `const` of scalars, per event: compared without building a `Value`.
        match (self.str(), self.number(), expected) {
            (Some(s), _, Value::String(want)) => s == want,
            (Some(_), _, _) => false,
            (_, Some(n), _) => jsonschema::json::cmp::equal(&Value::Number(n.clone()), expected),
            _ => jsonschema::json::cmp::equal(&self.to_json(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(self.to_json())
    }

    fn identity(&self) -> Option<NodeIdentity> {
        match self.name {
            Some(_) => None,
            None => Some(NodeIdentity::tagged(
                self.entries.as_ptr() as usize,
                self.at,
            )),
        }
    }
}

impl<'a> Object<'a, TapeJson> for TapeObject<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.len as usize
    }

    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        self.find(key)
    }

    fn members(&self) -> Members<'a> {
        self.members_iter()
    }
}

impl<'a> Array<'a, TapeJson> for TapeArray<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.len as usize
    }

    fn elements(&self) -> Elements<'a> {
        self.elements_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_as_value_reads() {
        for text in [
            r#"{"a": 1, "b": [1, 2.5, -3, "x\"y", null, true, {"c": {}}], "d": {"e": []}}"#,
            r#"[]"#,
            r#""só""#,
            "18446744073709551615",
            "-9223372036854775808",
            r#"{"\u00e9t\u00e9": "\ud83d\ude00"}"#,
        ] {
            let tape = Tape::parse(text);
            let value = serde_json::from_str::<Value>(text);
            match (tape, value) {
                (Ok(tape), Ok(value)) => {
                    assert!(!tape.reads_as_value(), "{text}");
                    assert_eq!(tape.to_value(), value, "{text}");
                }
                (tape, value) => panic!("{text}: tape {tape:?} against value {value:?}"),
            }
        }
    }

    #[test]
    fn rejects_what_value_rejects() {
        for text in [
            "",
            "{",
            "1e400",
            r#"{"a" 1}"#,
            "[1,]",
            "01",
            "\"\\x\"",
            "{} {}",
            "nul",
        ] {
            assert!(Tape::parse(text).is_err(), "{text}");
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn flags_what_a_value_reads_differently() {
        let twice = Tape::parse(r#"{"x": {"a": 1, "b": 2, "a": 3}}"#).expect("json");
        assert!(twice.reads_as_value());
        let raw = Tape::parse(r#"{"$serde_json::private::RawValue": "[1]"}"#).expect("json");
        assert!(raw.reads_as_value());
        let nested_same = Tape::parse(r#"{"a": {"a": {"a": 1}}, "b": {"a": 2}}"#).expect("json");
        assert!(!nested_same.reads_as_value());
        // Keys are found past members that are containers themselves.
        let past = Tape::parse(r#"{"a": [1, {"a": 2}], "c": {"a": {"b": 1}}, "a": 0}"#);
        assert!(past.expect("json").reads_as_value());
        let apart = Tape::parse(r#"{"a": [1, {"a": 2}], "c": {"a": {"a": 1}}, "d": 0}"#);
        assert!(!apart.expect("json").reads_as_value());
        // Distinct keys of one length and the same ends are compared, and told apart.
        let alike = Tape::parse(r#"{"axb": 1, "ayb": 2}"#).expect("json");
        assert!(!alike.reads_as_value());
        let alike_twice = Tape::parse(r#"{"axb": 1, "ayb": 2, "axb": 3}"#).expect("json");
        assert!(alike_twice.reads_as_value());
        // A key written once escaped and once not is the same key.
        let escaped = Tape::parse(r#"{"ab": 1, "a\u0062": 2}"#).expect("json");
        assert!(escaped.reads_as_value());
        let many: Map<String, Value> = (0..40).map(|i| (format!("k{i}"), json!(i))).collect();
        let text = serde_json::to_string(&many).expect("json");
        assert!(!Tape::parse(&text).expect("json").reads_as_value());
        let with_dup = format!("{}, \"k7\": 0}}", text.trim_end_matches('}'));
        assert!(Tape::parse(&with_dup).expect("json").reads_as_value());
    }

    #[test]
    fn navigates_members_and_elements() {
        let tape =
            Tape::parse(r#"{"a": {"b": [10, {"c": "x"}]}, "n": null, "z": 1.5}"#).expect("json");
        let root = tape.root();
        let c = root
            .get("a")
            .and_then(|a| a.get("b"))
            .and_then(|b| b.index(1))
            .and_then(|o| o.get("c"));
        assert_eq!(c.and_then(|c| c.str()), Some("x"));
        assert_eq!(
            root.get("z")
                .and_then(|z| z.number())
                .and_then(Number::as_f64),
            Some(1.5)
        );
        assert!(root.get("n").is_some_and(|n| n.null()));
        assert!(root.get("missing").is_none());
        assert!(root.get("a").and_then(|a| a.index(0)).is_none());
    }

    #[test]
    fn meets_jsonschemas_representation_contract() {
        let text = jsonschema::json::conformance::document().to_string();
        let tape = Tape::parse(&text).expect("json");
        jsonschema::json::conformance::assert_conformance::<TapeJson>(&tape.root());
    }

    #[test]
    fn validates_as_the_value_does() {
        let schema = json!({
            "type": "object",
            "required": ["id", "amount", "items"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "pattern": "^o-[0-9]+$", "minLength": 3, "maxLength": 8},
                "amount": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01},
                "currency": {"enum": ["EUR", "USD"]},
                "count": {"type": "integer", "const": 2},
                "at": {"type": "string", "format": "date-time"},
                "items": {"type": "array", "minItems": 1, "uniqueItems": true,
                          "items": {"type": "object", "required": ["sku"],
                                    "properties": {"sku": {"type": "string"}}}},
                "tags": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
                         "maxProperties": 2}
            }
        });
        let by_value = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("schema");
        let by_tape = jsonschema::options_for::<TapeJson>()
            .should_validate_formats(true)
            .build(&schema)
            .expect("schema");
        let cases = [
            r#"{"id": "o-1", "amount": 10.5, "items": [{"sku": "a"}]}"#,
            r#"{"id": "o-1", "amount": 10.5, "currency": "EUR", "count": 2, "at": "2026-12-03T08:00:00Z", "items": [{"sku": "a"}, {"sku": "b"}], "tags": {"ab": 1}}"#,
            r#"{"id": "o-1", "amount": 10.5, "items": [{"sku": "a"}, {"sku": "a"}]}"#,
            r#"{"id": "o-1", "amount": 0, "items": [{"sku": "a"}]}"#,
            r#"{"id": "o-1", "amount": 10.555, "items": [{"sku": "a"}]}"#,
            r#"{"id": "x", "amount": 1, "items": [{"sku": "a"}]}"#,
            r#"{"id": "o-123456789", "amount": 1, "items": [{"sku": "a"}]}"#,
            r#"{"id": "o-1", "amount": 1, "currency": "GBP", "items": [{"sku": "a"}]}"#,
            r#"{"id": "o-1", "amount": 1, "count": 2.0, "items": [{"sku": "a"}]}"#,
            r#"{"id": "o-1", "amount": 1, "count": 3, "items": [{"sku": "a"}]}"#,
            r#"{"id": "o-1", "amount": 1, "at": "yesterday", "items": [{"sku": "a"}]}"#,
            r#"{"id": "o-1", "amount": 1, "items": []}"#,
            r#"{"id": "o-1", "amount": 1, "items": [{"sku": 1}]}"#,
            r#"{"id": "o-1", "amount": 1, "items": [{}]}"#,
            r#"{"id": "o-1", "amount": 1, "items": [{"sku": "a"}], "extra": true}"#,
            r#"{"id": "o-1", "amount": 1, "items": [{"sku": "a"}], "tags": {"A": 1}}"#,
            r#"{"id": "o-1", "amount": 1, "items": [{"sku": "a"}], "tags": {"a": 1, "b": 2, "c": 3}}"#,
            r#"{"amount": 1, "items": [{"sku": "a"}]}"#,
            r#"[1, 2]"#,
            r#"null"#,
        ];
        for text in cases {
            let value: Value = serde_json::from_str(text).expect("json");
            let tape = Tape::parse(text).expect("json");
            assert_eq!(
                by_tape.is_valid(tape.root()),
                by_value.is_valid(&value),
                "{text}"
            );
        }
    }
}
