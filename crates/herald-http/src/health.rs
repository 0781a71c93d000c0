//! `/health/live` and `/health/ready` as an axum router a service can mount on its own app.
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

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use herald::health::{Health, HealthStatus};

/// A router with `GET /health/live` (always `200 {"status":"up"}` while the process serves) and
/// `GET /health/ready` (the [`Health`] report; `503` unless every component is up).
pub fn router<S: Clone + Send + Sync + 'static>(health: Health) -> Router<S> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
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
