//! What a [`TestApp`](super::TestApp) saw: every publish, and every delivery from the moment
//! a handler call took it to its settlement, with views that read like the assertions a test
//! makes.

use std::fmt;
use std::sync::Mutex;

use serde::de::DeserializeOwned;

use crate::envelope::Envelope;
use crate::event::Event;
use crate::telemetry::observe::Observe;
use crate::transport::Outcome;

/// How one delivery was settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// Handled: acknowledged.
    Acked,
    /// Failed; to be delivered again after a delay.
    Retried {
        /// The error recorded for this attempt.
        reason: String,
    },
    /// Moved to the dead letters.
    DeadLettered {
        /// The error recorded, with the attempt count.
        reason: String,
        /// The failure kind (`handler`, `decode`, `timeout`, `panic`, ...).
        kind: String,
    },
    /// Given back without counting an attempt (open circuit, shutdown).
    Released,
}

/// One settled delivery.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The queue it came from (without the harness's isolation prefix).
    pub queue: String,
    /// The message as delivered.
    pub envelope: Envelope,
    /// What became of it.
    pub settlement: Settlement,
}

/// One publish of the app's bus (the test's own publishes included).
#[derive(Debug, Clone)]
pub struct Published {
    /// The exchange it went to.
    pub exchange: String,
    /// The message.
    pub envelope: Envelope,
}

#[derive(Default)]
struct Log {
    published: Vec<Published>,
    settled: Vec<Settled>,
    taken: u64,
}

/// The harness's observer: an append-only log.
pub(super) struct Recording {
    log: Mutex<Log>,
    prefix: String,
}

impl Recording {
    pub fn new(prefix: String) -> Self {
        Recording {
            log: Mutex::default(),
            prefix,
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deliveries taken and not yet settled.
    pub fn in_flight(&self) -> u64 {
        let log = self.log();
        log.taken.saturating_sub(log.settled.len() as u64)
    }

    /// How many records there are (a change means something happened).
    pub fn len(&self) -> usize {
        let log = self.log();
        log.published.len() + log.settled.len()
    }

    pub fn published(&self) -> Vec<Published> {
        self.log().published.clone()
    }

    pub fn settled(&self) -> Vec<Settled> {
        self.log().settled.clone()
    }
}

impl Observe for Recording {
    fn published(&self, exchange: &str, envelopes: &[Envelope]) {
        let mut log = self.log();
        for e in envelopes {
            log.published.push(Published {
                exchange: exchange.to_string(),
                envelope: e.clone(),
            });
        }
    }

    fn taken(&self, _queue: &str, _envelope: &Envelope) {
        self.log().taken += 1;
    }

    fn settled(&self, queue: &str, envelope: &Envelope, outcome: &Outcome) {
        let settlement = match outcome {
            Outcome::Ack => Settlement::Acked,
            Outcome::Retry { failure, .. } => Settlement::Retried {
                reason: failure.error.clone(),
            },
            Outcome::DeadLetter(failure) => Settlement::DeadLettered {
                reason: failure.error.clone(),
                kind: failure.kind.clone(),
            },
            Outcome::Release { .. } => Settlement::Released,
        };
        let queue = queue
            .strip_prefix(&self.prefix)
            .unwrap_or(queue)
            .to_string();
        self.log().settled.push(Settled {
            queue,
            envelope: envelope.clone(),
            settlement,
        });
    }
}

/// Events of one type a test asks about, decoded, each with its envelope; the methods assert
/// the way a test reads ("handled once", "published one with ...", "dead-lettered with
/// reason ...") and fail with what was seen instead.
pub struct Seen<T> {
    what: String,
    items: Vec<(T, Envelope, Option<String>)>,
}

impl<T> Seen<T> {
    pub(super) fn new(what: String, items: Vec<(T, Envelope, Option<String>)>) -> Self {
        Seen { what, items }
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The events, in the order seen.
    pub fn events(&self) -> Vec<&T> {
        self.items.iter().map(|(t, _, _)| t).collect()
    }

    /// Their envelopes (ids, correlation, headers).
    pub fn envelopes(&self) -> Vec<&Envelope> {
        self.items.iter().map(|(_, e, _)| e).collect()
    }

    /// The reasons recorded (dead letters, retries), in order.
    pub fn reasons(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter_map(|(_, _, r)| r.as_deref())
            .collect()
    }
}

impl<T: fmt::Debug> Seen<T> {
    /// The one event seen; fails unless there was exactly one.
    #[track_caller]
    pub fn once(&self) -> &T {
        match self.items.as_slice() {
            [(t, _, _)] => t,
            _ => panic!(
                "expected {} exactly once, saw it {} times: {:?}",
                self.what,
                self.items.len(),
                self.events()
            ),
        }
    }

    /// Fails unless there were none.
    #[track_caller]
    pub fn none(&self) {
        assert!(
            self.items.is_empty(),
            "expected no {}, saw {:?}",
            self.what,
            self.events()
        );
    }

    /// The one event `matches` accepts; fails unless exactly one does.
    #[track_caller]
    pub fn one_where(&self, matches: impl Fn(&T) -> bool) -> &T {
        let found: Vec<&T> = self
            .items
            .iter()
            .map(|(t, _, _)| t)
            .filter(|t| matches(t))
            .collect();
        match found.as_slice() {
            [t] => t,
            _ => panic!(
                "expected exactly one {} matching, {} matched among {:?}",
                self.what,
                found.len(),
                self.events()
            ),
        }
    }

    /// The first event whose reason contains `text`; fails when none does.
    #[track_caller]
    pub fn with_reason(&self, text: &str) -> &T {
        match self
            .items
            .iter()
            .find(|(_, _, r)| r.as_deref().is_some_and(|r| r.contains(text)))
        {
            Some((t, _, _)) => t,
            None => panic!(
                "expected {} with a reason containing {text:?}, the reasons were {:?}",
                self.what,
                self.reasons()
            ),
        }
    }
}

/// The envelopes of event type `E`, decoded.
pub(super) fn decoded<E: Event + DeserializeOwned>(
    envelopes: impl IntoIterator<Item = (Envelope, Option<String>)>,
) -> Vec<(E, Envelope, Option<String>)> {
    envelopes
        .into_iter()
        .filter(|(e, _)| e.event_type == E::NAME)
        .filter_map(|(e, r)| serde_json::from_slice::<E>(&e.body).ok().map(|t| (t, e, r)))
        .collect()
}
