//! One message at a time: up to `concurrency` handler calls at once, and with an order key a
//! delivery whose key has a call running waits behind it (`ordering.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::ordering::{key_of, KeyedOrder};
use super::shared::{release, start, too_large, Shared};
use crate::envelope::Envelope;
use crate::middleware::Message;
use crate::trace::spans::Handling;
use crate::trace::TraceContext;
use crate::transport::{Deliveries, Delivery, Settler, TryRecvError};

/// One handler call; it answers with the delivery's order key (when ordered) once done.
type Call = Pin<Box<dyn Future<Output = Option<u64>> + Send>>;

///
/// The delivery is taken apart here, before the future is built: what the future captures
/// stays in it for its whole life, and an envelope is a few hundred bytes. A future over
/// about 1 KiB takes glibc's slow allocation path on every message.
fn call(delivery: Delivery, shared: &Arc<Shared>, key: Option<u64>) -> Call {
    let (envelope, settler, trace) = delivery.into_traced_parts();
    Box::pin(process(envelope, settler, trace, shared.clone(), key))
}

/// The calls in flight and, with an order key, the deliveries waiting behind them.
struct Calls {
    in_flight: FuturesUnordered<Call>,
    order: Option<KeyedOrder>,
}

impl Calls {
    /// Start a call for `d`, or park it behind a running call of its key.
    async fn dispatch(&mut self, d: Delivery, shared: &Arc<Shared>) {
        let key = match (shared.spec.key, &mut self.order) {
            (Some(key_fn), Some(order)) => match key_of(key_fn, &d) {
                Some(k) => match order.admit(k, d) {
                    Some(d) => return self.launch(d, shared, Some(k)).await,
                    None => return,
                },
                None => None,
            },
            _ => None,
        };
        self.launch(d, shared, key).await;
    }

    /// A call finished: start the next delivery parked behind its key.
    async fn finished(&mut self, key: Option<u64>, shared: &Arc<Shared>) {
        if let Some(k) = key {
            if let Some(next) = self.order.as_mut().and_then(|o| o.finished(k)) {
                self.launch(next, shared, Some(k)).await;
            }
        }
    }

    /// Start `d`'s call. One that finishes at once frees its key, so what waits behind it
    /// starts too.
    async fn launch(&mut self, d: Delivery, shared: &Arc<Shared>, key: Option<u64>) {
        let mut next = Some(d);
        while let Some(d) = next.take() {
            if let Some(Some(k)) = start(call(d, shared, key), &mut self.in_flight).await {
                next = self.order.as_mut().and_then(|o| o.finished(k));
            }
        }
    }
}

/// Handle deliveries until shutdown or the end of the stream; returns with nothing in flight.
pub(super) async fn consume_stream(
    rx: &mut Deliveries,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let spec = &shared.spec;
    let mut calls = Calls {
        in_flight: FuturesUnordered::new(),
        order: spec.key.map(|_| KeyedOrder::default()),
    };
    let mut open = true;
    while open && !shutdown.is_cancelled() {
        let pause = spec.readiness.paused_for();
        let can_take = pause.is_none() && calls.in_flight.len() < spec.concurrency;
        // What is ready now is taken, or finished, without building the wait below (which
        // registers with the shutdown token and the channel every time): under load that is
        // almost every turn.
        if can_take {
            match rx.try_recv() {
                Ok(d) => {
                    calls.dispatch(d, shared).await;
                    // Calls that finish at once never fill the set, so without this a call
                    // waiting in it would not get a turn while deliveries keep coming.
                    if !calls.in_flight.is_empty() {
                        if let Some(Some(done)) = calls.in_flight.next().now_or_never() {
                            calls.finished(done, shared).await;
                        }
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
        if !calls.in_flight.is_empty() {
            if let Some(Some(done)) = calls.in_flight.next().now_or_never() {
                calls.finished(done, shared).await;
                continue;
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = calls.in_flight.next(), if !calls.in_flight.is_empty() => {
                calls.finished(done, shared).await;
            }
            next = rx.recv(), if can_take => match next {
                Some(d) => calls.dispatch(d, shared).await,
                // The transport ended the stream (queue deleted, connection gone for good).
                None => open = false,
            },
            _ = tokio::time::sleep(pause.unwrap_or_default()), if pause.is_some() => {}
        }
    }
    // Finish what was started; nothing new is taken, and what waits behind a key goes back.
    let parked = calls
        .order
        .as_mut()
        .map(KeyedOrder::drain)
        .unwrap_or_default();
    for d in parked {
        release(shared, d).await;
    }
    while calls.in_flight.next().await.is_some() {}
}

/// Run the pipeline on one delivery and settle it as it decided; answers with its order key.
async fn process(
    envelope: Arc<Envelope>,
    settler: Settler,
    trace: Option<TraceContext>,
    shared: Arc<Shared>,
    key: Option<u64>,
) -> Option<u64> {
    let counters = shared.telemetry.event(&envelope.event_type);
    counters.consumed.increment(1);
    if let Some(observer) = &shared.spec.observer {
        observer.taken(&shared.queue, &envelope);
    }
    shared.telemetry.in_flight.increment(1.0);
    let started = Instant::now();
    let handling = Handling::start(&envelope, &shared.queue, trace);
    let result = match too_large(&envelope, shared.spec.max_message_bytes) {
        Some(refused) => Err(refused),
        None => {
            let msg = Message {
                envelope: envelope.clone(),
                queue: shared.queue.clone(),
            };
            crate::trace::scope(
                handling.context,
                handling.instrument(shared.spec.pipeline.call(msg)),
            )
            .await
        }
    };
    counters.handled_in(started.elapsed());
    let outcome = shared.outcome(&envelope, result, &counters, &handling);
    drop(handling);
    let settled = settler.settle(&envelope, outcome).await;
    shared.settled(&envelope, settled);
    key
}
