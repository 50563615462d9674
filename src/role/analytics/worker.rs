//! The analytics role's worker: its tasks (the analyses' states per partition number), how a
//! record is fed to them, and the publishing of findings, late dead letters and idle releases.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::DeliveryFuture;

use super::{AnalyticsContext, AnalyticsError, AnalyticsSummary};
use crate::analytics::{Engine, Finding, Observation};
use crate::config::Config;
use crate::ingest::headers::{dead_letter, Letter, Origin};
use crate::ingest::{Admitter, DeadLetterReason, OutRecord};
use crate::kafka;
use crate::telemetry::{self as metrics, Metrics};

/// One task: the analyses' states for one partition number.
pub(super) struct Task {
    pub(super) engine: Engine,
    /// When each input last had a record, and whether it is marked idle.
    pub(super) seen: BTreeMap<String, (Instant, bool)>,
    /// Findings (and dead letters) published since the last checkpoint.
    pub(super) pending: Vec<(String, DeliveryFuture)>,
    /// Counters already reported per analysis: (late, evicted).
    pub(super) reported: Vec<(u64, u64)>,
    /// Whether the state changed since the last checkpoint.
    pub(super) dirty: bool,
}

/// The worker's state besides the consumer.
pub(super) struct Worker<'a> {
    pub(super) config: &'a Config,
    pub(super) inputs: Vec<String>,
    pub(super) producer: kafka::Producer,
    pub(super) metrics: Arc<Metrics>,
    pub(super) admitter: Admitter,
    pub(super) tasks: BTreeMap<i32, Task>,
    pub(super) summary: AnalyticsSummary,
    pub(super) worker_id: String,
    pub(super) findings: Vec<Finding>,
}

impl Worker<'_> {
    /// Drops the tasks of partitions revoked since the last call.
    pub(super) fn forget_revoked(&mut self, consumer: &StreamConsumer<AnalyticsContext>) {
        let revoked = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for p in revoked {
            if self.tasks.remove(&p).is_some() {
                tracing::debug!(partition = p, "task dropped");
            }
        }
        self.report_groups();
    }

    /// The task of partition `p`, restored from the changelog the first time.
    async fn task(&mut self, p: i32) -> Result<&mut Task, AnalyticsError> {
        if !self.tasks.contains_key(&p) {
            let task = self.restore(p).await?;
            self.tasks.insert(p, task);
        }
        Ok(self
            .tasks
            .get_mut(&p)
            .unwrap_or_else(|| unreachable!("inserted above")))
    }

    /// Feeds one record to its task and publishes what it finds.
    pub(super) async fn handle(
        &mut self,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), AnalyticsError> {
        self.summary.records += 1;
        let p = message.partition();
        let headers = kafka::headers_of(message);
        let input = kafka::input_of(message, &headers);
        let admitted = if message.topic() == self.config.topics.audit {
            match message.payload().and_then(|v| {
                crate::analytics::audit_event(v, message.topic(), p, message.offset())
            }) {
                Some(event) => Ok(event),
                None => return Ok(()),
            }
        } else {
            self.admitter.admit(&input).map(|a| a.event)
        };
        let event = match admitted {
            Ok(event) => event,
            Err(rejection) => {
                tracing::debug!(
                    topic = message.topic(),
                    partition = p,
                    offset = message.offset(),
                    reason = rejection.reason.code(),
                    "not an event for the analyses"
                );
                return Ok(());
            }
        };
        let time_ms = event
            .parsed_time()
            .map(|t| t.timestamp_millis())
            .or(message.timestamp().to_millis())
            .unwrap_or_default();
        let mut findings = std::mem::take(&mut self.findings);
        let observed = {
            let task = self.task(p).await?;
            if let Some(seen) = task.seen.get_mut(message.topic()) {
                *seen = (Instant::now(), false);
            }
            task.dirty = true;
            task.engine.observe(
                Observation {
                    event: &event,
                    time_ms,
                    topic: message.topic(),
                    offset: message.offset(),
                },
                &mut findings,
            )
        };
        if observed.late > 0 && self.config.analytics.dead_letter_late {
            let origin = Origin::of(&input);
            let error = format!(
                "event time {} is behind the watermark of {} analyses: their windows had closed",
                event.time.as_deref().unwrap_or("(record timestamp)"),
                observed.late
            );
            let record = dead_letter(
                &input,
                &self.config.topics.dlq,
                &Letter {
                    reason: DeadLetterReason::Late,
                    error: &error,
                    origin: &origin,
                    worker: &self.worker_id,
                    event_type: Some(&event.ty),
                    retry_round: None,
                    context: None,
                },
            );
            self.publish(p, record).await?;
        }
        self.publish_findings(p, &mut findings).await?;
        self.findings = findings;
        self.report(p);
        Ok(())
    }

    async fn publish_findings(
        &mut self,
        p: i32,
        findings: &mut Vec<Finding>,
    ) -> Result<(), AnalyticsError> {
        for finding in findings.drain(..) {
            self.summary.findings += 1;
            metrics::AnalyticsProgress {
                analysis: &finding.analysis,
                findings: 1,
                late: 0,
                evicted: 0,
                groups: self.groups_of(&finding.analysis),
            }
            .emit(&self.metrics);
            let record = OutRecord {
                topic: self.config.analytics.topic.clone(),
                partition: None,
                key: Some(finding.key.into_bytes()),
                value: Some(finding.event.to_structured()),
                headers: vec![(
                    "content-type".into(),
                    b"application/cloudevents+json".to_vec(),
                )],
            };
            self.publish(p, record).await?;
        }
        Ok(())
    }

    async fn publish(&mut self, p: i32, record: OutRecord) -> Result<(), AnalyticsError> {
        let delivery = kafka::send(&self.producer, &record)
            .await
            .map_err(|source| AnalyticsError::Publish {
                topic: record.topic.clone(),
                source,
            })?;
        if let Some(task) = self.tasks.get_mut(&p) {
            task.pending.push((record.topic, delivery));
        }
        Ok(())
    }

    fn groups_of(&self, analysis: &str) -> u64 {
        let Some(i) = self
            .config
            .analytics
            .analyses
            .iter()
            .position(|a| a.name == analysis)
        else {
            return 0;
        };
        self.tasks
            .values()
            .map(|t| t.engine.state(i).groups() as u64)
            .sum()
    }

    /// Reports the late and evicted counts of partition `p`'s task that moved.
    fn report(&mut self, p: i32) {
        let analyses = Arc::clone(&self.config.analytics.analyses);
        let mut moved = Vec::new();
        if let Some(task) = self.tasks.get_mut(&p) {
            for i in 0..analyses.len() {
                let state = task.engine.state(i);
                let (late, evicted) = task.reported[i];
                if state.late != late || state.evicted != evicted {
                    moved.push((
                        i,
                        state.late.saturating_sub(late),
                        state.evicted.saturating_sub(evicted),
                    ));
                    task.reported[i] = (state.late, state.evicted);
                }
            }
        }
        for (i, late, evicted) in moved {
            self.summary.late += late;
            let name = &analyses[i].name;
            metrics::AnalyticsProgress {
                analysis: name,
                findings: 0,
                late,
                evicted,
                groups: self.groups_of(name),
            }
            .emit(&self.metrics);
        }
    }

    fn report_groups(&self) {
        for analysis in self.config.analytics.analyses.iter() {
            metrics::AnalyticsProgress {
                analysis: &analysis.name,
                findings: 0,
                late: 0,
                evicted: 0,
                groups: self.groups_of(&analysis.name),
            }
            .emit(&self.metrics);
        }
    }

    /// Marks inputs without a record for `idle_timeout` idle, and publishes what that closes.
    pub(super) async fn release_idle(&mut self) -> Result<(), AnalyticsError> {
        let timeout = self.config.analytics.idle_timeout;
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for p in partitions {
            let mut findings = std::mem::take(&mut self.findings);
            if let Some(task) = self.tasks.get_mut(&p) {
                for (topic, (at, idle)) in &mut task.seen {
                    if !*idle && at.elapsed() >= timeout {
                        *idle = true;
                        task.dirty = true;
                        tracing::debug!(topic = %topic, partition = p, "input idle; it no longer holds the watermark back");
                        task.engine.set_idle(topic, true, &mut findings);
                    }
                }
            }
            self.publish_findings(p, &mut findings).await?;
            self.findings = findings;
        }
        Ok(())
    }

    /// Marks every input of every task idle (the end of a drain), publishing what closes.
    pub(super) async fn release_all(&mut self) -> Result<(), AnalyticsError> {
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for p in partitions {
            let mut findings = std::mem::take(&mut self.findings);
            if let Some(task) = self.tasks.get_mut(&p) {
                for (topic, (_, idle)) in &mut task.seen {
                    if !*idle {
                        *idle = true;
                        task.dirty = true;
                        task.engine.set_idle(topic, true, &mut findings);
                    }
                }
            }
            self.publish_findings(p, &mut findings).await?;
            self.findings = findings;
        }
        Ok(())
    }
}
