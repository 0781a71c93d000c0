//! `GET /api/sagas`: saga instances with their state and age, stuck ones flagged (`herald-es`).
//! Mounted by whoever knows the saga store: `ServeConfig::extra = sagas::router(store)`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use herald_es::saga::{InstanceQuery, SagaStore};
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;

/// The query string of `GET /api/sagas`.
#[derive(Debug, Deserialize)]
struct Params {
    /// Only this saga's instances.
    saga: Option<String>,
    /// Only the stuck ones.
    #[serde(default)]
    stuck: bool,
    /// Seconds without progress (and without a pending timeout) that make an instance stuck.
    stuck_after_secs: Option<u64>,
    /// At most this many (default 500).
    limit: Option<usize>,
}

/// The routes over `store`: `GET /api/sagas?saga=NAME&stuck=true&stuck_after_secs=60&limit=500`
/// answers `{"instances": [...], "stuck": N}`, the oldest first.
pub fn router(store: Arc<dyn SagaStore>) -> Router {
    Router::new()
        .route("/api/sagas", get(list))
        .with_state(store)
}

async fn list(
    State(store): State<Arc<dyn SagaStore>>,
    Query(p): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let query = InstanceQuery {
        saga: p.saga,
        stuck_only: p.stuck,
        stuck_after: Duration::from_secs(p.stuck_after_secs.unwrap_or(60)),
        limit: p.limit.unwrap_or(500).clamp(1, 10_000),
    };
    let instances = store.instances(&query).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("cannot list saga instances: {e}"),
        )
    })?;
    let stuck = instances.iter().filter(|i| i.stuck).count();
    Ok(Json(serde_json::json!({
        "instances": instances,
        "stuck": stuck,
    })))
}
