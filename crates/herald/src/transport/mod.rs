//! The transport seam: what a broker must do for the bus.
//!
//! A transport stores and routes [`Envelope`]s: durable acceptance on publish, topic routing to
//! durable queues, competing consumers, settlement of each delivery (ack, delayed retry,
//! dead-letter, release) and access to dead letters. Retry *policy*, timeouts, decoding and the
//! rest live in the handler pipeline above it, so every transport behaves the same.
//!
//! Transports: [`memory`] (in-process, for tests), [`sqlite`] (the embedded durable default) and
//! `rabbitmq` (AMQP 0-9-1, feature `rabbitmq`). [`connect`] picks one from a URL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::envelope::{format_time, header, Envelope};
use crate::error::Result;
use crate::topology::{QueueSpec, Topology};

mod deliveries;
pub mod memory;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod url;

pub use deliveries::{Deliveries, DeliverySource, TryRecvError};

pub use self::url::{connect, redact_url, BrokerUrl, DEFAULT_SQLITE_PATH};

/// Options for one publish call.
#[derive(Debug, Clone, Copy)]
pub struct PublishOptions {
    /// Fail with [`Error::Unroutable`](crate::Error::Unroutable) when no queue is bound for a
    /// message's routing key, instead of dropping it silently. On by default.
    pub require_route: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            require_route: true,
        }
    }
}

/// Options for one consumer.
#[derive(Debug, Clone, Copy)]
pub struct ConsumeOptions {
    /// How many unsettled deliveries the transport may hand out at once.
    pub prefetch: usize,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions { prefetch: 64 }
    }
}

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
    /// The message.
    pub envelope: Envelope,
    /// True when the transport knows it delivered this message before (a crashed consumer's
    /// lease expired, a channel closed before the ack).
    pub redelivered: bool,
    tag: u64,
    settler: Arc<dyn Settle>,
    /// The trace context the transport read from the message, when it had it at hand anyway
    /// (it equals `envelope.traceparent` parsed, which the consumer then need not parse).
    trace: Option<crate::trace::TraceContext>,
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
        Delivery {
            envelope,
            redelivered,
            tag,
            settler,
            trace: None,
        }
    }

    /// With the trace context `envelope.traceparent` holds, already parsed.
    pub(crate) fn with_trace(mut self, trace: Option<crate::trace::TraceContext>) -> Self {
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
        (envelope, settler)
    }

    /// [`into_parts`](Self::into_parts), with the trace context when the transport gave it.
    pub(crate) fn into_traced_parts(
        self,
    ) -> (Envelope, Settler, Option<crate::trace::TraceContext>) {
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

/// A dead-lettered message with its failure metadata (in the envelope's `herald_*` headers).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The work queue it failed on.
    pub queue: String,
    /// The message as it was when dead-lettered.
    pub envelope: Envelope,
}

impl DeadLetter {
    /// The last error recorded.
    pub fn error(&self) -> &str {
        self.envelope.last_error().unwrap_or("")
    }
}

/// Counts for one queue; `None` where a transport cannot tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// The queue name.
    pub queue: String,
    /// Messages ready for delivery.
    pub ready: Option<u64>,
    /// Messages delivered and not yet settled.
    pub in_flight: Option<u64>,
    /// Messages waiting for a delayed redelivery.
    pub delayed: Option<u64>,
    /// Messages in the dead letters.
    pub dead_letters: Option<u64>,
    /// Consumers attached.
    pub consumers: Option<u64>,
}

/// Reset a dead letter for replay: attempt 1 and no failure headers, so it starts afresh.
pub fn reset_for_replay(envelope: &mut Envelope) {
    envelope.attempt = 1;
    envelope.headers.retain(|k, _| !k.starts_with("herald_"));
}

/// A broker as the bus sees it. See the module docs.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Short name for logs and errors: `memory`, `sqlite`, `rabbitmq`.
    fn kind(&self) -> &'static str;

    /// Declare the exchange, queues, bindings, retry and dead-letter arrangements. Idempotent.
    async fn apply_topology(&self, topology: &Topology) -> Result<()>;

    /// Publish to `exchange`, returning once every message is durably accepted (stored, or
    /// confirmed by the broker). With `require_route`, a message no queue would receive is an
    /// [`Error::Unroutable`](crate::Error::Unroutable) and is not stored.
    async fn publish(
        &self,
        exchange: &str,
        batch: &[Envelope],
        options: PublishOptions,
    ) -> Result<()>;

    /// Start consuming a declared queue. Deliveries are taken from the returned [`Deliveries`]
    /// until `cancel` fires; at most `options.prefetch` are unsettled at once. Deliveries still
    /// buffered when it is dropped go back to the queue.
    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> Result<Deliveries>;

    /// Read up to `limit` dead letters of a work queue, oldest first, without removing them.
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Move dead letters back to their work queue (all when `ids` is `None`), reset by
    /// [`reset_for_replay`]. Returns how many moved.
    async fn replay_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64>;

    /// Delete a work queue's dead letters (all when `ids` is `None`). Returns how many.
    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64>;

    /// Counts for every queue the transport knows.
    async fn queue_stats(&self) -> Result<Vec<QueueStats>>;

    /// Whether [`queue_stats`](Self::queue_stats) sees every queue on the broker, or only those
    /// this handle declared (AMQP 0-9-1 has no way to list queues).
    fn lists_all_queues(&self) -> bool {
        true
    }

    /// Whether the broker connection is up (for health checks). Embedded transports are always up.
    fn is_connected(&self) -> bool {
        true
    }

    /// Flush and release resources. Publishing after close is an error.
    async fn close(&self) -> Result<()>;
}
