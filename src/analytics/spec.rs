//! Analyses as declared in `analytics/*.toml`, and their validation.
//!
//! Each file holds one table per analysis, named by the analysis:
//!
//! ```toml
//! [refunds_per_order]
//! types = ["refund.requested"]                 # the source: event types...
//! where = { "data.currency" = "EUR" }          # ...and, optionally, fields that must equal
//! group_by = ["data.order_id"]                 # envelope fields or data.* paths
//! keyed_by_group = true                        # records are keyed by the group: no repartition
//! window = { tumbling = "1h" }                 # or { hopping = "1h", advance = "10m" }, { session = "30m" }
//! allowed_lateness = "5m"
//! aggregates = { refunds = "count", total = "sum(data.amount)" }
//! condition = "refunds >= 3"                   # clauses joined by `and`
//! emit = "reflex.analytics.refunds_high"
//! ```
//!
//! An anomaly replaces (or joins) the condition: `anomaly = { metric = "orders", threshold = 3.0 }`;
//! an absence replaces source, window and aggregates:
//! `absence = { first = "payment.authorized", then = "payment.settled", correlate = "data.payment_id", within = "30m" }`.

mod field;
mod kind;
mod raw;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::event::EventRef;

pub use field::{Field, FieldValue};
pub use kind::{parse_condition, Absence, Aggregate, Anomaly, Clause, Direction, Kind, Op, Window};
use raw::{build, RawAnalysis};

/// Why the analyses cannot be used. Every message names the file, the analysis and the key.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The directory or a file cannot be read.
    #[error("cannot read analyses {path}: {source}", path = path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not TOML, or an analysis has an unknown key or a wrong type.
    #[error("{path}: analysis \"{analysis}\": {message}", path = path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The analysis (`*` when the file itself does not parse).
        analysis: String,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A key has a value that cannot work.
    #[error("{path}: analysis \"{analysis}\", key {key}: {why}", path = path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The analysis.
        analysis: String,
        /// The key.
        key: String,
        /// What is wrong and what to do.
        why: String,
    },
}
/// A validated analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Its name (the table name), unique over all files.
    pub name: String,
    /// The file declaring it.
    pub file: PathBuf,
    /// What it finds, for people.
    pub description: String,
    /// The event types it reads.
    pub types: Vec<String>,
    /// Fields that must equal these values.
    pub filter: Vec<(Field, Value)>,
    /// The grouping fields (none: one group).
    pub group_by: Vec<Field>,
    /// The input records are keyed by the group's text (`keyed_by_group = true`), so the
    /// records of one group share a partition; otherwise the role re-keys them through a
    /// repartition topic first.
    pub keyed_by_group: bool,
    /// Event time an event may arrive behind the newest one seen and still count (ms).
    pub allowed_lateness: i64,
    /// What it computes.
    pub kind: Kind,
    /// The type of the events it emits.
    pub emit: String,
}

impl Analysis {
    /// Whether the event is of a source type and passes the filter.
    pub fn reads<'e>(&self, event: impl Into<EventRef<'e>>) -> bool {
        let event = event.into();
        self.types.iter().any(|t| t == event.attributes.ty)
            && self
                .filter
                .iter()
                .all(|(field, want)| field.get(event).is_some_and(|v| v.equals(want)))
    }

    /// The event's group as text: the `group_by` values joined by `/` (`-` for a missing
    /// one); empty without a grouping.
    pub fn group_key<'e>(&self, event: impl Into<EventRef<'e>>) -> String {
        let mut key = String::new();
        self.write_group_key(event, &mut key);
        key
    }

    /// [`Self::group_key`] into `key`, emptied first (a buffer reused from event to event).
    pub fn write_group_key<'e>(&self, event: impl Into<EventRef<'e>>, key: &mut String) {
        let event = event.into();
        key.clear();
        for (i, field) in self.group_by.iter().enumerate() {
            if i > 0 {
                key.push('/');
            }
            match field.get(event) {
                Some(v) => v.write_text(key),
                None => key.push('-'),
            }
        }
    }

    /// The record key the event is re-keyed by on the way to the analysis's repartition
    /// topic: its group, or the analysis's name when it has no grouping (one group, one
    /// partition).
    pub fn partition_key<'e>(&self, event: impl Into<EventRef<'e>>) -> String {
        if self.group_by.is_empty() {
            self.name.clone()
        } else {
            self.group_key(event)
        }
    }
}

/// Parses the analyses of one file (`text`, read from `path`).
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Analysis>, SpecError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| SpecError::Parse {
        path: path.to_owned(),
        analysis: "*".into(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (name, value) in table {
        let raw = RawAnalysis::deserialize(value).map_err(|e| SpecError::Parse {
            path: path.to_owned(),
            analysis: name.clone(),
            message: e.message().to_owned(),
        })?;
        out.push(build(path, &name, raw)?);
    }
    Ok(out)
}

/// Every analysis in `dir/*.toml`, sorted by name; a missing directory holds none. Two
/// analyses with one name are an error naming both files.
pub fn load_dir(dir: &Path) -> Result<Vec<Analysis>, SpecError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SpecError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut all: Vec<Analysis> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        for analysis in parse_file(&path, &text)? {
            if let Some(other) = all.iter().find(|a| a.name == analysis.name) {
                return Err(SpecError::Invalid {
                    path: analysis.file.clone(),
                    analysis: analysis.name.clone(),
                    key: "name".into(),
                    why: format!(
                        "{} declares an analysis of the same name; rename one",
                        other.file.display()
                    ),
                });
            }
            all.push(analysis);
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Analysis, SpecError> {
        parse_file(Path::new("analytics/t.toml"), text).map(|mut v| v.remove(0))
    }

    #[test]
    fn a_tumbling_count_with_condition_parses() {
        let a = one(r#"
[refunds]
types = ["refund.requested"]
where = { "data.currency" = "EUR" }
group_by = ["data.order_id"]
window = { tumbling = "1h" }
allowed_lateness = "5m"
aggregates = { refunds = "count", total = "sum(data.amount)", p95 = "p95(data.amount)", who = "count_distinct(source)" }
condition = "refunds >= 3 and total > 100"
emit = "reflex.analytics.refunds_high"
"#)
        .expect("valid");
        assert_eq!(a.allowed_lateness, 300_000);
        let Kind::Windowed {
            window,
            aggregates,
            condition,
            ..
        } = a.kind
        else {
            panic!("windowed")
        };
        assert_eq!(window, Window::Tumbling(3_600_000));
        assert_eq!(aggregates.len(), 4);
        assert!(aggregates.contains(&(
            "p95".to_owned(),
            Aggregate::Percentile(Field::parse("data.amount").expect("field"), 0.95)
        )));
        assert_eq!(condition.len(), 2);
        assert_eq!(condition[0].op, Op::Ge);
    }

    #[test]
    fn errors_name_the_file_analysis_and_key() {
        let e = one(
            "[x]\ntypes = [\"a\"]\nwindow = { tumbling = \"1m\" }\ncondition = \"nope > 1\"\nemit = \"t\"\n",
        )
        .expect_err("unknown aggregate in condition");
        let text = e.to_string();
        assert!(text.contains("analytics/t.toml"), "{text}");
        assert!(text.contains("analysis \"x\""), "{text}");
        assert!(text.contains("key condition"), "{text}");
        assert!(text.contains("\"nope\""), "{text}");

        let e =
            one("[y]\ntypes = [\"a\"]\nwindow = { tumbling = \"1m\" }\nbogus = 1\nemit = \"t\"\n")
                .expect_err("unknown key");
        assert!(e.to_string().contains("bogus"), "{e}");

        let e = one("[z]\ntypes = [\"a\"]\nwindow = { hopping = \"1m\" }\ncondition = \"count > 1\"\nemit = \"t\"\n")
            .expect_err("hopping without advance");
        assert!(e.to_string().contains("window.advance"), "{e}");

        let e = one("[w]\ntypes = [\"a\"]\nwindow = { session = \"1m\" }\naggregates = { n = \"median(data.x)\" }\ncondition = \"n > 1\"\nemit = \"t\"\n")
            .expect_err("unknown function");
        assert!(e.to_string().contains("aggregates.n"), "{e}");

        let e = one("[k]\ntypes = [\"a\"]\nkeyed_by_group = true\nwindow = { tumbling = \"1m\" }\ncondition = \"count > 1\"\nemit = \"t\"\n")
            .expect_err("keyed by a group it does not have");
        assert!(e.to_string().contains("key keyed_by_group"), "{e}");

        let e = one("[v]\ntypes = [\"a\"]\nwindow = { session = \"1m\" }\nanomaly = { metric = \"count\" }\nemit = \"t\"\n")
            .expect_err("anomaly on a session window");
        assert!(e.to_string().contains("key anomaly"), "{e}");
    }

    #[test]
    fn an_absence_takes_its_types_from_first_and_then() {
        let a = one(
            r#"
[unsettled]
absence = { first = "payment.authorized", then = "payment.settled", correlate = "data.payment_id", within = "30m" }
emit = "reflex.analytics.payment_not_settled"
"#,
        )
        .expect("valid");
        assert_eq!(a.types, ["payment.authorized", "payment.settled"]);
        assert!(matches!(
            a.kind,
            Kind::Absence(Absence {
                within: 1_800_000,
                ..
            })
        ));
        let e = one(
            "[u]\nabsence = { first = \"a\", then = \"b\", correlate = \"data.x\", within = \"1m\" }\nwindow = { tumbling = \"1m\" }\nemit = \"t\"\n",
        )
        .expect_err("window with absence");
        assert!(e.to_string().contains("key window"), "{e}");
    }

    #[test]
    fn fields_read_envelope_and_data() {
        let event: crate::event::CloudEvent = serde_json::from_value(serde_json::json!({
            "specversion": "1.0", "id": "e1", "source": "/s", "type": "t",
            "data": {"a": {"b": 2}, "list": [5]}, "tenant": "t1"
        }))
        .expect("event");
        let get = |f: &str| Field::parse(f).and_then(|f| f.get(&event).map(FieldValue::text));
        assert_eq!(get("source").as_deref(), Some("/s"));
        assert_eq!(get("data.a.b").as_deref(), Some("2"));
        assert_eq!(get("data.list.0").as_deref(), Some("5"));
        assert_eq!(get("tenant").as_deref(), Some("t1"));
        assert_eq!(get("subject"), None);
        assert_eq!(get("data.missing"), None);
        assert!(Field::parse("data..x").is_none());
    }
}
