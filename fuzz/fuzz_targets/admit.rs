//! Arbitrary bytes through the whole admission path, as every consumer of records reads one:
//! size limit, structured / binary / wire-format decode, JSON Schema validation against the
//! repository's schemas, the policy input and the decision with the repository's policies
//! (`reflex::ingest::fuzz`). Kept inputs live in `fuzz/regressions/admit/`, which `cargo test`
//! replays without the fuzzer.
#![no_main]

use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

use libfuzzer_sys::fuzz_target;
use reflex::config::Config;
use reflex::ingest::fuzz::Harness;

fn harness() -> &'static Mutex<Harness> {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let path = root.join("config/reflex.toml");
        let text = std::fs::read_to_string(&path).expect("config/reflex.toml");
        // The shipped config names its schema and policy directories relative to the checkout.
        std::env::set_current_dir(&root).expect("cd to the checkout");
        let config = Config::from_toml(&text, &path, Vec::new()).expect("the shipped config");
        Mutex::new(Harness::new(&config))
    })
}

fuzz_target!(|data: &[u8]| {
    harness()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .run(data);
});
