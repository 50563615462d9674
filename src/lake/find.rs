//! Finding the lake files that hold one event id, for `reflex trace`, without reading the
//! rows of files that do not.
//!
//! Every table's files are listed; with a lower date bound, files in `date=` partitions before
//! it are skipped by name. For each remaining file the footer is read, and each row group is
//! checked against the id column's statistics (min and max) and then its bloom filter (written
//! by [`super::encode`]); only row groups that pass both are read, and only their id and Kafka
//! coordinate columns (every column in the `audit` table, whose rows are the event's audit
//! records, [`LakeAudit`]). A file written before bloom filters were is read by statistics
//! alone.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, RecordBatch};
use futures_util::{StreamExt, TryStreamExt};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use parquet::file::statistics::Statistics;
use serde::Serialize;

use super::store::{LakeStore, StoreError};
use super::table::{Table, TableKind};
use super::Tables;

/// Files searched at once (their footers and bloom filters are small reads).
const CONCURRENT_FILES: usize = 16;

/// Columns read from a row group that may hold the id, besides the id column.
const COORDINATES: [&str; 3] = ["kafka_topic", "kafka_partition", "kafka_offset"];

/// A lake file holding the id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holding {
    /// The table.
    pub table: String,
    /// The file's key relative to the lake root.
    pub key: String,
    /// The file as users name it: the lake's location and the key.
    pub path: String,
    /// The Kafka record of each row with the id (`topic/partition/offset`).
    pub records: Vec<String>,
    /// In the `audit` table, the audit records those rows hold.
    #[serde(skip)]
    pub audits: Vec<LakeAudit>,
}

/// An audit record read back from the lake's `audit` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeAudit {
    /// The audit record's Kafka record (`topic/partition/offset`).
    pub record: String,
    /// Its partition and offset.
    pub at: (i32, i64),
    /// Its Kafka timestamp (milliseconds since the epoch).
    pub timestamp_ms: Option<i64>,
    /// The record (see [`Table::audit_value`]).
    pub value: serde_json::Value,
}

/// What the search looked at: how much the date, statistics and bloom filters left unread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Searched {
    /// Files listed.
    pub files: u64,
    /// Files skipped by their `date=` partition.
    pub skipped_by_date: u64,
    /// Row groups in the files whose footer was read.
    pub row_groups: u64,
    /// Row groups whose id statistics exclude the id.
    pub skipped_by_statistics: u64,
    /// Row groups whose bloom filter excludes the id.
    pub skipped_by_bloom_filter: u64,
    /// Row groups whose rows were read.
    pub row_groups_read: u64,
}

impl Searched {
    fn add(&mut self, other: &Self) {
        self.files += other.files;
        self.skipped_by_date += other.skipped_by_date;
        self.row_groups += other.row_groups;
        self.skipped_by_statistics += other.skipped_by_statistics;
        self.skipped_by_bloom_filter += other.skipped_by_bloom_filter;
        self.row_groups_read += other.row_groups_read;
    }
}

/// The files of every table that hold `id`, by table and key. With `from_date`
/// (`YYYY-MM-DD`), files in earlier `date=` partitions are not searched.
pub async fn files_holding(
    store: &LakeStore,
    tables: &Tables,
    id: &str,
    from_date: Option<&str>,
) -> Result<(Vec<Holding>, Searched), StoreError> {
    search(store, tables, id, from_date, false).await
}

/// The audit records of `id` in the lake's `audit` table (no other table is searched), in
/// the order of their Kafka records.
pub async fn audit_records(
    store: &LakeStore,
    tables: &Tables,
    id: &str,
    from_date: Option<&str>,
) -> Result<Vec<LakeAudit>, StoreError> {
    let (found, _) = search(store, tables, id, from_date, true).await?;
    let mut audits: Vec<LakeAudit> = found.into_iter().flat_map(|h| h.audits).collect();
    audits.sort_by_key(|a| a.at);
    Ok(audits)
}

async fn search(
    store: &LakeStore,
    tables: &Tables,
    id: &str,
    from_date: Option<&str>,
    audit_only: bool,
) -> Result<(Vec<Holding>, Searched), StoreError> {
    let mut searched = Searched::default();
    let mut candidates = Vec::new();
    for table in tables.iter() {
        if audit_only && table.kind != TableKind::Audit {
            continue;
        }
        for file in store.list(&table.name).await? {
            searched.files += 1;
            let date = file
                .location
                .parts()
                .find_map(|p| p.as_ref().strip_prefix("date=").map(str::to_owned));
            if let (Some(from), Some(date)) = (from_date, date) {
                if date.as_str() < from {
                    searched.skipped_by_date += 1;
                    continue;
                }
            }
            candidates.push((table, file));
        }
    }
    let results: Vec<(Option<Holding>, Searched)> =
        futures_util::stream::iter(candidates.into_iter().map(|(table, file)| {
            let (reader, key) = store.reader(&file);
            let path = format!("{}/{key}", store.location().trim_end_matches('/'));
            async move {
                let error = |source: parquet::errors::ParquetError| StoreError::Io {
                    location: store.location().to_owned(),
                    what: "read",
                    key: key.clone(),
                    source: Box::new(source),
                };
                let (records, audits, searched) =
                    search_file(reader, table, id).await.map_err(error)?;
                let holding = (!records.is_empty()).then(|| Holding {
                    table: table.name.clone(),
                    key: key.clone(),
                    path,
                    records,
                    audits,
                });
                Ok::<_, StoreError>((holding, searched))
            }
        }))
        .buffer_unordered(CONCURRENT_FILES)
        .try_collect()
        .await?;
    let mut found = Vec::new();
    for (holding, file) in results {
        searched.add(&file);
        found.extend(holding);
    }
    found.sort_by(|a, b| (&a.table, &a.key).cmp(&(&b.table, &b.key)));
    Ok((found, searched))
}

/// What one file holds of an id: the coordinates of its rows, and in the audit table the
/// audit records.
type FileFound = (Vec<String>, Vec<LakeAudit>, Searched);

/// The coordinates of the rows of one file of `table` whose id column is `id` (and in the
/// audit table the audit records).
async fn search_file(
    reader: parquet::arrow::async_reader::ParquetObjectReader,
    table: &Table,
    id: &str,
) -> Result<FileFound, parquet::errors::ParquetError> {
    let column = table.id_column();
    let mut searched = Searched::default();
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let metadata = builder.metadata().clone();
    let descr = metadata.file_metadata().schema_descr();
    let leaf = |name: &str| {
        descr
            .columns()
            .iter()
            .position(|c| c.path().parts() == [name])
    };
    let Some(id_leaf) = leaf(column) else {
        return Ok((Vec::new(), Vec::new(), searched));
    };
    let mut wanted = Vec::new();
    for (index, group) in metadata.row_groups().iter().enumerate() {
        searched.row_groups += 1;
        if let Some(Statistics::ByteArray(stats)) = group.column(id_leaf).statistics() {
            let below = stats.min_opt().is_some_and(|m| id.as_bytes() < m.data());
            let above = stats.max_opt().is_some_and(|m| id.as_bytes() > m.data());
            if below || above {
                searched.skipped_by_statistics += 1;
                continue;
            }
        }
        if let Some(bloom) = builder
            .get_row_group_column_bloom_filter(index, id_leaf)
            .await?
        {
            if !bloom.check(&id) {
                searched.skipped_by_bloom_filter += 1;
                continue;
            }
        }
        wanted.push(index);
    }
    if wanted.is_empty() {
        return Ok((Vec::new(), Vec::new(), searched));
    }
    searched.row_groups_read = wanted.len() as u64;
    let audit = table.kind == TableKind::Audit;
    let mask = if audit {
        ProjectionMask::all()
    } else {
        let mut leaves = vec![id_leaf];
        leaves.extend(COORDINATES.iter().filter_map(|c| leaf(c)));
        ProjectionMask::leaves(descr, leaves)
    };
    let stream = builder
        .with_row_groups(wanted)
        .with_projection(mask)
        .build()?;
    let batches: Vec<RecordBatch> = stream.try_collect().await?;
    let mut records = Vec::new();
    let mut audits = Vec::new();
    for batch in &batches {
        let rows = matching_rows(batch, column, id);
        if audit {
            audits.extend(
                rows.iter()
                    .filter_map(|(row, record)| audit_of(table, batch, *row, record)),
            );
        }
        records.extend(rows.into_iter().map(|(_, record)| record));
    }
    Ok((records, audits, searched))
}

/// The audit record of row `row` of `batch` (a batch of the audit table), if it converts.
fn audit_of(table: &Table, batch: &RecordBatch, row: usize, record: &str) -> Option<LakeAudit> {
    let one = batch.slice(row, 1);
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    writer.write(&one).ok()?;
    writer.finish().ok()?;
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice(&writer.into_inner()).ok()?;
    let value = table.audit_value(rows.first()?);
    let column = |name| batch.column_by_name(name);
    let partition = column(COORDINATES[1])?.as_primitive_opt::<Int32Type>()?;
    let offset = column(COORDINATES[2])?.as_primitive_opt::<Int64Type>()?;
    let timestamp = column("kafka_timestamp")
        .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
        .filter(|t| t.is_valid(row))
        .map(|t| t.value(row));
    Some(LakeAudit {
        record: record.to_owned(),
        at: (partition.value(row), offset.value(row)),
        timestamp_ms: timestamp,
        value,
    })
}

/// Each row of `batch` whose `column` is `id`, with its `topic/partition/offset`.
fn matching_rows(batch: &RecordBatch, column: &str, id: &str) -> Vec<(usize, String)> {
    let Some(ids) = batch
        .column_by_name(column)
        .and_then(|c| c.as_string_opt::<i32>())
    else {
        return Vec::new();
    };
    let topics = batch
        .column_by_name(COORDINATES[0])
        .and_then(|c| c.as_string_opt::<i32>());
    let partitions = batch
        .column_by_name(COORDINATES[1])
        .and_then(|c| c.as_primitive_opt::<Int32Type>());
    let offsets = batch
        .column_by_name(COORDINATES[2])
        .and_then(|c| c.as_primitive_opt::<Int64Type>());
    (0..ids.len())
        .filter(|&row| ids.is_valid(row) && ids.value(row) == id)
        .map(|row| {
            let record = match (topics, partitions, offsets) {
                (Some(t), Some(p), Some(o)) => {
                    format!("{}/{}/{}", t.value(row), p.value(row), o.value(row))
                }
                _ => format!("row {row}"),
            };
            (row, record)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::config::{LakeConfig, RawLake, RawLakeRole};
    use crate::event::CloudEvent;
    use crate::lake::encode::EncodeSettings;
    use crate::lake::segment::{Limits, Row, Segments, TopicPartition};
    use crate::lake::table::Coordinates;
    use crate::lake::write::write_segment;
    use crate::schema::SchemaRegistry;

    /// A lake of two event types over two days, 40 records a file.
    async fn lake(dir: &std::path::Path) -> (LakeStore, Tables) {
        let schema = r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#;
        std::fs::create_dir_all(dir.join("schemas")).expect("mkdir");
        for ty in ["a.happened", "b.happened"] {
            std::fs::write(dir.join(format!("schemas/{ty}.json")), schema).expect("write");
        }
        let tables = Tables::new(&SchemaRegistry::load(&dir.join("schemas")).expect("schemas"));
        let raw = RawLake {
            store: "lake".into(),
            ..RawLake::default()
        };
        let config = LakeConfig::new(raw, RawLakeRole::default(), dir).expect("config");
        let store = LakeStore::open(&config).expect("store");
        let settings = EncodeSettings {
            row_group_rows: 10,
            zstd_level: 1,
        };
        let tp: TopicPartition = ("t".into(), 0);
        let mut segments = Segments::new(Limits {
            max_records: 40,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        });
        for o in 0..400_i64 {
            let ty = if o % 2 == 0 {
                "a.happened"
            } else {
                "b.happened"
            };
            let day = if o < 200 { "01" } else { "02" };
            let event: CloudEvent = serde_json::from_value(json!({
                "specversion": "1.0", "id": format!("e-{o:03}"), "source": "/s", "type": ty,
                "time": format!("2026-01-{day}T10:00:00Z"), "data": {"n": o}}))
            .expect("event");
            let table = tables.index_of(ty).expect("table");
            let at = Coordinates {
                topic: "t",
                partition: 0,
                offset: o,
                timestamp_ms: None,
            };
            let prepared = tables
                .get(table)
                .expect("table")
                .event(&event, at, chrono::Utc::now());
            let append = |rows: &mut crate::lake::rows::Rows| prepared.append(rows);
            let row = Row {
                table,
                hour: prepared.hour(),
                append: &append,
            };
            if segments.push(&tp, o, Some(row), Instant::now()) {
                let segment = segments.take(&tp).expect("segment");
                write_segment(&store, &tables, settings, &tp, &segment)
                    .await
                    .expect("write");
            }
        }
        (store, tables)
    }

    #[tokio::test]
    async fn audit_rows_read_back_as_the_audit_records_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, tables) = lake(dir.path()).await;
        let records = [
            json!({"event_id": "e-1", "type": "a.happened", "topic": "t", "partition": 0,
                "offset": 4, "outcome": "retrying", "policy_revision": "sha256:1",
                "decision": {"allow": true, "reasons": [], "obligations": {"redact": ["data.n"]}},
                "action": {"name": "ship", "kind": "http", "status": 503, "attempts": 2},
                "worker": "w", "processed_at": "2026-01-01T10:00:00.000001Z",
                "timings_us": {"decode": 3, "validate": 2, "policy": 9, "action": 1},
                "traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
                "lookups": [{"name": "customer", "source": "service", "status": 200, "tier": "x"}],
                "future_field": {"kept": true}}),
            json!({"event_id": "e-2", "topic": "t", "partition": 0, "offset": 5,
                "outcome": "denied", "worker": "w", "processed_at": "2026-01-01T10:00:01Z"}),
            json!({"event_id": "e-1", "topic": "retry", "partition": 0, "offset": 0,
                "outcome": "actioned", "retry_round": 1, "worker": "w",
                "processed_at": "2026-01-01T10:00:02Z"}),
        ];
        let tp: TopicPartition = ("audit".into(), 0);
        let mut segments = Segments::new(Limits {
            max_records: 10,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        });
        let index = tables.audit_index();
        let table = tables.get(index).expect("audit table");
        for (offset, record) in records.iter().enumerate() {
            let at = Coordinates {
                topic: "audit",
                partition: 0,
                offset: offset as i64,
                timestamp_ms: Some(1_767_261_600_000 + offset as i64),
            };
            let text = record.to_string();
            let prepared = table
                .audit_record(text.as_bytes(), at, chrono::Utc::now())
                .expect("a row");
            let append = |rows: &mut crate::lake::rows::Rows| prepared.append(rows);
            let row = Row {
                table: index,
                hour: prepared.hour(),
                append: &append,
            };
            segments.push(&tp, offset as i64, Some(row), Instant::now());
        }
        let segment = segments.take(&tp).expect("segment");
        let settings = EncodeSettings {
            row_group_rows: 10,
            zstd_level: 1,
        };
        write_segment(&store, &tables, settings, &tp, &segment)
            .await
            .expect("write");

        let audits = audit_records(&store, &tables, "e-1", None)
            .await
            .expect("search");
        let at: Vec<(&str, Option<i64>)> = audits
            .iter()
            .map(|a| (a.record.as_str(), a.timestamp_ms))
            .collect();
        assert_eq!(
            at,
            [
                ("audit/0/0", Some(1_767_261_600_000)),
                ("audit/0/2", Some(1_767_261_600_002))
            ]
        );
        let first = &audits[0].value;
        for key in [
            "event_id",
            "type",
            "topic",
            "partition",
            "offset",
            "outcome",
            "decision",
            "action",
            "worker",
            "timings_us",
            "traceid",
            "lookups",
            "future_field",
        ] {
            assert_eq!(first[key], records[0][key], "{key}: {first}");
        }
        assert!(first["processed_at"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-01-01T10:00:00.000001")));
        assert!(
            first.get("subject").is_none(),
            "absent stays absent: {first}"
        );
        assert_eq!(audits[1].value["retry_round"], 1);
        assert!(audit_records(&store, &tables, "e-9", None)
            .await
            .expect("search")
            .is_empty());
    }

    #[tokio::test]
    async fn finds_the_one_file_and_row_and_reads_no_rows_for_an_absent_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, tables) = lake(dir.path()).await;

        let (found, searched) = files_holding(&store, &tables, "e-123", None)
            .await
            .expect("search");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].table, "b.happened");
        assert_eq!(
            found[0].key,
            "b.happened/date=2026-01-01/hour=10/t-0-121.parquet"
        );
        assert_eq!(found[0].records, ["t/0/123"]);
        assert!(found[0].path.ends_with(&found[0].key));
        assert_eq!(searched.files, 20);
        assert_eq!(searched.row_groups, 40);
        assert!(searched.row_groups_read >= 1);
        assert!(
            searched.skipped_by_statistics + searched.skipped_by_bloom_filter >= 36,
            "ids are in order, so statistics and bloom filters leave few row groups: {searched:?}"
        );

        // Inside every file's id range, outside every row: only bloom filters can tell.
        let (found, searched) = files_holding(&store, &tables, "e-123x", None)
            .await
            .expect("search");
        assert!(found.is_empty());
        assert!(searched.row_groups_read <= 1, "{searched:?}");

        // From the second day on, the first day's files are not opened.
        let (found, searched) = files_holding(&store, &tables, "e-123", Some("2026-01-02"))
            .await
            .expect("search");
        assert!(found.is_empty(), "e-123 is in a file of the first day");
        assert_eq!(searched.skipped_by_date, 10);
        let (found, _) = files_holding(&store, &tables, "e-300", Some("2026-01-02"))
            .await
            .expect("search");
        assert_eq!(found.len(), 1);
    }
}
