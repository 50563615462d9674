//! Lake files are created once and never replaced: a replay finds them, other records under a
//! file's name are refused, and a stalled worker that resumes after losing its partitions
//! neither replaces the new owner's files nor adds their rows a second time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use crate::lake::{s3_endpoint, wait_output, LakeEnv, Store};

/// Reads, writes and deletes objects of a lake root as a user would with another tool: files
/// in a local directory, or S3 requests (curl with SigV4) to the test's S3 server.
struct Objects {
    store: Store,
    root: String,
}

impl Objects {
    fn url(&self, key: &str) -> String {
        let bucket_and_prefix = self.root.trim_start_matches("s3://");
        format!("{}/{bucket_and_prefix}/{key}", s3_endpoint())
    }

    fn curl(&self, args: &[&str]) -> String {
        let user = format!(
            "{}:{}",
            std::env::var("S3_ACCESS_KEY").unwrap_or_else(|_| "reflex".into()),
            std::env::var("S3_SECRET_KEY").unwrap_or_else(|_| "reflex-secret".into())
        );
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "%{http_code}",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
            ])
            .args([
                "--user",
                &user,
                "-H",
                "x-amz-content-sha256: UNSIGNED-PAYLOAD",
            ])
            .args(args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.store {
            Store::Local => std::fs::read(Path::new(&self.root).join(key)).ok(),
            Store::S3 => {
                let file = tempfile::NamedTempFile::new().expect("temp file");
                let path = file.path().display().to_string();
                let status = self.curl(&["-o", &path, &self.url(key)]);
                (status == "200").then(|| std::fs::read(file.path()).expect("read"))
            }
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        match self.store {
            Store::Local => {
                let path = Path::new(&self.root).join(key);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(path, bytes).expect("write");
            }
            Store::S3 => {
                let file = tempfile::NamedTempFile::new().expect("temp file");
                std::fs::write(file.path(), bytes).expect("write");
                let data = format!("@{}", file.path().display());
                let status = self.curl(&[
                    "-o",
                    "/dev/null",
                    "-X",
                    "PUT",
                    "--data-binary",
                    &data,
                    &self.url(key),
                ]);
                assert_eq!(status, "200", "S3 PUT {key}");
            }
        }
    }

    fn delete(&self, key: &str) {
        match self.store {
            Store::Local => std::fs::remove_file(Path::new(&self.root).join(key)).expect("delete"),
            Store::S3 => {
                let status = self.curl(&["-o", "/dev/null", "-X", "DELETE", &self.url(key)]);
                assert_eq!(status, "204", "S3 DELETE {key}");
            }
        }
    }
}

/// Points the lake config at another root and consumer group.
fn reconfigure(lake: &mut LakeEnv, root: &str, group: &str) {
    let text = std::fs::read_to_string(&lake.env.config_path).expect("config");
    let start = text.find("[roles.lake]").expect("lake role section");
    let end = start + text[start..].find("[lake.s3]").expect("lake s3 section");
    let section = format!("[roles.lake]\ngroup_id = \"{group}\"\n[lake]\nstore = \"{root}\"\nmax_file_records = 10\nmax_file_age = \"1h\"\n");
    let text = format!("{}{section}{}", &text[..start], &text[end..]);
    std::fs::write(&lake.env.config_path, text).expect("write config");
    lake.root = root.to_owned();
}

async fn files_are_created_once(store: Store) {
    let mut lake = LakeEnv::new(store, 1, "max_file_records = 10\nmax_file_age = \"1h\"");
    lake.env.create_topics().await;
    let records: Vec<Rec> = (0..30)
        .map(|n| {
            let mut event = refund(&format!("c-{n}"), 1.0);
            event["time"] = json!("2026-03-04T05:06:07Z");
            Rec::json("k", &event)
        })
        .collect();
    produce(&lake.env.events, &records).await;
    let topic = lake.env.events.clone();
    let key =
        |first: i64| format!("refund.requested/date=2026-03-04/hour=05/{topic}-0-{first}.parquet");
    let summary = lake.drain("lake");
    assert!(
        summary.contains("30 records, 30 rows in 3 files"),
        "{summary}"
    );
    let first_root = lake.root.clone();
    let objects = Objects {
        store,
        root: first_root.clone(),
    };
    let before: Vec<Vec<u8>> = [0, 10, 20]
        .iter()
        .map(|f| objects.get(&key(*f)).expect("file written"))
        .collect();

    // Read again from the start by a new group: the same segments, so the same files, found.
    let group = unique("files-again");
    reconfigure(&mut lake, &first_root, &group);
    let summary = lake.drain("lake");
    assert!(
        summary.contains("30 records, 0 rows in 0 files")
            && summary.contains("3 files found already written"),
        "{summary}"
    );
    for (f, bytes) in [0, 10, 20].iter().zip(&before) {
        assert_eq!(objects.get(&key(*f)).as_ref(), Some(bytes), "{}", key(*f));
    }

    // In a new root, the second file's bytes under the first file's name: other records.
    let second_root = format!("{first_root}-2");
    let planted = Objects {
        store,
        root: second_root.clone(),
    };
    planted.put(&key(0), &before[1]);
    reconfigure(&mut lake, &second_root, &unique("files-other"));
    let child = lake
        .command(&["run", "--role", "lake", "--drain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reflex starts");
    let out = wait_output(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains(&format!("lake file {} in ", key(0)))
            && stderr.contains("holds other records")
            && stderr.contains(
                "it holds 10 rows, offsets 10..=19, where this worker has 10 rows, offsets 0..=9"
            ),
        "{stderr}"
    );
    assert_eq!(
        planted.get(&key(0)).as_ref(),
        Some(&before[1]),
        "left as it was"
    );
    assert_eq!(
        planted.get(&key(10)),
        None,
        "the worker stopped at the conflict"
    );

    // Nothing was committed: with the stray file moved away, the same group writes all rows.
    planted.delete(&key(0));
    let summary = lake.drain("lake");
    assert!(
        summary.contains("30 records, 30 rows in 3 files"),
        "{summary}"
    );
    assert_eq!(
        lake.query("SELECT count(*), count(DISTINCT id) FROM refund_requested_raw")[0],
        [json!(30), json!(30)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_lake_files_are_created_once_and_other_records_refused() {
    files_are_created_once(Store::Local).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_lake_files_are_created_once_and_other_records_refused() {
    files_are_created_once(Store::S3).await;
}

/// Every file under a directory with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                all.insert(path.clone(), std::fs::read(&path).expect("read"));
            }
        }
    }
    all
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_lake_worker_resumes_without_replacing_or_repeating_rows() {
    // Files rotate by age, so a worker always holds rows it has not written yet.
    let lake = LakeEnv::new(Store::Local, 4, "max_file_age = \"2s\"");
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

    let stalled = lake.spawn_lake(false);
    // The first worker joins alone, then the second takes half of the partitions.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let other = lake.spawn_lake(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let topic = lake.env.events.clone();
    let producer = tokio::spawn(async move {
        for wave in records.chunks(100) {
            produce(&topic, wave).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    // Mid-stream, with rows buffered: stalled for longer than the session timeout (6 s in the
    // test config), so the other worker takes its partitions and writes them from the
    // committed offsets.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(stalled.id(), "STOP");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let root = PathBuf::from(&lake.root);
    let before = files(&root);
    // It resumes with its old segments past their age and writes them before it learns of
    // the rebalance, then rejoins the group.
    signal(stalled.id(), "CONT");
    tokio::time::sleep(Duration::from_secs(8)).await;
    producer.await.expect("producer");
    for child in [&stalled, &other] {
        signal(child.id(), "TERM");
    }
    let stalled = wait_output(stalled, Duration::from_secs(60));
    let other = wait_output(other, Duration::from_secs(60));
    eprintln!(
        "stalled worker: {}other worker: {}",
        String::from_utf8_lossy(&stalled.stdout),
        String::from_utf8_lossy(&other.stdout)
    );
    assert!(
        stalled.status.success(),
        "no conflict stopped the stalled worker"
    );
    assert!(
        other.status.success(),
        "no conflict stopped the other worker"
    );
    lake.drain("lake");

    assert!(!before.is_empty(), "files were written during the stall");
    let after = files(&root);
    let replaced: Vec<&PathBuf> = before
        .iter()
        .filter(|(path, bytes)| after.get(*path) != Some(bytes))
        .map(|(path, _)| path)
        .collect();
    assert!(replaced.is_empty(), "files replaced: {replaced:?}");
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
