//! Analyses as declared in `analytics/*.toml`, and their validation.
//!
//! Each file holds one table per analysis, named by the analysis:
//!
//! ```toml
//! [refunds_per_order]
//! types = ["refund.requested"]                 # the source: event types...
//! where = { "data.currency" = "EUR" }          # ...and, optionally, fields that must equal
//! group_by = ["data.order_id"]                 # envelope fields or data.* paths
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

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

/// One analysis table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    #[serde(default)]
    description: String,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default, rename = "where")]
    filter: BTreeMap<String, Value>,
    #[serde(default)]
    group_by: Vec<String>,
    #[serde(default)]
    window: Option<RawWindow>,
    #[serde(default, with = "humantime_serde")]
    allowed_lateness: Option<Duration>,
    #[serde(default)]
    aggregates: BTreeMap<String, String>,
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    anomaly: Option<RawAnomaly>,
    #[serde(default)]
    absence: Option<RawAbsence>,
    emit: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    #[serde(default, with = "humantime_serde")]
    tumbling: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    hopping: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    advance: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    session: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnomaly {
    metric: String,
    #[serde(default = "default_alpha")]
    alpha: f64,
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default = "default_warmup")]
    warmup: u32,
    #[serde(default)]
    direction: Direction,
}

fn default_alpha() -> f64 {
    0.2
}

fn default_threshold() -> f64 {
    3.0
}

fn default_warmup() -> u32 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbsence {
    first: String,
    then: String,
    correlate: String,
    #[serde(with = "humantime_serde")]
    within: Duration,
}

/// Which side of the baseline is anomalous.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Far above or far below.
    #[default]
    Both,
    /// Far above only.
    Above,
    /// Far below only.
    Below,
}

/// A field of an event: an envelope attribute (`source`, `type`, `subject`, `id`, `time`, an
/// extension) or a path into `data` (`data.customer.id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// As written.
    pub name: String,
    /// The path below `data`, when it is a data field.
    data_path: Option<Vec<String>>,
}

impl Field {
    /// Parses `name`; `None` when it is empty or has an empty segment.
    pub fn parse(name: &str) -> Option<Self> {
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return None;
        }
        let data_path = match name.strip_prefix("data.") {
            Some(rest) => Some(rest.split('.').map(str::to_owned).collect()),
            None if name == "data" => Some(Vec::new()),
            None => None,
        };
        Some(Self {
            name: name.to_owned(),
            data_path,
        })
    }

    /// The field's value in `event`, if present.
    pub fn get<'e>(&self, event: &'e crate::event::CloudEvent) -> Option<FieldValue<'e>> {
        if let Some(path) = &self.data_path {
            let mut value = event.data.as_ref()?;
            for segment in path {
                value = match value {
                    Value::Object(map) => map.get(segment)?,
                    Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            return (!value.is_null()).then_some(FieldValue::Json(value));
        }
        let text = match self.name.as_str() {
            "id" => &event.id,
            "source" => &event.source,
            "type" => &event.ty,
            "specversion" => &event.specversion,
            "subject" => event.subject.as_ref()?,
            "time" => event.time.as_ref()?,
            "datacontenttype" => event.datacontenttype.as_ref()?,
            "dataschema" => event.dataschema.as_ref()?,
            other => return event.extensions.get(other).map(FieldValue::Json),
        };
        Some(FieldValue::Text(text))
    }
}

/// A field's value, borrowed from the event.
#[derive(Debug, Clone, Copy)]
pub enum FieldValue<'e> {
    /// An envelope attribute.
    Text(&'e str),
    /// A JSON value (a data field or an extension).
    Json(&'e Value),
}

impl FieldValue<'_> {
    /// As a number, when it is one (a JSON number, or a string holding one).
    pub fn number(self) -> Option<f64> {
        match self {
            Self::Json(Value::Number(n)) => n.as_f64(),
            Self::Json(Value::String(s)) => s.parse().ok(),
            Self::Text(s) => s.parse().ok(),
            Self::Json(_) => None,
        }
    }

    /// As JSON.
    pub fn to_json(self) -> Value {
        match self {
            Self::Text(s) => Value::String(s.to_owned()),
            Self::Json(v) => v.clone(),
        }
    }

    /// Whether it equals `want` (a string attribute equals a JSON string; numbers by value).
    pub fn equals(self, want: &Value) -> bool {
        match (self, want) {
            (Self::Text(s), Value::String(w)) => s == w,
            (Self::Json(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Self::Json(v), w) => v == w,
            (Self::Text(_), _) => false,
        }
    }

    /// A stable text form: strings as they are, anything else as compact JSON.
    pub fn text(self) -> String {
        match self {
            Self::Text(s) => s.to_owned(),
            Self::Json(Value::String(s)) => s.clone(),
            Self::Json(v) => v.to_string(),
        }
    }
}

/// What an aggregate computes over a window's events.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// Events in the window.
    Count,
    /// Sum of a numeric field (0 without values).
    Sum(Field),
    /// Smallest value of a numeric field.
    Min(Field),
    /// Largest value of a numeric field.
    Max(Field),
    /// Mean of a numeric field.
    Avg(Field),
    /// Distinct values of a field, estimated with HyperLogLog++ (see [`super::aggregate`]).
    CountDistinct(Field),
    /// A quantile of a numeric field (`p95(...)` is 0.95), estimated with a t-digest.
    Percentile(Field, f64),
}

impl Aggregate {
    /// Parses `count`, `sum(data.x)`, `min(..)`, `max(..)`, `avg(..)`, `count_distinct(..)`,
    /// `p50(..)`…`p99.9(..)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "count" || text == "count()" {
            return Ok(Self::Count);
        }
        let (function, rest) = text.split_once('(').ok_or_else(|| {
            format!("\"{text}\" is not an aggregate: write count, sum(FIELD), min(FIELD), max(FIELD), avg(FIELD), count_distinct(FIELD) or p95(FIELD)")
        })?;
        let argument = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("\"{text}\" lacks its closing parenthesis"))?
            .trim();
        let field = Field::parse(argument).ok_or_else(|| {
            format!("\"{text}\": \"{argument}\" is not a field (e.g. data.amount)")
        })?;
        match function.trim() {
            "sum" => Ok(Self::Sum(field)),
            "min" => Ok(Self::Min(field)),
            "max" => Ok(Self::Max(field)),
            "avg" => Ok(Self::Avg(field)),
            "count_distinct" => Ok(Self::CountDistinct(field)),
            p if p.starts_with('p') => match p[1..].parse::<f64>() {
                Ok(percent) if percent > 0.0 && percent < 100.0 => {
                    Ok(Self::Percentile(field, percent / 100.0))
                }
                _ => Err(format!(
                    "\"{text}\": the percentile must be between p0 and p100, e.g. p95"
                )),
            },
            other => Err(format!("\"{text}\": unknown function \"{other}\"; use sum, min, max, avg, count_distinct or pNN")),
        }
    }
}

/// How windows are cut on event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Fixed, adjacent windows of this many milliseconds, aligned on the epoch.
    Tumbling(i64),
    /// Windows of `size` starting every `advance` ms (an event is in `size / advance` of them).
    Hopping {
        /// Window length in ms.
        size: i64,
        /// Distance between window starts in ms.
        advance: i64,
    },
    /// Activity separated by less than this gap (ms) is one window, per group.
    Session(i64),
}

/// One clause of a condition: `NAME OP NUMBER`.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    /// The aggregate's name.
    pub name: String,
    /// The comparison.
    pub op: Op,
    /// The number compared with.
    pub value: f64,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    /// Whether `left OP right` holds.
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Self::Gt => left > right,
            Self::Ge => left >= right,
            Self::Lt => left < right,
            Self::Le => left <= right,
            Self::Eq => left == right,
            Self::Ne => left != right,
        }
    }
}

/// A condition: clauses that must all hold (an aggregate without a value fails its clause).
pub fn parse_condition(text: &str, names: &[String]) -> Result<Vec<Clause>, String> {
    let mut clauses = Vec::new();
    for part in text.split(" and ") {
        let tokens: Vec<&str> = part.split_whitespace().collect();
        let [name, op, value] = tokens.as_slice() else {
            return Err(format!(
                "\"{}\" is not a clause: write NAME OP NUMBER (e.g. refunds >= 3), joined by \"and\"",
                part.trim()
            ));
        };
        let op = match *op {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            other => {
                return Err(format!(
                    "unknown comparison \"{other}\"; use >, >=, <, <=, == or !="
                ))
            }
        };
        if !names.iter().any(|n| n == name) {
            return Err(format!(
                "\"{name}\" is not an aggregate of this analysis (it has: {})",
                names.join(", ")
            ));
        }
        let value = value
            .parse::<f64>()
            .map_err(|_| format!("\"{value}\" is not a number"))?;
        clauses.push(Clause {
            name: (*name).to_owned(),
            op,
            value,
        });
    }
    Ok(clauses)
}

/// An online baseline per group and the rule that calls a window's value anomalous.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// Index of the aggregate watched.
    pub metric: usize,
    /// EWMA smoothing factor in (0, 1]: the weight of the newest window.
    pub alpha: f64,
    /// |z| at or above which a window is anomalous.
    pub threshold: f64,
    /// Windows learned before any is judged.
    pub warmup: u32,
    /// Which side counts.
    pub direction: Direction,
}

/// "`then` with the same `correlate` value did not follow `first` within `within`".
#[derive(Debug, Clone, PartialEq)]
pub struct Absence {
    /// The event type that starts the timer.
    pub first: String,
    /// The event type that stops it.
    pub then: String,
    /// The field both share.
    pub correlate: Field,
    /// The time allowed, in ms of event time.
    pub within: i64,
}

/// What an analysis does with the events of its source.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Windows of aggregates, judged by a condition and/or an anomaly rule when they close.
    Windowed {
        /// How windows are cut.
        window: Window,
        /// Names and aggregates, sorted by name.
        aggregates: Vec<(String, Aggregate)>,
        /// Emit when all clauses hold (empty: never, unless `anomaly`).
        condition: Vec<Clause>,
        /// Emit when the watched aggregate leaves its baseline.
        anomaly: Option<Anomaly>,
    },
    /// An expected follow-up event that did not come.
    Absence(Absence),
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
    /// Event time an event may arrive behind the newest one seen and still count (ms).
    pub allowed_lateness: i64,
    /// What it computes.
    pub kind: Kind,
    /// The type of the events it emits.
    pub emit: String,
}

impl Analysis {
    /// Whether the event is of a source type and passes the filter.
    pub fn reads(&self, event: &crate::event::CloudEvent) -> bool {
        self.types.contains(&event.ty)
            && self
                .filter
                .iter()
                .all(|(field, want)| field.get(event).is_some_and(|v| v.equals(want)))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Validates one analysis table.
fn build(path: &Path, name: &str, raw: RawAnalysis) -> Result<Analysis, SpecError> {
    let invalid = |key: &str, why: String| SpecError::Invalid {
        path: path.to_owned(),
        analysis: name.to_owned(),
        key: key.to_owned(),
        why,
    };
    let field = |key: &str, text: &str| {
        Field::parse(text).ok_or_else(|| {
            invalid(
                key,
                format!("\"{text}\" is not a field: name an envelope attribute (source, subject, …) or data.PATH"),
            )
        })
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            "name",
            "use letters, digits, \"_\" and \"-\" only".into(),
        ));
    }
    if raw.emit.trim().is_empty() {
        return Err(invalid("emit", "name the event type to emit".into()));
    }
    let allowed_lateness = millis(raw.allowed_lateness.unwrap_or_default());
    let filter = raw
        .filter
        .iter()
        .map(|(k, v)| Ok((field(&format!("where.\"{k}\""), k)?, v.clone())))
        .collect::<Result<Vec<_>, SpecError>>()?;
    let group_by = raw
        .group_by
        .iter()
        .map(|g| field("group_by", g))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(absence) = raw.absence {
        for (key, set) in [
            ("window", raw.window.is_some()),
            ("aggregates", !raw.aggregates.is_empty()),
            ("condition", raw.condition.is_some()),
            ("anomaly", raw.anomaly.is_some()),
            ("types", !raw.types.is_empty()),
            ("group_by", !raw.group_by.is_empty()),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "an absence analysis takes its types from absence.first and absence.then and groups by absence.correlate; remove this key".into(),
                ));
            }
        }
        if absence.within.is_zero() {
            return Err(invalid("absence.within", "must be more than 0s".into()));
        }
        if absence.first == absence.then {
            return Err(invalid(
                "absence.then",
                format!(
                    "\"{}\" is also absence.first; name another type",
                    absence.then
                ),
            ));
        }
        let correlate = field("absence.correlate", &absence.correlate)?;
        return Ok(Analysis {
            name: name.to_owned(),
            file: path.to_owned(),
            description: raw.description,
            types: vec![absence.first.clone(), absence.then.clone()],
            filter,
            group_by: vec![correlate.clone()],
            allowed_lateness,
            kind: Kind::Absence(Absence {
                first: absence.first,
                then: absence.then,
                correlate,
                within: millis(absence.within),
            }),
            emit: raw.emit,
        });
    }
    if raw.types.is_empty() {
        return Err(invalid(
            "types",
            "name at least one event type to read".into(),
        ));
    }
    let window = match raw.window {
        None => return Err(invalid("window", "declare { tumbling = \"1h\" }, { hopping = \"1h\", advance = \"10m\" } or { session = \"30m\" }".into())),
        Some(w) => match (w.tumbling, w.hopping, w.advance, w.session) {
            (Some(size), None, None, None) if !size.is_zero() => Window::Tumbling(millis(size)),
            (None, Some(size), Some(advance), None)
                if !advance.is_zero() && advance <= size =>
            {
                Window::Hopping {
                    size: millis(size),
                    advance: millis(advance),
                }
            }
            (None, None, None, Some(gap)) if !gap.is_zero() => Window::Session(millis(gap)),
            (None, Some(_), _, None) => {
                return Err(invalid(
                    "window.advance",
                    "a hopping window needs an advance above 0s and at most its size".into(),
                ))
            }
            _ => {
                return Err(invalid(
                    "window",
                    "give exactly one of tumbling, hopping (with advance) or session, longer than 0s".into(),
                ))
            }
        },
    };
    let mut aggregates = raw
        .aggregates
        .iter()
        .map(|(n, text)| {
            Aggregate::parse(text)
                .map(|a| (n.clone(), a))
                .map_err(|why| invalid(&format!("aggregates.{n}"), why))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if aggregates.is_empty() {
        aggregates.push(("count".to_owned(), Aggregate::Count));
    }
    let names: Vec<String> = aggregates.iter().map(|(n, _)| n.clone()).collect();
    let condition = match &raw.condition {
        Some(text) => parse_condition(text, &names).map_err(|why| invalid("condition", why))?,
        None => Vec::new(),
    };
    let anomaly = match raw.anomaly {
        None => None,
        Some(a) => {
            let metric = names.iter().position(|n| *n == a.metric).ok_or_else(|| {
                invalid(
                    "anomaly.metric",
                    format!(
                        "\"{}\" is not an aggregate of this analysis (it has: {})",
                        a.metric,
                        names.join(", ")
                    ),
                )
            })?;
            if !matches!(window, Window::Tumbling(_)) {
                return Err(invalid(
                    "anomaly",
                    "an anomaly baseline needs a tumbling window (one value per period)".into(),
                ));
            }
            if !(a.alpha > 0.0 && a.alpha <= 1.0) {
                return Err(invalid(
                    "anomaly.alpha",
                    format!("{} must be in (0, 1]", a.alpha),
                ));
            }
            if !(a.threshold.is_finite() && a.threshold > 0.0) {
                return Err(invalid(
                    "anomaly.threshold",
                    format!("{} must be a number above 0", a.threshold),
                ));
            }
            Some(Anomaly {
                metric,
                alpha: a.alpha,
                threshold: a.threshold,
                warmup: a.warmup,
                direction: a.direction,
            })
        }
    };
    if condition.is_empty() && anomaly.is_none() {
        return Err(invalid(
            "condition",
            "declare a condition (e.g. \"count > 10\") or an anomaly, or the analysis never emits"
                .into(),
        ));
    }
    Ok(Analysis {
        name: name.to_owned(),
        file: path.to_owned(),
        description: raw.description,
        types: raw.types,
        filter,
        group_by,
        allowed_lateness,
        kind: Kind::Windowed {
            window,
            aggregates,
            condition,
            anomaly,
        },
        emit: raw.emit,
    })
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
