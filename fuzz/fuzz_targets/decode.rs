//! Arbitrary bytes through every decoder a record meets: the CloudEvents envelope (structured and
//! binary), the wire-format header, and Avro datums of a schema with strings, unions, arrays and
//! maps. Nothing may panic or allocate without bound; everything must end in Ok or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reflex::event::CloudEvent;
use reflex::schema::{avro, wire};
use std::sync::OnceLock;

const SCHEMA: &str = r#"{"type":"record","name":"r","namespace":"fuzz","fields":[
    {"name":"s","type":"string"},{"name":"n","type":["null","long","string"]},
    {"name":"xs","type":{"type":"array","items":"double"}},
    {"name":"m","type":{"type":"map","values":"bytes"}},
    {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}}]}"#;

fn schema() -> &'static apache_avro::Schema {
    static SCHEMA_CELL: OnceLock<apache_avro::Schema> = OnceLock::new();
    SCHEMA_CELL.get_or_init(|| avro::parse(SCHEMA).expect("fuzz schema parses"))
}

fuzz_target!(|data: &[u8]| {
    let _ = CloudEvent::decode(Some(data), &[]);
    let headers: [(&str, &[u8]); 4] =
        [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/f"), ("ce_type", b"t")];
    let _ = CloudEvent::decode(Some(data), &headers);
    if let Ok((id, payload)) = wire::split(data) {
        let _ = avro::decode(schema(), id, payload);
    }
    let _ = avro::decode(schema(), 1, data);
});
