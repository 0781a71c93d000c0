//! One consumer of an in-memory queue: a [`DeliverySource`] the bus polls directly (it takes
//! messages from the queue under the broker's lock, up to the free prefetch, with no task or
//! channel in between), and the [`Settle`] that settles its deliveries.
//!
//! Like a broker connection, whatever a consumer took and never settled goes back to its queue
//! when the consumer and its deliveries are gone (a crashed process, a dropped handle).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::task::AtomicWaker;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::broker::{lock, Broker, FxMap};
use super::Connection;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::transport::{Delivery, DeliverySource, Outcome, Settle};

/// How many messages a consumer takes under one lock at most.
const TAKE_BATCH: usize = 64;

/// Settles one consumer's deliveries, and keeps a copy of each until it is settled so that it
/// can go back to the queue if it never is.
pub(super) struct MemorySettler {
    pub broker: Arc<Broker>,
    pub queue: Arc<str>,
    pub auto_delete: bool,
    in_flight: Mutex<FxMap<u64, Envelope>>,
    /// Deliveries handed out and not yet settled (the prefetch window's use).
    unsettled: AtomicUsize,
    /// The consumer, when it waits for room in its prefetch window.
    room: AtomicWaker,
}

impl MemorySettler {
    pub fn new(broker: Arc<Broker>, queue: Arc<str>, auto_delete: bool) -> Self {
        MemorySettler {
            broker,
            queue,
            auto_delete,
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
        let unsettled: Vec<Envelope> = lock(&self.in_flight).drain().map(|(_, e)| e).collect();
        self.unsettled
            .fetch_sub(unsettled.len(), AtomicOrdering::AcqRel);
        let mut state = lock(&self.broker.state);
        if let Some(q) = state.queues.get_mut(&self.queue) {
            q.in_flight = q.in_flight.saturating_sub(unsettled.len() as u64);
        }
        for e in unsettled {
            state.enqueue(&self.queue, e, true);
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
        let mut state = lock(&self.broker.state);
        if let Some(q) = state.queues.get_mut(&self.queue) {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
        match outcome {
            Outcome::Ack => {}
            Outcome::DeadLetter(failure) => {
                state.dead_letter(&self.queue, envelope.clone(), &failure)
            }
            Outcome::Retry { delay, failure } => {
                let mut next = envelope.clone();
                failure.record(&mut next);
                next.attempt += 1;
                drop(state);
                self.schedule(next, delay, true);
            }
            Outcome::Release { delay } => {
                drop(state);
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
            in_flight.insert(tag, stored.envelope.clone());
            s.unsettled.fetch_add(1, AtomicOrdering::AcqRel);
            self.buffer.push_back((
                tag,
                Delivery::new(stored.envelope, stored.redelivered, tag, s.clone()),
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
                let mut state = lock(&self.settler.broker.state);
                if let Some(q) = state.queues.get_mut(&self.settler.queue) {
                    q.in_flight = q.in_flight.saturating_sub(1);
                }
                state.enqueue(&self.settler.queue, d.envelope, true);
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
        if self.done || self.cancel.is_cancelled() || !self.connected() {
            self.stop();
            return Poll::Ready(None);
        }
        if let Some((_, d)) = self.buffer.pop_front() {
            return Poll::Ready(Some(d));
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
