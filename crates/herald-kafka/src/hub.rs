//! One group member per queue and transport handle, shared by every consumer of that queue
//! the handle starts: the member's thread puts deliveries in a hub, and each consumer takes
//! from it, so consumers in one process compete for messages as they do on the other
//! transports. (A second member of a group in the same process would only get partitions
//! after a rebalance, which some brokers make a follower wait seconds for.)

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use herald::transport::{Delivery, DeliverySource};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::admin::lock;

/// Deliveries of one member, waiting to be taken.
pub(crate) struct Hub {
    state: Mutex<State>,
    /// Cancelled when the last consumer detaches: the member then stops.
    member: CancellationToken,
}

#[derive(Default)]
struct State {
    items: VecDeque<Delivery>,
    /// Consumers waiting for an item, by consumer id.
    waiting: Vec<(u64, Waker)>,
    attached: usize,
    next_id: u64,
}

impl Hub {
    pub fn new(member: CancellationToken) -> Arc<Self> {
        Arc::new(Hub {
            state: Mutex::default(),
            member,
        })
    }

    /// Hand a delivery to the consumers; false (and the delivery dropped) when none is left.
    pub fn push(&self, delivery: Delivery) -> bool {
        let waiting = {
            let mut s = lock(&self.state);
            if s.attached == 0 {
                return false;
            }
            s.items.push_back(delivery);
            std::mem::take(&mut s.waiting)
        };
        for (_, w) in waiting {
            w.wake();
        }
        true
    }

    /// Whether any consumer is still attached.
    pub fn attached(&self) -> bool {
        lock(&self.state).attached > 0
    }

    /// A new consumer of this hub, or `None` when the member is stopping.
    pub fn attach(self: &Arc<Self>, cancel: CancellationToken) -> Option<HubSource> {
        let mut s = lock(&self.state);
        if self.member.is_cancelled() {
            return None;
        }
        s.attached += 1;
        s.next_id += 1;
        Some(HubSource {
            hub: self.clone(),
            id: s.next_id,
            cancelled: Box::pin(cancel.cancelled_owned()),
            detached: false,
            last: false,
        })
    }

    /// A consumer left: the last one stops the member, and what nobody will take is dropped
    /// (its records stay uncommitted, so they are delivered again).
    fn detach(&self, id: u64) -> bool {
        let last = {
            let mut s = lock(&self.state);
            s.waiting.retain(|(w, _)| *w != id);
            s.attached = s.attached.saturating_sub(1);
            s.attached == 0
        };
        if last {
            self.member.cancel();
        }
        last
    }

    fn drop_items(&self) {
        let items: Vec<Delivery> = lock(&self.state).items.drain(..).collect();
        drop(items);
    }
}

/// One consumer's view of a hub (what `Transport::consume` returns).
pub(crate) struct HubSource {
    hub: Arc<Hub>,
    id: u64,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    detached: bool,
    /// This consumer was the last: after closing it still hands out what the hub holds, so
    /// the bus can release it.
    last: bool,
}

impl HubSource {
    fn close_now(&mut self) {
        if !self.detached {
            self.detached = true;
            self.last = self.hub.detach(self.id);
        }
    }
}

impl DeliverySource for HubSource {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if !self.detached && self.cancelled.as_mut().poll(cx).is_ready() {
            self.close_now();
        }
        let mut s = lock(&self.hub.state);
        if self.detached {
            return Poll::Ready(if self.last { s.items.pop_front() } else { None });
        }
        if let Some(d) = s.items.pop_front() {
            return Poll::Ready(Some(d));
        }
        s.waiting.retain(|(w, _)| *w != self.id);
        s.waiting.push((self.id, cx.waker().clone()));
        Poll::Pending
    }

    fn close(&mut self) {
        self.close_now();
    }
}

impl Drop for HubSource {
    fn drop(&mut self) {
        self.close_now();
        if self.last {
            self.hub.drop_items();
        }
    }
}
