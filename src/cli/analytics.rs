//! `reflex analytics test|eval`: the analyses run offline over JSON lines of events.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::Report;
use crate::analytics::testing::{self, TestReport};
use crate::analytics::{self as engine, spec, Analysis};
use crate::config::Config;

/// Why an offline run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsCliError {
    /// The analyses do not load.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// The cases do not load.
    #[error(transparent)]
    Test(#[from] testing::TestError),
    /// The events do not load or lack a time.
    #[error(transparent)]
    Offline(#[from] engine::OfflineError),
}

impl Report for TestReport {
    fn success(&self) -> bool {
        self.failed() == 0
    }
}

fn analyses_of(
    config: &Config,
    dir: Option<&Path>,
) -> Result<(Arc<[Analysis]>, std::path::PathBuf), AnalyticsCliError> {
    Ok(match dir {
        Some(dir) => (spec::load_dir(dir)?.into(), dir.to_owned()),
        None => (
            Arc::clone(&config.analytics.analyses),
            config.analytics.dir.clone(),
        ),
    })
}

/// `reflex analytics test`: every case in `<dir>/tests/*.yaml`.
pub fn test(config: &Config, dir: Option<&Path>) -> Result<TestReport, AnalyticsCliError> {
    let (analyses, dir) = analyses_of(config, dir)?;
    Ok(testing::run(&dir, &analyses, config.analytics.max_groups)?)
}

/// What `reflex analytics eval` found.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Events read.
    pub events: usize,
    /// Events late for some analysis.
    pub late: u64,
    /// The findings, as CloudEvents.
    pub findings: Vec<crate::event::CloudEvent>,
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(
                f,
                "{}",
                serde_json::to_string(finding).map_err(|_| fmt::Error)?
            )?;
        }
        write!(
            f,
            "{} events, {} late, {} findings",
            self.events,
            self.late,
            self.findings.len()
        )
    }
}

impl Report for EvalReport {}

/// `reflex analytics eval`: the findings of the analyses over one JSON-lines file.
pub fn eval(
    config: &Config,
    dir: Option<&Path>,
    input: &Path,
) -> Result<EvalReport, AnalyticsCliError> {
    let (analyses, _) = analyses_of(config, dir)?;
    let events = engine::read_events(input)?;
    let (findings, late) = engine::run_offline(analyses, &events, config.analytics.max_groups)?;
    Ok(EvalReport {
        events: events.len(),
        late,
        findings: findings.into_iter().map(|f| f.event).collect(),
    })
}
