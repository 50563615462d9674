//! Writing a segment: one Parquet file per (table, hour), each encoded off the async threads
//! and put whole at the key named after its first offset.

use super::encode::{encode, EncodeSettings};
use super::segment::{file_key, Segment, TopicPartition};
use super::store::LakeStore;
use super::{LakeError, Tables};

/// What writing a segment produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Files.
    pub files: u64,
    /// Rows.
    pub rows: u64,
    /// Parquet bytes.
    pub bytes: u64,
}

/// Writes every file of `segment`, in (table, hour) order; the caller commits afterwards.
pub async fn write_segment(
    store: &LakeStore,
    tables: &Tables,
    settings: EncodeSettings,
    tp: &TopicPartition,
    segment: Segment,
) -> Result<Written, LakeError> {
    let mut written = Written::default();
    for ((index, hour), rows) in segment.files {
        let Some(table) = tables.get(index) else {
            continue;
        };
        let key = file_key(&table.name, hour, tp, rows.first_offset);
        let metadata = vec![
            ("reflex.topic".to_owned(), tp.0.clone()),
            ("reflex.partition".to_owned(), tp.1.to_string()),
            (
                "reflex.first_offset".to_owned(),
                rows.first_offset.to_string(),
            ),
            (
                "reflex.last_offset".to_owned(),
                rows.last_offset.to_string(),
            ),
        ];
        let (name, schema, id) = (table.name.clone(), table.schema.clone(), table.id_column());
        let json = rows.json;
        let bytes = tokio::task::spawn_blocking(move || {
            encode(&name, &schema, id, &json, settings, metadata)
        })
        .await
        .map_err(|e| LakeError::Task {
            table: table.name.clone(),
            message: e.to_string(),
        })??;
        let size = bytes.len();
        store.put(&key, bytes).await?;
        written.files += 1;
        written.rows += rows.rows as u64;
        written.bytes += size as u64;
        tracing::info!(table = %table.name, key = %key, rows = rows.rows, bytes = size, "lake file written");
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::json;

    use super::*;
    use crate::config::{LakeConfig, RawLake, RawLakeRole};
    use crate::event::CloudEvent;
    use crate::lake::segment::{Limits, Row, Segments};
    use crate::lake::table::{Coordinates, Hour};
    use crate::schema::SchemaRegistry;

    const RECORDS: i64 = 300;

    /// A small deterministic generator, so a failure reproduces.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (self.0 >> 33) % n
        }
    }

    /// Offset → (table, hour, JSON row); every 9th record is not a row.
    fn records(tables: &Tables) -> Vec<Option<(usize, Hour, Vec<u8>)>> {
        (0..RECORDS)
            .map(|o| {
                if o % 9 == 4 {
                    return None;
                }
                let ty = if o % 3 == 0 {
                    "a.happened"
                } else {
                    "b.happened"
                };
                let event: CloudEvent = serde_json::from_value(json!({
                    "specversion": "1.0", "id": format!("e-{o}"), "source": "/s", "type": ty,
                    "time": format!("2026-01-01T0{}:00:00Z", (o / 25) % 3), "data": {"n": o}}))
                .expect("event");
                let table = tables.index_of(ty).expect("table");
                let at = Coordinates {
                    topic: "t",
                    partition: 0,
                    offset: o,
                    timestamp_ms: None,
                };
                let mut json = Vec::new();
                let hour = tables.get(table).expect("table").event_row(
                    &event,
                    at,
                    chrono::Utc::now(),
                    &mut json,
                );
                Some((table, hour, json))
            })
            .collect()
    }

    /// Reads the offsets of `from..to` into one segment (its boundaries chosen by the caller, as
    /// age or memory pressure would), keeping only its first `keep` files when given (a crash).
    fn segment(
        records: &[Option<(usize, Hour, Vec<u8>)>],
        from: i64,
        to: i64,
    ) -> Option<crate::lake::segment::Segment> {
        let tp: TopicPartition = ("t".into(), 0);
        let mut segments = Segments::new(Limits {
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        });
        for o in from..to {
            let row = records[o as usize].as_ref().map(|(table, hour, json)| Row {
                table: *table,
                hour: *hour,
                json,
            });
            segments.push(&tp, o, row, Instant::now());
        }
        segments.take(&tp)
    }

    #[tokio::test]
    async fn crashes_between_files_and_replays_with_other_boundaries_keep_each_row_once() {
        for seed in 1..=8 {
            crash_and_replay(seed).await;
        }
    }

    async fn crash_and_replay(seed: u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#;
        for ty in ["a.happened", "b.happened"] {
            std::fs::create_dir_all(dir.path().join("schemas")).expect("mkdir");
            std::fs::write(dir.path().join(format!("schemas/{ty}.json")), schema).expect("write");
        }
        let tables =
            Tables::new(&SchemaRegistry::load(&dir.path().join("schemas")).expect("schemas"));
        let raw = RawLake {
            store: "lake".into(),
            ..RawLake::default()
        };
        let config = LakeConfig::new(raw, RawLakeRole::default(), dir.path()).expect("config");
        let store = LakeStore::open(&config).expect("store");
        let settings = EncodeSettings {
            row_group_rows: 1000,
            zstd_level: 1,
        };
        let tp: TopicPartition = ("t".into(), 0);
        let records = records(&tables);
        let mut rng = Lcg(seed);
        let mut committed = 0;
        let mut crashes = 0;
        // Attempts that crash at random points until one gets to the end.
        while committed < RECORDS {
            let mut offset = committed;
            while offset < RECORDS {
                // Boundaries as age and memory pressure would place them: short and long.
                let most = if rng.below(2) == 0 { 6 } else { 80 };
                let end = (offset + 1 + rng.below(most) as i64).min(RECORDS);
                let Some(mut seg) = segment(&records, offset, end) else {
                    break;
                };
                if rng.below(2) == 0 {
                    // Crash after writing some of the segment's files, before the commit.
                    let keep = rng.below(seg.files.len() as u64 + 1) as usize;
                    seg.files = seg.files.into_iter().take(keep).collect();
                    write_segment(&store, &tables, settings, &tp, seg)
                        .await
                        .expect("write");
                    crashes += 1;
                    break;
                }
                let next = seg.next_offset;
                write_segment(&store, &tables, settings, &tp, seg)
                    .await
                    .expect("write");
                committed = next;
                offset = next;
            }
        }
        assert!(crashes > 5, "seed {seed}: only {crashes} crashes");
        assert_eq!(committed, RECORDS);

        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        let mut stack = vec![dir.path().join("lake")];
        while let Some(path) = stack.pop() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let file = std::fs::File::open(&path).expect("open");
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .expect("parquet")
                    .build()
                    .expect("reader");
                for batch in reader {
                    let batch = batch.expect("batch");
                    let offsets = batch.column_by_name("kafka_offset").expect("offsets");
                    for o in offsets.as_primitive::<Int64Type>().values() {
                        *seen.entry(*o).or_default() += 1;
                    }
                }
            }
        }
        let want: Vec<i64> = (0..RECORDS).filter(|o| o % 9 != 4).collect();
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            want,
            "seed {seed}"
        );
        let repeated: Vec<(&i64, &usize)> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            repeated.is_empty(),
            "seed {seed}: rows stored more than once: {repeated:?}"
        );
    }
}
