//! Writing a segment: one Parquet file per (table, hour), each encoded off the async threads
//! and created whole at the key named after its first offset, never over an existing file.
//!
//! A key that is taken is read and compared with the rows meant for it ([`compare`]); what
//! happens then is described in [`super::segment`].

use arrow_array::RecordBatch;

use super::encode::{encode_batches, EncodeError, EncodeSettings};
use super::rows::rows_from;
use super::segment::{file_key, FileRows, Segment, TopicPartition};
use super::store::{ExistingFile, LakeStore, Put};
use super::table::{Hour, Table};
use super::{LakeError, Tables};

/// What writing a segment produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Files created.
    pub files: u64,
    /// Rows in them.
    pub rows: u64,
    /// Parquet bytes in them.
    pub bytes: u64,
    /// The same, per table, in table order.
    pub tables: Vec<TableWritten>,
    /// Files found already written with the same records, left as they were.
    pub present: u64,
    /// Files found already written that reach past the segment: (table index, hour, offset of
    /// their last row). The rows up to that offset are in the lake.
    pub reaching_past: Vec<(usize, Hour, i64)>,
    /// Each file created, in order.
    pub created: Vec<FileWritten>,
}

/// One file created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWritten {
    /// Its table.
    pub table: String,
    /// Its key under the lake root.
    pub key: String,
    /// Rows.
    pub rows: u64,
    /// Parquet bytes.
    pub bytes: u64,
    /// When encoding it began and when the store held it.
    pub span: (std::time::SystemTime, std::time::SystemTime),
}

/// What writing a segment produced for one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableWritten {
    /// The table.
    pub table: String,
    /// Files.
    pub files: u64,
    /// Rows.
    pub rows: u64,
    /// Parquet bytes.
    pub bytes: u64,
}

/// How a file found at a key relates to the rows a writer meant to put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The same records.
    Same,
    /// The first of the rows, up to the offset `last`; the others still need a file.
    Fewer {
        /// Offset of the file's last row.
        last: i64,
    },
    /// Every row and records after them, up to the offset `last`.
    More {
        /// Offset of the file's last row.
        last: i64,
    },
    /// Other records: what differs.
    Other(String),
}

/// Compares the file found at a key with the rows (their offsets, ascending) meant for it.
pub fn compare(tp: &TopicPartition, ours: &[i64], found: &ExistingFile) -> Found {
    if found.topic.as_deref().is_some_and(|t| t != tp.0)
        || found.partition.is_some_and(|p| p != tp.1)
    {
        return Found::Other(format!(
            "its footer names topic \"{}\" partition {}",
            found.topic.as_deref().unwrap_or("?"),
            found
                .partition
                .map_or_else(|| "?".to_owned(), |p| p.to_string())
        ));
    }
    let Some(theirs) = found.offsets.as_deref() else {
        return Found::Other("it has no kafka_offset column".to_owned());
    };
    let (Some(our_last), Some(their_last)) = (ours.last(), theirs.last()) else {
        return Found::Other(format!(
            "it holds {} rows where this worker has {}",
            theirs.len(),
            ours.len()
        ));
    };
    let their_head: Vec<i64> = theirs
        .iter()
        .copied()
        .take_while(|o| o <= our_last)
        .collect();
    let our_head: Vec<i64> = ours
        .iter()
        .copied()
        .take_while(|o| o <= their_last)
        .collect();
    if their_head != our_head {
        let at = their_head
            .iter()
            .zip(&our_head)
            .find(|(a, b)| a != b)
            .map_or_else(
                || {
                    format!(
                        "the first {} rows agree",
                        their_head.len().min(our_head.len())
                    )
                },
                |(a, b)| format!("the first difference is offset {a} where this worker has {b}"),
            );
        return Found::Other(format!(
            "it holds {} rows, offsets {}..={their_last}, where this worker has {} rows, offsets {}..={our_last}; {at}",
            theirs.len(),
            theirs.first().copied().unwrap_or_default(),
            ours.len(),
            ours.first().copied().unwrap_or_default(),
        ));
    }
    match their_last.cmp(our_last) {
        std::cmp::Ordering::Equal => Found::Same,
        std::cmp::Ordering::Less => Found::Fewer { last: *their_last },
        std::cmp::Ordering::Greater => Found::More { last: *their_last },
    }
}

/// Writes every file of `segment`, in (table, hour) order, keeping those already written (so it
/// can be tried again after a failure); the caller commits afterwards, unless a file reaches
/// past the segment ([`Written::reaching_past`]).
pub async fn write_segment(
    store: &LakeStore,
    tables: &Tables,
    settings: EncodeSettings,
    tp: &TopicPartition,
    segment: &Segment,
) -> Result<Written, LakeError> {
    let mut written = Written::default();
    for (&(index, hour), rows) in &segment.files {
        let Some(table) = tables.get(index) else {
            continue;
        };
        let FileRows {
            offsets,
            data,
            last_offset,
            ..
        } = rows;
        let last_offset = *last_offset;
        // Sealed when the segment was taken; shared, so the segment stays whole for another try
        // while the store is down.
        let batches = data.batches().map_err(|message| EncodeError::Row {
            table: table.name.clone(),
            message,
        })?;
        // Rows from `start` on still need a file.
        let mut start = 0;
        while start < offsets.len() {
            let first = offsets[start];
            let key = file_key(&table.name, hour, tp, first);
            let range = (first, last_offset);
            let began = std::time::SystemTime::now();
            let rest = rows_from(batches, start);
            let (put, size) = create(store, table, settings, tp, &key, rest, range).await?;
            if put == Put::Created {
                let count = offsets.len() - start;
                written.created.push(FileWritten {
                    table: table.name.clone(),
                    key: key.clone(),
                    rows: count as u64,
                    bytes: size as u64,
                    span: (began, std::time::SystemTime::now()),
                });
                written.files += 1;
                written.rows += count as u64;
                written.bytes += size as u64;
                // Files come in table order: a table's files are consecutive.
                if written.tables.last().is_none_or(|t| t.table != table.name) {
                    written.tables.push(TableWritten {
                        table: table.name.clone(),
                        ..TableWritten::default()
                    });
                }
                if let Some(t) = written.tables.last_mut() {
                    t.files += 1;
                    t.rows += count as u64;
                    t.bytes += size as u64;
                }
                tracing::info!(table = %table.name, key = %key, rows = count, bytes = size, "lake file written");
                break;
            }
            let found = store.existing(&key).await?;
            match compare(tp, &offsets[start..], &found) {
                Found::Same => {
                    written.present += 1;
                    tracing::info!(table = %table.name, key = %key, "lake file already written with the same records; kept");
                    break;
                }
                Found::Fewer { last } => {
                    written.present += 1;
                    tracing::info!(table = %table.name, key = %key, last_offset = last, "lake file already written with the first of these records; writing the rest");
                    start += offsets[start..].partition_point(|o| *o <= last);
                }
                Found::More { last } => {
                    written.present += 1;
                    tracing::info!(table = %table.name, key = %key, last_offset = last, "lake file already written with these records and later ones; kept");
                    written.reaching_past.push((index, hour, last));
                    break;
                }
                Found::Other(differs) => {
                    return Err(LakeError::FileConflict {
                        key,
                        location: store.location().to_owned(),
                        topic: tp.0.clone(),
                        partition: tp.1,
                        first,
                        differs,
                    });
                }
            }
        }
    }
    Ok(written)
}

/// Encodes rows (offsets `first..=last`) and creates the file at `key` unless it exists.
async fn create(
    store: &LakeStore,
    table: &Table,
    settings: EncodeSettings,
    tp: &TopicPartition,
    key: &str,
    rows: Vec<RecordBatch>,
    (first, last): (i64, i64),
) -> Result<(Put, usize), LakeError> {
    let metadata = vec![
        ("reflex.topic".to_owned(), tp.0.clone()),
        ("reflex.partition".to_owned(), tp.1.to_string()),
        ("reflex.first_offset".to_owned(), first.to_string()),
        ("reflex.last_offset".to_owned(), last.to_string()),
    ];
    let (name, id) = (table.name.clone(), table.id_column());
    let bytes =
        tokio::task::spawn_blocking(move || encode_batches(&name, id, &rows, settings, metadata))
            .await
            .map_err(|e| LakeError::Task {
                table: table.name.clone(),
                message: e.to_string(),
            })??;
    let size = bytes.len();
    Ok((store.put_new(key, bytes).await?, size))
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
    use crate::lake::table::Coordinates;
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

    /// Offset → (table, event); every 9th record is not a row.
    fn records(tables: &Tables) -> Vec<Option<(usize, CloudEvent)>> {
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
                Some((table, event))
            })
            .collect()
    }

    /// A worker's fresh buffers: segments rotate only when the caller says.
    fn buffers() -> Segments {
        Segments::new(Limits {
            max_records: usize::MAX,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        })
    }

    /// Reads the offsets of `from..to` into one segment (its boundaries chosen by the caller, as
    /// age or memory pressure would).
    fn segment(
        segments: &mut Segments,
        tables: &Tables,
        records: &[Option<(usize, CloudEvent)>],
        from: i64,
        to: i64,
    ) -> Option<crate::lake::segment::Segment> {
        let tp: TopicPartition = ("t".into(), 0);
        for o in from..to {
            let at = Coordinates {
                topic: "t",
                partition: 0,
                offset: o,
                timestamp_ms: None,
            };
            let prepared = records[o as usize].as_ref().map(|(table, event)| {
                let t = tables.get(*table).expect("table");
                (*table, t.event(event, at, chrono::Utc::now()))
            });
            let append = |rows: &mut crate::lake::rows::Rows| {
                prepared.as_ref().map_or(0, |(_, row)| row.append(rows))
            };
            let row = prepared.as_ref().map(|(table, row)| Row {
                table: *table,
                hour: row.hour(),
                append: &append,
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

    const SETTINGS: EncodeSettings = EncodeSettings {
        row_group_rows: 1000,
        zstd_level: 1,
    };

    /// Two tables and a lake in a new temporary directory.
    fn fixture() -> (tempfile::TempDir, Tables, LakeStore) {
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
        (dir, tables, store)
    }

    /// Every file under a directory with its bytes.
    fn files(dir: &std::path::Path) -> BTreeMap<std::path::PathBuf, Vec<u8>> {
        let mut all = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(path) = stack.pop() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(&path).expect("read");
                    all.insert(path, bytes);
                }
            }
        }
        all
    }

    #[test]
    fn found_files_compare_by_their_offsets() {
        let tp: TopicPartition = ("t".into(), 3);
        let file = |offsets: &[i64]| ExistingFile {
            topic: Some("t".into()),
            partition: Some(3),
            offsets: Some(offsets.to_vec()),
        };
        let ours = [10, 12, 13, 17];
        assert_eq!(compare(&tp, &ours, &file(&[10, 12, 13, 17])), Found::Same);
        assert_eq!(
            compare(&tp, &ours, &file(&[10, 12])),
            Found::Fewer { last: 12 }
        );
        assert_eq!(
            compare(&tp, &ours, &file(&[10, 12, 13, 17, 18, 30])),
            Found::More { last: 30 }
        );
        let Found::Other(differs) = compare(&tp, &ours, &file(&[10, 11, 12])) else {
            panic!("a file with offset 11 holds other records");
        };
        assert_eq!(
            differs,
            "it holds 3 rows, offsets 10..=12, where this worker has 4 rows, offsets 10..=17; \
             the first difference is offset 11 where this worker has 12"
        );
        let other_partition = ExistingFile {
            partition: Some(4),
            ..file(&ours)
        };
        assert_eq!(
            compare(&tp, &ours, &other_partition),
            Found::Other("its footer names topic \"t\" partition 4".into())
        );
        let no_offsets = ExistingFile {
            offsets: None,
            ..file(&ours)
        };
        assert!(matches!(compare(&tp, &ours, &no_offsets), Found::Other(_)));
    }

    #[tokio::test]
    async fn a_written_file_is_kept_and_other_records_under_its_name_are_refused() {
        let (dir, tables, store) = fixture();
        let tp: TopicPartition = ("t".into(), 0);
        let records = records(&tables);
        let seg = segment(&mut buffers(), &tables, &records, 0, 40).expect("segment");
        let files_of_segment = seg.files.len() as u64;
        let first = write_segment(&store, &tables, SETTINGS, &tp, &seg)
            .await
            .expect("write");
        assert_eq!((first.files, first.present), (files_of_segment, 0));
        let before = files(&dir.path().join("lake"));

        // The same segment again: nothing is written, every file is found.
        let seg = segment(&mut buffers(), &tables, &records, 0, 40).expect("segment");
        let again = write_segment(&store, &tables, SETTINGS, &tp, &seg)
            .await
            .expect("write");
        assert_eq!(
            again,
            Written {
                present: files_of_segment,
                ..Written::default()
            }
        );
        assert_eq!(files(&dir.path().join("lake")), before);

        // Other records under the same names (offset 2 missing): refused, nothing replaced.
        let mut gap = records.clone();
        gap[2] = None;
        let seg = segment(&mut buffers(), &tables, &gap, 0, 40).expect("segment");
        let err = write_segment(&store, &tables, SETTINGS, &tp, &seg)
            .await
            .expect_err("a file with other records is refused");
        let message = err.to_string();
        assert!(
            message.starts_with("lake file b.happened/date=2026-01-01/hour=00/t-0-1.parquet in ")
                && message.contains("the first difference is offset 2 where this worker has 5"),
            "{message}"
        );
        assert_eq!(files(&dir.path().join("lake")), before);
    }

    async fn crash_and_replay(seed: u64) {
        let (dir, tables, store) = fixture();
        let settings = SETTINGS;
        let tp: TopicPartition = ("t".into(), 0);
        let records = records(&tables);
        let mut rng = Lcg(seed);
        let mut committed = 0;
        let mut crashes = 0;
        let mut present = 0;
        // Attempts that crash at random points until one gets to the end; each is a new worker
        // that starts at the committed offset with empty buffers, as the lake role does.
        while committed < RECORDS {
            let mut segments = buffers();
            let mut offset = committed;
            while offset < RECORDS {
                // Boundaries as age and memory pressure would place them: short and long.
                let most = if rng.below(2) == 0 { 6 } else { 80 };
                let end = (offset + 1 + rng.below(most) as i64).min(RECORDS);
                let Some(mut seg) = segment(&mut segments, &tables, &records, offset, end) else {
                    break;
                };
                if rng.below(2) == 0 {
                    // Crash after writing some of the segment's files, before the commit.
                    let keep = rng.below(seg.files.len() as u64 + 1) as usize;
                    seg.files = seg.files.into_iter().take(keep).collect();
                    write_segment(&store, &tables, settings, &tp, &seg)
                        .await
                        .expect("write");
                    crashes += 1;
                    break;
                }
                let next = seg.next_offset;
                let written = write_segment(&store, &tables, settings, &tp, &seg)
                    .await
                    .expect("write");
                present += written.present;
                for (table, hour, last) in written.reaching_past {
                    segments.cover(&tp, table, hour, last);
                }
                if segments.may_commit(&tp, next) {
                    committed = next;
                }
                offset = next;
            }
        }
        assert!(present > 0, "seed {seed}: no replay met a file");
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
