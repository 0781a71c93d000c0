//! The loop that feeds a projection from the store: catch up from the checkpoint, then follow
//! new events; sample the lag; honour rebuild requests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald::health::{ComponentHealth, HealthCheck, HealthStatus};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Projector;
use crate::error::Result;
use crate::recorded::Checkpoint;
use crate::store::EventStore;
use crate::telemetry::{PROJECTION_APPLIED, PROJECTION_LAG_EVENTS, PROJECTION_LAG_SECONDS};

/// How often the runner measures its lag and looks for a rebuild request.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What a runner reports about itself, for health checks, dashboards and tests.
#[derive(Debug)]
pub struct ProjectionStatus {
    name: String,
    inner: Mutex<StatusView>,
}

/// A copy of a runner's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatusView {
    /// The last event applied.
    pub checkpoint: Checkpoint,
    /// Events applied by this runner since it started.
    pub applied: u64,
    /// Events recorded after the checkpoint, at the last sample.
    pub lag_events: u64,
    /// Seconds since the oldest unapplied event was recorded, at the last sample.
    pub lag_seconds: f64,
    /// The last failure, until a batch succeeds again.
    pub last_error: Option<String>,
    /// The run loop is running.
    pub running: bool,
    /// Rebuilds this runner carried out.
    pub rebuilds: u64,
}

impl ProjectionStatus {
    fn new(name: &str) -> Self {
        ProjectionStatus {
            name: name.to_string(),
            inner: Mutex::new(StatusView::default()),
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A copy of the current status.
    pub fn view(&self) -> StatusView {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut StatusView)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// Runs one projection over one store.
pub struct ProjectionRunner {
    store: Arc<dyn EventStore>,
    projector: Arc<dyn Projector>,
    batch_size: usize,
    poll_interval: Duration,
    status: Arc<ProjectionStatus>,
}

impl ProjectionRunner {
    /// Feed `projector` from `store`: batches of 500, polling every 100 ms when idle (appends from
    /// this process wake it at once).
    pub fn new(store: Arc<dyn EventStore>, projector: Arc<dyn Projector>) -> Self {
        let status = Arc::new(ProjectionStatus::new(projector.name()));
        ProjectionRunner {
            store,
            projector,
            batch_size: 500,
            poll_interval: Duration::from_millis(100),
            status,
        }
    }

    /// Events applied per transaction.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long to wait for new events when caught up.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The runner's status, shared.
    pub fn status(&self) -> Arc<ProjectionStatus> {
        self.status.clone()
    }

    /// A health check for this runner: `degraded` past `threshold` of lag (or after a failed
    /// batch), `down` past four times that or when the loop is not running.
    pub fn health(&self, threshold: Duration) -> ProjectionHealth {
        ProjectionHealth {
            status: self.status.clone(),
            threshold,
        }
    }

    /// Prepare the read model, honour a pending rebuild request, and apply every event readable
    /// now. Returns how many were applied.
    pub async fn catch_up(&self) -> Result<u64> {
        self.projector.prepare().await?;
        let mut checkpoint = self.position().await?;
        let mut applied = 0;
        loop {
            let (n, next) = self.step(checkpoint).await?;
            if n == 0 {
                return Ok(applied);
            }
            applied += n;
            checkpoint = next;
        }
    }

    /// Run until `cancel` fires. Failures (database down, a projection error) are logged,
    /// reported in the status and retried with backoff; nothing is skipped.
    pub async fn run(&self, cancel: CancellationToken) {
        self.status.update(|s| s.running = true);
        let mut backoff = Duration::from_millis(100);
        let mut checkpoint = None;
        let mut sampled: Option<Instant> = None;
        while !cancel.is_cancelled() {
            let outcome = async {
                let current = match checkpoint {
                    Some(c) if sampled.is_some_and(|t: Instant| t.elapsed() < SAMPLE_EVERY) => c,
                    _ => {
                        if checkpoint.is_none() {
                            self.projector.prepare().await?;
                        }
                        let c = self.position().await?;
                        self.sample_lag(c).await?;
                        sampled = Some(Instant::now());
                        c
                    }
                };
                checkpoint = Some(current);
                let (n, next) = self.step(current).await?;
                checkpoint = Some(next);
                Ok::<u64, crate::Error>(n)
            }
            .await;
            match outcome {
                Ok(0) => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = self.store.wait_for_append(self.poll_interval) => {}
                    }
                }
                Ok(_) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(projection = self.status.name(), error = %e, retry_in = ?backoff, "projection batch failed");
                    self.status.update(|s| s.last_error = Some(e.to_string()));
                    // Read the checkpoint again: the failed transaction moved nothing.
                    checkpoint = None;
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.status.update(|s| s.running = false);
    }

    /// The stored checkpoint, after carrying out a requested rebuild.
    async fn position(&self) -> Result<Checkpoint> {
        let position = self.projector.position().await?;
        if position.rebuild_requested {
            tracing::info!(
                projection = self.status.name(),
                "rebuilding from the first event"
            );
            self.projector.rebuild().await?;
            self.status.update(|s| {
                s.rebuilds += 1;
                s.checkpoint = Checkpoint::START;
            });
            return Ok(Checkpoint::START);
        }
        Ok(position.checkpoint)
    }

    /// Read one batch after `from` and apply it. Returns the events applied and the new
    /// checkpoint.
    async fn step(&self, from: Checkpoint) -> Result<(u64, Checkpoint)> {
        let events = self.store.read_all(from, self.batch_size).await?;
        if events.is_empty() {
            return Ok((0, from));
        }
        let to = self.projector.apply(from, &events).await?;
        let n = events.iter().filter(|e| e.checkpoint <= to).count() as u64;
        metrics::counter!(PROJECTION_APPLIED, "projection" => self.status.name().to_string())
            .increment(n);
        self.status.update(|s| {
            s.checkpoint = to;
            s.applied += n;
            s.last_error = None;
        });
        Ok((n, to))
    }

    async fn sample_lag(&self, checkpoint: Checkpoint) -> Result<()> {
        let backlog = self.store.backlog(checkpoint).await?;
        let name = self.status.name().to_string();
        metrics::gauge!(PROJECTION_LAG_EVENTS, "projection" => name.clone())
            .set(backlog.events as f64);
        metrics::gauge!(PROJECTION_LAG_SECONDS, "projection" => name).set(backlog.age_secs());
        self.status.update(|s| {
            s.checkpoint = checkpoint;
            s.lag_events = backlog.events;
            s.lag_seconds = backlog.age_secs();
        });
        Ok(())
    }
}

/// A projection runner's health (component `projection:<name>`).
#[derive(Debug, Clone)]
pub struct ProjectionHealth {
    status: Arc<ProjectionStatus>,
    threshold: Duration,
}

impl ProjectionHealth {
    /// The health of the status as it is now.
    pub fn evaluate(&self) -> ComponentHealth {
        let s = self.status.view();
        let threshold = self.threshold.as_secs_f64();
        let name = format!("projection:{}", self.status.name());
        let detail = format!(
            "checkpoint {}, {} events behind, oldest {:.1}s (threshold {threshold}s){}",
            s.checkpoint,
            s.lag_events,
            s.lag_seconds,
            s.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
        let status = if !s.running || s.lag_seconds > threshold * 4.0 {
            HealthStatus::Down
        } else if s.lag_seconds > threshold || s.last_error.is_some() {
            HealthStatus::Degraded
        } else {
            HealthStatus::Up
        };
        let detail = if s.running {
            detail
        } else {
            format!("not running; {detail}")
        };
        ComponentHealth::new(name, status, detail)
    }
}

#[async_trait]
impl HealthCheck for ProjectionHealth {
    async fn check(&self) -> Vec<ComponentHealth> {
        vec![self.evaluate()]
    }
}
