//! The reports of the `reflex` commands: each command is a function here that returns a value
//! which prints as the command's text ([`std::fmt::Display`]) and as JSON ([`serde::Serialize`],
//! for `--json`), and says whether the command succeeded ([`Report::success`]). `main.rs` only
//! parses the arguments, calls these, prints the report and maps it to the exit status.
//!
//! # Layout
//! - [`analytics`]: `reflex analytics test|eval`, the analyses run offline.
//! - [`check`]: `reflex check`, what the validated configuration holds.
//! - [`topics`]: `reflex topics`, the topics created.
//! - [`schemas`]: `reflex schemas list|check|register` against the schema registry.
//! - [`policy`]: `reflex policy check|status|test`.
//! - [`bundle`]: `reflex policy bundle build`, an OPA-format bundle.
//! - [`produce`]: `reflex produce` and its summary.
//! - [`sign`]: `reflex sign`, a record's publisher signature, and new publisher keys.

pub mod analytics;
pub mod bundle;
pub mod check;
pub mod policy;
pub mod produce;
pub mod schemas;
pub mod sign;
pub mod topics;

use std::time::Duration;

/// A command's result: its text (`Display`, without a trailing newline), its JSON
/// (`Serialize`), and whether the command's exit status is success.
pub trait Report: std::fmt::Display + serde::Serialize {
    /// Whether the command succeeded; a report of problems (an incompatible schema, a failed
    /// policy test, a rejected line) is a failure.
    fn success(&self) -> bool {
        true
    }
}

/// A duration as the configuration writes it (`"1s"`, `"250ms"`).
fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}
