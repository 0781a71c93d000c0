//! The consume loop of one subscription: take deliveries, run the pipeline, settle.
//!
//! `concurrency` workers share one delivery stream. Each worker checks whether the pipeline is
//! paused (open circuit) before taking a message, so a failing dependency stops consumption
//! instead of burning through attempts. On shutdown workers stop taking, finish what they hold,
//! release whatever is still buffered, and the transport's consumer is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::bus::metrics::Metrics;
use crate::middleware::{Disposition, FailureKind, Handle, HandlerError, Message};
use crate::topology::QueueSpec;
use crate::transport::{ConsumeOptions, Delivery, Failure, Outcome, Transport};

/// Everything one subscription's consumer needs.
pub(crate) struct ConsumerSpec {
    pub queue: QueueSpec,
    pub pipeline: Arc<dyn Handle>,
    pub prefetch: usize,
    pub concurrency: usize,
    pub max_message_bytes: usize,
}

/// Run until `shutdown` fires, then drain. Reconnects the stream if the transport ends it.
pub(crate) async fn run(
    spec: Arc<ConsumerSpec>,
    transport: Arc<dyn Transport>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let queue_name: Arc<str> = Arc::from(spec.queue.name.as_str());
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let stream_stop = shutdown.child_token();
        let options = ConsumeOptions {
            prefetch: spec.prefetch,
        };
        let rx = match transport.consume(&spec.queue, options, stream_stop.clone()).await {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(queue = %queue_name, error = %e, ?backoff, "cannot start consumer; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        tracing::debug!(queue = %queue_name, concurrency = spec.concurrency, "consumer started");
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..spec.concurrency {
            workers.spawn(worker(
                rx.clone(),
                spec.clone(),
                queue_name.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        while workers.join_next().await.is_some() {}
        stream_stop.cancel();
        // Whatever the transport had already handed over goes back untouched.
        let mut rx = rx.lock().await;
        rx.close();
        while let Some(d) = rx.recv().await {
            metrics.released();
            if let Err(e) = d.settle(Outcome::Release { delay: Duration::ZERO }).await {
                tracing::debug!(error = %e, "release on shutdown failed; the transport redelivers it");
            }
        }
    }
    tracing::debug!(queue = %queue_name, "consumer stopped");
}

async fn worker(
    rx: Arc<Mutex<mpsc::Receiver<Delivery>>>,
    spec: Arc<ConsumerSpec>,
    queue: Arc<str>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        if let Some(pause) = spec.pipeline.paused_for() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => continue,
            }
        }
        let next = {
            let mut rx = rx.lock().await;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                d = rx.recv() => d,
            }
        };
        let Some(delivery) = next else {
            // The transport ended the stream (connection lost for good, queue deleted).
            return;
        };
        process(delivery, &spec, &queue, &metrics).await;
    }
}

async fn process(delivery: Delivery, spec: &ConsumerSpec, queue: &Arc<str>, metrics: &Metrics) {
    let (envelope, settler) = delivery.into_parts();
    let envelope = Arc::new(envelope);
    let result = if envelope.body.len() > spec.max_message_bytes {
        Err(HandlerError::new(
            FailureKind::TooLarge,
            format!(
                "body of {} bytes exceeds max_message_bytes = {}",
                envelope.body.len(),
                spec.max_message_bytes
            ),
        )
        .with_disposition(Disposition::DeadLetter))
    } else {
        let msg = Message {
            envelope: envelope.clone(),
            queue: queue.clone(),
        };
        spec.pipeline.call(msg).await
    };
    let outcome = match result {
        Ok(()) => {
            metrics.handled();
            Outcome::Ack
        }
        Err(e) => {
            let failure = || Failure::now(&envelope, queue, e.kind.as_str(), e.message.clone());
            match e.disposition {
                Some(Disposition::RetryAfter(delay)) => {
                    metrics.retried();
                    Outcome::Retry {
                        delay,
                        failure: failure(),
                    }
                }
                Some(Disposition::Release(delay)) => {
                    metrics.released();
                    Outcome::Release { delay }
                }
                Some(Disposition::DeadLetter) | None => {
                    metrics.dead_lettered();
                    Outcome::DeadLetter(failure())
                }
            }
        }
    };
    if let Err(e) = settler.settle(&envelope, outcome).await {
        metrics.settle_error();
        tracing::warn!(id = %envelope.id, queue = %queue, error = %e, "could not settle; the transport will redeliver it");
    }
}
