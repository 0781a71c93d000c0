//! Consuming: one channel per consumer on the consuming connection, manual acks, recovery.
//!
//! Settlement: `Ack` is batched. Acks wait at most `ack_flush_interval`, or until `ack_batch` are
//! waiting, or half the prefetch window (the broker sends nothing more to a consumer whose window
//! is full, so acks held longer would hold up the consumer), and go out as one
//! `basic.ack multiple` covering every tag below the oldest delivery still being handled (that
//! is when `multiple` is safe); later tags are acked one by one.
//! `Retry`/`DeadLetter`/`Release{delay>0}` publish a copy (with confirms) to the retry level or
//! the dead-letter queue through the default exchange, then ack the original; if that publish
//! fails the original is requeued, so nothing is lost. `Release{0}` is `basic.nack requeue`.
//!
//! Taking: the consumer reads amqprs's buffer of the subscription's messages itself
//! ([`RabbitDeliveries`]), each turned into a `Delivery` as it is taken, so no task and no
//! second channel sit between amqprs and the handlers.
//!
//! Recovery: a control task per consumer ([`ConsumerTask`]) notices a lost subscription (the
//! consumer found amqprs's buffer ended, or a check every 100 ms finds the channel or
//! connection closed or a broker-sent `basic.cancel`, as when the queue is deleted), waits for
//! the supervisor's new connection, re-declares its queue if the broker lost it, and subscribes
//! again. Deliveries from the old channel can no longer be settled (the broker requeued them);
//! settling them is a no-op.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicNackArguments,
    BasicQosArguments, Channel, ConsumerMessage,
};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use chrono::Utc;
use std::task::{Context, Poll, Waker};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::config::{pick_level, RabbitConfig};
use super::connection::Link;
use super::properties::receive;
use super::publisher::{Outgoing, Publisher};
use super::topology::{self, CloseSlot};
use herald::envelope::{format_time, header, Envelope};
use herald::error::{Error, Result};
use herald::topology::{QueueSpec, Topology};
use herald::transport::{Delivery, DeliverySource, Outcome, Settle};

const EPOCH_SHIFT: u32 = 40;

fn encode(epoch: u64, dtag: u64) -> u64 {
    (epoch << EPOCH_SHIFT) | (dtag & ((1 << EPOCH_SHIFT) - 1))
}

fn decode(tag: u64) -> (u64, u64) {
    (tag >> EPOCH_SHIFT, tag & ((1 << EPOCH_SHIFT) - 1))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Delivery tags in ascending order. The broker hands them out in ascending order, so an insert
/// is a push at the back and a lookup a binary search; the buffer is reused (no tree nodes to
/// allocate for every delivery, as a `BTreeSet` has).
#[derive(Default)]
struct Tags(VecDeque<u64>);

impl Tags {
    fn insert(&mut self, tag: u64) {
        match self.0.back() {
            Some(&last) if last >= tag => {
                if let Err(i) = self.0.binary_search(&tag) {
                    self.0.insert(i, tag);
                }
            }
            _ => self.0.push_back(tag),
        }
    }
    fn remove(&mut self, tag: u64) {
        if let Ok(i) = self.0.binary_search(&tag) {
            self.0.remove(i);
        }
    }
    fn contains(&self, tag: u64) -> bool {
        self.0.binary_search(&tag).is_ok()
    }
    fn first(&self) -> Option<&u64> {
        self.0.front()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

#[derive(Default)]
struct AckState {
    epoch: u64,
    channel: Option<Channel>,
    /// Delivered and not yet settled by the application.
    outstanding: Tags,
    /// Acked by the application, not yet sent.
    acked: Vec<u64>,
}

/// How many waiting acks are sent at once: `ack_batch`, but never more than half the prefetch
/// window (at least one), so the broker always has room to deliver while acks wait.
fn flush_threshold(ack_batch: usize, prefetch: usize) -> usize {
    ack_batch.min(prefetch / 2).max(1)
}

/// The consumers of one transport, so that closing the transport closes their channels while
/// its connection is still up: a live consumer's channel directly, a dropped one's by waiting
/// for the task its settler's drop started. (A channel left to amqprs after its connection is
/// gone makes amqprs log an error.)
#[derive(Default)]
pub(crate) struct Settlers {
    live: Mutex<Vec<Weak<ConsumerSettler>>>,
    closing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Settlers {
    fn remember(&self, s: &Arc<ConsumerSettler>) {
        let mut live = lock(&self.live);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(s));
    }

    fn closing(&self, close: tokio::task::JoinHandle<()>) {
        let mut closing = lock(&self.closing);
        closing.retain(|c| !c.is_finished());
        closing.push(close);
    }

    /// Send every consumer's waiting acks and close its channel.
    pub async fn close_all(&self) {
        let live: Vec<Arc<ConsumerSettler>> =
            lock(&self.live).iter().filter_map(Weak::upgrade).collect();
        for s in live {
            s.flush().await;
            s.close_channel().await;
        }
        let closing = std::mem::take(&mut *lock(&self.closing));
        // Each close is bounded by its own timeout; this bounds them all.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            for close in closing {
                let _ = close.await;
            }
        })
        .await;
    }
}

/// Settles the deliveries of one consumer.
pub(crate) struct ConsumerSettler {
    queue: String,
    /// Acks waiting that are sent at once: `ack_batch`, or half the prefetch window if less.
    flush_at: usize,
    levels: Vec<Duration>,
    publisher: Arc<Publisher>,
    cfg: Arc<RabbitConfig>,
    state: Mutex<AckState>,
    send_lock: tokio::sync::Mutex<()>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    /// The transport's consumers, this one among them.
    settlers: Arc<Settlers>,
}

impl ConsumerSettler {
    pub fn new(
        spec: &QueueSpec,
        prefetch: usize,
        publisher: Arc<Publisher>,
        cfg: Arc<RabbitConfig>,
        settlers: Arc<Settlers>,
    ) -> Arc<Self> {
        let s = Arc::new(ConsumerSettler {
            queue: spec.name.clone(),
            flush_at: flush_threshold(cfg.ack_batch, prefetch),
            levels: cfg.retry_levels(&spec.retry_delays),
            publisher,
            state: Mutex::new(AckState::default()),
            send_lock: tokio::sync::Mutex::new(()),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            cfg,
            settlers,
        });
        s.settlers.remember(&s);
        let weak = Arc::downgrade(&s);
        let (wake, stop, interval) = (s.wake.clone(), s.stop.clone(), s.cfg.ack_flush_interval);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = wake.notified() => {}
                }
                tokio::time::sleep(interval).await;
                match weak.upgrade() {
                    Some(s) => s.flush().await,
                    None => break,
                }
            }
        });
        s
    }

    fn set_channel(&self, epoch: u64, channel: Channel) {
        let mut st = lock(&self.state);
        st.epoch = epoch;
        st.channel = Some(channel);
        st.outstanding.clear();
        st.acked.clear();
    }

    fn track(&self, epoch: u64, dtag: u64) {
        let mut st = lock(&self.state);
        if st.epoch == epoch {
            st.outstanding.insert(dtag);
        }
    }

    /// Close the consumer's channel while the connection is still up (the transport closes):
    /// left to its last handle, amqprs would close it from a spawned task after the connection
    /// is gone, and log that as an error. Later settlements are no-ops; the broker requeues.
    pub async fn close_channel(&self) {
        let ch = lock(&self.state).channel.take();
        if let Some(ch) = ch.filter(Channel::is_open) {
            let _ = tokio::time::timeout(Duration::from_secs(5), ch.close()).await;
        }
    }

    /// Send the acks waiting, as one `multiple` ack where that is safe.
    pub async fn flush(&self) {
        let _g = self.send_lock.lock().await;
        let (ch, multi, singles) = {
            let mut st = lock(&self.state);
            if st.acked.is_empty() {
                return;
            }
            let Some(ch) = st.channel.clone() else { return };
            let mut acked = std::mem::take(&mut st.acked);
            acked.sort_unstable();
            let (below, above): (Vec<u64>, Vec<u64>) = match st.outstanding.first() {
                Some(&min) => acked.into_iter().partition(|t| *t < min),
                None => (acked.into_iter().collect(), Vec::new()),
            };
            let multi = below.last().map(|&t| (t, below.len() > 1));
            (ch, multi, above)
        };
        if let Some((tag, multiple)) = multi {
            if let Err(e) = ch.basic_ack(BasicAckArguments::new(tag, multiple)).await {
                tracing::debug!(error = %e, "ack failed; the broker will redeliver");
            }
        }
        for tag in singles {
            if let Err(e) = ch.basic_ack(BasicAckArguments::new(tag, false)).await {
                tracing::debug!(error = %e, "ack failed; the broker will redeliver");
            }
        }
    }

    async fn ack(&self, epoch: u64, dtag: u64) {
        let n = {
            let mut st = lock(&self.state);
            if st.epoch != epoch {
                return;
            }
            st.outstanding.remove(dtag);
            st.acked.push(dtag);
            st.acked.len()
        };
        if n >= self.flush_at {
            // Boxed, like the other cold paths: it keeps the per-ack future small.
            Box::pin(self.flush()).await;
        } else {
            self.wake.notify_one();
        }
    }

    async fn nack(&self, epoch: u64, dtag: u64, requeue: bool, tracked: bool) {
        let _g = self.send_lock.lock().await;
        let ch = {
            let mut st = lock(&self.state);
            if st.epoch != epoch {
                return;
            }
            if tracked {
                st.outstanding.remove(dtag);
            }
            st.channel.clone()
        };
        if let Some(ch) = ch {
            let mut args = BasicNackArguments::new(dtag, false, requeue);
            args.requeue = requeue;
            if let Err(e) = ch.basic_nack(args).await {
                tracing::debug!(error = %e, "nack failed; the broker will redeliver");
            }
        }
    }

    /// Publish `envelope` to `queue` through the default exchange (confirmed), then ack.
    async fn move_to(
        &self,
        queue: String,
        mut envelope: Envelope,
        epoch: u64,
        dtag: u64,
    ) -> Result<()> {
        envelope.ttl = None;
        let out = Outgoing {
            exchange: "",
            routing_key: &queue,
            mandatory: true,
            envelope: &envelope,
            routing_key_header: true,
        };
        match self.publisher.publish_all(std::slice::from_ref(&out)).await {
            Ok(()) => {
                self.ack(epoch, dtag).await;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, "could not move a message; requeueing the original");
                self.nack(epoch, dtag, true, true).await;
                Err(e)
            }
        }
    }

    fn level_queue(&self, delay: Duration) -> Option<String> {
        pick_level(&self.levels, delay)
            .map(|l| herald::topology::QueueSpec::new(self.queue.clone(), "").retry_queue(l))
    }
}

#[async_trait]
impl Settle for ConsumerSettler {
    async fn settle(&self, tag: u64, envelope: &Envelope, outcome: Outcome) -> Result<()> {
        let (epoch, dtag) = decode(tag);
        {
            let st = lock(&self.state);
            if st.epoch != epoch {
                tracing::debug!(queue = %self.queue, "settling a delivery from a lost channel: the broker redelivers it");
                return Ok(());
            }
            if !st.outstanding.contains(dtag) {
                return Err(Error::transport(
                    "rabbitmq",
                    format!("delivery {dtag} on `{}` was already settled", self.queue),
                ));
            }
        }
        match outcome {
            Outcome::Ack => {
                self.ack(epoch, dtag).await;
                Ok(())
            }
            // Boxed: the moves hold a confirmed publish, which would make every ack's future
            // several kilobytes (an allocation glibc serves slowly) for a path few take.
            other => Box::pin(self.settle_otherwise(epoch, dtag, envelope, other)).await,
        }
    }
}

impl ConsumerSettler {
    /// Any outcome, boxed by `settle` for all but `Ack` (which it takes itself): a retry or
    /// dead letter moves a copy, a release nacks.
    async fn settle_otherwise(
        &self,
        epoch: u64,
        dtag: u64,
        envelope: &Envelope,
        outcome: Outcome,
    ) -> Result<()> {
        match outcome {
            Outcome::Ack => {
                self.ack(epoch, dtag).await;
                Ok(())
            }
            Outcome::Retry { delay, failure } => {
                let mut next = envelope.clone();
                failure.record(&mut next);
                next.attempt = next.attempt.saturating_add(1);
                match self.level_queue(delay) {
                    Some(q) => self.move_to(q, next, epoch, dtag).await,
                    None => {
                        self.nack(epoch, dtag, true, true).await;
                        Ok(())
                    }
                }
            }
            Outcome::DeadLetter(failure) => {
                let mut dead = envelope.clone();
                failure.record(&mut dead);
                dead.headers
                    .insert(header::DEAD_LETTERED_AT.into(), format_time(&Utc::now()));
                self.move_to(
                    herald::topology::dead_letter_queue_name(&self.queue),
                    dead,
                    epoch,
                    dtag,
                )
                .await
            }
            Outcome::Release { delay } if delay.is_zero() => {
                self.nack(epoch, dtag, true, true).await;
                Ok(())
            }
            Outcome::Release { delay } => match self.level_queue(delay) {
                Some(q) => self.move_to(q, envelope.clone(), epoch, dtag).await,
                None => {
                    self.nack(epoch, dtag, true, true).await;
                    Ok(())
                }
            },
        }
    }
}

impl Drop for ConsumerSettler {
    fn drop(&mut self) {
        self.stop.cancel();
        let st = std::mem::take(&mut *lock(&self.state));
        let Some(ch) = st.channel else { return };
        let acked = st.acked;
        // Send what was acked, then let the channel close: the broker requeues the rest.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.settlers.closing(rt.spawn(async move {
                for tag in acked {
                    let _ = ch.basic_ack(BasicAckArguments::new(tag, false)).await;
                }
                if ch.is_open() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), ch.close()).await;
                }
            }));
        }
    }
}

struct ConsumerCallback {
    slot: CloseSlot,
    broker_cancelled: Arc<AtomicBool>,
    queue: String,
}

#[async_trait]
impl ChannelCallback for ConsumerCallback {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: CloseChannel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        tracing::warn!(queue = %self.queue, code = close.reply_code(), reason = %close.reply_text(), "the broker closed a consumer channel");
        *lock(&self.slot) = Some((close.reply_code(), close.reply_text().clone()));
        Ok(())
    }
    async fn cancel(
        &mut self,
        _channel: &Channel,
        _cancel: Cancel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        tracing::warn!(queue = %self.queue, "the broker cancelled the consumer (queue deleted?); resuming");
        self.broker_cancelled.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &Channel, _ack: Ack) {}
    async fn publish_nack(&mut self, _channel: &Channel, _nack: Nack) {}
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// A consumer channel with its subscription: amqprs's channel of its messages, and what the
/// control task keeps to watch and cancel it.
pub(crate) struct Subscription {
    consumer: Consumer,
    rx: mpsc::UnboundedReceiver<ConsumerMessage>,
}

struct Consumer {
    channel: Channel,
    tag: String,
    /// Set when the broker cancels the consumer (its queue was deleted).
    broker_cancelled: Arc<AtomicBool>,
}

impl Consumer {
    /// Whether it still delivers: its channel and connection are open and the broker has not
    /// cancelled it.
    fn is_alive(&self) -> bool {
        self.channel.is_open()
            && self.channel.is_connection_open()
            && !self.broker_cancelled.load(Ordering::SeqCst)
    }
}

/// Open a channel on `conn` and subscribe to `queue`.
pub(crate) async fn subscribe(
    conn: &amqprs::connection::Connection,
    queue: &str,
    prefetch: usize,
    service: &str,
) -> Result<Subscription> {
    let channel = conn.open_channel(None).await.map_err(|e| {
        Error::transport(
            "rabbitmq",
            format!("could not open a consumer channel: {e}"),
        )
    })?;
    let slot: CloseSlot = Arc::new(Mutex::new(None));
    let broker_cancelled = Arc::new(AtomicBool::new(false));
    channel
        .register_callback(ConsumerCallback {
            slot: slot.clone(),
            broker_cancelled: broker_cancelled.clone(),
            queue: queue.to_string(),
        })
        .await
        .map_err(|e| Error::transport("rabbitmq", e))?;
    let prefetch = prefetch.clamp(1, u16::MAX as usize) as u16;
    if let Err(e) = channel
        .basic_qos(BasicQosArguments::new(0, prefetch, false))
        .await
    {
        return Err(topology::broker_error(e, &slot, queue, "setting prefetch on").await);
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut tag: String = format!("{service}.{queue}");
    if tag.len() > 200 {
        tag = tag.chars().take(100).collect();
    }
    let tag = format!("{tag}.{}", &id[..8]);
    let mut args = BasicConsumeArguments::new(queue, &tag);
    args.manual_ack(true);
    match channel.basic_consume_rx(args.finish()).await {
        Ok((tag, rx)) => Ok(Subscription {
            consumer: Consumer {
                channel,
                tag,
                broker_cancelled,
            },
            rx,
        }),
        Err(e) => Err(topology::broker_error(e, &slot, queue, "consuming from queue").await),
    }
}

/// What a consumer's control task ([`ConsumerTask`]) and its [`RabbitDeliveries`] share.
pub(crate) struct ConsumeShared {
    slot: Mutex<Slot>,
    /// The consumer found the subscription's channel gone: resubscribe.
    lost: Notify,
    /// Fired when the consumer closes or drops its deliveries, or the transport's cancel token
    /// fires (it is a child of that token).
    closed: CancellationToken,
    settler: Arc<ConsumerSettler>,
}

#[derive(Default)]
struct Slot {
    /// The subscription's epoch and amqprs's channel of its messages; `None` while subscribing.
    current: Option<(u64, mpsc::UnboundedReceiver<ConsumerMessage>)>,
    /// No more deliveries: the consumer stopped.
    ended: bool,
    /// The consumer, waiting for a subscription.
    waker: Option<Waker>,
    /// The epoch whose channel the consumer found gone.
    lost: Option<u64>,
}

impl ConsumeShared {
    pub fn new(settler: Arc<ConsumerSettler>, cancel: &CancellationToken) -> Arc<Self> {
        Arc::new(ConsumeShared {
            slot: Mutex::new(Slot::default()),
            lost: Notify::new(),
            closed: cancel.child_token(),
            settler,
        })
    }

    /// Hand a new subscription's messages to the consumer.
    fn install(&self, epoch: u64, rx: mpsc::UnboundedReceiver<ConsumerMessage>) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.current = Some((epoch, rx));
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Hand out nothing more; returns the subscription's messages not yet taken.
    fn end(&self) -> Option<(u64, mpsc::UnboundedReceiver<ConsumerMessage>)> {
        let (current, waker) = {
            let mut slot = lock(&self.slot);
            slot.ended = true;
            (slot.current.take(), slot.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        current
    }

    /// The delivery for one of amqprs's messages (`None` for a message without content, which
    /// a consumer channel does not send).
    fn delivery(&self, epoch: u64, msg: ConsumerMessage) -> Option<Delivery> {
        let (Some(deliver), Some(props), Some(body)) =
            (msg.deliver, msg.basic_properties, msg.content)
        else {
            return None;
        };
        let dtag = deliver.delivery_tag();
        let received = receive(deliver.routing_key(), &props, body);
        self.settler.track(epoch, dtag);
        let delivery = Delivery::new(
            received.envelope,
            deliver.redelivered(),
            encode(epoch, dtag),
            as_settle(&self.settler),
        );
        Some(delivery.with_trace(received.derived_trace))
    }
}

/// A consumer's deliveries, converted from amqprs's messages as the consumer takes them: no
/// task and no second channel between amqprs and the consumer.
pub(crate) struct RabbitDeliveries(pub Arc<ConsumeShared>);

impl DeliverySource for RabbitDeliveries {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let shared = &self.0;
        let mut slot = lock(&shared.slot);
        loop {
            if slot.ended || shared.closed.is_cancelled() {
                return Poll::Ready(None);
            }
            // Kept for the control task, which wakes the consumer when it installs a new
            // subscription or stops: replacing or dropping amqprs's receiver wakes nobody. A
            // `try_recv` (a no-op waker) leaves the waker of the last real poll in place.
            let waker = cx.waker();
            if !waker.will_wake(futures::task::noop_waker_ref())
                && !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker))
            {
                slot.waker = Some(waker.clone());
            }
            let Some((epoch, rx)) = slot.current.as_mut() else {
                return Poll::Pending;
            };
            let epoch = *epoch;
            match rx.poll_recv(cx) {
                Poll::Ready(Some(msg)) => {
                    if let Some(d) = shared.delivery(epoch, msg) {
                        return Poll::Ready(Some(d));
                    }
                }
                // The channel is gone (connection lost, queue deleted): the control task
                // subscribes again and installs the new subscription.
                Poll::Ready(None) => {
                    slot.current = None;
                    slot.lost = Some(epoch);
                    shared.lost.notify_one();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn close(&mut self) {
        lock(&self.0.slot).ended = true;
        self.0.closed.cancel();
    }
}

impl Drop for RabbitDeliveries {
    fn drop(&mut self) {
        // The control task cancels the subscription and requeues what was not taken.
        self.0.closed.cancel();
    }
}

/// Everything a consumer's control task needs: it subscribes, resubscribes when the channel is
/// lost, and cancels the subscription when the consumer stops.
pub(crate) struct ConsumerTask {
    pub link: Link,
    pub spec: QueueSpec,
    pub prefetch: usize,
    pub shared: Arc<ConsumeShared>,
    pub topologies: Arc<Mutex<Vec<Topology>>>,
    pub cfg: Arc<RabbitConfig>,
}

/// The settler as the deliveries hold it.
fn as_settle(s: &Arc<ConsumerSettler>) -> Arc<dyn Settle> {
    s.clone()
}

impl ConsumerTask {
    /// Run until the consumer stops (cancelled, closed or dropped), resubscribing after
    /// failures.
    pub async fn run(self, first: Subscription) {
        let closed = self.shared.closed.clone();
        let settler = self.shared.settler.clone();
        let mut sub = Some(first);
        let mut epoch: u64 = 0;
        let mut failures: u32 = 0;
        loop {
            let current = match sub.take() {
                Some(s) => s,
                None => {
                    let Some(session) = self.link.session_or_cancel(&closed).await else {
                        break;
                    };
                    match subscribe(
                        &session.conn,
                        &self.spec.name,
                        self.prefetch,
                        &self.cfg.service,
                    )
                    .await
                    {
                        Ok(s) => s,
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            tracing::warn!(queue = %self.spec.name, error = %e, "resubscribing failed; re-declaring the queue and retrying");
                            self.redeclare(&session.conn).await;
                            let delay = Duration::from_millis(100 * u64::from(failures.min(50)));
                            tokio::select! {
                                _ = closed.cancelled() => break,
                                _ = tokio::time::sleep(delay) => continue,
                            }
                        }
                    }
                }
            };
            failures = 0;
            epoch += 1;
            let Subscription { consumer, rx } = current;
            settler.set_channel(epoch, consumer.channel.clone());
            self.shared.install(epoch, rx);
            // Until the subscription is lost: the consumer finds its channel of messages ended
            // when it takes the next one; a consumer that takes none (busy, paused) would never
            // notice, so the subscription is also checked every 100 ms.
            loop {
                tokio::select! {
                    biased;
                    _ = closed.cancelled() => {
                        self.stop(&consumer.channel, &consumer.tag).await;
                        return;
                    }
                    _ = self.shared.lost.notified() => {
                        if lock(&self.shared.slot).lost == Some(epoch) {
                            break;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if !consumer.is_alive() {
                            break;
                        }
                    }
                }
            }
            tracing::warn!(queue = %self.spec.name, "consumer channel lost; resubscribing");
            tokio::select! {
                _ = closed.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        self.shared.end();
        settler.flush().await;
    }

    /// Hand out nothing more, basic.cancel, requeue what arrived but was not taken, flush acks.
    async fn stop(&self, channel: &Channel, tag: &str) {
        let rest = self.shared.end();
        if channel.is_open() {
            let cancel = channel.basic_cancel(BasicCancelArguments::new(tag));
            if tokio::time::timeout(Duration::from_secs(5), cancel)
                .await
                .is_err()
            {
                tracing::warn!(queue = %self.spec.name, "basic.cancel timed out");
            }
        }
        let settler = &self.shared.settler;
        if let Some((epoch, mut rx)) = rest {
            while let Ok(m) = rx.try_recv() {
                if let Some(d) = m.deliver {
                    settler.nack(epoch, d.delivery_tag(), true, false).await;
                }
            }
        }
        settler.flush().await;
    }

    async fn redeclare(&self, conn: &amqprs::connection::Connection) {
        let known: Vec<Topology> = lock(&self.topologies).clone();
        for topo in known {
            if let Some(q) = topo.queues.iter().find(|q| q.name == self.spec.name) {
                let single = Topology {
                    exchange: topo.exchange.clone(),
                    queues: vec![q.clone()],
                };
                if let Err(e) = topology::declare(conn, &single, &self.cfg).await {
                    tracing::warn!(queue = %q.name, error = %e, "re-declaring the queue failed");
                }
                return;
            }
        }
    }
}

/// Keep a weak list of settlers so `close` can flush their acks.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_sent_before_the_prefetch_window_fills() {
        assert_eq!(flush_threshold(64, 200), 64);
        assert_eq!(flush_threshold(64, 100), 50);
        assert_eq!(flush_threshold(64, 4), 2);
        assert_eq!(flush_threshold(64, 1), 1);
        assert_eq!(flush_threshold(0, 200), 1);
    }

    #[test]
    fn delivery_tags_stay_ordered_for_multiple_acks() {
        let mut tags = Tags::default();
        for t in [1, 2, 3, 5] {
            tags.insert(t);
        }
        // Out of order (never from one channel, but it must not break the order) and a repeat.
        tags.insert(4);
        tags.insert(3);
        assert_eq!(tags.0, [1, 2, 3, 4, 5]);
        tags.remove(1);
        tags.remove(4);
        tags.remove(9);
        assert_eq!(tags.first(), Some(&2));
        assert!(tags.contains(3) && !tags.contains(4));
        tags.clear();
        assert_eq!(tags.first(), None);
    }

    #[test]
    fn tags_pack_and_unpack_with_their_channel_epoch() {
        let tag = encode(7, 123_456);
        assert_eq!(decode(tag), (7, 123_456));
    }
}
