//! What a transport can do beyond the core contract, as a value: the bus checks subscriptions
//! against it, the CLI and the dashboard show or hide what it lacks, and the conformance kit
//! skips, by name, the cases it cannot pass.

use serde::Serialize;

/// The order in which a transport delivers the messages of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// One consumer receives a queue's messages in publish order (RabbitMQ, SQLite, NATS).
    Queue,
    /// Messages with the same key (the envelope's subject) arrive in publish order; no order
    /// across keys (Kafka: one partition per key).
    Key,
    /// No order promised.
    None,
}

/// What a transport offers beyond the core contract (durable publish, topic routing to queues,
/// competing consumers, ack, release, dead-lettering on settle).
///
/// Construct with struct-update syntax from [`Capabilities::CORE`], so a field added later
/// keeps its conservative default:
///
/// ```
/// use herald::transport::{Capabilities, Ordering};
/// let caps = Capabilities { dead_letters: true, ordering: Ordering::Key, ..Capabilities::CORE };
/// assert!(!caps.priority);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Messages survive a restart of the broker (and of the publishing process once accepted).
    pub durable: bool,
    /// Queues declared with a max priority deliver higher priorities first.
    pub priority: bool,
    /// A message's TTL (`Envelope::ttl`) is honoured: expired messages are dead-lettered as
    /// `expired`, never delivered.
    pub message_ttl: bool,
    /// Queues declared with a max length refuse publishes once full.
    pub max_length: bool,
    /// [`Outcome::Retry`](super::Outcome::Retry) waits out its delay before redelivering
    /// (without it the retry is immediate).
    pub delayed_redelivery: bool,
    /// The delivery order within one queue.
    pub ordering: Ordering,
    /// [`Transport::dead_letter_admin`](super::Transport::dead_letter_admin) is available.
    pub dead_letters: bool,
    /// [`Transport::queue_statistics`](super::Transport::queue_statistics) is available.
    pub queue_stats: bool,
    /// Queue statistics cover every queue on the broker, not only those this handle declared.
    pub lists_all_queues: bool,
    /// The transport has its own request/reply path (RabbitMQ's direct reply-to); without it
    /// the bus answers requests through a reply queue of its own.
    pub native_request_reply: bool,
}

impl Capabilities {
    /// The core contract and nothing more.
    pub const CORE: Capabilities = Capabilities {
        durable: false,
        priority: false,
        message_ttl: false,
        max_length: false,
        delayed_redelivery: false,
        ordering: Ordering::None,
        dead_letters: false,
        queue_stats: false,
        lists_all_queues: false,
        native_request_reply: false,
    };

    /// Everything the embedded transports (memory, SQLite) do: they keep the whole broker in
    /// one place, so nothing is out of reach.
    pub(crate) const EMBEDDED: Capabilities = Capabilities {
        durable: true,
        priority: true,
        message_ttl: true,
        max_length: true,
        delayed_redelivery: true,
        ordering: Ordering::Queue,
        dead_letters: true,
        queue_stats: true,
        lists_all_queues: true,
        native_request_reply: false,
    };

    /// The names of the capabilities this value has, for `--help`, `/api/info` and logs.
    pub fn names(&self) -> Vec<&'static str> {
        let flags = [
            (self.durable, "durable"),
            (self.priority, "priority"),
            (self.message_ttl, "message_ttl"),
            (self.max_length, "max_length"),
            (self.delayed_redelivery, "delayed_redelivery"),
            (self.dead_letters, "dead_letters"),
            (self.queue_stats, "queue_stats"),
            (self.lists_all_queues, "lists_all_queues"),
            (self.native_request_reply, "native_request_reply"),
        ];
        let mut names: Vec<&'static str> = flags
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        names.push(match self.ordering {
            Ordering::Queue => "ordering=queue",
            Ordering::Key => "ordering=key",
            Ordering::None => "ordering=none",
        });
        names
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::CORE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_list_what_is_on() {
        let caps = Capabilities {
            priority: true,
            ordering: Ordering::Key,
            ..Capabilities::CORE
        };
        assert_eq!(caps.names(), vec!["priority", "ordering=key"]);
    }
}
