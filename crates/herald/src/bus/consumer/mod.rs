//! The consume loop of one subscription: take deliveries, run the pipeline, settle.
//!
//! One task per subscription drives up to `concurrency` handler calls at once (a
//! `FuturesUnordered`), so taking a delivery costs no lock and no cross-task wake-up. A call is
//! polled once where it is taken and joins the set only if it has to wait. Before taking a
//! message it asks the pipeline's layers whether consumption is paused (an open circuit), so a
//! failing dependency stops consumption instead of burning through attempts. With an order key
//! ([`ConsumerOptions::ordered_by`](super::ConsumerOptions::ordered_by)) a delivery whose key
//! has a call running waits behind it (`ordering.rs`); a batch subscription takes messages in
//! batches instead (`batch.rs`). On shutdown it stops taking, finishes the calls in flight,
//! releases whatever is still buffered, and the transport's consumer is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::telemetry::counters::Metrics;
use crate::telemetry::handles::ConsumerTelemetry;
use crate::topology::QueueSpec;
use crate::transport::{ConsumeOptions, Deliveries, Transport};

mod batch;
mod ordering;
mod shared;
mod stream;

pub use batch::BatchOptions;
pub(crate) use batch::Verdict;
pub(crate) use shared::{Batching, ConsumerSpec};

use shared::{release, Shared};

/// Run until `shutdown` fires, then drain. Reconnects the stream if the transport ends it.
pub(crate) async fn run(
    spec: Arc<ConsumerSpec>,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let queue: Arc<str> = Arc::from(spec.queue.name.as_str());
    let shared = Arc::new(Shared {
        telemetry: ConsumerTelemetry::new(queue.clone()),
        spec,
        queue,
        metrics,
    });
    while !shutdown.is_cancelled() {
        let stream_stop = shutdown.child_token();
        let Some(mut rx) = open(
            &*transport,
            &shared.spec.queue,
            shared.spec.prefetch,
            &stream_stop,
            &shutdown,
        )
        .await
        else {
            break;
        };
        tracing::debug!(queue = %shared.queue, concurrency = shared.spec.concurrency, "consumer started");
        if shared.spec.batch.is_some() {
            batch::consume_batches(&mut rx, &shared, &shutdown).await;
        } else {
            stream::consume_stream(&mut rx, &shared, &shutdown).await;
        }
        stream_stop.cancel();
        // Whatever the transport had already handed over goes back untouched.
        rx.close();
        while let Some(d) = rx.recv().await {
            release(&shared, d).await;
        }
    }
    tracing::debug!(queue = %shared.queue, "consumer stopped");
}

/// Start consuming `queue` (until `stop` fires), trying again while the transport refuses, 100 ms
/// apart and doubling to 10 s; `None` once `shutdown` fires first.
pub(crate) async fn open(
    transport: &dyn Transport,
    queue: &QueueSpec,
    prefetch: usize,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> Option<Deliveries> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match transport
            .consume(queue, ConsumeOptions { prefetch }, stop.clone())
            .await
        {
            Ok(rx) => return Some(rx),
            Err(e) => {
                tracing::warn!(queue = %queue.name, error = %e, ?backoff, "cannot start consuming; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
