//! The live event stream: a temporary queue bound to `#` feeds a broadcast channel; each
//! `/api/stream` client gets the events matching its filters as Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use herald::middleware::RetryPolicy;
use herald::{Bus, Context, Envelope, SubscribeOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::history::History;
use super::AppState;

/// Events a slow SSE client may fall behind before it skips ahead.
const CHANNEL_CAPACITY: usize = 1024;

/// One event as the stream and `herald tail --json` show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub time: String,
    pub routing_key: String,
    pub subject: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub attempt: u32,
    pub traceparent: Option<String>,
    pub data: serde_json::Value,
}

impl EventView {
    pub fn new(e: &Envelope, data: serde_json::Value) -> Self {
        EventView {
            id: e.id.clone(),
            event_type: e.event_type.clone(),
            source: e.source.clone(),
            time: herald::envelope::format_time(&e.time),
            routing_key: e.routing_key.clone(),
            subject: e.subject.clone(),
            correlation_id: e.correlation_id.clone(),
            causation_id: e.causation_id.clone(),
            attempt: e.attempt,
            traceparent: e.traceparent.clone(),
            data,
        }
    }
}

/// Subscribe the stream's temporary queue on `bus` (started by the caller). Returns the queue's
/// name and the channel's sender.
pub(crate) fn subscribe(
    bus: &Bus,
    history: Arc<History>,
) -> herald::Result<(String, broadcast::Sender<Arc<EventView>>)> {
    let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
    let suffix = format!("herald-serve.stream.{:08x}", rand::random::<u32>());
    let queue = format!("{}.{suffix}", bus.config().service);
    let sender = tx.clone();
    // Raw: the stream shows every message, JSON or not, and dead-letters nothing.
    bus.subscribe_raw(
        &suffix,
        "#",
        move |ctx: Context| {
            let view = EventView::new(ctx.envelope(), ctx.envelope().body_value());
            history.count_event(&view.event_type);
            // No receivers is fine: nobody is watching.
            let _ = sender.send(Arc::new(view));
            std::future::ready(())
        },
        // No retries: the handler cannot fail (nothing is decoded), and retry levels would
        // leave delay queues behind on RabbitMQ.
        SubscribeOptions::new()
            .temporary()
            .concurrency(1)
            .retry(RetryPolicy::none()),
    )?;
    Ok((queue, tx))
}

/// Filters of `/api/stream` (exact match). The token is never in this URL: browsers send the
/// session cookie, programs the `Authorization` header.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    correlation_id: Option<String>,
}

impl StreamQuery {
    fn matches(&self, e: &EventView) -> bool {
        let nonempty = |f: &Option<String>| f.clone().filter(|s| !s.is_empty());
        nonempty(&self.event_type).is_none_or(|t| t == e.event_type)
            && nonempty(&self.correlation_id)
                .is_none_or(|c| Some(c.as_str()) == e.correlation_id.as_deref() || c == e.id)
    }
}

/// `GET /api/stream`.
pub(crate) async fn sse(
    State(state): State<AppState>,
    Query(filter): Query<StreamQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = state.events.subscribe();
    let stop = state.stop.clone();
    let stream = futures::stream::unfold((rx, filter, stop), |(mut rx, filter, stop)| async move {
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return None,
                r = rx.recv() => r,
            };
            match received {
                Ok(view) if filter.matches(&view) => {
                    let event = SseEvent::default()
                        .event("message")
                        .json_data(&*view)
                        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"));
                    return Some((Ok(event), (rx, filter, stop)));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "SSE client fell behind; skipping ahead");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
