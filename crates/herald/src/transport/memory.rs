//! `memory://`: an in-process broker with the same semantics as the durable ones (topic routing,
//! competing consumers, prefetch, delayed retries, dead letters, priority, TTL, max-length), for
//! tests and for wiring services together inside one process. Nothing survives the process.
//!
//! Brokers are shared by name: every `memory://orders` in one process is the same broker.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::envelope::{format_time, header, Envelope};
use crate::error::{Error, Result};
use crate::pattern::topic_matches;
use crate::topology::{QueueSpec, Topology};
use crate::transport::{
    reset_for_replay, Capabilities, ConsumeOptions, DeadLetter, DeadLetterAdmin, Deliveries,
    Delivery, Failure, Outcome, PublishOptions, QueueStatistics, QueueStats, Settle, Transport,
};

/// The in-memory transport. Clones share the broker *and* the connection; [`handle`](Self::handle)
/// opens a new connection to the same broker, as a second process would.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    broker: Arc<Broker>,
    conn: Arc<Connection>,
}

/// One client connection. Like a broker connection, when it goes away (dropped without settling,
/// a crashed process) every message its consumers had not settled goes back to its queue.
#[derive(Default)]
struct Connection {
    closed: AtomicBool,
    consumers: Mutex<Vec<Weak<MemorySettler>>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for settler in lock(&self.consumers).drain(..) {
            if let Some(settler) = settler.upgrade() {
                settler.requeue_unsettled();
            }
        }
    }
}

#[derive(Default)]
struct Broker {
    state: Mutex<State>,
    next_tag: AtomicU64,
}

#[derive(Default)]
struct State {
    /// exchange -> (pattern, queue)
    bindings: HashMap<String, Vec<(String, String)>>,
    queues: HashMap<String, QueueState>,
    seq: u64,
}

struct QueueState {
    spec: QueueSpec,
    ready: Ready,
    delayed: u64,
    in_flight: u64,
    dead: VecDeque<Envelope>,
    consumers: u64,
    notify: Arc<Notify>,
}

struct Stored {
    envelope: Envelope,
    expires_at: Option<Instant>,
    redelivered: bool,
}

/// FIFO for plain queues; a heap ordered by priority then arrival for priority queues.
enum Ready {
    Fifo(VecDeque<Stored>),
    Priority(BinaryHeap<Prioritized>),
}

struct Prioritized {
    priority: u8,
    seq: u64,
    stored: Stored,
}

impl PartialEq for Prioritized {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Prioritized {}
impl PartialOrd for Prioritized {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Prioritized {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl Ready {
    fn len(&self) -> usize {
        match self {
            Ready::Fifo(q) => q.len(),
            Ready::Priority(h) => h.len(),
        }
    }
    fn push(&mut self, stored: Stored, seq: u64, max_priority: Option<u8>) {
        match self {
            Ready::Fifo(q) => q.push_back(stored),
            Ready::Priority(h) => {
                let priority = stored.envelope.priority.min(max_priority.unwrap_or(0));
                h.push(Prioritized {
                    priority,
                    seq,
                    stored,
                })
            }
        }
    }
    fn pop(&mut self) -> Option<Stored> {
        match self {
            Ready::Fifo(q) => q.pop_front(),
            Ready::Priority(h) => h.pop().map(|p| p.stored),
        }
    }
}

/// How many messages a consumer takes under one lock at most.
const TAKE_BATCH: usize = 64;

fn registry() -> &'static Mutex<HashMap<String, MemoryTransport>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, MemoryTransport>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the broker half-updated in a way that matters
    // more than stopping every user of it, so recover the guard.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryTransport {
    /// A new private broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide broker with this name (created on first use).
    pub fn named(name: &str) -> Self {
        lock(registry())
            .entry(name.to_string())
            .or_default()
            .handle()
    }

    /// A new connection to the same broker.
    pub fn handle(&self) -> Self {
        MemoryTransport {
            broker: self.broker.clone(),
            conn: Arc::new(Connection::default()),
        }
    }

    fn closed_check(&self) -> Result<()> {
        if self.conn.closed.load(AtomicOrdering::Relaxed) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }
}

impl Broker {
    /// Put a message on a queue (ready now) and wake a consumer.
    fn enqueue(state: &mut State, queue: &str, envelope: Envelope, redelivered: bool) {
        state.seq += 1;
        let seq = state.seq;
        if let Some(q) = state.queues.get_mut(queue) {
            let ttl = match (envelope.ttl, q.spec.message_ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let stored = Stored {
                expires_at: ttl.map(|t| Instant::now() + t),
                envelope,
                redelivered,
            };
            q.ready.push(stored, seq, q.spec.max_priority);
            q.notify.notify_one();
        }
    }

    fn dead_letter(state: &mut State, queue: &str, mut envelope: Envelope, failure: &Failure) {
        failure.record(&mut envelope);
        envelope
            .headers
            .insert(header::DEAD_LETTERED_AT.into(), format_time(&Utc::now()));
        if let Some(q) = state.queues.get_mut(queue) {
            q.dead.push_back(envelope);
        }
    }

    /// Take up to `max` live messages.
    fn take_many(state: &mut State, queue: &str, max: usize) -> Vec<Stored> {
        let mut out = Vec::new();
        while out.len() < max {
            match Broker::take(state, queue) {
                Some(s) => out.push(s),
                None => break,
            }
        }
        out
    }

    /// Take the next live message, dead-lettering expired ones on the way.
    fn take(state: &mut State, queue: &str) -> Option<Stored> {
        loop {
            let q = state.queues.get_mut(queue)?;
            let stored = q.ready.pop()?;
            match stored.expires_at {
                Some(at) if at <= Instant::now() => {
                    let failure = Failure::now(
                        &stored.envelope,
                        queue,
                        "expired",
                        "message TTL expired before delivery",
                    );
                    Broker::dead_letter(state, queue, stored.envelope, &failure);
                }
                _ => {
                    q.in_flight += 1;
                    return Some(stored);
                }
            }
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Shared by every handle in the process, gone with it.
            durable: false,
            ..Capabilities::EMBEDDED
        }
    }

    fn dead_letter_admin(&self) -> Option<&dyn DeadLetterAdmin> {
        Some(self)
    }

    fn queue_statistics(&self) -> Option<&dyn QueueStatistics> {
        Some(self)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn apply_topology(&self, topology: &Topology) -> Result<()> {
        self.closed_check()?;
        let mut state = lock(&self.broker.state);
        for spec in &topology.queues {
            let q = state
                .queues
                .entry(spec.name.clone())
                .or_insert_with(|| QueueState {
                    ready: if spec.max_priority.is_some() {
                        Ready::Priority(BinaryHeap::new())
                    } else {
                        Ready::Fifo(VecDeque::new())
                    },
                    spec: spec.clone(),
                    delayed: 0,
                    in_flight: 0,
                    dead: VecDeque::new(),
                    consumers: 0,
                    notify: Arc::new(Notify::new()),
                });
            q.spec.bindings = spec.bindings.clone();
            let bindings = state.bindings.entry(topology.exchange.clone()).or_default();
            for pattern in &spec.bindings {
                let b = (pattern.clone(), spec.name.clone());
                if !bindings.contains(&b) {
                    bindings.push(b);
                }
            }
        }
        Ok(())
    }

    async fn publish(
        &self,
        exchange: &str,
        batch: &[Envelope],
        options: PublishOptions,
    ) -> Result<()> {
        self.closed_check()?;
        let mut state = lock(&self.broker.state);
        // Route everything first so a batch is all-or-nothing.
        let mut routed: Vec<Vec<String>> = Vec::with_capacity(batch.len());
        for envelope in batch {
            let mut targets: Vec<String> = Vec::new();
            if let Some(bindings) = state.bindings.get(exchange) {
                for (pattern, queue) in bindings {
                    if topic_matches(pattern, &envelope.routing_key) && !targets.contains(queue) {
                        targets.push(queue.clone());
                    }
                }
            }
            if targets.is_empty() && options.require_route {
                return Err(Error::Unroutable {
                    exchange: exchange.to_string(),
                    routing_key: envelope.routing_key.clone(),
                });
            }
            for t in &targets {
                if let Some(q) = state.queues.get(t) {
                    if let Some(max) = q.spec.max_length {
                        if q.ready.len() as u64 >= max {
                            return Err(Error::Rejected(format!(
                                "queue `{t}` is full ({max} messages)"
                            )));
                        }
                    }
                }
            }
            routed.push(targets);
        }
        for (envelope, targets) in batch.iter().zip(routed) {
            for t in targets {
                Broker::enqueue(&mut state, &t, envelope.clone(), false);
            }
        }
        Ok(())
    }

    async fn consume(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
        cancel: CancellationToken,
    ) -> Result<Deliveries> {
        self.closed_check()?;
        let notify = {
            let mut state = lock(&self.broker.state);
            let q = state.queues.get_mut(&queue.name).ok_or_else(|| {
                Error::transport(
                    "memory",
                    format!(
                        "queue `{}` is not declared; apply the topology first",
                        queue.name
                    ),
                )
            })?;
            q.consumers += 1;
            q.notify.clone()
        };
        let prefetch = options.prefetch.max(1);
        let (tx, rx) = mpsc::channel(prefetch);
        let settler = Arc::new(MemorySettler {
            broker: self.broker.clone(),
            queue: queue.name.clone(),
            auto_delete: queue.auto_delete,
            in_flight: Mutex::new(HashMap::new()),
        });
        lock(&self.conn.consumers).push(Arc::downgrade(&settler));
        let permits = Arc::new(Semaphore::new(prefetch));
        let broker = self.broker.clone();
        let conn = Arc::downgrade(&self.conn);
        let name = queue.name.clone();
        tokio::spawn(async move {
            loop {
                let connected = conn
                    .upgrade()
                    .is_some_and(|c| !c.closed.load(AtomicOrdering::Relaxed));
                if !connected {
                    break;
                }
                let mut permits_held = tokio::select! {
                    _ = cancel.cancelled() => break,
                    p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                };
                // Take as many as the free prefetch allows under one lock: fewer lock round
                // trips and wake-ups than one message at a time.
                while permits_held.num_permits() < TAKE_BATCH {
                    match permits.clone().try_acquire_owned() {
                        Ok(p) => permits_held.merge(p),
                        Err(_) => break,
                    }
                }
                let batch = loop {
                    if cancel.is_cancelled() {
                        break Vec::new();
                    }
                    let notified = notify.notified();
                    let batch = Broker::take_many(
                        &mut lock(&broker.state),
                        &name,
                        permits_held.num_permits(),
                    );
                    if !batch.is_empty() {
                        break batch;
                    }
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => break Vec::new(),
                        _ = notified => {}
                    }
                };
                if batch.is_empty() {
                    break;
                }
                let mut deliveries = Vec::with_capacity(batch.len());
                {
                    let mut in_flight = lock(&settler.in_flight);
                    for stored in batch {
                        let Some(permit) = permits_held.split(1) else {
                            break;
                        };
                        let tag = broker.next_tag.fetch_add(1, AtomicOrdering::Relaxed);
                        in_flight.insert(tag, (stored.envelope.clone(), permit));
                        deliveries.push(Delivery::new(
                            stored.envelope,
                            stored.redelivered,
                            tag,
                            settler.clone(),
                        ));
                    }
                }
                drop(permits_held);
                let mut closed = false;
                for delivery in deliveries {
                    if closed {
                        let _ = delivery
                            .settle(Outcome::Release {
                                delay: Duration::ZERO,
                            })
                            .await;
                        continue;
                    }
                    if let Err(mpsc::error::SendError(undelivered)) = tx.send(delivery).await {
                        // Nobody is listening any more: give the messages straight back.
                        let _ = undelivered
                            .settle(Outcome::Release {
                                delay: Duration::ZERO,
                            })
                            .await;
                        closed = true;
                    }
                }
                if closed {
                    break;
                }
            }
            // Wake a sibling consumer in case we consumed a notification meant for the queue.
            notify.notify_one();
            if let Some(q) = lock(&broker.state).queues.get_mut(&name) {
                q.consumers = q.consumers.saturating_sub(1);
            }
        });
        Ok(rx.into())
    }

    async fn close(&self) -> Result<()> {
        self.conn.closed.store(true, AtomicOrdering::Relaxed);
        Ok(())
    }
}

#[async_trait]
impl DeadLetterAdmin for MemoryTransport {
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let state = lock(&self.broker.state);
        Ok(state
            .queues
            .get(queue)
            .map(|q| {
                q.dead
                    .iter()
                    .take(limit)
                    .map(|e| DeadLetter {
                        queue: queue.to_string(),
                        envelope: e.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn replay_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        let mut state = lock(&self.broker.state);
        let Some(q) = state.queues.get_mut(queue) else {
            return Ok(0);
        };
        let (replay, keep): (VecDeque<Envelope>, VecDeque<Envelope>) = q
            .dead
            .drain(..)
            .partition(|e| ids.is_none_or(|ids| ids.contains(&e.id)));
        q.dead = keep;
        let n = replay.len() as u64;
        for mut e in replay {
            reset_for_replay(&mut e);
            Broker::enqueue(&mut state, queue, e, false);
        }
        Ok(n)
    }

    async fn purge_dead_letters(&self, queue: &str, ids: Option<&[String]>) -> Result<u64> {
        let mut state = lock(&self.broker.state);
        let Some(q) = state.queues.get_mut(queue) else {
            return Ok(0);
        };
        let before = q.dead.len();
        q.dead
            .retain(|e| !ids.is_none_or(|ids| ids.contains(&e.id)));
        Ok((before - q.dead.len()) as u64)
    }
}

#[async_trait]
impl QueueStatistics for MemoryTransport {
    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let state = lock(&self.broker.state);
        let mut stats: Vec<QueueStats> = state
            .queues
            .iter()
            .map(|(name, q)| QueueStats {
                queue: name.clone(),
                ready: Some(q.ready.len() as u64),
                in_flight: Some(q.in_flight),
                delayed: Some(q.delayed),
                dead_letters: Some(q.dead.len() as u64),
                consumers: Some(q.consumers),
            })
            .collect();
        stats.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(stats)
    }

    async fn bindings(&self, exchange: &str) -> Result<Option<Vec<(String, String)>>> {
        let state = lock(&self.broker.state);
        Ok(Some(
            state.bindings.get(exchange).cloned().unwrap_or_default(),
        ))
    }
}

/// Settles one consumer's deliveries; when dropped (consumer gone, deliveries dropped), whatever
/// is still unsettled goes back to the queue, as a broker does when a channel closes.
struct MemorySettler {
    broker: Arc<Broker>,
    queue: String,
    auto_delete: bool,
    in_flight: Mutex<HashMap<u64, (Envelope, OwnedSemaphorePermit)>>,
}

#[async_trait]
impl Settle for MemorySettler {
    async fn settle(&self, tag: u64, envelope: &Envelope, outcome: Outcome) -> Result<()> {
        let Some((_, permit)) = lock(&self.in_flight).remove(&tag) else {
            return Err(Error::transport(
                "memory",
                format!("delivery {tag} was already settled"),
            ));
        };
        drop(permit);
        let mut state = lock(&self.broker.state);
        if let Some(q) = state.queues.get_mut(&self.queue) {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
        match outcome {
            Outcome::Ack => {}
            Outcome::DeadLetter(failure) => {
                Broker::dead_letter(&mut state, &self.queue, envelope.clone(), &failure)
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

impl MemorySettler {
    fn schedule(&self, envelope: Envelope, delay: Duration, redelivered: bool) {
        if delay.is_zero() {
            Broker::enqueue(
                &mut lock(&self.broker.state),
                &self.queue,
                envelope,
                redelivered,
            );
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
            Broker::enqueue(&mut state, &queue, envelope, redelivered);
        });
    }
}

impl MemorySettler {
    fn requeue_unsettled(&self) {
        let unsettled: Vec<Envelope> = lock(&self.in_flight).drain().map(|(_, (e, _))| e).collect();
        let mut state = lock(&self.broker.state);
        if let Some(q) = state.queues.get_mut(&self.queue) {
            q.in_flight = q.in_flight.saturating_sub(unsettled.len() as u64);
        }
        for e in unsettled {
            Broker::enqueue(&mut state, &self.queue, e, true);
        }
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
                state.queues.remove(&self.queue);
                for b in state.bindings.values_mut() {
                    b.retain(|(_, q)| q != &self.queue);
                }
            }
        }
    }
}
