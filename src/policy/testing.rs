//! `reflex policy test`: Rego `test_*` rules and data-driven cases.
//!
//! Rego tests are the rules named `test_*` in the test modules (see [`super::files`]) and in the
//! production modules; each passes when it evaluates to `true` (undefined or an error fails).
//! Data-driven cases live in `policies/tests/*.yaml`:
//!
//! ```yaml
//! cases:
//!   - note: a refund above the limit is denied
//!     input: {event: {...}, context: {now: "2026-01-01T00:00:00Z"}}
//!     data: {limits: {refund_auto_approve: {EUR: 100}}}   # optional, merged over data
//!     want: {allow: false, reasons: ["refund above the automatic approval limit"]}
//! ```
//! `want` is compared key by key with the decision document (keys it leaves out are not
//! checked); numbers compare by value and lists of strings in any order, as in a set.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::files::PolicyFiles;
use super::{PolicyError, PolicySet};

/// Why the tests could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The policy set (with its test modules) does not load.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A case file does not parse.
    #[error("test cases {path} are invalid: {message}")]
    Cases {
        /// The YAML file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// One data-driven case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub note: String,
    /// The policy input.
    pub input: Value,
    /// Data merged over the policy set's data for this case.
    #[serde(default)]
    pub data: Option<Value>,
    /// The expected decision document (the keys given).
    pub want: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

/// Reads the cases of one YAML file.
pub fn read_cases(path: &Path) -> Result<Vec<Case>, TestError> {
    let bad = |message: String| TestError::Cases {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: CaseFile = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Ok(file.cases)
}

/// Every case under `dir/tests`, with the file it came from.
pub fn all_cases(dir: &Path) -> Result<Vec<(PathBuf, Case)>, TestError> {
    let files = PolicyFiles::read(dir)?;
    let mut out = Vec::new();
    for path in &files.cases {
        out.extend(read_cases(path)?.into_iter().map(|c| (path.clone(), c)));
    }
    Ok(out)
}

/// The result of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `data.<package>.<rule>` or `<file>: <note>`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What it expected (cases only).
    pub want: Option<Value>,
    /// What it got: the rule's value or the decision document (`None` when undefined).
    pub got: Option<Value>,
    /// The evaluation error, if any.
    pub error: Option<String>,
}

/// All results of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Each test, rules first, then cases.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// How many failed.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| !o.passed).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| v.as_ref().map_or("undefined".to_owned(), Value::to_string);
        for o in self.outcomes.iter().filter(|o| !o.passed) {
            writeln!(f, "FAIL {}", o.name)?;
            if let Some(want) = &o.want {
                writeln!(f, "  want: {want}")?;
            }
            writeln!(f, "  got:  {}", show(&o.got))?;
            if let Some(e) = &o.error {
                writeln!(f, "  error: {e}")?;
            }
        }
        let total = self.outcomes.len();
        let failed = self.failed();
        write!(f, "{} passed, {failed} failed", total - failed)
    }
}

/// Runs every `test_*` rule and every YAML case of the policy set in `dir`.
pub fn run(dir: &Path, entry: &str, timeout: std::time::Duration) -> Result<Report, TestError> {
    let files = PolicyFiles::read(dir)?;
    // Every case is decided by both engines (see decide_case), whatever `engine` a worker uses.
    let production = PolicySet::compile(&files, dir, entry, timeout, false)?
        .with_engine(super::PolicyEngine::Compiled);
    let with_tests = PolicySet::compile(&files, dir, entry, timeout, true)?;
    let mut report = Report::default();
    let mut engine = with_tests.engine.clone();
    engine.set_input(regorus::Value::new_object());
    for file in files.modules.iter().chain(&files.tests) {
        for rule in test_rules(&file.text) {
            let name = format!("data.{rule}");
            let (got, error) = match engine.eval_rule(name.clone()) {
                Ok(regorus::Value::Undefined) => (None, None),
                Ok(v) => (serde_json::to_value(&v).ok(), None),
                Err(e) => (None, Some(e.to_string())),
            };
            report.outcomes.push(Outcome {
                passed: got == Some(Value::Bool(true)),
                name,
                want: None,
                got,
                error,
            });
        }
    }
    let base = dir.to_owned();
    for path in &files.cases {
        let rel = path
            .strip_prefix(&base)
            .unwrap_or(path)
            .display()
            .to_string();
        for case in read_cases(path)? {
            let (got, error) = decide_case(&production, &case);
            report.outcomes.push(Outcome {
                name: format!("{rel}: {}", case.note),
                passed: got.as_ref().is_some_and(|g| matches(&case.want, g)),
                want: Some(case.want),
                got,
                error,
            });
        }
    }
    Ok(report)
}

/// The decision document for one case (`None` when undefined), with the error if any.
///
/// The case is decided by the interpreter and, when the set's entry rule is compiled, by the VM
/// workers decide with, on the parts of the input the rules read (see
/// [`super::projection`]); if the two disagree the case has no decision and the error shows
/// both.
pub fn decide_case(set: &PolicySet, case: &Case) -> (Option<Value>, Option<String>) {
    let interpreted = interpret_case(set, case);
    let Some(compiled) = &set.compiled else {
        return interpreted;
    };
    let data = regorus::Value::from(case_data(set, case));
    let mut machine = match compiled.machine_with_data(data, set.timeout) {
        Ok(m) => m,
        Err(e) => {
            return (
                None,
                Some(format!("the policy VM cannot take this case's data: {e}")),
            )
        }
    };
    // Workers give the VM only the parts of the input the rules read: so does the case.
    let input = match set.input_reads() {
        Some(reads) => reads.json(&case.input),
        None => regorus::Value::from(case.input.clone()),
    };
    let vm = match machine.eval(input) {
        Ok(regorus::Value::Undefined) | Err(_) => None,
        Ok(v) => serde_json::to_value(&v).ok(),
    };
    if vm == interpreted.0 {
        interpreted
    } else {
        let show = |v: &Option<Value>| v.as_ref().map_or("undefined".to_owned(), Value::to_string);
        let error = format!(
            "the compiled policy (VM) decides {} where the interpreter decides {}{}",
            show(&vm),
            show(&interpreted.0),
            interpreted.1.map(|e| format!(" ({e})")).unwrap_or_default()
        );
        (None, Some(error))
    }
}

/// [`decide_case`] by the interpreter alone.
fn interpret_case(set: &PolicySet, case: &Case) -> (Option<Value>, Option<String>) {
    let mut engine = set.engine.clone();
    if let Some(overlay) = &case.data {
        let mut data = set.data();
        merge(&mut data, overlay);
        engine.clear_data();
        if let Err(e) = engine.add_data(regorus::Value::from(data)) {
            return (None, Some(e.to_string()));
        }
    }
    engine.set_input(regorus::Value::from(case.input.clone()));
    match engine.eval_rule(set.entry.clone()) {
        Ok(regorus::Value::Undefined) => (None, None),
        Ok(v) => (serde_json::to_value(&v).ok(), None),
        Err(e) => (None, Some(e.to_string())),
    }
}

/// The data a case runs with: the set's data with the case's merged over it.
pub fn case_data(set: &PolicySet, case: &Case) -> Value {
    let mut data = set.data();
    if let Some(overlay) = &case.data {
        merge(&mut data, overlay);
    }
    data
}

/// Deep-merges `overlay` into `base`; the overlay wins where both have a non-object value.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Whether `got` has every key of `want` with an equal value (see [`canonical`]).
pub fn matches(want: &Value, got: &Value) -> bool {
    match (want.as_object(), got.as_object()) {
        (Some(w), Some(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| canonical(v) == canonical(gv))),
        _ => canonical(want) == canonical(got),
    }
}

/// A form in which equal decision documents are equal: numbers as floats, lists of strings
/// sorted (Rego sets have no order a reader should depend on).
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Number(n.clone()), Value::Number),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(canonical).collect();
            if items.iter().all(Value::is_string) {
                items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            Value::Array(items)
        }
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        other => other.clone(),
    }
}

/// The `test_*` rules a module defines, as `<package>.<rule>` (each once).
pub fn test_rules(text: &str) -> Vec<String> {
    let mut package = None;
    let mut rules: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("package ") {
            package = Some(rest.trim().to_owned());
            continue;
        }
        let Some(pkg) = &package else { continue };
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let rule = format!("{pkg}.{name}");
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repo_cases_decide_the_same_with_the_compiled_engine() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = PolicySet::load(
            &dir,
            "data.reflex.decision",
            std::time::Duration::from_secs(5),
        )
        .expect("the repo's policies load")
        .with_engine(super::super::PolicyEngine::Compiled);
        assert!(set.is_compiled());
        let cases = all_cases(&dir).expect("cases");
        assert!(!cases.is_empty());
        for (path, case) in cases {
            // decide_case decides with the interpreter and the VM and reports any difference.
            let (got, error) = decide_case(&set, &case);
            assert!(
                got.as_ref().is_some_and(|g| matches(&case.want, g)),
                "{}: {}: got {got:?}, error {error:?}",
                path.display(),
                case.note
            );
        }
    }
    use serde_json::json;

    #[test]
    fn finds_test_rules_per_package() {
        let text = "package reflex.sla_test\n\nimport rego.v1\n\ntest_late if {\n\tx\n}\ntest_late if y\ntest_on_time := true\n  test_indented if z\nhelper_test if w\n";
        assert_eq!(
            test_rules(text),
            ["reflex.sla_test.test_late", "reflex.sla_test.test_on_time"]
        );
    }

    #[test]
    fn want_is_checked_key_by_key_numbers_by_value_sets_unordered() {
        let got = json!({"allow": false, "reasons": ["b", "a"], "obligations": {"n": 3.0}});
        assert!(matches(&json!({"allow": false}), &got));
        assert!(matches(&json!({"reasons": ["a", "b"]}), &got));
        assert!(matches(&json!({"obligations": {"n": 3}}), &got));
        assert!(!matches(&json!({"allow": true}), &got));
        assert!(!matches(&json!({"reasons": ["a"]}), &got));
        assert!(!matches(&json!({"missing": 1}), &got));
    }

    #[test]
    fn case_data_overrides_deeply() {
        let mut base = json!({"limits": {"EUR": 500, "USD": 550}, "other": 1});
        merge(&mut base, &json!({"limits": {"EUR": 100}}));
        assert_eq!(
            base,
            json!({"limits": {"EUR": 100, "USD": 550}, "other": 1})
        );
    }

    #[test]
    fn runs_rules_and_cases_and_reports_failures_with_what_they_got() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        w(
            "p.rego",
            "package reflex\ndecision := {\"allow\": input.n < data.max, \"reasons\": []}\n",
        );
        w("d.json", "{\"max\": 10}");
        w("p_test.rego", "package reflex_test\ntest_small if data.reflex.decision.allow with input as {\"n\": 1}\ntest_wrong if data.reflex.decision.allow with input as {\"n\": 99}\n");
        w("tests/cases.yaml", "cases:\n  - note: small\n    input: {n: 1}\n    want: {allow: true}\n  - note: override\n    input: {n: 5}\n    data: {max: 3}\n    want: {allow: false}\n  - note: wrong\n    input: {n: 50}\n    want: {allow: true}\n");
        let report = run(
            dir.path(),
            "data.reflex.decision",
            std::time::Duration::from_secs(1),
        )
        .expect("runs");
        assert_eq!(report.outcomes.len(), 5);
        assert_eq!(report.failed(), 2, "{report}");
        let text = report.to_string();
        assert!(text.contains("FAIL data.reflex_test.test_wrong"), "{text}");
        assert!(text.contains("FAIL tests/cases.yaml: wrong"), "{text}");
        assert!(
            text.contains("got:  {\"allow\":false,\"reasons\":[]}"),
            "{text}"
        );
        assert!(text.ends_with("3 passed, 2 failed"), "{text}");
        // The test module is not part of the production set.
        let set = PolicySet::load(
            dir.path(),
            "data.reflex.decision",
            std::time::Duration::from_secs(1),
        )
        .expect("loads");
        assert!(!set.packages().contains(&"data.reflex_test".to_owned()));
    }
}
