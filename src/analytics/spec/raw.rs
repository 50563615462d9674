//! The analysis tables as written, and their validation into [`Analysis`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{
    parse_condition, Absence, Aggregate, Analysis, Anomaly, Direction, Field, Kind, SpecError,
    Window,
};

/// One analysis table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnalysis {
    #[serde(default)]
    description: String,
    #[serde(default)]
    types: Vec<String>,
    #[serde(default, rename = "where")]
    filter: BTreeMap<String, Value>,
    #[serde(default)]
    group_by: Vec<String>,
    #[serde(default)]
    keyed_by_group: bool,
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
    /// The season's length: one baseline per window position within it.
    #[serde(default, with = "humantime_serde")]
    season: Option<Duration>,
}

/// Baselines a seasonal anomaly keeps per group at most: a week of minutes.
const MAX_SEASON_SLOTS: i64 = 7 * 24 * 60;

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

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Validates one analysis table.
pub(super) fn build(path: &Path, name: &str, raw: RawAnalysis) -> Result<Analysis, SpecError> {
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
            keyed_by_group: raw.keyed_by_group,
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
    if raw.keyed_by_group && group_by.is_empty() {
        return Err(invalid(
            "keyed_by_group",
            "without group_by every event is in one group, which one worker must hold: remove keyed_by_group (the events are then re-keyed to one partition)".into(),
        ));
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
            let Window::Tumbling(size) = window else {
                return Err(invalid(
                    "anomaly",
                    "an anomaly baseline needs a tumbling window (one value per period)".into(),
                ));
            };
            let season = match a.season {
                None => None,
                Some(season) => {
                    let ms = i64::try_from(season.as_millis()).unwrap_or(i64::MAX);
                    if ms <= size || ms % size != 0 || ms / size > MAX_SEASON_SLOTS {
                        return Err(invalid(
                            "anomaly.season",
                            format!(
                                "\"{}\" must be a whole number of windows ({} ms each), more than one and at most {MAX_SEASON_SLOTS}: e.g. \"1d\" with a window of \"1h\"",
                                humantime::format_duration(season),
                                size
                            ),
                        ));
                    }
                    Some(ms)
                }
            };
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
                season,
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
        keyed_by_group: raw.keyed_by_group,
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
