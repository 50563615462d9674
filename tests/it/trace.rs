//! `reflex trace` against the real broker, a real HTTP action service and a real local lake
//! written by the lake role: the story of an event that was refused, retried, dead-lettered,
//! replayed and actioned; the events an event caused; an id with no record; the bloom filter
//! on the lake's id columns.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::action_service::{ActionService, Behaviour};
use crate::common::*;
use crate::http_actions::{order_of, use_http_action};
use crate::lake::{LakeEnv, Store};

fn trace(lake: &LakeEnv, args: &[&str]) -> Output {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    lake.command(&all)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("reflex trace runs")
}

fn trace_json(lake: &LakeEnv, id: &str) -> Value {
    let out = trace(lake, &[id, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "reflex trace {id} --json: found"
    );
    serde_json::from_slice(&out.stdout).expect("the trace is JSON")
}

/// Whether the Parquet file at `path` has a bloom filter on `column` in every row group, and on
/// no other column.
fn bloom_only_on(path: &Path, column: &str) -> bool {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).expect("lake file opens");
    let reader = SerializedFileReader::new(file).expect("a Parquet file");
    let metadata = reader.metadata();
    metadata.num_row_groups() > 0
        && metadata.row_groups().iter().all(|group| {
            group
                .columns()
                .iter()
                .all(|c| c.bloom_filter_offset().is_some() == (c.column_path().string() == column))
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_then_replayed_event_shows_retrying_dead_lettered_replayed_actioned_and_its_lake_file(
) {
    let service = ActionService::start();
    // Refused four times: two attempts in the first pass and two in the one retry round, then
    // dead-lettered; the service answers once the dead letter is replayed.
    service.set_behaviour("/orders/c-trace", Behaviour::fail(503, 4));
    let lake = LakeEnv::new(Store::Local, 1, "max_file_age = \"30s\"");
    use_http_action(
        &lake.env,
        &service,
        "max_attempts = 2",
        "retry_delay = \"1s\"\nretry_rounds = 1",
    );
    lake.env.create_topics().await;
    let id = unique("pay");
    produce(&lake.env.events, &[order_of(&id, "c-trace")]).await;
    lake.drain("actions");
    let replay = lake
        .command(&["dlq", "replay"])
        .output()
        .expect("reflex dlq replay runs");
    assert!(replay.status.success(), "reflex dlq replay");
    lake.drain("actions");
    lake.drain("lake");

    let story = trace_json(&lake, &id);
    assert_eq!(story["found"], true);
    assert_eq!(
        story["path"],
        serde_json::json!(["retrying", "dead_lettered", "replayed", "actioned"]),
        "{story:#}"
    );
    assert_eq!(story["outcome"], "actioned");
    assert_eq!(story["event"]["type"], "order.placed");
    let steps = story["steps"].as_array().expect("steps");
    let kinds: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| {
            let what = s["outcome"].as_str().or(s["reason"].as_str());
            (s["kind"].as_str().unwrap_or(""), what.unwrap_or(""))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("audit", "retrying"),
            ("audit", "dead_lettered"),
            ("dead_letter", "action_failed"),
            ("audit", "actioned"),
        ],
        "{story:#}"
    );
    // The first attempt's audit record: the action, its status and attempts, the revision.
    let first = &steps[0]["audit"];
    assert_eq!(first["action"]["status"], 503);
    assert_eq!(first["action"]["attempts"], 2);
    assert!(first["policy_revision"]
        .as_str()
        .is_some_and(|r| r.starts_with("sha256:")));
    assert_eq!(steps[1]["audit"]["retry_round"], 1);
    // The dead letter names the attempt that replayed it, and that attempt names it back.
    let dead = &steps[2];
    let replayed = &steps[3];
    assert_eq!(replayed["replay_of"]["dead_letter"], dead["record"]);
    assert_eq!(dead["replayed_as"], serde_json::json!([replayed["input"]]));
    assert!(dead["record"]
        .as_str()
        .is_some_and(|r| r.starts_with(&format!("{}/", lake.env.dlq))));

    // The lake: the event's rows in its table (the lake keeps every record: the original and
    // the replayed one) and its three audit records in the audit table.
    let files = story["lake"].as_array().expect("lake files");
    let tables: Vec<&str> = files.iter().filter_map(|f| f["table"].as_str()).collect();
    assert_eq!(tables, ["audit", "order.placed"], "{story:#}");
    let events_file = &files[1];
    assert_eq!(
        events_file["records"],
        serde_json::json!([steps[0]["input"], replayed["input"]]),
        "the lake rows are the original and the replayed record"
    );
    let audit_rows = files[0]["records"].as_array().expect("audit rows").len();
    assert_eq!(audit_rows, 3, "every audit record is an audit row");
    let path = Path::new(events_file["path"].as_str().expect("a path"));
    assert!(path.is_file(), "{} is the lake file", path.display());
    assert!(
        bloom_only_on(path, "id"),
        "the event table's id column has a bloom filter"
    );
    let audit_path = Path::new(files[0]["path"].as_str().expect("a path"));
    assert!(
        bloom_only_on(audit_path, "event_id"),
        "the audit table's event_id column has a bloom filter"
    );
    assert!(story["searched"]["lake"]["files"].as_u64() >= Some(2));
    // The lake role wrote every audit record and committed: the audit topic is read only past
    // the lake group's offset, and the four steps' audit records came from the lake's table.
    assert_eq!(
        story["searched"]["audit_from_lake"],
        serde_json::json!({"0": 3}),
        "{story:#}"
    );
    let audit_read = story["searched"]["topics"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["topic"] == lake.env.audit.as_str()))
        .map(|t| t["records"].clone());
    assert_eq!(audit_read, Some(serde_json::json!(0)), "{story:#}");

    // The same story as text.
    let out = trace(&lake, &[&id]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        text.contains("path: retrying → dead-lettered → replayed → actioned"),
        "{text}"
    );
    assert!(
        text.contains(&format!("event {id} · order.placed")),
        "{text}"
    );
    assert!(text.contains("status 503 · 2 attempts"), "{text}");
    assert!(
        text.contains(&format!(
            "replayed as {}",
            replayed["input"].as_str().unwrap_or("?")
        )),
        "{text}"
    );
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_list_the_events_they_caused_and_an_unknown_id_has_no_record() {
    // Three partitions: the audit records of six refunds land in different ones, and the trace
    // reads only the partition each id hashes to.
    let lake = LakeEnv::new(Store::Local, 3, "max_file_age = \"30s\"");
    lake.env.create_topics().await;
    let ids: Vec<String> = (0..6).map(|_| unique("refund")).collect();
    let records: Vec<Rec> = ids
        .iter()
        .map(|id| Rec::json(id, &refund(id, 20.0)))
        .collect();
    produce(&lake.env.events, &records).await;
    lake.drain("actions");

    // The approve_refund action emitted refund.approved with causationid = the refund's id.
    let emitted = read_all(&lake.env.refunds_approved);
    assert_eq!(emitted.len(), 6);
    let audit_partitions: std::collections::BTreeSet<i32> = read_all(&lake.env.audit)
        .iter()
        .map(|r| r.partition)
        .collect();
    assert!(
        audit_partitions.len() > 1,
        "audit records in several partitions"
    );
    for id in &ids {
        let derived = emitted
            .iter()
            .map(Read::json)
            .find(|e| e["causationid"] == id.as_str())
            .expect("a derived event");
        let story = trace_json(&lake, id);
        assert_eq!(story["path"], serde_json::json!(["actioned"]), "{story:#}");
        let caused = story["caused"].as_array().expect("caused");
        assert_eq!(caused.len(), 1, "{story:#}");
        assert_eq!(caused[0]["event_id"], derived["id"]);
        assert_eq!(caused[0]["type"], "refund.approved");
        assert!(caused[0]["record"]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{}/", lake.env.refunds_approved))));
        assert_eq!(
            story["steps"][0]["audit"]["action"]["emitted_id"],
            derived["id"]
        );
        assert_eq!(
            story["lake"],
            serde_json::json!([]),
            "the lake role did not run"
        );
    }
    let id = &ids[0];

    // An id nobody sent: a clear answer and exit status 1, in text and JSON.
    let nobody = unique("nobody");
    let out = trace(&lake, &[&nobody, "--since", "2h"]);
    assert_eq!(out.status.code(), Some(1), "no record: exit status 1");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        text.starts_with(&format!("no record of event {nobody} since ")),
        "{text}"
    );
    let out = trace(&lake, &[&nobody, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["found"], false);
    assert_eq!(answer["steps"], serde_json::json!([]));
    let topics: Vec<&str> = answer["searched"]["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(|t| t["topic"].as_str())
        .collect();
    assert!(
        topics.contains(&lake.env.audit.as_str()) && topics.contains(&lake.env.dlq.as_str()),
        "{topics:?}"
    );

    // A --since after every record: nothing is read, so nothing is found.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = trace(&lake, &[id, "--since", &later]);
    assert_eq!(out.status.code(), Some(1), "nothing since a future instant");

    // A --since that is neither a time nor a duration names itself.
    let out = trace(&lake, &[id, "--since", "last week"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a search that cannot run is not \"no record\""
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"last week\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_lake_names_the_objects_holding_the_event() {
    let lake = LakeEnv::new(Store::S3, 2, "max_file_age = \"30s\"");
    lake.env.create_topics().await;
    let ids: Vec<String> = (0..5).map(|_| unique("order")).collect();
    let records: Vec<Rec> = ids
        .iter()
        .map(|id| Rec::json(id, &order(id, "/shop/web", 30.0)))
        .collect();
    produce(&lake.env.events, &records).await;
    lake.drain("actions");
    lake.drain("lake");
    let story = trace_json(&lake, &ids[3]);
    assert_eq!(story["path"], serde_json::json!(["actioned"]), "{story:#}");
    let files = story["lake"].as_array().expect("lake files");
    let tables: Vec<&str> = files.iter().filter_map(|f| f["table"].as_str()).collect();
    assert_eq!(tables, ["audit", "order.placed"], "{story:#}");
    for file in files {
        let path = file["path"].as_str().expect("a path");
        assert!(path.starts_with(&format!("{}/", lake.root)), "{path}");
        assert!(
            path.ends_with(file["key"].as_str().expect("a key")),
            "{path}"
        );
        assert_eq!(file["records"].as_array().map(Vec::len), Some(1));
    }
    // The other orders' rows are in the same files; the audit rows of four more events too.
    assert!(
        story["searched"]["lake"]["row_groups_read"].as_u64() >= Some(2),
        "{story:#}"
    );
}
