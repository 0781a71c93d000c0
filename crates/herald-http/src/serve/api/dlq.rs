//! Dead letters: counts per queue, list, replay, purge.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::Json;
use herald::envelope::header;
use herald::transport::{escape_controls, DeadLetter};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, ApiResult};
use crate::serve::AppState;

/// Most dead letters listed at once.
const MAX_LIMIT: usize = 10_000;

/// One dead letter as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct DeadLetterView {
    queue: String,
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    routing_key: String,
    attempt: u32,
    error: String,
    error_kind: Option<String>,
    first_failure: Option<String>,
    last_failure: Option<String>,
    correlation_id: Option<String>,
    data: Value,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        let e = d.envelope;
        let h = |k: &str| e.headers.get(k).cloned();
        DeadLetterView {
            error: e.last_error().unwrap_or("").to_string(),
            error_kind: h(header::ERROR_KIND),
            first_failure: h(header::FIRST_FAILURE),
            last_failure: h(header::LAST_FAILURE),
            data: e.body_value(),
            queue: d.queue,
            id: e.id,
            event_type: e.event_type,
            routing_key: e.routing_key,
            attempt: e.attempt,
            correlation_id: e.correlation_id,
        }
    }
}

/// `GET /api/dlq`: dead-letter counts for the queues known (this bus, the catalog, the transport).
pub(crate) async fn list_queues(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let t = s.bus.transport();
    let stats = super::queue_stats(&**t).await?;
    let mut names: BTreeSet<String> = s
        .bus
        .topology()
        .queues
        .into_iter()
        .map(|q| q.name)
        .collect();
    names.extend(
        s.catalog
            .events
            .iter()
            .flat_map(|e| e.consumers.iter().map(|c| c.queue.clone())),
    );
    names.extend(stats.iter().map(|q| q.queue.clone()));
    names.remove(&s.stream_queue);
    let mut out = Vec::with_capacity(names.len());
    for queue in names {
        let counted = stats
            .iter()
            .find(|q| q.queue == queue)
            .and_then(|q| q.dead_letters);
        let n = match counted {
            Some(n) => n,
            None => super::dead_letter_admin(&**t)?
                .dead_letters(&queue, MAX_LIMIT)
                .await?
                .len() as u64,
        };
        out.push(serde_json::json!({"queue": queue, "dead_letters": n}));
    }
    Ok(Json(Value::Array(out)))
}

/// `?limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct Limit {
    limit: Option<usize>,
}

/// `GET /api/dlq/{queue}`.
pub(crate) async fn list(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    Query(limit): Query<Limit>,
) -> ApiResult<Json<Vec<DeadLetterView>>> {
    let limit = limit.limit.unwrap_or(100).min(MAX_LIMIT);
    let dead = super::dead_letter_admin(&**s.bus.transport())?
        .dead_letters(&queue, limit)
        .await?;
    Ok(Json(dead.into_iter().map(DeadLetterView::from).collect()))
}

/// `{"ids": [...]}` or `{"all": true}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Selection {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

impl Selection {
    fn ids(&self) -> ApiResult<Option<&[String]>> {
        match (self.all, self.ids.is_empty()) {
            (true, _) => Ok(None),
            (false, false) => Ok(Some(&self.ids)),
            (false, true) => Err(ApiError::bad_request(
                "say which dead letters: {\"ids\": [\"<id>\", ...]} or {\"all\": true}",
            )),
        }
    }
}

fn selection(
    body: Result<Json<Selection>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Selection> {
    body.map(|Json(s)| s).map_err(|e| {
        ApiError::new(
            e.status(),
            format!("expected {{\"ids\": [...]}} or {{\"all\": true}}: {e}"),
        )
    })
}

/// `POST /api/dlq/{queue}/replay`.
pub(crate) async fn replay(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    body: Result<Json<Selection>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let sel = selection(body)?;
    let n = super::dead_letter_admin(&**s.bus.transport())?
        .replay_dead_letters(&queue, sel.ids()?)
        .await?;
    // The queue comes from the URL: escaped, so `%0d%0a` in a path cannot forge a log line.
    tracing::info!(queue = %escape_controls(&queue), replayed = n, "dead letters replayed over HTTP");
    Ok(Json(serde_json::json!({"replayed": n})))
}

/// `POST /api/dlq/{queue}/purge`.
pub(crate) async fn purge(
    State(s): State<AppState>,
    Path(queue): Path<String>,
    body: Result<Json<Selection>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let sel = selection(body)?;
    let n = super::dead_letter_admin(&**s.bus.transport())?
        .purge_dead_letters(&queue, sel.ids()?)
        .await?;
    tracing::info!(queue = %escape_controls(&queue), purged = n, "dead letters purged over HTTP");
    Ok(Json(serde_json::json!({"purged": n})))
}
