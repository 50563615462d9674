//! The analytics role's worker: its tasks (the analyses' states per partition number), how a
//! record is fed to them, and the publishing of findings, late dead letters and idle releases.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::DeliveryFuture;

use super::repartition::{self, source_input, Routes};
use super::{AnalyticsContext, AnalyticsError, AnalyticsSummary};
use crate::analytics::{Engine, Finding, Observation};
use crate::config::Config;
use crate::event::Attributes;
use crate::ingest::headers::{dead_letter, Letter, Origin, WORKER};
use crate::ingest::AdmittedFields;
use crate::ingest::Input;
use crate::ingest::{Admitter, DeadLetterReason, OutRecord};
use crate::kafka;
use crate::telemetry::{self as metrics, Metrics};

/// One task: the analyses' states for one partition number.
pub(super) struct Task {
    pub(super) engine: Engine,
    /// When each input last had a record, and whether it is marked idle.
    pub(super) seen: BTreeMap<String, (Instant, bool)>,
    /// The same per analysis fed through a repartition topic, for each original topic
    /// partition (empty for the others).
    pub(super) seen_sources: Vec<BTreeMap<String, (Instant, bool)>>,
    /// The next offset of each topic read by this task (inputs and repartition topics): what
    /// the checkpoint commits once the state and every record forwarded are acknowledged.
    pub(super) consumed: BTreeMap<String, i64>,
    /// Findings (and dead letters) published since the last checkpoint.
    pub(super) pending: Vec<(String, DeliveryFuture)>,
    /// Counters already reported per analysis: (late, evicted).
    pub(super) reported: Vec<(u64, u64)>,
    /// Whether the state changed since the last checkpoint.
    pub(super) dirty: bool,
    /// Changelog keys to delete at the next checkpoint: the parts of states written in parts
    /// that a newer checkpoint replaced (see [`super::checkpoint`]).
    pub(super) stale: BTreeSet<String>,
    /// Per analysis, the changelog keys of the parts its latest checkpoint was written in
    /// (empty when it was one record).
    pub(super) parts: Vec<Vec<String>>,
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
    pub(super) routes: Routes,
    /// The loop's clock, read once per tick: when an input last had a record, for idle
    /// release, is known to a tick.
    pub(super) now: Instant,
    /// Deletes consumed repartition records after each checkpoint (none: off, or no
    /// analysis repartitions).
    pub(super) purger: Option<repartition::Purger>,
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
        if revoked.is_empty() {
            return;
        }
        for p in revoked {
            if self.tasks.remove(&p).is_some() {
                tracing::debug!(partition = p, "task dropped");
            }
        }
        self.report_groups();
    }

    /// Restores the task of every assigned partition that has none yet, so the windows of a
    /// restored state close (when its inputs go idle, or at the end of a drain) even if no
    /// record comes.
    pub(super) async fn adopt_assigned(
        &mut self,
        consumer: &StreamConsumer<AnalyticsContext>,
    ) -> Result<(), AnalyticsError> {
        let Ok(assignment) = consumer.assignment() else {
            return Ok(());
        };
        let partitions: Vec<i32> = assignment
            .elements()
            .iter()
            .map(|e| e.partition())
            .filter(|p| !self.tasks.contains_key(p))
            .collect::<std::collections::BTreeSet<i32>>()
            .into_iter()
            .collect();
        if !partitions.is_empty() {
            self.tasks.extend(self.restore(&partitions).await?);
        }
        Ok(())
    }

    /// The task of partition `p`, restored from the changelog the first time.
    async fn task(&mut self, p: i32) -> Result<&mut Task, AnalyticsError> {
        if !self.tasks.contains_key(&p) {
            self.tasks.extend(self.restore(&[p]).await?);
        }
        Ok(self
            .tasks
            .get_mut(&p)
            .unwrap_or_else(|| unreachable!("inserted above")))
    }

    /// Feeds one record to its task and publishes what it finds: an input record to the
    /// analyses that run on the inputs and, forwarded, to the repartition topics of the others;
    /// a repartition topic's record to its analysis.
    pub(super) async fn handle(
        &mut self,
        message: &BorrowedMessage<'_>,
    ) -> Result<(), AnalyticsError> {
        self.summary.records += 1;
        let p = message.partition();
        let headers = kafka::headers_of(message);
        let input = kafka::input_of(message, &headers);
        if let Some(i) = self.routes.analysis_of(input.topic) {
            return self.handle_forwarded(i, &input).await;
        }
        let admitted = if input.topic == self.config.topics.audit {
            match message
                .payload()
                .and_then(|v| crate::analytics::audit_event(v, input.topic, p, input.offset))
            {
                Some(event) => Ok(AdmittedFields::Whole(event)),
                None => return Ok(()),
            }
        } else {
            self.admitter.admit_fields(&input)
        };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(rejection) => {
                tracing::debug!(
                    topic = input.topic,
                    partition = p,
                    offset = input.offset,
                    reason = rejection.reason.code(),
                    "not an event for the analyses"
                );
                return Ok(());
            }
        };
        let event = admitted.view();
        let time_ms = admitted
            .parsed_time()
            .map(|t| t.timestamp_millis())
            .or(input.timestamp_ms)
            .unwrap_or_default();
        let mut findings = std::mem::take(&mut self.findings);
        let mut late = 0;
        let now = self.now;
        {
            self.task(p).await?;
            let routes = &self.routes.topics;
            let Some(task) = self.tasks.get_mut(&p) else {
                return Ok(());
            };
            if let Some(seen) = task.seen.get_mut(input.topic) {
                *seen = (now, false);
            }
            task.dirty = true;
            consumed(task, input.topic, input.offset);
            let observation = Observation {
                event,
                time_ms,
                topic: input.topic,
                offset: input.offset,
            };
            for (i, _) in routes.iter().enumerate().filter(|(_, r)| r.is_none()) {
                late += task.engine.observe_for(i, observation, &mut findings).late;
            }
        }
        let routes = &self.routes;
        let forwarding = routes.topics.iter().any(Option::is_some);
        if !forwarding && late == 0 {
            self.publish_findings(p, &mut findings).await?;
            self.findings = findings;
            self.report(p);
            return Ok(());
        }
        let origin = Origin::of(&input);
        // Forwarded whole, with its data as a `Value`: made once, for the first analysis.
        let mut whole = None;
        let forwards: Vec<OutRecord> = self
            .config
            .analytics
            .analyses
            .iter()
            .zip(&routes.topics)
            .filter_map(|(analysis, topic)| {
                let topic = topic.as_deref()?;
                analysis.reads(event).then(|| {
                    let whole = whole.get_or_insert_with(|| event.to_event());
                    repartition::forward(
                        analysis,
                        topic,
                        routes.partitions,
                        whole,
                        time_ms,
                        &origin,
                    )
                })
            })
            .collect();
        for record in forwards {
            self.summary.repartitioned += 1;
            self.publish(p, record).await?;
        }
        self.late(p, &input, &origin, event.attributes, late)
            .await?;
        self.publish_findings(p, &mut findings).await?;
        self.findings = findings;
        self.report(p);
        Ok(())
    }

    /// Feeds a record of analysis `i`'s repartition topic to that analysis, as read from its
    /// original topic partition (whose offsets skip a record forwarded twice).
    async fn handle_forwarded(
        &mut self,
        i: usize,
        input: &Input<'_>,
    ) -> Result<(), AnalyticsError> {
        let p = input.partition;
        let Some(forwarded) = repartition::read(input.value, input.headers) else {
            tracing::warn!(
                topic = input.topic,
                partition = p,
                offset = input.offset,
                "a record of a repartition topic without the event, its time or its origin; skipped (only the analytics role writes there)"
            );
            return Ok(());
        };
        let source = source_input(&forwarded.origin.topic, forwarded.origin.partition);
        let mut findings = std::mem::take(&mut self.findings);
        let now = self.now;
        let late = {
            let task = self.task(p).await?;
            if let Some(seen) = task.seen_sources.get_mut(i) {
                seen.insert(source.clone(), (now, false));
            }
            task.dirty = true;
            consumed(task, input.topic, input.offset);
            task.engine
                .observe_for(
                    i,
                    Observation {
                        event: (&forwarded.event).into(),
                        time_ms: forwarded.time_ms,
                        topic: &source,
                        offset: forwarded.origin.offset,
                    },
                    &mut findings,
                )
                .late
        };
        self.late(
            p,
            input,
            &forwarded.origin,
            forwarded.event.attributes(),
            late,
        )
        .await?;
        self.publish_findings(p, &mut findings).await?;
        self.findings = findings;
        self.report(p);
        Ok(())
    }

    /// Dead-letters a record `late` analyses found late, when `dead_letter_late` asks for it.
    async fn late(
        &mut self,
        p: i32,
        input: &Input<'_>,
        origin: &Origin,
        event: Attributes<'_>,
        late: u32,
    ) -> Result<(), AnalyticsError> {
        if late == 0 || !self.config.analytics.dead_letter_late {
            return Ok(());
        }
        let error = format!(
            "event time {} is behind the watermark of {late} analyses: their windows had closed",
            event.time.unwrap_or("(record timestamp)"),
        );
        let record = dead_letter(
            input,
            &self.config.topics.dlq,
            &Letter {
                reason: DeadLetterReason::Late,
                error: &error,
                origin,
                worker: &self.worker_id,
                event_type: Some(event.ty),
                retry_round: None,
                context: None,
            },
        );
        self.publish(p, record).await
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
                headers: vec![
                    (
                        "content-type".into(),
                        b"application/cloudevents+json".to_vec(),
                    ),
                    (WORKER.into(), self.worker_id.clone().into_bytes()),
                ],
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

    pub(super) fn report_groups(&self) {
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
                task.release(&self.routes, |at| at.elapsed() >= timeout, &mut findings);
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
                task.release(&self.routes, |_| true, &mut findings);
            }
            self.publish_findings(p, &mut findings).await?;
            self.findings = findings;
        }
        Ok(())
    }

    /// Waits for every record published so far (forwarded records, findings, dead letters);
    /// returns how many there were.
    pub(super) async fn settle(&mut self) -> Result<usize, AnalyticsError> {
        let mut settled = 0;
        for task in self.tasks.values_mut() {
            for (topic, delivery) in task.pending.drain(..) {
                kafka::delivered(delivery)
                    .await
                    .map_err(|source| AnalyticsError::Publish { topic, source })?;
                settled += 1;
            }
        }
        Ok(settled)
    }
}

impl Task {
    /// Marks idle the inputs (and, per analysis fed through a repartition topic, the original
    /// topic partitions) whose last record `expired`, publishing to `out` what that closes.
    fn release(
        &mut self,
        routes: &Routes,
        expired: impl Fn(Instant) -> bool,
        out: &mut Vec<Finding>,
    ) {
        for (topic, (at, idle)) in &mut self.seen {
            if !*idle && expired(*at) {
                *idle = true;
                self.dirty = true;
                tracing::debug!(topic = %topic, "input idle; it no longer holds the watermark back");
                for (i, _) in routes
                    .topics
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.is_none())
                {
                    self.engine.set_idle_for(i, topic, true, out);
                }
            }
        }
        for (i, sources) in self.seen_sources.iter_mut().enumerate() {
            for (source, (at, idle)) in sources {
                if !*idle && expired(*at) {
                    *idle = true;
                    self.dirty = true;
                    tracing::debug!(analysis = i, source = %source, "source partition idle; it no longer holds the repartitioned windows back");
                    self.engine.set_idle_for(i, source, true, out);
                }
            }
        }
    }
}

/// Notes that `topic`'s record at `offset` was handled by `task`.
fn consumed(task: &mut Task, topic: &str, offset: i64) {
    match task.consumed.get_mut(topic) {
        Some(next) => *next = (*next).max(offset + 1),
        None => {
            task.consumed.insert(topic.to_owned(), offset + 1);
        }
    }
}
