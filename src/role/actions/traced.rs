//! The span of one record in the actions role, when tracing is on: started before admission,
//! in the trace the event continues, named `process <type>` once the event is decoded, with
//! the stages as children (`decode` and `validate` from admission's timings; `enrich`,
//! `policy` and `action` from the pipeline; `deliver` here), and ended with the record's
//! outcome once its outputs are acknowledged.

use std::future::Future;
use std::time::{Duration, SystemTime};

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};

use super::pipeline::Admitted;
use crate::audit::{AuditRecord, Outcome};
use crate::ingest::Input;
use crate::otel::{self, Consumed, Described, Tracer};

/// The span of one record and its tracer.
pub(super) struct RecordSpan {
    tracer: Tracer,
    cx: Context,
}

impl RecordSpan {
    /// The record's span, started at `started` (before admission), with its finished
    /// `decode` and `validate` children. A record finished at admission gets the span's trace
    /// id in its audit record (the pipeline's later stages find the span current).
    pub(super) fn begin(
        tracer: &Tracer,
        input: &Input<'_>,
        started: SystemTime,
        admitted: &mut Admitted,
    ) -> Self {
        let cx = Self::start(tracer, input, started, admitted);
        if let Admitted::Finished(p) = admitted {
            if p.audit.traceid.is_none() {
                p.audit.traceid = otel::trace_id(&cx);
                // The audit record is the last output.
                if let Some(record) = p.records.last_mut() {
                    record.value = Some(p.audit.encode());
                }
            }
        }
        Self {
            tracer: tracer.clone(),
            cx,
        }
    }

    /// Starts the record's span and its finished admission stages; returns its context.
    fn start(
        tracer: &Tracer,
        input: &Input<'_>,
        started: SystemTime,
        admitted: &Admitted,
    ) -> Context {
        let (extensions, timings) = match admitted {
            Admitted::Event(a) => (Some(&a.event().extensions), a.timings()),
            Admitted::Finished(p) => (None, &p.audit.timings_us),
        };
        let parent = otel::parent(extensions, input.headers);
        let on = Consumed {
            topic: input.topic,
            partition: input.partition,
            offset: input.offset,
        };
        let cx = tracer.record_span(&parent, started, on);
        let described = match admitted {
            Admitted::Event(a) => Some(Described {
                id: &a.event().id,
                ty: &a.event().ty,
                source: &a.event().source,
            }),
            Admitted::Finished(p) => match (&p.audit.event_id, &p.audit.ty) {
                (Some(id), Some(ty)) => Some(Described {
                    id,
                    ty,
                    source: p.audit.source.as_deref().unwrap_or_default(),
                }),
                _ => None,
            },
        };
        if let Some(event) = described {
            otel::describe(&cx, event);
        }
        let decoded = started + Duration::from_micros(timings.decode);
        tracer.finished_stage(&cx, "decode", started, decoded);
        if timings.validate > 0 || matches!(admitted, Admitted::Event(_)) {
            let validated = decoded + Duration::from_micros(timings.validate);
            tracer.finished_stage(&cx, "validate", decoded, validated);
        }
        cx
    }

    /// The context holding the record's span, current while its stages run.
    pub(super) fn context(&self) -> Context {
        self.cx.clone()
    }

    /// Publishing `records` outputs until acknowledged, in a `deliver` span.
    pub(super) async fn deliver<F: Future>(&self, records: usize, delivery: F) -> F::Output {
        let cx = {
            let _current = self.cx.clone().attach();
            self.tracer.stage("deliver")
        };
        cx.span().set_attribute(KeyValue::new(
            "reflex.output_records",
            i64::try_from(records).unwrap_or(i64::MAX),
        ));
        let delivered = delivery.with_context(cx.clone()).await;
        cx.span().end();
        delivered
    }

    /// Ends the span with the audit record's outcome (a dead letter is an error, with its
    /// reason code).
    pub(super) fn finish(&self, audit: &AuditRecord) {
        let error = match audit.outcome {
            Outcome::DeadLettered => Some(audit.reason.map_or("dead_lettered", |r| r.code())),
            _ => None,
        };
        otel::finish(&self.cx, audit.outcome.as_str(), error);
    }

    /// Ends the span of a record whose outputs could not be delivered.
    pub(super) fn undelivered(&self) {
        otel::finish(&self.cx, "undelivered", Some("delivery_failed"));
    }
}
