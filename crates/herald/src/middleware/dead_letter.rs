//! Dead-lettering: a failure no other layer decided about goes to the dead letters, its reason
//! carrying the attempt count. The transport records the rest of the failure metadata (error
//! text and kind, original queue and routing key, first and last failure times) in headers.
//!
//! This is the outermost decision layer, so the default for anything unexpected is "keep it
//! where a person can look", never "drop it".

use std::sync::Arc;

use super::{BoxFuture, Disposition, Handle, HandlerResult, Layer, Message};

/// Sends a failure no layer inside it decided about to the queue's dead letters, with the
/// attempt count in the reason (the transport records the error, its kind, the original queue
/// and routing key and the failure times). The outermost layer of
/// [`Pipeline::standard`](crate::Pipeline::standard): nothing unexpected is ever dropped.
///
/// ```
/// let pipeline = herald::Pipeline::new().layer(herald::middleware::DeadLetterLayer);
/// ```
#[derive(Debug, Clone, Default)]
pub struct DeadLetterLayer;

impl Layer for DeadLetterLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(DeadLetter { inner })
    }
}

/// The result of handling `msg`, with any failure no layer decided about sent to the dead
/// letters, its reason carrying the attempt. Shared with the standard stack
/// ([`super::standard`]).
pub(crate) fn decide(msg: &Message, result: HandlerResult) -> HandlerResult {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.disposition.is_some() => Err(e),
        Err(e) => {
            tracing::warn!(
                id = %msg.envelope.id, queue = %msg.queue, attempt = msg.envelope.attempt,
                kind = e.kind.as_str(), error = %e.message, "dead-lettering message"
            );
            let message = format!("{} (attempt {})", e.message, msg.envelope.attempt);
            Err(super::HandlerError { message, ..e }.with_disposition(Disposition::DeadLetter))
        }
    }
}

struct DeadLetter {
    inner: Arc<dyn Handle>,
}

impl Handle for DeadLetter {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let result = inner.call(msg.clone()).await;
            decide(&msg, result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::test_support::message;
    use crate::middleware::{handle_fn, FailureKind, HandlerError};
    use std::time::Duration;

    #[tokio::test]
    async fn undecided_failures_are_dead_lettered_with_the_attempt() {
        let h = DeadLetterLayer.layer(handle_fn(|_| async {
            Err(HandlerError::new(FailureKind::Decode, "bad json"))
        }));
        let err = h.call(message(1)).await.unwrap_err();
        assert_eq!(err.disposition, Some(Disposition::DeadLetter));
        assert_eq!(err.message, "bad json (attempt 1)");
        assert_eq!(err.kind, FailureKind::Decode);
    }

    #[tokio::test]
    async fn decisions_from_inner_layers_stand() {
        let h = DeadLetterLayer.layer(handle_fn(|_| async {
            Err(HandlerError::transient("x")
                .with_disposition(Disposition::RetryAfter(Duration::from_secs(1))))
        }));
        let err = h.call(message(1)).await.unwrap_err();
        assert_eq!(
            err.disposition,
            Some(Disposition::RetryAfter(Duration::from_secs(1)))
        );
        assert!(DeadLetterLayer
            .layer(handle_fn(|_| async { Ok(()) }))
            .call(message(1))
            .await
            .is_ok());
    }
}
