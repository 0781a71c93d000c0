//! The one error type at Herald's public boundary.
//!
//! Every variant's message says what went wrong *and* what to do about it, because these
//! messages end up in a terminal or a log line read by someone who did not write Herald.

use std::time::Duration;

/// Errors returned by Herald's public API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A broker URL could not be parsed or names a transport this build does not include.
    #[error("invalid broker URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL with any password redacted.
        url: String,
        /// Why it was rejected and what is accepted.
        reason: String,
    },

    /// Configuration (herald.toml, HERALD_* variables, builder calls) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An event could not be serialized to JSON.
    #[error("could not encode event `{event}` as JSON: {source}")]
    Encode {
        /// The event name.
        event: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A message body is larger than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes; raise `max_message_bytes` or send less")]
    TooLarge {
        /// The body size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// No queue is bound for this routing key, so the event would be silently dropped.
    #[error("no queue is bound to routing key `{routing_key}` on exchange `{exchange}`: start a consumer for it first, or publish with `allow_unroutable`")]
    Unroutable {
        /// The exchange the publish went to.
        exchange: String,
        /// The routing key that matched no binding.
        routing_key: String,
    },

    /// The broker refused the message (negative confirm, queue full, ...).
    #[error("the broker rejected the message: {0}")]
    Rejected(String),

    /// The transport could not reach the broker within the allowed time.
    #[error("the broker was unreachable for {waited:?}: {reason}")]
    Unavailable {
        /// How long Herald waited.
        waited: Duration,
        /// The last connection error.
        reason: String,
    },

    /// A topology declaration conflicts with what already exists on the broker.
    #[error("topology conflict on `{object}`: {detail}; delete it or align the configuration")]
    TopologyConflict {
        /// The exchange or queue name.
        object: String,
        /// The differing arguments.
        detail: String,
    },

    /// A handler is already registered for this queue in this bus.
    #[error(
        "a handler is already subscribed on queue `{0}` in this bus; use a different queue name"
    )]
    DuplicateSubscription(String),

    /// The bus or transport was shut down.
    #[error("the bus is shut down")]
    Closed,

    /// A request/reply call got no answer in time.
    #[error("no reply within {0:?}: is a responder subscribed and running? raise the timeout if it is slow")]
    Timeout(Duration),

    /// A request/reply call got an answer it cannot use: the responder reported an error, or
    /// the reply is not the type asked for.
    #[error("request failed: {0}")]
    RequestFailed(String),

    /// The transport cannot do what was asked; its [`Capabilities`](crate::transport::Capabilities)
    /// say what it can.
    #[error("the {transport} transport has no {capability}; drop that option or use a transport that has it")]
    Unsupported {
        /// Which transport.
        transport: &'static str,
        /// What it lacks (`priority queues`, `dead-letter administration`, ...).
        capability: String,
    },

    /// Anything the transport reports that has no better variant (I/O, protocol, storage).
    #[error("{transport} transport: {message}")]
    Transport {
        /// Which transport (`sqlite`, `memory`, `rabbitmq`, ...).
        transport: &'static str,
        /// What happened.
        message: String,
    },
}

impl Error {
    /// A transport error with the transport's name for context.
    pub fn transport(transport: &'static str, message: impl std::fmt::Display) -> Self {
        Error::Transport {
            transport,
            message: message.to_string(),
        }
    }
}

/// Herald's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
