//! The proof on the repository's policies and on each construct it refuses.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::policy::{Failure, InputFacts, PolicyEngine, PolicySet};
use crate::schema::SchemaRegistry;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What admission guarantees with the repository's schemas.
fn repo_facts() -> InputFacts {
    let schemas = SchemaRegistry::load(&repo().join("schemas")).expect("the repo's schemas load");
    InputFacts::validated(
        schemas
            .types()
            .filter_map(|ty| schemas.schema(ty).map(|s| (ty, s)))
            .collect::<Vec<_>>(),
    )
}

/// The reasons `auto` gives for a set of one module `p.rego` (and the data), with the repo's
/// schemas.
fn reasons(module: &str, data: serde_json::Value) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.rego"), module).expect("write policy");
    std::fs::write(dir.path().join("data.json"), data.to_string()).expect("write data");
    let set = PolicySet::load(dir.path(), "data.reflex.decision", Duration::from_secs(1))
        .expect("loads")
        .with_input_facts(repo_facts())
        .with_engine(PolicyEngine::Auto);
    assert_eq!(
        set.is_compiled(),
        set.not_compiled().is_empty(),
        "{:?}",
        set.not_compiled()
    );
    set.not_compiled()
        .iter()
        .map(|r| {
            r.strip_prefix(&format!("{}/", dir.path().display()))
                .unwrap_or(r)
                .to_owned()
        })
        .collect()
}

/// A module whose decision denies with the reasons of `deny`.
fn with_deny(rules: &str) -> String {
    format!(
        "package reflex\n\
         decision := {{\"allow\": count(deny) == 0, \"reasons\": [r | some r in deny]}}\n\
         {rules}"
    )
}

/// Asserts that `rules` are refused with one reason holding each of `wanted`.
fn refused(rules: &str, wanted: &[&str]) {
    let got = reasons(
        &with_deny(rules),
        json!({"limits": {"max": 10, "rate": 0.5}}),
    );
    assert!(!got.is_empty(), "{rules}: proved safe");
    for want in wanted {
        assert!(
            got.iter().any(|r| r.contains(want)),
            "{rules}: no reason says {want:?}: {got:#?}"
        );
    }
}

#[test]
fn the_repository_policies_are_proved_compiled_safe_with_their_schemas() {
    let set = PolicySet::load(
        &repo().join("policies"),
        "data.reflex.decision",
        Duration::from_secs(1),
    )
    .expect("the repo's policies load")
    .with_input_facts(repo_facts())
    .with_engine(PolicyEngine::Auto);
    assert_eq!(set.not_compiled(), [] as [String; 0]);
    assert!(set.is_compiled());
    assert_eq!(set.engine(), PolicyEngine::Compiled);
    assert_eq!(set.configured_engine(), PolicyEngine::Auto);
    // A reload keeps the facts and the choice.
    let reloaded = set.reload_from(&repo().join("policies")).expect("reloads");
    assert!(reloaded.is_compiled(), "{:?}", reloaded.not_compiled());
}

#[test]
fn without_the_data_schemas_the_amount_comparisons_are_not_proved() {
    let set = PolicySet::load(
        &repo().join("policies"),
        "data.reflex.decision",
        Duration::from_secs(1),
    )
    .expect("the repo's policies load")
    .with_engine(PolicyEngine::Auto);
    assert!(!set.is_compiled());
    assert_eq!(set.engine(), PolicyEngine::Interpreter);
    let why = set.not_compiled().join("\n");
    assert!(
        why.contains("business.rego:6: input.event.data.amount > data.limits.refund_auto_approve[input.event.data.currency] may raise in the compiled engine"),
        "{why}"
    );
    // The envelope's time and the context's clock are known, so the SLA rules are not in it.
    assert!(!why.contains("sla.rego"), "{why}");
}

#[test]
fn safe_constructs_are_proved() {
    let rules = r#"
default late := false
late if time.parse_rfc3339_ns(input.context.now) - time.parse_rfc3339_ns(input.event.time) > 60 * 1000000000
age := floor((time.parse_rfc3339_ns(input.context.now) - time.parse_rfc3339_ns(input.event.time)) / 1000000000)
big if { input.event.type == "order.placed"; input.event.data.amount > data.limits.max }
small if count(data.limits) < 3
known if input.event.source in {"/a", "/b"}
twice if input.event.type == "a"
twice if input.event.type == "b"
is_a(x) if x == "a"
deny contains "late" if late
deny contains "big" if { big; age > 0; is_a(input.event.type) }
deny contains item.sku if { some item in input.event.data.items; item.sku == "bad" }
deny contains "unknown" if { not known; not twice; not small }
unused := 1 / 0
"#;
    assert_eq!(
        reasons(&with_deny(rules), json!({"limits": {"max": 10}})),
        [] as [String; 0]
    );
}

#[test]
fn each_construct_that_may_raise_is_a_reason_with_its_place() {
    refused(
        r#"deny contains "x" if input.event.data.amount / input.event.data.n > 1"#,
        &[
            "p.rego:3: division input.event.data.amount / input.event.data.n may raise: the divisor is not a non-zero constant",
        ],
    );
    refused(
        r#"deny contains "x" if 1 / 0 > 1"#,
        &["division 1 / 0 may raise"],
    );
    refused(
        r#"deny contains "x" if input.event.data.amount % 2.5 == 1"#,
        &["modulo", "not a non-zero integer constant"],
    );
    refused(
        r#"deny contains "x" if data.limits.rate % 2 == 1"#,
        &["the dividend may be a number with a fraction"],
    );
    refused(
        r#"deny contains "x" if input.event.id + 1 > 1"#,
        &["input.event.id + 1 may raise: its operands are not both known to be numbers"],
    );
    refused(
        r#"deny contains "x" if { x := walk(input) }"#,
        &["walk() is not on the list of builtins proved not to raise"],
    );
    refused(
        r#"deny contains "x" if { r := http.send({"method": "get", "url": "http://x"}); r.status_code == 500 }"#,
        &["http.send() is not on the list"],
    );
    refused(
        r#"deny contains "x" if { sprintf("%d", [input.event.id]) == "1" }"#,
        &["sprintf() is not on the list"],
    );
    refused(
        r#"deny contains "x" if { f with input.event.id as "1" }
f if input.event.id == "1""#,
        &["p.rego:3: `with` is not proved"],
    );
    refused(
        r#"limit := 1 if input.event.type == "a"
limit := 2 if input.event.source == "b"
deny contains "x" if limit > 0"#,
        &["p.rego:3: data.reflex.limit is defined 2 times with values that may differ"],
    );
    refused(
        r#"f(x) := 1 if x == "a"
f(x) := 2 if x != "b"
deny contains "x" if f(input.event.id) > 0"#,
        &["data.reflex.f is defined 2 times"],
    );
    refused(
        r#"sku := s if { some item in input.event.data.items; s := item.sku }
deny contains sku if sku"#,
        &["data.reflex.sku iterates in its body and its value is not constant"],
    );
    refused(
        r#"skus[k] := v if { some k, v in input.event.data.items }
deny contains "x" if count(skus) > 0"#,
        &["the partial object rule data.reflex.skus may give one key two values"],
    );
    refused(
        r#"deny contains "x" if count({k: 1 | some k in input.event.data.items}) > 0"#,
        &["the object comprehension"],
    );
    refused(
        r#"deny contains "x" if time.parse_rfc3339_ns(input.event.data.placed_at) > 0"#,
        &["time.parse_rfc3339_ns(input.event.data.placed_at) may raise: argument 1 may be"],
    );
    refused(
        r#"deny contains "x" if { input.event.type == "order.placed"; input.event.data.amount > "100" }"#,
        &["refuses to order values of different types: one side may be a number, the other a string"],
    );
    refused(
        r#"deny contains "x" if count(input.event.data.amount) > 1"#,
        &["count(input.event.data.amount) may raise: argument 1 may be"],
    );
    refused(
        r#"deny contains "x" if { x := -input.event.id; x == 1 }"#,
        &["-input.event.id may raise: the operand may be a string"],
    );
}

#[test]
fn a_rule_error_still_denies_under_the_default_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("p.rego"),
        with_deny(
            r#"deny contains "late" if input.event.data.n > 0
deny contains msg if { input.event.data.n == 13; msg := lower(1 / 0) }"#,
        ),
    )
    .expect("write policy");
    let set = PolicySet::load(dir.path(), "data.reflex.decision", Duration::from_secs(1))
        .expect("loads")
        .with_input_facts(repo_facts())
        .with_engine(PolicyEngine::default());
    assert_eq!(PolicyEngine::default(), PolicyEngine::Auto);
    assert!(
        !set.is_compiled(),
        "a set whose deny rule can raise runs on the interpreter"
    );
    let mut evaluator = set.evaluator();
    let input = regorus::Value::from(json!({"event": {"id": "e-1", "data": {"n": 13}}}));
    let d = evaluator.decide(input);
    assert_eq!((d.allow, d.failure), (false, Some(Failure::Error)), "{d:?}");
    assert_eq!(d.reasons, ["policy_error"]);
}

#[test]
fn the_cross_check_keeps_the_interpreters_deny_when_the_engines_disagree() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("p.rego"),
        with_deny(r#"deny contains msg if { input.event.data.n == 13; msg := lower(1 / 0) }"#),
    )
    .expect("write policy");
    let set = PolicySet::load(dir.path(), "data.reflex.decision", Duration::from_secs(1))
        .expect("loads")
        .with_cross_check(2)
        .with_engine(PolicyEngine::Compiled);
    assert!(set.is_compiled());
    let mut evaluator = set.evaluator();
    let raising = || regorus::Value::from(json!({"event": {"id": "e-13", "data": {"n": 13}}}));
    let (checks, disagreements) = (
        crate::policy::telemetry::cross_checks(),
        crate::policy::telemetry::cross_check_disagreements(),
    );
    // The first decision is checked: the VM drops the raising body and would allow, the
    // interpreter fails closed, and its deny is kept.
    let first = evaluator.decide(raising());
    assert_eq!(first.failure, Some(Failure::Error), "{first:?}");
    assert!(crate::policy::telemetry::cross_checks() > checks);
    assert!(crate::policy::telemetry::cross_check_disagreements() > disagreements);
    // The second is not (one in two): the VM's decision stands.
    let second = evaluator.decide(raising());
    assert!(second.allow, "{second:?}");
    // The third is checked again.
    assert!(!evaluator.decide(raising()).allow);
    // Without a cross-check the VM decides alone.
    let mut unchecked = set
        .with_cross_check(0)
        .with_engine(PolicyEngine::Compiled)
        .evaluator();
    assert!(unchecked.decide(raising()).allow);
}

#[test]
fn with_a_registry_wire_format_records_are_decided_by_the_interpreter_unless_proved_without_schemas(
) {
    let set = PolicySet::load(
        &repo().join("policies"),
        "data.reflex.decision",
        Duration::from_secs(1),
    )
    .expect("the repo's policies load")
    .with_input_facts(repo_facts().with_registry())
    .with_engine(PolicyEngine::Auto);
    assert!(set.is_compiled(), "{:?}", set.not_compiled());
    let why = set.not_compiled_wire().join("\n");
    assert!(
        why.contains("business.rego:6: input.event.data.amount >"),
        "{why}"
    );

    // An amount that is a string passes no file schema, but a registry's schema could allow it:
    // the interpreter orders it after numbers (deny), the VM would refuse to compare (no deny).
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("p.rego"),
        with_deny(r#"deny contains "big" if { input.event.type == "order.placed"; input.event.data.amount > 5 }"#),
    )
    .expect("write policy");
    let set = PolicySet::load(dir.path(), "data.reflex.decision", Duration::from_secs(1))
        .expect("loads")
        .with_input_facts(repo_facts().with_registry())
        .with_cross_check(0)
        .with_engine(PolicyEngine::Auto);
    assert!(set.is_compiled() && !set.not_compiled_wire().is_empty());
    let input = || {
        regorus::Value::from(
            json!({"event": {"id": "w-1", "type": "order.placed", "data": {"amount": "lots"}}}),
        )
    };
    let mut evaluator = set.evaluator();
    let wire = evaluator.decide_record(input(), true);
    assert_eq!(
        (wire.allow, wire.reasons.clone()),
        (false, vec!["big".to_owned()]),
        "{wire:?}"
    );
    assert!(
        evaluator.decide_record(input(), false).allow,
        "the VM decides the other records"
    );
}
