//! The consumer loop and the lease renewer.
//!
//! A consumer claims as many rows as it has free prefetch permits in one `UPDATE ... RETURNING`,
//! which leases them to it until `now + lease`. When nothing is ready it waits for an in-process
//! notification (a publish through any handle on the same file in this process) or for a poll
//! timer that starts at `poll_min` and doubles up to `poll_max` while the queue stays empty, which
//! is how publishes from other processes and delayed messages are noticed. A separate renewer task
//! extends the leases of everything the consumer holds every `lease / 3`, so a live process never
//! loses a message to redelivery however long its handler runs; a dead one stops renewing and its
//! messages come back when the lease ends.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::settle::SqliteSettler;
use super::store::decode;
use super::writer::Cmd;
use crate::transport::{Delivery, Settle};

/// Run one consumer until `cancel` fires, the transport shuts down or the receiver goes away.
pub(crate) async fn run(
    settler: Arc<SqliteSettler>,
    tx: mpsc::Sender<Delivery>,
    prefetch: usize,
    cancel: CancellationToken,
) {
    let inner = settler.inner.clone();
    let permits = Arc::new(Semaphore::new(prefetch));
    let (poll_min, poll_max) = (
        inner.options.poll_min,
        inner.options.poll_max.max(inner.options.poll_min),
    );
    let mut backoff = poll_min;
    // While more than this many deliveries wait in the channel, the handler has work: let
    // freed permits accumulate so one claim takes many rows instead of one row per ack.
    let low_water = prefetch / 2;
    'consume: loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = inner.shutdown.cancelled() => break,
            // The receiver is gone: stop, so what its dropped deliveries held goes back.
            _ = tx.closed() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let mut held = vec![first];
        loop {
            while held.len() < prefetch {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => held.push(p),
                    Err(_) => break,
                }
            }
            let buffered = tx.max_capacity() - tx.capacity();
            if held.len() >= prefetch || buffered <= low_water {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break 'consume,
                _ = inner.shutdown.cancelled() => break 'consume,
                _ = tx.closed() => break 'consume,
                p = permits.clone().acquire_owned() => match p { Ok(p) => held.push(p), Err(_) => break 'consume },
            }
        }
        let notified = inner.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let claimed = inner
            .request(|reply| Cmd::Claim {
                queue: settler.queue.clone(),
                owner: settler.owner.clone(),
                max: held.len(),
                reply,
            })
            .await;
        let rows = match claimed {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, queue = settler.queue, "sqlite: claiming failed; retrying");
                backoff = poll_max;
                Vec::new()
            }
        };
        if rows.is_empty() {
            drop(held);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = inner.shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = &mut notified => backoff = poll_min,
                _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(poll_max),
            }
            continue;
        }
        backoff = poll_min;
        for row in rows {
            let Some(permit) = held.pop() else { break };
            let Ok(tag) = u64::try_from(row.id) else {
                continue;
            };
            let envelope = decode(
                &row.routing_key,
                &row.headers,
                Bytes::from(row.body),
                row.priority,
                row.ttl_ms,
            );
            settler.track(tag, permit);
            let handle: Arc<dyn Settle> = settler.clone();
            let delivery = Delivery::new(envelope, row.deliveries > 1, tag, handle);
            if tx.send(delivery).await.is_err() {
                // Nobody listens any more; what we hold goes back when the settler drops.
                return;
            }
        }
    }
}

/// Keep the consumer's leases and heartbeat fresh while it or any of its deliveries lives and
/// the transport is open.
pub(crate) async fn renew(
    settler: Weak<SqliteSettler>,
    shutdown: CancellationToken,
    every: Duration,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(s) = settler.upgrade() else { return };
        if s.inner
            .send(Cmd::Renew {
                owner: s.owner.clone(),
                queue: s.queue.clone(),
            })
            .is_err()
        {
            return;
        }
    }
}
