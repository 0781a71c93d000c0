//! The record of one run: what the broker confirmed, what each service handled, what ended in
//! the dead letters, which faults ran. Recording is cheap (a push under a lock); judging
//! happens once, at the end ([`History::check`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::recorder::Recorder;
use crate::timeline::{FaultReport, Timeline};
use crate::verdict::{self, Verdict};

/// A publish the broker confirmed (or, in [`History::unconfirmed`], one it never did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event id.
    pub id: String,
    /// The ordering key (Herald's envelope subject, or the routing key).
    pub key: String,
    /// When the publish call started, since the history began.
    pub sent: Duration,
    /// When it returned.
    pub confirmed: Duration,
}

/// One successful handling of an event by a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The consuming service.
    pub service: String,
    /// The event id.
    pub id: String,
    /// The ordering key.
    pub key: String,
    /// The delivery attempt (1 for the first).
    pub attempt: u32,
    /// When, since the history began.
    pub at: Duration,
}

/// A fault injected during the run (a command that killed a broker node, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// What ran, for the report.
    pub label: String,
    /// When it started, since the history began.
    pub started: Duration,
    /// When it finished.
    pub ended: Duration,
    /// Whether it reported success.
    pub succeeded: bool,
}

#[derive(Default)]
pub(crate) struct State {
    pub published: Vec<Published>,
    pub unconfirmed: Vec<Published>,
    pub handled: Vec<Handled>,
    /// (service, id) of every effect applied: a handler's work that an inbox guards.
    pub effects: Vec<(String, String)>,
    pub dead: HashSet<(String, String)>,
    pub faults: Vec<Fault>,
    /// The services whose handling order per key Herald promises (one consumer, in order).
    pub ordered: Vec<String>,
}

pub(crate) struct Inner {
    started: Instant,
    /// The services that must each handle (or dead-letter) every confirmed event.
    pub consumers: Vec<String>,
    pub state: Mutex<State>,
}

/// The history of one run. Cheap to clone; clones record into the same history.
///
/// ```
/// use herald_check::History;
///
/// let history = History::new(["billing"]).promise_order("billing");
/// let sent = history.now();
/// history.confirmed("id-1", "order-7", sent);
/// history.confirmed("id-2", "order-7", sent);
/// history.handled("billing", "id-2", "order-7", 1);
/// history.handled("billing", "id-1", "order-7", 1);
/// history.handled("billing", "id-2", "order-7", 2);
/// let verdict = history.check();
/// assert_eq!((verdict.events, verdict.lost, verdict.duplicates, verdict.reordered), (2, 0, 1, 1));
/// ```
#[derive(Clone)]
pub struct History {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl History {
    /// A history in which every confirmed event must reach each of `consumers`.
    pub fn new<I, S>(consumers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        History {
            inner: Arc::new(Inner {
                started: Instant::now(),
                consumers: consumers.into_iter().map(Into::into).collect(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Judge `service`'s handling order per key: Herald promises it when the service consumes
    /// its queue with one consumer and one handler call at a time, and the events of one key were
    /// published one after another (each after the previous one was confirmed).
    pub fn promise_order(self, service: impl Into<String>) -> Self {
        lock(&self.inner.state).ordered.push(service.into());
        self
    }

    /// Time since the history began: pass it as `sent` when a publish call starts.
    pub fn now(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The broker confirmed event `id` (ordering key `key`), published from `sent` until now.
    /// The events of one key are in order in the order they were recorded here.
    pub fn confirmed(&self, id: &str, key: &str, sent: Duration) {
        let p = self.publish(id, key, sent);
        lock(&self.inner.state).published.push(p);
    }

    /// A publish of `id` failed: the broker may or may not have it. Never judged lost; a
    /// handling of it is not unexpected.
    pub fn unconfirmed(&self, id: &str, key: &str, sent: Duration) {
        let p = self.publish(id, key, sent);
        lock(&self.inner.state).unconfirmed.push(p);
    }

    fn publish(&self, id: &str, key: &str, sent: Duration) -> Published {
        Published {
            id: id.to_string(),
            key: key.to_string(),
            sent,
            confirmed: self.now(),
        }
    }

    /// `service` handled event `id` successfully on delivery attempt `attempt`.
    pub fn handled(&self, service: &str, id: &str, key: &str, attempt: u32) {
        let h = Handled {
            service: service.to_string(),
            id: id.to_string(),
            key: key.to_string(),
            attempt,
            at: self.now(),
        };
        lock(&self.inner.state).handled.push(h);
    }

    /// `service`'s handler applied its effect for `id` (past an inbox, when one guards it).
    /// Recording effects makes the verdict count duplicate effects apart from duplicate
    /// handlings.
    pub fn effect(&self, service: &str, id: &str) {
        lock(&self.inner.state)
            .effects
            .push((service.to_string(), id.to_string()));
    }

    /// Event `id` is in `service`'s dead letters (read back from the broker). Recording the same
    /// one again changes nothing.
    pub fn dead_lettered(&self, service: &str, id: &str) {
        lock(&self.inner.state)
            .dead
            .insert((service.to_string(), id.to_string()));
    }

    /// A fault ran from `started` until now.
    pub fn fault(&self, label: &str, started: Duration, succeeded: bool) {
        let f = Fault {
            label: label.to_string(),
            started,
            ended: self.now(),
            succeeded,
        };
        lock(&self.inner.state).faults.push(f);
    }

    /// A [`Layer`](herald::middleware::Layer) that records every successful handling of
    /// `service`: add it to the subscription's options (`SubscribeOptions::layer`).
    pub fn recorder(&self, service: &str) -> Recorder {
        Recorder::new(self.clone(), service)
    }

    /// Confirmed publishes so far.
    pub fn confirmed_count(&self) -> usize {
        lock(&self.inner.state).published.len()
    }

    /// Handlings recorded so far (every one, duplicates included): a run is quiet when this
    /// stops changing.
    pub fn handling_count(&self) -> usize {
        lock(&self.inner.state).handled.len()
    }

    /// Distinct (service, event) pairs handled so far.
    pub fn handled_pairs(&self) -> u64 {
        let st = lock(&self.inner.state);
        let pairs: HashSet<(&str, &str)> = st
            .handled
            .iter()
            .map(|h| (h.service.as_str(), h.id.as_str()))
            .collect();
        pairs.len() as u64
    }

    /// Confirmed (service, event) pairs neither handled nor dead-lettered yet.
    pub fn pending(&self) -> u64 {
        let st = lock(&self.inner.state);
        verdict::pending(&self.inner.consumers, &st)
    }

    /// Judge the run: see [`Verdict`]. Call it once the run is quiescent
    /// ([`wait_for_quiescence`](crate::wait_for_quiescence)), or what is still in flight counts as
    /// lost.
    pub fn check(&self) -> Verdict {
        let st = lock(&self.inner.state);
        verdict::judge(&self.inner.consumers, &st)
    }

    /// Publish latency and handling gaps around each recorded fault.
    pub fn faults(&self) -> Vec<FaultReport> {
        let st = lock(&self.inner.state);
        Timeline::new(&st.published, &st.handled).around(&st.faults)
    }

    /// Every confirmed publish, in the order recorded.
    pub fn published(&self) -> Vec<Published> {
        lock(&self.inner.state).published.clone()
    }
}
