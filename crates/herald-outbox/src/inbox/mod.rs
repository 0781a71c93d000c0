//! The idempotent inbox: a handler layer that records the event ids each consumer processed and
//! skips redeliveries, durably (PostgreSQL, SQLite or Redis) and with expiry.
//!
//! Delivery is at-least-once everywhere: brokers redeliver after a crash, and the outbox relay
//! publishes again when it was killed between publishing and recording. [`InboxLayer`] makes a
//! handler's effects happen once per event id and consumer:
//!
//! 1. before the handler, it *claims* the id for this consumer (`processing`, with a lease);
//! 2. an id already `done` is a duplicate: acknowledged without calling the handler;
//! 3. an id another worker is processing right now is released and redelivered later;
//! 4. after success the id becomes `done` and is kept for the configured expiry; after a failure
//!    the claim is dropped so the retry runs the handler again.
//!
//! A crash between the handler's effects and step 4 leaves a claim that expires after the lease,
//! and the handler runs again: effects in *another* system are at-least-once. For exactly-once
//! effects, record the id in the handler's own database transaction instead:
//! [`postgres::PgInbox::record`] or [`sqlite::SqliteInbox::record`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use herald::middleware::{handle_fn, Handle, Layer, Message};
//! use herald_outbox::inbox::{InboxLayer, MemoryInbox};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let layer = InboxLayer::new(Arc::new(MemoryInbox::default())).keep_for(Duration::from_secs(3600));
//! let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let c = calls.clone();
//! let handler = layer.layer(handle_fn(move |_m: Message| {
//!     c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async { Ok(()) }
//! }));
//! let envelope = herald::Envelope::new("a.b", 1, "a.b", "svc", bytes::Bytes::from_static(b"{}"));
//! let msg = Message { envelope: Arc::new(envelope), queue: Arc::from("svc.a.b") };
//! handler.call(msg.clone()).await.unwrap();
//! handler.call(msg).await.unwrap(); // a redelivery: skipped
//! assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
//! # });
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald::middleware::{BoxFuture, Disposition, Handle, HandlerResult, Layer, Message};
use herald::HandlerError;

use crate::error::Result;

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// The answer to "may this consumer process this event now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Not seen (or its record expired): the caller owns it now.
    New,
    /// Already processed: skip it.
    Duplicate,
    /// Another worker holds an unexpired claim on it: try later.
    InProgress,
}

/// What recording an id inside the handler's own transaction found
/// ([`postgres::PgInbox::record`], [`sqlite::SqliteInbox::record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First time: apply the effects in this transaction.
    New,
    /// Already processed by this consumer: skip.
    Duplicate,
}

/// Where processed ids are kept. Implemented for PostgreSQL, SQLite, Redis and memory.
#[async_trait]
pub trait InboxStore: Send + Sync + 'static {
    /// Claim `event_id` for `consumer` for `lease`.
    async fn begin(&self, consumer: &str, event_id: &str, lease: Duration) -> Result<Claim>;
    /// Record `event_id` as processed; keep the record for `keep`.
    async fn finish(&self, consumer: &str, event_id: &str, keep: Duration) -> Result<()>;
    /// Drop an unfinished claim (the handler failed; its retry must run).
    async fn abandon(&self, consumer: &str, event_id: &str) -> Result<()>;
    /// Delete expired records; returns how many. Stores with native expiry return 0.
    async fn purge_expired(&self) -> Result<u64> {
        Ok(0)
    }
}

/// The handler layer that runs a handler once per event id and consumer: it claims the id in
/// its [`InboxStore`] before the handler, acknowledges a duplicate without calling it, and
/// records the id as done after success (the steps and their guarantees are in the
/// [module docs](self)). Add it with `SubscribeOptions::layer(InboxLayer::new(store))`.
#[derive(Clone)]
pub struct InboxLayer {
    store: Arc<dyn InboxStore>,
    consumer: Option<Arc<str>>,
    keep: Duration,
    lease: Duration,
}

impl InboxLayer {
    /// Record ids in `store`, per queue (the consumer name defaults to the queue), kept 7 days,
    /// claims leased for 5 minutes.
    pub fn new(store: Arc<dyn InboxStore>) -> Self {
        InboxLayer {
            store,
            consumer: None,
            keep: Duration::from_secs(7 * 24 * 3600),
            lease: Duration::from_secs(300),
        }
    }

    /// Record under this consumer name instead of the queue name.
    pub fn consumer(mut self, name: &str) -> Self {
        self.consumer = Some(Arc::from(name));
        self
    }

    /// How long processed ids are remembered (longer than any redelivery can come late).
    pub fn keep_for(mut self, keep: Duration) -> Self {
        self.keep = keep;
        self
    }

    /// How long a claim holds before another worker may take the event over (longer than the
    /// handler's timeout).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
}

impl Layer for InboxLayer {
    fn layer(&self, inner: Arc<dyn Handle>) -> Arc<dyn Handle> {
        Arc::new(Inbox {
            inner,
            config: self.clone(),
        })
    }
}

struct Inbox {
    inner: Arc<dyn Handle>,
    config: InboxLayer,
}

impl Handle for Inbox {
    fn call(&self, msg: Message) -> BoxFuture<HandlerResult> {
        let inner = self.inner.clone();
        let c = self.config.clone();
        Box::pin(async move {
            let consumer: Arc<str> = c.consumer.clone().unwrap_or_else(|| msg.queue.clone());
            let id = msg.envelope.id.clone();
            match c.store.begin(&consumer, &id, c.lease).await {
                Ok(Claim::New) => {}
                Ok(Claim::Duplicate) => {
                    tracing::debug!(%id, %consumer, "inbox: duplicate skipped");
                    return Ok(());
                }
                Ok(Claim::InProgress) => {
                    let wait =
                        (c.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
                    return Err(HandlerError::transient(format!(
                        "event {id} is being processed by another worker of {consumer}"
                    ))
                    .with_disposition(Disposition::Release(wait)));
                }
                Err(e) => return Err(HandlerError::transient(format!("inbox unavailable: {e}"))),
            }
            let result = inner.call(msg).await;
            let recorded = match &result {
                Ok(()) => c.store.finish(&consumer, &id, c.keep).await,
                Err(_) => c.store.abandon(&consumer, &id).await,
            };
            if let Err(e) = recorded {
                // The handler's outcome stands; the claim expires after the lease.
                tracing::warn!(%id, %consumer, error = %e, "inbox: could not record the outcome");
            }
            result
        })
    }
}

/// An in-process store, for tests and single-process tools. Not durable.
#[derive(Debug, Default)]
pub struct MemoryInbox {
    entries: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

#[async_trait]
impl InboxStore for MemoryInbox {
    async fn begin(&self, consumer: &str, event_id: &str, lease: Duration) -> Result<Claim> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (consumer.to_string(), event_id.to_string());
        let now = Instant::now();
        match m.get(&key) {
            Some((done, until)) if *until > now => Ok(if *done {
                Claim::Duplicate
            } else {
                Claim::InProgress
            }),
            _ => {
                m.insert(key, (false, now + lease));
                Ok(Claim::New)
            }
        }
    }

    async fn finish(&self, consumer: &str, event_id: &str, keep: Duration) -> Result<()> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(
            (consumer.to_string(), event_id.to_string()),
            (true, Instant::now() + keep),
        );
        Ok(())
    }

    async fn abandon(&self, consumer: &str, event_id: &str) -> Result<()> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (consumer.to_string(), event_id.to_string());
        if m.get(&key).is_some_and(|(done, _)| !done) {
            m.remove(&key);
        }
        Ok(())
    }

    async fn purge_expired(&self) -> Result<u64> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let before = m.len();
        let now = Instant::now();
        m.retain(|_, (_, until)| *until > now);
        Ok((before - m.len()) as u64)
    }
}

/// The behaviour every store must have, run by each store's tests.
#[doc(hidden)]
pub async fn check_store(store: &dyn InboxStore, consumer: &str) {
    let id = uuid::Uuid::now_v7().to_string();
    let lease = Duration::from_millis(400);
    assert_eq!(store.begin(consumer, &id, lease).await.unwrap(), Claim::New);
    assert_eq!(
        store.begin(consumer, &id, lease).await.unwrap(),
        Claim::InProgress
    );
    assert_eq!(
        store.begin("other-consumer", &id, lease).await.unwrap(),
        Claim::New,
        "per consumer"
    );
    store.abandon(consumer, &id).await.unwrap();
    assert_eq!(
        store.begin(consumer, &id, lease).await.unwrap(),
        Claim::New,
        "abandoned claims free the id"
    );
    store
        .finish(consumer, &id, Duration::from_millis(600))
        .await
        .unwrap();
    assert_eq!(
        store.begin(consumer, &id, lease).await.unwrap(),
        Claim::Duplicate
    );
    store.abandon(consumer, &id).await.unwrap();
    assert_eq!(
        store.begin(consumer, &id, lease).await.unwrap(),
        Claim::Duplicate,
        "abandon never drops a done id"
    );
    // A crashed worker's claim expires after the lease.
    let stale = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        store
            .begin(consumer, &stale, Duration::from_millis(200))
            .await
            .unwrap(),
        Claim::New
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        store.begin(consumer, &stale, lease).await.unwrap(),
        Claim::New,
        "expired claim taken over"
    );
    // Done records expire too.
    assert_eq!(
        store.begin(consumer, &id, lease).await.unwrap(),
        Claim::New,
        "expired record"
    );
    store.purge_expired().await.unwrap();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use herald::middleware::handle_fn;

    fn msg(id: &str) -> Message {
        let mut e = herald::Envelope::new("a.b", 1, "a.b", "svc", bytes::Bytes::from_static(b"{}"));
        e.id = id.to_string();
        Message {
            envelope: Arc::new(e),
            queue: Arc::from("svc.a.b"),
        }
    }

    #[tokio::test]
    async fn memory_store_behaves() {
        check_store(&MemoryInbox::default(), "c").await;
    }

    #[tokio::test]
    async fn failures_run_again_and_concurrent_duplicates_are_released() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let store = Arc::new(MemoryInbox::default());
        let h = InboxLayer::new(store.clone()).layer(handle_fn(move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(HandlerError::transient("boom"))
                } else {
                    Ok(())
                }
            }
        }));
        assert!(h.call(msg("e1")).await.is_err());
        h.call(msg("e1")).await.unwrap();
        h.call(msg("e1")).await.unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the failure ran again, the duplicate did not"
        );

        store
            .begin("svc.a.b", "e2", Duration::from_secs(60))
            .await
            .unwrap();
        let err = h.call(msg("e2")).await.unwrap_err();
        assert!(
            matches!(err.disposition, Some(Disposition::Release(_))),
            "{err:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
