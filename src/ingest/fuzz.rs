//! The whole admission path on arbitrary bytes, for the `admit` fuzz target
//! (`fuzz/fuzz_targets/admit.rs`) and for the unit test that replays its kept inputs
//! (`fuzz/regressions/admit/`) on every `cargo test`.
//!
//! One input is one consumed record: its first byte says how the rest is read (a structured
//! record, a binary one with `ce_*` headers, or Confluent wire-format data), and the record goes
//! through [`Admitter::admit`] (size → decode → schema validation), then, if admitted, through
//! the policy input builders and [`decide`] with the repository's policies. Nothing may panic,
//! and what comes out must be consistent: an admitted event has a schema, a rejection says why,
//! a decision names the revision that took it.

use serde_json::Map;

use super::{
    decide, policy_document, Admitted, Admitter, DeadLetterReason, DecisionInput, EmitTopics,
    Input, Rejection,
};
use crate::config::Config;
use crate::event::CloudEvent;
use crate::policy::Evaluator;
use crate::publisher::Publisher;

/// Where one input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Too short to be a record.
    Empty,
    /// Rejected by admission, with its dead-letter reason.
    Rejected(DeadLetterReason),
    /// Admitted and decided: whether the policy allowed it.
    Decided {
        /// The decision's `allow`.
        allow: bool,
    },
}

/// What the admission path needs, made once per process.
pub struct Harness {
    admitter: Admitter,
    evaluator: Evaluator,
    emit: EmitTopics,
    types: Vec<String>,
    revision: String,
}

impl Harness {
    /// The admission path of `config`, without a schema registry (wire-format data is then
    /// rejected as `schema_not_found`, as a worker without one rejects it).
    pub fn new(config: &Config) -> Self {
        Self {
            admitter: Admitter::with(
                config.schemas.clone(),
                None,
                config.type_header.clone(),
                config.actions_role.max_event_bytes,
            ),
            evaluator: config.policy.evaluator(),
            emit: EmitTopics::new(config),
            types: config.schemas.types().map(str::to_owned).collect(),
            revision: config.policy.revision().to_owned(),
        }
    }

    /// Runs one input through admission and, if admitted, the decision; panics if an outcome
    /// is inconsistent.
    pub fn run(&mut self, data: &[u8]) -> Outcome {
        let Some((&mode, rest)) = data.split_first() else {
            return Outcome::Empty;
        };
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        match mode % 3 {
            // A structured record: the rest is the value.
            0 => self.record(Some(rest), &[], &now),
            // A binary record of a known type: the rest is `id \n source \n data`.
            1 => {
                let Some((&pick, rest)) = rest.split_first() else {
                    return Outcome::Empty;
                };
                let ty = self.types[usize::from(pick) % self.types.len().max(1)].clone();
                let mut parts = rest.splitn(3, |b| *b == b'\n');
                let id = parts.next().unwrap_or_default();
                let source = parts.next().unwrap_or_default();
                let value = parts.next();
                let headers: [(&str, &[u8]); 5] = [
                    ("ce_specversion", b"1.0"),
                    ("ce_id", id),
                    ("ce_source", source),
                    ("ce_type", ty.as_bytes()),
                    ("content-type", b"application/json"),
                ];
                self.record(value, &headers, &now)
            }
            // Wire-format data under an event-type header.
            _ => {
                let mut value = vec![0u8];
                value.extend_from_slice(rest);
                let headers: [(&str, &[u8]); 1] = [("event_type", b"order.placed")];
                self.record(Some(&value), &headers, &now)
            }
        }
    }

    fn record(
        &mut self,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        now: &chrono::DateTime<chrono::Utc>,
    ) -> Outcome {
        let input = Input {
            topic: "fuzz",
            partition: 0,
            offset: 0,
            key: None,
            value,
            headers,
            timestamp_ms: Some(1_700_000_000_000),
        };
        let admitted = self.admitter.admit(&input);
        self.fields_agree(&input, &admitted);
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(rejection) => {
                assert!(
                    !rejection.error.is_empty(),
                    "a rejection ({}) says why",
                    rejection.reason.code()
                );
                return Outcome::Rejected(rejection.reason);
            }
        };
        assert!(
            self.types.contains(&admitted.event.ty),
            "admitted an event of type {:?}, which has no schema",
            admitted.event.ty
        );
        let enrichment = Map::new();
        let publisher = Publisher::unsigned();
        let document = policy_document(
            &admitted.event,
            admitted.mode,
            &input,
            now,
            &publisher,
            &enrichment,
        );
        assert!(
            document["event"].is_object(),
            "the policy input holds the event"
        );
        let decision = decide(
            &mut self.evaluator,
            &DecisionInput {
                event: &admitted.event,
                mode: admitted.mode,
                input: &input,
                now,
                publisher: &publisher,
                enrichment: &enrichment,
                wire: admitted.wire,
            },
            &self.emit,
        );
        assert!(
            decision.obligations.contains_key("redact"),
            "every decision says what to redact"
        );
        assert!(!self.revision.is_empty());
        Outcome::Decided {
            allow: decision.allow,
        }
    }

    /// [`Admitter::admit_fields`] answers as `admit` does: the same event, or the same reason.
    /// Where a structured event's data reads onto a tape, its schema says there what it says of
    /// the data as a `Value`.
    fn fields_agree(&self, input: &Input<'_>, admitted: &Result<Admitted, Rejection>) {
        match (admitted, self.admitter.admit_fields(input)) {
            (Ok(admitted), Ok(fields)) => assert_eq!(
                fields.view().to_event(),
                admitted.event,
                "admit_fields read another event"
            ),
            (Err(rejected), Err(fields)) => assert_eq!(
                rejected.reason, fields.reason,
                "admit_fields rejected for another reason"
            ),
            (admitted, fields) => panic!(
                "admit and admit_fields disagree: {:?} against {:?}",
                admitted.as_ref().map(|a| &a.event).map_err(|r| r.reason),
                fields.map(|f| f.view().to_event()).map_err(|r| r.reason)
            ),
        }
        let Some(value) = input.value.filter(|_| input.headers.is_empty()) else {
            return;
        };
        let Ok(event) = CloudEvent::decode_structured_tape(value) else {
            return;
        };
        let (ty, Some(tape)) = (event.attributes().ty, event.tape()) else {
            return;
        };
        let schemas = &self.admitter.schemas;
        if let Some(valid) = schemas.valid_on_tape(ty, tape.root()) {
            if !tape.reads_as_value() {
                let violations = schemas.validate(ty, &tape.to_value());
                assert_eq!(
                    Some(valid),
                    violations.map(|v| v.is_empty()),
                    "the schema of {ty} judged the data on a tape otherwise"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn harness() -> Harness {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = root.join("config/reflex.toml");
        let text = std::fs::read_to_string(&path).expect("config/reflex.toml");
        let config = Config::from_toml(&text, &path, Vec::new()).expect("the shipped config");
        Harness::new(&config)
    }

    /// Every input the fuzzer found crashing or otherwise worth keeping, replayed without the
    /// fuzzer (which needs a nightly toolchain).
    #[test]
    fn the_kept_fuzz_inputs_pass_the_admission_path() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/admit");
        let mut harness = harness();
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/regressions/admit") {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("read input");
            let outcome = harness.run(&data);
            assert_ne!(
                outcome,
                Outcome::Empty,
                "{} is not a record",
                path.display()
            );
            inputs += 1;
        }
        assert!(inputs > 0, "no kept inputs in {}", dir.display());
    }

    /// A small deterministic generator (xorshift64*), so a failing mutation can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    /// One random edit of `data`: flip, insert, delete or duplicate bytes, or splice in a
    /// fragment that JSON and CloudEvents parsers care about.
    fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
        const FRAGMENTS: &[&[u8]] = &[
            b"\"",
            b"\\u0000",
            b"{",
            b"}",
            b"[",
            b"]",
            b"null",
            b"-1e999",
            b"1e309",
            b"\"data\":",
            b"\"type\":\"order.placed\"",
            b"\"time\":\"9999-99-99T99:99:99Z\"",
            b"\xff",
            b"\xf0\x9f",
            b"\n",
            b"0",
            b"18446744073709551616",
            b"\"specversion\":\"1.0\"",
        ];
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())];
                data.splice(at..at, fragment.iter().copied());
            }
            2 if at < data.len() => {
                let end = (at + 1 + rng.below(8)).min(data.len());
                data.drain(at..end);
            }
            3 if at < data.len() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            _ => data.insert(at, u8::try_from(rng.below(256)).unwrap_or(0)),
        }
    }

    /// Random mutations of the kept inputs (10,000 by default; `REFLEX_FUZZ_MUTATIONS` for more,
    /// `REFLEX_FUZZ_SEED` for others)
    /// through the admission path: what the fuzz target does, without its coverage guidance,
    /// on the stable toolchain. A panic names the input, so it can be kept in the regressions.
    #[test]
    fn mutations_of_the_kept_inputs_pass_the_admission_path() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/admit");
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("fuzz/regressions/admit")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("read input"))
            .collect();
        let rounds: usize = std::env::var("REFLEX_FUZZ_MUTATIONS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        let mut harness = harness();
        let seed = std::env::var("REFLEX_FUZZ_SEED")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0x5eed_0fad_0117);
        let mut rng = Rng(seed | 1);
        let mut decided = 0;
        for _ in 0..rounds {
            let mut data = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                mutate(&mut rng, &mut data);
            }
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness.run(&data)));
            match outcome {
                Ok(Outcome::Decided { .. }) => decided += 1,
                Ok(_) => {}
                Err(_) => panic!(
                    "the admission path panicked on {:?} (keep it in fuzz/regressions/admit/)",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
        assert!(
            decided > 0,
            "some mutations still pass admission and are decided"
        );
    }

    #[test]
    fn a_valid_binary_order_is_admitted_and_decided() {
        let mut harness = harness();
        let pick = harness
            .types
            .iter()
            .position(|t| t == "order.placed")
            .expect("order.placed has a schema");
        let mut data = vec![1, u8::try_from(pick).expect("few types")];
        let order = br#"{"order_id":"ord-1","customer_id":"c-1","amount":10.0,"currency":"EUR","items":[{"sku":"s","quantity":1}]}"#;
        data.extend_from_slice(b"o-1\n/shop/web\n");
        data.extend_from_slice(order);
        assert!(matches!(harness.run(&data), Outcome::Decided { .. }));
        // The same without its items: schema-invalid.
        let mut bad = data.clone();
        let at = bad.len() - br#","items":[{"sku":"s","quantity":1}]}"#.len();
        bad.truncate(at);
        bad.push(b'}');
        assert_eq!(
            harness.run(&bad),
            Outcome::Rejected(DeadLetterReason::SchemaInvalid)
        );
        // Wire-format data without a registry: its schema cannot be found.
        assert_eq!(
            harness.run(&[2, 0, 0, 0, 1, b'{', b'}']),
            Outcome::Rejected(DeadLetterReason::SchemaNotFound)
        );
    }
}
