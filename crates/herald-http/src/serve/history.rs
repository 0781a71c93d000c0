//! Rates and depths over time: a sampler takes the transport's queue stats and the stream's
//! per-type event counts every second into a ring buffer of the last 300 points.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald::Transport;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Sampling interval.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// Points kept.
pub(crate) const CAPACITY: usize = 300;

/// Depths of one queue at a point.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueuePoint {
    pub ready: Option<u64>,
    pub in_flight: Option<u64>,
    pub dead_letters: Option<u64>,
}

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub t: String,
    pub events_per_sec: f64,
    pub by_type: BTreeMap<String, f64>,
    pub queues: BTreeMap<String, QueuePoint>,
}

/// The ring buffer and the counts since the last sample.
#[derive(Default)]
pub(crate) struct History {
    counts: Mutex<HashMap<String, u64>>,
    points: Mutex<VecDeque<Point>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl History {
    /// Count one event seen on the stream.
    pub fn count_event(&self, event_type: &str) {
        *lock(&self.counts)
            .entry(event_type.to_string())
            .or_default() += 1;
    }

    /// The points, oldest first.
    pub fn points(&self) -> Vec<Point> {
        lock(&self.points).iter().cloned().collect()
    }

    /// Take one sample: rates over `elapsed`, depths now (`skip_queue` is the stream's own).
    pub async fn sample(&self, transport: &dyn Transport, elapsed: Duration, skip_queue: &str) {
        let secs = elapsed.as_secs_f64().max(0.001);
        let counts = std::mem::take(&mut *lock(&self.counts));
        let by_type: BTreeMap<String, f64> = counts
            .into_iter()
            .map(|(k, n)| (k, n as f64 / secs))
            .collect();
        let queues = match super::api::queue_stats(transport).await {
            Ok(stats) => stats
                .into_iter()
                .filter(|s| s.queue != skip_queue)
                .map(|s| {
                    let p = QueuePoint {
                        ready: s.ready,
                        in_flight: s.in_flight,
                        dead_letters: s.dead_letters,
                    };
                    (s.queue, p)
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "queue stats unavailable for this sample");
                BTreeMap::new()
            }
        };
        let point = Point {
            t: herald::envelope::format_time(&chrono::Utc::now()),
            events_per_sec: by_type.values().sum(),
            by_type,
            queues,
        };
        let mut points = lock(&self.points);
        if points.len() == CAPACITY {
            points.pop_front();
        }
        points.push_back(point);
    }

    /// Sample every [`INTERVAL`] until `cancel`.
    pub async fn run(
        &self,
        transport: std::sync::Arc<dyn Transport>,
        skip_queue: String,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            self.sample(&*transport, now - last, &skip_queue).await;
            last = now;
        }
    }
}
