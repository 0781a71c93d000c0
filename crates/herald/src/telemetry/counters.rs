//! Counters the bus keeps for reports and health: what it published and what became of what it
//! consumed (also reachable as `herald::bus::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters (shared by the bus and its consumers).
#[derive(Debug, Default)]
pub struct Metrics {
    published: AtomicU64,
    handled: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    settle_errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Events durably accepted by the transport.
    pub published: u64,
    /// Deliveries handled successfully (acked).
    pub handled: u64,
    /// Deliveries that failed and were scheduled for redelivery.
    pub retried: u64,
    /// Deliveries moved to the dead letters.
    pub dead_lettered: u64,
    /// Deliveries given back without counting (shutdown, open circuit).
    pub released: u64,
    /// Settlements the transport refused (the message is redelivered later).
    pub settle_errors: u64,
}

impl Metrics {
    pub(crate) fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn handled(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn released(&self) {
        self.released.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn settle_error(&self) {
        self.settle_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Read every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            published: self.published.load(Ordering::Relaxed),
            handled: self.handled.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            settle_errors: self.settle_errors.load(Ordering::Relaxed),
        }
    }
}
