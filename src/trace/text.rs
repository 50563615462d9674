//! The trace as text: a header, the path of outcomes, a `git log`-like timeline, the caused
//! events, the lake files and what was read.

use std::fmt;

use serde_json::Value;

use super::{Step, Trace};

/// An outcome or reason code as people read it (`dead_lettered` → `dead-lettered`).
fn words(code: &str) -> String {
    code.replace('_', "-")
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.found {
            return write!(
                f,
                "no record of event {} since {}\n{}",
                self.event_id,
                self.since,
                self.searched_line()
            );
        }
        write!(f, "event {}", self.event_id)?;
        if let Some(event) = &self.event {
            if let Some(ty) = &event.ty {
                write!(f, " · {ty}")?;
            }
            if let Some(source) = &event.source {
                write!(f, " from {source}")?;
            }
            if let Some(subject) = &event.subject {
                write!(f, " · subject {subject}")?;
            }
        }
        writeln!(f)?;
        if !self.path.is_empty() {
            let path: Vec<String> = self.path.iter().map(|p| words(p)).collect();
            writeln!(f, "path: {}", path.join(" → "))?;
        }
        for step in &self.steps {
            writeln!(f)?;
            write_step(f, step)?;
        }
        if !self.caused.is_empty() {
            writeln!(f, "\ncaused")?;
            for c in &self.caused {
                let outcome = c
                    .outcome
                    .map_or("no audit record since then".to_owned(), |o| {
                        words(o.as_str())
                    });
                writeln!(f, "  {}  {}  {}  → {outcome}", c.event_id, c.ty, c.record)?;
            }
        }
        if !self.lake.is_empty() {
            writeln!(f, "\nlake")?;
            let width = self.lake.iter().map(|h| h.table.len()).max().unwrap_or(0);
            for h in &self.lake {
                writeln!(
                    f,
                    "  {:<width$}  {}  ({})",
                    h.table,
                    h.path,
                    h.records.join(", ")
                )?;
            }
        }
        write!(f, "\n{}", self.searched_line())
    }
}

impl Trace {
    fn searched_line(&self) -> String {
        let records: u64 = self.searched.topics.iter().map(|t| t.records).sum();
        let topics: Vec<&str> = self
            .searched
            .topics
            .iter()
            .map(|t| t.topic.as_str())
            .collect();
        let lake = &self.searched.lake;
        let from_lake = if self.searched.audit_from_lake.is_empty() {
            String::new()
        } else {
            let at: Vec<String> = self
                .searched
                .audit_from_lake
                .iter()
                .map(|(p, o)| format!("{p} from {o}"))
                .collect();
            format!(
                " (audit partition {}: earlier audit records from the lake)",
                at.join(", ")
            )
        };
        format!(
            "read {records} records since {} from {}{from_lake}; lake {}: {} files ({} skipped by date), {} row groups ({} skipped by statistics, {} by bloom filter, {} read)",
            self.since,
            topics.join(", "),
            self.searched.lake_location,
            lake.files,
            lake.skipped_by_date,
            lake.row_groups,
            lake.skipped_by_statistics,
            lake.skipped_by_bloom_filter,
            lake.row_groups_read,
        )
    }
}

fn write_step(f: &mut fmt::Formatter<'_>, step: &Step) -> fmt::Result {
    let at = step.at().unwrap_or("(no time)");
    match step {
        Step::Audit {
            outcome,
            input,
            replay_of,
            audit,
            ..
        } => {
            let label = match replay_of {
                Some(_) => format!("replayed → {}", words(outcome.as_str())),
                None => words(outcome.as_str()),
            };
            write!(f, "* {at}  {label:<15} {input}")?;
            if let Some(replay) = replay_of {
                write!(f, " (replays dead letter {})", replay.dead_letter)?;
            }
            if let Some(round) = audit.get("retry_round").and_then(Value::as_u64) {
                write!(f, " · retry round {round}")?;
            }
            writeln!(f)?;
            write_audit(f, audit)
        }
        Step::DeadLetter {
            record,
            reason,
            error,
            replayed_as,
            ..
        } => {
            writeln!(f, "* {at}  {:<15} {record}", "dead letter")?;
            writeln!(f, "    reason    {reason}: {error}")?;
            if replayed_as.is_empty() {
                writeln!(
                    f,
                    "    replay    not replayed (`reflex dlq replay` sends it back)"
                )
            } else {
                writeln!(f, "    replay    replayed as {}", replayed_as.join(", "))
            }
        }
    }
}

/// The audit record's decision, lookups, action and error, one line each.
fn write_audit(f: &mut fmt::Formatter<'_>, audit: &Value) -> fmt::Result {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    if let Some(decision) = audit.get("decision") {
        let allow = decision.get("allow").and_then(Value::as_bool) == Some(true);
        let mut line = String::from(if allow { "allow" } else { "deny" });
        let reasons: Vec<&str> = decision
            .get("reasons")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !reasons.is_empty() {
            line.push_str(&format!(" · {}", reasons.join("; ")));
        }
        if let Some(failure) = text(decision, "failure") {
            line.push_str(&format!(" · failed closed: {failure}"));
        }
        writeln!(f, "    policy    {line}")?;
    }
    if let Some(revision) = text(audit, "policy_revision").filter(|r| !r.is_empty()) {
        writeln!(f, "    revision  {revision}")?;
    }
    if let Some(lookups) = audit.get("lookups").and_then(Value::as_array) {
        let parts: Vec<String> = lookups
            .iter()
            .map(|l| {
                let name = text(l, "name").unwrap_or_default();
                let source = text(l, "source").unwrap_or_default();
                format!("{name} from {source}")
            })
            .collect();
        if !parts.is_empty() {
            writeln!(f, "    lookups   {}", parts.join(", "))?;
        }
    }
    if let Some(action) = audit.get("action") {
        let mut line = format!(
            "{} ({})",
            text(action, "name").unwrap_or_default(),
            text(action, "kind").unwrap_or_default()
        );
        if let Some(status) = action.get("status").and_then(Value::as_u64) {
            line.push_str(&format!(" · status {status}"));
        }
        if let Some(attempts) = action.get("attempts").and_then(Value::as_u64) {
            let plural = if attempts == 1 { "" } else { "s" };
            line.push_str(&format!(" · {attempts} attempt{plural}"));
        }
        if let Some(id) = text(action, "emitted_id") {
            line.push_str(&format!(" · emitted {id}"));
        }
        writeln!(f, "    action    {line}")?;
    }
    if let Some(reason) = text(audit, "reason") {
        writeln!(f, "    reason    {reason}")?;
    }
    if let Some(error) = text(audit, "error") {
        writeln!(f, "    error     {error}")?;
    }
    Ok(())
}
