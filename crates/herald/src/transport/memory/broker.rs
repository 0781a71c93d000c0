//! The in-memory broker's state: queues (FIFO, or a heap for priority queues), bindings, a
//! cache of routing decisions, dead letters, and the wakers of consumers waiting for messages.
//! Everything is under one mutex; the maps hash with FxHash (keys are short names, never
//! attacker-chosen in a test broker), since SipHash was a tenth of a W1 event's cost.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use chrono::Utc;
use smallvec::SmallVec;

use crate::envelope::{format_time, header, Envelope};
use crate::pattern::topic_matches;
use crate::topology::QueueSpec;
use crate::transport::Failure;

/// FxHash (rustc's): one multiply per word.
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            self.add(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

pub(super) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Routing decisions cached per exchange and routing key, so a publish costs one lookup
/// instead of matching every binding; cleared whenever bindings change, and when it grows past
/// this many keys on one exchange.
const ROUTE_CACHE: usize = 4096;

#[derive(Default)]
pub(super) struct Broker {
    pub state: Mutex<State>,
    pub next_tag: AtomicU64,
}

#[derive(Default)]
pub(super) struct State {
    /// exchange -> (pattern, queue)
    pub bindings: HashMap<String, Vec<(String, Arc<str>)>>,
    pub queues: FxMap<Arc<str>, QueueState>,
    /// exchange -> routing key -> the queues it routes to.
    routes: FxMap<String, FxMap<String, Targets>>,
    seq: u64,
}

/// The queues one routing key reaches, shared with the route cache: a publish takes one
/// reference instead of one per queue.
pub(super) type Targets = Arc<[Arc<str>]>;

pub(super) struct QueueState {
    pub spec: QueueSpec,
    pub ready: Ready,
    pub delayed: u64,
    /// Taken and not yet settled. An atomic its consumers' settlers share, so that an ack
    /// (the common settlement) never takes the broker's lock the publishers contend for.
    pub in_flight: Arc<AtomicU64>,
    pub dead: VecDeque<Envelope>,
    pub consumers: u64,
    /// Consumers waiting for a message; all are woken when one arrives.
    pub waiting: Vec<Waker>,
}

impl QueueState {
    pub fn new(spec: &QueueSpec) -> Self {
        QueueState {
            ready: if spec.max_priority.is_some() {
                Ready::Priority(BinaryHeap::new())
            } else {
                Ready::Fifo(VecDeque::new())
            },
            spec: spec.clone(),
            delayed: 0,
            in_flight: Arc::default(),
            dead: VecDeque::new(),
            consumers: 0,
            waiting: Vec::new(),
        }
    }

    /// Wake this waker when a message arrives (once, however often it asks).
    pub fn wait(&mut self, waker: &std::task::Waker) {
        if !self.waiting.iter().any(|w| w.will_wake(waker)) {
            self.waiting.push(waker.clone());
        }
    }
}

pub(super) struct Stored {
    pub envelope: Envelope,
    pub expires_at: Option<Instant>,
    pub redelivered: bool,
}

/// FIFO for plain queues; a heap ordered by priority then arrival for priority queues.
pub(super) enum Ready {
    Fifo(VecDeque<Stored>),
    Priority(BinaryHeap<Prioritized>),
}

pub(super) struct Prioritized {
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
    pub fn len(&self) -> usize {
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

/// Take `n` off an in-flight count, never below zero.
pub(super) fn settled_in_flight(count: &AtomicU64, n: u64) {
    let _ = count.fetch_update(AtomicOrdering::Relaxed, AtomicOrdering::Relaxed, |c| {
        Some(c.saturating_sub(n))
    });
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the broker half-updated in a way that matters
    // more than stopping every user of it, so recover the guard.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Bind `queue` on `exchange` with `pattern` (once).
    pub fn bind(&mut self, exchange: &str, pattern: &str, queue: &Arc<str>) {
        let bindings = self.bindings.entry(exchange.to_string()).or_default();
        if !bindings
            .iter()
            .any(|(p, q)| p == pattern && Arc::ptr_eq(q, queue))
        {
            bindings.push((pattern.to_string(), queue.clone()));
            self.routes.clear();
        }
    }

    /// Remove a queue and its bindings.
    pub fn remove_queue(&mut self, queue: &str) {
        self.queues.remove(queue);
        for b in self.bindings.values_mut() {
            b.retain(|(_, q)| &**q != queue);
        }
        self.routes.clear();
    }

    /// Remove an exchange's bindings.
    pub fn remove_exchange(&mut self, exchange: &str) {
        self.bindings.remove(exchange);
        self.routes.remove(exchange);
    }

    /// The queues a message with `routing_key` on `exchange` goes to.
    pub fn route(&mut self, exchange: &str, routing_key: &str) -> Targets {
        if let Some(t) = self
            .routes
            .get(exchange)
            .and_then(|keys| keys.get(routing_key))
        {
            return t.clone();
        }
        let mut found: SmallVec<[Arc<str>; 2]> = SmallVec::new();
        if let Some(bindings) = self.bindings.get(exchange) {
            for (pattern, queue) in bindings {
                if topic_matches(pattern, routing_key) && !found.contains(queue) {
                    found.push(queue.clone());
                }
            }
        }
        let targets: Targets = found.into_iter().collect();
        let keys = self.routes.entry(exchange.to_string()).or_default();
        if keys.len() >= ROUTE_CACHE {
            keys.clear();
        }
        keys.insert(routing_key.to_string(), targets.clone());
        targets
    }

    /// Put a message on a queue (ready now) and wake its waiting consumers.
    pub fn enqueue(&mut self, queue: &str, envelope: Envelope, redelivered: bool) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(q) = self.queues.get_mut(queue) {
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
            for w in q.waiting.drain(..) {
                w.wake();
            }
        }
    }

    pub fn dead_letter(&mut self, queue: &str, mut envelope: Envelope, failure: &Failure) {
        failure.record(&mut envelope);
        envelope
            .headers
            .insert(header::DEAD_LETTERED_AT.into(), format_time(&Utc::now()));
        if let Some(q) = self.queues.get_mut(queue) {
            q.dead.push_back(envelope);
        }
    }

    /// Take the next live message, dead-lettering expired ones on the way.
    pub fn take(&mut self, queue: &str) -> Option<Stored> {
        loop {
            let q = self.queues.get_mut(queue)?;
            let stored = q.ready.pop()?;
            match stored.expires_at {
                Some(at) if at <= Instant::now() => {
                    let failure = Failure::now(
                        &stored.envelope,
                        queue,
                        "expired",
                        "message TTL expired before delivery",
                    );
                    self.dead_letter(queue, stored.envelope, &failure);
                }
                _ => {
                    q.in_flight.fetch_add(1, AtomicOrdering::Relaxed);
                    return Some(stored);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn fx_hashes_tell_names_apart_and_routes_follow_bindings() {
        let h = BuildHasherDefault::<FxHasher>::default();
        assert_ne!(h.hash_one("svc.a"), h.hash_one("svc.b"));
        assert_eq!(h.hash_one("svc.a"), h.hash_one("svc.a"));
        let mut s = State::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("q.a"), Arc::from("q.b"));
        s.queues
            .insert(a.clone(), QueueState::new(&QueueSpec::new("q.a", "x.#")));
        s.queues
            .insert(b.clone(), QueueState::new(&QueueSpec::new("q.b", "x.y")));
        s.bind("ex", "x.#", &a);
        assert_eq!(s.route("ex", "x.y").len(), 1);
        // A new binding invalidates what was cached.
        s.bind("ex", "x.y", &b);
        assert_eq!(&*s.route("ex", "x.y"), &[a.clone(), b.clone()]);
        assert!(s.route("other", "x.y").is_empty());
        s.remove_queue("q.a");
        assert_eq!(&*s.route("ex", "x.y"), &[b]);
    }
}
