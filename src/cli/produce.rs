//! `reflex produce`: publishes CloudEvents from JSON lines (a file, or standard input) and
//! summarises what was produced, rejected and not delivered.

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use super::Report;
use crate::config::Config;
use crate::produce::{self, ProduceError, ProduceOptions, ProduceReport};

/// Lines of each kind (rejected, not delivered) the text summary names; the JSON names all.
pub const LINES_SHOWN: usize = 20;

/// Why `reflex produce` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProduceCommandError {
    /// The input file cannot be opened.
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Producing failed as a whole.
    #[error(transparent)]
    Produce(#[from] ProduceError),
}

/// What `reflex produce` did with its input.
#[derive(Debug)]
pub struct ProduceSummary(pub ProduceReport);

/// Publishes the lines of `input` (`None` or `-`: standard input).
pub async fn report(
    config: &Config,
    options: &ProduceOptions,
    input: Option<&Path>,
) -> Result<ProduceSummary, ProduceCommandError> {
    let report = match input.filter(|p| p.as_os_str() != "-") {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|source| ProduceCommandError::Open {
                path: path.to_owned(),
                source,
            })?;
            produce::produce(config, options, BufReader::new(file)).await?
        }
        None => produce::produce(config, options, std::io::stdin().lock()).await?,
    };
    Ok(ProduceSummary(report))
}

impl Report for ProduceSummary {
    fn success(&self) -> bool {
        self.0.rejected.is_empty() && self.0.failed.is_empty()
    }
}

impl fmt::Display for ProduceSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (line, reason) in self.0.rejected.iter().take(LINES_SHOWN) {
            writeln!(f, "line {line}: rejected: {reason}")?;
        }
        for (line, error) in self.0.failed.iter().take(LINES_SHOWN) {
            writeln!(f, "line {line}: not delivered: {error}")?;
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ProduceSummary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Rejected<'a> {
            line: usize,
            reason: &'a str,
        }
        #[derive(Serialize)]
        struct Failed<'a> {
            line: usize,
            error: &'a str,
        }
        #[derive(Serialize)]
        struct Summary<'a> {
            produced: u64,
            rejected: Vec<Rejected<'a>>,
            failed: Vec<Failed<'a>>,
            elapsed_seconds: f64,
        }
        let r = &self.0;
        Summary {
            produced: r.produced,
            rejected: r
                .rejected
                .iter()
                .map(|(line, reason)| Rejected {
                    line: *line,
                    reason,
                })
                .collect(),
            failed: r
                .failed
                .iter()
                .map(|(line, error)| Failed { line: *line, error })
                .collect(),
            elapsed_seconds: r.elapsed.as_secs_f64(),
        }
        .serialize(serializer)
    }
}
