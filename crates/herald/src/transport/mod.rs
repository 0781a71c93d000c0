//! The transport seam: what a broker must do for the bus, and what it may do.
//!
//! A transport stores and routes [`Envelope`]s. It **must** ([`Transport`]): declare a
//! [`Topology`] (idempotently), publish with durable acceptance, route by topic pattern to
//! durable queues, hand out deliveries to competing consumers within a prefetch window, and
//! settle each delivery as the pipeline decided ([`Outcome`]: ack, retry after a delay,
//! dead-letter, release). It **may** administer dead letters ([`DeadLetterAdmin`]), count
//! queues ([`QueueStatistics`]) and carry requests and replies its own way ([`RequestReply`]);
//! what it offers is stated in its [`Capabilities`].
//!
//! Retry *policy*, timeouts, decoding and the rest live in the handler pipeline above, so every
//! transport behaves the same. A transport is written against this module's public API only and
//! proves itself with the conformance kit (`herald::conformance`, feature `conformance`).
//! Built in: [`memory`] (in-process) and [`sqlite`] (the embedded durable default). Network
//! brokers live in their own crates (`herald-rabbitmq`, `herald-nats`, `herald-kafka`) and
//! register their URL schemes with [`register`]; [`connect`] opens a transport from a URL.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::envelope::Envelope;
use crate::error::Result;
use crate::topology::{QueueSpec, Topology};

mod admin;
mod capabilities;
mod deliveries;
mod delivery;
pub mod memory;
mod registry;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod url;

pub use admin::{
    dead_letter_admin, queue_statistics, reset_for_replay, DeadLetter, DeadLetterAdmin,
    QueueStatistics, QueueStats, RequestReply, TopologyAdmin,
};
pub use capabilities::{Capabilities, Ordering};
pub use deliveries::{Deliveries, DeliverySource, TryRecvError};
pub use delivery::{Delivery, Failure, Outcome, Settle, Settler};
pub use registry::{check_url, connect, known_schemes, register, Connector};
pub use url::{escape_controls, redact_url, scheme_of, split_url_list, DEFAULT_SQLITE_PATH};

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

/// A broker as the bus sees it: the core every transport must provide. See the module docs,
/// and `ARCHITECTURE.md` ("Adding a transport") for the guarantees each method carries.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Short name for logs, metrics and errors: `memory`, `sqlite`, `rabbitmq`, `nats`, ...
    fn kind(&self) -> &'static str;

    /// What this transport offers beyond the core contract.
    fn capabilities(&self) -> Capabilities;

    /// Declare the exchange, queues, bindings, retry and dead-letter arrangements. Idempotent:
    /// applying the same topology again (another process, a restart) changes nothing.
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

    /// [`publish`](Self::publish), handing the envelopes over: an in-process transport can keep
    /// them instead of copying them (the bus publishes this way). The default publishes `batch`
    /// by reference, so a transport need not implement it.
    async fn publish_owned(
        &self,
        exchange: &str,
        batch: Vec<Envelope>,
        options: PublishOptions,
    ) -> Result<()> {
        self.publish(exchange, &batch, options).await
    }

    /// Start consuming a declared queue. Deliveries are taken from the returned [`Deliveries`]
    /// until `cancel` fires; at most `options.prefetch` are unsettled at once. Deliveries still
    /// buffered when it is dropped go back to the queue, and so does every delivery this
    /// process took and never settled once it is gone (crash, connection loss).
    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> Result<Deliveries>;

    /// Dead-letter administration, when [`Capabilities::dead_letters`] says so.
    fn dead_letter_admin(&self) -> Option<&dyn DeadLetterAdmin> {
        None
    }

    /// Queue counts, when [`Capabilities::queue_stats`] says so.
    fn queue_statistics(&self) -> Option<&dyn QueueStatistics> {
        None
    }

    /// The transport's own request/reply path, when [`Capabilities::native_request_reply`]
    /// says so. Without one the bus answers requests through a reply queue of its own.
    fn request_reply(&self) -> Option<&dyn RequestReply> {
        None
    }

    /// Deleting a declared topology (tests and tools cleaning up a shared broker), when the
    /// transport can.
    fn topology_admin(&self) -> Option<&dyn TopologyAdmin> {
        None
    }

    /// Whether the broker connection is up (for health checks). Embedded transports are always up.
    fn is_connected(&self) -> bool {
        true
    }

    /// Flush and release resources. Publishing after close is an error.
    async fn close(&self) -> Result<()>;
}
