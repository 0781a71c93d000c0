//! Rate limit: at most N handler calls per second (a token bucket with a burst of one second's
//! worth), for handlers that call a rate-limited API. Calls wait for a token; nothing is
//! dropped or failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{BoxFuture, Handle, HandlerResult, Layer, Message};

/// At most N handler calls per second (a token bucket with a burst of one second's worth), for
/// handlers that call a rate-limited API; calls wait for a token, nothing is dropped or failed.
/// Clones share one bucket.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    per_second: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimitLayer {
    /// At most `per_second` calls per second.
    pub fn per_second(per_second: f64) -> Self {
        let per_second = per_second.max(0.001);
        RateLimitLayer {
            bucket: Arc::new(Mutex::new(Bucket {
                per_second,
                tokens: per_second.max(1.0),
                refilled: Instant::now(),
            })),
        }
    }

    async fn acquire(&self) {
        loop {
            let wait = {
                let mut b = self.bucket.lock().await;
                let now = Instant::now();
                let cap = b.per_second.max(1.0);
                b.tokens = (b.tokens + now.duration_since(b.refilled).as_secs_f64() * b.per_second)
                    .min(cap);
                b.refilled = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - b.tokens) / b.per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Layer for RateLimitLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(RateLimit {
            inner,
            layer: self.clone(),
        })
    }
}

struct RateLimit {
    inner: Arc<dyn Handle>,
    layer: RateLimitLayer,
}

impl Handle for RateLimit {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
            layer.acquire().await;
            inner.call(msg).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::handle_fn;
    use crate::middleware::test_support::message;

    #[tokio::test]
    async fn spreads_calls_over_time() {
        let h = RateLimitLayer::per_second(20.0).layer(handle_fn(|_| async { Ok(()) }));
        let started = Instant::now();
        for _ in 0..30 {
            h.call(message(1)).await.unwrap();
        }
        // 20 from the initial burst, 10 more at 20/s = ~0.5 s.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
