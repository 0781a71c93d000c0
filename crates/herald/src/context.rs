//! What a handler knows about the message it is handling, and how it publishes follow-up events
//! that stay in the same business flow.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::bus::{MessageOptions, Publisher};
use crate::envelope::Envelope;
use crate::error::Result;
use crate::event::Event;
use crate::trace::{self, TraceContext};

/// Handed to every handler next to its event.
///
/// Events published through [`Context::publish`] carry this message's correlation id (or its
/// id, when it starts a flow), this message's id as their causation id, and its trace context.
#[derive(Clone)]
pub struct Context {
    envelope: Arc<Envelope>,
    queue: Arc<str>,
    publisher: Publisher,
    /// The handling span's trace context, so follow-ups continue it from any task.
    trace: Option<TraceContext>,
}

impl Context {
    pub(crate) fn new(envelope: Arc<Envelope>, queue: Arc<str>, publisher: Publisher) -> Self {
        Context {
            envelope,
            queue,
            publisher,
            trace: trace::current(),
        }
    }

    /// The whole envelope (read-only).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The event id.
    pub fn id(&self) -> &str {
        &self.envelope.id
    }

    /// The flow's correlation id.
    pub fn correlation_id(&self) -> &str {
        self.envelope.correlation_or_id()
    }

    /// This delivery's attempt number (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    /// When the event happened (UTC).
    pub fn time(&self) -> DateTime<Utc> {
        self.envelope.time
    }

    /// The publishing service.
    pub fn source(&self) -> &str {
        &self.envelope.source
    }

    /// The queue this message came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The trace context of this handling (its `herald.handle` span), if tracing saw one.
    pub fn trace_context(&self) -> Option<TraceContext> {
        self.trace
    }

    /// Options that carry this message's flow forward: correlation and causation. The trace
    /// context is not set here: a publish made while this message is handled continues the
    /// handling's trace by itself (see [`crate::trace`]).
    pub fn follow_up(&self) -> MessageOptions {
        MessageOptions {
            correlation_id: Some(self.correlation_id().to_string()),
            causation_id: Some(self.envelope.id.clone()),
            ..Default::default()
        }
    }

    /// Publish a follow-up event in the same flow and trace (even from a spawned task). Returns
    /// its id.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String> {
        let publish = self.publisher.publish_with(event, self.follow_up());
        match self.trace {
            Some(ctx) => trace::scope(ctx, publish).await,
            None => publish.await,
        }
    }

    /// The bus's publisher, for anything [`Context::publish`] does not cover.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}
