//! What [`Transport::consume`](super::Transport::consume) returns: the deliveries of one
//! consumer, taken one at a time.
//!
//! Most transports feed a channel from a task of their own. A transport whose client already
//! buffers the broker's messages (the RabbitMQ client hands each consumer a channel of raw
//! messages) implements [`DeliverySource`] instead and turns a message into a [`Delivery`]
//! when the consumer takes it, so no task sits in between: one wake-up and one hand-over less
//! for every message.

use std::future::poll_fn;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
pub use tokio::sync::mpsc::error::TryRecvError;

use super::Delivery;

/// A transport's own supply of deliveries, polled by the consumer (see [`Deliveries`]).
pub trait DeliverySource: Send {
    /// The next delivery: `Ready(None)` once there will be no more.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>>;

    /// Stop consuming: nothing more is handed out, and what the transport still buffers goes
    /// back to the queue. Deliveries already taken stay valid and must still be settled.
    fn close(&mut self);
}

/// The deliveries of one consumer. Dropping it stops the consumer; whatever was buffered and
/// not yet taken goes back to the queue.
pub struct Deliveries(Inner);

enum Inner {
    Channel(mpsc::Receiver<Delivery>),
    Source(Box<dyn DeliverySource>),
}

impl Deliveries {
    /// Deliveries a transport produces itself, without a channel.
    pub fn from_source(source: impl DeliverySource + 'static) -> Self {
        Deliveries(Inner::Source(Box::new(source)))
    }

    /// The next delivery, waiting for one; `None` once the consumer has ended (cancelled,
    /// closed, or the queue is gone for good).
    pub async fn recv(&mut self) -> Option<Delivery> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv) as a poll.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        match &mut self.0 {
            Inner::Channel(rx) => rx.poll_recv(cx),
            Inner::Source(s) => s.poll_recv(cx),
        }
    }

    /// A delivery that is ready now, without waiting.
    pub fn try_recv(&mut self) -> Result<Delivery, TryRecvError> {
        match &mut self.0 {
            Inner::Channel(rx) => rx.try_recv(),
            Inner::Source(s) => {
                let mut cx = Context::from_waker(futures::task::noop_waker_ref());
                match s.poll_recv(&mut cx) {
                    Poll::Ready(Some(d)) => Ok(d),
                    Poll::Ready(None) => Err(TryRecvError::Disconnected),
                    Poll::Pending => Err(TryRecvError::Empty),
                }
            }
        }
    }

    /// Stop taking deliveries. With a channel, what it still holds can be received (and must be
    /// settled); a transport's own source gives its buffered messages back to the queue itself.
    pub fn close(&mut self) {
        match &mut self.0 {
            Inner::Channel(rx) => rx.close(),
            Inner::Source(s) => s.close(),
        }
    }
}

impl From<mpsc::Receiver<Delivery>> for Deliveries {
    fn from(rx: mpsc::Receiver<Delivery>) -> Self {
        Deliveries(Inner::Channel(rx))
    }
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Inner::Channel(_) => "Deliveries(channel)",
            Inner::Source(_) => "Deliveries(source)",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::envelope::Envelope;
    use crate::transport::{Outcome, Settle};

    struct Nothing;

    #[async_trait]
    impl Settle for Nothing {
        async fn settle(&self, _: u64, _: &Envelope, _: Outcome) -> crate::Result<()> {
            Ok(())
        }
    }

    fn delivery(n: u64) -> Delivery {
        let e = Envelope::new("a", 1, "a", "s", Bytes::from_static(b"{}"));
        Delivery::new(e, false, n, Arc::new(Nothing))
    }

    /// Hands out `left` deliveries, then ends; `close` ends it at once.
    struct Counting {
        left: u64,
        closed: bool,
    }

    impl DeliverySource for Counting {
        fn poll_recv(&mut self, _: &mut Context<'_>) -> Poll<Option<Delivery>> {
            if self.closed || self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            Poll::Ready(Some(delivery(self.left)))
        }
        fn close(&mut self) {
            self.closed = true;
        }
    }

    #[tokio::test]
    async fn a_source_and_a_channel_read_the_same() {
        let mut source = Deliveries::from_source(Counting {
            left: 2,
            closed: false,
        });
        assert!(source.try_recv().is_ok());
        assert!(source.recv().await.is_some());
        assert!(matches!(source.try_recv(), Err(TryRecvError::Disconnected)));
        let mut closed = Deliveries::from_source(Counting {
            left: 5,
            closed: false,
        });
        closed.close();
        assert!(closed.recv().await.is_none(), "nothing after close");

        let (tx, rx) = mpsc::channel(4);
        let mut channel = Deliveries::from(rx);
        assert!(matches!(channel.try_recv(), Err(TryRecvError::Empty)));
        tx.send(delivery(1)).await.expect("send");
        channel.close();
        assert!(
            channel.recv().await.is_some(),
            "a channel keeps what it holds"
        );
        assert!(channel.recv().await.is_none());
    }
}
