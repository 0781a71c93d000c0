//! Outbox metrics: `herald_outbox_pending` (rows not yet published) and
//! `herald_outbox_oldest_age_seconds`, through the `metrics` facade. The relay loop reads the
//! store's [`OutboxStatus`] at most every [`STATUS_INTERVAL`] (a count over the table, so not on
//! every round); anything else that reads a status (`herald outbox status`, `herald serve`) can
//! publish it with [`record_status`].
//!
//! ```
//! use herald_outbox::{telemetry, OutboxStatus};
//! // With no recorder installed this records nothing, and costs next to nothing.
//! telemetry::record_status(&OutboxStatus::default());
//! ```

use std::time::{Duration, Instant};

use herald::telemetry::names::{OUTBOX_OLDEST_AGE, OUTBOX_PENDING};

use crate::status::OutboxStatus;
use crate::store::OutboxStore;

/// How often the relay loop reads the outbox status for the gauges.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Set the outbox gauges from a status: pending = [`OutboxStatus::backlog`] (pending, processing
/// and failed rows), oldest age = seconds since the oldest unpublished row was staged (0 when
/// there is none).
pub fn record_status(status: &OutboxStatus) {
    metrics::gauge!(OUTBOX_PENDING).set(status.backlog() as f64);
    metrics::gauge!(OUTBOX_OLDEST_AGE).set(status.oldest_pending_age_secs.unwrap_or(0.0));
}

/// Reads the store's status into the gauges when [`STATUS_INTERVAL`] has passed since the last
/// read (the first call reads at once). Owned by one relay loop.
#[derive(Debug, Default)]
pub(crate) struct StatusSampler {
    last: Option<Instant>,
}

impl StatusSampler {
    /// Read and record the status if it is due. A failed read is logged, not fatal: the relay's
    /// work matters more than its gauges.
    pub async fn tick<S: OutboxStore>(&mut self, store: &S) {
        if self.last.is_some_and(|t| t.elapsed() < STATUS_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        match store.status().await {
            Ok(status) => record_status(&status),
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox status for metrics failed; will try again")
            }
        }
    }
}
