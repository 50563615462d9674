//! The parts of the input document a decision can read, and the input built with those parts
//! alone.
//!
//! The [`Walk`] of [`super::syntax`] starts at the entry rule and follows every rule it can
//! use, over-approximating as it does for the redaction rule and the safety proof; every
//! `input…` reference on the way is recorded by its static path, and taken whole from the
//! first variable part on (`input.event.data[k]` records `event.data`). A document that holds
//! the value at each recorded path, and may hold more, answers every reference the decision can
//! make as the whole document does: a path that exists reads the same value, one that does not
//! is absent from both. So the decision is the same, and building the event's `data` whole for
//! each decision, when the rules read two of its fields, is work a worker need not do.
//!
//! The projection is used where workers decide ([`super::Evaluator::decide_with`]); the sampled
//! cross-check decides with the interpreter on the whole document, and `reflex policy test`
//! decides each case with the VM on the projected input against the interpreter on the whole
//! one, so a projection that dropped something the rules read shows as a disagreement.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::syntax::{Graph, Visit, Walk};

/// Which parts of a document a decision can read.
#[derive(Clone, PartialEq)]
pub enum Projection {
    /// The whole value.
    Whole,
    /// Only these members (absent members are absent from the projection too); a value that is
    /// not an object is kept whole.
    Fields(BTreeMap<String, Member>),
}

const WHOLE: &Projection = &Projection::Whole;

/// A member of a [`Projection::Fields`]: its key as regorus holds it, and what of it is read.
#[derive(Clone, PartialEq)]
pub struct Member {
    /// The member's name as a regorus key (made once, shared by every document built).
    pub key: regorus::Value,
    /// What of the member's value is read.
    pub reads: Projection,
}

impl Projection {
    /// The parts of the input document the rule `entry` (`data.<package>.<rule>`) of the
    /// modules in `ast` (regorus's JSON) can read: [`Projection::Whole`] when the rule is not
    /// found or reads `input` whole.
    pub(crate) fn of_rule(ast: &str, entry: &str) -> Result<Self, String> {
        let Some(target) = entry.strip_prefix("data.") else {
            return Ok(Self::Whole);
        };
        let target: Vec<String> = target.split('.').map(str::to_owned).collect();
        let ast: Value = serde_json::from_str(ast).map_err(|e| e.to_string())?;
        let graph = Graph::of(&ast)?;
        let mut walk = Walk::new(&graph, Paths::default());
        if !walk.reach(&target) {
            return Ok(Self::Whole);
        }
        walk.run().map_err(|v| v.reference)?;
        Ok(walk.visitor.projection)
    }

    /// Whether the whole value is read.
    pub fn is_whole(&self) -> bool {
        matches!(self, Self::Whole)
    }

    /// What of member `name` is read: `None` when nothing is.
    pub fn member(&self, name: &str) -> Option<&Projection> {
        match self {
            Self::Whole => Some(WHOLE),
            Self::Fields(members) => members.get(name).map(|m| &m.reads),
        }
    }

    /// Records a read of `path` (taken whole from its end on).
    fn add(&mut self, path: &[String]) {
        let Self::Fields(members) = self else {
            return;
        };
        let Some((first, rest)) = path.split_first() else {
            *self = Self::Whole;
            return;
        };
        members
            .entry(first.clone())
            .or_insert_with(|| Member {
                key: regorus::Value::from(first.as_str()),
                reads: Self::Fields(BTreeMap::new()),
            })
            .reads
            .add(rest);
    }

    /// `value` with only the parts read, as a regorus value.
    pub fn json(&self, value: &Value) -> regorus::Value {
        match (self, value) {
            (Self::Fields(members), Value::Object(object)) => {
                super::input::object(members.iter().filter_map(|(name, member)| {
                    let value = object.get(name)?;
                    Some((member.key.clone(), member.reads.json(value)))
                }))
            }
            _ => super::input::json(value),
        }
    }

    /// The read paths, as `event.type`, `event.data` (`input` when it is read whole).
    pub fn paths(&self) -> Vec<String> {
        fn collect(p: &Projection, prefix: &str, out: &mut Vec<String>) {
            match p {
                Projection::Whole => out.push(prefix.to_owned()),
                Projection::Fields(members) => {
                    for (name, member) in members {
                        let path = if prefix.is_empty() {
                            name.clone()
                        } else {
                            format!("{prefix}.{name}")
                        };
                        collect(&member.reads, &path, out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        match self {
            Self::Whole => out.push("input".to_owned()),
            Self::Fields(_) => collect(self, "", &mut out),
        }
        out
    }
}

impl fmt::Debug for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.paths().join(", "))
    }
}

/// Collects every `input…` path a walk meets.
struct Paths {
    projection: Projection,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            projection: Projection::Fields(BTreeMap::new()),
        }
    }
}

impl Visit for Paths {
    fn input(&mut self, path: &[String], _dynamic: bool) -> Result<(), String> {
        // A variable part after `path` may name any member: the value at `path` is kept whole,
        // which `add` does for every path (a deeper read adds nothing under a whole one).
        self.projection.add(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
