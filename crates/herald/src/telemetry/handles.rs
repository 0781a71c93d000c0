//! Metric handles registered once and kept, so the hot path never looks a metric up by its
//! labels: the publisher caches one set per event type, each consumer one per event type it
//! sees on its queue. Without a recorder installed every handle is a no-op.
//!
//! Handles are bound to the recorder installed when they are registered: install the recorder
//! (e.g. `herald_http::metrics::install_prometheus`) before building the bus.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use super::names::*;
use crate::error::Error;

/// Find `event_type` in a small cache or register it. A queue or a publisher sees a handful of
/// event types, so a linear scan beats hashing; a read lock keeps concurrent publishers from
/// queueing behind each other once every type is known.
fn cached<T>(
    cache: &RwLock<Vec<Arc<T>>>,
    event_type: &str,
    key: impl Fn(&T) -> &str,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    {
        let entries = cache.read().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = entries.iter().find(|e| key(e) == event_type) {
            return found.clone();
        }
    }
    let mut entries = cache.write().unwrap_or_else(|e| e.into_inner());
    // Another caller may have registered it between the two locks.
    if let Some(found) = entries.iter().find(|e| key(e) == event_type) {
        return found.clone();
    }
    let made = Arc::new(make());
    entries.push(made.clone());
    made
}

/// The publisher's counters for one event type.
pub(crate) struct PublishCounters {
    event_type: Box<str>,
    published: Counter,
    confirmed: Counter,
    returned: Counter,
}

/// The publisher's handles, per event type.
#[derive(Default)]
pub(crate) struct PublishTelemetry {
    by_type: RwLock<Vec<Arc<PublishCounters>>>,
}

impl PublishCounters {
    /// Record one publish call of `n` events of this type and its result.
    pub fn record(&self, n: u64, result: &Result<(), Error>) {
        self.published.increment(n);
        match result {
            Ok(()) => self.confirmed.increment(n),
            Err(Error::Unroutable { .. }) => self.returned.increment(n),
            Err(_) => {}
        }
    }
}

impl PublishTelemetry {
    /// The counters of `event_type` (registered on first sight).
    pub fn counters(&self, service: &str, event_type: &str) -> Arc<PublishCounters> {
        cached(
            &self.by_type,
            event_type,
            |c| &c.event_type,
            || {
                let labels = [
                    (LABEL_SERVICE, service.to_string()),
                    (LABEL_EVENT_TYPE, event_type.to_string()),
                ];
                PublishCounters {
                    event_type: event_type.into(),
                    published: metrics::counter!(PUBLISHED, &labels),
                    confirmed: metrics::counter!(CONFIRMED, &labels),
                    returned: metrics::counter!(RETURNED, &labels),
                }
            },
        )
    }
}

/// A consumer's counters for one event type on its queue.
pub(crate) struct ConsumeCounters {
    queue: Arc<str>,
    event_type: Box<str>,
    pub consumed: Counter,
    pub acked: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub released: Counter,
    pub duration: Histogram,
}

impl ConsumeCounters {
    /// A handler error of this kind. Looked up by label: failures are not the hot path, and
    /// the kind is only known here.
    pub fn failed(&self, kind: &'static str) {
        metrics::counter!(
            FAILED,
            LABEL_QUEUE => self.queue.to_string(),
            LABEL_EVENT_TYPE => self.event_type.to_string(),
            LABEL_KIND => kind
        )
        .increment(1);
    }

    /// How long the pipeline took.
    pub fn handled_in(&self, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// One subscription's handles: registered when its consumer starts.
pub(crate) struct ConsumerTelemetry {
    queue: Arc<str>,
    /// Deliveries in a handler now.
    pub in_flight: Gauge,
    /// Settlements refused by the transport.
    pub settle_errors: Counter,
    by_type: RwLock<Vec<Arc<ConsumeCounters>>>,
}

impl ConsumerTelemetry {
    /// Register the queue-wide handles.
    pub fn new(queue: Arc<str>) -> Self {
        ConsumerTelemetry {
            in_flight: metrics::gauge!(IN_FLIGHT, LABEL_QUEUE => queue.to_string()),
            settle_errors: metrics::counter!(SETTLE_ERRORS, LABEL_QUEUE => queue.to_string()),
            queue,
            by_type: RwLock::new(Vec::new()),
        }
    }

    /// The counters of `event_type` on this queue (registered on first sight).
    pub fn event(&self, event_type: &str) -> Arc<ConsumeCounters> {
        cached(
            &self.by_type,
            event_type,
            |c| &c.event_type,
            || {
                let labels = [
                    (LABEL_QUEUE, self.queue.to_string()),
                    (LABEL_EVENT_TYPE, event_type.to_string()),
                ];
                ConsumeCounters {
                    queue: self.queue.clone(),
                    event_type: event_type.into(),
                    consumed: metrics::counter!(CONSUMED, &labels),
                    acked: metrics::counter!(ACKED, &labels),
                    retried: metrics::counter!(RETRIED, &labels),
                    dead_lettered: metrics::counter!(DEAD_LETTERED, &labels),
                    released: metrics::counter!(RELEASED, &labels),
                    duration: metrics::histogram!(HANDLER_DURATION, &labels),
                }
            },
        )
    }
}
