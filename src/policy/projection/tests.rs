use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::event::{CloudEvent, Mode};
use crate::policy::input::{document, projected, Context};
use crate::policy::{PolicyEngine, PolicySet};
use crate::publisher::Publisher;

/// The parts `data.reflex.decision` reads in a set of one module `text` (`None`: all).
fn reads_of(text: &str) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.rego"), text).expect("write policy");
    let set = PolicySet::load(dir.path(), "data.reflex.decision", Duration::from_secs(1))
        .expect("the policy loads");
    set.input_reads().map(Projection::paths)
}

fn repo() -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    PolicySet::load(&dir, "data.reflex.decision", Duration::from_secs(5))
        .expect("the repo's policies load")
}

#[test]
fn the_repo_decision_reads_a_few_fields() {
    let set = repo();
    let reads = set.input_reads().expect("less than the whole input");
    assert_eq!(
        reads.paths(),
        [
            "context.now",
            "enrichment.customer.blocked",
            "event.data.amount",
            "event.data.currency",
            "event.id",
            "event.source",
            "event.time",
            "event.type",
            "publisher.key_id",
            "publisher.verified",
        ]
    );
}

#[test]
fn a_reference_taken_whole_or_through_a_variable_keeps_its_value_whole() {
    let head = "package reflex\n";
    // `input` as a value: nothing can be left out.
    assert_eq!(reads_of(&format!("{head}decision := input\n")), None);
    // A variable part: the static prefix is kept whole.
    assert_eq!(
        reads_of(&format!(
            "{head}decision := {{\"allow\": true}} if {{ some k; input.event.data[k] == 1 }}\n"
        )),
        Some(vec!["event.data".to_owned()])
    );
    // A shallower read subsumes a deeper one, in either order.
    assert_eq!(
        reads_of(&format!(
            "{head}a if input.event.data.amount > 1\nb if count(input.event.data) > 0\n\
             decision := {{\"allow\": a, \"b\": b}}\n"
        )),
        Some(vec!["event.data".to_owned()])
    );
    // An import alias and a function argument are followed.
    assert_eq!(
        reads_of(&format!(
            "{head}import input.event as ev\nf(x) := x.amount\n\
             decision := {{\"allow\": f(ev.data) > 1, \"t\": ev.type}}\n"
        )),
        Some(vec!["event.data".to_owned(), "event.type".to_owned()])
    );
    // A `with` target is replaced, not read; what the body reads still counts.
    assert_eq!(
        reads_of(&format!(
            "{head}big if input.event.data.amount > 5\n\
             nine if {{ big with input.event.data.amount as 9 }}\n\
             decision := {{\"allow\": nine}}\n"
        )),
        Some(vec!["event.data.amount".to_owned()])
    );
}

fn event(value: serde_json::Value) -> CloudEvent {
    serde_json::from_value(value).expect("event")
}

/// Events unlike the ones the rules expect: extensions named like attributes, data that is not
/// an object, missing fields.
fn events() -> Vec<CloudEvent> {
    vec![
        event(
            json!({"specversion": "1.0", "id": "o-1", "source": "/shop/web", "type": "order.placed",
                     "subject": "ord-1", "time": "2026-03-01T10:00:00Z",
                     "data": {"amount": 20000, "currency": "EUR", "customer_id": "c-1",
                              "items": [{"sku": "S-1", "quantity": 1}]}}),
        ),
        event(
            json!({"specversion": "1.0", "id": "r-1", "source": "/desk", "type": "refund.requested",
                     "time": "2026-02-01T10:00:00Z", "data": "plain text"}),
        ),
        event(
            json!({"specversion": "1.0", "id": "r-2", "source": "/desk", "type": "refund.requested",
                     "data": {"amount": 900}}),
        ),
        event(
            json!({"specversion": "1.0", "id": "p-1", "source": "/payments/gateway",
                     "type": "payment.authorized", "time": "2026-03-01T09:00:00Z",
                     "partitionkey": 7, "amount": {"x": 1}}),
        ),
    ]
}

fn verified() -> Publisher {
    Publisher {
        verified: true,
        key_id: Some("desk".into()),
        status: crate::publisher::Status::Verified,
        claimed_key_id: Some("desk".into()),
    }
}

fn context(now: &str) -> Context<'_> {
    Context {
        topic: "events",
        partition: 1,
        offset: 7,
        mode: Mode::Structured,
        kafka_timestamp_ms: Some(1),
        now,
    }
}

#[test]
fn the_projected_document_is_the_projection_of_the_whole_one() {
    let set = repo();
    let reads = set.input_reads().expect("less than the whole input");
    let enrichment = json!({"customer": {"blocked": true, "tier": "gold"}, "stock": {"n": 1}});
    let enrichment = enrichment.as_object().cloned().unwrap_or_default();
    let now = "2026-03-01T10:00:00.250Z";
    for event in events() {
        for publisher in [Publisher::unsigned(), verified()] {
            let whole = document(&event, &publisher, &enrichment, &context(now));
            let json = serde_json::to_value(&whole).expect("json");
            let built = projected(&event, &publisher, &enrichment, &context(now), reads);
            // What the rules read is the same; the small members may be kept whole.
            let built_json = serde_json::to_value(&built).expect("json");
            assert_eq!(reads.json(&built_json), reads.json(&json), "{event:?}");
            assert_eq!(built["publisher"], whole["publisher"]);
            assert!(built["event"]["data"]["items"] == regorus::Value::Undefined);
        }
    }
}

#[test]
fn both_engines_decide_a_projected_input_as_the_whole_one() {
    let set = repo();
    let reads = set
        .input_reads()
        .expect("less than the whole input")
        .clone();
    let enrichments = [json!({}), json!({"customer": {"blocked": true}})];
    // Within the SLA for some events, past it for others (the emit obligation reads the event).
    for now in ["2026-03-01T10:00:00.250Z", "2026-04-01T10:00:00.250Z"] {
        for engine in [PolicyEngine::Interpreter, PolicyEngine::Compiled] {
            let mut evaluator = set.clone().with_engine(engine).evaluator();
            for event in events() {
                for enrichment in &enrichments {
                    let enrichment = enrichment.as_object().cloned().unwrap_or_default();
                    for publisher in [Publisher::unsigned(), verified()] {
                        let ctx = context(now);
                        let whole =
                            evaluator.decide(document(&event, &publisher, &enrichment, &ctx));
                        let built = evaluator.decide(projected(
                            &event,
                            &publisher,
                            &enrichment,
                            &ctx,
                            &reads,
                        ));
                        assert_eq!(built, whole, "{engine:?} {event:?} {now}");
                    }
                }
            }
        }
    }
}
