//! Wire-format events through the real schema registry that `make up` starts (Apicurio Registry,
//! Confluent API; `REFLEX_TEST_REGISTRY` overrides the URL).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apache_avro::types::Value as AvroValue;
use reflex::registry::HttpRegistry;
use reflex::role::actions::{self as worker, RunOptions};
use reflex::schema::{avro, wire, Format};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// The registry the tests use.
pub fn registry_url() -> String {
    std::env::var("REFLEX_TEST_REGISTRY")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

/// A test's own event types (unique subjects), schemas, an allow-all policy and topics.
pub struct RegistryEnv {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub events: String,
    pub audit: String,
    pub dlq: String,
    /// Avro type: `<run>.payment.settled`.
    pub avro_type: String,
    /// JSON Schema type: `<run>.order.noted`.
    pub json_type: String,
}

pub const AVRO_FIELDS: &str = r#"[{"name":"payment_id","type":"string"},{"name":"amount","type":"double"},
    {"name":"note","type":["null","string"],"default":null}]"#;

impl RegistryEnv {
    pub fn new(registry: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = format!("it{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let avro_type = format!("{run}.payment.settled");
        let json_type = format!("{run}.order.noted");
        let schemas = dir.path().join("schemas");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&schemas).expect("mkdir");
        std::fs::create_dir_all(&policies).expect("mkdir");
        let avsc = format!(
            r#"{{"type":"record","name":"settled","namespace":"{run}.payment","fields":{AVRO_FIELDS}}}"#
        );
        std::fs::write(schemas.join(format!("{avro_type}.avsc")), avsc).expect("write");
        let json_schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#", "title": json_type, "type": "object",
            "required": ["order_id", "qty"],
            "properties": {"order_id": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}
        });
        std::fs::write(
            schemas.join(format!("{json_type}.json")),
            json_schema.to_string(),
        )
        .expect("write");
        std::fs::write(
            policies.join("allow.rego"),
            "package reflex\ndecision := {\"allow\": true, \"reasons\": [], \"obligations\": {}}\nredact := []\n",
        )
        .expect("write");
        let env = Self {
            config_path: dir.path().join("reflex.toml"),
            events: format!("{run}.events"),
            audit: format!("{run}.audit"),
            dlq: format!("{run}.dlq"),
            avro_type,
            json_type,
            dir,
        };
        let text = format!(
            r#"
[kafka]
brokers = "{brokers}"
[kafka.consumer]
"session.timeout.ms" = "6000"
[topics]
events = ["{events}"]
audit = "{audit}"
dlq = "{dlq}"
retry = "{dlq}.retry"
partitions = 1
[telemetry]
listen = ""
[roles.actions]
group_id = "{events}.group"
[roles.lake]
group_id = "{events}.lake"
[lake]
store = "lake"
[registry]
url = "{registry}"
timeout = "2s"
[actions.note]
kind = "log"
types = ["{avro}", "{json}"]
"#,
            brokers = brokers(),
            events = env.events,
            audit = env.audit,
            dlq = env.dlq,
            avro = env.avro_type,
            json = env.json_type,
        );
        std::fs::write(&env.config_path, text).expect("write config");
        env
    }

    pub fn config(&self) -> reflex::config::Config {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        reflex::config::Config::from_toml(&text, &self.config_path, Vec::new())
            .expect("valid config")
    }

    pub fn schema_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Registers both schemas; returns (avro id, json id).
    pub async fn register(&self, registry: &HttpRegistry) -> (u32, u32) {
        let config = self.config();
        // A registry that has just started can time out its first requests on a loaded machine.
        let register = |ty: String| {
            let config = config.clone();
            async move {
                let (format, text) = config.schemas.source(&ty).expect("schema");
                let mut tries = 0;
                loop {
                    match registry.register(&ty, format, text).await {
                        Ok(registered) => return (format, registered.id),
                        Err(e) if tries < 5 => {
                            tries += 1;
                            eprintln!("registering {ty} (try {tries}): {e}");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Err(e) => panic!("registers {ty}: {e}"),
                    }
                }
            }
        };
        let (format, avro_id) = register(self.avro_type.clone()).await;
        assert_eq!(format, Format::Avro);
        let (_, json_id) = register(self.json_type.clone()).await;
        (avro_id, json_id)
    }

    /// The Avro schema of the Avro type.
    pub fn avro_schema(&self) -> apache_avro::Schema {
        let path = self
            .dir
            .path()
            .join("schemas")
            .join(format!("{}.avsc", self.avro_type));
        avro::parse(&std::fs::read_to_string(path).expect("read avsc")).expect("parses")
    }
}

/// An Avro `settled` datum.
pub fn settled(schema: &apache_avro::Schema, id: &str, amount: f64) -> Vec<u8> {
    let value = AvroValue::Record(vec![
        ("payment_id".into(), AvroValue::String(id.into())),
        ("amount".into(), AvroValue::Double(amount)),
        (
            "note".into(),
            AvroValue::Union(1, Box::new(AvroValue::String("n".into()))),
        ),
    ]);
    avro::encode(schema, value).expect("encodes")
}

fn binary(id: &str, ty: &str, value: Vec<u8>) -> Rec {
    Rec {
        key: Some(id.to_owned()),
        value: Some(value),
        headers: vec![
            ("ce_specversion".into(), b"1.0".to_vec()),
            ("ce_id".into(), id.as_bytes().to_vec()),
            ("ce_source".into(), b"/payments/gateway".to_vec()),
            ("ce_type".into(), ty.as_bytes().to_vec()),
            ("content-type".into(), b"application/avro".to_vec()),
        ],
    }
}

pub async fn drain(config: &reflex::config::Config) -> reflex::summary::Summary {
    let options = RunOptions {
        worker_id: "it-registry".into(),
        drain: true,
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        worker::run(config, options, CancellationToken::new()),
    )
    .await
    .expect("worker drains within two minutes")
    .expect("worker runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn wire_format_events_decode_validate_and_dead_letter() {
    let url = registry_url();
    let env = RegistryEnv::new(&url);
    let config = env.config();
    let registry = config.registry.clone().expect("registry configured");
    let (avro_id, json_id) = env.register(&registry).await;
    let schema = env.avro_schema();
    let good = settled(&schema, "pay-1", 12.5);
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"xyz");
    // A string field declaring about 2^62 bytes.
    let absurd = vec![0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    let json_ok = wire::frame(
        json_id,
        json!({"order_id": "o-1", "qty": 2}).to_string().as_bytes(),
    );
    let json_bad = wire::frame(
        json_id,
        json!({"order_id": "o-2", "qty": 0}).to_string().as_bytes(),
    );
    let records = vec![
        binary("avro-binary", &env.avro_type, wire::frame(avro_id, &good)),
        Rec {
            key: Some("plain-avro".into()),
            value: Some(wire::frame(avro_id, &good)),
            headers: vec![],
        },
        Rec {
            key: Some("plain-json".into()),
            value: Some(json_ok),
            headers: vec![("event_type".into(), env.json_type.as_bytes().to_vec())],
        },
        binary("wrong-subject", &env.json_type, wire::frame(avro_id, &good)),
        binary(
            "unknown-id",
            &env.avro_type,
            wire::frame(999_999_999, &good),
        ),
        binary("short", &env.avro_type, vec![0, 0, 1]),
        binary(
            "truncated",
            &env.avro_type,
            wire::frame(avro_id, &good[..good.len() - 1]),
        ),
        binary("trailing", &env.avro_type, wire::frame(avro_id, &trailing)),
        binary("absurd", &env.avro_type, wire::frame(avro_id, &absurd)),
        binary("json-invalid", &env.json_type, json_bad),
    ];
    reflex::kafka::ensure_topics(&config.kafka, &config.topics, &[])
        .await
        .expect("topics");
    produce(&env.events, &records).await;
    let summary = drain(&config).await;
    assert_eq!(summary.total(), 10, "{summary}");

    let audits = audits_by_key(&env.audit);
    let one = |key: &str| -> Value {
        let r = audits
            .get(key)
            .unwrap_or_else(|| panic!("no audit record for {key}: {:?}", audits.keys()));
        r[0].clone()
    };
    let avro_binary = one("avro-binary");
    assert_eq!(avro_binary["outcome"], "actioned", "{avro_binary}");
    assert_eq!(avro_binary["mode"], "binary");
    // Plain records get their id from their coordinates and their type from the schema or a header.
    let plain_avro = one(&format!("{}-0-1", env.events));
    assert_eq!(
        (plain_avro["outcome"].as_str(), plain_avro["type"].as_str()),
        (Some("actioned"), Some(env.avro_type.as_str()))
    );
    assert_eq!(plain_avro["mode"], "plain");
    let plain_json = one(&format!("{}-0-2", env.events));
    assert_eq!(
        (plain_json["outcome"].as_str(), plain_json["type"].as_str()),
        (Some("actioned"), Some(env.json_type.as_str()))
    );

    let expected = BTreeMap::from([
        ("wrong-subject", "schema_subject_mismatch"),
        ("unknown-id", "schema_not_found"),
        ("short", "wire_format"),
        ("truncated", "data_undecodable"),
        ("trailing", "data_undecodable"),
        ("absurd", "data_undecodable"),
        ("json-invalid", "schema_invalid"),
    ]);
    for (key, reason) in &expected {
        let audit = one(key);
        assert_eq!(audit["outcome"], "dead_lettered", "{key}: {audit}");
        assert_eq!(audit["reason"], *reason, "{key}: {audit}");
    }
    let dlq = read_all(&env.dlq);
    assert_eq!(dlq.len(), expected.len());
    for record in &dlq {
        let key = record.key.as_deref().unwrap_or_default();
        assert_eq!(
            Some(record.headers["reflex_reason"].as_str()),
            expected.get(key).copied(),
            "{key}"
        );
    }
    let mismatch = dlq
        .iter()
        .find(|r| r.key.as_deref() == Some("wrong-subject"))
        .expect("mismatch dead letter");
    assert!(
        mismatch.headers["reflex_error"].contains(&env.avro_type),
        "{:?}",
        mismatch.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schemas_commands_register_list_and_check() {
    let url = registry_url();
    let env = RegistryEnv::new(&url);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(reflex_bin())
            .args(args)
            .env("REFLEX_CONFIG", &env.config_path)
            .env("REFLEX_LOG", "warn")
            .output()
            .expect("reflex runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let run_json = |args: &[&str]| {
        let out = std::process::Command::new(reflex_bin())
            .args(args)
            .arg("--json")
            .env("REFLEX_CONFIG", &env.config_path)
            .env("REFLEX_LOG", "warn")
            .output()
            .expect("reflex runs");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} --json is not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.success(), json)
    };
    let subject = |report: &serde_json::Value, key: &str| {
        report[key]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["subject"] == env.avro_type.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("no {} in {report}", env.avro_type))
    };
    let (ok, text) = run(&["schemas", "list"]);
    assert!(ok && text.matches("not registered").count() == 2, "{text}");
    let (ok, list) = run_json(&["schemas", "list"]);
    assert!(ok, "{list}");
    assert_eq!(
        subject(&list, "subjects")["latest"],
        serde_json::Value::Null
    );
    assert_eq!(subject(&list, "subjects")["format"], "AVRO");
    let (ok, first) = run(&["schemas", "register"]);
    assert!(
        ok && first.contains(&format!("{:<24} version 1", env.avro_type)),
        "{first}"
    );
    let (ok, again) = run(&["schemas", "register"]);
    assert!(ok);
    assert_eq!(first, again, "registering is idempotent");
    let (ok, registered) = run_json(&["schemas", "register"]);
    assert!(ok, "{registered}");
    assert_eq!(subject(&registered, "registered")["version"], 1);
    let (ok, list) = run_json(&["schemas", "list"]);
    assert!(ok, "{list}");
    assert_eq!(subject(&list, "subjects")["current"]["version"], 1);
    assert_eq!(
        subject(&list, "subjects")["current"]["id"],
        subject(&registered, "registered")["id"]
    );
    let (ok, text) = run(&["schemas", "check"]);
    assert!(ok && text.contains("2 of 2 schemas compatible"), "{text}");
    assert!(
        text.contains("lake columns compatible"),
        "the lake's columns are checked too: {text}"
    );
    let (ok, check) = run_json(&["schemas", "check"]);
    assert!(ok, "{check}");
    assert_eq!(check["total"], 2, "{check}");
    assert_eq!(check["incompatible"], serde_json::json!([]), "{check}");
    assert_eq!(check["lake"]["error"], serde_json::Value::Null, "{check}");

    // A type change of an existing field is refused under BACKWARD compatibility.
    let avsc = env
        .schema_dir()
        .join("schemas")
        .join(format!("{}.avsc", env.avro_type));
    let changed = std::fs::read_to_string(&avsc).expect("read").replace(
        r#""name":"amount","type":"double""#,
        r#""name":"amount","type":"string""#,
    );
    std::fs::write(&avsc, changed).expect("write");
    let (ok, text) = run(&["schemas", "check"]);
    assert!(!ok, "an incompatible schema fails the check: {text}");
    assert!(
        text.contains(&format!("subject \"{}\"", env.avro_type)) && text.contains("BACKWARD"),
        "{text}"
    );
    assert!(
        text.contains("amount"),
        "the message names the incompatible field: {text}"
    );
    let (ok, check) = run_json(&["schemas", "check"]);
    assert!(!ok, "{check}");
    let incompatible = subject(&check, "incompatible");
    assert_eq!(incompatible["level"], "BACKWARD", "{check}");
    assert!(
        incompatible["messages"].to_string().contains("amount"),
        "{check}"
    );
}

/// The project's Python (with confluent-kafka), from `scripts/pyenv.sh`.
pub fn project_python() -> PathBuf {
    let out = std::process::Command::new(repo().join("scripts/pyenv.sh"))
        .output()
        .expect("scripts/pyenv.sh runs");
    assert!(
        out.status.success(),
        "pyenv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("python path").trim())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_from_confluent_kafka_python_are_actioned() {
    let url = registry_url();
    let env = RegistryEnv::new(&url);
    let config = env.config();
    reflex::kafka::ensure_topics(&config.kafka, &config.topics, &[])
        .await
        .expect("topics");
    let schemas = env.schema_dir().join("schemas");
    const COUNT: usize = 20;
    let out = std::process::Command::new(project_python())
        .arg(repo().join("tests/it/interop_producer.py"))
        .args([&brokers(), &url, &env.events])
        .arg(schemas.join(format!("{}.avsc", env.avro_type)))
        .arg(schemas.join(format!("{}.json", env.json_type)))
        .arg(COUNT.to_string())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "interop producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let summary = drain(&config).await;
    let counts = |ty: &str| summary.types.get(ty).cloned().unwrap_or_default();
    assert_eq!(
        counts(&env.avro_type).actioned,
        2 * COUNT as u64,
        "{summary}"
    );
    assert_eq!(counts(&env.json_type).actioned, COUNT as u64, "{summary}");
    assert_eq!(
        summary.total(),
        3 * COUNT as u64,
        "nothing dead-lettered: {summary}"
    );
    let audits = audits_by_key(&env.audit);
    let ce = &audits["py-ce-3"][0];
    assert_eq!(
        (ce["mode"].as_str(), ce["source"].as_str()),
        (Some("binary"), Some("/python/producer"))
    );

    // The lake holds them as typed rows.
    let lake = tokio::time::timeout(
        Duration::from_secs(120),
        reflex::role::lake::run(
            &config,
            reflex::role::lake::LakeRunOptions { drain: true },
            CancellationToken::new(),
        ),
    )
    .await
    .expect("lake drains within two minutes")
    .expect("lake runs");
    assert_eq!(
        lake.rows,
        6 * COUNT as u64,
        "{lake:?}: every event and its audit record"
    );
    let views = reflex::lake::views_sql(&config).await.expect("views");
    let avro_table = env.avro_type.replace('.', "_");
    let json_table = env.json_type.replace('.', "_");
    let sql = format!(
        "SELECT (SELECT count(*) FROM {avro_table}), (SELECT typeof(min(amount)) FROM {avro_table}), \
         (SELECT sum(amount) FROM {avro_table} WHERE source = '/python/producer'), \
         (SELECT count(*) FROM {json_table}), (SELECT typeof(min(qty)) FROM {json_table})"
    );
    let out = std::process::Command::new("python3")
        .arg(repo().join("scripts/lake-sql.py"))
        .args(["--json", &views, &sql])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "DuckDB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<Value> = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("[]"),
    )
    .expect("a JSON row");
    let expected_sum: f64 = (0..COUNT).map(|n| n as f64 + 0.5).sum();
    assert_eq!(row[0], json!(2 * COUNT), "{row:?}");
    assert_eq!(row[1], json!("DOUBLE"));
    assert_eq!(row[2].as_f64(), Some(expected_sum));
    assert_eq!(row[3], json!(COUNT));
    assert_eq!(
        row[4],
        json!("BIGINT"),
        "JSON Schema integer is a typed BIGINT column"
    );
}

/// A registry of the test's own (port and data), started and stopped by the project's script.
struct OwnRegistry {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnRegistry {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = 18_100 + (uuid::Uuid::new_v4().as_u128() % 800) as u16;
        let registry = Self { dir, port };
        registry.stack("up");
        registry
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }

    fn stack(&self, command: &str) {
        let mut cmd = std::process::Command::new(repo().join("scripts/stack.sh"));
        cmd.args([command, "registry"])
            .current_dir(repo())
            .env("REFLEX_STACK_DIR", self.dir.path())
            .env("REGISTRY_PORT", self.port.to_string());
        let shared_app = repo().join(".stack/registry/app/3.3.3");
        if shared_app.join("quarkus-run.jar").exists() {
            cmd.env("REGISTRY_APP", shared_app);
        }
        let out = cmd.output().expect("stack.sh runs");
        assert!(
            out.status.success(),
            "stack.sh {command} registry: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = std::process::Command::new(repo().join("scripts/stack.sh"))
            .args(["down", "registry"])
            .env("REFLEX_STACK_DIR", self.dir.path())
            .env("REGISTRY_PORT", self.port.to_string())
            .output();
    }
}

/// The registry (one of the test's own) stops under a worker: events whose schema is cached keep
/// flowing; events whose schema must be fetched wait, are not dead-lettered, and are actioned
/// once it is back. Prints the scenario's figures; `make chaos` keeps it down for 60 s.
#[tokio::test(flavor = "multi_thread")]
async fn chaos_registry_outage_holds_uncached_schemas_and_lets_cached_ones_flow() {
    let outage = if crate::chaos::full() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(4)
    };
    let own = OwnRegistry::start();
    let env = RegistryEnv::new(&own.url());
    let config = env.config();
    let registry = config.registry.clone().expect("registry configured");
    let (avro_id, json_id) = env.register(&registry).await;
    reflex::kafka::ensure_topics(&config.kafka, &config.topics, &[])
        .await
        .expect("topics");
    let schema = env.avro_schema();
    let avro_events = |from: usize| -> Vec<Rec> {
        (from..from + 10)
            .map(|n| {
                binary(
                    &format!("a-{n}"),
                    &env.avro_type,
                    wire::frame(avro_id, &settled(&schema, "p", 1.0)),
                )
            })
            .collect()
    };
    produce(&env.events, &avro_events(0)).await;

    let shutdown = CancellationToken::new();
    let worker_config = config.clone();
    let token = shutdown.clone();
    let worker = tokio::spawn(async move {
        let options = RunOptions {
            worker_id: "outage".into(),
            drain: false,
        };
        worker::run(&worker_config, options, token).await
    });
    wait_for_audits(&env.audit, 10).await;

    own.stack("down");
    let down = std::time::Instant::now();
    let down_ms = chrono::Utc::now().timestamp_millis();
    // The Avro schema is cached: its events keep flowing while the registry is down.
    produce(&env.events, &avro_events(10)).await;
    wait_for_audits(&env.audit, 20).await;
    let cached_flowed = down.elapsed();
    // The JSON schema was never used, so it is not cached: these events wait for the registry.
    let json_events: Vec<Rec> = (0..5)
        .map(|n| {
            let value = wire::frame(
                json_id,
                json!({"order_id": format!("o-{n}"), "qty": 1})
                    .to_string()
                    .as_bytes(),
            );
            let mut rec = binary(&format!("j-{n}"), &env.json_type, value);
            rec.headers.retain(|(k, _)| k != "content-type");
            rec
        })
        .collect();
    produce(&env.events, &json_events).await;
    // The rest of the outage, and at least 4 s, is the window in which nothing more may be
    // audited.
    tokio::time::sleep(
        outage
            .saturating_sub(down.elapsed())
            .max(Duration::from_secs(4)),
    )
    .await;
    assert_eq!(
        audits_by_key(&env.audit).len(),
        20,
        "events needing an uncached schema wait while the registry is down"
    );
    assert!(
        read_all(&env.dlq).is_empty(),
        "a registry outage is not the event's fault: nothing is dead-lettered"
    );

    own.stack("up");
    let up = std::time::Instant::now();
    let audits = wait_for_audits(&env.audit, 25).await;
    let recovered = up.elapsed();
    for n in 0..5 {
        assert_eq!(audits[&format!("j-{n}")][0]["outcome"], "actioned", "j-{n}");
    }
    let dead = read_all(&env.dlq);
    let lost = (0..20)
        .map(|n| format!("a-{n}"))
        .chain((0..5).map(|n| format!("j-{n}")))
        .filter(|id| {
            audits
                .get(id)
                .and_then(|a| a.last())
                .is_none_or(|a| a["outcome"] != "actioned")
        })
        .count();
    let duplicated = audits.values().filter(|a| a.len() > 1).count();
    // The longest an event produced during the outage waited: from its record's timestamp to
    // its decision.
    let produced_at: BTreeMap<String, i64> = read_all(&env.events)
        .iter()
        .map(|r| {
            (
                r.key.clone().unwrap_or_default(),
                r.timestamp_ms.unwrap_or(0),
            )
        })
        .collect();
    let longest = audits
        .iter()
        .filter_map(|(id, a)| {
            let done = chrono::DateTime::parse_from_rfc3339(a[0]["processed_at"].as_str()?).ok()?;
            let at = *produced_at.get(id)?;
            (at >= down_ms).then(|| done.timestamp_millis() - at)
        })
        .max()
        .unwrap_or(0);
    let table = format!(
        "| scenario | events | lost | duplicated | dead-lettered | cached schema flowed within | time to recover | longest pause |\n|---|---|---|---|---|---|---|---|\n| registry down {:.0} s | 25 | {lost} | {duplicated} | {} | {:.1} s | {:.1} s | {:.1} s |\n",
        outage.as_secs_f64(),
        dead.len(),
        cached_flowed.as_secs_f64(),
        recovered.as_secs_f64(),
        longest as f64 / 1000.0
    );
    eprintln!("\n{table}");
    crate::chaos::keep_note(
        "registry down (one actions worker, its own Apicurio)",
        &table,
    );
    assert!(dead.is_empty(), "nothing is dead-lettered");
    assert_eq!((lost, duplicated), (0, 0));
    shutdown.cancel();
    worker.await.expect("join").expect("worker stops cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn avro_events_become_typed_lake_rows() {
    use crate::lake::{LakeEnv, Store};
    let lake = LakeEnv::new(Store::Local, 1, "max_file_age = \"1s\"");
    let text = std::fs::read_to_string(&lake.env.config_path).expect("config");
    std::fs::write(
        &lake.env.config_path,
        format!("{text}\n[registry]\nurl = \"{}\"\n", registry_url()),
    )
    .expect("write");
    let config = lake.env.config();
    let registry = config.registry.clone().expect("registry configured");
    let (format, text) = config
        .schemas
        .source("payment.settled")
        .expect("the demo's Avro type");
    let id = registry
        .register("payment.settled", format, text)
        .await
        .expect("registers")
        .id;
    let schema = avro::parse(text).expect("parses");
    lake.env.create_topics().await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let records: Vec<Rec> = (0..5)
        .map(|n| {
            let datum = avro::encode(
                &schema,
                AvroValue::Record(vec![
                    ("payment_id".into(), AvroValue::String(format!("pay-{n}"))),
                    ("order_id".into(), AvroValue::String(format!("ord-{n}"))),
                    ("amount".into(), AvroValue::Double(10.0 + f64::from(n))),
                    ("currency".into(), AvroValue::Enum(0, "EUR".into())),
                    ("settled_at".into(), AvroValue::TimestampMillis(now_ms)),
                    (
                        "fee".into(),
                        AvroValue::Union(1, Box::new(AvroValue::Double(0.25))),
                    ),
                ]),
            )
            .expect("encodes");
            let mut rec = binary(
                &format!("settled-{n}"),
                "payment.settled",
                wire::frame(id, &datum),
            );
            rec.headers.retain(|(k, _)| k != "ce_source");
            rec.headers
                .push(("ce_source".into(), b"/payments/ledger".to_vec()));
            rec
        })
        .collect();
    produce(&lake.env.events, &records).await;
    let actions = lake.drain("actions");
    assert!(actions.contains("payment.settled"), "{actions}");
    lake.drain("lake");
    let rows = lake.query(
        "SELECT count(*), sum(amount), min(currency), min(fee), count(DISTINCT id), typeof(min(amount)) FROM payment_settled",
    );
    assert_eq!(rows[0][0], json!(5), "{rows:?}");
    assert_eq!(rows[0][1].as_f64(), Some(60.0), "{rows:?}");
    assert_eq!(rows[0][2], json!("EUR"));
    assert_eq!(rows[0][3].as_f64(), Some(0.25));
    assert_eq!(rows[0][4], json!(5));
    assert_eq!(
        rows[0][5],
        json!("DOUBLE"),
        "Avro double is a typed DOUBLE column"
    );
}
