//! Per-subscription options, and the pipeline they assemble.

use std::sync::Arc;
use std::time::Duration;

use crate::middleware::{
    CatchPanicLayer, CircuitBreakerConfig, CircuitBreakerLayer, ConcurrencyLimitLayer,
    DeadLetterLayer, DedupLayer, Handle, Layer, RateLimitLayer, RetryLayer, RetryPolicy,
    SchemaLayer, StandardStack, TimeoutLayer,
};
use crate::topology::{QueueKind, QueueSpec};

/// How one subscription consumes. Every field has a safe default; the bus's configuration
/// fills `prefetch`, `concurrency` and `timeout` when they are left unset.
///
/// ```
/// use std::time::Duration;
/// use herald::{SubscribeOptions, middleware::RetryPolicy};
/// let options = SubscribeOptions::new()
///     .retry(RetryPolicy::exponential(4, Duration::from_millis(200)))
///     .timeout(Duration::from_secs(5))
///     .concurrency(4);
/// ```
#[derive(Clone, Default)]
pub struct SubscribeOptions {
    pub(crate) queue: Option<String>,
    pub(crate) prefetch: Option<usize>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) timeout: Option<Option<Duration>>,
    pub(crate) circuit_breaker: Option<CircuitBreakerLayer>,
    pub(crate) rate_limit: Option<RateLimitLayer>,
    pub(crate) concurrency_limit: Option<ConcurrencyLimitLayer>,
    pub(crate) schema: Option<SchemaLayer>,
    pub(crate) validate_schema: bool,
    pub(crate) layers: Vec<Arc<dyn Layer>>,
    pub(crate) queue_kind: QueueKind,
    pub(crate) max_priority: Option<u8>,
    pub(crate) message_ttl: Option<Duration>,
    pub(crate) max_length: Option<u64>,
    pub(crate) temporary: bool,
    pub(crate) dedup: Option<DedupLayer>,
}

impl SubscribeOptions {
    /// Defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Use this queue name instead of `<service>.<event name>`.
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.queue = Some(name.into());
        self
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
    /// The retry policy (default: [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
    /// Abandon handler calls running longer than this.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(Some(limit));
        self
    }
    /// No handler timeout at all.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = Some(None);
        self
    }
    /// Pause consumption while the handler keeps failing.
    pub fn circuit_breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.circuit_breaker = Some(CircuitBreakerLayer::new(config));
        self
    }
    /// Share a circuit breaker with other subscriptions (one dependency behind several).
    pub fn shared_circuit_breaker(mut self, breaker: CircuitBreakerLayer) -> Self {
        self.circuit_breaker = Some(breaker);
        self
    }
    /// At most this many handler calls per second.
    pub fn rate_limit(mut self, per_second: f64) -> Self {
        self.rate_limit = Some(RateLimitLayer::per_second(per_second));
        self
    }
    /// A concurrency limit shared with other subscriptions.
    pub fn concurrency_limit(mut self, limit: ConcurrencyLimitLayer) -> Self {
        self.concurrency_limit = Some(limit);
        self
    }
    /// Validate bodies against the event's JSON Schema (`#[event(schema)]`, feature `schema`).
    pub fn validate_schema(mut self) -> Self {
        self.validate_schema = true;
        self
    }
    /// Validate bodies against this JSON Schema (feature `schema`).
    pub fn schema(mut self, schema: SchemaLayer) -> Self {
        self.schema = Some(schema);
        self
    }
    /// Add a custom layer (applied inside retry, outside panic isolation and timeout).
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }
    /// Classic or quorum queue.
    pub fn queue_kind(mut self, kind: QueueKind) -> Self {
        self.queue_kind = kind;
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

    /// Skip redeliveries of ids already handled, remembering up to `capacity` ids for `ttl`.
    pub fn dedup(mut self, capacity: usize, ttl: Duration) -> Self {
        self.dedup = Some(DedupLayer::in_memory(capacity, ttl));
        self
    }

    /// A temporary queue, removed when the consumer stops (for tailing, not for work).
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry.unwrap_or_default()
    }

    /// The queue this subscription needs.
    pub(crate) fn queue_spec(&self, name: String, bindings: Vec<String>) -> QueueSpec {
        QueueSpec {
            name,
            bindings,
            kind: self.queue_kind,
            retry_delays: self.retry_policy().delay_levels(),
            max_priority: self.max_priority,
            message_ttl: self.message_ttl,
            max_length: self.max_length,
            auto_delete: self.temporary,
        }
    }

    /// Wrap the decoding handler in the configured layers (see the middleware module docs for
    /// the order and why).
    pub(crate) fn build_pipeline(
        &self,
        handler: Arc<dyn Handle>,
        default_timeout: Option<Duration>,
    ) -> Arc<dyn Handle> {
        let mut h = handler;
        if let Some(schema) = &self.schema {
            h = schema.layer(h);
        }
        let timeout = self.timeout.unwrap_or(default_timeout);
        if self.layers.is_empty() && self.dedup.is_none() {
            // Nothing between the four standard layers: one step does what they do.
            h = StandardStack {
                retry: self.retry_policy(),
                timeout,
            }
            .wrap(h);
        } else {
            if let Some(limit) = timeout {
                h = TimeoutLayer::new(limit).layer(h);
            }
            h = CatchPanicLayer.layer(h);
            for layer in self.layers.iter().rev() {
                h = layer.layer(h);
            }
            h = RetryLayer::new(self.retry_policy()).layer(h);
            if let Some(dedup) = &self.dedup {
                h = dedup.layer(h);
            }
            h = DeadLetterLayer.layer(h);
        }
        if let Some(limit) = &self.concurrency_limit {
            h = limit.layer(h);
        }
        if let Some(breaker) = &self.circuit_breaker {
            h = breaker.layer(h);
        }
        if let Some(rate) = &self.rate_limit {
            h = rate.layer(h);
        }
        h
    }
}
