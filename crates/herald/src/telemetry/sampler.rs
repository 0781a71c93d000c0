//! The queue-depth sampler: asks the transport for its queue counts every interval and sets
//! `herald_queue_depth{queue, state}`. Counts a transport cannot tell (`None`) are not set.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::names::{LABEL_QUEUE, LABEL_STATE, QUEUE_DEPTH};
use crate::transport::{QueueStats, Transport};

/// Sample the transport's [`QueueStatistics`](crate::transport::QueueStatistics) every `interval` (at least 100 ms) until `cancel` fires,
/// setting `herald_queue_depth{queue, state}` for `ready`, `in_flight`, `delayed` and
/// `dead_letters`. A failed read is logged and tried again next interval. Needs a Tokio runtime.
///
/// ```
/// use std::time::Duration;
/// use tokio_util::sync::CancellationToken;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let transport = herald::transport::connect("memory://sampler-doc", "svc").await?;
/// let cancel = CancellationToken::new();
/// let task = herald::telemetry::spawn_queue_depth_sampler(transport, Duration::from_secs(5), cancel.clone());
/// cancel.cancel();
/// task.await.unwrap();
/// # Ok::<(), herald::Error>(())
/// # }).unwrap();
/// ```
pub fn spawn_queue_depth_sampler(
    transport: Arc<dyn Transport>,
    interval: Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let interval = interval.max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let Some(stats) = transport.queue_statistics() else {
                tracing::info!(
                    transport = transport.kind(),
                    "this transport has no queue statistics; queue depth sampling stops"
                );
                return;
            };
            match stats.queue_stats().await {
                Ok(stats) => stats.iter().for_each(record),
                Err(e) => {
                    tracing::warn!(transport = transport.kind(), error = %e, "queue depth sampling failed; trying again next interval")
                }
            }
        }
    })
}

fn record(stats: &QueueStats) {
    let states = [
        ("ready", stats.ready),
        ("in_flight", stats.in_flight),
        ("delayed", stats.delayed),
        ("dead_letters", stats.dead_letters),
    ];
    for (state, value) in states {
        if let Some(v) = value {
            metrics::gauge!(QUEUE_DEPTH, LABEL_QUEUE => stats.queue.clone(), LABEL_STATE => state)
                .set(v as f64);
        }
    }
}
