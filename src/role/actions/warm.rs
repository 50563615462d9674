//! Warming the worker before its first record, so the first records of each type are not the
//! ones that pay for what the policy engines and the producer set up lazily.
//!
//! - [`policy`]: every evaluator decides each event type once on a made-up event (the
//!   interpreter prepares its rule schedule on its first evaluation, the VM its frames); the
//!   answers are thrown away and counted nowhere. It runs at start-up before the consumer
//!   subscribes, and for every reloaded policy set before the set decides a record.
//! - [`producer`]: the producer fetches the metadata of every topic it writes (audit,
//!   dead-letter, retry, emitted events), which also connects it to the brokers, instead of
//!   holding the first record of each topic until that metadata arrives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::Producer;
use serde_json::{json, Map};

use crate::event::{CloudEvent, Mode};
use crate::ingest::{self, Input};
use crate::policy::{Evaluator, PolicySet};
use crate::publisher::Publisher;

/// Id of the made-up events (never produced anywhere).
const WARM_UP_ID: &str = "reflex-warm-up";

/// What warming the policy evaluators did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyWarmed {
    /// Event types decided once per evaluator.
    pub types: usize,
    /// Evaluators warmed.
    pub evaluators: usize,
    /// Evaluations in all (each evaluator's engines, per type).
    pub evaluations: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// A made-up event of type `ty`: no data fields, so each type's rules run their lookups and
/// reach their defaults.
fn made_up(ty: &str, now: &chrono::DateTime<chrono::Utc>) -> CloudEvent {
    CloudEvent {
        specversion: "1.0".to_owned(),
        id: WARM_UP_ID.to_owned(),
        source: "reflex/warm-up".to_owned(),
        ty: ty.to_owned(),
        subject: None,
        time: Some(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        datacontenttype: Some("application/json".to_owned()),
        dataschema: None,
        data: Some(json!({})),
        extensions: BTreeMap::new(),
    }
}

/// Decides each of `types` once with every evaluator, on a made-up event read from `topic`,
/// built by the same function as a real record's policy input.
pub fn policy<'a>(
    evaluators: &mut [Evaluator],
    types: impl IntoIterator<Item = &'a str>,
    topic: &str,
) -> PolicyWarmed {
    let started = Instant::now();
    let now = chrono::Utc::now();
    let input = Input {
        topic,
        partition: 0,
        offset: 0,
        key: None,
        value: None,
        headers: &[],
        timestamp_ms: Some(now.timestamp_millis()),
    };
    let publisher = Publisher::unsigned();
    let enrichment = Map::new();
    let (mut count, mut evaluations) = (0, 0);
    for ty in types {
        count += 1;
        let event = made_up(ty, &now);
        let document = ingest::policy_input(
            &event,
            Mode::Structured,
            &input,
            &now,
            &publisher,
            &enrichment,
        );
        for evaluator in evaluators.iter_mut() {
            evaluations += evaluator.warm(document.clone());
        }
    }
    PolicyWarmed {
        types: count,
        evaluators: evaluators.len(),
        evaluations,
        elapsed: started.elapsed(),
    }
}

/// A reloaded policy set with its evaluators, warmed.
pub struct Reloaded {
    /// The set.
    pub set: Arc<PolicySet>,
    /// One warmed evaluator per decider.
    pub evaluators: Vec<Evaluator>,
    /// What warming them did.
    pub warmed: PolicyWarmed,
}

/// `deciders` evaluators of `set`, each having decided each of `types` once ([`policy`]).
/// Blocks: run it off the worker's loop.
pub fn reloaded(set: Arc<PolicySet>, deciders: usize, types: &[String], topic: &str) -> Reloaded {
    let mut evaluators: Vec<Evaluator> = (0..deciders.max(1)).map(|_| set.evaluator()).collect();
    let warmed = policy(&mut evaluators, types.iter().map(String::as_str), topic);
    Reloaded {
        set,
        evaluators,
        warmed,
    }
}

/// What warming the producer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerWarmed {
    /// Topics whose partitions and leaders the producer now knows.
    pub known: Vec<String>,
    /// Topics the brokers did not describe (not created yet, or not visible to this client);
    /// their first record waits for the metadata as before.
    pub unknown: Vec<String>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Fetches the metadata of each of `topics` with `producer`'s client, which caches it for the
/// first record sent to the topic (each request waits at most `timeout`). Only topics the
/// brokers already have are asked for by name: asking a producer's way for a missing topic
/// would have a broker that allows it create the topic. Blocks.
pub fn producer(
    producer: &crate::kafka::Producer,
    topics: &[String],
    timeout: Duration,
) -> ProducerWarmed {
    let started = Instant::now();
    let client = producer.client();
    let usable =
        |t: &rdkafka::metadata::MetadataTopic| t.error().is_none() && !t.partitions().is_empty();
    let existing: Vec<String> = client
        .fetch_metadata(None, timeout)
        .map(|m| {
            m.topics()
                .iter()
                .filter(|t| usable(t))
                .map(|t| t.name().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for topic in topics {
        if known.contains(topic) || unknown.contains(topic) {
            continue;
        }
        let described = existing.contains(topic)
            && client
                .fetch_metadata(Some(topic), timeout)
                .is_ok_and(|m| m.topics().iter().any(|t| t.name() == topic && usable(t)));
        if described {
            known.push(topic.clone());
        } else {
            unknown.push(topic.clone());
        }
    }
    ProducerWarmed {
        known,
        unknown,
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_event_has_the_type_and_no_data_fields() {
        let now = chrono::Utc::now();
        let event = made_up("order.placed", &now);
        assert_eq!(event.ty, "order.placed");
        assert_eq!(event.id, WARM_UP_ID);
        assert_eq!(event.data, Some(json!({})));
    }

    #[test]
    fn policy_warm_up_decides_each_type_with_every_evaluator() {
        let set = crate::policy::PolicySet::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
            "data.reflex.decision",
            Duration::from_secs(1),
        )
        .expect("the repository's policies load");
        let mut evaluators = vec![set.evaluator(), set.evaluator()];
        let warmed = policy(
            &mut evaluators,
            ["order.placed", "refund.requested"],
            "events.orders",
        );
        assert_eq!(warmed.types, 2);
        assert_eq!(warmed.evaluators, 2);
        // At least the interpreter of each evaluator, per type.
        assert!(warmed.evaluations >= 4, "{warmed:?}");
    }
}
