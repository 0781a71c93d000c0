//! The relay: claims staged rows, publishes them through Herald in order per aggregate, marks them
//! sent, retries failures with backoff, applies retention.
//!
//! Delivery is at-least-once. A relay killed between publishing and marking a batch `sent` leaves
//! the rows `processing`; their lease expires and a relay publishes them again. Consumers absorb
//! the duplicates with the [inbox](crate::inbox).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::Publisher;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::row::ClaimedEvent;
use crate::store::{OutboxStore, Retention};

/// How long after its last busy round a relay keeps looking for late stagers.
const LINGER: Duration = Duration::from_millis(500);
/// How often it looks in that time.
const LINGER_POLL: Duration = Duration::from_millis(20);

/// Exponential backoff for failed rows: `base * 2^(attempts-1)`, capped at `max`, ±20% jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBackoff {
    /// The delay after the first failure.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryBackoff {
    /// The delay after `attempts` failed attempts (1 for the first).
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        let jitter = rand::random::<f64>() * 0.4 + 0.8;
        raw.mul_f64(jitter).min(self.max)
    }
}

/// Called after each successful publish with the number of events, before they are marked sent.
pub type AfterPublish = Arc<dyn Fn(usize) + Send + Sync>;

/// How a relay works. Defaults suit most services.
#[derive(Clone)]
pub struct RelayConfig {
    /// Rows claimed and published per round.
    pub batch_size: usize,
    /// How long to wait between rounds when idle (a NOTIFY wakes the relay earlier).
    pub poll_interval: Duration,
    /// How long a claim holds before another relay may take the rows over. Must exceed the
    /// longest publish of one batch.
    pub lease: Duration,
    /// Backoff for failed rows.
    pub retry: RetryBackoff,
    /// What to do with published rows.
    pub retention: Retention,
    /// How often to apply the retention policy.
    pub prune_every: Duration,
    /// Publish events even when no queue is bound for their routing key.
    pub allow_unroutable: bool,
    /// A hook called after each publish, before the rows are marked sent (tests, metrics).
    pub after_publish: Option<AfterPublish>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            retry: RetryBackoff::default(),
            retention: Retention::default(),
            prune_every: Duration::from_secs(60),
            allow_unroutable: false,
            after_publish: None,
        }
    }
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("lease", &self.lease)
            .field("retry", &self.retry)
            .field("retention", &self.retention)
            .field("allow_unroutable", &self.allow_unroutable)
            .finish()
    }
}

/// Counters of one relay.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Events published.
    pub published: AtomicU64,
    /// Publish attempts that failed.
    pub failed: AtomicU64,
    /// Rounds that claimed something.
    pub rounds: AtomicU64,
    /// Rows deleted or archived by retention.
    pub pruned: AtomicU64,
    /// Time spent claiming rows, in microseconds.
    pub claim_micros: AtomicU64,
    /// Time spent publishing (waiting for the broker's confirms), in microseconds.
    pub publish_micros: AtomicU64,
    /// Time spent recording outcomes (sent, failed), in microseconds.
    pub record_micros: AtomicU64,
}

fn add_elapsed(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published and marked sent.
    pub published: usize,
    /// Rows that failed and wait for a retry.
    pub failed: usize,
    /// Rows given back because an earlier row of their aggregate failed.
    pub released: usize,
}

/// Publishes what was staged in an outbox. Run one or several (on any hosts): they share the
/// work through row claims.
///
/// # Scaling
///
/// A relay never claims a row while an earlier row of the same aggregate is claimed by another
/// relay, so relays work side by side on *different* aggregates. Several relays help when a
/// batch covers a fraction of the aggregates with work (e.g. 2 relays of 500 over 1,000 busy
/// aggregates); with a batch larger than the number of busy aggregates, one relay does it all.
///
/// ```
/// use std::sync::Arc;
/// use herald::{Bus, MessageOptions};
/// use herald_outbox::sqlite::{SqliteOutbox, SqliteStore};
/// use herald_outbox::{Relay, RelayConfig, Status};
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize, herald::Event)]
/// #[event(name = "order.placed")]
/// struct OrderPlaced { order_id: u64 }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let db_path = dir.path().join("app.db");
/// let outbox = SqliteOutbox::new("order-service")?;
/// let mut db = rusqlite::Connection::open(&db_path).unwrap();
/// outbox.migrate(&db)?;
/// let tx = db.transaction().unwrap();
/// outbox.stage_with(&tx, &OrderPlaced { order_id: 7 }, &MessageOptions::default().subject("order-7"))?;
/// tx.commit().unwrap();
///
/// let bus = Bus::builder().service("order-service").broker("memory://relay-doc").allow_unroutable(true).build().await?;
/// let store = Arc::new(SqliteStore::open(&db_path, outbox.clone())?);
/// let relay = Relay::new(store, bus.publisher().clone(), RelayConfig::default());
/// assert_eq!(relay.run_once().await?.published, 1);
/// assert_eq!(outbox.status(&db)?.count(Status::Sent), 1);
/// # Ok::<(), herald_outbox::Error>(())
/// # }).unwrap();
/// ```
pub struct Relay<S: OutboxStore> {
    store: Arc<S>,
    publisher: Publisher,
    config: RelayConfig,
    metrics: Arc<RelayMetrics>,
}

impl<S: OutboxStore> Relay<S> {
    /// A relay publishing `store`'s rows through `publisher` (any transport).
    pub fn new(store: Arc<S>, publisher: Publisher, config: RelayConfig) -> Self {
        Relay {
            store,
            publisher,
            config,
            metrics: Arc::new(RelayMetrics::default()),
        }
    }

    /// This relay's counters.
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.metrics.clone()
    }

    /// Run until `cancel` fires: rounds back to back while they find work, then looks again
    /// every few milliseconds for a short while, then waits for a NOTIFY or the poll interval.
    /// Database and broker errors are logged and retried; the relay never gives up on its own.
    pub async fn run(&self, cancel: CancellationToken) {
        let mut last_prune: Option<Instant> = None;
        let mut error_backoff = Duration::from_millis(100);
        let mut status_gauges = crate::telemetry::StatusSampler::default();
        // When the last round that found work ended: for a short while after it the relay looks
        // again every few milliseconds, because a stager that committed just after the one that
        // woke it sends no NOTIFY of its own (one notifier at a time: see migration 0003).
        let mut last_work: Option<Instant> = None;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            status_gauges.tick(&*self.store).await;
            if last_prune.is_none_or(|t| t.elapsed() >= self.config.prune_every) {
                last_prune = Some(Instant::now());
                if let Err(e) = self.prune().await {
                    tracing::warn!(error = %e, "outbox retention failed; will try again");
                }
            }
            let wait = match self.run_once().await {
                Ok(round) if round.claimed > 0 => {
                    error_backoff = Duration::from_millis(100);
                    last_work = Some(Instant::now());
                    continue;
                }
                Ok(_) => {
                    error_backoff = Duration::from_millis(100);
                    last_work
                        .filter(|t| t.elapsed() < LINGER)
                        .map(|_| LINGER_POLL.min(self.config.poll_interval))
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?error_backoff, "outbox relay round failed");
                    let wait = error_backoff;
                    error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
                    Some(wait)
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = async {
                    match wait {
                        Some(w) => tokio::time::sleep(w).await,
                        None => self.store.wait_for_work(self.config.poll_interval).await,
                    }
                } => {}
            }
        }
    }

    /// Apply the retention policy once.
    pub async fn prune(&self) -> Result<u64> {
        let n = self.store.prune(self.config.retention).await?;
        if n > 0 {
            tracing::debug!(rows = n, "outbox retention");
            self.metrics.pruned.fetch_add(n, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// One round: claim, publish, record.
    pub async fn run_once(&self) -> Result<Round> {
        let token = uuid::Uuid::new_v4().to_string();
        let t0 = Instant::now();
        let mut rows = self
            .store
            .claim(self.config.batch_size.max(1), &token, self.config.lease)
            .await?;
        add_elapsed(&self.metrics.claim_micros, t0);
        if rows.is_empty() {
            return Ok(Round::default());
        }
        rows.sort_by_key(|r| r.seq);
        self.metrics.rounds.fetch_add(1, Ordering::Relaxed);
        let mut round = Round {
            claimed: rows.len(),
            ..Round::default()
        };
        let envelopes = rows.iter().map(|r| r.envelope.clone()).collect();
        let t1 = Instant::now();
        let published = self
            .publisher
            .publish_envelopes(envelopes, self.config.allow_unroutable)
            .await;
        add_elapsed(&self.metrics.publish_micros, t1);
        match published {
            Ok(()) => {
                self.published(rows.len());
                let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
                let t2 = Instant::now();
                self.store.mark_sent(&seqs, &token).await?;
                add_elapsed(&self.metrics.record_micros, t2);
                round.published = rows.len();
            }
            Err(e) if rows.len() == 1 => {
                self.fail(&rows[0], &token, &e.to_string()).await?;
                round.failed = 1;
            }
            Err(e) => {
                tracing::debug!(error = %e, rows = rows.len(), "batch publish failed; publishing one by one");
                self.one_by_one(&rows, &token, &mut round).await?;
            }
        }
        Ok(round)
    }

    async fn one_by_one(
        &self,
        rows: &[ClaimedEvent],
        token: &str,
        round: &mut Round,
    ) -> Result<()> {
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut sent = Vec::new();
        let mut released = Vec::new();
        for row in rows {
            if blocked.contains(row.aggregate.as_str()) {
                released.push(row.seq);
                continue;
            }
            match self
                .publisher
                .publish_envelopes(vec![row.envelope.clone()], self.config.allow_unroutable)
                .await
            {
                Ok(()) => {
                    self.published(1);
                    sent.push(row.seq);
                }
                Err(e) => {
                    self.fail(row, token, &e.to_string()).await?;
                    round.failed += 1;
                    blocked.insert(row.aggregate.as_str());
                }
            }
        }
        self.store.mark_sent(&sent, token).await?;
        self.store.release(&released, token).await?;
        round.published = sent.len();
        round.released = released.len();
        Ok(())
    }

    fn published(&self, n: usize) {
        if let Some(hook) = &self.config.after_publish {
            hook(n);
        }
        self.metrics
            .published
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    async fn fail(&self, row: &ClaimedEvent, token: &str, error: &str) -> Result<()> {
        let delay = self.config.retry.delay(row.attempts);
        tracing::warn!(event_id = %row.envelope.id, attempts = row.attempts, retry_in = ?delay, %error, "outbox publish failed");
        self.metrics.failed.fetch_add(1, Ordering::Relaxed);
        self.store.mark_failed(row.seq, token, error, delay).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = RetryBackoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let d1 = b.delay(1);
        assert!(
            d1 >= Duration::from_millis(80) && d1 <= Duration::from_millis(120),
            "{d1:?}"
        );
        let d3 = b.delay(3);
        assert!(
            d3 >= Duration::from_millis(320) && d3 <= Duration::from_millis(480),
            "{d3:?}"
        );
        assert!(b.delay(30) <= Duration::from_secs(1));
    }
}
