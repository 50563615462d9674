//! `reflex analytics test`: the analyses run over JSON-lines files of events, and what they
//! emit compared with the cases in `analytics/tests/*.yaml`:
//!
//! ```yaml
//! cases:
//!   - note: three refunds of one order within the hour are reported
//!     events: refunds.jsonl            # JSON lines, relative to this file, in arrival order
//!     analyses: [refunds_per_order]    # optional: only these analyses run
//!     late: 0                          # optional: events found late, over all analyses
//!     want:                            # exactly these findings, in any order
//!       - {type: reflex.analytics.refunds_high, subject: ord-1, data: {values: {refunds: 3}}}
//! ```
//! Each `want` entry is compared key by key with one finding (keys it leaves out are not
//! checked, objects recursively, numbers by value); every finding must match one entry. At the
//! end of the file every window closes and every timer fires, as if event time moved on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::Analysis;
use super::{read_events, run_offline, OfflineError};

/// Why the cases could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// A case file cannot be read or does not parse.
    #[error("test cases {path} are invalid: {message}", path = path.display())]
    Cases {
        /// The YAML file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub note: String,
    /// The JSON-lines file of events, relative to the case file.
    pub events: PathBuf,
    /// Only these analyses (default: all).
    #[serde(default)]
    pub analyses: Vec<String>,
    /// Events found late, summed over the analyses run.
    #[serde(default)]
    pub late: Option<u64>,
    /// The findings expected, in any order.
    pub want: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `<file>: <note>`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Expected findings no finding matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Value>,
    /// Findings no expected entry matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unexpected: Vec<Value>,
    /// Late events, when the case states a number and it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late: Option<(u64, u64)>,
    /// Why the case could not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// All results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestReport {
    /// The analyses loaded.
    pub analyses: usize,
    /// Each case.
    pub outcomes: Vec<Outcome>,
}

impl TestReport {
    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.passed).count()
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for o in self.outcomes.iter().filter(|o| !o.passed) {
            writeln!(f, "FAIL {}", o.name)?;
            if let Some(e) = &o.error {
                writeln!(f, "  error: {e}")?;
            }
            for m in &o.missing {
                writeln!(f, "  missing:    {m}")?;
            }
            for u in &o.unexpected {
                writeln!(f, "  unexpected: {u}")?;
            }
            if let Some((want, got)) = o.late {
                writeln!(f, "  late events: want {want}, got {got}")?;
            }
        }
        let failed = self.failed();
        write!(
            f,
            "{} analyses; {} cases passed, {failed} failed",
            self.analyses,
            self.outcomes.len() - failed
        )
    }
}

/// Whether `got` has every key of `want` with an equal value (objects recursively, numbers
/// by value, arrays element by element).
pub fn contains(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| contains(v, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| contains(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// Runs every case in `dir/tests/*.yaml` against `analyses`.
pub fn run(dir: &Path, analyses: &[Analysis], max_groups: usize) -> Result<TestReport, TestError> {
    let tests = dir.join("tests");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&tests) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(TestError::Cases {
                path: tests,
                message: e.to_string(),
            })
        }
    };
    files.sort();
    let mut report = TestReport {
        analyses: analyses.len(),
        outcomes: Vec::new(),
    };
    for path in files {
        let bad = |message: String| TestError::Cases {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let file: CaseFile = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        for case in file.cases {
            let name = format!("{rel}: {}", case.note);
            let base = path.parent().unwrap_or(dir);
            report
                .outcomes
                .push(run_case(name, base, &case, analyses, max_groups));
        }
    }
    Ok(report)
}

fn run_case(
    name: String,
    base: &Path,
    case: &Case,
    analyses: &[Analysis],
    max_groups: usize,
) -> Outcome {
    let failed = |error: String| Outcome {
        name: name.clone(),
        passed: false,
        missing: Vec::new(),
        unexpected: Vec::new(),
        late: None,
        error: Some(error),
    };
    if let Some(unknown) = case
        .analyses
        .iter()
        .find(|n| !analyses.iter().any(|a| a.name == **n))
    {
        return failed(format!("no analysis is named \"{unknown}\""));
    }
    let chosen: Arc<[Analysis]> = analyses
        .iter()
        .filter(|a| case.analyses.is_empty() || case.analyses.contains(&a.name))
        .cloned()
        .collect();
    let events = match read_events(&base.join(&case.events)) {
        Ok(events) => events,
        Err(e) => return failed(e.to_string()),
    };
    let (findings, late) = match run_offline(chosen, &events, max_groups) {
        Ok(result) => result,
        Err(e @ OfflineError::NoTime { .. }) => {
            return failed(format!("{}: {e}", case.events.display()))
        }
        Err(e) => return failed(e.to_string()),
    };
    let mut got: Vec<Option<Value>> = findings
        .iter()
        .map(|f| serde_json::to_value(&f.event).ok())
        .collect();
    let mut missing = Vec::new();
    for want in &case.want {
        match got
            .iter_mut()
            .find(|g| g.as_ref().is_some_and(|g| contains(want, g)))
        {
            Some(slot) => *slot = None,
            None => missing.push(want.clone()),
        }
    }
    let unexpected: Vec<Value> = got.into_iter().flatten().collect();
    let late = case
        .late
        .filter(|want| *want != late)
        .map(|want| (want, late));
    Outcome {
        passed: missing.is_empty() && unexpected.is_empty() && late.is_none(),
        name,
        missing,
        unexpected,
        late,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_cases_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("analytics");
        let analyses = crate::analytics::spec::load_dir(&dir).expect("analyses load");
        let report = run(&dir, &analyses, 10_000).expect("cases load");
        assert!(report.outcomes.len() >= 3, "{report}");
        assert_eq!(report.failed(), 0, "{report}");
    }

    #[test]
    fn a_wrong_expectation_fails_and_says_what_came_instead() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("tests")).expect("mkdir");
        std::fs::write(
            dir.path().join("tests/events.jsonl"),
            "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\",\"type\":\"x\",\"time\":\"2026-01-01T00:00:00Z\"}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("tests/c.yaml"),
            "cases:\n  - note: wrong count\n    events: events.jsonl\n    want: [{type: found, data: {values: {count: 2}}}]\n",
        )
        .expect("write");
        let analyses = crate::analytics::spec::parse_file(
            Path::new("a.toml"),
            "[a]\ntypes = [\"x\"]\nwindow = { tumbling = \"1m\" }\ncondition = \"count >= 1\"\nemit = \"found\"\n",
        )
        .expect("valid");
        let report = run(dir.path(), &analyses, 10).expect("runs");
        assert_eq!(report.failed(), 1);
        let text = report.to_string();
        assert!(text.contains("missing:"), "{text}");
        assert!(text.contains("\"count\":1.0"), "{text}");
    }
}
