//! Monitoring: the queries of reference 001 (counts by status, processing times) plus the age of
//! the oldest pending event, as one value for `herald outbox status` and for metrics.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// The life of an outbox row: `pending` → `processing` → `sent` → `completed` (optional, when a
/// consumer confirms), or `failed`: a publish attempt failed (the relay retries with backoff),
/// or a consumer reported it could not handle the event (its retries may still complete it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Staged, not yet claimed.
    Pending,
    /// Claimed by a relay, being published (lease until `available_at`).
    Processing,
    /// Published and confirmed by the broker.
    Sent,
    /// A consumer confirmed it handled the event.
    Completed,
    /// The last publish attempt failed; retried after a backoff.
    Failed,
}

impl Status {
    /// Every status, in life order.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Processing,
        Status::Sent,
        Status::Completed,
        Status::Failed,
    ];

    /// The name stored in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Sent => "sent",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed row, for the status report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedEvent {
    /// The event id.
    pub event_id: String,
    /// The routing key.
    pub routing_key: String,
    /// Publish attempts so far.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

/// A snapshot of an outbox table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutboxStatus {
    /// Rows per status (every status present, zero when none).
    pub counts: BTreeMap<Status, u64>,
    /// Seconds since the oldest row not yet published (pending, or failed to publish) was
    /// staged; `None` when there is none.
    pub oldest_pending_age_secs: Option<f64>,
    /// Of the `failed` rows, those a consumer marked failed after they were published (not
    /// the relay's to publish again).
    pub consumer_failed: u64,
    /// Average seconds from staging to the last status change (`processed_at - created_at`), per
    /// status: reference 001's "processing times".
    pub avg_processing_secs: BTreeMap<Status, f64>,
    /// Up to five failed rows, most attempted first.
    pub failures: Vec<FailedEvent>,
}

impl OutboxStatus {
    /// Rows with this status.
    pub fn count(&self, status: Status) -> u64 {
        self.counts.get(&status).copied().unwrap_or(0)
    }

    /// Rows not yet published: pending, processing and failed to publish.
    pub fn backlog(&self) -> u64 {
        self.count(Status::Pending)
            + self.count(Status::Processing)
            + self
                .count(Status::Failed)
                .saturating_sub(self.consumer_failed)
    }

    /// Metrics as (name, value) pairs, Prometheus-style names, for the observability exporter.
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Status::ALL
            .iter()
            .map(|s| {
                (
                    format!("herald_outbox_rows{{status=\"{s}\"}}"),
                    self.count(*s) as f64,
                )
            })
            .collect();
        out.push((
            "herald_outbox_oldest_pending_age_seconds".into(),
            self.oldest_pending_age_secs.unwrap_or(0.0),
        ));
        for (s, v) in &self.avg_processing_secs {
            out.push((
                format!("herald_outbox_avg_processing_seconds{{status=\"{s}\"}}"),
                *v,
            ));
        }
        out
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<12} {:>10} {:>16}", "status", "count", "avg time (s)")?;
        for s in Status::ALL {
            let avg = self
                .avg_processing_secs
                .get(&s)
                .map(|v| format!("{v:.3}"))
                .unwrap_or_else(|| "-".into());
            writeln!(f, "{:<12} {:>10} {:>16}", s.as_str(), self.count(s), avg)?;
        }
        match self.oldest_pending_age_secs {
            Some(a) => writeln!(f, "oldest pending: {a:.1}s")?,
            None => writeln!(f, "oldest pending: none")?,
        }
        if self.consumer_failed > 0 {
            writeln!(f, "failed by a consumer: {}", self.consumer_failed)?;
        }
        for e in &self.failures {
            writeln!(
                f,
                "failed {} ({}) after {} attempts: {}",
                e.event_id, e.routing_key, e.attempts, e.error
            )?;
        }
        Ok(())
    }
}
