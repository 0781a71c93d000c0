//! `/health/live`, `/health/ready` and `/health/<component>` as an axum router a service can
//! mount on its own app (under a prefix of its choosing: `.nest("/api/v1", router(health))`
//! gives reference 001's `/api/v1/health/rabbitmq`).
//!
//! ```
//! use std::sync::Arc;
//! use herald::{health::Health, Bus};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let bus = Bus::builder().service("billing").broker("memory://health-router-doc").build().await?;
//! bus.start().await?;
//! let health = Health::new().with(Arc::new(bus.clone()));
//! // The service's own routes, plus the probes.
//! let app: axum::Router = axum::Router::new()
//!     .route("/hello", axum::routing::get(|| async { "hi" }))
//!     .merge(herald_http::health::router(health));
//! # let _ = app;
//! # bus.shutdown().await?;
//! # Ok::<(), herald::Error>(())
//! # }).unwrap();
//! ```

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use herald::health::{Health, HealthStatus};

/// A router with `GET /health/live` (always `200 {"status":"up"}` while the process serves),
/// `GET /health/ready` (the [`Health`] report; `503` unless every component is up) and
/// `GET /health/<component>` (one component by its name or alias, e.g. `/health/broker`; `503`
/// unless it is up, `404` naming the known components when there is none of that name).
pub fn router<S: Clone + Send + Sync + 'static>(health: Health) -> Router<S> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/{component}", get(one))
        .with_state(health)
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "up"}))
}

async fn ready(State(health): State<Health>) -> (StatusCode, Json<herald::health::HealthReport>) {
    let report = health.report().await;
    let code = if report.status == HealthStatus::Up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report))
}

async fn one(
    State(health): State<Health>,
    Path(name): Path<String>,
) -> (StatusCode, Json<serde_json::Value>) {
    match health.component(&name).await {
        Some(c) => {
            let code = if c.status == HealthStatus::Up {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, Json(serde_json::json!(c)))
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": format!("no component `{name}`"),
                "components": health.names().await,
            })),
        ),
    }
}
