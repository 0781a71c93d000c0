//! One consumer of an in-memory queue: a [`DeliverySource`] the bus polls directly (it takes
//! messages from the queue under the broker's lock, up to the free prefetch, with no task or
//! channel in between), and the [`Settle`] that settles its deliveries.
//!
//! Like a broker connection, whatever a consumer took and never settled goes back to its queue
//! when the consumer and its deliveries are gone (a crashed process, a dropped handle).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::broker::{lock, settled_in_flight, Broker, FxMap};
use super::Connection;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::transport::{Delivery, DeliverySource, Outcome, Settle};

/// How many messages a consumer takes under one lock at most.
const TAKE_BATCH: usize = 64;

/// Settles one consumer's deliveries, and keeps a reference to each until it is settled so that
/// it can go back to the queue if it never is.
pub(super) struct MemorySettler {
    pub broker: Arc<Broker>,
    pub queue: Arc<str>,
    pub auto_delete: bool,
    /// The queue's count of messages taken and not settled (shared with the broker's state).
    queue_in_flight: Arc<AtomicU64>,
    in_flight: Mutex<FxMap<u64, Arc<Envelope>>>,
    /// Deliveries handed out and not yet settled (the prefetch window's use).
    unsettled: AtomicUsize,
    /// The consumer, when it waits for room in its prefetch window.
    room: AtomicWaker,
}

impl MemorySettler {
    pub fn new(
        broker: Arc<Broker>,
        queue: Arc<str>,
        auto_delete: bool,
        queue_in_flight: Arc<AtomicU64>,
    ) -> Self {
        MemorySettler {
            broker,
            queue,
            auto_delete,
            queue_in_flight,
            in_flight: Mutex::default(),
            unsettled: AtomicUsize::new(0),
            room: AtomicWaker::new(),
        }
    }

    /// Forget delivery `tag` (settled, or about to go back); false when it was settled before.
    fn finish(&self, tag: u64) -> bool {
        if lock(&self.in_flight).remove(&tag).is_none() {
            return false;
        }
        self.unsettled.fetch_sub(1, AtomicOrdering::AcqRel);
        self.room.wake();
        true
    }

    /// Put `envelope` back on the queue after `delay`.
    fn schedule(&self, envelope: Envelope, delay: Duration, redelivered: bool) {
        if delay.is_zero() {
            lock(&self.broker.state).enqueue(&self.queue, envelope, redelivered);
            return;
        }
        if let Some(q) = lock(&self.broker.state).queues.get_mut(&self.queue) {
            q.delayed += 1;
        }
        let broker = self.broker.clone();
        let queue = self.queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut state = lock(&broker.state);
            if let Some(q) = state.queues.get_mut(&queue) {
                q.delayed = q.delayed.saturating_sub(1);
            }
            state.enqueue(&queue, envelope, redelivered);
        });
    }

    /// Everything taken and not settled goes back to the queue, marked redelivered.
    pub fn requeue_unsettled(&self) {
        let unsettled: Vec<Arc<Envelope>> = lock(&self.in_flight).drain().map(|(_, e)| e).collect();
        self.unsettled
            .fetch_sub(unsettled.len(), AtomicOrdering::AcqRel);
        settled_in_flight(&self.queue_in_flight, unsettled.len() as u64);
        let mut state = lock(&self.broker.state);
        for e in unsettled {
            state.enqueue(&self.queue, Arc::unwrap_or_clone(e), true);
        }
    }
}

#[async_trait]
impl Settle for MemorySettler {
    async fn settle(&self, tag: u64, envelope: &Envelope, outcome: Outcome) -> Result<()> {
        if !self.finish(tag) {
            return Err(Error::transport(
                "memory",
                format!("delivery {tag} was already settled"),
            ));
        }
        match outcome {
            Outcome::Ack => settled_in_flight(&self.queue_in_flight, 1),
            Outcome::DeadLetter(failure) => {
                // Under the lock, so statistics never show it neither in flight nor dead.
                let mut state = lock(&self.broker.state);
                state.dead_letter(&self.queue, envelope.clone(), &failure);
                settled_in_flight(&self.queue_in_flight, 1);
            }
            Outcome::Retry { delay, failure } => {
                let mut next = envelope.clone();
                failure.record(&mut next);
                next.attempt += 1;
                settled_in_flight(&self.queue_in_flight, 1);
                self.schedule(next, delay, true);
            }
            Outcome::Release { delay } => {
                settled_in_flight(&self.queue_in_flight, 1);
                self.schedule(envelope.clone(), delay, true);
            }
        }
        Ok(())
    }
}

impl Drop for MemorySettler {
    fn drop(&mut self) {
        self.requeue_unsettled();
        let mut state = lock(&self.broker.state);
        if self.auto_delete {
            let consumers = state
                .queues
                .get(&self.queue)
                .map(|q| q.consumers)
                .unwrap_or(0);
            if consumers == 0 {
                state.remove_queue(&self.queue);
            }
        }
    }
}

/// The deliveries of one consumer, taken from the queue as the bus asks for them.
pub(super) struct MemoryConsumer {
    pub settler: Arc<MemorySettler>,
    pub prefetch: usize,
    pub conn: Weak<Connection>,
    pub cancel: CancellationToken,
    /// Wakes the consumer when `cancel` fires while it waits.
    pub cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Taken under the last lock and not yet handed out, with their tags.
    pub buffer: VecDeque<(u64, Delivery)>,
    pub done: bool,
}

impl MemoryConsumer {
    pub fn new(
        settler: Arc<MemorySettler>,
        prefetch: usize,
        conn: Weak<Connection>,
        cancel: CancellationToken,
    ) -> Self {
        MemoryConsumer {
            settler,
            prefetch: prefetch.max(1),
            conn,
            cancelled: Box::pin(cancel.clone().cancelled_owned()),
            cancel,
            buffer: VecDeque::new(),
            done: false,
        }
    }

    fn connected(&self) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|c| !c.closed.load(AtomicOrdering::Relaxed))
    }

    /// Take up to `room` messages into the buffer; false when the queue had none (the waker is
    /// then registered with the queue, under the same lock, so no arrival is missed).
    fn take(&mut self, room: usize, cx: &mut Context<'_>) -> bool {
        let s = &self.settler;
        let mut state = lock(&s.broker.state);
        let mut in_flight = lock(&s.in_flight);
        for _ in 0..room.min(TAKE_BATCH) {
            let Some(stored) = state.take(&s.queue) else {
                break;
            };
            let tag = s.broker.next_tag.fetch_add(1, AtomicOrdering::Relaxed);
            let envelope = Arc::new(stored.envelope);
            in_flight.insert(tag, envelope.clone());
            s.unsettled.fetch_add(1, AtomicOrdering::AcqRel);
            self.buffer.push_back((
                tag,
                Delivery::shared(envelope, stored.redelivered, tag, s.clone()),
            ));
        }
        if self.buffer.is_empty() {
            if let Some(q) = state.queues.get_mut(&s.queue) {
                q.wait(cx.waker());
            }
            return false;
        }
        true
    }

    /// Stop: nothing more is taken, what was taken and not handed out goes back.
    fn stop(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        for (tag, d) in std::mem::take(&mut self.buffer) {
            if self.settler.finish(tag) {
                settled_in_flight(&self.settler.queue_in_flight, 1);
                let mut state = lock(&self.settler.broker.state);
                state.enqueue(&self.settler.queue, Arc::unwrap_or_clone(d.envelope), true);
            }
        }
        let mut state = lock(&self.settler.broker.state);
        if let Some(q) = state.queues.get_mut(&self.settler.queue) {
            q.consumers = q.consumers.saturating_sub(1);
            // Another consumer may be waiting for what this one gave back.
            for w in q.waiting.drain(..) {
                w.wake();
            }
        }
    }
}

impl DeliverySource for MemoryConsumer {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        // A closed connection has put back what this consumer buffered: none of it goes out.
        if self.done || !self.connected() {
            self.stop();
            return Poll::Ready(None);
        }
        // The cancellation token (a lock) is asked once per take, not once per message: what
        // the last take buffered is still handed out, as a broker's prefetched messages are.
        if let Some((_, d)) = self.buffer.pop_front() {
            return Poll::Ready(Some(d));
        }
        if self.cancel.is_cancelled() {
            self.stop();
            return Poll::Ready(None);
        }
        let room = |c: &Self| {
            c.prefetch
                .saturating_sub(c.settler.unsettled.load(AtomicOrdering::Acquire))
        };
        if room(self) == 0 {
            self.settler.room.register(cx.waker());
            // A settlement between the check and the registration would be missed otherwise.
            if room(self) == 0 {
                let _ = self.cancelled.as_mut().poll(cx);
                return Poll::Pending;
            }
        }
        if self.take(room(self), cx) {
            return Poll::Ready(self.buffer.pop_front().map(|(_, d)| d));
        }
        if self.cancelled.as_mut().poll(cx).is_ready() {
            self.stop();
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn close(&mut self) {
        self.stop();
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::MemoryTransport;
    use crate::topology::{QueueSpec, Topology};
    use crate::transport::{
        ConsumeOptions, Failure, Outcome, PublishOptions, QueueStatistics, Transport,
    };
    use crate::Envelope;
    use tokio_util::sync::CancellationToken;

    async fn in_flight_and_dead(t: &MemoryTransport) -> (u64, u64) {
        let stats = t.queue_stats().await.expect("stats");
        let q = stats.iter().find(|s| s.queue == "q").expect("queue q");
        (
            q.in_flight.unwrap_or(u64::MAX),
            q.dead_letters.unwrap_or(u64::MAX),
        )
    }

    /// The in-flight count follows takes and settlements of every kind, and a delivery's
    /// envelope is the one the queue keeps for a requeue (shared, not copied).
    #[tokio::test]
    async fn in_flight_counts_follow_settlements() {
        let t = MemoryTransport::new();
        let spec = QueueSpec::new("q", "a.#");
        let mut topology = Topology::new("x");
        topology.queues.push(spec.clone());
        t.apply_topology(&topology).await.expect("topology");
        let batch: Vec<Envelope> = (0..3)
            .map(|_| Envelope::new("a.b", 1, "a.b", "svc", Bytes::from_static(b"{}")))
            .collect();
        t.publish_owned("x", batch, PublishOptions::default())
            .await
            .expect("publish");
        let mut rx = t
            .consume(
                &spec,
                ConsumeOptions { prefetch: 10 },
                CancellationToken::new(),
            )
            .await
            .expect("consume");
        let mut taken = Vec::new();
        for _ in 0..3 {
            taken.push(rx.recv().await.expect("a delivery"));
        }
        assert_eq!(in_flight_and_dead(&t).await, (3, 0));
        assert!(
            std::sync::Arc::strong_count(&taken[0].envelope) >= 2,
            "the queue keeps a reference until it is settled"
        );
        let mut taken = taken.into_iter();
        let first = taken.next().expect("first");
        first.ack().await.expect("ack");
        assert_eq!(in_flight_and_dead(&t).await, (2, 0));
        let second = taken.next().expect("second");
        let failure = Failure::now(&second.envelope, "q", "handler", "boom");
        second
            .settle(Outcome::DeadLetter(failure))
            .await
            .expect("dead letter");
        assert_eq!(in_flight_and_dead(&t).await, (1, 1));
        drop(rx);
        let third = taken.next().expect("third");
        third
            .settle(Outcome::Release {
                delay: std::time::Duration::ZERO,
            })
            .await
            .expect("release");
        assert_eq!(in_flight_and_dead(&t).await, (0, 1));
    }
}
