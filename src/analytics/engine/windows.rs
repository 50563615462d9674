//! A group's open windows, by start.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;
use std::collections::BTreeMap;

/// A group's open windows by start, in order. A group holds one open window of a tumbling or
/// session analysis and a few of a hopping one: the first is held in place, without an
/// allocation (a B-tree allocates a node of eleven), and more go to a sorted vector. Written
/// as a map from start to window, as a `BTreeMap` is.
#[derive(Debug, Clone)]
pub(super) struct Windows<W>(SmallVec<[(i64, W); 1]>);

impl<W> Default for Windows<W> {
    fn default() -> Self {
        Self(SmallVec::new())
    }
}

impl<W> Windows<W> {
    fn position(&self, start: i64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&start, |(s, _)| *s)
    }

    /// Whether no window is open.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The windows, earliest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (i64, &W)> {
        self.0.iter().map(|(s, w)| (*s, w))
    }

    /// The windows, mutable.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut W> {
        self.0.iter_mut().map(|(_, w)| w)
    }

    /// The window starting at `start`, made with `make` if there is none; and whether it was.
    pub(super) fn get_or_insert_with(
        &mut self,
        start: i64,
        make: impl FnOnce() -> W,
    ) -> (&mut W, bool) {
        let (i, made) = match self.position(start) {
            Ok(i) => (i, false),
            Err(i) => {
                self.0.insert(i, (start, make()));
                (i, true)
            }
        };
        (&mut self.0[i].1, made)
    }

    /// Puts `window` at `start`, replacing the one there.
    pub(super) fn insert(&mut self, start: i64, window: W) {
        match self.position(start) {
            Ok(i) => self.0[i].1 = window,
            Err(i) => self.0.insert(i, (start, window)),
        }
    }

    /// The window starting at `start`.
    pub(super) fn get(&self, start: i64) -> Option<&W> {
        let i = self.position(start).ok()?;
        Some(&self.0[i].1)
    }

    /// How many windows are open.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Takes out the window starting at `start`.
    pub(super) fn remove(&mut self, start: i64) -> Option<W> {
        let i = self.position(start).ok()?;
        Some(self.0.remove(i).1)
    }
}

impl<W: Serialize> Serialize for Windows<W> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(s, w)| (s, w)))
    }
}

impl<'de, W: Deserialize<'de>> Deserialize<'de> for Windows<W> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let read = BTreeMap::<i64, W>::deserialize(deserializer)?;
        Ok(Self(read.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_in_start_order_and_are_written_as_a_b_tree_map_is() {
        let mut windows = Windows::default();
        windows.insert(20, "b");
        windows.insert(0, "a");
        let (w, made) = windows.get_or_insert_with(10, || "m");
        assert!(made);
        assert_eq!(*w, "m");
        let (w, made) = windows.get_or_insert_with(10, || "x");
        assert!(!made);
        assert_eq!(*w, "m");
        let order: Vec<i64> = windows.iter().map(|(s, _)| s).collect();
        assert_eq!(order, [0, 10, 20]);
        let written = serde_json::to_string(&windows).expect("serialises");
        let as_map: BTreeMap<i64, &str> = [(0, "a"), (10, "m"), (20, "b")].into();
        assert_eq!(written, serde_json::to_string(&as_map).expect("serialises"));
        let read: Windows<String> = serde_json::from_str(&written).expect("reads back");
        assert_eq!(read.iter().map(|(s, _)| s).collect::<Vec<_>>(), [0, 10, 20]);
        assert_eq!(windows.get(20), Some(&"b"));
        assert_eq!(windows.len(), 3);
        assert_eq!(windows.remove(10), Some("m"));
        assert_eq!(windows.get(10), None);
        assert_eq!(windows.remove(10), None);
        assert!(!windows.is_empty());
    }
}
