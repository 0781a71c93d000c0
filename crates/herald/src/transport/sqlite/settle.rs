//! Settling deliveries: ack, retry, release, dead-letter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::OwnedSemaphorePermit;

use super::writer::{Cmd, SettleOp};
use super::Inner;
use crate::envelope::{format_time, header, Envelope};
use crate::error::{Error, Result};
use crate::transport::{Outcome, Settle};

/// Settles one consumer's deliveries. Each unsettled delivery holds a prefetch permit. When the
/// last reference goes (consumer stopped and every delivery settled or dropped), whatever is
/// still leased goes back to the queue and an auto-delete queue is removed.
pub(crate) struct SqliteSettler {
    pub(crate) inner: Arc<Inner>,
    pub(crate) queue: String,
    pub(crate) owner: Arc<str>,
    pub(crate) auto_delete: bool,
    in_flight: Mutex<HashMap<u64, OwnedSemaphorePermit>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn encode(envelope: &Envelope) -> Result<String> {
    serde_json::to_string(&envelope.header_map())
        .map_err(|e| Error::transport("sqlite", format!("cannot encode headers as JSON: {e}")))
}

fn delay_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteSettler {
    pub(crate) fn new(
        inner: Arc<Inner>,
        queue: String,
        owner: Arc<str>,
        auto_delete: bool,
    ) -> Self {
        SqliteSettler {
            inner,
            queue,
            owner,
            auto_delete,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Remember a delivery handed out, with the prefetch permit it uses.
    pub(crate) fn track(&self, tag: u64, permit: OwnedSemaphorePermit) {
        lock(&self.in_flight).insert(tag, permit);
    }
}

#[async_trait]
impl Settle for SqliteSettler {
    async fn settle(&self, tag: u64, envelope: &Envelope, outcome: Outcome) -> Result<()> {
        let Some(permit) = lock(&self.in_flight).remove(&tag) else {
            return Err(Error::transport(
                "sqlite",
                format!("delivery {tag} was already settled"),
            ));
        };
        let id = i64::try_from(tag).unwrap_or(i64::MAX);
        let owner = self.owner.clone();
        let op = match outcome {
            Outcome::Ack => {
                // Acks are not awaited: they join the next group commit (within a millisecond or
                // so; `close` flushes). If the process dies first, the message is redelivered,
                // which at-least-once delivery allows.
                let sent = self.inner.send(Cmd::Settle {
                    id,
                    owner,
                    op: SettleOp::Ack,
                    reply: None,
                });
                drop(permit);
                return sent;
            }
            Outcome::Retry { delay, failure } => {
                let mut next = envelope.clone();
                failure.record(&mut next);
                next.attempt += 1;
                SettleOp::Reschedule {
                    headers: encode(&next)?,
                    delay_ms: delay_ms(delay),
                }
            }
            Outcome::Release { delay } => SettleOp::Reschedule {
                headers: encode(envelope)?,
                delay_ms: delay_ms(delay),
            },
            Outcome::DeadLetter(failure) => {
                let mut dead = envelope.clone();
                failure.record(&mut dead);
                dead.headers
                    .insert(header::DEAD_LETTERED_AT.into(), format_time(&Utc::now()));
                SettleOp::DeadLetter {
                    headers: encode(&dead)?,
                    msg_id: dead.id,
                    routing_key: dead.routing_key,
                    body: dead.body,
                }
            }
        };
        let result = self
            .inner
            .request(|reply| Cmd::Settle {
                id,
                owner,
                op,
                reply: Some(reply),
            })
            .await;
        drop(permit);
        result
    }
}

impl Drop for SqliteSettler {
    fn drop(&mut self) {
        let _ = self.inner.send(Cmd::ConsumerGone {
            owner: self.owner.clone(),
            queue: self.queue.clone(),
            auto_delete: self.auto_delete,
        });
        self.inner.forget_owner(&self.owner);
    }
}
