//! The lake role against the real broker and both stores (a local directory and the s3s-fs
//! server `make up` starts), read back with DuckDB through `scripts/lake-sql.py`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// Which store a test writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Local,
    S3,
}

pub fn s3_endpoint() -> String {
    std::env::var("REFLEX_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8014".into())
}

/// A test's topics plus a lake.
pub struct LakeEnv {
    pub env: TestEnv,
    pub root: String,
    pub schema_dir: PathBuf,
}

impl LakeEnv {
    /// Fresh topics, group and lake location; `lake` is extra `[lake]` keys.
    pub fn new(store: Store, partitions: i32, lake: &str) -> Self {
        Self::on(store, partitions, lake, &s3_endpoint())
    }

    /// The same, with the S3 store at `endpoint`.
    pub fn on(store: Store, partitions: i32, lake: &str, endpoint: &str) -> Self {
        let env = TestEnv::new(partitions);
        let dir = env.config_path.parent().expect("config dir").to_owned();
        let schema_dir = dir.join("schemas");
        std::fs::create_dir_all(&schema_dir).expect("mkdir");
        for entry in std::fs::read_dir(repo().join("schemas")).expect("schemas") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, schema_dir.join(path.file_name().expect("name"))).expect("copy");
        }
        let run = unique("lake");
        let root = match store {
            Store::Local => dir.join("lake").display().to_string(),
            Store::S3 => format!("s3://lake/{run}"),
        };
        let text = std::fs::read_to_string(&env.config_path).expect("config");
        let text = text.replace(
            &format!("dir = \"{}\"", repo().join("schemas").display()),
            &format!("dir = \"{}\"", schema_dir.display()),
        );
        let text = format!(
            "{text}\n[roles.lake]\ngroup_id = \"{run}.group\"\n[lake]\nstore = \"{root}\"\n{lake}\n[lake.s3]\nendpoint = \"{endpoint}\"\n",
        );
        std::fs::write(&env.config_path, text).expect("write config");
        Self {
            env,
            root,
            schema_dir,
        }
    }

    /// `reflex` with this test's configuration and the S3 credentials.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(reflex_bin());
        cmd.args(args)
            .env("REFLEX_CONFIG", &self.env.config_path)
            .env("REFLEX_LOG", "warn")
            .env_remove("REFLEX_CHAOS")
            // The test harness's own setting; the config names the brokers.
            .env_remove("REFLEX_TEST_BROKERS")
            .env(
                "AWS_ACCESS_KEY_ID",
                std::env::var("S3_ACCESS_KEY").unwrap_or_else(|_| "reflex".into()),
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                std::env::var("S3_SECRET_KEY").unwrap_or_else(|_| "reflex-secret".into()),
            )
            .stderr(Stdio::inherit());
        cmd
    }

    /// Starts the lake role.
    pub fn spawn_lake(&self, drain: bool) -> Child {
        let mut args = vec!["run", "--role", "lake"];
        if drain {
            args.push("--drain");
        }
        self.command(&args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("reflex starts")
    }

    /// Runs a role with `--drain` to the end and returns its standard output.
    pub fn drain(&self, role: &str) -> String {
        let child = self
            .command(&["run", "--role", role, "--drain"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("reflex starts");
        let out = wait_output(child, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "reflex run --role {role} --drain failed"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `reflex lake views`.
    pub fn views(&self) -> String {
        let out = self.command(&["lake", "views"]).output().expect("views");
        assert!(out.status.success(), "reflex lake views failed");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Runs `sql` in DuckDB after the views SQL; rows as JSON arrays.
    pub fn query(&self, sql: &str) -> Vec<Vec<Value>> {
        let views = self.views();
        let out = Command::new("python3")
            .arg(repo().join("scripts/lake-sql.py"))
            .arg("--json")
            .arg(&views)
            .arg(sql)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "DuckDB query failed: {}\nviews:\n{views}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Vec<Value>>(l).expect("a JSON row"))
            .collect()
    }

    /// One integer from a query.
    pub fn count(&self, sql: &str) -> i64 {
        self.query(sql)[0][0].as_i64().expect("an integer")
    }
}

/// Waits for a child with a deadline, killing it on timeout.
pub fn wait_output(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("reflex did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parquet files under a local directory.
fn parquet_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .map(|p| {
            if p.is_dir() {
                parquet_files(&p)
            } else {
                usize::from(p.extension().is_some_and(|x| x == "parquet"))
            }
        })
        .sum()
}

fn payment(id: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/payments", "type": "payment.authorized",
        "time": "2026-03-04T05:06:07Z",
        "data": {"payment_id": "pay-1", "order_id": "ord-1", "amount": 9.5, "currency": "EUR",
                 "method": "card"}
    })
}

async fn round_trip(store: Store) {
    let lake = LakeEnv::new(store, 2, "max_file_age = \"30s\"");
    lake.env.create_topics().await;
    let mut order = order("o-typed", "/shop/web", 123.5);
    order["time"] = json!("2026-03-04T05:06:07.250+01:00");
    order["data"]["items"] =
        json!([{"sku": "S-1", "quantity": 2, "unit_price": 61.75, "gift_wrap": true}]);
    order["data"]["placed_at"] = json!("2026-03-04T04:00:00Z");
    order["data"]["coupon"] = json!("SPRING");
    let mut records = vec![Rec::json("k", &order)];
    for n in 0..40 {
        records.push(Rec::json(
            &format!("k{n}"),
            &refund(&format!("r-{n}"), 10.0),
        ));
        records.push(Rec::json(&format!("p{n}"), &payment(&format!("p-{n}"))));
    }
    let mut invalid = refund("bad-1", 10.0);
    invalid["data"]["currency"] = json!("XXX");
    records.push(Rec::json("b", &invalid));
    let mut unknown = refund("unknown-1", 10.0);
    unknown["type"] = json!("ghost.type");
    records.push(Rec::json("u", &unknown));
    records.push(Rec::raw("m", b"not json"));
    produce(&lake.env.events, &records).await;
    lake.drain("actions");
    let summary = lake.drain("lake");
    // 81 valid events and 84 audit records; the 3 invalid events are not lake rows.
    assert!(summary.contains("168 records, 165 rows"), "{summary}");

    assert_eq!(lake.count("SELECT count(*) FROM order_placed"), 1);
    assert_eq!(lake.count("SELECT count(*) FROM refund_requested"), 40);
    assert_eq!(lake.count("SELECT count(*) FROM payment_authorized"), 40);
    let row = &lake.query(
        "SELECT amount, currency, items[1].quantity, items[1].unit_price, \
         epoch_ms(time), epoch_ms(placed_at), data_extra, date, hour, kafka_topic, \
         typeof(items[1].quantity), typeof(time) FROM order_placed",
    )[0];
    assert_eq!(row[0], json!(123.5));
    assert_eq!(row[1], json!("EUR"));
    assert_eq!(row[2], json!(2));
    assert_eq!(row[3], json!(61.75));
    assert_eq!(row[4], json!(1_772_597_167_250_i64));
    assert_eq!(row[5], json!(1_772_596_800_000_i64));
    let extra: Value = serde_json::from_str(row[6].as_str().expect("text")).expect("JSON");
    assert_eq!(
        extra,
        json!({"coupon": "SPRING", "items": [{"gift_wrap": true}]})
    );
    assert_eq!(
        (row[7].clone(), row[8].clone()),
        (json!("2026-03-04"), json!(4))
    );
    assert_eq!(row[9], json!(lake.env.events));
    assert_eq!(row[10], json!("BIGINT"));
    assert_eq!(row[11], json!("TIMESTAMP WITH TIME ZONE"));
    // The audit rules redact `data.customer_id` of orders: the lake row has the column empty.
    assert_eq!(
        lake.query("SELECT customer_id, order_id FROM order_placed")[0],
        vec![Value::Null, json!("ord-1")],
        "redacted before the row is written"
    );

    // Every event has its audit record, the invalid ones included, with decisions for the valid.
    // Keyed like the audit topic: the event id, or topic/partition/offset when it has none.
    // The files hold one record per event (no re-delivery here), and so does the view.
    for view in ["audit_raw", "audit"] {
        let audit_keys = format!(
            "SELECT count(*), count(DISTINCT coalesce(event_id, \
             topic || '/' || partition || '/' || \"offset\")) FROM {view}"
        );
        assert_eq!(lake.query(&audit_keys)[0], [json!(84), json!(84)], "{view}");
    }
    let outcomes = lake.query("SELECT outcome, count(*) FROM audit GROUP BY 1 ORDER BY 1");
    let dead: i64 = outcomes
        .iter()
        .filter(|r| r[0] == json!("dead_lettered"))
        .map(|r| r[1].as_i64().expect("count"))
        .sum();
    assert_eq!(dead, 3, "{outcomes:?}");
    assert_eq!(
        lake.count("SELECT count(*) FROM audit WHERE decision.allow IS NOT NULL"),
        81
    );
    assert_eq!(
        lake.count(
            "SELECT count(*) FROM audit WHERE reason = 'schema_invalid' AND event_id = 'bad-1'"
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_lake_round_trips_typed_rows_and_audit() {
    round_trip(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_lake_round_trips_typed_rows_and_audit() {
    round_trip(Store::S3).await;
}

async fn kill_9_exactly_once(store: Store) {
    // Small files and a short age, so kills land between writes, commits and rotations.
    let lake = LakeEnv::new(
        store,
        3,
        "max_file_records = 150\nmax_file_age = \"400ms\"\nmax_buffered_bytes = 200000",
    );
    lake.env.create_topics().await;
    const TOTAL: usize = 3000;
    let all = crate::crash::events(0..TOTAL);
    // Every 10th event is schema-invalid: not a lake row.
    let valid: BTreeSet<String> = all
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 10 != 0)
        .map(|(_, (id, _))| id.clone())
        .collect();
    let records: Vec<Rec> = all.into_iter().map(|(_, r)| r).collect();
    let topic = lake.env.events.clone();
    let producer = tokio::spawn(async move {
        for wave in records.chunks(250) {
            produce(&topic, wave).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    });
    for round in 0..4 {
        let mut child = lake.spawn_lake(false);
        let life = 2500 + (uuid::Uuid::new_v4().as_u128() % 2500) as u64;
        tokio::time::sleep(Duration::from_millis(life)).await;
        // SIGKILL: no flush, no commit.
        child.kill().expect("kill -9");
        let _ = child.wait();
        eprintln!("round {round}: killed the lake worker after {life} ms");
    }
    producer.await.expect("producer");
    lake.drain("lake");
    let row = &lake.query(
        "SELECT count(*), count(DISTINCT id), count(DISTINCT (kafka_partition, kafka_offset)) \
         FROM (SELECT id, kafka_partition, kafka_offset FROM order_placed_raw \
               UNION ALL SELECT id, kafka_partition, kafka_offset FROM refund_requested_raw)",
    )[0];
    let n = valid.len() as i64;
    assert_eq!(row[0], json!(n), "rows: {row:?}");
    assert_eq!(row[1], json!(n), "distinct ids: {row:?}");
    assert_eq!(row[2], json!(n), "distinct offsets: {row:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_lake_kill_9_keeps_every_event_exactly_once() {
    kill_9_exactly_once(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_lake_kill_9_keeps_every_event_exactly_once() {
    kill_9_exactly_once(Store::S3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_partition_appears_within_max_file_age() {
    let lake = LakeEnv::new(Store::Local, 1, "max_file_age = \"2s\"");
    lake.env.create_topics().await;
    let mut child = lake.spawn_lake(false);
    // Let the worker join the group before the events arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let records: Vec<Rec> = (0..5)
        .map(|n| Rec::json("k", &refund(&format!("q-{n}"), 5.0)))
        .collect();
    let produced = Instant::now();
    produce(&lake.env.events, &records).await;
    let root = PathBuf::from(&lake.root).join("refund.requested");
    let mut seen = 0;
    while produced.elapsed() < Duration::from_secs(15) {
        // Only complete files end in .parquet (a file being written has a temporary name).
        if parquet_files(&root) > 0 && lake.count("SELECT count(*) FROM refund_requested") == 5 {
            seen = 5;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waited = produced.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen, 5, "rows did not appear within 15 s");
    // 2 s age plus the timer's tick and the time to join and fetch.
    assert!(waited < Duration::from_secs(8), "took {waited:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_evolution_adds_columns_and_refuses_type_changes() {
    let lake = LakeEnv::new(Store::Local, 1, "");
    lake.env.create_topics().await;
    produce(&lake.env.events, &[Rec::json("k", &refund("v1", 5.0))]).await;
    lake.drain("lake");

    // A new optional field: new files get a column, old files read as NULL.
    let path = lake.schema_dir.join("refund.requested.json");
    let mut schema: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("schema")).expect("JSON");
    schema["properties"]["channel"] = json!({"type": "string"});
    std::fs::write(&path, schema.to_string()).expect("write");
    let mut v2 = refund("v2", 6.0);
    v2["data"]["channel"] = json!("phone");
    produce(&lake.env.events, &[Rec::json("k", &v2)]).await;
    lake.drain("lake");
    let rows = lake.query("SELECT id, channel, amount FROM refund_requested ORDER BY id");
    assert_eq!(
        rows,
        [
            vec![json!("v1"), Value::Null, json!(5.0)],
            vec![json!("v2"), json!("phone"), json!(6.0)]
        ]
    );

    // Changing the type of an existing column is refused at start-up, naming it.
    schema["properties"]["amount"] = json!({"type": "string"});
    std::fs::write(&path, schema.to_string()).expect("write");
    let out = lake
        .command(&["run", "--role", "lake", "--drain"])
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("table \"refund.requested\"")
            && stderr.contains("column \"amount\" was Float64 and would now be Utf8"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_writes_buffered_rows_and_a_restart_adds_none() {
    // Files would otherwise wait an hour: only the shutdown writes them.
    let lake = LakeEnv::new(Store::Local, 2, "max_file_age = \"1h\"");
    lake.env.create_topics().await;
    let records: Vec<Rec> = (0..20)
        .map(|n| Rec::json(&format!("k{n}"), &refund(&format!("t-{n}"), 5.0)))
        .collect();
    produce(&lake.env.events, &records).await;
    let child = lake.spawn_lake(false);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let root = PathBuf::from(&lake.root);
    assert_eq!(parquet_files(&root), 0, "nothing is written before the age");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "clean exit after SIGTERM");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("20 rows"), "{summary}");
    assert_eq!(lake.count("SELECT count(*) FROM refund_requested_raw"), 20);
    // The offsets were committed: a restart finds nothing new.
    let summary = lake.drain("lake");
    assert!(summary.contains("0 records"), "{summary}");
    assert_eq!(
        lake.query("SELECT count(*), count(DISTINCT id) FROM refund_requested_raw")[0],
        [json!(20), json!(20)]
    );
}

/// An audit record as the actions role writes it, keyed like the audit topic.
fn audit_record(event_id: Option<&str>, offset: i64, outcome: &str, worker: &str) -> Rec {
    let record = json!({
        "event_id": event_id, "topic": "events", "partition": 0, "offset": offset,
        "outcome": outcome, "policy_revision": "sha256:test", "worker": worker,
        "processed_at": "2026-03-04T05:06:07Z",
    });
    let key = event_id.map_or_else(|| format!("events/0/{offset}"), str::to_owned);
    Rec::json(&key, &record)
}

#[tokio::test(flavor = "multi_thread")]
async fn views_give_one_row_per_event_and_raw_views_every_record() {
    let lake = LakeEnv::new(Store::Local, 2, "");
    lake.env.create_topics().await;
    // A re-delivery: the same CloudEvent line twice, as two Kafka records (same key, so the same
    // partition, one after the other), beside four distinct events.
    let dup = refund("dup-1", 7.0);
    let mut records = vec![Rec::json("k-dup", &dup)];
    records.extend((0..4).map(|n| Rec::json(&format!("k{n}"), &refund(&format!("u-{n}"), 7.0))));
    records.push(Rec::json("k-dup", &dup));
    produce(&lake.env.events, &records).await;
    // Two audit records for the event dead-lettered and then replayed, and two for an event
    // without an id (keyed topic/partition/offset), each pair in the order it was written.
    produce(
        &lake.env.audit,
        &[
            audit_record(Some("dup-1"), 1, "dead_lettered", "first"),
            audit_record(None, 9, "dead_lettered", "first"),
            audit_record(Some("u-0"), 2, "actioned", "first"),
            audit_record(Some("dup-1"), 5, "actioned", "replay"),
            audit_record(None, 9, "dead_lettered", "again"),
        ],
    )
    .await;
    let summary = lake.drain("lake");
    assert!(summary.contains("11 records, 11 rows"), "{summary}");

    // The view: one row per id, so the re-delivered refund counts once.
    assert_eq!(
        lake.query("SELECT count(*), count(DISTINCT id), sum(amount) FROM refund_requested")[0],
        [json!(5), json!(5), json!(35.0)]
    );
    // The raw view: both records of dup-1, at two offsets of one partition.
    assert_eq!(
        lake.query("SELECT count(*), count(DISTINCT id), sum(amount) FROM refund_requested_raw")[0],
        [json!(6), json!(5), json!(42.0)]
    );
    let raw = lake.query(
        "SELECT kafka_topic, kafka_partition, kafka_offset FROM refund_requested_raw \
         WHERE id = 'dup-1' ORDER BY kafka_offset",
    );
    assert_eq!(raw.len(), 2, "{raw:?}");
    assert_eq!(raw[0][0], json!(lake.env.events));
    assert_eq!(raw[0][1], raw[1][1], "one partition: {raw:?}");
    assert!(
        raw[0][2].as_i64() < raw[1][2].as_i64(),
        "two offsets: {raw:?}"
    );
    // The view keeps the last record: the re-delivered one.
    assert_eq!(
        lake.query("SELECT kafka_partition, kafka_offset FROM refund_requested WHERE id = 'dup-1'"),
        [vec![raw[1][1].clone(), raw[1][2].clone()]]
    );

    // The audit view: one row per audit key, its latest record (the final outcome).
    let key = "coalesce(event_id, topic || '/' || partition || '/' || \"offset\")";
    assert_eq!(
        lake.query(&format!(
            "SELECT count(*), count(DISTINCT {key}) FROM audit"
        ))[0],
        [json!(3), json!(3)]
    );
    assert_eq!(
        lake.query(&format!(
            "SELECT count(*), count(DISTINCT {key}) FROM audit_raw"
        ))[0],
        [json!(5), json!(3)]
    );
    assert_eq!(
        lake.query(&format!(
            "SELECT {key}, outcome, worker FROM audit ORDER BY 1"
        )),
        [
            vec![json!("dup-1"), json!("actioned"), json!("replay")],
            vec![json!("events/0/9"), json!("dead_lettered"), json!("again")],
            vec![json!("u-0"), json!("actioned"), json!("first")],
        ]
    );
}
