//! `POST /api/events/{type}`: publish an event, validated against the catalog's schema.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use herald::event::routing_key_for;
use herald::pattern::topic_matches;
use herald::Envelope;
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, ApiResult};
use crate::serve::AppState;

/// Envelope attributes from the query string.
#[derive(Debug, Deserialize)]
pub(crate) struct PublishQuery {
    version: Option<u32>,
    correlation_id: Option<String>,
    subject: Option<String>,
}

pub(crate) async fn publish(
    State(s): State<AppState>,
    Path(event_type): Path<String>,
    query: Result<Query<PublishQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("cannot read the body: {e} (the limit is the bus's max_message_bytes)"),
        )
    })?;
    let data: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let version = query.version.unwrap_or(1);
    if version == 0 {
        return Err(ApiError::bad_request("version starts at 1"));
    }
    let violations = s.catalog.violations(&event_type, version, &data);
    if !violations.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the body does not match the schema of `{event_type}` v{version}; fix the fields listed in details"),
        )
        .with_details(violations));
    }
    let routing_key = s
        .catalog
        .event(&event_type, version)
        .map(|e| e.routing_key.clone())
        .unwrap_or_else(|| routing_key_for(&event_type, version));
    if !routable(&s, &routing_key).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("no queue is bound for routing key `{routing_key}`, so nobody would receive it; start a consumer of `{event_type}` first"),
        ));
    }
    let mut envelope = Envelope::new(
        &event_type,
        version,
        &routing_key,
        s.bus.publisher().service(),
        body,
    );
    envelope.correlation_id = query.correlation_id.filter(|c| !c.is_empty());
    envelope.subject = query.subject.filter(|c| !c.is_empty());
    let id = envelope.id.clone();
    s.bus
        .publisher()
        .publish_envelopes(vec![envelope], false)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"id": id, "routing_key": routing_key})),
    ))
}

/// Whether a queue other than the dashboard's own stream receives `routing_key`. The stream's
/// queue is bound to `#`, so the broker itself would route everything; this matches binding
/// patterns instead: this bus's own, then the transport's (every queue on the broker, when it
/// can list them), and only where the transport cannot list bindings (RabbitMQ) the catalog's
/// declared consumers, or, without a catalog entry, the benefit of the doubt.
async fn routable(s: &AppState, routing_key: &str) -> ApiResult<bool> {
    let ours = s
        .bus
        .topology()
        .queues
        .into_iter()
        .filter(|q| q.name != s.stream_queue)
        .any(|q| q.bindings.iter().any(|b| topic_matches(b, routing_key)));
    if ours {
        return Ok(true);
    }
    let transport = s.bus.transport();
    if let Some(stats) = transport.queue_statistics() {
        if let Some(bindings) = stats.bindings(&s.bus.config().exchange).await? {
            return Ok(bindings.iter().any(|(pattern, queue)| {
                *queue != s.stream_queue && topic_matches(pattern, routing_key)
            }));
        }
    }
    let in_catalog = s
        .catalog
        .events
        .iter()
        .any(|e| e.routing_key == routing_key && !e.consumers.is_empty());
    // Without a list of bindings and without a catalog entry there is no way to tell: publish
    // rather than refuse what may well have consumers.
    Ok(in_catalog
        || s.catalog
            .events
            .iter()
            .all(|e| e.routing_key != routing_key))
}
