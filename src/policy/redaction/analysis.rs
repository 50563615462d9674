//! What the redaction rule can read, found from the policy set's syntax tree.
//!
//! The [`Walk`] of [`crate::policy::syntax`] starts at the redaction rule and follows every rule
//! it uses; on the way the [`Reader`] here collects each `input…` reference and stops at a call of
//! a builtin whose value is not a function of its arguments (`time.now_ns()`, …). A `with`
//! modifier is not taken into account (its target is replaced, not read).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::{Reads, RedactionRule};
use crate::policy::syntax::{Graph, Visit, Walk};
use crate::policy::PolicyError;

/// Builtins whose value does not depend only on their arguments: a redaction rule calling one
/// is as impure as one reading `input.context.now`.
const IMPURE_BUILTINS: &[&str] = &[
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
    "http.send",
    "net.lookup_ip_addr",
];

/// Checks that the rule `entry` (`data.<package>.<rule>`) of the modules in `ast` (regorus's
/// JSON) reads only `input.event`, and finds which of its fields.
pub(crate) fn analyse(ast: &str, entry: &str, dir: &Path) -> Result<RedactionRule, PolicyError> {
    let bad_entry = || PolicyError::BadRedaction {
        rule: entry.to_owned(),
    };
    let target: Vec<String> = entry
        .strip_prefix("data.")
        .ok_or_else(bad_entry)?
        .split('.')
        .map(str::to_owned)
        .collect();
    if target.iter().any(|s| s.is_empty()) {
        return Err(bad_entry());
    }
    let ast: Value = serde_json::from_str(ast).map_err(|e| PolicyError::Analysis {
        rule: entry.to_owned(),
        message: e.to_string(),
    })?;
    let graph = Graph::of(&ast).map_err(|message| PolicyError::Analysis {
        rule: entry.to_owned(),
        message,
    })?;
    let mut walk = Walk::new(&graph, Reader::default());
    if !walk.reach(&target) {
        let mut packages: Vec<String> = graph
            .modules
            .iter()
            .map(|m| format!("data.{}", m.package.join(".")))
            .collect();
        packages.sort();
        packages.dedup();
        return Err(PolicyError::NoRedaction {
            rule: entry.to_owned(),
            dir: dir.to_owned(),
            found: packages.join(", "),
        });
    }
    if let Err(v) = walk.run() {
        let rule = &graph.rules[v.rule];
        let file = dir.join(&graph.modules[rule.module].file);
        return Err(PolicyError::ImpureRedaction {
            rule: entry.to_owned(),
            reference: v.reference,
            through: format!("data.{}", rule.path.join(".")),
            location: match v.line {
                Some(line) => format!("{}:{line}", file.display()),
                None => file.display().to_string(),
            },
        });
    }
    Ok(walk.visitor.finish(entry))
}

/// Collects the event fields the rule reads, and refuses anything else.
#[derive(Debug, Default)]
struct Reader {
    fields: BTreeSet<Vec<String>>,
    whole: bool,
}

impl Visit for Reader {
    fn builtin(&mut self, name: &str) -> Result<(), String> {
        if IMPURE_BUILTINS.contains(&name) {
            return Err(format!("{name}()"));
        }
        Ok(())
    }

    /// An `input.<path>` reference: only `input.event…` is allowed.
    fn input(&mut self, path: &[String], dynamic: bool) -> Result<(), String> {
        if path.first().map(String::as_str) != Some("event") {
            let mut reference = String::from("input");
            for segment in path {
                reference.push('.');
                reference.push_str(segment);
            }
            if dynamic {
                reference.push_str("[…]");
            }
            return Err(reference);
        }
        // `input.event` or `input.event.data` taken whole: the key would be the whole event.
        if path.len() == 1 || (path.len() == 2 && path[1] == "data") {
            self.whole = true;
        } else {
            self.fields.insert(path.to_vec());
        }
        Ok(())
    }
}

impl Reader {
    fn finish(self, entry: &str) -> RedactionRule {
        if self.whole {
            return RedactionRule {
                entry: entry.to_owned(),
                reads: Reads::Whole,
                keys: Vec::new(),
            };
        }
        // A field under another field read whole adds nothing to the key.
        let keys: Vec<Vec<String>> = self
            .fields
            .iter()
            .filter(|f| {
                !self
                    .fields
                    .iter()
                    .any(|other| other.len() < f.len() && f[..other.len()] == other[..])
            })
            .cloned()
            .collect();
        RedactionRule {
            entry: entry.to_owned(),
            reads: Reads::Fields(keys.iter().map(|k| k.join(".")).collect()),
            keys,
        }
    }
}
