//! Prometheus metrics: install the global recorder once, serve `GET /metrics` in the Prometheus
//! text format. Herald's metric names are in `herald::telemetry::names` and `docs/metrics.md`.
//!
//! Install the recorder at startup, **before** building the bus: Herald registers its metric
//! handles once (per subscription, per event type) with the recorder current at that time.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let handle = herald_http::metrics::install_prometheus()?;
//! let bus = herald::Bus::builder().service("billing").build().await?;
//! let app = herald_http::metrics::router(handle);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9100").await?;
//! axum::serve(listener, app).await?;
//! # drop(bus); Ok(()) }
//! ```

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use herald::telemetry::names::HANDLER_DURATION;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::Error;

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4";

/// Buckets of `herald_handler_duration_seconds`: 0.5 ms to a minute, dense where handlers
/// usually are (a few ms to a second).
pub const HANDLER_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// How often histograms are compacted (the exporter leaves it to its caller).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALLING: Mutex<()> = Mutex::new(());

/// Install the Prometheus recorder as the global `metrics` recorder and return its handle.
/// Calling again returns the same handle. Also registers the help text of Herald's metrics and
/// starts a background thread for the exporter's upkeep.
///
/// # Errors
/// [`Error::MetricsRecorder`] when another global recorder was installed first.
pub fn install_prometheus() -> Result<PrometheusHandle, Error> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    // Two first callers at once: one installs, the other waits and gets its handle.
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HANDLER_DURATION.to_string()),
            HANDLER_DURATION_BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| Error::MetricsRecorder(e.to_string()))?;
    herald::telemetry::describe();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("herald-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; histograms are compacted on scrape only");
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// A router serving `GET /metrics` from `handle` in the Prometheus text format
/// (`text/plain; version=0.0.4`). Mount it beside your own routes, or merge it into
/// `herald serve`'s app (which adds the bearer-token check of `docs/http-api.md`).
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = handle.render();
            async move { ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], body) }
        }),
    )
}
