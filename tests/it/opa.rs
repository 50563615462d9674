//! The same answers as OPA: every case in `policies/tests/*.yaml` is decided by regorus and by
//! the real `opa` binary (built by `scripts/opa.sh` from the Go module proxy), and the decision
//! documents must be equal; OPA must also pass the Rego `test_*` rules.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reflex::policy::files::PolicyFiles;
use reflex::policy::testing::{all_cases, canonical, case_data, decide_case};
use reflex::policy::PolicySet;
use serde_json::Value;

use crate::common::repo;

/// The `opa` binary: `REFLEX_OPA`, or built (once) by `scripts/opa.sh`.
pub fn opa() -> PathBuf {
    if let Ok(path) = std::env::var("REFLEX_OPA") {
        return PathBuf::from(path);
    }
    let output = Command::new(repo().join("scripts/opa.sh"))
        .output()
        .expect("run scripts/opa.sh");
    assert!(
        output.status.success(),
        "scripts/opa.sh failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A directory OPA reads like reflex reads `policies/`: the modules, and the data document as
/// one `data.json` at the root (OPA would mount `data/limits.json` under `data.data`).
fn bundle(files: &PolicyFiles, data: &Value, with_tests: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let tests: &[_] = if with_tests { &files.tests } else { &[] };
    for file in files.modules.iter().chain(tests) {
        let name = file.rel.replace('/', "__");
        std::fs::write(dir.path().join(name), &file.text).expect("write module");
    }
    std::fs::write(dir.path().join("data.json"), data.to_string()).expect("write data");
    dir
}

/// The repository's policy directory, its files and the set compiled from them.
fn repo_policies() -> (PathBuf, PolicyFiles, PolicySet) {
    let dir = repo().join("policies");
    let files = PolicyFiles::read(&dir).expect("policies");
    let set = PolicySet::load(&dir, "data.reflex.decision", Duration::from_secs(5))
        .expect("policies load");
    (dir, files, set)
}

fn opa_decision(opa: &Path, bundle: &Path, input: &Value, entry: &str) -> Option<Value> {
    let input_file = tempfile::NamedTempFile::new().expect("input file");
    std::fs::write(input_file.path(), input.to_string()).expect("write input");
    let output = Command::new(opa)
        .args(["eval", "--format", "json", "--data"])
        .arg(bundle)
        .arg("--input")
        .arg(input_file.path())
        .arg(entry)
        .output()
        .expect("run opa eval");
    assert!(
        output.status.success(),
        "opa eval failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("opa prints JSON");
    result["result"][0]["expressions"][0].get("value").cloned()
}

#[test]
fn regorus_and_opa_return_the_same_decision_for_every_case() {
    let opa = opa();
    let (dir, files, set) = repo_policies();
    let cases = all_cases(&dir).expect("cases");
    assert!(cases.len() >= 10, "the suite has cases: {}", cases.len());
    let mut compared = 0;
    for (file, case) in &cases {
        let (ours, error) = decide_case(&set, case);
        assert!(
            error.is_none(),
            "{}: {}: {error:?}",
            file.display(),
            case.note
        );
        assert!(
            ours.is_some(),
            "{}: {}: undefined",
            file.display(),
            case.note
        );
        let bundle = bundle(&files, &case_data(&set, case), false);
        let theirs = opa_decision(&opa, bundle.path(), &case.input, set.entry());
        assert_eq!(
            ours.as_ref().map(canonical),
            theirs.as_ref().map(canonical),
            "{}: {}: regorus and OPA disagree",
            file.display(),
            case.note
        );
        compared += 1;
    }
    assert_eq!(compared, cases.len());
}

#[test]
fn opa_passes_the_rego_tests_too() {
    let opa = opa();
    let (_, files, set) = repo_policies();
    assert!(!files.tests.is_empty(), "there are Rego tests");
    let bundle = bundle(&files, &set.data(), true);
    let output = Command::new(&opa)
        .args(["test", "--format", "json"])
        .arg(bundle.path())
        .output()
        .expect("run opa test");
    let results: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    assert!(
        output.status.success(),
        "opa test failed: {results}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let passed = results.as_array().map_or(0, |r| r.len());
    assert!(passed >= 7, "opa ran the test rules: {results}");
}
