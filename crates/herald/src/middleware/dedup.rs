//! Deduplication: skip a message whose event id this subscription already handled successfully,
//! within a bounded window. Delivery is at-least-once (a consumer that crashes after its handler
//! ran but before the ack sees the message again); this absorbs such redeliveries in-process.
//! For duplicates across processes and restarts, use the durable inbox instead:
//! `herald_outbox::inbox::InboxLayer` (PostgreSQL, SQLite or Redis, or the handler's own
//! transaction).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BoxFuture, Handle, HandlerResult, Layer, Message};

/// Skips a message whose event id this subscription already handled successfully, within a
/// bounded window kept in memory: it absorbs the redeliveries of at-least-once delivery inside
/// one process. For duplicates across processes and restarts use the durable inbox
/// (`herald_outbox::inbox::InboxLayer`). Clones share one window.
#[derive(Debug, Clone)]
pub struct DedupLayer {
    seen: Arc<Mutex<Window>>,
}

#[derive(Debug)]
struct Window {
    capacity: usize,
    ttl: Duration,
    ids: HashMap<String, Instant>,
    order: VecDeque<String>,
}

impl Window {
    fn contains(&mut self, id: &str) -> bool {
        self.expire();
        self.ids.contains_key(id)
    }

    fn insert(&mut self, id: String) {
        self.expire();
        if self.ids.insert(id.clone(), Instant::now()).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    fn expire(&mut self) {
        while let Some(front) = self.order.front() {
            match self.ids.get(front) {
                Some(at) if at.elapsed() < self.ttl => break,
                _ => {
                    let old = self.order.pop_front();
                    if let Some(old) = old {
                        self.ids.remove(&old);
                    }
                }
            }
        }
    }
}

impl DedupLayer {
    /// Remember up to `capacity` handled ids for up to `ttl`.
    pub fn in_memory(capacity: usize, ttl: Duration) -> Self {
        DedupLayer {
            seen: Arc::new(Mutex::new(Window {
                capacity: capacity.max(1),
                ttl,
                ids: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }
}

fn lock(m: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Layer for DedupLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(Dedup {
            inner,
            seen: self.seen.clone(),
        })
    }
}

struct Dedup {
    inner: Arc<dyn Handle>,
    seen: Arc<Mutex<Window>>,
}

impl Handle for Dedup {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        if lock(&self.seen).contains(&msg.envelope.id) {
            tracing::debug!(id = %msg.envelope.id, "duplicate skipped");
            return Box::pin(async { Ok(()) });
        }
        let inner = self.inner.clone();
        let seen = self.seen.clone();
        Box::pin(async move {
            let id = msg.envelope.id.clone();
            let result = inner.call(msg).await;
            if result.is_ok() {
                lock(&seen).insert(id);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::middleware::test_support::message;
    use crate::middleware::{handle_fn, HandlerError};

    #[tokio::test]
    async fn second_delivery_of_a_handled_id_is_skipped() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let h = DedupLayer::in_memory(10, Duration::from_secs(60)).layer(handle_fn(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }));
        let m = message(1);
        h.call(m.clone()).await.unwrap();
        h.call(m).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        h.call(message(1)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a different id is handled");
    }

    #[tokio::test]
    async fn failures_are_not_remembered_and_the_window_is_bounded() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let h = DedupLayer::in_memory(2, Duration::from_secs(60)).layer(handle_fn(move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(HandlerError::transient("x"))
                } else {
                    Ok(())
                }
            }
        }));
        let m = message(1);
        assert!(h.call(m.clone()).await.is_err());
        h.call(m.clone()).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a failed attempt does not mark the id"
        );
        h.call(message(1)).await.unwrap();
        h.call(message(1)).await.unwrap();
        h.call(m).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            5,
            "the oldest id fell out of a window of 2"
        );
    }
}
