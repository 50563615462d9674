//! `reflex topics`: creates the configured topics that do not exist yet.

use std::fmt;

use serde::Serialize;

use super::Report;
use crate::config::Config;
use crate::kafka::{self, KafkaSetupError};
use crate::role::analytics::{ensure_changelog, AnalyticsError};

/// The topics `reflex topics` created.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TopicsReport {
    /// The topics created; empty when all existed.
    pub created: Vec<String>,
}

/// Why `reflex topics` could not create a topic.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The configured or written topics.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// The analytics role's changelog topic.
    #[error(transparent)]
    Changelog(#[from] AnalyticsError),
}

/// Creates every configured topic that is missing, every topic reflex writes
/// ([`Config::written_topics`]), and, when analyses are declared, the analytics role's compacted
/// changelog topic.
pub async fn report(config: &Config) -> Result<TopicsReport, TopicsError> {
    let mut created =
        kafka::ensure_topics(&config.kafka, &config.topics, &config.written_topics()).await?;
    if !config.analytics.analyses.is_empty() && ensure_changelog(config).await? {
        created.push(config.analytics.changelog_topic.clone());
    }
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
