//! What a transport *may* offer beyond moving messages: administration of dead letters, queue
//! statistics, a request/reply path of its own and deleting a topology. Each is its own trait,
//! reached through [`Transport::dead_letter_admin`](super::Transport::dead_letter_admin),
//! [`Transport::queue_statistics`](super::Transport::queue_statistics),
//! [`Transport::request_reply`](super::Transport::request_reply) and
//! [`Transport::topology_admin`](super::Transport::topology_admin), so a transport that cannot do
//! one says so (`None`) instead of answering with an error at run time.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::topology::Topology;

use super::Transport;

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

/// Listing, replaying and purging a work queue's dead letters (capability `dead_letters`).
#[async_trait]
pub trait DeadLetterAdmin: Send + Sync {
    /// Read up to `limit` dead letters of a work queue, oldest first, without removing them.
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>>;

    /// Move dead letters back to *their work queue only* (all when `ids` is `None`), reset by
    /// [`reset_for_replay`]; other queues bound to the same key do not get a second copy.
    /// Returns how many moved.
    async fn replay_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64>;

    /// Delete a work queue's dead letters (all when `ids` is `None`). Returns how many.
    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64>;
}

/// Counts per queue (capability `queue_stats`).
#[async_trait]
pub trait QueueStatistics: Send + Sync {
    /// Counts for every queue the transport knows: every queue on the broker when
    /// [`Capabilities::lists_all_queues`](super::Capabilities::lists_all_queues), otherwise
    /// those this handle declared.
    async fn queue_stats(&self) -> Result<Vec<QueueStats>>;

    /// The bindings on `exchange` as `(pattern, queue)` pairs, for every queue the transport
    /// knows (as [`queue_stats`](Self::queue_stats) does), or `None` when it cannot list them
    /// (AMQP 0-9-1 has no way to). Whoever must tell whether a routing key reaches a queue
    /// other than its own (`herald serve` asks before publishing) matches them with
    /// [`topic_matches`](crate::pattern::topic_matches).
    async fn bindings(&self, exchange: &str) -> Result<Option<Vec<(String, String)>>> {
        let _ = exchange;
        Ok(None)
    }

    /// Counts for these queues by name, whether or not this handle declared them; a queue that
    /// does not exist is left out. The default picks them from
    /// [`queue_stats`](Self::queue_stats); a transport that cannot list queues (RabbitMQ)
    /// looks each one up.
    async fn stats_of(&self, queues: &[String]) -> Result<Vec<QueueStats>> {
        let mut all = self.queue_stats().await?;
        all.retain(|s| queues.contains(&s.queue));
        Ok(all)
    }
}

/// Removing what [`Transport::apply_topology`](super::Transport::apply_topology) declared, for
/// tests and tools that clean up after themselves on a shared broker.
#[async_trait]
pub trait TopologyAdmin: Send + Sync {
    /// Delete `topology`'s queues with everything the transport declared around them (dead
    /// letters, retry queues), messages and all, then its exchange with the exchanges declared
    /// beside it. What does not exist is skipped.
    async fn delete_topology(&self, topology: &Topology) -> Result<()>;
}

/// A transport's own request/reply path (capability `native_request_reply`: RabbitMQ's direct
/// reply-to). Without it the bus sends requests through a reply queue of its own, which works
/// on every transport.
#[async_trait]
pub trait RequestReply: Send + Sync {
    /// Publish `request` to `exchange` and wait up to `timeout` for its one reply (matched by
    /// the reply's `causation_id`). [`Error::Timeout`] when none comes,
    /// [`Error::Unroutable`] when no queue receives the request.
    async fn request(
        &self,
        exchange: &str,
        request: &Envelope,
        timeout: Duration,
    ) -> Result<Envelope>;

    /// Whether a consumed `request` was sent by [`request`](Self::request), and so is answered
    /// with [`reply`](Self::reply).
    fn is_request(&self, request: &Envelope) -> bool;

    /// Send `reply` to whoever sent `request`.
    async fn reply(&self, request: &Envelope, reply: Envelope) -> Result<()>;
}

/// The transport's dead-letter administration, or [`Error::Unsupported`] naming the transport.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let t = herald::transport::connect("memory://admin-doc", "svc").await?;
/// let dead = herald::transport::dead_letter_admin(&*t)?.dead_letters("svc.orders", 10).await?;
/// assert!(dead.is_empty());
/// # Ok::<(), herald::Error>(())
/// # }).unwrap();
/// ```
pub fn dead_letter_admin(transport: &dyn Transport) -> Result<&dyn DeadLetterAdmin> {
    transport
        .dead_letter_admin()
        .ok_or_else(|| Error::Unsupported {
            transport: transport.kind(),
            capability: "dead-letter administration".into(),
        })
}

/// The transport's queue statistics, or [`Error::Unsupported`] naming the transport.
pub fn queue_statistics(transport: &dyn Transport) -> Result<&dyn QueueStatistics> {
    transport
        .queue_statistics()
        .ok_or_else(|| Error::Unsupported {
            transport: transport.kind(),
            capability: "queue statistics".into(),
        })
}
