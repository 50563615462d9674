//! `reflex topics`: creates the configured topics that do not exist yet.

use std::fmt;

use serde::Serialize;

use super::Report;
use crate::config::Config;
use crate::kafka::{self, KafkaSetupError};

/// The topics `reflex topics` created.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicsReport {
    /// The topics created; empty when all existed.
    pub created: Vec<String>,
}

/// Creates every configured topic that is missing, and every topic reflex writes
/// ([`Config::written_topics`]).
pub async fn report(config: &Config) -> Result<TopicsReport, KafkaSetupError> {
    let created =
        kafka::ensure_topics(&config.kafka, &config.topics, &config.written_topics()).await?;
    Ok(TopicsReport { created })
}

impl Report for TopicsReport {}

impl fmt::Display for TopicsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.created.is_empty() {
            return write!(f, "all topics exist");
        }
        let lines: Vec<String> = self
            .created
            .iter()
            .map(|t| format!("created {t}"))
            .collect();
        write!(f, "{}", lines.join("\n"))
    }
}
