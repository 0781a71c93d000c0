//! A layer written as an `async fn`, as axum's `middleware::from_fn`: the function gets the
//! message and [`Next`], the rest of the pipeline, and decides what to do around calling it.

use std::future::Future;
use std::sync::Arc;

use super::{BoxFuture, Handle, HandlerResult, Layer, Message};

/// The rest of the pipeline, inside a [`from_fn`] layer.
pub struct Next {
    inner: Arc<dyn Handle>,
}

impl Next {
    /// Run the rest of the pipeline (and the handler) on `msg`. Calling it again is a fresh
    /// attempt, as the retry layer does; not calling it skips the handler.
    pub fn run(&self, msg: Message) -> BoxFuture<HandlerResult> {
        self.inner.call(msg)
    }
}

/// A layer made of a function; see [`from_fn`].
pub struct FromFnLayer<F> {
    f: Arc<F>,
}

impl<F> Clone for FromFnLayer<F> {
    fn clone(&self) -> Self {
        FromFnLayer { f: self.f.clone() }
    }
}

/// A layer from an `async fn(Message, Next) -> HandlerResult` (or a closure returning such a
/// future).
///
/// ```
/// use std::time::Instant;
/// use herald::middleware::{from_fn, Message, Next, Pipeline};
/// use herald::HandlerError;
///
/// async fn log_slow(msg: Message, next: Next) -> Result<(), HandlerError> {
///     let started = Instant::now();
///     let result = next.run(msg.clone()).await;
///     if started.elapsed().as_millis() > 500 {
///         tracing::warn!(id = %msg.envelope.id, "slow handler");
///     }
///     result
/// }
///
/// // Inside the standard stack's retry, so every attempt is timed.
/// let pipeline = Pipeline::standard().layer(from_fn(log_slow));
/// # let _ = pipeline;
/// ```
pub fn from_fn<F, Fut>(f: F) -> FromFnLayer<F>
where
    F: Fn(Message, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    FromFnLayer { f: Arc::new(f) }
}

impl<F, Fut> Layer for FromFnLayer<F>
where
    F: Fn(Message, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(FromFnHandle {
            f: self.f.clone(),
            inner,
        })
    }
}

struct FromFnHandle<F> {
    f: Arc<F>,
    inner: Arc<dyn Handle>,
}

impl<F, Fut> Handle for FromFnHandle<F>
where
    F: Fn(Message, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        Box::pin((self.f)(
            msg,
            Next {
                inner: self.inner.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::test_support::message;
    use crate::middleware::{handle_fn, HandlerError};

    #[tokio::test]
    async fn a_function_can_skip_retry_or_rewrite_the_result() {
        let refuse_attempt_3 = from_fn(|msg: Message, next: Next| async move {
            if msg.envelope.attempt >= 3 {
                return Err(HandlerError::permanent(
                    "too many attempts for this function",
                ));
            }
            let first = next.run(msg.clone()).await;
            if first.is_err() {
                return next.run(msg).await;
            }
            first
        });
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let h = refuse_attempt_3.layer(handle_fn(move |_| {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(HandlerError::transient("blip"))
                } else {
                    Ok(())
                }
            }
        }));
        assert!(h.call(message(1)).await.is_ok());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(h.call(message(3)).await.is_err());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
