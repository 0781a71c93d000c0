//! What one subscription asks for, in three parts that change for different reasons:
//!
//! - [`QueueOptions`]: the queue it declares on the broker (name, exchange, binding keys, kind,
//!   priority, TTL, length limit, temporary);
//! - [`ConsumerOptions`]: how its consumer takes messages (prefetch, concurrency, order per key,
//!   schema validation before decoding);
//! - the [`Pipeline`]: the layers around its handler, [`Pipeline::standard`] unless it says
//!   otherwise.
//!
//! [`SubscribeOptions`] holds one of each, with shorthands for the settings most subscriptions
//! touch (`retry`, `timeout`, `concurrency`, ...).

use std::time::Duration;

use crate::envelope::Envelope;
use crate::middleware::{Pipeline, RetryPolicy, SchemaLayer};
use crate::topology::{QueueKind, QueueSpec};

/// How one subscription consumes: its queue, its consumer and its pipeline. Every part has a
/// safe default; the bus's configuration fills what is left unset.
///
/// ```
/// use std::time::Duration;
/// use herald::{ConsumerOptions, QueueOptions, SubscribeOptions};
/// use herald::middleware::{Pipeline, RetryPolicy};
///
/// // Shorthands for the usual settings...
/// let simple = SubscribeOptions::new()
///     .retry(RetryPolicy::exponential(4, Duration::from_millis(200)))
///     .timeout(Duration::from_secs(5))
///     .concurrency(4);
///
/// // ...or each part spelled out.
/// let explicit = SubscribeOptions::new()
///     .queue(QueueOptions::named("elasticsearch.sync").exchange("benalsam.listings").bind("listing.#"))
///     .consumer(ConsumerOptions::new().concurrency(8).ordered_by_subject())
///     .pipeline(Pipeline::standard().retry(RetryPolicy::linear(5, Duration::from_secs(1))));
/// # let _ = (simple, explicit);
/// ```
#[derive(Clone, Default)]
pub struct SubscribeOptions {
    pub(crate) queue: QueueOptions,
    pub(crate) consumer: ConsumerOptions,
    pub(crate) pipeline: Option<Pipeline>,
}

impl SubscribeOptions {
    /// Defaults: the queue `<service>.<routing key>` on the bus's exchange, the bus's prefetch
    /// and concurrency, the bus's default pipeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// The queue to declare: [`QueueOptions`] (replacing the queue settings made so far), or
    /// just a name (`.queue("outbound-mail")`, keeping them).
    pub fn queue(mut self, queue: impl Into<QueueOptions>) -> Self {
        let queue = queue.into();
        let only_a_name = QueueOptions {
            name: None,
            ..queue.clone()
        } == QueueOptions::default();
        if only_a_name {
            self.queue.name = queue.name;
        } else {
            self.queue = queue;
        }
        self
    }

    /// How the consumer takes messages.
    pub fn consumer(mut self, consumer: ConsumerOptions) -> Self {
        self.consumer = consumer;
        self
    }

    /// The layers around the handler, instead of the bus's default pipeline. Bus-wide layers
    /// ([`BusBuilder::layer`](crate::BusBuilder::layer)) still run around it.
    pub fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = Some(pipeline);
        self
    }

    /// Shorthand: the pipeline (the bus's default, unless one was set) with this retry policy.
    pub fn retry(self, policy: RetryPolicy) -> Self {
        self.edit_pipeline(|p| p.retry(policy))
    }

    /// Shorthand: the pipeline with this handler timeout.
    pub fn timeout(self, limit: Duration) -> Self {
        self.edit_pipeline(|p| p.timeout(limit))
    }

    /// Shorthand: the pipeline without a handler timeout.
    pub fn no_timeout(self) -> Self {
        self.edit_pipeline(Pipeline::no_timeout)
    }

    /// Shorthand: add `layer` to the pipeline, closest to the handler (inside the standard
    /// stack's retry, panic isolation and timeout).
    pub fn layer(self, layer: impl crate::middleware::Layer) -> Self {
        self.edit_pipeline(|p| p.layer(layer))
    }

    /// Shorthand for [`ConsumerOptions::prefetch`].
    pub fn prefetch(mut self, n: usize) -> Self {
        self.consumer = self.consumer.prefetch(n);
        self
    }

    /// Shorthand for [`ConsumerOptions::concurrency`].
    pub fn concurrency(mut self, n: usize) -> Self {
        self.consumer = self.consumer.concurrency(n);
        self
    }

    /// Shorthand for [`ConsumerOptions::validate_schema`].
    pub fn validate_schema(mut self) -> Self {
        self.consumer = self.consumer.validate_schema();
        self
    }

    /// Shorthand for [`QueueOptions::temporary`].
    pub fn temporary(mut self) -> Self {
        self.queue = self.queue.temporary();
        self
    }

    /// Shorthand for [`QueueOptions::kind`].
    pub fn queue_kind(mut self, kind: QueueKind) -> Self {
        self.queue = self.queue.kind(kind);
        self
    }

    /// Shorthand for [`QueueOptions::max_priority`].
    pub fn max_priority(mut self, max: u8) -> Self {
        self.queue = self.queue.max_priority(max);
        self
    }

    /// Shorthand for [`QueueOptions::message_ttl`].
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.queue = self.queue.message_ttl(ttl);
        self
    }

    /// Shorthand for [`QueueOptions::max_length`].
    pub fn max_length(mut self, max: u64) -> Self {
        self.queue = self.queue.max_length(max);
        self
    }

    /// The pipeline so far: the one set, else the standard stack (which the bus's default
    /// replaces only when nothing was set).
    fn edit_pipeline(mut self, edit: impl FnOnce(Pipeline) -> Pipeline) -> Self {
        let current = self.pipeline.take().unwrap_or_else(Pipeline::standard);
        self.pipeline = Some(edit(current));
        self
    }
}

/// The queue a subscription declares. By default `<service>.<routing key>` (typed events) or
/// `<service>.<suffix>` (patterns) on the bus's exchange, bound with the event's routing key
/// or the pattern.
///
/// ```
/// use herald::QueueOptions;
/// // Reference 001's status queue: its own name, bound on the listings exchange.
/// let q = QueueOptions::named("listing.status.changes")
///     .exchange("benalsam.listings")
///     .bind("listing.status.#");
/// # let _ = q;
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueOptions {
    pub(crate) name: Option<String>,
    pub(crate) exchange: Option<String>,
    pub(crate) bindings: Vec<String>,
    pub(crate) kind: QueueKind,
    pub(crate) max_priority: Option<u8>,
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) max_length: Option<u64>,
    pub(crate) temporary: bool,
}

impl QueueOptions {
    /// The default queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// A queue with this exact name (shared with whoever else declares it: instances that
    /// consume one named queue compete for its messages).
    pub fn named(name: impl Into<String>) -> Self {
        QueueOptions {
            name: Some(name.into()),
            ..Self::default()
        }
    }

    /// Bind it on this exchange instead of the bus's (the bus declares the exchange).
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Bind it with this key or pattern (`*` one word, `#` any number); repeat for several.
    /// Given any, they replace the default binding (the event's routing key, or the pattern).
    pub fn bind(mut self, key: impl Into<String>) -> Self {
        self.bindings.push(key.into());
        self
    }

    /// Classic or quorum queue (RabbitMQ; other transports ignore it).
    pub fn kind(mut self, kind: QueueKind) -> Self {
        self.kind = kind;
        self
    }

    /// Deliver higher priorities first (0..=9).
    pub fn max_priority(mut self, max: u8) -> Self {
        self.max_priority = Some(max.min(9));
        self
    }

    /// Expire messages waiting longer than this (to the dead letters).
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = Some(ttl);
        self
    }

    /// Refuse publishes beyond this many ready messages.
    pub fn max_length(mut self, max: u64) -> Self {
        self.max_length = Some(max);
        self
    }

    /// A temporary queue, removed when its consumer stops (for tailing, not for work).
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// The queue's spec, given its resolved name, default bindings and retry delays.
    pub(crate) fn spec(
        &self,
        name: String,
        default_bindings: Vec<String>,
        retry_delays: Vec<Duration>,
    ) -> QueueSpec {
        QueueSpec {
            name,
            bindings: if self.bindings.is_empty() {
                default_bindings
            } else {
                self.bindings.clone()
            },
            kind: self.kind,
            retry_delays,
            max_priority: self.max_priority,
            message_ttl: self.message_ttl,
            max_length: self.max_length,
            auto_delete: self.temporary,
        }
    }
}

impl From<&str> for QueueOptions {
    fn from(name: &str) -> Self {
        QueueOptions::named(name)
    }
}

impl From<String> for QueueOptions {
    fn from(name: String) -> Self {
        QueueOptions::named(name)
    }
}

impl From<&String> for QueueOptions {
    fn from(name: &String) -> Self {
        QueueOptions::named(name.as_str())
    }
}

/// Which messages must be handled one after another: those with the same key. `None`: no
/// constraint. A plain function, so it costs nothing to call.
pub type KeyOf = fn(&Envelope) -> Option<&str>;

/// How a subscription's consumer takes messages. Unset values come from the bus's
/// configuration (`prefetch`, `concurrency`).
///
/// ```
/// use herald::ConsumerOptions;
/// // Up to 8 handler calls at once, but the events of one listing (the envelope's subject)
/// // strictly in the order they were published.
/// let c = ConsumerOptions::new().concurrency(8).ordered_by_subject();
/// # let _ = c;
/// ```
#[derive(Clone, Default)]
pub struct ConsumerOptions {
    pub(crate) prefetch: Option<usize>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) key: Option<KeyOf>,
    pub(crate) schema: SchemaCheck,
}

/// Whether bodies are validated before decoding.
#[derive(Clone, Default)]
pub(crate) enum SchemaCheck {
    #[default]
    None,
    /// Against the event's own schema (`#[event(schema)]`).
    OfEvent,
    /// Against this one.
    Given(SchemaLayer),
}

impl ConsumerOptions {
    /// The bus's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Unsettled deliveries at once.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n.max(1));
        self
    }

    /// Handler calls at once (1 keeps the queue's order).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n.max(1));
        self
    }

    /// Keep the messages of one key in order while different keys run in parallel (up to
    /// `concurrency`): a message waits while an earlier one with its key is being handled.
    /// Messages without a key run as they come. Order holds through immediate retries; a
    /// delayed redelivery goes back to the queue, behind what came after it.
    pub fn ordered_by(mut self, key: KeyOf) -> Self {
        self.key = Some(key);
        self
    }

    /// [`ordered_by`](Self::ordered_by) the envelope's subject (the aggregate id: the outbox
    /// relay sets it, and [`MessageOptions::subject`](crate::MessageOptions::subject) does).
    pub fn ordered_by_subject(self) -> Self {
        self.ordered_by(|e| e.subject.as_deref())
    }

    /// Validate bodies against the event's JSON Schema (`#[event(schema)]`, feature `schema`)
    /// before decoding; failures go to the dead letters with the validation errors.
    pub fn validate_schema(mut self) -> Self {
        self.schema = SchemaCheck::OfEvent;
        self
    }

    /// Validate bodies against this JSON Schema (feature `schema`) before decoding.
    pub fn schema(mut self, schema: SchemaLayer) -> Self {
        self.schema = SchemaCheck::Given(schema);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_queue_name_keeps_the_queue_settings_made_before() {
        let o = SubscribeOptions::new()
            .temporary()
            .max_priority(3)
            .queue("audit");
        assert_eq!(o.queue.name.as_deref(), Some("audit"));
        assert!(o.queue.temporary);
        assert_eq!(o.queue.max_priority, Some(3));
        let o = SubscribeOptions::new()
            .temporary()
            .queue(QueueOptions::named("x").bind("a.#"));
        assert!(!o.queue.temporary, "a QueueOptions replaces them");
        let spec = o.queue.spec("x".into(), vec!["default".into()], Vec::new());
        assert_eq!(spec.bindings, vec!["a.#"]);
    }
}
