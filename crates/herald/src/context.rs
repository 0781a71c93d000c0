//! What a handler knows about the message it is handling, and how it publishes follow-up events
//! that stay in the same business flow.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::envelope::{header, Envelope};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::publisher::{MessageOptions, Publisher};
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

    /// Whether this message is a request ([`Bus::request`](crate::Bus::request)) waiting for
    /// a [`reply`](Self::reply).
    pub fn expects_reply(&self) -> bool {
        self.envelope.headers.contains_key(header::REPLY_TO)
            || self
                .publisher
                .transport()
                .request_reply()
                .is_some_and(|r| r.is_request(&self.envelope))
    }

    /// Answer this request with `reply` (see [`Bus::request`](crate::Bus::request)). Fails
    /// when the message is not a request, or when the requester stopped waiting and took its
    /// reply queue with it.
    ///
    /// ```
    /// use herald::{Bus, Context, Event, HandlerError};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, Serialize, Deserialize, Event)]
    /// #[event(name = "price.quote")]
    /// struct QuotePrice { sku: String }
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Quote { cents: u64 }
    ///
    /// async fn quote(req: QuotePrice, ctx: Context) -> Result<(), HandlerError> {
    ///     let cents = if req.sku == "book" { 1299 } else { 99 };
    ///     ctx.reply(&Quote { cents }).await?;
    ///     Ok(())
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let bus = Bus::builder().service("pricing").broker("memory://reply-doc").build().await?;
    /// bus.subscribe(quote)?;
    /// bus.start().await?;
    /// let q: Quote = bus.request(&QuotePrice { sku: "book".into() }).await?;
    /// assert_eq!(q, Quote { cents: 1299 });
    /// bus.shutdown().await?;
    /// # Ok::<(), herald::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn reply<R: Serialize>(&self, reply: &R) -> Result<()> {
        let body = serde_json::to_vec(reply).map_err(|source| Error::Encode {
            event: format!("{}.reply", self.envelope.event_type),
            source,
        })?;
        self.send_reply(body, None).await
    }

    /// Answer this request with an error: the requester's call fails with
    /// [`Error::RequestFailed`] carrying `message`, instead of waiting out its timeout.
    pub async fn reply_error(&self, message: impl std::fmt::Display) -> Result<()> {
        self.send_reply(b"null".to_vec(), Some(message.to_string()))
            .await
    }

    async fn send_reply(&self, body: Vec<u8>, error: Option<String>) -> Result<()> {
        let event_type = format!("{}.reply", self.envelope.event_type);
        let mut envelope = Envelope::new(
            &event_type,
            1,
            &event_type,
            self.publisher.service(),
            body.into(),
        );
        if let Some(error) = error {
            envelope.headers.insert(header::REPLY_ERROR.into(), error);
        }
        let send = self.publisher.reply(&self.envelope, envelope);
        match self.trace {
            Some(ctx) => trace::scope(ctx, send).await,
            None => send.await,
        }
    }

    /// The bus's publisher, for anything [`Context::publish`] does not cover.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }
}
