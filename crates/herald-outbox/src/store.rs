//! What the relay needs from an outbox table, whatever the database.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::row::ClaimedEvent;
use crate::status::OutboxStatus;

/// What to do with published rows once they are old enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep every row (the table grows; prune it yourself).
    Keep,
    /// Delete `sent` and `completed` rows older than this.
    Delete(Duration),
    /// Move `sent` and `completed` rows older than this to the archive table.
    Archive(Duration),
}

impl Default for Retention {
    fn default() -> Self {
        Retention::Delete(Duration::from_secs(7 * 24 * 3600))
    }
}

/// An outbox table as the [`Relay`](crate::Relay) sees it. [`PgStore`](crate::postgres::PgStore)
/// and [`SqliteStore`](crate::sqlite::SqliteStore) implement it.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Claim up to `limit` publishable rows under `token`, in staging order, leasing them for
    /// `lease`: status `processing`, attempts + 1. A row is publishable when it is pending, failed
    /// and due, or processing with an expired lease, and no earlier row of its aggregate is still
    /// unpublished outside this claim.
    async fn claim(&self, limit: usize, token: &str, lease: Duration) -> Result<Vec<ClaimedEvent>>;

    /// Mark claimed rows `sent`. Rows whose claim was taken over (lease expired) are left alone.
    async fn mark_sent(&self, seqs: &[i64], token: &str) -> Result<u64>;

    /// Mark a claimed row `failed` with `error`, due again after `retry_in`.
    async fn mark_failed(
        &self,
        seq: i64,
        token: &str,
        error: &str,
        retry_in: Duration,
    ) -> Result<()>;

    /// Give claimed rows back as `pending` without counting the attempt.
    async fn release(&self, seqs: &[i64], token: &str) -> Result<()>;

    /// Apply a retention policy; returns how many rows were deleted or archived.
    async fn prune(&self, retention: Retention) -> Result<u64>;

    /// Counts by status, oldest pending age, processing times.
    async fn status(&self) -> Result<OutboxStatus>;

    /// Wait until new rows may be there or `max` elapsed. The default sleeps; PostgreSQL wakes on
    /// `NOTIFY` (a hint only: polling stays the source of truth).
    async fn wait_for_work(&self, max: Duration) {
        tokio::time::sleep(max).await;
    }
}
