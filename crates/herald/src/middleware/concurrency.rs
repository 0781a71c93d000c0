//! Concurrency limit: at most N handler calls at once. The bus already runs each subscription
//! with its own `concurrency` workers; this layer is for a limit *shared* by several
//! subscriptions (one connection pool behind many handlers).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{BoxFuture, FailureKind, Handle, HandlerError, HandlerResult, Layer, Message};

/// At most `max` handler calls at once, across every subscription the layer (or a clone of it)
/// is in: a limit shared by handlers that use one connection pool. Each subscription's own
/// `concurrency` bounds it alone.
///
/// ```
/// use herald::middleware::ConcurrencyLimitLayer;
/// let pool = ConcurrencyLimitLayer::new(10);
/// let a = herald::Pipeline::standard().wrap(pool.clone());
/// let b = herald::Pipeline::standard().wrap(pool);
/// ```
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls at once across every handler this layer wraps.
    pub fn new(max: usize) -> Self {
        ConcurrencyLimitLayer {
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl Layer for ConcurrencyLimitLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(ConcurrencyLimit {
            inner,
            permits: self.permits.clone(),
        })
    }
}

struct ConcurrencyLimit {
    inner: Arc<dyn Handle>,
    permits: Arc<Semaphore>,
}

impl Handle for ConcurrencyLimit {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let inner = self.inner.clone();
        let permits = self.permits.clone();
        Box::pin(async move {
            let _permit = permits.acquire_owned().await.map_err(|_| {
                HandlerError::new(FailureKind::Handler, "concurrency limiter closed")
            })?;
            inner.call(msg).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::middleware::handle_fn;
    use crate::middleware::test_support::message;
    use std::time::Duration;

    #[tokio::test]
    async fn never_more_than_the_limit() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let limit = ConcurrencyLimitLayer::new(3);
        let h = limit.layer(handle_fn(move |_| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        }));
        let calls: Vec<_> = (0..12).map(|_| tokio::spawn(h.call(message(1)))).collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}
