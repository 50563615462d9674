//! Key-ordered concurrency within a partition (the Parallel Consumer model), as pure types.
//!
//! Records with the same key run one at a time in offset order; records with different keys
//! (or no key) run concurrently. [`KeyQueue`] holds the records waiting behind a busy key;
//! [`OffsetTracker`] turns completions, which arrive in any order, into the highest offset of a
//! partition below which every record is complete: the only offset that may be committed.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;

/// How records of one partition may overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Records with the same key run in offset order; different keys run concurrently.
    /// Records without a key keep no order among themselves.
    Key,
    /// One record of a partition at a time, in offset order.
    Partition,
}

impl Ordering {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Partition => "partition",
        }
    }
}

/// Completed offsets of one partition, in any order, turned into the offset to commit.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Offsets started and not yet complete.
    open: BTreeSet<i64>,
    /// The lowest offset started: nothing below it is this tracker's to commit.
    first_started: Option<i64>,
    /// The highest offset started.
    last_started: Option<i64>,
    /// The highest offset below which (inclusive) every started record is complete.
    contiguous: Option<i64>,
}

impl OffsetTracker {
    /// An empty tracker (a partition just assigned).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` started. Offsets start in increasing order (the order a partition
    /// is consumed in); gaps (compacted or transaction-marker offsets) are allowed.
    pub fn start(&mut self, offset: i64) {
        self.open.insert(offset);
        self.first_started.get_or_insert(offset);
        self.last_started = Some(self.last_started.map_or(offset, |l| l.max(offset)));
    }

    /// Records that `offset` completed. Returns the new highest contiguous completed offset when
    /// it moved forward: every record at or below it is complete, so it may be committed.
    pub fn complete(&mut self, offset: i64) -> Option<i64> {
        if !self.open.remove(&offset) {
            return None;
        }
        let upto = match self.open.first() {
            Some(&first_open) => first_open - 1,
            None => self.last_started?,
        };
        if self.contiguous.is_some_and(|c| c >= upto) {
            return None;
        }
        // Nothing below the first offset started is ours to commit.
        if self.first_started.is_none_or(|first| upto < first) {
            return None;
        }
        self.contiguous = Some(upto);
        Some(upto)
    }

    /// Records started and not complete.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// The highest contiguous completed offset, if any.
    pub fn contiguous(&self) -> Option<i64> {
        self.contiguous
    }
}

/// The offset trackers of the assigned partitions, each stamped with the assignment it belongs
/// to, so a completion from before a rebalance cannot move the commit of a later assignment.
#[derive(Debug)]
pub struct Partitions<P> {
    assigned: HashMap<P, (u64, OffsetTracker)>,
    generations: u64,
}

impl<P> Default for Partitions<P> {
    fn default() -> Self {
        Self {
            assigned: HashMap::new(),
            generations: 0,
        }
    }
}

impl<P: Eq + Hash> Partitions<P> {
    /// No partition.
    pub fn new() -> Self {
        Self::default()
    }

    /// A record of `partition` at `offset` started; returns the assignment it belongs to. The
    /// first record after an assignment (or a revoke) starts a new one.
    pub fn start(&mut self, partition: P, offset: i64) -> u64 {
        let generations = &mut self.generations;
        let (generation, tracker) = self.assigned.entry(partition).or_insert_with(|| {
            *generations += 1;
            (*generations, OffsetTracker::new())
        });
        tracker.start(offset);
        *generation
    }

    /// A record completed: the offset to commit when it moved. A completion from another
    /// assignment of the partition is ignored.
    pub fn complete(&mut self, partition: &P, generation: u64, offset: i64) -> Option<i64> {
        match self.assigned.get_mut(partition) {
            Some((current, tracker)) if *current == generation => tracker.complete(offset),
            _ => None,
        }
    }

    /// Whether a record of `generation` belongs to the current assignment of `partition`.
    pub fn is_current(&self, partition: &P, generation: u64) -> bool {
        self.assigned
            .get(partition)
            .is_some_and(|(current, _)| *current == generation)
    }

    /// The partition was revoked: its tracker is dropped.
    pub fn revoke(&mut self, partition: &P) {
        self.assigned.remove(partition);
    }
}

/// Records waiting behind a busy key. A key is busy from the moment one of its records starts
/// until [`KeyQueue::finish`] is called for it.
#[derive(Debug)]
pub struct KeyQueue<K, T> {
    busy: HashMap<K, VecDeque<T>>,
    queued: usize,
}

impl<K: Eq + Hash + Clone, T> Default for KeyQueue<K, T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
            queued: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, T> KeyQueue<K, T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers `item` under `key`: returns it back if it may start now (the key was idle and is
    /// now busy), or keeps it behind the key's running record.
    pub fn offer(&mut self, key: K, item: T) -> Option<T> {
        match self.busy.get_mut(&key) {
            Some(waiting) => {
                waiting.push_back(item);
                self.queued += 1;
                None
            }
            None => {
                self.busy.insert(key, VecDeque::new());
                Some(item)
            }
        }
    }

    /// The running record of `key` finished: returns the next one to start (the key stays busy),
    /// or frees the key.
    pub fn finish(&mut self, key: &K) -> Option<T> {
        let waiting = self.busy.get_mut(key)?;
        match waiting.pop_front() {
            Some(next) => {
                self.queued -= 1;
                Some(next)
            }
            None => {
                self.busy.remove(key);
                None
            }
        }
    }

    /// Drops the waiting records for which `drop` is true (a revoked partition's), keeping each
    /// key busy while its running record runs. Returns how many were dropped.
    pub fn discard(&mut self, mut drop: impl FnMut(&K, &T) -> bool) -> usize {
        let mut dropped = 0;
        for (key, waiting) in &mut self.busy {
            let before = waiting.len();
            waiting.retain(|item| !drop(key, item));
            dropped += before - waiting.len();
        }
        self.queued -= dropped;
        dropped
    }

    /// Records waiting behind a busy key.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Keys with a running record.
    pub fn busy(&self) -> usize {
        self.busy.len()
    }
}

/// What to do with an event of a key that may have events in the retry topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Run,
    /// Send it to the retry topic unprocessed, behind the named event of its key.
    WaitBehind(String),
    /// It is in the retry topic already (read again from its event topic after a crash or a
    /// rebalance): its copy there runs in its turn, so this one is only booked.
    AlreadyWaiting,
    /// Its copy in the retry topic, learned at an assignment, ran before the event was read
    /// again from its event topic: it is not run a second time.
    AlreadyRan,
}

/// Keys with events in the retry topic, each with the ids of those events in their order.
/// While a key has one, its later events follow it into the retry topic instead of overtaking.
///
/// The state lives in the worker that owns the key's partition: a retry record goes to the
/// partition of the retry topic numbered like the event partition it came from, and the range
/// assignors give partition `p` of every topic to the same member. A worker forgets the keys of
/// the partitions it loses, and learns those of the partitions it gains by reading their retry
/// partition from the group's committed offset before it takes their records.
///
/// A worker that sent an event to the retry topic and stopped before committing its offset
/// leaves both copies to the next owner: the one in the retry topic, learned at the assignment
/// ([`Parking::hand_over`]), and the one in the event topic, read again. Whichever comes first,
/// the event runs once: read again while its copy waits, it is [`Verdict::AlreadyWaiting`];
/// read again after its copy ran, [`Verdict::AlreadyRan`].
#[derive(Debug)]
pub struct Parking<K> {
    keys: HashMap<K, VecDeque<String>>,
    /// Events learned from the retry topic at an assignment whose event-topic copy has not been
    /// read again yet, by id.
    handed: HashMap<String, K>,
    /// Of those, the ones whose retry copy is done with.
    ran: HashMap<String, K>,
}

impl<K> Default for Parking<K> {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
            handed: HashMap::new(),
            ran: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> Parking<K> {
    /// No parked keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Event `id` of `key` waits in the retry topic, as read at an assignment: parked, and its
    /// copy in the event topic, if read again, runs at most once between the two.
    pub fn hand_over(&mut self, key: K, id: &str) {
        self.handed.insert(id.to_owned(), key.clone());
        self.park(key, id);
    }

    /// The verdict on event `id` of `key` read from an event topic (not the retry topic).
    pub fn verdict_on_event(&mut self, key: &K, id: &str) -> Verdict {
        if !self.handed.is_empty() {
            self.handed.remove(id);
        }
        if !self.ran.is_empty() && self.ran.remove(id).is_some() {
            return Verdict::AlreadyRan;
        }
        self.verdict(key, id, false)
    }

    /// The verdict on event `id` of `key`, read from the retry topic (`from_retry`) or from an
    /// event topic.
    pub fn verdict(&self, key: &K, id: &str, from_retry: bool) -> Verdict {
        let Some(parked) = self.keys.get(key) else {
            return Verdict::Run;
        };
        let Some(first) = parked.front() else {
            return Verdict::Run;
        };
        let waiting = parked.iter().any(|p| p == id);
        if from_retry && (first == id || !waiting) {
            // Its turn, or an event parked before this worker knew the key.
            return Verdict::Run;
        }
        if !from_retry && waiting {
            return Verdict::AlreadyWaiting;
        }
        Verdict::WaitBehind(first.clone())
    }

    /// Event `id` of `key` went to the retry topic; it keeps its place if it was parked already.
    pub fn park(&mut self, key: K, id: &str) {
        let parked = self.keys.entry(key).or_default();
        if !parked.iter().any(|p| p == id) {
            parked.push_back(id.to_owned());
        }
    }

    /// Event `id` of `key` is done with (actioned, denied or dead-lettered).
    pub fn resolve(&mut self, key: &K, id: &str) {
        if let Some(handed) = self.handed.remove(id) {
            self.ran.insert(id.to_owned(), handed);
        }
        if let Some(parked) = self.keys.get_mut(key) {
            parked.retain(|p| p != id);
            if parked.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Forgets the keys for which `lost` holds; returns how many.
    pub fn forget(&mut self, mut lost: impl FnMut(&K) -> bool) -> usize {
        self.handed.retain(|_, key| !lost(key));
        self.ran.retain(|_, key| !lost(key));
        let before = self.keys.len();
        self.keys.retain(|key, _| !lost(key));
        before - self.keys.len()
    }

    /// Keys with events in the retry topic.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is parked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Of the copies of events waiting in the retry topic, in offset order as `(event id,
/// position)`, the positions of those a later copy of the same event supersedes: a worker ran
/// the earlier one and wrote the next round, then stopped before its commit.
pub fn superseded<P: Copy + PartialEq>(copies: &[(&str, P)]) -> Vec<P> {
    let mut last: HashMap<&str, P> = HashMap::new();
    for &(id, at) in copies {
        last.insert(id, at);
    }
    copies
        .iter()
        .filter(|(id, at)| last.get(id) != Some(at))
        .map(|&(_, at)| at)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_copy_of_an_event_runs() {
        let copies = [("e1", 35), ("e2", 36), ("e1", 37), ("e3", 38), ("e1", 39)];
        assert_eq!(superseded(&copies), [35, 37]);
        assert!(superseded::<i64>(&[]).is_empty());
        assert!(superseded(&[("e1", 1), ("e2", 2)]).is_empty());
    }

    #[test]
    fn a_parked_key_keeps_its_order_through_the_retry_topic() {
        let mut p: Parking<&str> = Parking::new();
        assert_eq!(p.verdict(&"k", "e1", false), Verdict::Run);
        p.park("k", "e1");
        // e2 arrives on the event topic while e1 waits: it follows e1.
        assert_eq!(
            p.verdict(&"k", "e2", false),
            Verdict::WaitBehind("e1".into())
        );
        p.park("k", "e2");
        // Other keys are not affected.
        assert_eq!(p.verdict(&"other", "x", false), Verdict::Run);
        // From the retry topic e1 runs; if it fails again it keeps the head.
        assert_eq!(p.verdict(&"k", "e1", true), Verdict::Run);
        p.park("k", "e1");
        assert_eq!(
            p.verdict(&"k", "e2", true),
            Verdict::WaitBehind("e1".into())
        );
        // e1 succeeds: e2 is next.
        p.resolve(&"k", "e1");
        assert_eq!(p.verdict(&"k", "e2", true), Verdict::Run);
        assert_eq!(
            p.verdict(&"k", "e3", false),
            Verdict::WaitBehind("e2".into())
        );
        p.resolve(&"k", "e2");
        assert!(p.is_empty());
        assert_eq!(p.verdict(&"k", "e3", false), Verdict::Run);
    }

    #[test]
    fn an_event_read_again_while_its_copy_waits_is_not_sent_twice() {
        let mut p: Parking<&str> = Parking::new();
        p.park("k", "e1");
        p.park("k", "e2");
        // After a crash the event topic is read again from the committed offset.
        assert_eq!(p.verdict(&"k", "e1", false), Verdict::AlreadyWaiting);
        assert_eq!(p.verdict(&"k", "e2", false), Verdict::AlreadyWaiting);
        assert_eq!(
            p.verdict(&"k", "e3", false),
            Verdict::WaitBehind("e1".into())
        );
    }

    #[test]
    fn an_event_handed_over_runs_once_whichever_copy_comes_first() {
        let mut p: Parking<&str> = Parking::new();
        p.hand_over("k", "e1");
        p.hand_over("k", "e2");
        // e1: the event-topic copy first, then the retry copy runs.
        assert_eq!(p.verdict_on_event(&"k", "e1"), Verdict::AlreadyWaiting);
        assert_eq!(p.verdict(&"k", "e1", true), Verdict::Run);
        p.resolve(&"k", "e1");
        // e2: the retry copy runs first, then the event-topic copy is read again.
        assert_eq!(p.verdict(&"k", "e2", true), Verdict::Run);
        p.resolve(&"k", "e2");
        assert_eq!(p.verdict_on_event(&"k", "e2"), Verdict::AlreadyRan);
        // Each only once: a later read of the same id is an ordinary event again, and e1,
        // whose copy was read before its retry ran, is not remembered.
        assert_eq!(p.verdict_on_event(&"k", "e2"), Verdict::Run);
        assert_eq!(p.verdict_on_event(&"k", "e1"), Verdict::Run);
        assert!(p.is_empty());
    }

    #[test]
    fn an_event_sent_to_retry_by_this_worker_is_not_remembered_after_it_runs() {
        let mut p: Parking<&str> = Parking::new();
        p.park("k", "e1");
        p.resolve(&"k", "e1");
        assert_eq!(p.verdict_on_event(&"k", "e1"), Verdict::Run);
    }

    #[test]
    fn a_lost_partition_forgets_its_handed_over_events() {
        let mut p: Parking<(i32, &str)> = Parking::new();
        p.hand_over((0, "k"), "e1");
        p.hand_over((1, "k"), "e2");
        p.resolve(&(0, "k"), "e1");
        p.resolve(&(1, "k"), "e2");
        p.forget(|(partition, _)| *partition == 0);
        assert_eq!(p.verdict_on_event(&(0, "k"), "e1"), Verdict::Run);
        assert_eq!(p.verdict_on_event(&(1, "k"), "e2"), Verdict::AlreadyRan);
    }

    #[test]
    fn an_unknown_retry_record_runs() {
        // After a rebalance the worker does not know what was parked before.
        let mut p: Parking<&str> = Parking::new();
        p.park("k", "e5");
        assert_eq!(p.verdict(&"k", "e1", true), Verdict::Run);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn in_order_completions_advance_one_by_one() {
        let mut t = OffsetTracker::new();
        for o in 0..3 {
            t.start(o);
        }
        assert_eq!(t.complete(0), Some(0));
        assert_eq!(t.complete(1), Some(1));
        assert_eq!(t.complete(2), Some(2));
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn a_slow_record_holds_the_commit_until_it_completes() {
        let mut t = OffsetTracker::new();
        for o in 10..15 {
            t.start(o);
        }
        assert_eq!(t.complete(11), None, "10 is still open");
        assert_eq!(t.complete(13), None);
        assert_eq!(t.complete(14), None);
        assert_eq!(t.complete(10), Some(11), "10 and 11 done, 12 open");
        assert_eq!(t.complete(12), Some(14), "everything started is done");
        assert_eq!(t.contiguous(), Some(14));
    }

    #[test]
    fn gaps_in_offsets_do_not_block() {
        // Compaction and transaction markers leave offsets that are never delivered.
        let mut t = OffsetTracker::new();
        t.start(3);
        t.start(7);
        t.start(8);
        assert_eq!(t.complete(7), None);
        assert_eq!(t.complete(3), Some(7));
        assert_eq!(t.complete(8), Some(8));
    }

    #[test]
    fn unknown_and_repeated_completions_are_ignored() {
        let mut t = OffsetTracker::new();
        t.start(0);
        t.start(1);
        assert_eq!(t.complete(5), None, "never started");
        assert_eq!(t.complete(0), Some(0));
        assert_eq!(t.complete(0), None, "already complete");
        assert_eq!(t.complete(1), Some(1));
    }

    #[test]
    fn starts_after_a_full_drain_continue_from_the_last_commit() {
        let mut t = OffsetTracker::new();
        t.start(0);
        assert_eq!(t.complete(0), Some(0));
        t.start(1);
        t.start(2);
        assert_eq!(t.complete(2), None);
        assert_eq!(t.complete(1), Some(2));
    }

    #[test]
    fn a_reassigned_partition_starts_a_fresh_tracker() {
        // After a rebalance the partition is consumed again from its committed offset: the new
        // tracker knows nothing of the old one's open records, whose completions are discarded
        // by the caller (they belong to the previous assignment).
        let mut old = OffsetTracker::new();
        for o in 0..4 {
            old.start(o);
        }
        assert_eq!(old.complete(0), Some(0));
        let mut new = OffsetTracker::new();
        new.start(1);
        new.start(2);
        assert_eq!(new.complete(2), None, "1 is open in the new assignment");
        assert_eq!(new.complete(1), Some(2));
        assert_eq!(
            new.complete(3),
            None,
            "3 was only started by the old assignment"
        );
    }

    #[test]
    fn completions_from_before_a_rebalance_do_not_move_the_new_commit() {
        let mut p: Partitions<&str> = Partitions::new();
        let old = p.start("t-0", 0);
        for o in 1..4 {
            assert_eq!(p.start("t-0", o), old);
        }
        assert_eq!(p.complete(&"t-0", old, 0), Some(0));
        // Revoked, then assigned again: consumption restarts at the committed offset 1.
        p.revoke(&"t-0");
        let new = p.start("t-0", 1);
        assert_ne!(new, old);
        p.start("t-0", 2);
        // The old assignment's records 1..3 finish late: they are not this assignment's.
        assert_eq!(p.complete(&"t-0", old, 1), None);
        assert_eq!(p.complete(&"t-0", old, 3), None);
        assert_eq!(p.complete(&"t-0", new, 2), None, "1 is open again");
        assert_eq!(p.complete(&"t-0", new, 1), Some(2));
        // Another partition is independent.
        let other = p.start("t-1", 7);
        assert_eq!(p.complete(&"t-1", other, 7), Some(7));
        assert_eq!(p.complete(&"gone", other, 7), None);
    }

    #[test]
    fn same_key_waits_and_other_keys_run() {
        let mut q: KeyQueue<&str, i64> = KeyQueue::new();
        assert_eq!(q.offer("a", 0), Some(0));
        assert_eq!(q.offer("b", 1), Some(1));
        assert_eq!(q.offer("a", 2), None);
        assert_eq!(q.offer("a", 3), None);
        assert_eq!(q.queued(), 2);
        assert_eq!(q.finish(&"b"), None, "b is free");
        assert_eq!(q.offer("b", 4), Some(4));
        assert_eq!(q.finish(&"a"), Some(2), "a's next, in offset order");
        assert_eq!(q.finish(&"a"), Some(3));
        assert_eq!(q.finish(&"a"), None);
        assert_eq!(q.offer("a", 5), Some(5), "a is free again");
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn discarding_a_revoked_partition_keeps_running_keys_busy() {
        let mut q: KeyQueue<(i32, &str), i64> = KeyQueue::new();
        assert!(q.offer((0, "a"), 0).is_some());
        assert!(q.offer((0, "a"), 1).is_none());
        assert!(q.offer((1, "a"), 2).is_some());
        assert!(q.offer((1, "a"), 3).is_none());
        assert_eq!(q.discard(|k, _| k.0 == 0), 1);
        assert_eq!(q.queued(), 1);
        assert_eq!(q.finish(&(0, "a")), None, "its waiting record was dropped");
        assert_eq!(
            q.offer((0, "a"), 1),
            Some(1),
            "re-delivered after the rebalance"
        );
        assert_eq!(q.finish(&(1, "a")), Some(3));
    }

    #[test]
    fn finishing_an_idle_key_is_harmless() {
        let mut q: KeyQueue<u8, u8> = KeyQueue::new();
        assert_eq!(q.finish(&1), None);
        assert_eq!(q.busy(), 0);
    }
}
