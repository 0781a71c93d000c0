//! The `/api/*` routes (see `docs/http-api.md`).

mod dlq;
mod events;
mod read;
pub mod sagas;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::AppState;

/// An error response: `{"error": ..., "details": [...]}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    details: Option<Vec<String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<herald::Error> for ApiError {
    fn from(e: herald::Error) -> Self {
        let status = match &e {
            herald::Error::Unroutable { .. } => StatusCode::CONFLICT,
            herald::Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            herald::Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
            herald::Error::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.message});
        if let Some(d) = self.details {
            body["details"] = serde_json::json!(d);
        }
        (self.status, Json(body)).into_response()
    }
}

/// Queue counts, or none where the transport keeps no statistics (its capabilities say so).
pub(crate) async fn queue_stats(
    t: &dyn herald::Transport,
) -> herald::Result<Vec<herald::transport::QueueStats>> {
    match t.queue_statistics() {
        Some(s) => s.queue_stats().await,
        None => Ok(Vec::new()),
    }
}

/// The transport's dead-letter administration, or `501` saying it has none.
pub(crate) fn dead_letter_admin(
    t: &dyn herald::Transport,
) -> ApiResult<&dyn herald::transport::DeadLetterAdmin> {
    Ok(herald::transport::dead_letter_admin(t)?)
}

/// Handlers' result type.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Every `/api/*` route except the stream.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/info", get(read::info))
        .route("/api/catalog", get(read::catalog))
        .route("/api/topology", get(read::topology))
        .route("/api/queues", get(read::queues))
        .route("/api/stats/history", get(read::history))
        .route("/api/outbox", get(read::outbox))
        .route("/api/events/{event_type}", post(events::publish))
        .route("/api/dlq", get(dlq::list_queues))
        .route("/api/dlq/{queue}", get(dlq::list))
        .route("/api/dlq/{queue}/replay", post(dlq::replay))
        .route("/api/dlq/{queue}/purge", post(dlq::purge))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route; the API is described in docs/http-api.md",
            )
        })
}
