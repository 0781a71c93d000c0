//! The standard stack in one step: dead letter → retry → catch panic → timeout, as a
//! [`Pipeline`](super::Pipeline) builds those four layers where they stand together in that
//! order (nearly every subscription).
//!
//! Each of the four layers is a `Handle` of its own, boxing one future per call and cloning the
//! message on the way in. Composed here from the same functions the layers use
//! ([`super::dead_letter::decide`], [`super::retry::retrying`], [`super::catch_panic::guarded`],
//! [`super::timeout::within`]), a call costs one boxed future instead of four, with the same
//! behaviour: the tests below run both stacks on the same cases.

use std::sync::Arc;
use std::time::Duration;

use super::{catch_panic, dead_letter, retry, timeout};
use super::{BoxFuture, Handle, HandlerResult, Message, RetryPolicy};

/// What [`Standard`] applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StandardStack {
    /// The retry layer's policy.
    pub retry: RetryPolicy,
    /// The timeout layer's limit; `None`: no timeout.
    pub timeout: Option<Duration>,
}

impl StandardStack {
    /// Wrap `inner` (the decoding handler, or the schema layer around it).
    pub fn wrap(self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(Standard { inner, stack: self })
    }
}

struct Standard {
    inner: Arc<dyn Handle>,
    stack: StandardStack,
}

impl Handle for Standard {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let inner = self.inner.clone();
        let StandardStack { retry, timeout } = self.stack;
        Box::pin(async move {
            let inner = &inner;
            let result = retry::retrying(retry, &msg, |m| {
                catch_panic::guarded(move || async move {
                    let call = inner.call(m);
                    match timeout {
                        Some(limit) => timeout::within(limit, call).await,
                        None => call.await,
                    }
                })
            })
            .await;
            dead_letter::decide(&msg, result)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::middleware::test_support::message;
    use crate::middleware::{
        handle_fn, CatchPanicLayer, DeadLetterLayer, Disposition, FailureKind, HandlerError, Layer,
        RetryLayer, TimeoutLayer,
    };

    /// The same four layers, one `Handle` each, as the bus stacks them when it cannot fuse.
    fn layered(inner: Arc<dyn Handle>, stack: StandardStack) -> Arc<dyn Handle> {
        let mut h = inner;
        if let Some(limit) = stack.timeout {
            h = TimeoutLayer::new(limit).layer(h);
        }
        h = CatchPanicLayer.layer(h);
        h = RetryLayer::new(stack.retry).layer(h);
        DeadLetterLayer.layer(h)
    }

    /// A handler that fails its first `fail` calls with `kind` (panics for `Panic`, sleeps past
    /// any timeout for `Timeout`) and counts every call.
    fn flaky(fail: u32, kind: FailureKind, calls: Arc<AtomicU32>) -> Arc<dyn Handle> {
        handle_fn(move |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n >= fail {
                    return Ok(());
                }
                match kind {
                    FailureKind::Panic => panic!("boom {n}"),
                    FailureKind::Timeout => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(())
                    }
                    other => Err(HandlerError::new(other, format!("failure {n}"))),
                }
            }
        })
    }

    /// A handler that panics in `call` itself, before there is a future to poll.
    struct PanicsAtCall;

    impl Handle for PanicsAtCall {
        fn call(&self, _msg: Message) -> BoxFuture<HandlerResult> {
            panic!("no future for you")
        }
    }

    /// What a stack answers and how many calls it made, on a message at `attempt`.
    async fn outcome(
        build: impl Fn(Arc<dyn Handle>) -> Arc<dyn Handle>,
        fail: u32,
        kind: FailureKind,
        attempt: u32,
    ) -> (Result<(), (FailureKind, String, Option<Disposition>)>, u32) {
        let calls = Arc::new(AtomicU32::new(0));
        let h = build(flaky(fail, kind, calls.clone()));
        let r = h
            .call(message(attempt))
            .await
            .map_err(|e| (e.kind, e.message, e.disposition));
        (r, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn answers_as_the_four_layers_do() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let stacks = [
            StandardStack {
                retry: policy,
                timeout: Some(Duration::from_millis(30)),
            },
            StandardStack {
                retry: RetryPolicy::none(),
                timeout: None,
            },
        ];
        let cases = [
            (0, FailureKind::Handler, 1),
            (2, FailureKind::Handler, 1),
            (9, FailureKind::Handler, 1),
            (9, FailureKind::Handler, 5),
            (9, FailureKind::Permanent, 1),
            (1, FailureKind::Panic, 1),
            (9, FailureKind::Panic, 2),
            (9, FailureKind::Decode, 1),
        ];
        for stack in stacks {
            for (fail, kind, attempt) in cases {
                let fused = outcome(|h| stack.wrap(h), fail, kind, attempt).await;
                let reference = outcome(|h| layered(h, stack), fail, kind, attempt).await;
                assert_eq!(fused, reference, "{stack:?}, {fail} failures of {kind:?}");
            }
        }
        // A handler that panics while making its future, and one that decided itself.
        for stack in stacks {
            let panics_at_call = || -> Arc<dyn Handle> { Arc::new(PanicsAtCall) };
            let fused = stack.wrap(panics_at_call()).call(message(1)).await;
            let reference = layered(panics_at_call(), stack).call(message(1)).await;
            let (fused, reference) = (fused.unwrap_err(), reference.unwrap_err());
            assert_eq!(fused.kind, FailureKind::Panic);
            assert_eq!(
                (fused.kind, fused.message, fused.disposition),
                (reference.kind, reference.message, reference.disposition)
            );
            let releases = || {
                handle_fn(|_| async {
                    Err(HandlerError::transient("busy")
                        .with_disposition(Disposition::Release(Duration::from_secs(3))))
                })
            };
            let fused = stack.wrap(releases()).call(message(1)).await.unwrap_err();
            let reference = layered(releases(), stack)
                .call(message(1))
                .await
                .unwrap_err();
            assert_eq!(
                fused.disposition,
                Some(Disposition::Release(Duration::from_secs(3)))
            );
            assert_eq!(fused.disposition, reference.disposition);
        }
        // Timeouts only where a limit is set; the retry layer then asks for a redelivery.
        let stack = stacks[0];
        let fused = outcome(|h| stack.wrap(h), 9, FailureKind::Timeout, 1).await;
        let reference = outcome(|h| layered(h, stack), 9, FailureKind::Timeout, 1).await;
        assert_eq!(fused, reference);
        let (Err((kind, _, Some(Disposition::RetryAfter(_)))), 3) = fused else {
            panic!("a timed-out call is retried, then redelivered: {fused:?}");
        };
        assert_eq!(kind, FailureKind::Timeout);
    }
}
