//! Panic isolation: a handler that panics fails its attempt like any other error (and is
//! retried by the retry layer); the consumer task and its other messages carry on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use super::{BoxFuture, FailureKind, Handle, HandlerError, HandlerResult, Layer, Message};

/// Makes a panicking handler a failed (retryable) attempt instead of a dead consumer task; part
/// of [`Pipeline::standard`](crate::Pipeline::standard).
///
/// ```
/// use herald::middleware::{CatchPanicLayer, DeadLetterLayer};
/// let pipeline = herald::Pipeline::new().layer(DeadLetterLayer).layer(CatchPanicLayer);
/// ```
#[derive(Debug, Clone, Default)]
pub struct CatchPanicLayer;

impl Layer for CatchPanicLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(CatchPanic { inner })
    }
}

struct CatchPanic {
    inner: Arc<dyn Handle>,
}

/// Start and run a handler call, a panic in either failing the attempt. Calling can itself
/// panic (a handler that panics before its first await), so `start` runs inside the guard too.
/// Shared with the standard stack ([`super::standard`]) and batch handlers.
pub(crate) async fn guarded<T, F: Future<Output = Result<T, HandlerError>>>(
    start: impl FnOnce() -> F,
) -> Result<T, HandlerError> {
    match AssertUnwindSafe(async move { start().await })
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(payload) => Err(HandlerError::new(
            FailureKind::Panic,
            format!("handler panicked: {}", panic_text(&*payload)),
        )),
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl Handle for CatchPanic {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let inner = self.inner.clone();
        Box::pin(guarded(move || inner.call(msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::test_support::message;
    use crate::middleware::{BoxFuture, Handle};

    struct PanicsBeforeAwait;
    impl Handle for PanicsBeforeAwait {
        fn call(&self, _: Message) -> BoxFuture<HandlerResult> {
            panic!("synchronous boom")
        }
    }

    #[tokio::test]
    async fn panics_become_failures() {
        let h = CatchPanicLayer.layer(crate::middleware::handle_fn(|_| async {
            if true {
                panic!("async boom");
            }
            Ok(())
        }));
        let err = h.call(message(1)).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Panic);
        assert!(err.message.contains("async boom"));
        let h = CatchPanicLayer.layer(Arc::new(PanicsBeforeAwait));
        let err = h.call(message(1)).await.unwrap_err();
        assert!(err.message.contains("synchronous boom"));
    }
}
