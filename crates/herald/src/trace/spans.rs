//! The two spans Herald opens, `herald.publish` and `herald.handle`, and the trace context each
//! one carries. Kept here so the publisher and the consume loop each call in with one line.
//!
//! Field values are only formatted when a subscriber wants the span (`Span::is_disabled`), so
//! with tracing filtered above INFO a span costs a callsite check, and the trace context costs
//! a few mixed or random numbers plus the `traceparent` string every envelope carries anyway.

use std::future::Future;

use futures::future::Either;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::TraceContext;
use crate::envelope::Envelope;

/// Open the `herald.publish` span for one publish call and give every envelope without a
/// `traceparent` the span's trace context (parent: the context in force, else a new trace).
/// An envelope that already carries a `traceparent` keeps it.
pub(crate) fn publish_span(
    transport: &'static str,
    exchange: &str,
    batch: &mut [Envelope],
) -> Span {
    let span = tracing::info_span!(
        "herald.publish",
        otel.kind = "producer",
        messaging.system = transport,
        messaging.destination.name = exchange,
        cloudevents.event_id = Empty,
        cloudevents.event_type = Empty,
        messaging.batch.message_count = Empty,
        trace_id = Empty,
        span_id = Empty,
        parent_span_id = Empty,
    );
    // Envelopes that all carry a traceparent go out unchanged (the outbox relay, replays,
    // explicit options); the span then reports the first one's context.
    let explicit = if batch.iter().all(|e| e.traceparent.is_some()) {
        batch
            .first()
            .and_then(|e| e.traceparent.as_deref())
            .and_then(TraceContext::parse)
    } else {
        None
    };
    let parent = if explicit.is_some() {
        None
    } else {
        super::task_current()
    };
    #[cfg(feature = "otel")]
    let from_otel = super::otel::start_producer(&span, explicit, parent);
    #[cfg(not(feature = "otel"))]
    let from_otel: Option<TraceContext> = None;
    // A new trace takes the first event's id as its trace id (see `TraceContext::for_event_id`).
    let ctx = explicit.or(from_otel).unwrap_or_else(|| match parent {
        Some(p) => p.child(),
        None => batch
            .first()
            .and_then(|e| TraceContext::for_event_id(&e.id))
            .unwrap_or_else(TraceContext::new_root),
    });
    match &mut *batch {
        [one] => {
            if one.traceparent.is_none() {
                one.traceparent = Some(ctx.to_traceparent());
            }
        }
        many => {
            let header = ctx.to_traceparent();
            for e in many.iter_mut().filter(|e| e.traceparent.is_none()) {
                e.traceparent = Some(header.clone());
            }
        }
    }
    if !span.is_disabled() {
        if let Some(first) = batch.first() {
            span.record("cloudevents.event_id", first.id.as_str());
            span.record("cloudevents.event_type", first.event_type.as_str());
        }
        if batch.len() > 1 {
            span.record("messaging.batch.message_count", batch.len());
        }
        record_ids(&span, &ctx, parent.filter(|_| from_otel.is_none()));
    }
    span
}

/// The `herald.handle` span of one delivery and the trace context handlers run under.
pub(crate) struct Handling {
    /// The span; enter it (or instrument the pipeline call with it) while handling.
    pub span: Span,
    /// The span's trace context: a child of the incoming `traceparent`, or a new trace.
    pub context: TraceContext,
}

impl Handling {
    /// Open the span for `envelope` taken from `queue`. `known` is the context its
    /// `traceparent` holds, when the transport already had it parsed.
    pub(crate) fn start(envelope: &Envelope, queue: &str, known: Option<TraceContext>) -> Self {
        let span = tracing::info_span!(
            "herald.handle",
            otel.kind = "consumer",
            messaging.destination.name = queue,
            cloudevents.event_id = envelope.id.as_str(),
            cloudevents.event_type = envelope.event_type.as_str(),
            herald.attempt = envelope.attempt,
            herald.outcome = Empty,
            trace_id = Empty,
            span_id = Empty,
            parent_span_id = Empty,
        );
        let incoming = known.or_else(|| {
            envelope
                .traceparent
                .as_deref()
                .and_then(TraceContext::parse)
        });
        let own = || match incoming {
            Some(p) => p.child(),
            None => TraceContext::new_root(),
        };
        // With OpenTelemetry the handling span's own context is the OTel span's, when it has one.
        #[cfg(feature = "otel")]
        let context = super::otel::start_consumer(&span, incoming).unwrap_or_else(own);
        #[cfg(not(feature = "otel"))]
        let context = own();
        if !span.is_disabled() {
            record_ids(&span, &context, incoming);
        }
        Handling { span, context }
    }

    /// `fut` inside the span (entered on every poll), or as it is when nobody records the span.
    pub(crate) fn instrument<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        instrument(fut, self.span.clone())
    }

    /// Record how the delivery was settled (`ack`, `retry`, `dead_letter`, `release`).
    pub(crate) fn finish(&self, outcome: &'static str) {
        if !self.span.is_disabled() {
            self.span.record("herald.outcome", outcome);
        }
    }
}

fn record_ids(span: &Span, ctx: &TraceContext, parent: Option<TraceContext>) {
    span.record("trace_id", tracing::field::display(ctx.trace_id_hex()));
    span.record("span_id", tracing::field::display(ctx.span_id_hex()));
    if let Some(p) = parent {
        span.record("parent_span_id", tracing::field::display(p.span_id_hex()));
    }
}

/// `fut` inside `span`; a disabled span (filtered out) skips the enter/exit on every poll.
pub(crate) fn instrument<F: Future>(fut: F, span: Span) -> impl Future<Output = F::Output> {
    if span.is_disabled() {
        Either::Left(fut)
    } else {
        Either::Right(fut.instrument(span))
    }
}
