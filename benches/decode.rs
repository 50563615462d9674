//! Decoding the demo's events: structured and binary CloudEvents, and Avro in the Confluent
//! wire format (schema cached) against a JSON parse of the same data, in one run.

use apache_avro::types::Value as AvroValue;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use reflex::event::CloudEvent;
use reflex::schema::{avro, wire};
use std::hint::black_box;

const PAYMENT_AVSC: &str = r#"{"type":"record","name":"authorized","namespace":"payment","fields":[
    {"name":"payment_id","type":"string"},{"name":"order_id","type":"string"},
    {"name":"amount","type":"double"},{"name":"currency","type":"string"},
    {"name":"method","type":"string"},{"name":"card_last4","type":["null","string"],"default":null}]}"#;

const PAYMENT_JSON: &str = r#"{"payment_id":"pay-42","order_id":"ord-42","amount":129.9,"currency":"EUR","method":"card","card_last4":"4242"}"#;

fn structured() -> String {
    format!(
        r#"{{"specversion":"1.0","id":"20261126-payment-42","source":"/payments/gateway","type":"payment.authorized","subject":"pay-42","time":"2026-11-26T05:00:00.000Z","datacontenttype":"application/json","data":{PAYMENT_JSON}}}"#
    )
}

fn bench(c: &mut Criterion) {
    let structured = structured();
    let (event, _) =
        CloudEvent::decode(Some(structured.as_bytes()), &[]).expect("demo event decodes");
    let (headers, value) = event.to_binary();
    let value = value.expect("data");
    let borrowed: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();

    let schema = avro::parse(PAYMENT_AVSC).expect("schema parses");
    let datum = avro::encode(
        &schema,
        AvroValue::Record(vec![
            ("payment_id".into(), AvroValue::String("pay-42".into())),
            ("order_id".into(), AvroValue::String("ord-42".into())),
            ("amount".into(), AvroValue::Double(129.9)),
            ("currency".into(), AvroValue::String("EUR".into())),
            ("method".into(), AvroValue::String("card".into())),
            (
                "card_last4".into(),
                AvroValue::Union(1, Box::new(AvroValue::String("4242".into()))),
            ),
        ]),
    )
    .expect("encodes");
    let framed = wire::frame(7, &datum);

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("cloudevent_structured", |b| {
        b.iter(|| CloudEvent::decode(Some(black_box(structured.as_bytes())), &[]).expect("decodes"))
    });
    group.bench_function("cloudevent_structured_tape", |b| {
        b.iter(|| {
            CloudEvent::decode_structured_tape(black_box(structured.as_bytes())).expect("decodes")
        })
    });
    group.bench_function("cloudevent_binary", |b| {
        b.iter(|| {
            CloudEvent::decode(Some(black_box(value.as_slice())), black_box(&borrowed))
                .expect("decodes")
        })
    });
    group.bench_function("data_avro_wire_cached_schema", |b| {
        b.iter(|| {
            let (id, payload) = wire::split(black_box(&framed)).expect("wire");
            avro::decode(&schema, id, payload).expect("decodes")
        })
    });
    group.bench_function("data_json_parse", |b| {
        b.iter(|| {
            serde_json::from_slice::<serde_json::Value>(black_box(PAYMENT_JSON.as_bytes()))
                .expect("parses")
        })
    });
    group.bench_function("data_json_tape", |b| {
        b.iter(|| reflex::event::tape::Tape::parse(black_box(PAYMENT_JSON)).expect("parses"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
