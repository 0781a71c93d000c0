//! Publishing with pipelined publisher confirms.
//!
//! A pool of confirm channels on the publishing connection. A publish call hands its message to
//! amqprs's writer itself when nothing is queued ahead of it on the channel; when the writer's
//! queue is full it queues the message for the channel's sender task instead, which sends in
//! order. Each message gets the channel's next publish sequence number and a pending entry
//! *before* it is sent; `basic.ack`/`basic.nack`
//! (single or `multiple`) resolve entries in order, and a `basic.return` (mandatory, no route)
//! marks its entry so the following ack resolves it as [`Error::Unroutable`]. At most
//! `confirm_window` messages are unconfirmed at once. When a channel or the connection is lost,
//! every unconfirmed message is published again on a fresh channel once the supervisor has
//! reconnected (at-least-once), bounded by `outage_timeout`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::config::{CloudEventsHeaders, RabbitConfig};
use super::connection::Link;
use super::properties::to_properties;
use herald::envelope::Envelope;
use herald::error::{Error, Result};

/// One message to publish; its AMQP properties are built when it is sent (again on a retry).
pub(crate) struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub mandatory: bool,
    pub envelope: &'a Envelope,
    /// Add the envelope's routing key as a header (copies sent through the default exchange).
    pub routing_key_header: bool,
}

enum Confirm {
    Ack,
    Nack,
    Returned { code: u16, text: String },
}

struct Pending {
    /// The message id, to match a `basic.return` to its entry. Held inline: Herald's ids (36
    /// bytes) need no allocation.
    id: SmallVec<[u8; 40]>,
    returned: Option<(u16, String)>,
    tx: oneshot::Sender<Confirm>,
    _permit: OwnedSemaphorePermit,
}

/// What is sent on a channel, in order. Numbering a message and handing it to amqprs's writer
/// happen under this one lock, so the numbers follow the wire order the broker confirms in.
#[derive(Default)]
struct Sent {
    /// Unconfirmed messages by sequence number, in the order sent (which is ascending): a
    /// confirm resolves a prefix or one entry, and the buffer is reused from one to the next.
    pending: VecDeque<(u64, Pending)>,
    /// The sequence number of the last message sent.
    seq: u64,
    /// Jobs handed to the sender task and not yet sent: while there are any, a publish call
    /// queues behind them rather than sending itself.
    queued: usize,
}

#[derive(Default)]
struct ConfirmState {
    sent: Mutex<Sent>,
    closed: AtomicBool,
    /// Why the broker closed the channel, when it did (e.g. 404 for a missing exchange).
    close_reason: Mutex<Option<(u16, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConfirmState {
    fn resolve(&self, tag: u64, multiple: bool, ok: bool) {
        // Resolved under the lock: sending on a oneshot never blocks, and collecting the
        // entries first would allocate for every `multiple` confirm.
        let p = &mut lock(&self.sent).pending;
        let settle = |d: Pending| {
            let c = match (ok, d.returned) {
                (true, Some((code, text))) => Confirm::Returned { code, text },
                (true, None) => Confirm::Ack,
                (false, _) => Confirm::Nack,
            };
            let _ = d.tx.send(c);
        };
        if multiple {
            let n = p.partition_point(|(t, _)| *t <= tag);
            p.drain(..n).for_each(|(_, d)| settle(d));
        } else if let Ok(i) = p.binary_search_by_key(&tag, |(t, _)| *t) {
            if let Some((_, d)) = p.remove(i) {
                settle(d);
            }
        }
    }

    /// Drop every pending entry: their publishers see the loss and publish again.
    fn fail_all(&self) {
        let drained = {
            let mut sent = lock(&self.sent);
            self.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut sent.pending)
        };
        drop(drained);
    }
}

struct ConfirmCallback(Arc<ConfirmState>);

impl Drop for ConfirmCallback {
    fn drop(&mut self) {
        // The channel's dispatcher is gone (channel or connection closed).
        self.0.fail_all();
    }
}

#[async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: CloseChannel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        *lock(&self.0.close_reason) = Some((close.reply_code(), close.reply_text().clone()));
        tracing::warn!(code = close.reply_code(), reason = %close.reply_text(), "the broker closed a publishing channel; unconfirmed messages are published again");
        self.0.fail_all();
        Ok(())
    }
    async fn cancel(
        &mut self,
        _channel: &Channel,
        _cancel: Cancel,
    ) -> std::result::Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> std::result::Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        self.0.resolve(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        self.0.resolve(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        props: BasicProperties,
        _content: Vec<u8>,
    ) {
        let Some(id) = props.message_id() else { return };
        let mut sent = lock(&self.0.sent);
        if let Some((_, entry)) = sent
            .pending
            .iter_mut()
            .find(|(_, e)| e.returned.is_none() && e.id.as_slice() == id.as_bytes())
        {
            entry.returned = Some((ret.reply_code(), ret.reply_text().clone()));
        }
    }
}

struct ConfirmChannel {
    channel: Channel,
    generation: u64,
    state: Arc<ConfirmState>,
    /// To the channel's sender task ([`send_jobs`]), for messages that cannot be sent at once.
    jobs: mpsc::UnboundedSender<Job>,
}

/// One message for a channel's sender task: what `basic_publish` takes, and its pending entry.
/// The queue is unbounded because every job holds a permit of the confirm window.
struct Job {
    properties: BasicProperties,
    body: Vec<u8>,
    args: BasicPublishArguments,
    pending: Pending,
}

impl ConfirmChannel {
    fn usable(&self, generation: u64) -> bool {
        self.generation == generation
            && self.channel.is_open()
            && !self.state.closed.load(Ordering::SeqCst)
    }

    /// Send `m`: to amqprs's writer at once when nothing is queued ahead of it on this channel
    /// and the writer has room (nearly always), else to the channel's sender task. The receiver
    /// resolves with the broker's confirm, or fails when the channel is lost first (publish it
    /// again). `None`: the channel is closed, use another.
    ///
    /// Synchronous on purpose. amqprs's `basic_publish` future is over 1 KiB: awaited here, it
    /// would sit in every publish call's future, which the transport boxes, and glibc serves
    /// allocations that large from its slow path. Polled once on this stack frame instead, it
    /// costs no allocation, and no hand-over to another task.
    fn send(
        &self,
        m: &Outgoing<'_>,
        permit: OwnedSemaphorePermit,
        cloudevents: CloudEventsHeaders,
    ) -> Option<oneshot::Receiver<Confirm>> {
        if self.state.closed.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            id: SmallVec::from_slice(m.envelope.id.as_bytes()),
            returned: None,
            tx,
            _permit: permit,
        };
        // Built before the lock: the confirm callbacks wait on it, and nothing that could fail
        // runs between numbering a message and sending it.
        let (properties, body, args) = wire_parts(m, cloudevents);
        let mut sent = lock(&self.state.sent);
        // Checked under the lock `fail_all` clears with, so no entry is ever stranded.
        if self.state.closed.load(Ordering::SeqCst) || !self.channel.is_open() {
            return None;
        }
        let job = if sent.queued == 0 {
            let next = sent.seq + 1;
            sent.pending.push_back((next, pending));
            // Unconstrained: tokio's cooperative budget would otherwise make the writer's queue
            // look full after a burst of sends in one task poll. Polled where it is built: the
            // future is large, and every move of it is a copy.
            let publish = std::pin::pin!(tokio::task::unconstrained(
                self.channel.basic_publish(properties, body, args)
            ));
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            match publish.poll(&mut cx) {
                Poll::Ready(Ok(())) => {
                    sent.seq = next;
                    return Some(rx);
                }
                Poll::Ready(Err(e)) => {
                    drop(sent);
                    tracing::debug!(error = %e, "publish failed on a closing channel; will retry");
                    // Drops the entry just added too: its publisher sends it again.
                    self.state.fail_all();
                    return Some(rx);
                }
                // The writer's queue is full (a stalled socket). Nothing was sent, as tokio's
                // bounded send guarantees when its future is dropped: queue it for the sender
                // task, which waits for room. Later calls queue behind it until it is sent, so
                // this is logged once per stall.
                Poll::Pending => {
                    tracing::debug!("amqprs's writer queue is full; publishes queue for the channel's sender task");
                    // The first parts went into the dropped future: built again.
                    let (properties, body, args) = wire_parts(m, cloudevents);
                    Job {
                        properties,
                        body,
                        args,
                        pending: sent.pending.pop_back()?.1,
                    }
                }
            }
        } else {
            Job {
                properties,
                body,
                args,
                pending,
            }
        };
        if self.jobs.send(job).is_err() {
            drop(sent);
            // The sender task is gone (it can only end early by panicking): retire the channel.
            self.state.fail_all();
            return None;
        }
        sent.queued += 1;
        Some(rx)
    }
}

/// A channel's sender task: publishes the jobs that could not be sent at once, in the order
/// they came, numbering each with the channel's next publish sequence number (the broker
/// numbers confirms in wire order) and recording its pending entry first, so a confirm never
/// arrives for an unknown number. Until a job is sent, publish calls queue behind it. Once the
/// channel is closed, jobs are dropped, which tells their publishers to publish again. Ends
/// when the [`ConfirmChannel`] is gone.
async fn send_jobs(
    channel: Channel,
    state: Arc<ConfirmState>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    // However the task ends (a panic included), the channel's unconfirmed messages are failed,
    // so their publishers send them again, and the channel is no longer used.
    let _retire = FailOnDrop(state.clone());
    while let Some(job) = jobs.recv().await {
        {
            // A channel closed by `close_channels` sends nothing more.
            let mut sent = lock(&state.sent);
            if state.closed.load(Ordering::SeqCst) || !channel.is_open() {
                sent.queued = sent.queued.saturating_sub(1);
                continue;
            }
            // Numbered now: no publish call sends while this job is queued, so the number
            // matches the wire order.
            sent.seq += 1;
            let seq = sent.seq;
            sent.pending.push_back((seq, job.pending));
        }
        let result = channel
            .basic_publish(job.properties, job.body, job.args)
            .await;
        {
            let mut sent = lock(&state.sent);
            sent.queued = sent.queued.saturating_sub(1);
        }
        if let Err(e) = result {
            tracing::debug!(error = %e, "publish failed on a closing channel; will retry");
            state.fail_all();
        }
    }
}

/// Fails a channel's unconfirmed messages when dropped.
struct FailOnDrop(Arc<ConfirmState>);

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        self.0.fail_all();
    }
}

/// The publishing side of a transport.
pub(crate) struct Publisher {
    link: Link,
    cfg: Arc<RabbitConfig>,
    window: Arc<Semaphore>,
    pool: Vec<tokio::sync::Mutex<Option<Arc<ConfirmChannel>>>>,
    next: AtomicUsize,
    /// Set by [`close_channels`](Self::close_channels): no channel is opened after it.
    closing: AtomicBool,
}

enum Outcome {
    Done,
    Failed(Error),
    /// A negative confirm: the broker did not take the message.
    Nacked(Error),
    Lost,
}

impl Publisher {
    pub fn new(link: Link, cfg: Arc<RabbitConfig>) -> Self {
        let n = cfg.publish_channels.max(1);
        Publisher {
            link,
            window: Arc::new(Semaphore::new(cfg.confirm_window.max(1))),
            pool: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            cfg,
        }
    }

    /// Close the pooled channels (before the connection goes): a channel still open when its
    /// last handle drops is closed by amqprs from a spawned task, which fails and logs an error
    /// once the connection is gone.
    pub async fn close_channels(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for slot in &self.pool {
            let taken = slot.lock().await.take();
            if let Some(ch) = taken {
                if ch.channel.is_open() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), ch.channel.clone().close())
                            .await;
                }
            }
        }
    }

    /// The next pooled channel, when the connection is up and that channel is usable: no
    /// waiting and no future to hold, which is every publish but the first on a connection.
    fn ready_channel(&self, slot: usize) -> Option<Arc<ConfirmChannel>> {
        let session = self.link.current()?;
        let guard = self.pool[slot].try_lock().ok()?;
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        guard
            .as_ref()
            .filter(|ch| ch.usable(session.generation))
            .cloned()
    }

    /// The pooled channel `slot`, waiting through an outage and opening it when needed.
    async fn channel(&self, slot: usize, deadline: Instant) -> Result<Arc<ConfirmChannel>> {
        let slot = &self.pool[slot];
        loop {
            let session = self.link.session(deadline).await?;
            let mut guard = slot.lock().await;
            // Checked under the slot's lock, which `close_channels` takes after setting it: a
            // channel opened now would outlive the connection.
            if self.closing.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            if let Some(ch) = guard.as_ref() {
                if ch.usable(session.generation) {
                    return Ok(ch.clone());
                }
            }
            match open_confirm_channel(&session.conn, session.generation).await {
                Ok(ch) => {
                    *guard = Some(ch.clone());
                    return Ok(ch);
                }
                Err(e) => {
                    drop(guard);
                    if Instant::now() >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "opening a confirm channel failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Publish every message and wait for the broker's confirms. Messages lost to a channel or
    /// connection failure are published again (so a message may arrive twice, never zero
    /// times) until `outage_timeout`; nacked ones for `nack_retry`. Returns the first nack /
    /// return as an error after the rest of the batch was settled.
    pub async fn publish_all(&self, msgs: &[Outgoing<'_>]) -> Result<()> {
        let deadline = Instant::now() + self.cfg.outage_timeout;
        // Inline for one message (every `Bus::publish`), so a publish allocates no lists.
        let mut todo: SmallVec<[usize; 1]> = (0..msgs.len()).collect();
        let mut first_error: Option<Error> = None;
        let mut broker_closes = 0u32;
        // Rounds of this call that had nacks, and when the first came: nacked messages are
        // published again until `nack_retry` has passed since.
        let mut nack_rounds = 0u32;
        let mut first_nack: Option<Instant> = None;
        while !todo.is_empty() {
            // The slow paths are boxed: inline, they would make every publish's future (which
            // the transport boxes) larger than the allocations glibc serves from its caches.
            if self.link.is_blocked() {
                Box::pin(self.link.wait_unblocked(deadline)).await?;
            }
            let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
            let ch = match self.ready_channel(slot) {
                Some(ch) => ch,
                None => Box::pin(self.channel(slot, deadline)).await?,
            };
            let mut waiting: SmallVec<[_; 1]> = SmallVec::with_capacity(todo.len());
            let mut again = SmallVec::new();
            let mut iter = todo.into_iter();
            for i in iter.by_ref() {
                let permit = match self.window.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => self
                        .window
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Closed)?,
                };
                match ch.send(&msgs[i], permit, self.cfg.cloudevents_headers) {
                    Some(rx) => waiting.push((i, rx)),
                    None => {
                        again.push(i);
                        break;
                    }
                }
            }
            again.extend(iter);
            let mut nacked = false;
            // Every confirm is needed, so waiting in order costs nothing; a channel that dies
            // resolves them all at once (its callback, or the channel's watchdog).
            for (i, rx) in waiting {
                match outcome(rx.await, &msgs[i]) {
                    Outcome::Done => {}
                    Outcome::Failed(e) => {
                        first_error.get_or_insert(e);
                    }
                    Outcome::Nacked(e) => {
                        let since = *first_nack.get_or_insert_with(Instant::now);
                        if since.elapsed() < self.cfg.nack_retry && Instant::now() < deadline {
                            nacked = true;
                            again.push(i);
                        } else {
                            first_error.get_or_insert(e);
                        }
                    }
                    Outcome::Lost => again.push(i),
                }
            }
            nack_rounds += u32::from(nacked);
            again.sort_unstable();
            if !again.is_empty() {
                // A channel the broker closed twice for this call (a missing exchange, access
                // refused) will not get better by publishing again.
                if let Some((code, text)) = lock(&ch.state.close_reason).clone() {
                    broker_closes += 1;
                    if broker_closes >= 2 {
                        let hint = if code == 404 {
                            "; declare the exchange first (apply the topology)"
                        } else {
                            ""
                        };
                        return Err(Error::transport(
                            "rabbitmq",
                            format!("the broker refused the publish: {code} {text}{hint}"),
                        ));
                    }
                }
            }
            todo = again;
            if !todo.is_empty() {
                if Instant::now() >= deadline {
                    return Err(Error::Unavailable {
                        waited: self.cfg.outage_timeout,
                        reason: format!("{} messages were not confirmed by the broker", todo.len()),
                    });
                }
                tracing::info!(count = todo.len(), "publishing unconfirmed messages again");
                // Never spin: give the supervisor a moment to notice a dead connection, and a
                // queue that refuses messages time to elect a leader (backing off to 1 s).
                let pause = if nacked {
                    Duration::from_millis(50 << nack_rounds.min(5)).min(Duration::from_secs(1))
                } else {
                    Duration::from_millis(50)
                };
                Box::pin(tokio::time::sleep(pause)).await;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What `basic_publish` takes for `m`: its properties, its body and the publish arguments.
fn wire_parts(
    m: &Outgoing<'_>,
    cloudevents: CloudEventsHeaders,
) -> (BasicProperties, Vec<u8>, BasicPublishArguments) {
    let mut args = BasicPublishArguments::new(m.exchange, m.routing_key);
    args.mandatory(m.mandatory);
    (
        to_properties(m.envelope, m.routing_key_header, cloudevents),
        m.envelope.body.to_vec(),
        args,
    )
}

fn outcome(
    r: std::result::Result<Confirm, oneshot::error::RecvError>,
    m: &Outgoing<'_>,
) -> Outcome {
    match r {
        Ok(Confirm::Ack) => Outcome::Done,
        Ok(Confirm::Nack) => Outcome::Nacked(Error::Rejected(format!(
            "negative confirm for message `{}` to `{}` (a full queue with reject-publish, or a broker-side failure); retry later or raise the queue's max_length",
            m.envelope.id, m.routing_key
        ))),
        Ok(Confirm::Returned { code, text }) => {
            tracing::debug!(code, %text, id = %m.envelope.id, "message returned as unroutable");
            Outcome::Failed(Error::Unroutable {
                exchange: m.exchange.to_string(),
                routing_key: m.routing_key.to_string(),
            })
        }
        Err(_) => Outcome::Lost,
    }
}

async fn open_confirm_channel(
    conn: &amqprs::connection::Connection,
    generation: u64,
) -> Result<Arc<ConfirmChannel>> {
    let channel = conn.open_channel(None).await.map_err(|e| {
        Error::transport(
            "rabbitmq",
            format!("could not open a publishing channel: {e}"),
        )
    })?;
    let state = Arc::new(ConfirmState::default());
    channel
        .register_callback(ConfirmCallback(state.clone()))
        .await
        .map_err(|e| Error::transport("rabbitmq", e))?;
    channel
        .confirm_select(ConfirmSelectArguments::new(false))
        .await
        .map_err(|e| Error::transport("rabbitmq", format!("confirm.select failed: {e}")))?;
    let (jobs, queued) = mpsc::unbounded_channel();
    tokio::spawn(send_jobs(channel.clone(), state.clone(), queued));
    let confirm = Arc::new(ConfirmChannel {
        channel,
        generation,
        state,
        jobs,
    });
    tokio::spawn(watch(Arc::downgrade(&confirm)));
    Ok(confirm)
}

/// A safety net beside the channel's callback: a channel that died without the callback
/// noticing (its connection gone) fails its unconfirmed messages within a second, so their
/// publishers send them again. One timer per channel rather than one per publish call; it ends
/// with the channel.
async fn watch(channel: Weak<ConfirmChannel>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(ch) = channel.upgrade() else { return };
        if ch.state.closed.load(Ordering::SeqCst) {
            return;
        }
        if !ch.channel.is_open() || !ch.channel.is_connection_open() {
            ch.state.fail_all();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` pending entries with sequence numbers 1..=n, and their receivers.
    fn pending(n: u64) -> (ConfirmState, Vec<oneshot::Receiver<Confirm>>) {
        let state = ConfirmState::default();
        let window = Arc::new(Semaphore::new(n as usize));
        let mut receivers = Vec::new();
        for seq in 1..=n {
            let (tx, rx) = oneshot::channel();
            let permit = window
                .clone()
                .try_acquire_owned()
                .expect("a permit per entry");
            lock(&state.sent).pending.push_back((
                seq,
                Pending {
                    id: SmallVec::from_slice(format!("m{seq}").as_bytes()),
                    returned: None,
                    tx,
                    _permit: permit,
                },
            ));
            receivers.push(rx);
        }
        (state, receivers)
    }

    fn is_ack(rx: &mut oneshot::Receiver<Confirm>) -> bool {
        matches!(rx.try_recv(), Ok(Confirm::Ack))
    }

    #[test]
    fn confirms_resolve_a_prefix_or_one_entry() {
        let (state, mut rx) = pending(5);
        state.resolve(2, true, true);
        assert!(is_ack(&mut rx[0]) && is_ack(&mut rx[1]));
        assert!(rx[2].try_recv().is_err(), "3 is not confirmed yet");
        // A single confirm out of order resolves that entry only.
        state.resolve(4, false, true);
        assert!(is_ack(&mut rx[3]));
        assert!(rx[2].try_recv().is_err());
        assert_eq!(lock(&state.sent).pending.len(), 2);
        // A nack covering the rest fails them; an unknown tag changes nothing.
        state.resolve(9, false, true);
        state.resolve(5, true, false);
        assert!(matches!(rx[2].try_recv(), Ok(Confirm::Nack)));
        assert!(matches!(rx[4].try_recv(), Ok(Confirm::Nack)));
        assert!(lock(&state.sent).pending.is_empty());
    }

    #[test]
    fn a_lost_channel_drops_every_entry_so_its_publisher_sends_again() {
        let (state, mut rx) = pending(3);
        lock(&state.sent).pending[1].1.returned = Some((312, "NO_ROUTE".into()));
        state.resolve(2, true, true);
        assert!(is_ack(&mut rx[0]));
        assert!(matches!(
            rx[1].try_recv(),
            Ok(Confirm::Returned { code: 312, .. })
        ));
        state.fail_all();
        assert!(matches!(
            rx[2].try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(state.closed.load(Ordering::SeqCst));
    }
}
