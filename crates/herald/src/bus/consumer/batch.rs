//! Batch handlers: the consumer gathers up to `max_size` messages (or what came within
//! `max_wait` of the first), calls the handler once with all of them, and then settles each
//! message on its own: every message runs through the subscription's pipeline with the
//! handler's verdict for it as the innermost step, so retries, dead letters and their reasons
//! are decided per message exactly as for a one-at-a-time handler. (An immediate retry of a
//! batch message sees the same verdict again; a failed message is redelivered on its own.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::shared::{release, too_large, Shared};
use crate::envelope::Envelope;
use crate::middleware::{BoxFuture, FailureKind, Handle, HandlerError, HandlerResult, Message};
use crate::trace::spans::Handling;
use crate::transport::{Deliveries, Delivery};

/// How a batch subscription groups messages: at most `max_size` per call, and a call at the
/// latest `max_wait` after the first message of a batch arrived.
///
/// ```
/// use std::time::Duration;
/// use herald::BatchOptions;
/// let b = BatchOptions::new(100, Duration::from_millis(50));
/// # let _ = b;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub(crate) max_size: usize,
    pub(crate) max_wait: Duration,
}

impl BatchOptions {
    /// Up to `max_size` messages per call (at least 1), waiting at most `max_wait` for a batch
    /// to fill.
    pub fn new(max_size: usize, max_wait: Duration) -> Self {
        BatchOptions {
            max_size: max_size.max(1),
            max_wait,
        }
    }
}

tokio::task_local! {
    /// The batch handler's verdict for the message whose pipeline runs now.
    static VERDICT: HandlerResult;
}

/// The innermost step of a batch subscription's pipeline: the handler's verdict for this
/// message.
pub(crate) struct Verdict;

impl Handle for Verdict {
    fn call(&self, _msg: Message) -> BoxFuture<HandlerResult> {
        let verdict = VERDICT.try_with(Clone::clone).unwrap_or_else(|_| {
            Err(HandlerError::new(
                FailureKind::Handler,
                "a batch message's pipeline ran outside its batch",
            ))
        });
        Box::pin(async move { verdict })
    }
}

type BatchCall = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Gather deliveries into batches and run them, up to `concurrency` batches at once, until
/// shutdown or the end of the stream; returns with nothing in flight.
pub(super) async fn consume_batches(
    rx: &mut Deliveries,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let spec = &shared.spec;
    let Some(batching) = spec.batch.as_ref() else {
        return;
    };
    let mut in_flight: FuturesUnordered<BatchCall> = FuturesUnordered::new();
    let mut buffer: Vec<Delivery> = Vec::with_capacity(batching.max_size);
    let mut deadline: Option<Instant> = None;
    let mut open = true;
    while open && !shutdown.is_cancelled() {
        let slot = in_flight.len() < spec.concurrency;
        let due =
            buffer.len() >= batching.max_size || deadline.is_some_and(|d| Instant::now() >= d);
        if slot && !buffer.is_empty() && due {
            let batch = std::mem::replace(&mut buffer, Vec::with_capacity(batching.max_size));
            deadline = None;
            in_flight.push(Box::pin(run_batch(batch, shared.clone())));
            continue;
        }
        let pause = spec.readiness.paused_for();
        let can_take = pause.is_none() && buffer.len() < batching.max_size;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = rx.recv(), if can_take => match next {
                Some(d) => {
                    if buffer.is_empty() {
                        deadline = Some(Instant::now() + batching.max_wait);
                    }
                    buffer.push(d);
                    while buffer.len() < batching.max_size {
                        match rx.try_recv() {
                            Ok(d) => buffer.push(d),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if slot && deadline.is_some() => {}
            _ = tokio::time::sleep(pause.unwrap_or_default()), if pause.is_some() => {}
        }
    }
    // A batch not yet started goes back; batches running finish.
    for d in buffer {
        release(shared, d).await;
    }
    while in_flight.next().await.is_some() {}
}

/// Call the handler once for the batch, then run each message's pipeline with its verdict and
/// settle it.
async fn run_batch(batch: Vec<Delivery>, shared: Arc<Shared>) {
    let Some(batching) = shared.spec.batch.as_ref() else {
        return;
    };
    let started = std::time::Instant::now();
    let parts: Vec<_> = batch.into_iter().map(|d| d.into_traced_parts()).collect();
    // Bodies over the limit are refused on their own; the handler gets the rest.
    let mut verdicts: Vec<Option<HandlerResult>> = parts
        .iter()
        .map(|(e, _, _)| too_large(e, shared.spec.max_message_bytes).map(Err))
        .collect();
    let accepted: Vec<Arc<Envelope>> = parts
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.is_none())
        .map(|((e, _, _), _)| e.clone())
        .collect();
    let mut results = batching.run.run(&accepted).await.into_iter();
    for v in verdicts.iter_mut().filter(|v| v.is_none()) {
        *v = Some(results.next().unwrap_or(Ok(())));
    }
    for ((envelope, settler, trace), verdict) in parts.into_iter().zip(verdicts) {
        let counters = shared.telemetry.event(&envelope.event_type);
        counters.consumed.increment(1);
        if let Some(observer) = &shared.spec.observer {
            observer.taken(&shared.queue, &envelope);
        }
        shared.telemetry.in_flight.increment(1.0);
        let handling = Handling::start(&envelope, &shared.queue, trace);
        let msg = Message {
            envelope: envelope.clone(),
            queue: shared.queue.clone(),
        };
        let pipeline = shared.spec.pipeline.clone();
        let verdict = verdict.unwrap_or(Ok(()));
        let result = VERDICT
            .scope(
                verdict,
                handling.instrument(async move { pipeline.call(msg).await }),
            )
            .await;
        counters.handled_in(started.elapsed());
        let outcome = shared.outcome(&envelope, result, &counters, &handling);
        let settled = settler.settle(&envelope, outcome).await;
        shared.settled(&envelope, settled);
    }
}
