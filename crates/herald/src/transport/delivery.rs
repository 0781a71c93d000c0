//! One delivery and its settlement: what a consumer is handed, and what the pipeline decides
//! should become of it ([`Outcome`]), carried out by the transport's [`Settle`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::envelope::{format_time, header, Envelope};
use crate::error::Result;
use crate::trace::TraceContext;

/// Why a delivery failed, recorded in headers on retried and dead-lettered messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// The error text.
    pub error: String,
    /// The failure kind: `handler`, `timeout`, `panic`, `decode`, `schema`, `expired`, ...
    pub kind: String,
    /// The queue the failure happened on.
    pub queue: String,
    /// When the first failure of this message happened.
    pub first_failure: DateTime<Utc>,
    /// When this failure happened.
    pub last_failure: DateTime<Utc>,
}

impl Failure {
    /// A failure that happened now; the first-failure time is taken from the envelope's headers
    /// when an earlier attempt recorded one.
    pub fn now(envelope: &Envelope, queue: &str, kind: &str, error: impl Into<String>) -> Self {
        let now = Utc::now();
        let first = envelope
            .headers
            .get(header::FIRST_FAILURE)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(now);
        Failure {
            error: error.into(),
            kind: kind.to_string(),
            queue: queue.to_string(),
            first_failure: first,
            last_failure: now,
        }
    }

    /// Write this failure into the envelope's headers (every transport does it the same way).
    pub fn record(&self, envelope: &mut Envelope) {
        let h = &mut envelope.headers;
        h.insert(header::ERROR.into(), self.error.clone());
        h.insert(header::ERROR_KIND.into(), self.kind.clone());
        h.insert(header::ORIGINAL_QUEUE.into(), self.queue.clone());
        h.entry(header::ORIGINAL_ROUTING_KEY.into())
            .or_insert_with(|| envelope.routing_key.clone());
        h.insert(
            header::FIRST_FAILURE.into(),
            format_time(&self.first_failure),
        );
        h.insert(header::LAST_FAILURE.into(), format_time(&self.last_failure));
    }
}

/// What to do with a delivery once the pipeline has run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: remove it.
    Ack,
    /// Deliver it again after `delay`, with the attempt count increased and `failure` recorded.
    Retry {
        /// How long to wait before the next delivery.
        delay: Duration,
        /// What went wrong this time.
        failure: Failure,
    },
    /// Move it to the queue's dead letters with `failure` recorded.
    DeadLetter(Failure),
    /// Give it back without counting an attempt (shutdown, circuit open), available after `delay`.
    Release {
        /// How long before it may be delivered again.
        delay: Duration,
    },
}

impl Outcome {
    /// `ack`, `retry`, `dead_letter` or `release`: for spans, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter(_) => "dead_letter",
            Outcome::Release { .. } => "release",
        }
    }
}

/// Settles deliveries for one consumer. Transports implement it; the bus calls it through
/// [`Delivery`]. Implementations may batch (e.g. one transaction or one `multiple` ack for many).
#[async_trait]
pub trait Settle: Send + Sync + 'static {
    /// Settle the delivery identified by `tag` (the transport's own id for it).
    async fn settle(&self, tag: u64, envelope: &Envelope, outcome: Outcome) -> Result<()>;
}

/// One message handed to a consumer. It must be settled exactly once; one dropped unsettled is
/// redelivered by the transport (lease expiry, channel close).
pub struct Delivery {
    /// The message. Shared: a transport that must keep it until it is settled (to put it back
    /// if its consumer goes away) holds another reference instead of a copy.
    pub envelope: Arc<Envelope>,
    /// True when the transport knows it delivered this message before (a crashed consumer's
    /// lease expired, a channel closed before the ack).
    pub redelivered: bool,
    tag: u64,
    settler: Arc<dyn Settle>,
    /// The trace context the transport read from the message, when it had it at hand anyway
    /// (it equals `envelope.traceparent` parsed, which the consumer then need not parse).
    trace: Option<TraceContext>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .field("redelivered", &self.redelivered)
            .field("tag", &self.tag)
            .finish()
    }
}

impl Delivery {
    /// Wrap a message for a consumer. `tag` is what `settler` needs to find it again.
    pub fn new(envelope: Envelope, redelivered: bool, tag: u64, settler: Arc<dyn Settle>) -> Self {
        Self::shared(Arc::new(envelope), redelivered, tag, settler)
    }

    /// [`new`](Self::new) with a message the transport keeps a reference to as well.
    pub fn shared(
        envelope: Arc<Envelope>,
        redelivered: bool,
        tag: u64,
        settler: Arc<dyn Settle>,
    ) -> Self {
        Delivery {
            envelope,
            redelivered,
            tag,
            settler,
            trace: None,
        }
    }

    /// With the trace context `envelope.traceparent` holds, already parsed: a transport that
    /// derives it anyway (RabbitMQ reads it from the message id) saves the consumer parsing it.
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
    }

    /// Settle with any outcome.
    pub async fn settle(self, outcome: Outcome) -> Result<()> {
        self.settler.settle(self.tag, &self.envelope, outcome).await
    }

    /// Acknowledge: the message is done.
    pub async fn ack(self) -> Result<()> {
        self.settle(Outcome::Ack).await
    }

    /// Split into the envelope and a handle that settles it later.
    pub fn into_parts(self) -> (Envelope, Settler) {
        let (envelope, settler, _) = self.into_traced_parts();
        (Arc::unwrap_or_clone(envelope), settler)
    }

    /// [`into_parts`](Self::into_parts), with the trace context when the transport gave it.
    pub(crate) fn into_traced_parts(self) -> (Arc<Envelope>, Settler, Option<TraceContext>) {
        (
            self.envelope,
            Settler {
                tag: self.tag,
                settler: self.settler,
            },
            self.trace,
        )
    }
}

/// Settles one delivery after its envelope has been moved elsewhere.
pub struct Settler {
    tag: u64,
    settler: Arc<dyn Settle>,
}

impl Settler {
    /// Settle the delivery this came from.
    pub async fn settle(self, envelope: &Envelope, outcome: Outcome) -> Result<()> {
        self.settler.settle(self.tag, envelope, outcome).await
    }
}
