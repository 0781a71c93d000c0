//! Read-only routes: info, catalog, topology, queues, history, outbox.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, ApiResult};
use crate::serve::AppState;

/// `GET /api/info`.
pub(crate) async fn info(State(s): State<AppState>) -> Json<Value> {
    let config = s.bus.config();
    Json(serde_json::json!({
        "service": "herald-serve",
        "broker": broker_display(config),
        "transport": s.bus.transport().kind(),
        "exchange": config.exchange,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// The broker URL to show: redacted, and the default spelled out.
fn broker_display(config: &herald::Config) -> String {
    if config.broker.is_empty() {
        format!("sqlite://{}", herald::transport::DEFAULT_SQLITE_PATH)
    } else {
        config.broker_redacted()
    }
}

/// `GET /api/catalog`.
pub(crate) async fn catalog(State(s): State<AppState>) -> Json<Value> {
    Json(s.catalog.json.clone())
}

/// One queue of `/api/topology`. `service` (the consuming service, from the catalog or the
/// queue name's first part) is an addition to the contract's fields, for the graph.
#[derive(Debug, Serialize)]
pub(crate) struct QueueView {
    name: String,
    bindings: Vec<String>,
    kind: Option<herald::QueueKind>,
    dead_letter_queue: String,
    consumers: Option<u64>,
    service: String,
}

/// `GET /api/topology`: this bus's queues, the catalog's consumer queues and whatever else the
/// transport lists, with live consumer counts where it can tell.
pub(crate) async fn topology(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let stats = super::queue_stats(&**s.bus.transport()).await?;
    let mut queues: BTreeMap<String, QueueView> = BTreeMap::new();
    let mut add = |name: &str, binding: Option<&str>, kind: Option<herald::QueueKind>| {
        if name == s.stream_queue {
            return;
        }
        let view = queues.entry(name.to_string()).or_insert_with(|| QueueView {
            name: name.to_string(),
            bindings: Vec::new(),
            kind,
            dead_letter_queue: herald::topology::dead_letter_queue_name(name),
            consumers: None,
            service: s
                .catalog
                .service_of(name)
                .unwrap_or_else(|| name.split('.').next().unwrap_or(name))
                .to_string(),
        });
        if let Some(b) = binding {
            if !view.bindings.iter().any(|x| x == b) {
                view.bindings.push(b.to_string());
            }
        }
        if view.kind.is_none() {
            view.kind = kind;
        }
    };
    for q in s.bus.topology().queues {
        for b in &q.bindings {
            add(&q.name, Some(b), Some(q.kind));
        }
    }
    for e in &s.catalog.events {
        for c in &e.consumers {
            add(&c.queue, Some(&e.routing_key), None);
        }
    }
    for st in &stats {
        add(&st.queue, None, None);
    }
    for st in stats {
        if let Some(v) = queues.get_mut(&st.queue) {
            v.consumers = st.consumers;
        }
    }
    Ok(Json(serde_json::json!({
        "exchange": s.bus.config().exchange,
        "queues": queues.into_values().collect::<Vec<_>>(),
    })))
}

/// `GET /api/queues`.
pub(crate) async fn queues(
    State(s): State<AppState>,
) -> ApiResult<Json<Vec<herald::transport::QueueStats>>> {
    let mut stats = super::queue_stats(&**s.bus.transport()).await?;
    stats.retain(|q| q.queue != s.stream_queue);
    Ok(Json(stats))
}

/// `GET /api/stats/history`.
pub(crate) async fn history(State(s): State<AppState>) -> Json<Value> {
    Json(serde_json::json!({
        "interval_ms": crate::serve::history::INTERVAL.as_millis() as u64,
        "points": s.history.points(),
    }))
}

/// `GET /api/outbox`.
pub(crate) async fn outbox(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let Some(relay) = &s.outbox else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no outbox configured: start herald serve with --outbox-database CONNINFO",
        ));
    };
    let status = relay.status().await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot read the outbox status: {e}"),
        )
    })?;
    let health = relay.evaluate(&status);
    let mut body = serde_json::to_value(&status)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    body["health"] = serde_json::to_value(&health).unwrap_or(Value::Null);
    Ok(Json(body))
}
