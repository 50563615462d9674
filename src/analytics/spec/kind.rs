//! What an analysis computes: its windows, aggregates, condition, anomaly rule or absence.

use serde::Deserialize;

use super::Field;

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
#[derive(Clone, PartialEq)]
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
    /// The season's length in ms, a multiple of the window's: a window is judged against, and
    /// teaches, the baseline of its position in the season (the same hour of past days), not
    /// the one of the windows just before it. `None`: one baseline.
    pub season: Option<i64>,
}

/// As derived, except that a declaration without a season prints as it did before seasons
/// existed: a checkpoint's state is kept only while the Debug text of its analysis is the same,
/// so the baselines learned before the upgrade stay.
impl std::fmt::Debug for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Anomaly");
        out.field("metric", &self.metric)
            .field("alpha", &self.alpha)
            .field("threshold", &self.threshold)
            .field("warmup", &self.warmup)
            .field("direction", &self.direction);
        if let Some(season) = self.season {
            out.field("season", &season);
        }
        out.finish()
    }
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
