//! What every handler call of one consumer shares, and how a result becomes a settlement:
//! used by one-at-a-time (`stream.rs`) and batch (`batch.rs`) consumers alike.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::stream::FuturesUnordered;

use crate::bus::KeyOf;
use crate::envelope::Envelope;
use crate::handler::RunBatch;
use crate::middleware::{Disposition, FailureKind, Handle, HandlerError, HandlerResult, Readiness};
use crate::telemetry::counters::Metrics;
use crate::telemetry::handles::{ConsumeCounters, ConsumerTelemetry};
use crate::telemetry::observe::Observe;
use crate::topology::QueueSpec;
use crate::trace::spans::Handling;
use crate::transport::{Delivery, Failure, Outcome};

/// Everything one subscription's consumer needs.
pub(crate) struct ConsumerSpec {
    pub queue: QueueSpec,
    pub pipeline: Arc<dyn Handle>,
    pub readiness: Readiness,
    pub prefetch: usize,
    pub concurrency: usize,
    pub key: Option<KeyOf>,
    pub max_message_bytes: usize,
    pub observer: Option<Arc<dyn Observe>>,
    /// Take messages in batches (a batch handler) instead of one at a time.
    pub batch: Option<Batching>,
}

/// A batch subscription's batching: the bounds and the handler.
pub(crate) struct Batching {
    pub max_size: usize,
    pub max_wait: Duration,
    pub run: Arc<dyn RunBatch>,
}

/// What every handler call of one consumer shares: one `Arc` to clone per delivery.
pub(super) struct Shared {
    pub spec: Arc<ConsumerSpec>,
    pub queue: Arc<str>,
    pub metrics: Arc<Metrics>,
    pub telemetry: ConsumerTelemetry,
}

/// Give a delivery back untouched (taken, never handled).
pub(super) async fn release(shared: &Shared, d: Delivery) {
    shared.metrics.released();
    shared
        .telemetry
        .event(&d.envelope.event_type)
        .released
        .increment(1);
    if let Err(e) = d
        .settle(Outcome::Release {
            delay: Duration::ZERO,
        })
        .await
    {
        tracing::debug!(error = %e, "release failed; the transport redelivers it");
    }
}

/// Poll a call once where it was taken, and keep it in `in_flight` only when it has to wait
/// (answering `None`); a call that finishes at once answers with its output. Most calls do (a
/// handler without I/O, an ack that joins the next batch), and then cost no task in the set, no
/// wake-up and no second poll. A call that waits was polled with this task's waker; in the set
/// it is polled again at once with the set's own, so the first registration costs at most a
/// spurious wake-up. (A future that kept only the first waker it saw would hang here; the
/// `Future` contract asks every poll to register.)
pub(super) async fn start<F: Future + ?Sized>(
    mut call: Pin<Box<F>>,
    in_flight: &mut FuturesUnordered<Pin<Box<F>>>,
) -> Option<F::Output> {
    let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    let done = match first {
        Poll::Ready(out) => Some(out),
        Poll::Pending => {
            in_flight.push(call);
            None
        }
    };
    // Calls finishing here never give the loop a reason to yield while deliveries keep coming:
    // this counts each against tokio's cooperative budget, so other tasks still get their turn.
    tokio::task::consume_budget().await;
    done
}

/// A body over the limit: dead-lettered without a handler call.
pub(super) fn too_large(envelope: &Envelope, limit: usize) -> Option<HandlerError> {
    (envelope.body.len() > limit).then(|| {
        HandlerError::new(
            FailureKind::TooLarge,
            format!(
                "body of {} bytes exceeds max_message_bytes = {limit}",
                envelope.body.len()
            ),
        )
        .with_disposition(Disposition::DeadLetter)
    })
}

impl Shared {
    /// Turn the pipeline's result into the outcome the transport is to carry out, counting it.
    pub(super) fn outcome(
        &self,
        envelope: &Envelope,
        result: HandlerResult,
        counters: &ConsumeCounters,
        handling: &Handling,
    ) -> Outcome {
        let outcome = match result {
            Ok(()) => {
                self.metrics.handled();
                counters.acked.increment(1);
                Outcome::Ack
            }
            Err(e) => {
                counters.failed(e.kind.as_str());
                let failure =
                    || Failure::now(envelope, &self.queue, e.kind.as_str(), e.message.clone());
                match e.disposition {
                    Some(Disposition::RetryAfter(delay)) => {
                        self.metrics.retried();
                        counters.retried.increment(1);
                        Outcome::Retry {
                            delay,
                            failure: failure(),
                        }
                    }
                    Some(Disposition::Release(delay)) => {
                        self.metrics.released();
                        counters.released.increment(1);
                        Outcome::Release { delay }
                    }
                    Some(Disposition::DeadLetter) | None => {
                        self.metrics.dead_lettered();
                        counters.dead_lettered.increment(1);
                        Outcome::DeadLetter(failure())
                    }
                }
            }
        };
        handling.finish(outcome.name());
        if let Some(observer) = &self.spec.observer {
            observer.settled(&self.queue, envelope, &outcome);
        }
        outcome
    }

    /// Count what the transport answered to a settlement. (Deciding and counting are plain
    /// functions around the one `await`, so the future of every handler call stays small.)
    pub(super) fn settled(&self, envelope: &Envelope, settled: crate::error::Result<()>) {
        self.telemetry.in_flight.decrement(1.0);
        if let Err(e) = settled {
            self.metrics.settle_error();
            self.telemetry.settle_errors.increment(1);
            tracing::warn!(id = %envelope.id, queue = %self.queue, error = %e, "could not settle; the transport will redeliver it");
        }
    }
}
