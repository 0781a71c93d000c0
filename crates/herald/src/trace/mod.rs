//! Distributed tracing: every publish and every handling is a span, and W3C trace context
//! (`traceparent`, the `cloudEvents_traceparent` attribute) links them across services.
//!
//! - A publish continues the trace in force ([`current`]) with a new span, or starts a new
//!   trace derived from the event's id ([`TraceContext::for_event_id`]), so every
//!   event carries a `traceparent`. A `traceparent` set explicitly
//!   (`MessageOptions::traceparent`, a ready-made envelope, an outbox row) is sent unchanged.
//! - A handling runs in a span whose parent is the incoming `traceparent`; while it runs, that
//!   span is the task's current trace context, so anything the handler publishes (through
//!   `Context`, `Bus` or `Publisher`) stays in the trace.
//! - Spans are plain `tracing` spans at INFO named `herald.publish` and `herald.handle`; with a
//!   filter above INFO they cost almost nothing. With the `otel` feature the same spans become
//!   OpenTelemetry spans (see [`otel`]).
//!
//! Code that receives trace context from elsewhere (an HTTP request, say) can make it current
//! for the events it publishes:
//!
//! ```
//! use herald::trace::{self, TraceContext};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let incoming = TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
//! let seen = trace::scope(incoming.unwrap(), async { trace::current() }).await;
//! assert_eq!(seen, incoming);
//! assert_eq!(trace::current(), None, "only inside the scope");
//! # });
//! ```

use std::future::Future;

mod context;
#[cfg(feature = "otel")]
pub mod otel;
pub(crate) mod spans;

pub use context::{Hex, TraceContext};

tokio::task_local! {
    /// The span a handler runs in, while it runs.
    static CURRENT: TraceContext;
}

/// The trace context in force here: under the `otel` feature the current `tracing` span's
/// OpenTelemetry context when it has one, otherwise the handling in progress on this task (or
/// the innermost [`scope`]). `None` outside of both.
pub fn current() -> Option<TraceContext> {
    #[cfg(feature = "otel")]
    if let Some(ctx) = otel::current_span_context() {
        return Some(ctx);
    }
    task_current()
}

/// [`current`], or a new trace with random ids when there is none.
pub fn current_or_root() -> TraceContext {
    current().unwrap_or_else(TraceContext::new_root)
}

/// Run `fut` with `ctx` as the current trace context (events it publishes continue `ctx`).
pub fn scope<F: Future>(ctx: TraceContext, fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(ctx, fut)
}

/// Run `f` with `ctx` as the current trace context; the synchronous [`scope`].
pub fn sync_scope<R>(ctx: TraceContext, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(ctx, f)
}

/// The task-local context only (no OpenTelemetry lookup).
pub(crate) fn task_current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}
