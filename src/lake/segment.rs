//! Segments: consecutive records of one Kafka partition, buffered until rotation.
//!
//! A segment starts at the partition's committed offset (the first record consumed after an
//! assignment) and ends where it rotates. When it rotates, its rows are written as one file per
//! (table, hour) — named after the first offset the file holds — and only then is the offset
//! after the segment committed. The next segment starts exactly there, so after a crash the
//! replayed segment starts at the same offset as the lost attempt, and each file it writes has
//! the name of the file the lost attempt may have written for the same rows: the replay
//! overwrites, it never adds. Rotation by rows and bytes counts the records themselves, so it
//! falls at the same offsets on replay; rotation by age or memory pressure may fall elsewhere,
//! which the overwrite still covers because every file is keyed by the first offset of its
//! (table, hour) within a segment that starts at a committed offset.
//!
//! What this does not cover: Kafka cannot fence a consumer the way transactions fence
//! producers. A worker that stalls mid-write for longer than the group's session timeout loses
//! its partitions to another worker, which re-reads from the same committed offset; if the
//! stalled worker's write then lands after the new owner's, a file may be replaced by one with
//! fewer rows. Keep a write well inside `session.timeout.ms` (files of tens of MB are).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::table::Hour;

/// A Kafka topic and partition.
pub type TopicPartition = (String, i32);

/// When a segment rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records (valid or not) per segment.
    pub max_records: usize,
    /// Buffered row bytes (JSON) per segment.
    pub max_bytes: usize,
    /// Age of a segment's first record.
    pub max_age: Duration,
}

/// The rows of one file: one table, one hour, one segment.
#[derive(Debug, Default)]
pub struct FileRows {
    /// Offset of the first row.
    pub first_offset: i64,
    /// Offset of the last row.
    pub last_offset: i64,
    /// Rows.
    pub rows: usize,
    /// The rows as JSON lines.
    pub json: Vec<u8>,
}

/// Consecutive records of one partition.
#[derive(Debug)]
pub struct Segment {
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset after the last record: what is committed once the segment is written.
    pub next_offset: i64,
    /// Records consumed, including those that are not lake rows.
    pub records: usize,
    /// Bytes of buffered rows.
    pub bytes: usize,
    /// When the first record arrived.
    pub opened: Instant,
    /// Rows by (table index, hour).
    pub files: BTreeMap<(usize, Hour), FileRows>,
}

impl Segment {
    fn new(offset: i64, now: Instant) -> Self {
        Self {
            first_offset: offset,
            next_offset: offset,
            records: 0,
            bytes: 0,
            opened: now,
            files: BTreeMap::new(),
        }
    }
}

/// A row to buffer: its table, its hour and its JSON line.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Index of the table.
    pub table: usize,
    /// Hour partition.
    pub hour: Hour,
    /// The JSON line.
    pub json: &'a [u8],
}

/// The open segments of every assigned partition, with their total size.
#[derive(Debug)]
pub struct Segments {
    limits: Limits,
    open: HashMap<TopicPartition, Segment>,
    bytes: usize,
}

impl Segments {
    /// No open segments.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            open: HashMap::new(),
            bytes: 0,
        }
    }

    /// Bytes buffered over all segments.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Adds the record at `offset` (with its row, if it is one) and says whether its segment is
    /// now full. An offset at or below one already buffered means the partition is being read
    /// again from its committed offset: the buffered segment is dropped and a new one begins.
    pub fn push(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        row: Option<Row<'_>>,
        now: Instant,
    ) -> bool {
        let replayed = self
            .open
            .get(tp)
            .is_some_and(|segment| offset < segment.next_offset);
        if replayed {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset, "partition re-read; dropping its buffered segment");
            self.drop_partition(tp);
        }
        if !self.open.contains_key(tp) {
            self.open.insert(tp.clone(), Segment::new(offset, now));
        }
        let Some(segment) = self.open.get_mut(tp) else {
            return false;
        };
        segment.next_offset = offset + 1;
        segment.records += 1;
        if let Some(row) = row {
            let file = segment
                .files
                .entry((row.table, row.hour))
                .or_insert_with(|| FileRows {
                    first_offset: offset,
                    ..FileRows::default()
                });
            file.last_offset = offset;
            file.rows += 1;
            file.json.extend_from_slice(row.json);
            segment.bytes += row.json.len();
            self.bytes += row.json.len();
        }
        segment.records >= self.limits.max_records || segment.bytes >= self.limits.max_bytes
    }

    /// Removes a partition's segment to write it.
    pub fn take(&mut self, tp: &TopicPartition) -> Option<Segment> {
        let segment = self.open.remove(tp)?;
        self.bytes -= segment.bytes;
        Some(segment)
    }

    /// Forgets a partition's segment (revoked, or re-read).
    pub fn drop_partition(&mut self, tp: &TopicPartition) {
        drop(self.take(tp));
    }

    /// Forgets every segment.
    pub fn clear(&mut self) {
        self.open.clear();
        self.bytes = 0;
    }

    /// Partitions whose segment is older than the age limit.
    pub fn expired(&self, now: Instant) -> Vec<TopicPartition> {
        let mut due: Vec<TopicPartition> = self
            .open
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.opened) >= self.limits.max_age)
            .map(|(tp, _)| tp.clone())
            .collect();
        due.sort();
        due
    }

    /// The partition with the most buffered bytes.
    pub fn largest(&self) -> Option<TopicPartition> {
        self.open
            .iter()
            .max_by_key(|(tp, s)| (s.bytes, std::cmp::Reverse((*tp).clone())))
            .map(|(tp, _)| tp.clone())
    }

    /// Every partition with an open segment.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        let mut all: Vec<TopicPartition> = self.open.keys().cloned().collect();
        all.sort();
        all
    }
}

/// The object key of a file: `<table>/date=YYYY-MM-DD/hour=HH/<topic>-<partition>-<first offset>.parquet`.
pub fn file_key(table: &str, hour: Hour, tp: &TopicPartition, first_offset: i64) -> String {
    format!(
        "{table}/{}/{}-{}-{first_offset}.parquet",
        hour.path(),
        tp.0,
        tp.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_records: 5,
            max_bytes: 1000,
            max_age: Duration::from_secs(10),
        }
    }

    fn row(table: usize, hour: i64) -> Option<Row<'static>> {
        Some(Row {
            table,
            hour: Hour(hour),
            json: b"{}\n",
        })
    }

    #[test]
    fn files_split_by_table_and_hour_named_by_first_offset() {
        let tp: TopicPartition = ("events.orders".into(), 2);
        let mut s = Segments::new(limits());
        let now = Instant::now();
        assert!(!s.push(&tp, 100, row(0, 1), now));
        assert!(!s.push(&tp, 101, row(1, 1), now));
        assert!(!s.push(&tp, 102, None, now));
        assert!(!s.push(&tp, 103, row(0, 2), now));
        assert!(s.push(&tp, 104, row(0, 1), now), "5 records rotate");
        assert_eq!(s.bytes(), 12);
        let seg = s.take(&tp).expect("open");
        assert_eq!(
            (seg.first_offset, seg.next_offset, seg.records),
            (100, 105, 5)
        );
        let files: Vec<(usize, i64, i64, i64, usize)> = seg
            .files
            .iter()
            .map(|((t, h), f)| (*t, h.0, f.first_offset, f.last_offset, f.rows))
            .collect();
        assert_eq!(
            files,
            [
                (0, 1, 100, 104, 2),
                (0, 2, 103, 103, 1),
                (1, 1, 101, 101, 1)
            ]
        );
        assert_eq!(s.bytes(), 0);
        assert_eq!(
            file_key("order.placed", Hour(0), &tp, 100),
            "order.placed/date=1970-01-01/hour=00/events.orders-2-100.parquet"
        );
    }

    #[test]
    fn re_read_drops_the_segment_and_age_expires() {
        let tp: TopicPartition = ("t".into(), 0);
        let mut s = Segments::new(limits());
        let start = Instant::now();
        s.push(&tp, 7, row(0, 1), start);
        s.push(&tp, 8, row(0, 1), start);
        // The partition is read again from its committed offset 7.
        s.push(&tp, 7, row(0, 1), start + Duration::from_secs(5));
        assert_eq!(s.bytes(), 3);
        assert!(s.expired(start + Duration::from_secs(14)).is_empty());
        assert_eq!(
            s.expired(start + Duration::from_secs(15)),
            std::slice::from_ref(&tp)
        );
        let seg = s.take(&tp).expect("open");
        assert_eq!((seg.first_offset, seg.records), (7, 1));
    }

    #[test]
    fn bytes_rotate_and_largest_is_found() {
        let mut s = Segments::new(Limits {
            max_bytes: 6,
            ..limits()
        });
        let (a, b): (TopicPartition, TopicPartition) = (("t".into(), 0), ("t".into(), 1));
        let now = Instant::now();
        assert!(!s.push(&a, 0, row(0, 0), now));
        assert!(!s.push(&b, 0, row(0, 0), now));
        assert_eq!(s.largest().map(|tp| tp.1), Some(0));
        assert!(s.push(&b, 1, row(0, 0), now));
        assert_eq!(s.largest(), Some(b));
    }
}
