//! `memory://`: an in-process broker with the same semantics as the durable ones (topic routing,
//! competing consumers, prefetch, delayed retries, dead letters, priority, TTL, max-length), for
//! tests and for wiring services together inside one process. Nothing survives the process.
//!
//! Brokers are shared by name: every `memory://orders` in one process is the same broker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::topology::{QueueSpec, Topology};
use crate::transport::{
    reset_for_replay, Capabilities, ConsumeOptions, DeadLetter, DeadLetterAdmin, Deliveries,
    PublishOptions, QueueStatistics, QueueStats, TopologyAdmin, Transport,
};

mod broker;
mod consumer;

use broker::{lock, Broker, QueueState};
use consumer::{MemoryConsumer, MemorySettler};

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

fn registry() -> &'static Mutex<std::collections::HashMap<String, MemoryTransport>> {
    static REGISTRY: OnceLock<Mutex<std::collections::HashMap<String, MemoryTransport>>> =
        OnceLock::new();
    REGISTRY.get_or_init(Default::default)
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

    fn topology_admin(&self) -> Option<&dyn TopologyAdmin> {
        Some(self)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn apply_topology(&self, topology: &Topology) -> Result<()> {
        self.closed_check()?;
        let mut state = lock(&self.broker.state);
        for spec in &topology.queues {
            let name: Arc<str> = match state.queues.get_key_value(spec.name.as_str()) {
                Some((name, _)) => name.clone(),
                None => {
                    let name: Arc<str> = Arc::from(spec.name.as_str());
                    state.queues.insert(name.clone(), QueueState::new(spec));
                    name
                }
            };
            if let Some(q) = state.queues.get_mut(&name) {
                q.spec.bindings = spec.bindings.clone();
            }
            for pattern in &spec.bindings {
                state.bind(&topology.exchange, pattern, &name);
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
        let routed = route_all(&mut state, exchange, batch, options)?;
        for (envelope, targets) in batch.iter().zip(routed) {
            for t in targets.iter() {
                state.enqueue(t, envelope.clone(), false);
            }
        }
        Ok(())
    }

    /// The envelopes move into their queues: a copy only for each queue past the first.
    async fn publish_owned(
        &self,
        exchange: &str,
        batch: Vec<Envelope>,
        options: PublishOptions,
    ) -> Result<()> {
        self.closed_check()?;
        let mut state = lock(&self.broker.state);
        let routed = route_all(&mut state, exchange, &batch, options)?;
        for (envelope, targets) in batch.into_iter().zip(routed) {
            if let Some((last, others)) = targets.split_last() {
                for t in others {
                    state.enqueue(t, envelope.clone(), false);
                }
                state.enqueue(last, envelope, false);
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
        let (name, in_flight) = {
            let mut state = lock(&self.broker.state);
            let Some(name) = state
                .queues
                .get_key_value(queue.name.as_str())
                .map(|(name, _)| name.clone())
            else {
                return Err(Error::transport(
                    "memory",
                    format!(
                        "queue `{}` is not declared; apply the topology first",
                        queue.name
                    ),
                ));
            };
            let in_flight = match state.queues.get_mut(&name) {
                Some(q) => {
                    q.consumers += 1;
                    q.in_flight.clone()
                }
                None => Arc::default(),
            };
            (name, in_flight)
        };
        let settler = Arc::new(MemorySettler::new(
            self.broker.clone(),
            name,
            queue.auto_delete,
            in_flight,
        ));
        lock(&self.conn.consumers).push(Arc::downgrade(&settler));
        Ok(Deliveries::from_source(MemoryConsumer::new(
            settler,
            options.prefetch,
            Arc::downgrade(&self.conn),
            cancel,
        )))
    }

    async fn close(&self) -> Result<()> {
        self.conn.closed.store(true, AtomicOrdering::Relaxed);
        Ok(())
    }
}

/// Route every message of a batch before any is stored, so a batch is all-or-nothing: an
/// unroutable message (when a route is required) or a full queue refuses the whole batch.
fn route_all(
    state: &mut broker::State,
    exchange: &str,
    batch: &[Envelope],
    options: PublishOptions,
) -> Result<SmallVec<[broker::Targets; 1]>> {
    let mut routed = SmallVec::with_capacity(batch.len());
    for envelope in batch {
        let targets = state.route(exchange, &envelope.routing_key);
        if targets.is_empty() && options.require_route {
            return Err(Error::Unroutable {
                exchange: exchange.to_string(),
                routing_key: envelope.routing_key.clone(),
            });
        }
        for t in targets.iter() {
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
    Ok(routed)
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
            state.enqueue(queue, e, false);
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
                queue: name.to_string(),
                ready: Some(q.ready.len() as u64),
                in_flight: Some(q.in_flight.load(AtomicOrdering::Relaxed)),
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
            state
                .bindings
                .get(exchange)
                .map(|b| {
                    b.iter()
                        .map(|(pattern, queue)| (pattern.clone(), queue.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        ))
    }
}

#[async_trait]
impl TopologyAdmin for MemoryTransport {
    async fn delete_topology(&self, topology: &Topology) -> Result<()> {
        let mut state = lock(&self.broker.state);
        for q in &topology.queues {
            state.remove_queue(&q.name);
        }
        state.remove_exchange(&topology.exchange);
        Ok(())
    }
}
