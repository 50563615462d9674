//! Segments: consecutive records of one Kafka partition, buffered until rotation.
//!
//! A segment starts at the partition's committed offset (the first record consumed after an
//! assignment) and ends where it rotates. When it rotates, its rows are written as one file per
//! (table, hour) — named after the first offset the file holds — and only then is the offset
//! after the segment committed. The next segment starts exactly there, so after a crash the
//! replayed segment starts at the same offset as the lost attempt, and each file it writes has
//! the name of the file the lost attempt may have written for the same rows.
//!
//! Files are created, never replaced (see [`super::store`]). A writer that finds its file's name
//! taken reads the file there and checks that it holds the same records as its own rows from
//! that offset on ([`super::write`]):
//! - the same rows: written before (a replay after a crash, a retried commit); nothing to do;
//! - fewer rows (the earlier attempt's segment rotated sooner, by age or memory pressure): they
//!   stay, and the writer's remaining rows go into a file named after the first of them, which
//!   is the name the earlier attempt gave its next file, so the same check applies there;
//! - more rows (the earlier attempt's segment rotated later): the file reaches past the
//!   segment. Its rows beyond the segment are not buffered again ([`Segments::cover`]) and no
//!   offset inside it is committed, so a later replay never starts a file in the middle of it;
//! - other records: another writer used the name for different data, a bug; the writer stops
//!   with an error naming the file and leaves the segment uncommitted.
//!
//! This also closes the race of a stalled worker: Kafka cannot fence a consumer the way
//! transactions fence producers, and a worker that stalls longer than the group's session
//! timeout loses its partitions to another worker, which re-reads them from the same committed
//! offset. Both then name their files by the same offsets, so when the stalled one resumes and
//! writes before it learns of the rebalance, its writes meet the new owner's files and can
//! neither replace them nor add their rows a second time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::rows::Rows;
use super::table::Hour;

/// A Kafka topic and partition.
pub type TopicPartition = (String, i32);

/// When a segment rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Records (valid or not) per segment.
    pub max_records: usize,
    /// Buffered row bytes (Arrow arrays) per segment.
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
    /// The rows as Arrow arrays, sealed into a record batch when the segment is taken.
    pub data: Rows,
    /// The offset of each row, ascending.
    pub offsets: Vec<i64>,
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

/// A row to buffer: its table, its hour and how to append it to its file's rows.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    /// Index of the table.
    pub table: usize,
    /// Hour partition.
    pub hour: Hour,
    /// Appends the row's values to the rows of its file; returns the bytes they add.
    pub append: &'a dyn Fn(&mut Rows) -> usize,
}

impl std::fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Row")
            .field("table", &self.table)
            .field("hour", &self.hour)
            .finish_non_exhaustive()
    }
}

/// The open segments of every assigned partition, with their total size.
#[derive(Debug)]
pub struct Segments {
    limits: Limits,
    open: HashMap<TopicPartition, Segment>,
    bytes: usize,
    /// Per partition, (table, hour) → the last offset whose row is already in a lake file that
    /// reaches past the written segments.
    covered: HashMap<TopicPartition, BTreeMap<(usize, Hour), i64>>,
}

impl Segments {
    /// No open segments.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            open: HashMap::new(),
            bytes: 0,
            covered: HashMap::new(),
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
        let covered = row.is_some_and(|row| {
            self.covered
                .get(tp)
                .and_then(|c| c.get(&(row.table, row.hour)))
                .is_some_and(|last| offset <= *last)
        });
        if let Some(row) = row.filter(|_| !covered) {
            let file = segment
                .files
                .entry((row.table, row.hour))
                .or_insert_with(|| FileRows {
                    first_offset: offset,
                    ..FileRows::default()
                });
            file.last_offset = offset;
            file.rows += 1;
            let bytes = (row.append)(&mut file.data);
            file.offsets.push(offset);
            segment.bytes += bytes;
            self.bytes += bytes;
        }
        segment.records >= self.limits.max_records || segment.bytes >= self.limits.max_bytes
    }

    /// Removes a partition's segment to write it, its files' rows sealed into record batches.
    pub fn take(&mut self, tp: &TopicPartition) -> Option<Segment> {
        let mut segment = self.open.remove(tp)?;
        self.bytes -= segment.bytes;
        for file in segment.files.values_mut() {
            file.data.seal();
        }
        Some(segment)
    }

    /// Forgets a partition's segment and what is known of its files (revoked, or re-read).
    pub fn drop_partition(&mut self, tp: &TopicPartition) {
        if let Some(segment) = self.open.remove(tp) {
            self.bytes -= segment.bytes;
        }
        self.covered.remove(tp);
    }

    /// Leaves out of a taken segment the rows that a lake file written since they were
    /// buffered already holds ([`Self::cover`]): the first rows of a file, or all of them.
    pub fn trim_covered(&self, tp: &TopicPartition, segment: &mut Segment) {
        let Some(covered) = self.covered.get(tp) else {
            return;
        };
        segment.files.retain(|key, file| {
            let Some(last) = covered.get(key) else {
                return true;
            };
            let skip = file.offsets.partition_point(|o| o <= last);
            if skip == 0 {
                return true;
            }
            if skip == file.offsets.len() {
                return false;
            }
            file.offsets.drain(..skip);
            file.rows -= skip;
            file.first_offset = file.offsets[0];
            file.data.skip(skip);
            true
        });
    }

    /// Forgets every segment.
    pub fn clear(&mut self) {
        self.open.clear();
        self.covered.clear();
        self.bytes = 0;
    }

    /// Notes that the rows of `(table, hour)` up to offset `last` are in a lake file already, so
    /// they are not buffered again.
    pub fn cover(&mut self, tp: &TopicPartition, table: usize, hour: Hour, last: i64) {
        let entry = self
            .covered
            .entry(tp.clone())
            .or_default()
            .entry((table, hour))
            .or_insert(last);
        *entry = (*entry).max(last);
    }

    /// Whether `next_offset` may be committed for the partition: no lake file known to reach
    /// past the written segments holds the record at `next_offset` or a later one written
    /// before it. Forgets the files that end before it.
    pub fn may_commit(&mut self, tp: &TopicPartition, next_offset: i64) -> bool {
        let Some(covered) = self.covered.get_mut(tp) else {
            return true;
        };
        covered.retain(|_, last| *last >= next_offset);
        if covered.is_empty() {
            self.covered.remove(tp);
            return true;
        }
        false
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
        self.largest_where(|_| true)
    }

    /// The partition with the most buffered bytes among those `eligible` accepts.
    pub fn largest_where(
        &self,
        eligible: impl Fn(&TopicPartition) -> bool,
    ) -> Option<TopicPartition> {
        self.open
            .iter()
            .filter(|(tp, _)| eligible(tp))
            .max_by_key(|(tp, s)| (s.bytes, std::cmp::Reverse((*tp).clone())))
            .map(|(tp, _)| tp.clone())
    }

    /// Whether a partition has an open segment.
    pub fn contains(&self, tp: &TopicPartition) -> bool {
        self.open.contains_key(tp)
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

    /// A row of three bytes (the length of `{}` and a newline).
    fn three_bytes(_: &mut Rows) -> usize {
        3
    }

    fn row(table: usize, hour: i64) -> Option<Row<'static>> {
        Some(Row {
            table,
            hour: Hour(hour),
            append: &three_bytes,
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

    #[test]
    fn rows_covered_by_a_file_found_after_they_were_buffered_are_left_out_of_the_write() {
        let tp: TopicPartition = ("t".into(), 0);
        let mut s = Segments::new(limits());
        let now = Instant::now();
        for offset in 20..25 {
            s.push(&tp, offset, row((offset % 2) as usize, 1), now);
        }
        let mut seg = s.take(&tp).expect("open");
        // While the segment was buffered, the write before it found a file of table 0 that
        // holds the rows up to offset 22, and one of table 1 up to offset 30.
        s.cover(&tp, 0, Hour(1), 22);
        s.cover(&tp, 1, Hour(1), 30);
        s.trim_covered(&tp, &mut seg);
        let files: Vec<(usize, i64, i64, usize, Vec<i64>)> = seg
            .files
            .iter()
            .map(|((t, _), f)| (*t, f.first_offset, f.last_offset, f.rows, f.offsets.clone()))
            .collect();
        assert_eq!(files, [(0, 24, 24, 1, vec![24])]);
        assert_eq!((seg.first_offset, seg.next_offset), (20, 25));
    }

    #[test]
    fn covered_rows_are_not_buffered_and_hold_back_the_commit() {
        let tp: TopicPartition = ("t".into(), 0);
        let mut s = Segments::new(limits());
        let now = Instant::now();
        // A file of table 0, hour 1 already holds the rows up to offset 12.
        s.cover(&tp, 0, Hour(1), 12);
        assert!(!s.may_commit(&tp, 11), "11 is inside the file");
        assert!(!s.may_commit(&tp, 12), "12 is its last row");
        s.push(&tp, 11, row(0, 1), now);
        s.push(&tp, 12, row(1, 1), now);
        s.push(&tp, 13, row(0, 1), now);
        let seg = s.take(&tp).expect("open");
        let files: Vec<(usize, i64, Vec<i64>)> = seg
            .files
            .iter()
            .map(|((t, h), f)| (*t, h.0, f.offsets.clone()))
            .collect();
        assert_eq!(files, [(0, 1, vec![13]), (1, 1, vec![12])]);
        assert_eq!(seg.records, 3);
        assert!(s.may_commit(&tp, 13), "13 is past the file");
        // Forgotten once committed past, and when the partition is dropped.
        s.push(&tp, 14, row(0, 1), now);
        assert_eq!(s.take(&tp).expect("open").files.len(), 1);
        s.cover(&tp, 0, Hour(1), 30);
        s.drop_partition(&tp);
        assert!(s.may_commit(&tp, 20));
    }
}
