//! Timeout: a handler call that runs longer than the limit is abandoned and counts as a failed,
//! retryable attempt, so one stuck call cannot hold a consumer slot for ever.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::{BoxFuture, FailureKind, Handle, HandlerError, HandlerResult, Layer, Message};

/// Abandons a handler call that runs past `limit`; the attempt fails (retryably), so one stuck
/// call cannot hold a consumer slot for ever. Part of
/// [`Pipeline::standard`](crate::Pipeline::standard), usually set through
/// [`Pipeline::timeout`](crate::Pipeline::timeout).
///
/// ```
/// use std::time::Duration;
/// let pipeline = herald::Pipeline::new().layer(herald::middleware::TimeoutLayer::new(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Abandon calls running longer than `limit`.
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit }
    }

    /// Its limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl Layer for TimeoutLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(Timeout {
            inner,
            limit: self.limit,
        })
    }
}

/// `call`, failed as a retryable timeout when it runs longer than `limit`. Shared with the
/// standard stack ([`super::standard`]).
pub(crate) async fn within(
    limit: Duration,
    call: impl Future<Output = HandlerResult>,
) -> HandlerResult {
    let started = tokio::time::Instant::now();
    let mut call = std::pin::pin!(call);
    // Most calls finish on their first poll, and need no timer: one is set only for a call
    // that waits, with the deadline counted from the start.
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        return result;
    }
    // A limit too large to add to the clock never runs out.
    let Some(deadline) = started.checked_add(limit) else {
        return call.await;
    };
    let mut timer = std::pin::pin!(tokio::time::sleep_until(deadline));
    // The call was just polled: this turn only sets the timer; later turns poll the call first.
    let mut just_polled = true;
    std::future::poll_fn(|cx| {
        if !std::mem::take(&mut just_polled) {
            if let Poll::Ready(result) = call.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
        }
        timer.as_mut().poll(cx).map(|()| {
            Err(HandlerError::new(
                FailureKind::Timeout,
                format!("handler did not finish within {limit:?}"),
            ))
        })
    })
    .await
}

struct Timeout {
    inner: Arc<dyn Handle>,
    limit: Duration,
}

impl Handle for Timeout {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        Box::pin(within(self.limit, self.inner.call(msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::handle_fn;
    use crate::middleware::test_support::message;

    #[tokio::test]
    async fn slow_calls_time_out_fast_ones_pass() {
        let slow = TimeoutLayer::new(Duration::from_millis(50)).layer(handle_fn(|_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        }));
        let started = std::time::Instant::now();
        let err = slow.call(message(1)).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Timeout);
        assert!(started.elapsed() < Duration::from_secs(1));
        let fast =
            TimeoutLayer::new(Duration::from_millis(50)).layer(handle_fn(|_| async { Ok(()) }));
        assert!(fast.call(message(1)).await.is_ok());
    }

    #[tokio::test]
    async fn a_limit_past_the_clock_never_runs_out() {
        let waits = TimeoutLayer::new(Duration::MAX).layer(handle_fn(|_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        }));
        assert!(waits.call(message(1)).await.is_ok());
    }
}
