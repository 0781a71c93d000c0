//! The handler pipeline: small layers composed around a handler, tower-style.
//!
//! A [`Handle`] takes a [`Message`] and answers with a [`HandlerResult`]; a [`Layer`] wraps one
//! `Handle` in another. A [`Pipeline`] is the list of layers one subscription runs, outermost
//! first, in the order its user composed it; [`Pipeline::standard`] (dead letter → retry → catch
//! panic → timeout) is what a subscription runs when it asks for nothing else. Each layer lives
//! in its own file with its tests:
//!
//! | layer | file | what it does |
//! |---|---|---|
//! | [`RetryLayer`] | `retry.rs` | immediate attempts, then delayed redelivery with backoff and jitter, up to max attempts |
//! | [`DeadLetterLayer`] | `dead_letter.rs` | any failure left undecided goes to the dead letters, with the attempt count in the reason |
//! | [`TimeoutLayer`] | `timeout.rs` | a handler that runs too long is a failed attempt |
//! | [`CatchPanicLayer`] | `catch_panic.rs` | a panicking handler is a failed attempt, never a dead consumer |
//! | [`ConcurrencyLimitLayer`] | `concurrency.rs` | at most N handler calls at once, shareable across subscriptions |
//! | [`CircuitBreakerLayer`] | `circuit_breaker.rs` | pause consumption while a dependency fails, probe, resume |
//! | [`RateLimitLayer`] | `rate_limit.rs` | at most N calls per second |
//! | [`DedupLayer`] | `dedup.rs` | skip ids this subscription already handled, within a window |
//! | [`SchemaLayer`] | `schema.rs` | JSON Schema validation before decoding (feature `schema`) |
//! | [`from_fn`] | `from_fn.rs` | a layer written as an `async fn(Message, Next)` |
//!
//! Undecodable bodies never reach a handler: the typed adapter reports them as
//! [`FailureKind::Decode`], which no layer retries.
//!
//! A layer that can pause consumption (an open circuit breaker) says so through
//! [`Layer::paused_for`]; the consumer asks every layer of the pipeline before it takes a
//! message, so a layer that never pauses writes no code for it.
//!
//! ```
//! use std::time::Duration;
//! use herald::middleware::{from_fn, CircuitBreakerConfig, CircuitBreakerLayer, Message, Next, Pipeline, RetryPolicy};
//!
//! let audit = from_fn(|msg: Message, next: Next| async move {
//!     let result = next.run(msg.clone()).await;
//!     tracing::info!(id = %msg.envelope.id, ok = result.is_ok(), "handled");
//!     result
//! });
//! let pipeline = Pipeline::new()
//!     .layer(CircuitBreakerLayer::new(CircuitBreakerConfig::default()))
//!     .layer(herald::middleware::DeadLetterLayer)
//!     .layer(herald::middleware::RetryLayer::new(RetryPolicy::linear(4, Duration::from_millis(500))))
//!     .layer(audit)
//!     .layer(herald::middleware::CatchPanicLayer)
//!     .layer(herald::middleware::TimeoutLayer::new(Duration::from_secs(5)));
//! assert_eq!(pipeline.len(), 6);
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::Envelope;

mod catch_panic;
mod circuit_breaker;
mod concurrency;
mod dead_letter;
mod dedup;
mod from_fn;
mod pipeline;
mod rate_limit;
mod retry;
mod schema;
mod standard;
mod timeout;

pub(crate) use catch_panic::guarded;
pub use catch_panic::CatchPanicLayer;
pub use circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitState};
pub use concurrency::ConcurrencyLimitLayer;
pub use dead_letter::DeadLetterLayer;
pub use dedup::DedupLayer;
pub use from_fn::{from_fn, FromFnLayer, Next};
pub use pipeline::Pipeline;
pub(crate) use pipeline::{PipelineDefaults, Readiness};
pub use rate_limit::RateLimitLayer;
pub use retry::{Backoff, RetryLayer, RetryPolicy};
pub use schema::SchemaLayer;
pub use timeout::TimeoutLayer;

/// A boxed future, as every `Handle` returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler (or layer) answers.
pub type HandlerResult = Result<(), HandlerError>;

/// One delivery as the pipeline sees it. Cheap to clone, so layers can call inner handlers again.
#[derive(Clone, Debug)]
pub struct Message {
    /// The envelope, shared and immutable: no layer or handler can alter what was published.
    pub envelope: Arc<Envelope>,
    /// The queue it came from.
    pub queue: Arc<str>,
}

/// The kind of failure; decides whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler returned an error: worth retrying.
    Handler,
    /// The handler said retrying cannot help.
    Permanent,
    /// The handler ran past its timeout.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The body could not be decoded into the event type.
    Decode,
    /// The body failed JSON Schema validation.
    Schema,
    /// The body is larger than the configured limit.
    TooLarge,
    /// The circuit breaker is open; the message goes back untouched.
    CircuitOpen,
}

impl FailureKind {
    /// Whether a later attempt could succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Handler | FailureKind::Timeout | FailureKind::Panic
        )
    }

    /// The name recorded in `herald_error_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Handler => "handler",
            FailureKind::Permanent => "permanent",
            FailureKind::Timeout => "timeout",
            FailureKind::Panic => "panic",
            FailureKind::Decode => "decode",
            FailureKind::Schema => "schema",
            FailureKind::TooLarge => "too_large",
            FailureKind::CircuitOpen => "circuit_open",
        }
    }
}

/// What should happen to a failed message, decided by a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Deliver again after this delay, counting an attempt.
    RetryAfter(Duration),
    /// Move to the dead letters.
    DeadLetter,
    /// Give back without counting an attempt, available after this delay.
    Release(Duration),
}

/// A failed handling: what went wrong and, once a layer decided, what to do about it.
#[derive(Debug, Clone)]
pub struct HandlerError {
    /// The failure kind.
    pub kind: FailureKind,
    /// Human-readable reason, recorded in the dead letters.
    pub message: String,
    /// The decision, when a layer made one. Undecided failures are dead-lettered.
    pub disposition: Option<Disposition>,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(message: impl fmt::Display) -> Self {
        Self::new(FailureKind::Handler, message)
    }

    /// A failure retrying cannot fix: the message goes straight to the dead letters.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self::new(FailureKind::Permanent, message)
    }

    /// A failure of a given kind.
    pub fn new(kind: FailureKind, message: impl fmt::Display) -> Self {
        HandlerError {
            kind,
            message: message.to_string(),
            disposition: None,
        }
    }

    /// The same failure with a decision attached.
    pub fn with_disposition(mut self, disposition: Disposition) -> Self {
        self.disposition = Some(disposition);
        self
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        // Walk the source chain so the dead letter says why, not just what.
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        HandlerError::transient(message)
    }
}

/// A step of the pipeline: the handler itself, or a layer's handle around it.
pub trait Handle: Send + Sync + 'static {
    /// Handle one message.
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult>;
}

/// Wraps a `Handle` in another. Implement [`layer`](Layer::layer); the other methods have
/// defaults that suit a layer which never pauses consumption and asks for no redelivery delays.
pub trait Layer: Send + Sync + 'static {
    /// Wrap `inner`.
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle>;

    /// Readiness: when `Some`, the consumer takes no new messages for that long (an open
    /// circuit breaker). Asked before every message, so it should be quick. Default: never
    /// paused.
    fn paused_for(&self) -> Option<Duration> {
        None
    }

    /// The redelivery delays this layer may ask for ([`Disposition::RetryAfter`]), so that
    /// transports that declare one queue per delay (RabbitMQ) declare them. Default: none.
    fn retry_delays(&self) -> Vec<Duration> {
        Vec::new()
    }
}

/// A `Handle` from a closure, for tests and small adapters.
pub fn handle_fn<F, Fut>(f: F) -> Arc<dyn Handle>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    struct FnHandle<F>(F);
    impl<F, Fut> Handle for FnHandle<F>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
            Box::pin((self.0)(msg))
        }
    }
    Arc::new(FnHandle(f))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use bytes::Bytes;

    /// A message with the given attempt number.
    pub fn message(attempt: u32) -> Message {
        let mut e = Envelope::new("t.x", 1, "t.x", "test", Bytes::from_static(b"{\"n\":1}"));
        e.attempt = attempt;
        Message {
            envelope: Arc::new(e),
            queue: Arc::from("svc.t.x"),
        }
    }
}
