use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::policy::{PolicyEngine, PolicyError, PolicySet};

const DECISION: &str = "package reflex\ndecision := {\"allow\": true}\n";

/// A set of `files` (plus a decision) redacting with `rule`, and the directory it lives in.
fn load(files: &[(&str, &str)], rule: &str) -> (tempfile::TempDir, Result<PolicySet, PolicyError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("decision.rego"), DECISION).expect("write");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write policy");
    }
    let set = PolicySet::load(dir.path(), "data.reflex.decision", Duration::from_secs(1))
        .and_then(|s| s.with_redaction(rule));
    (dir, set)
}

fn refused(files: &[(&str, &str)], rule: &str) -> String {
    let (_dir, set) = load(files, rule);
    set.expect_err("refused").to_string()
}

fn repo() -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicySet::load(&dir, "data.reflex.decision", Duration::from_secs(5))
        .and_then(|s| s.with_redaction(DEFAULT_RULE))
        .expect("the repo's policies load")
}

fn event(value: serde_json::Value) -> CloudEvent {
    serde_json::from_value(value).expect("event")
}

fn order(id: &str) -> CloudEvent {
    event(
        json!({"specversion": "1.0", "id": id, "source": "/shop/web", "type": "order.placed",
                 "data": {"order_id": "ord-1", "customer_id": "c-1", "amount": 5, "currency": "EUR"}}),
    )
}

fn payment(id: &str) -> CloudEvent {
    event(
        json!({"specversion": "1.0", "id": id, "source": "/payments/gateway",
                 "type": "payment.authorized", "data": {"card_last4": "4242"}}),
    )
}

#[test]
fn the_repo_redaction_rule_reads_only_the_event_type() {
    let set = repo();
    let rule = set.redaction().expect("redaction configured");
    assert_eq!(rule.entry, "data.reflex.redact");
    assert_eq!(rule.reads, Reads::Fields(vec!["event.type".to_owned()]));
}

#[test]
fn a_rule_reading_the_clock_of_the_decision_is_refused() {
    let msg = refused(
        &[(
            "r.rego",
            "package reflex\nredact contains \"data.x\" if {\n\tinput.context.now > \"2026\"\n}\n",
        )],
        DEFAULT_RULE,
    );
    assert!(
        msg.starts_with(
            "redaction rule data.reflex.redact reads input.context.now through data.reflex.redact ("
        ) && msg.ends_with("r.rego:3); redaction may read only input.event"),
        "{msg}"
    );
    // So is one asking the clock itself.
    let msg = refused(
        &[(
            "r.rego",
            "package reflex\nredact contains \"data.x\" if time.now_ns() > 0\n",
        )],
        DEFAULT_RULE,
    );
    assert!(
        msg.contains("reads time.now_ns() through data.reflex.redact"),
        "{msg}"
    );
}

#[test]
fn enrichment_read_by_a_helper_in_another_package_is_refused() {
    let helper = "package acme.customers\n\nvip if input.enrichment.x.tier == \"gold\"\n";
    let rule = "package reflex\nredact := [\"data.email\"] if data.acme.customers.vip\n";
    let msg = refused(
        &[("customers.rego", helper), ("r.rego", rule)],
        DEFAULT_RULE,
    );
    assert!(
        msg.starts_with(
            "redaction rule data.reflex.redact reads input.enrichment.x.tier through data.acme.customers.vip ("
        ) && msg.contains("customers.rego:3)")
            && msg.ends_with("redaction may read only input.event"),
        "{msg}"
    );
}

#[test]
fn input_reached_through_an_import_alias_is_refused() {
    let helper =
        "package acme.audit\n\nfields contains \"data.note\" if input.enrichment.flagged\n";
    let rule = "package reflex.privacy\n\nimport data.acme.audit as rules\n\nhide := [f | some f in rules.fields]\n";
    let msg = refused(
        &[("audit.rego", helper), ("privacy.rego", rule)],
        "data.reflex.privacy.hide",
    );
    assert!(
        msg.contains("redaction rule data.reflex.privacy.hide reads input.enrichment.flagged through data.acme.audit.fields"),
        "{msg}"
    );
    // An alias of the input itself.
    let rule = "package reflex\n\nimport input.context as ctx\n\nredact := [\"data.x\"] if ctx.topic == \"t\"\n";
    let msg = refused(&[("r.rego", rule)], DEFAULT_RULE);
    assert!(
        msg.contains("reads input.context.topic through data.reflex.redact"),
        "{msg}"
    );
}

#[test]
fn the_whole_input_is_refused() {
    let rule =
        "package reflex\nredact := [\"data.x\"] if object.get(input, \"event\", null) != null\n";
    let msg = refused(&[("r.rego", rule)], DEFAULT_RULE);
    assert!(
        msg.contains("reads input through data.reflex.redact"),
        "{msg}"
    );
    let rule = "package reflex\nredact := [\"data.x\"] if input[k].type == \"t\"\n";
    let msg = refused(&[("r.rego", rule)], DEFAULT_RULE);
    assert!(
        msg.contains("reads input[…] through data.reflex.redact"),
        "{msg}"
    );
}

#[test]
fn a_missing_or_misnamed_rule_is_refused() {
    let msg = refused(&[], DEFAULT_RULE);
    assert!(
        msg.contains("redaction rule data.reflex.redact ([policy] redact) is not defined")
            && msg.contains("data.reflex"),
        "{msg}"
    );
    let msg = refused(&[], "reflex.redact");
    assert!(
        msg.contains("\"reflex.redact\"") && msg.contains("not a rule path"),
        "{msg}"
    );
    // "" turns redaction off.
    let (_dir, set) = load(&[], "");
    assert!(set.expect("loads").redaction().is_none());
}

#[test]
fn fields_read_through_variables_make_the_whole_event_the_key() {
    let rule = "package reflex\nredact contains p if { some k; input.event.data[k] == \"secret\"; p := concat(\".\", [\"data\", k]) }\n";
    let (_dir, set) = load(&[("r.rego", rule)], DEFAULT_RULE);
    assert_eq!(
        set.expect("loads").redaction().map(|r| &r.reads),
        Some(&Reads::Whole)
    );
    let rule = "package reflex\nredact := [\"data.x\"] if input.event.data.country == \"DE\"\nredact := [] if input.event.data.country != \"DE\"\n";
    let (_dir, set) = load(&[("r.rego", rule)], DEFAULT_RULE);
    assert_eq!(
        set.expect("loads").redaction().map(|r| r.reads.clone()),
        Some(Reads::Fields(vec!["event.data.country".to_owned()]))
    );
}

#[test]
fn orders_and_payments_redact_their_own_fields_with_either_engine() {
    let set = repo();
    let compiled = set.clone().with_engine(PolicyEngine::Compiled);
    for mut evaluator in [set.evaluator(), compiled.evaluator()] {
        let paths = evaluator.redaction(&order("o-1")).expect("paths");
        assert_eq!(&paths[..], ["data.customer_id"]);
        let paths = evaluator.redaction(&payment("p-1")).expect("paths");
        assert_eq!(&paths[..], ["data.card_last4"]);
        let refund = event(
            json!({"specversion": "1.0", "id": "r", "source": "/s", "type": "refund.requested"}),
        );
        assert!(evaluator.redaction(&refund).expect("paths").is_empty());
    }
}

#[test]
fn a_rule_that_cannot_say_fails_closed() {
    let cases = [
        (
            "redact := [sprintf(\"%v\", [1 / 0])] if input.event.type == \"t\"\n",
            Failure::Error,
        ),
        (
            "redact := [\"data.x\"] if input.event.type == \"other\"\n",
            Failure::Undefined,
        ),
        (
            "redact := {\"data.x\": 1} if input.event.type == \"t\"\n",
            Failure::Malformed,
        ),
        (
            "redact := [1] if input.event.type == \"t\"\n",
            Failure::Malformed,
        ),
    ];
    let e = event(json!({"specversion": "1.0", "id": "a", "source": "/s", "type": "t"}));
    for (body, want) in cases {
        let (_dir, set) = load(
            &[("r.rego", &format!("package reflex\n{body}"))],
            DEFAULT_RULE,
        );
        let before = telemetry::redaction_failures(want);
        let err = set
            .expect("loads")
            .evaluator()
            .redaction(&e)
            .expect_err(body);
        assert_eq!(err.failure, want, "{body}: {err}");
        assert!(
            err.to_string()
                .starts_with("redaction rule data.reflex.redact "),
            "{err}"
        );
        assert!(telemetry::redaction_failures(want) > before);
    }
    // An error inside one body of a partial set fails the whole redaction closed, with either
    // engine: the redaction rule always runs on the interpreter.
    let rule = "package reflex\nredact contains \"data.a\"\nredact contains p if { input.event.type == \"t\"; p := sprintf(\"%v\", [1 / 0]) }\n";
    let (_dir, set) = load(&[("r.rego", rule)], DEFAULT_RULE);
    let set = set.expect("loads");
    let err = set
        .evaluator()
        .redaction(&e)
        .expect_err("the interpreter fails closed");
    assert_eq!(err.failure, Failure::Error);
    let vm = set.with_engine(PolicyEngine::Compiled);
    let err = vm
        .evaluator()
        .redaction(&e)
        .expect_err("fails closed with the compiled engine too");
    assert_eq!(err.failure, Failure::Error);
    let err = crate::policy::Evaluator::unloaded()
        .redaction(&e)
        .expect_err("no policy");
    assert_eq!(err.failure, Failure::NoPolicy);
    // No redaction configured: nothing to redact.
    let (_dir, set) = load(&[], "");
    assert!(set
        .expect("loads")
        .evaluator()
        .redaction(&e)
        .expect("paths")
        .is_empty());
}

#[test]
fn the_cache_evaluates_once_per_key_and_never_across_revisions() {
    let set = repo();
    let mut evaluator = set.evaluator();
    for i in 0..5 {
        evaluator
            .redaction(&order(&format!("o-{i}")))
            .expect("paths");
        evaluator
            .redaction(&payment(&format!("p-{i}")))
            .expect("paths");
    }
    assert_eq!(
        evaluator.redaction_stats(),
        RedactionStats {
            evaluations: 2,
            hits: 8
        }
    );
    // The same rule in a new revision that redacts more: a new evaluator, a new cache.
    let rule = "package reflex\nredact := [\"data.customer_id\", \"data.email\"] if input.event.type == \"order.placed\"\n";
    let (_dir, next) = load(&[("r.rego", rule)], DEFAULT_RULE);
    let next = next.expect("loads");
    assert_ne!(next.revision(), set.revision());
    let mut evaluator = next.evaluator();
    let paths = evaluator.redaction(&order("o-9")).expect("paths");
    assert_eq!(&paths[..], ["data.customer_id", "data.email"]);
    assert_eq!(evaluator.redaction_stats().evaluations, 1);
    // A rule reading the whole event has no key: evaluated for every event.
    let rule = "package reflex\nredact := [k | some k, _ in input.event.data]\n";
    let (_dir, whole) = load(&[("r.rego", rule)], DEFAULT_RULE);
    let mut evaluator = whole.expect("loads").evaluator();
    for i in 0..3 {
        evaluator
            .redaction(&order(&format!("o-{i}")))
            .expect("paths");
    }
    assert_eq!(evaluator.redaction_stats().evaluations, 3);
}

#[test]
fn the_cache_starts_over_when_full() {
    let rule = "package reflex\nredact := [\"data.x\"] if input.event.subject != \"\"\n";
    let (_dir, set) = load(&[("r.rego", rule)], DEFAULT_RULE);
    let mut evaluator = set.expect("loads").evaluator();
    evaluator.redactor.capacity = 2;
    let about = |subject: &str| {
        event(
            json!({"specversion": "1.0", "id": "a", "source": "/s", "type": "t", "subject": subject}),
        )
    };
    for subject in ["a", "b", "a", "b", "c", "a"] {
        evaluator.redaction(&about(subject)).expect("paths");
    }
    // a, b evaluated; a, b cached; c clears the full cache; a evaluated again.
    assert_eq!(
        evaluator.redaction_stats(),
        RedactionStats {
            evaluations: 4,
            hits: 2
        }
    );
}

#[test]
fn a_reload_keeps_the_rule_and_refuses_an_impure_one() {
    let rule = "package reflex\nredact := [\"data.x\"] if input.event.type == \"t\"\n";
    let (dir, set) = load(&[("r.rego", rule)], DEFAULT_RULE);
    let set = set.expect("loads");
    let again = set.reload_from(dir.path()).expect("reloads");
    assert_eq!(again.redaction(), set.redaction());
    std::fs::write(
        dir.path().join("r.rego"),
        "package reflex\nredact := [\"data.x\"] if input.enrichment.flag\n",
    )
    .expect("write");
    let err = set.reload_from(dir.path()).expect_err("impure");
    assert!(
        matches!(err, PolicyError::ImpureRedaction { ref through, .. } if through == "data.reflex.redact"),
        "{err}"
    );
}

#[test]
fn cache_keys_read_the_same_values_as_the_policy_input() {
    let e = event(
        json!({"specversion": "1.0", "id": "a", "source": "/s", "type": "t",
                         "subject": "sub", "traceparent": "00-1",
                         "data": {"a": {"b": [1, 2]}, "n": null}}),
    );
    let doc = serde_json::to_value(input::event_document(&e)).expect("json");
    for path in [
        "event.type",
        "event.subject",
        "event.time",
        "event.traceparent",
        "event.data.a",
        "event.data.a.b",
        "event.data.n",
        "event.data.missing",
        "event.type.x",
        "event.data.a.b.c",
    ] {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        let want = segments
            .iter()
            .try_fold(&doc, |v, s| v.as_object().and_then(|o| o.get(s)));
        let got = field(&e, &segments).map(|f| match f {
            Field::Str(s) => serde_json::Value::from(s),
            Field::Json(v) => v.clone(),
        });
        assert_eq!(got.as_ref(), want, "{path}");
    }
}
