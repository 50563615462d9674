//! The analytics engine of one task (one input partition number across the input topics):
//! windows on event time, the watermark, anomaly baselines and absence timers, free of Kafka.
//!
//! Each analysis keeps its own [`State`], which records for every input topic the next offset
//! it reflects, so a state restored from a checkpoint skips the records it already holds when
//! the input is read again from an earlier offset.
//!
//! The watermark of an analysis is the smallest newest event time over the task's inputs that
//! are not idle, minus `allowed_lateness`; it never goes back. A window closes when its end is
//! at or below the watermark; an event whose every window is closed is late: it is counted
//! ([`State::late`]) and reported to the caller, never added. Absence timers fire the same way,
//! at `first`'s time + `within`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat};
// Group keys come from event data: hashed with hashbrown's randomly seeded foldhash, several
// times faster than the standard library's SipHash on short keys.
use hashbrown::hash_map::EntryRef;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use smallvec::SmallVec;

mod timers;
mod windows;

use super::aggregate::Acc;
use super::spec::{Absence, Aggregate, Analysis, Anomaly, Direction, FieldValue, Kind, Window};
use crate::event::{CloudEvent, EventRef, SPEC_VERSION};
use timers::Timers;
use windows::Windows;

/// Name space of finding ids (UUID v5 of analysis, window and group).
const FINDING_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7a1c_55e0_2b7d_4f0e_9d43_0c1f_aa5e_d013);
/// Windows an anomaly group fills with empty values after a gap; past that it skips ahead.
const MAX_EMPTY_WINDOWS: i64 = 100;

/// One record for the engine.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The event.
    pub event: EventRef<'a>,
    /// Its event time (ms since the epoch): `time`, or the record's timestamp without one.
    pub time_ms: i64,
    /// The input topic it was read from (the task fixes the partition).
    pub topic: &'a str,
    /// Its offset.
    pub offset: i64,
}

/// A finding: an event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The analysis that found it.
    pub analysis: String,
    /// The record key: the group's text (or the analysis name without a grouping).
    pub key: String,
    /// The CloudEvent, with a deterministic id.
    pub event: CloudEvent,
}

/// What the engine did with one record, over all analyses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Analyses that read it.
    pub counted: u32,
    /// Analyses for which it was late (counted in their state, not added).
    pub late: u32,
    /// Analyses whose state already reflected it (a replay after a checkpoint).
    pub skipped: u32,
}

/// One input topic's clock in a task.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Input {
    next_offset: i64,
    max_ms: Option<i64>,
    idle: bool,
}

/// One window of one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Win {
    end: i64,
    events: u64,
    /// The first event counted, for `causationid`.
    first_id: Option<String>,
    /// One per aggregate: in place for up to two.
    accs: SmallVec<[Acc; 2]>,
}

/// An EWMA mean and variance of a group's metric.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Baseline {
    mean: f64,
    var: f64,
    n: u32,
}

/// An absence's pending pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pending {
    /// Time and id of the earliest `first` event.
    first: Option<(i64, String)>,
    /// Time of the earliest `then` event.
    then: Option<i64>,
    /// The absence's `within` (ms), which places the timers.
    within: i64,
}

/// A group's text, shared by the group map, the timers and the recency list (one allocation
/// per group, not one per timer or listing).
type Key = Arc<str>;

/// The groups of one analysis in one task, by key.
type Groups = HashMap<Key, Box<Group>>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Group {
    /// Its key in [`State::groups`]. Set when made or restored.
    #[serde(skip)]
    key: Key,
    /// The `group_by` values, for findings; empty when the one `group_by` field is a string,
    /// which is then the key itself ([`values_of`]).
    values: Vec<Value>,
    touched: u64,
    /// The sequence number this group is listed under in `State::recency` (at most
    /// `touched`: a touch does not move it, eviction does).
    #[serde(skip)]
    listed: u64,
    windows: Windows<Win>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    baseline: Option<Baseline>,
    /// A seasonal anomaly's baselines, by the window's start within the season (ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    seasonal: BTreeMap<i64, Baseline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
}

/// The state of one analysis in one task: what a checkpoint holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    inputs: BTreeMap<String, Input>,
    /// Looked up once or more per event: hashed, and written in key order. Boxed, so that
    /// the table's free slots (up to half of it after it grows) cost a pointer, not a group.
    #[serde(serialize_with = "in_key_order", deserialize_with = "keyed")]
    groups: Groups,
    seq: u64,
    watermark: Option<i64>,
    /// Late events counted.
    pub late: u64,
    /// Groups evicted at the `max_groups` bound.
    pub evicted: u64,
    /// When each window ends and each absence is due. Rebuilt on restore.
    #[serde(skip)]
    timers: Timers,
    /// Every group once, under its `listed` sequence number, so the first entry whose number
    /// is still the group's `touched` one is the least recently used group. Rebuilt on restore.
    #[serde(skip)]
    recency: BTreeMap<u64, Key>,
    /// Reused per event: the event's group key, and the windows it falls in.
    #[serde(skip)]
    scratch: (String, Vec<(i64, i64)>),
}

impl State {
    /// Groups held.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// The next offset of `topic` this state reflects (0: none).
    pub fn next_offset(&self, topic: &str) -> i64 {
        self.inputs.get(topic).map_or(0, |i| i.next_offset)
    }

    /// Input topics and the next offset reflected of each.
    pub fn offsets(&self) -> impl Iterator<Item = (&str, i64)> {
        self.inputs.iter().map(|(t, i)| (t.as_str(), i.next_offset))
    }

    /// The watermark (ms), once there is one.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    fn rebuild(&mut self) {
        self.recency.clear();
        for (key, group) in &mut self.groups {
            group.key = key.clone();
            group.listed = group.touched;
            self.recency.insert(group.touched, key.clone());
        }
        self.rebuild_timers();
    }

    /// Sets the timers of every open window and pending absence, and no others.
    fn rebuild_timers(&mut self) {
        self.timers.clear();
        for (key, group) in &self.groups {
            for (start, win) in group.windows.iter() {
                self.timers.insert(win.end, key.clone(), start);
            }
            if let Some(p) = &group.pending {
                for t in p.first.iter().map(|(t, _)| *t).chain(p.then) {
                    self.timers.insert(t + p.within, key.clone(), t);
                }
            }
        }
    }

    /// Drops group `key`; `firing`: one of its timers is the one firing (already taken out).
    fn remove_group(&mut self, key: &str, firing: bool) {
        if let Some(group) = self.groups.remove(key) {
            self.recency.remove(&group.listed);
            let pending = group.pending.as_ref().map_or(0, |p| {
                usize::from(p.first.is_some()) + usize::from(p.then.is_some())
            });
            let timers = group.windows.len() + pending;
            self.timers
                .went_stale(timers.saturating_sub(usize::from(firing)));
        }
    }

    /// Rebuilds the timers once stale ones are most of them.
    fn tidy(&mut self) {
        if self.timers.wants_rebuild() {
            self.rebuild_timers();
        }
    }

    /// Evicts the least recently used groups above `max`, except `keep`.
    fn bound(&mut self, max: usize, keep: &str) {
        let mut kept = None;
        while self.groups.len() > max {
            let Some((listed, key)) = self.recency.pop_first() else {
                break;
            };
            let Some(group) = self.groups.get_mut(&*key) else {
                continue;
            };
            if group.touched != listed {
                // Used since it was listed: list it again where it belongs now.
                group.listed = group.touched;
                self.recency.insert(group.touched, key);
            } else if &*key == keep {
                kept = Some((listed, key));
            } else {
                self.remove_group(&key, false);
                self.evicted += 1;
            }
        }
        if let Some((listed, key)) = kept {
            self.recency.insert(listed, key);
        }
    }

    fn compute_watermark(&self, lateness: i64) -> Option<i64> {
        let mut active = self.inputs.values().filter(|i| !i.idle).peekable();
        let newest = if active.peek().is_none() {
            self.inputs.values().filter_map(|i| i.max_ms).max()
        } else {
            // An active input without an event yet holds the watermark back.
            active
                .map(|i| i.max_ms)
                .try_fold(i64::MAX, |min, t| t.map(|t| min.min(t)))
        };
        let computed = newest.map(|t| t.saturating_sub(lateness));
        match (self.watermark, computed) {
            (Some(w), Some(c)) => Some(w.max(c)),
            (w, c) => w.or(c),
        }
    }
}

/// The analyses of one task and their states.
#[derive(Debug)]
pub struct Engine {
    analyses: Arc<[Analysis]>,
    states: Vec<State>,
    max_groups: usize,
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// The finding id: a UUID v5 of analysis, window and group.
pub fn finding_id(analysis: &str, start: i64, end: i64, group: &str) -> String {
    let name = format!("{analysis}\n{start}\n{end}\n{group}");
    uuid::Uuid::new_v5(&FINDING_NAMESPACE, name.as_bytes()).to_string()
}

impl Engine {
    /// An engine with empty states; each analysis holds at most `max_groups` groups.
    pub fn new(analyses: Arc<[Analysis]>, max_groups: usize) -> Self {
        let states = analyses.iter().map(|_| State::default()).collect();
        Self {
            analyses,
            states,
            max_groups: max_groups.max(1),
        }
    }

    /// The analyses.
    pub fn analyses(&self) -> &[Analysis] {
        &self.analyses
    }

    /// The state of analysis `i`.
    pub fn state(&self, i: usize) -> &State {
        &self.states[i]
    }

    /// Makes `topic` an input of the task: until it has an event (or is idle) it holds the
    /// watermark back.
    pub fn track(&mut self, topic: &str) {
        for i in 0..self.states.len() {
            self.track_for(i, topic);
        }
    }

    /// Makes `input` an input of analysis `i` only (for an analysis fed through a repartition
    /// topic, one input per original topic partition).
    pub fn track_for(&mut self, i: usize, input: &str) {
        self.states[i].inputs.entry(input.to_owned()).or_default();
    }

    /// The serialised state of analysis `i`, for the checkpoint.
    pub fn snapshot(&mut self, i: usize) -> Result<Vec<u8>, serde_json::Error> {
        let state = &mut self.states[i];
        for group in state.groups.values_mut() {
            for win in group.windows.values_mut() {
                win.accs.iter_mut().for_each(Acc::settle);
            }
        }
        serde_json::to_vec(state)
    }

    /// Replaces the state of analysis `i` with a checkpoint's.
    pub fn restore(&mut self, i: usize, bytes: &[u8]) -> Result<(), serde_json::Error> {
        let mut state: State = serde_json::from_slice(bytes)?;
        state.rebuild();
        self.states[i] = state;
        Ok(())
    }

    /// Feeds one record to every analysis; findings of windows and timers it closes go to `out`.
    pub fn observe(&mut self, obs: Observation<'_>, out: &mut Vec<Finding>) -> Observed {
        let mut observed = Observed::default();
        for i in 0..self.analyses.len() {
            let one = self.observe_for(i, obs, out);
            observed.counted += one.counted;
            observed.late += one.late;
            observed.skipped += one.skipped;
        }
        observed
    }

    /// Feeds one record to analysis `i` only. `obs.topic` names the input: an input topic, or
    /// for an analysis fed through a repartition topic the original topic partition, whose
    /// offsets (`obs.offset`) then skip a record forwarded twice.
    pub fn observe_for(
        &mut self,
        i: usize,
        obs: Observation<'_>,
        out: &mut Vec<Finding>,
    ) -> Observed {
        let mut observed = Observed::default();
        let analysis = &self.analyses[i];
        let state = &mut self.states[i];
        if !state.inputs.contains_key(obs.topic) {
            state.inputs.insert(obs.topic.to_owned(), Input::default());
        }
        let Some(input) = state.inputs.get_mut(obs.topic) else {
            return observed;
        };
        if obs.offset < input.next_offset {
            observed.skipped += 1;
            return observed;
        }
        input.next_offset = obs.offset + 1;
        input.idle = false;
        let before = state.watermark;
        input.max_ms = Some(input.max_ms.map_or(obs.time_ms, |m| m.max(obs.time_ms)));
        if analysis.reads(obs.event) {
            if add(analysis, state, obs, before, self.max_groups) {
                observed.counted += 1;
            } else {
                state.late += 1;
                observed.late += 1;
            }
        }
        let watermark = state.compute_watermark(analysis.allowed_lateness);
        advance(analysis, state, watermark, out);
        state.tidy();
        observed
    }

    /// Marks `topic` idle (it stops holding the watermark back until its next record) or not.
    pub fn set_idle(&mut self, topic: &str, idle: bool, out: &mut Vec<Finding>) {
        for i in 0..self.states.len() {
            self.set_idle_for(i, topic, idle, out);
        }
    }

    /// Marks `input` of analysis `i` idle or not (see [`Self::set_idle`]).
    pub fn set_idle_for(&mut self, i: usize, input: &str, idle: bool, out: &mut Vec<Finding>) {
        let analysis = &self.analyses[i];
        let state = &mut self.states[i];
        if let Some(input) = state.inputs.get_mut(input) {
            input.idle = idle;
        }
        let watermark = state.compute_watermark(analysis.allowed_lateness);
        advance(analysis, state, watermark, out);
        state.tidy();
    }

    /// Closes every window and fires every timer, as at the end of a finite input.
    pub fn flush(&mut self, out: &mut Vec<Finding>) {
        for (analysis, state) in self.analyses.iter().zip(&mut self.states) {
            // Anomaly groups would refill empty windows forever: close what holds events.
            if let Some(last) = state.timers.last_due() {
                advance_to(analysis, state, last, out, false);
            }
            state.tidy();
        }
    }
}

/// The windows that contain `t`, as (start, end), earliest first, into `out` (emptied first).
fn windows_of(window: Window, t: i64, out: &mut Vec<(i64, i64)>) {
    out.clear();
    match window {
        Window::Tumbling(size) => {
            let start = t - t.rem_euclid(size);
            out.push((start, start + size));
        }
        Window::Hopping { size, advance } => {
            let mut start = t - t.rem_euclid(advance);
            while start + size > t {
                out.push((start, start + size));
                start -= advance;
            }
            out.reverse();
        }
        Window::Session(gap) => out.push((t, t + gap)),
    }
}

fn group_values(analysis: &Analysis, event: EventRef<'_>) -> Vec<Value> {
    if let [field] = analysis.group_by.as_slice() {
        if field.get(event).is_some_and(FieldValue::is_str) {
            return Vec::new();
        }
    }
    analysis
        .group_by
        .iter()
        .map(|f| f.get(event).map_or(Value::Null, FieldValue::to_json))
        .collect()
}

/// A group's `group_by` values (see [`Group::values`]).
fn values_of<'g>(analysis: &Analysis, key: &str, values: &'g [Value]) -> Cow<'g, [Value]> {
    if values.is_empty() && analysis.group_by.len() == 1 {
        Cow::Owned(vec![Value::String(key.to_owned())])
    } else {
        Cow::Borrowed(values)
    }
}

/// Notes a use of group `key` (made with `values` when new) and returns it. The key is
/// copied only when the group is made, and the group is listed in `recency` only then (see
/// [`State::bound`]).
fn touch<'a>(
    groups: &'a mut Groups,
    recency: &mut BTreeMap<u64, Key>,
    seq: &mut u64,
    key: &str,
    values: impl FnOnce() -> Vec<Value>,
) -> &'a mut Group {
    *seq += 1;
    match groups.entry_ref(key) {
        EntryRef::Occupied(entry) => {
            let group = entry.into_mut();
            group.touched = *seq;
            group
        }
        EntryRef::Vacant(entry) => {
            let entry = entry.insert_entry(Box::new(Group {
                values: values(),
                touched: *seq,
                listed: *seq,
                ..Group::default()
            }));
            let key = entry.key().clone();
            recency.insert(*seq, key.clone());
            let group = entry.into_mut();
            group.key = key;
            group
        }
    }
}

/// Adds the event to the analysis's state; `false` when it is late.
fn add(
    analysis: &Analysis,
    state: &mut State,
    obs: Observation<'_>,
    watermark: Option<i64>,
    max_groups: usize,
) -> bool {
    let t = obs.time_ms;
    let closed = |end: i64| watermark.is_some_and(|w| end <= w);
    let (mut key, mut windows) = std::mem::take(&mut state.scratch);
    analysis.write_group_key(obs.event, &mut key);
    let added = match &analysis.kind {
        Kind::Absence(absence) => add_pending(analysis, absence, state, obs, &key, closed),
        Kind::Windowed {
            window, aggregates, ..
        } => {
            windows_of(*window, t, &mut windows);
            if windows.iter().all(|(_, end)| closed(*end)) {
                false
            } else {
                add_windowed(
                    state,
                    obs,
                    &key,
                    *window,
                    &windows,
                    aggregates,
                    closed,
                    || group_values(analysis, obs.event),
                );
                true
            }
        }
    };
    if added {
        state.bound(max_groups, &key);
    }
    state.scratch = (key, windows);
    added
}

/// Adds an absence's event to its group's pending pair; `false` when it is late.
fn add_pending(
    analysis: &Analysis,
    absence: &Absence,
    state: &mut State,
    obs: Observation<'_>,
    key: &str,
    closed: impl Fn(i64) -> bool,
) -> bool {
    let t = obs.time_ms;
    if closed(t.saturating_add(absence.within)) {
        return false;
    }
    let group = touch(
        &mut state.groups,
        &mut state.recency,
        &mut state.seq,
        key,
        || group_values(analysis, obs.event),
    );
    let within = absence.within;
    let pending = group.pending.get_or_insert_with(|| Pending {
        within,
        ..Pending::default()
    });
    // (whether the event is the earliest of its kind, whether it replaces an earlier one)
    let (timer, replaced) = if obs.event.attributes.ty == absence.first {
        let earliest = pending.first.as_ref().is_none_or(|(ft, _)| t < *ft);
        let replaced = earliest && pending.first.is_some();
        if earliest {
            pending.first = Some((t, obs.event.attributes.id.to_owned()));
        }
        (earliest, replaced)
    } else {
        let earliest = pending.then.is_none_or(|bt| t < bt);
        let replaced = earliest && pending.then.is_some();
        if earliest {
            pending.then = Some(t);
        }
        (earliest, replaced)
    };
    if timer {
        state.timers.insert(t + within, group.key.clone(), t);
    }
    if replaced {
        state.timers.went_stale(1);
    }
    true
}

/// Counts the event in its group's open `windows` (those of a session merged into one).
#[allow(clippy::too_many_arguments)]
fn add_windowed(
    state: &mut State,
    obs: Observation<'_>,
    key: &str,
    window: Window,
    windows: &[(i64, i64)],
    aggregates: &[(String, Aggregate)],
    closed: impl Fn(i64) -> bool,
    values: impl FnOnce() -> Vec<Value>,
) {
    let group = touch(
        &mut state.groups,
        &mut state.recency,
        &mut state.seq,
        key,
        values,
    );
    let new_win = |end: i64| Win {
        end,
        events: 0,
        first_id: None,
        accs: aggregates.iter().map(|(_, a)| Acc::new(a)).collect(),
    };
    let count = |win: &mut Win| {
        win.events += 1;
        if win.first_id.is_none() {
            win.first_id = Some(obs.event.attributes.id.to_owned());
        }
        for (acc, (_, aggregate)) in win.accs.iter_mut().zip(aggregates) {
            acc.add(aggregate, obs.event);
        }
    };
    if let Window::Session(_) = window {
        let (mut start, mut end) = windows[0];
        // Sessions of a group never overlap: merge every one the new one touches.
        let overlapping: Vec<i64> = group
            .windows
            .iter()
            .filter(|(s, w)| *s <= end && w.end >= start)
            .map(|(s, _)| s)
            .collect();
        let mut merged = new_win(end);
        for s in overlapping {
            if let Some(old) = group.windows.remove(s) {
                state.timers.went_stale(1);
                start = start.min(s);
                end = end.max(old.end);
                merged.events += old.events;
                if merged.first_id.is_none() {
                    merged.first_id = old.first_id;
                }
                for (acc, other) in merged.accs.iter_mut().zip(old.accs) {
                    acc.merge(other);
                }
            }
        }
        merged.end = end;
        count(&mut merged);
        group.windows.insert(start, merged);
        // A window's timer is set when the window is made (every window has one).
        state.timers.insert(end, group.key.clone(), start);
        return;
    }
    for &(start, end) in windows {
        if closed(end) {
            continue;
        }
        let (win, made) = group.windows.get_or_insert_with(start, || new_win(end));
        count(win);
        // A window's timer is set when the window is made (every window has one).
        if made {
            state.timers.insert(end, group.key.clone(), start);
        }
    }
}

/// Moves the watermark to `watermark` (if later) and closes what it passes.
fn advance(analysis: &Analysis, state: &mut State, watermark: Option<i64>, out: &mut Vec<Finding>) {
    let Some(w) = watermark else { return };
    if state.watermark.is_some_and(|old| old >= w) {
        return;
    }
    advance_to(analysis, state, w, out, true);
}

fn advance_to(
    analysis: &Analysis,
    state: &mut State,
    w: i64,
    out: &mut Vec<Finding>,
    refill: bool,
) {
    state.watermark = Some(state.watermark.map_or(w, |old| old.max(w)));
    while let Some((end, fired)) = state.timers.pop_due(w) {
        for (key, start) in &fired {
            let live = match &analysis.kind {
                Kind::Absence(absence) => fire_absence(analysis, absence, state, key, *start, out),
                Kind::Windowed { .. } => {
                    close_window(analysis, state, (*start, end), key, w, out, refill)
                }
            };
            if !live {
                state.timers.fired_stale();
            }
        }
        state.timers.recycle(fired);
    }
}

/// Closes group `key`'s window `(start, end)` at watermark `w`, emitting its finding if it
/// meets the condition or the anomaly rule; `false` when there is no such window (its timer
/// was stale: the group evicted, or the session merged into another).
fn close_window(
    analysis: &Analysis,
    state: &mut State,
    (start, end): (i64, i64),
    key: &Key,
    w: i64,
    out: &mut Vec<Finding>,
    refill: bool,
) -> bool {
    let Kind::Windowed {
        window,
        aggregates,
        condition,
        anomaly,
    } = &analysis.kind
    else {
        return false;
    };
    let Some(group) = state.groups.get_mut(&**key) else {
        return false;
    };
    if group.windows.get(start).is_none_or(|win| win.end != end) {
        return false;
    }
    let Some(mut win) = group.windows.remove(start) else {
        return false;
    };
    let values: SmallVec<[Option<f64>; 4]> = win
        .accs
        .iter_mut()
        .zip(aggregates)
        .map(|(acc, (_, a))| acc.value(a))
        .collect();
    let met = !condition.is_empty()
        && condition.iter().all(|c| {
            aggregates
                .iter()
                .position(|(n, _)| *n == c.name)
                .and_then(|i| values[i])
                .is_some_and(|v| c.op.holds(v, c.value))
        });
    let judged = anomaly
        .as_ref()
        .and_then(|a| judge(a, group, start, values[a.metric]));
    if met || judged.is_some() {
        let mut data = window_data(
            analysis,
            aggregates,
            &values_of(analysis, key, &group.values),
            start,
            end,
            &values,
            win.events,
        );
        if let (Some(j), Some(a)) = (&judged, anomaly) {
            let mut judged = json!({
                "metric": aggregates[a.metric].0,
                "value": values[a.metric],
                "mean": j.mean,
                "stddev": j.stddev,
                "z": j.z,
                "threshold": a.threshold,
            });
            if let Some(season) = a.season {
                // Which baseline judged it: the window's place in the season.
                judged["season_ms"] = json!(season);
                judged["season_offset_ms"] = json!(start.rem_euclid(season));
            }
            data.insert("anomaly".into(), judged);
        }
        out.push(finding(
            analysis,
            key,
            start,
            end,
            data,
            win.first_id.take(),
        ));
    }
    if let (Some(_), Window::Tumbling(size), true) = (anomaly, window, refill) {
        // The next period exists even if no event comes: a silent period is a 0.
        let mut next = end;
        if w - next > MAX_EMPTY_WINDOWS * size {
            next = w - w.rem_euclid(*size);
        }
        let (_, made) = group.windows.get_or_insert_with(next, || Win {
            end: next + size,
            events: 0,
            first_id: None,
            accs: aggregates.iter().map(|(_, a)| Acc::new(a)).collect(),
        });
        // A window's timer is set when the window is made (every window has one).
        if made {
            state.timers.insert(next + size, key.clone(), next);
        }
    } else if group.windows.is_empty() && group.baseline.is_none() && group.seasonal.is_empty() {
        // The window was its last timer, and is taken out already.
        state.remove_group(key, false);
    }
    true
}

struct Judgement {
    mean: f64,
    stddev: f64,
    z: f64,
}

/// Judges the value of the window starting at `start` against the group's baseline (with a
/// season, the baseline of the window's place in it), then learns it.
fn judge(
    anomaly: &Anomaly,
    group: &mut Group,
    start: i64,
    value: Option<f64>,
) -> Option<Judgement> {
    let value = value?;
    let baseline = match anomaly.season {
        Some(season) => group.seasonal.entry(start.rem_euclid(season)).or_default(),
        None => group.baseline.get_or_insert_with(Baseline::default),
    };
    let mut judgement = None;
    if baseline.n >= anomaly.warmup && baseline.n > 0 {
        let stddev = baseline.var.max(0.0).sqrt();
        // A flat baseline has no spread: any change is infinitely far; keep it finite.
        let z = ((value - baseline.mean) / stddev.max(1e-9)).clamp(-1e9, 1e9);
        let far = match anomaly.direction {
            Direction::Both => z.abs() >= anomaly.threshold,
            Direction::Above => z >= anomaly.threshold,
            Direction::Below => z <= -anomaly.threshold,
        };
        if far {
            judgement = Some(Judgement {
                mean: baseline.mean,
                stddev,
                z,
            });
        }
    }
    if baseline.n == 0 {
        baseline.mean = value;
        baseline.var = 0.0;
    } else {
        let diff = value - baseline.mean;
        let step = anomaly.alpha * diff;
        baseline.mean += step;
        baseline.var = (1.0 - anomaly.alpha) * (baseline.var + diff * step);
    }
    baseline.n = baseline.n.saturating_add(1);
    judgement
}

fn fire_absence(
    analysis: &Analysis,
    absence: &Absence,
    state: &mut State,
    key: &str,
    start: i64,
    out: &mut Vec<Finding>,
) -> bool {
    let Some(group) = state.groups.get(key) else {
        return false;
    };
    let Some(pending) = &group.pending else {
        return false;
    };
    match &pending.first {
        Some((ta, id)) if *ta == start => {
            let deadline = ta + absence.within;
            if pending.then.is_none_or(|tb| tb > deadline) {
                let mut data = Map::new();
                data.insert("analysis".into(), Value::String(analysis.name.clone()));
                data.insert(
                    "window".into(),
                    json!({"start": rfc3339(*ta), "end": rfc3339(deadline)}),
                );
                let values = values_of(analysis, key, &group.values);
                data.insert("group".into(), group_object(analysis, &values));
                data.insert(
                    "absence".into(),
                    json!({"first": absence.first, "then": absence.then, "first_id": id}),
                );
                out.push(finding(
                    analysis,
                    key,
                    *ta,
                    deadline,
                    data,
                    Some(id.clone()),
                ));
            }
            state.remove_group(key, true);
            true
        }
        None if pending.then == Some(start) => {
            state.remove_group(key, true);
            true
        }
        // The follow-up's timer while the first event's is still to fire (or a stale one).
        _ => false,
    }
}

fn group_object(analysis: &Analysis, values: &[Value]) -> Value {
    Value::Object(
        analysis
            .group_by
            .iter()
            .zip(values)
            .map(|(f, v)| (f.name.clone(), v.clone()))
            .collect(),
    )
}

fn window_data(
    analysis: &Analysis,
    aggregates: &[(String, Aggregate)],
    group: &[Value],
    start: i64,
    end: i64,
    values: &[Option<f64>],
    events: u64,
) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert("analysis".into(), Value::String(analysis.name.clone()));
    data.insert(
        "window".into(),
        json!({"start": rfc3339(start), "end": rfc3339(end)}),
    );
    data.insert("group".into(), group_object(analysis, group));
    data.insert(
        "values".into(),
        Value::Object(
            aggregates
                .iter()
                .zip(values)
                .map(|((n, _), v)| (n.clone(), v.map_or(Value::Null, |v| json!(v))))
                .collect(),
        ),
    );
    data.insert("events".into(), json!(events));
    data
}

fn finding(
    analysis: &Analysis,
    key: &str,
    start: i64,
    end: i64,
    data: Map<String, Value>,
    cause: Option<String>,
) -> Finding {
    let mut extensions = BTreeMap::new();
    if let Some(cause) = cause {
        extensions.insert("causationid".to_owned(), Value::String(cause));
    }
    let subject = (!analysis.group_by.is_empty()).then(|| key.to_owned());
    Finding {
        analysis: analysis.name.clone(),
        key: subject.clone().unwrap_or_else(|| analysis.name.clone()),
        event: CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: finding_id(&analysis.name, start, end, key),
            source: format!("/reflex/analytics/{}", analysis.name),
            ty: analysis.emit.clone(),
            subject,
            time: Some(rfc3339(end)),
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            data: Some(Value::Object(data)),
            extensions,
        },
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

/// Writes the groups in the order of their keys, so a checkpoint of the same state is the same
/// bytes.
fn in_key_order<S: serde::Serializer>(map: &Groups, serializer: S) -> Result<S::Ok, S::Error> {
    let ordered: BTreeMap<&str, &Group> = map.iter().map(|(k, g)| (&**k, &**g)).collect();
    ordered.serialize(serializer)
}

/// Reads the groups written by [`in_key_order`].
fn keyed<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Groups, D::Error> {
    let read = BTreeMap::<String, Group>::deserialize(deserializer)?;
    Ok(read
        .into_iter()
        .map(|(k, g)| (Key::from(k), Box::new(g)))
        .collect())
}
