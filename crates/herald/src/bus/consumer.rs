//! The consume loop of one subscription: take deliveries, run the pipeline, settle.
//!
//! One task per subscription drives up to `concurrency` handler calls at once (a
//! `FuturesUnordered`), so taking a delivery costs no lock and no cross-task wake-up. A call is
//! polled once where it is taken and joins the set only if it has to wait. Before
//! taking a message it asks the pipeline whether it is paused (open circuit), so a failing
//! dependency stops consumption instead of burning through attempts. On shutdown it stops
//! taking, finishes the calls in flight, releases whatever is still buffered, and the
//! transport's consumer is cancelled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::bus::metrics::Metrics;
use crate::middleware::{Disposition, FailureKind, Handle, HandlerError, Message};
use crate::telemetry::handles::ConsumerTelemetry;
use crate::topology::QueueSpec;
use crate::transport::{
    ConsumeOptions, Deliveries, Delivery, Failure, Outcome, Transport, TryRecvError,
};

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
    let telemetry = Arc::new(ConsumerTelemetry::new(queue_name.clone()));
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let stream_stop = shutdown.child_token();
        let options = ConsumeOptions {
            prefetch: spec.prefetch,
        };
        let mut rx = match transport
            .consume(&spec.queue, options, stream_stop.clone())
            .await
        {
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
        consume_stream(&mut rx, &spec, &queue_name, &metrics, &telemetry, &shutdown).await;
        stream_stop.cancel();
        // Whatever the transport had already handed over goes back untouched.
        rx.close();
        while let Some(d) = rx.recv().await {
            metrics.released();
            telemetry
                .event(&d.envelope.event_type)
                .released
                .increment(1);
            if let Err(e) = d
                .settle(Outcome::Release {
                    delay: Duration::ZERO,
                })
                .await
            {
                tracing::debug!(error = %e, "release on shutdown failed; the transport redelivers it");
            }
        }
    }
    tracing::debug!(queue = %queue_name, "consumer stopped");
}

/// Handle deliveries until shutdown or the end of the stream; returns with nothing in flight.
async fn consume_stream(
    rx: &mut Deliveries,
    spec: &Arc<ConsumerSpec>,
    queue: &Arc<str>,
    metrics: &Arc<Metrics>,
    telemetry: &Arc<ConsumerTelemetry>,
    shutdown: &CancellationToken,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open && !shutdown.is_cancelled() {
        let pause = spec.pipeline.paused_for();
        let can_take = pause.is_none() && in_flight.len() < spec.concurrency;
        // What is ready now is taken, or finished, without building the wait below (which
        // registers with the shutdown token and the channel every time): under load that is
        // almost every turn.
        if can_take {
            match rx.try_recv() {
                Ok(d) => {
                    let call = Box::pin(process(
                        d,
                        spec.clone(),
                        queue.clone(),
                        metrics.clone(),
                        telemetry.clone(),
                    ));
                    start(call, &mut in_flight).await;
                    // Calls that finish at once never fill the set, so without this a call
                    // waiting in it would not get a turn while deliveries keep coming.
                    if !in_flight.is_empty() {
                        let _ = in_flight.next().now_or_never();
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    continue;
                }
                Err(TryRecvError::Empty) => {}
            }
        }
        if !in_flight.is_empty() && in_flight.next().now_or_never().is_some() {
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = rx.recv(), if can_take => match next {
                Some(d) => {
                    let call = Box::pin(process(d, spec.clone(), queue.clone(), metrics.clone(), telemetry.clone()));
                    start(call, &mut in_flight).await;
                }
                // The transport ended the stream (queue deleted, connection gone for good).
                None => open = false,
            },
            _ = tokio::time::sleep(pause.unwrap_or_default()), if pause.is_some() => {}
        }
    }
    // Finish what was started; nothing new is taken.
    while in_flight.next().await.is_some() {}
}

/// Poll a handler call once where it was taken, and keep it in `in_flight` only when it has to
/// wait: a call that finishes at once (most do: a handler without I/O, an ack that joins the
/// next batch) then costs no task in the set, no wake-up and no second poll. A call that waits
/// was polled with this task's waker; in the set it is polled again at once with the set's own,
/// so the first registration costs at most a spurious wake-up. (A future that kept only the
/// first waker it saw would hang here; the `Future` contract asks every poll to register.)
async fn start<F: Future<Output = ()>>(
    mut call: Pin<Box<F>>,
    in_flight: &mut FuturesUnordered<Pin<Box<F>>>,
) {
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    if first.is_pending() {
        in_flight.push(call);
    }
    // Calls finishing here never give the loop a reason to yield while deliveries keep coming:
    // this counts each against tokio's cooperative budget, so other tasks still get their turn.
    tokio::task::consume_budget().await;
}

async fn process(
    delivery: Delivery,
    spec: Arc<ConsumerSpec>,
    queue: Arc<str>,
    metrics: Arc<Metrics>,
    telemetry: Arc<ConsumerTelemetry>,
) {
    let (envelope, settler, trace) = delivery.into_traced_parts();
    let envelope = Arc::new(envelope);
    let counters = telemetry.event(&envelope.event_type);
    counters.consumed.increment(1);
    telemetry.in_flight.increment(1.0);
    let started = Instant::now();
    let handling = crate::trace::spans::Handling::start(&envelope, &queue, trace);
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
        crate::trace::scope(
            handling.context,
            handling.instrument(spec.pipeline.call(msg)),
        )
        .await
    };
    counters.handled_in(started.elapsed());
    let outcome = match result {
        Ok(()) => {
            metrics.handled();
            counters.acked.increment(1);
            Outcome::Ack
        }
        Err(e) => {
            counters.failed(e.kind.as_str());
            let failure = || Failure::now(&envelope, &queue, e.kind.as_str(), e.message.clone());
            match e.disposition {
                Some(Disposition::RetryAfter(delay)) => {
                    metrics.retried();
                    counters.retried.increment(1);
                    Outcome::Retry {
                        delay,
                        failure: failure(),
                    }
                }
                Some(Disposition::Release(delay)) => {
                    metrics.released();
                    counters.released.increment(1);
                    Outcome::Release { delay }
                }
                Some(Disposition::DeadLetter) | None => {
                    metrics.dead_lettered();
                    counters.dead_lettered.increment(1);
                    Outcome::DeadLetter(failure())
                }
            }
        }
    };
    handling.finish(&outcome);
    let settled = settler.settle(&envelope, outcome).await;
    telemetry.in_flight.decrement(1.0);
    if let Err(e) = settled {
        metrics.settle_error();
        telemetry.settle_errors.increment(1);
        tracing::warn!(id = %envelope.id, queue = %queue, error = %e, "could not settle; the transport will redeliver it");
    }
}
