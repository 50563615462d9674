//! When each window ends and each absence is due, on event time.

use std::collections::BTreeMap;

use super::Key;

/// Timers by due time (ms), each due time holding its (group, start) pairs in the order they
/// were set.
///
/// A timer is not taken out when what it would close goes away first (a group evicted, a
/// session merged into a longer one, an absence's earlier event arriving): the caller checks a
/// timer when it fires, and reports the ones it knows went stale ([`Self::went_stale`]), so the
/// index is rebuilt ([`Self::wants_rebuild`]) before stale timers outnumber the live ones.
/// Thousands of groups share one window end, so keeping each end's timers in one vector, not
/// ordered by group in one set, spares the comparison of group texts on every insert.
#[derive(Debug, Clone, Default)]
pub(super) struct Timers {
    due: BTreeMap<i64, Vec<(Key, i64)>>,
    /// Timers held, stale ones included.
    len: usize,
    /// Timers known to be stale and still held.
    stale: usize,
    /// An emptied vector of fired timers, reused for the next due time.
    spare: Vec<(Key, i64)>,
}

/// Stale timers below this many never ask for a rebuild.
const REBUILD_FLOOR: usize = 1024;

impl Timers {
    /// Sets a timer for group `key`'s window (or event) starting at `start`, due at `due`.
    pub(super) fn insert(&mut self, due: i64, key: Key, start: i64) {
        let spare = &mut self.spare;
        self.due
            .entry(due)
            .or_insert_with(|| std::mem::take(spare))
            .push((key, start));
        self.len += 1;
    }

    /// Forgets every timer.
    pub(super) fn clear(&mut self) {
        self.due.clear();
        self.len = 0;
        self.stale = 0;
    }

    /// The latest due time.
    pub(super) fn last_due(&self) -> Option<i64> {
        self.due.last_key_value().map(|(due, _)| *due)
    }

    /// Takes out the timers of the earliest due time if it is at or before `watermark`.
    pub(super) fn pop_due(&mut self, watermark: i64) -> Option<(i64, Vec<(Key, i64)>)> {
        let entry = self.due.first_entry()?;
        if *entry.key() > watermark {
            return None;
        }
        let (due, fired) = entry.remove_entry();
        self.len -= fired.len();
        Some((due, fired))
    }

    /// Gives back a vector [`Self::pop_due`] returned, once its timers are handled.
    pub(super) fn recycle(&mut self, mut fired: Vec<(Key, i64)>) {
        fired.clear();
        if fired.capacity() > self.spare.capacity() {
            self.spare = fired;
        }
    }

    /// Notes that `n` timers still held will find nothing to close.
    pub(super) fn went_stale(&mut self, n: usize) {
        self.stale = self.stale.saturating_add(n).min(self.len);
    }

    /// Notes that a fired timer found nothing to close (one [`Self::went_stale`] counted, or
    /// one never reported).
    pub(super) fn fired_stale(&mut self) {
        self.stale = self.stale.saturating_sub(1);
    }

    /// Whether stale timers are more than half of those held (and more than a few): then the
    /// index should be rebuilt from the windows and absences themselves.
    pub(super) fn wants_rebuild(&self) -> bool {
        self.stale > REBUILD_FLOOR && self.stale * 2 > self.len
    }

    /// Timers held, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_by_due_time_then_in_the_order_they_were_set() {
        let mut timers = Timers::default();
        let (a, b): (Key, Key) = ("a".into(), "b".into());
        timers.insert(20, b.clone(), 10);
        timers.insert(10, b.clone(), 0);
        timers.insert(10, a.clone(), 0);
        assert_eq!(timers.len(), 3);
        assert_eq!(timers.last_due(), Some(20));
        assert!(timers.pop_due(9).is_none());
        let (due, fired) = timers.pop_due(15).expect("due at 10");
        assert_eq!(due, 10);
        assert_eq!(fired, vec![(b.clone(), 0), (a, 0)]);
        timers.recycle(fired);
        assert!(timers.pop_due(15).is_none());
        timers.insert(30, b.clone(), 20);
        let (due, fired) = timers.pop_due(i64::MAX).expect("due at 20");
        assert_eq!((due, fired), (20, vec![(b, 10)]));
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn stale_timers_ask_for_a_rebuild_once_they_are_most_of_the_index() {
        let mut timers = Timers::default();
        let key: Key = "g".into();
        for start in 0..3000 {
            timers.insert(start + 60, key.clone(), start);
        }
        timers.went_stale(1000);
        assert!(!timers.wants_rebuild(), "a third stale");
        timers.went_stale(600);
        assert!(timers.wants_rebuild(), "over half stale");
        timers.fired_stale();
        timers.went_stale(usize::MAX);
        assert!(timers.wants_rebuild(), "never more stale than held");
        timers.clear();
        assert!(!timers.wants_rebuild());
        assert_eq!(timers.len(), 0);
    }
}
